"""The one way our code talks to Stripe: a ``stripe.StripeClient`` from settings.

``STRIPE_SECRET_KEY`` authenticates; ``STRIPE_API_BASE`` (the emulator in
development and tests; unset in production) replaces every Stripe host. The
library retries network errors twice, with the idempotency key it was given (or
one it made up), so a retried create never makes two objects.

Calls are made outside database transactions (a transaction that rolls back
cannot take a Stripe call back): services write their row, commit, call Stripe
with an idempotency key built from that row, then record the answer.
"""
from __future__ import annotations

import functools

import stripe
from django.conf import settings
from django.db.models import Q

from .models import BillingAccount

MAX_NETWORK_RETRIES = 2
# Stripe amounts are in the currency's minor unit (cents); ours are micro-units.
MICROS_PER_CENT = 10_000
# Stripe's zero-decimal currencies (no minor unit): amounts are whole units there.
_ZERO_DECIMAL = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"}
)


def client() -> stripe.StripeClient:
    return _client(settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE or None)


@functools.lru_cache(maxsize=4)
def _client(api_key: str, api_base: str | None) -> stripe.StripeClient:
    if not api_key:
        raise stripe.AuthenticationError("STRIPE_SECRET_KEY is not set")
    base = {"api": api_base, "files": api_base, "connect": api_base, "meter_events": api_base} if api_base else None
    return stripe.StripeClient(api_key, base_addresses=base, max_network_retries=MAX_NETWORK_RETRIES)


def micros_per_minor_unit(currency: str) -> int:
    """How many micro-units one Stripe minor unit (a cent) is, for ``currency``."""
    if currency.lower() in _ZERO_DECIMAL:
        raise ValueError(f"{currency.upper()} has no minor unit; wallets are kept in two-decimal currencies")
    return MICROS_PER_CENT


def to_micros(amount_minor: int, currency: str) -> int:
    return amount_minor * micros_per_minor_unit(currency)


def to_minor(amount_micros: int, currency: str) -> int:
    """Micro-units to Stripe's minor units; only whole cents convert (no rounding of money)."""
    per = micros_per_minor_unit(currency)
    if amount_micros % per:
        raise ValueError("the amount is not a whole number of cents")
    return amount_micros // per


def customer_for(account: BillingAccount) -> str:
    """The account's Stripe customer id, creating the customer the first time.

    The idempotency key ``cus:<account id>`` makes two concurrent first calls
    (two tabs starting a top-up) get one customer; the conditional UPDATE stores
    it once and every caller returns what was stored.
    """
    if account.stripe_customer_id:
        return account.stripe_customer_id
    organization = account.organization
    customer = client().v1.customers.create(
        params={
            "name": organization.name,
            "metadata": {"account_id": str(account.id), "organization": organization.public_id},
        },
        options={"idempotency_key": f"cus:{account.id}"},
    )
    BillingAccount.objects.filter(Q(stripe_customer_id__isnull=True) | Q(stripe_customer_id=""), id=account.id).update(
        stripe_customer_id=customer.id
    )
    account.refresh_from_db(fields=["stripe_customer_id"])
    return account.stripe_customer_id
