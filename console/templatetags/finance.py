"""Money in the finance console: exact micro-units shown as currency units with six decimals."""
from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def micros(value) -> str:
    """1234567 → "1.234567"; -5 → "-0.000005"; thousands separated (integer arithmetic, no float)."""
    if value in (None, ""):
        return ""
    value = int(value)
    sign = "-" if value < 0 else ""
    units, frac = divmod(abs(value), 1_000_000)
    return f"{sign}{units:,}.{frac:06d}"


@register.filter
def neg(value) -> int:
    return -int(value or 0)
