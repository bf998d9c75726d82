"""``{{ amount|usd }}``: micro-units as dollars, exactly (no float), cents at least."""
from django import template

register = template.Library()


@register.filter
def usd(micros) -> str:
    if micros is None or micros == "":
        return "—"
    value = int(micros)
    sign, value = ("-" if value < 0 else ""), abs(value)
    dollars, fraction = divmod(value, 1_000_000)
    digits = f"{fraction:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}${dollars:,}.{digits}"
