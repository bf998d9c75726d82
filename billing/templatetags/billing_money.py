"""``{{ micros|money:"usd" }}`` → ``12.50 USD``: micro-units shown exactly, never through a float."""
from django import template

from billing.topups import format_amount

register = template.Library()


@register.filter
def money(micros, currency: str = "usd") -> str:
    if micros is None or micros == "":
        return "—"
    return format_amount(int(micros), currency or "usd")
