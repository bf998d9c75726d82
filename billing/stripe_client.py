"""The Stripe client every billing module uses (W1 owns this file; this is the agreed
contract, written locally until its branch lands).

``client()``: a ``stripe.StripeClient`` for STRIPE_SECRET_KEY, against STRIPE_API_BASE
when set (the emulator in development and tests), retrying network errors twice
(stripe-python sends an idempotency key with every retried POST).
``customer_for(account)``: the account's Stripe customer, created once.
"""
from __future__ import annotations

import stripe
from django.conf import settings
from django.db import transaction

from .models import BillingAccount


def client() -> stripe.StripeClient:
    base = getattr(settings, "STRIPE_API_BASE", None)
    addresses = {"api": base, "files": base} if base else None
    return stripe.StripeClient(
        getattr(settings, "STRIPE_SECRET_KEY", "") or "sk_test_unset", base_addresses=addresses, max_network_retries=2
    )


def customer_for(account: BillingAccount) -> str:
    """The Stripe customer id of ``account``, creating the customer the first time.

    The idempotency key ("cus:<account id>") makes two racing first calls get one
    customer; the conditional UPDATE keeps the first id stored.
    """
    if account.stripe_customer_id:
        return account.stripe_customer_id
    organization = account.organization
    customer = client().v1.customers.create(
        params={"name": organization.name, "metadata": {"account_id": str(account.id),
                                                        "organization": organization.public_id}},
        options={"idempotency_key": f"cus:{account.id}"},
    )
    with transaction.atomic():
        BillingAccount.objects.filter(id=account.id, stripe_customer_id__isnull=True).update(stripe_customer_id=customer.id)
    account.refresh_from_db(fields=["stripe_customer_id"])
    return account.stripe_customer_id
