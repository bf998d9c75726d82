"""Micro-units ⇄ USD text, for forms and pages (exact: Decimal, never float)."""
from __future__ import annotations

from decimal import Decimal, InvalidOperation

MICROS = 1_000_000


def micros_from_usd(text: str, *, places: int = 2) -> int:
    """"12.50" → 12_500_000. At most ``places`` decimals; ValueError otherwise."""
    try:
        value = Decimal(str(text).strip().replace(",", "").removeprefix("$"))
    except InvalidOperation:
        raise ValueError(f"{text!r} is not an amount in USD") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"{text!r} is not an amount in USD")
    if value != value.quantize(Decimal(1).scaleb(-places)):
        raise ValueError(f"{text!r} has more than {places} decimals")
    micros = value * MICROS
    if micros > 2**62:
        raise ValueError(f"{text!r} is too large")
    return int(micros)


def usd_from_micros(micros: int, *, places: int = 2) -> str:
    """12_500_000 → "12.50"; more decimals only when the amount has them (never rounded)."""
    value = Decimal(micros) / MICROS
    text = f"{value:.6f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(places, '0')}"
