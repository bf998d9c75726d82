"""Token prices and the arithmetic of cost, in integer micro-units.

Prices are micro-units per 1,000,000 tokens. A reservation rounds up (it must
cover the worst case); a settlement rounds the exact total down once, in the
customer's favour.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

TOKENS_PER_PRICE_UNIT = 1_000_000


@dataclass(frozen=True, slots=True)
class Price:
    id: int
    model: str
    version: int
    currency: str
    input_per_mtok: int
    cached_input_per_mtok: int
    output_per_mtok: int
    effective_from: dt.datetime
    # An image model's version: (size, micro-units per image) pairs; empty for a token-priced model.
    per_image: tuple[tuple[str, int], ...] = ()

    def image_price(self, size: str) -> int | None:
        """Micro-units per image of ``size``, or None if this version has no price for it."""
        for priced, amount in self.per_image:
            if priced == size:
                return amount
        return None


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int  # all prompt tokens, cached ones included
    output_tokens: int
    cached_input_tokens: int = 0

    def __post_init__(self) -> None:
        if min(self.input_tokens, self.output_tokens, self.cached_input_tokens) < 0:
            raise ValueError("token counts cannot be negative")
        if self.cached_input_tokens > self.input_tokens:
            raise ValueError("cached tokens cannot exceed input tokens")


def cost_micros(price: Price, usage: Usage) -> int:
    uncached = usage.input_tokens - usage.cached_input_tokens
    total = (
        uncached * price.input_per_mtok
        + usage.cached_input_tokens * price.cached_input_per_mtok
        + usage.output_tokens * price.output_per_mtok
    )
    return total // TOKENS_PER_PRICE_UNIT  # floor: the customer's favour


def reservation_micros(price: Price, *, max_input_tokens: int, max_output_tokens: int) -> int:
    total = max_input_tokens * price.input_per_mtok + max_output_tokens * price.output_per_mtok
    return -(-total // TOKENS_PER_PRICE_UNIT)  # ceiling: always covers cost_micros


def price_at(versions: Sequence[Price], when: dt.datetime) -> Price | None:
    """The version in force at ``when``; ``versions`` sorted by effective_from."""
    current = None
    for price in versions:
        if price.effective_from <= when:
            current = price
        else:
            break
    return current


def budget_micros(price: Price, tokens: int) -> int:
    """The most ``tokens`` tokens can cost, input and output in any mix (rounded up).

    An agent run reserves this for its token budget; the exact cost of any usage
    with input + output <= ``tokens`` is never more (cached input costs at most input).
    """
    total = tokens * max(price.input_per_mtok, price.output_per_mtok)
    return -(-total // TOKENS_PER_PRICE_UNIT)


def add_usage(a: Usage, b: Usage) -> Usage:
    return Usage(
        input_tokens=a.input_tokens + b.input_tokens,
        output_tokens=a.output_tokens + b.output_tokens,
        cached_input_tokens=a.cached_input_tokens + b.cached_input_tokens,
    )
