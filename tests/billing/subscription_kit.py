"""What the subscription tests share: plans with small amounts, Stripe's side of them in
the emulator, subscribing through the hosted Checkout page, waiting for webhooks.

Transactional tests empty every table between tests, the plans seeded by migration
0006 included: each test puts the plans it needs back (``plans_in_db``).
"""
from __future__ import annotations

from billing import plans as plan_catalog
from billing import subscriptions
from billing.models import Plan, Subscription, Wallet
from billing.stripe_client import client

# Small included credit and credit lines, so a few simulator requests cross them.
PLANS = {
    "free": {"name": "Free", "monthly_fee": 0, "included_credit": 0, "overage_enabled": False, "overage_limit": 0,
             "rpm_limit": 20, "tpm_limit": 40_000, "allowed_models": ["smollm2-135m-instruct"], "sort": 0},
    "developer": {"name": "Developer", "monthly_fee": 20_000_000, "included_credit": 100, "overage_enabled": True,
                  "overage_limit": 1_000_000, "rpm_limit": 600, "tpm_limit": 1_000_000, "allowed_models": [],
                  "sort": 1},
    "team": {"name": "Team", "monthly_fee": 100_000_000, "included_credit": 600, "overage_enabled": True,
             "overage_limit": 5_000_000, "rpm_limit": 3_000, "tpm_limit": 10_000_000, "allowed_models": [],
             "sort": 2},
}


def plans_in_db() -> dict[str, Plan]:
    return {
        code: Plan.objects.update_or_create(code=code, defaults={**values, "currency": "usd", "active": True})[0]
        for code, values in PLANS.items()
    }


def synced_plans() -> dict[str, Plan]:
    """The plans, with their products and prices in the emulator (plans_sync_to_stripe)."""
    plans_in_db()
    plan_catalog.plans_sync_to_stripe()
    return {p.code: p for p in Plan.objects.all()}


def webhooks_to(stripe_emu, server) -> None:
    stripe_emu.register_webhook(f"{server.url}/billing/stripe/webhook")


def delivered(stripe_emu, event_type: str, count: int) -> list[dict]:
    """The deliveries of ``event_type`` so far, once there are ``count`` (each answered 2xx)."""
    deliveries = stripe_emu.deliveries(type=event_type, wait_for=count)
    assert len(deliveries) >= count, deliveries
    assert all(d["status"] == "delivered" for d in deliveries), deliveries
    return deliveries


def subscribe(stripe_emu, tenant, plan: Plan) -> Subscription:
    """Subscribe through Checkout in subscription mode: the hosted page, Pay, the webhooks."""
    account = tenant.organization.billing_account
    url = subscriptions.subscription_checkout_create(
        account=account, plan=plan, user=tenant.user,
        success_url="http://127.0.0.1/billing/plan?checkout=success", cancel_url="http://127.0.0.1/billing/plan",
    )
    paid = stripe_emu.pay(url)
    assert paid.status_code == 303 and paid.headers["location"].endswith("checkout=success"), paid.text
    # The pay page answers after checkout.session.completed was delivered, and events go out in
    # order: the subscription's and its first invoice's were delivered before it.
    return Subscription.objects.get(account=account)


def customer_wallet(tenant) -> Wallet:
    return Wallet.objects.get(account__organization=tenant.organization, kind=Wallet.Kind.CUSTOMER)


def stripe_subscription(subscription: Subscription) -> dict:
    return client().v1.subscriptions.retrieve(subscription.stripe_subscription_id).to_dict()
