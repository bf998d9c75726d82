"""The Stripe API client (the emulator outside production).

PLACEHOLDER in branch issue5-recharge: the contract W1 owns (``client()``,
``customer_for(account)``), written here so auto-recharge can be built in
parallel; replaced by W1's module when the branches meet.
"""
from __future__ import annotations

import stripe
from django.conf import settings
from django.db import transaction

from .models import BillingAccount


def client() -> stripe.StripeClient:
    base = getattr(settings, "STRIPE_API_BASE", None)
    addresses = {"api": base, "files": base} if base else None
    return stripe.StripeClient(settings.STRIPE_SECRET_KEY, base_addresses=addresses, max_network_retries=2)


def customer_for(account: BillingAccount) -> str:
    """The account's Stripe customer id, created once (idempotency key "cus:<account id>")."""
    if account.stripe_customer_id:
        return account.stripe_customer_id
    customer = client().v1.customers.create(
        params={"metadata": {"account_id": str(account.id), "organization": account.organization.public_id},
                "name": account.organization.name},
        options={"idempotency_key": f"cus:{account.id}"},
    )
    with transaction.atomic():
        BillingAccount.objects.filter(id=account.id, stripe_customer_id__isnull=True).update(
            stripe_customer_id=customer.id
        )
        account.refresh_from_db(fields=["stripe_customer_id"])
    return account.stripe_customer_id
