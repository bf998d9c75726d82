"""An organization's Stripe invoices (its subscription's: the monthly fee, metered overage), for
the billing page: read from Stripe, the record of them, rather than copied into our database.

Stripe is asked at most once a minute per customer (the list is cached); when it cannot be
reached the page says so, shows the rest, and asks again after ``ERROR_SECONDS``. An account that never met Stripe has no invoices
and causes no call.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

import stripe
from django.core.cache import cache

from config import redisconn

from . import stripe_client
from .models import BillingAccount

log = logging.getLogger(__name__)

CACHE_SECONDS = 60
ERROR_SECONDS = 15  # Stripe unreachable: the next views do not each wait for it
LIMIT = 24


@dataclass(frozen=True, slots=True)
class Invoice:
    id: str
    number: str  # Stripe's invoice number, or its id while it has none (a draft)
    created: dt.datetime
    currency: str
    total: int  # micro-units
    amount_paid: int
    amount_due: int
    status: str  # draft, open, paid, uncollectible, void
    hosted_url: str
    pdf_url: str
    period_start: dt.datetime | None = None
    period_end: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class Invoices:
    invoices: list[Invoice] = field(default_factory=list)
    error: str = ""  # set when Stripe could not be asked


def _when(epoch) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(int(epoch), tz=dt.UTC) if epoch else None


def _micros(amount, currency: str) -> int:
    return stripe_client.to_micros(int(amount or 0), currency)


def _invoice(raw) -> Invoice:
    currency = (raw.get("currency") or "usd").lower()
    total = raw.get("total", raw.get("amount_due", 0))
    return Invoice(
        id=raw["id"],
        number=raw.get("number") or raw["id"],
        created=_when(raw.get("created")) or dt.datetime.now(dt.UTC),
        currency=currency,
        total=_micros(total, currency),
        amount_paid=_micros(raw.get("amount_paid"), currency),
        amount_due=_micros(raw.get("amount_due"), currency),
        status=raw.get("status") or "",
        hosted_url=raw.get("hosted_invoice_url") or "",
        pdf_url=raw.get("invoice_pdf") or "",
        period_start=_when(raw.get("period_start")),
        period_end=_when(raw.get("period_end")),
    )


def _key(customer: str) -> str:
    return redisconn.key("invoices", customer)


def account_invoices(*, account: BillingAccount, limit: int = LIMIT) -> Invoices:
    """The account's Stripe invoices, newest first (at most ``limit``)."""
    customer = account.stripe_customer_id
    if not customer:
        return Invoices()
    try:
        cached = cache.get(_key(customer))
    except Exception:  # noqa: BLE001 - the cache is an optimisation
        cached = None
    if cached is not None:
        return cached
    seconds = CACHE_SECONDS
    try:
        # A read for a page: no retries (the page says Stripe is away rather than waiting on it).
        listed = stripe_client.client().v1.invoices.list(
            params={"customer": customer, "limit": limit}, options={"max_network_retries": 0}
        )
        rows = [_invoice(raw.to_dict() if hasattr(raw, "to_dict") else raw) for raw in listed.data]
    except (stripe.StripeError, ValueError, KeyError) as exc:
        log.warning("invoices of %s: not read from Stripe: %s", customer, exc)
        found, seconds = Invoices(error="Invoices cannot be read from Stripe right now; try again in a minute."), ERROR_SECONDS
    else:
        rows.sort(key=lambda i: i.created, reverse=True)  # Stripe's own order (newest first) within a second
        found = Invoices(invoices=rows[:limit])
    try:
        cache.set(_key(customer), found, seconds)
    except Exception as exc:  # noqa: BLE001
        log.warning("invoices of %s: not cached: %s", customer, exc)
    return found


def invoices_forget(account: BillingAccount) -> None:
    """Drop the cached list (after an ``invoice.*`` event, in tests)."""
    if account.stripe_customer_id:
        cache.delete(_key(account.stripe_customer_id))
