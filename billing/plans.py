"""Plans and their Stripe side.

Each paid plan is a Stripe product with two recurring monthly prices: the fee
(licensed, quantity 1) and, when the plan allows overage, a metered price on
one billing meter. Overage is measured in micro-units of money (what usage cost
below a zero balance), so the metered price is 0.0001 cents per micro-unit: a
subscriber pays exactly the overage's cost, rounded to the cent by Stripe.

The meter sums events named ``settings.STRIPE_METER_EVENT_NAME`` whose payload
carries ``stripe_customer_id`` and ``value`` (billing.metering sends them).

Free (fee 0) has no Stripe side: it is where an organization lands when its
subscription ends (billing.subscriptions).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

import stripe
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet

from config import bus

from . import stripe_client
from .models import BillingAccount, Plan

# Cents per micro-unit of overage (1 micro-unit = $0.000001).
OVERAGE_UNIT_AMOUNT_DECIMAL = "0.0001"
FREE = "free"


def plans_offered() -> QuerySet[Plan]:
    return Plan.objects.filter(active=True).order_by("sort", "id")


def free_plan() -> Plan | None:
    """Where an organization lands when its subscription ends (None: no such plan, no plan limits)."""
    return Plan.objects.filter(code=FREE, active=True).first()


def plan_caches_invalidate(organization_id: int) -> None:
    """Drop the organization's cached key records in every gateway process (a key record
    carries its plan's limits and models). Call on commit."""
    from console.models import Project
    from console.services import PROJECT_TOPIC

    for project_id in Project.objects.filter(organization_id=organization_id).values_list("id", flat=True):
        bus.publish(PROJECT_TOPIC, str(project_id))


@transaction.atomic
def account_plan_set(*, account: BillingAccount, plan: Plan | None) -> BillingAccount:
    """Put an account on a plan by hand (None: no plan limits), for accounts without a
    subscription: internal ones, contracts. A subscription's webhooks set the plan
    of a subscribed account again (billing.subscriptions). The gateway applies it
    within a second."""
    account.plan = plan
    account.save(update_fields=["plan"])
    organization_id = account.organization_id
    transaction.on_commit(lambda: plan_caches_invalidate(organization_id))
    return account


def fee_cents(plan: Plan) -> int:
    """The monthly fee in Stripe's minor unit (ValueError unless it is whole cents)."""
    return stripe_client.to_minor(plan.monthly_fee, plan.currency)


@dataclass
class PlanSync:
    plan: str
    product: str = ""
    price: str = ""
    meter_price: str = ""
    created: list[str] = field(default_factory=list)  # what this run created in Stripe
    skipped: str = ""  # why the plan has no Stripe side


def _missing(exc: stripe.StripeError) -> bool:
    return isinstance(exc, stripe.InvalidRequestError) and getattr(exc, "code", None) == "resource_missing"


def _retrieve(service, object_id: str) -> dict | None:
    if not object_id:
        return None
    try:
        return service.retrieve(object_id).to_dict()
    except stripe.StripeError as exc:
        if _missing(exc):
            return None
        raise


def meter_ensure(client: stripe.StripeClient) -> str:
    """The id of the active billing meter for STRIPE_METER_EVENT_NAME, created once."""
    event_name = settings.STRIPE_METER_EVENT_NAME
    for meter in client.v1.billing.meters.list(params={"status": "active", "limit": 100}).auto_paging_iter():
        if meter["event_name"] == event_name:
            return meter["id"]
    meter = client.v1.billing.meters.create(
        params={
            "display_name": "Usage overage (micro-units)",
            "event_name": event_name,
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
            "value_settings": {"event_payload_key": "value"},
        },
        options={"idempotency_key": f"meter:{event_name}"},
    )
    return meter["id"]


def _recurring(price: dict) -> dict:
    return price.get("recurring") or {}


def _fee_price_fits(price: dict, *, plan: Plan, product: str) -> bool:
    recurring = _recurring(price)
    return (
        price["active"] and price["currency"] == plan.currency and price.get("unit_amount") == fee_cents(plan)
        and _id(price["product"]) == product and recurring.get("interval") == "month"
        and recurring.get("interval_count", 1) == 1 and recurring.get("usage_type", "licensed") == "licensed"
    )


def _meter_price_fits(price: dict, *, plan: Plan, product: str, meter: str) -> bool:
    recurring = _recurring(price)
    amount = price.get("unit_amount_decimal")
    return (
        price["active"] and price["currency"] == plan.currency and _id(price["product"]) == product
        and amount is not None and Decimal(str(amount)) == Decimal(OVERAGE_UNIT_AMOUNT_DECIMAL)
        and recurring.get("interval") == "month" and recurring.get("usage_type") == "metered"
        and recurring.get("meter") == meter
    )


def _archive(client: stripe.StripeClient, price: dict | None) -> None:
    """Stop offering a replaced price (subscriptions on it keep it until changed)."""
    if price is not None and price["active"]:
        client.v1.prices.update(price["id"], params={"active": False})


def _id(value) -> str:
    return value if isinstance(value, str) else value["id"]


def plan_sync_to_stripe(*, plan: Plan, client: stripe.StripeClient, meter: str) -> PlanSync:
    """Make ``plan``'s product and prices in Stripe match it; store their ids.

    Prices cannot change in Stripe: a fee change makes a new price and archives
    the old one (existing subscriptions keep theirs until changed). Idempotency
    keys name what a create is for, so a crash between Stripe's answer and our
    save does not make a second object on the rerun.
    """
    result = PlanSync(plan=plan.code)
    if plan.monthly_fee == 0:
        result.skipped = "no fee: not a Stripe subscription"
        return result
    cents = fee_cents(plan)
    product = _retrieve(client.v1.products, plan.stripe_product_id)
    if product is None:
        product = client.v1.products.create(
            params={"name": plan.name, "metadata": {"plan": plan.code}},
            options={"idempotency_key": f"plan:{plan.code}:product:{plan.stripe_product_id or 'new'}"},
        ).to_dict()
        result.created.append(product["id"])
    elif product["name"] != plan.name or not product["active"]:
        product = client.v1.products.update(product["id"], params={"name": plan.name, "active": True}).to_dict()
    result.product = product["id"]

    fee = _retrieve(client.v1.prices, plan.stripe_price_id)
    if fee is None or not _fee_price_fits(fee, plan=plan, product=result.product):
        previous = fee
        fee = client.v1.prices.create(
            params={
                "product": result.product, "currency": plan.currency, "unit_amount": cents,
                "recurring": {"interval": "month", "usage_type": "licensed"},
                "metadata": {"plan": plan.code, "kind": "fee"},
            },
            options={"idempotency_key": f"plan:{plan.code}:fee:{plan.currency}:{cents}:{plan.stripe_price_id or 'new'}"},
        ).to_dict()
        result.created.append(fee["id"])
        _archive(client, previous)
    result.price = fee["id"]

    overage = _retrieve(client.v1.prices, plan.stripe_meter_price_id)
    if plan.overage_enabled:
        if overage is None or not _meter_price_fits(overage, plan=plan, product=result.product, meter=meter):
            previous = overage
            overage = client.v1.prices.create(
                params={
                    "product": result.product, "currency": plan.currency,
                    "unit_amount_decimal": OVERAGE_UNIT_AMOUNT_DECIMAL, "billing_scheme": "per_unit",
                    "recurring": {"interval": "month", "usage_type": "metered", "meter": meter},
                    "metadata": {"plan": plan.code, "kind": "overage"},
                },
                options={"idempotency_key": f"plan:{plan.code}:overage:{meter}:{plan.stripe_meter_price_id or 'new'}"},
            ).to_dict()
            result.created.append(overage["id"])
            _archive(client, previous)
        result.meter_price = overage["id"]
    else:
        _archive(client, overage)

    plan.stripe_product_id, plan.stripe_price_id, plan.stripe_meter_price_id = (
        result.product, result.price, result.meter_price
    )
    plan.save(update_fields=["stripe_product_id", "stripe_price_id", "stripe_meter_price_id"])
    return result


def plans_sync_to_stripe(*, client: stripe.StripeClient | None = None) -> list[PlanSync]:
    """Create or repair every active plan's product and prices (idempotent: a second
    run creates nothing). Stripe calls only; each plan's ids are saved as it is done."""
    client = client or stripe_client.client()
    meter = meter_ensure(client) if plans_offered().filter(overage_enabled=True).exists() else ""
    return [plan_sync_to_stripe(plan=plan, client=client, meter=meter) for plan in plans_offered()]
