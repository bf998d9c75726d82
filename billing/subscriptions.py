"""Subscriptions through Stripe Billing, and what they do to an organization.

Writes that start in the console (subscribe, change, cancel, portal) are Stripe
calls only: Stripe is the source of truth, and its webhooks bring the result
back (``customer.subscription.*`` and ``invoice.paid``, handled here, each in the
transaction that stores the event).

What a subscription changes:
* ``account.plan``: the plan of the organization's newest subscription that is
  active, trialing or past due. When a subscription has ended (canceled, or
  stopped: unpaid, paused) and none applies, the organization goes to the Free
  plan, not to "no plan": an organization without a plan has no plan limits at
  all, which is for accounts set up by hand (internal, bootstrap, contracts: see
  ``plans.account_plan_set``), and a subscription that ends must not widen
  access. Without an active Free plan it goes back to no plan. A checkout that
  was never paid (incomplete, incomplete_expired) changes nothing.
* the customer wallet's ``credit_limit``: the plan's ``overage_limit`` while the
  subscription is active or trialing and the plan allows overage, else 0 (a
  past-due subscription keeps its plan but not its credit line). It is never
  set below what the wallet already owes plus holds (``reserved - balance``),
  so ``balance + credit_limit >= reserved`` stays true; the next paid invoice
  (overage restored) lets it come down.
* every gateway process drops the organization's cached key records (the plan's
  limits and models live in them).

``invoice_paid_apply`` turns a paid subscription invoice into ledger credits,
once per invoice: the metered overage it charged back onto the balance
(``overage_payment``), and the period's included credit as an expiring lot.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from . import plans as plan_catalog
from . import services, stripe_client, webhooks
from .models import BillingAccount, Plan, StripeEvent, Subscription, Transfer, Wallet

log = logging.getLogger(__name__)

# The plan applies while the subscription is in one of these; the credit line only in the first two.
PLAN_STATUSES = frozenset({Subscription.Status.ACTIVE, Subscription.Status.TRIALING, Subscription.Status.PAST_DUE})
CREDIT_STATUSES = frozenset({Subscription.Status.ACTIVE, Subscription.Status.TRIALING})
FINAL_STATUSES = frozenset({Subscription.Status.CANCELED, Subscription.Status.INCOMPLETE_EXPIRED})
# A subscription that ended (or stopped) after it applied: the account goes to Free.
ENDED_STATUSES = frozenset({Subscription.Status.CANCELED, Subscription.Status.UNPAID, Subscription.Status.PAUSED})
SUBSCRIPTION_EVENTS = ("customer.subscription.created", "customer.subscription.updated", "customer.subscription.deleted")


class SubscriptionError(Exception):
    """A subscription action that cannot be done as asked; the message is for the user."""


class UnknownAccount(LookupError):
    """A Stripe object whose customer is none of our billing accounts."""


# --- reads -------------------------------------------------------------------------------------


def subscription_current(*, account: BillingAccount) -> Subscription | None:
    """The subscription whose plan applies: the newest one in a plan status."""
    return (
        Subscription.objects.select_related("plan")
        .filter(account=account, status__in=PLAN_STATUSES)
        .order_by("-created_at", "-id")
        .first()
    )


# --- Stripe actions (the console calls these; webhooks bring the result) ---------------------------


def _paid_plan(plan: Plan) -> None:
    if not plan.active:
        raise SubscriptionError(f"The {plan.name} plan is not offered.")
    if plan.monthly_fee == 0:
        raise SubscriptionError(f"{plan.name} needs no subscription: cancel the current one to return to it.")
    if not plan.stripe_price_id or (plan.overage_enabled and not plan.stripe_meter_price_id):
        raise SubscriptionError(f"The {plan.name} plan is not set up in Stripe yet (manage.py stripe_sync_plans).")


def _line_items(plan: Plan) -> list[dict]:
    items: list[dict] = [{"price": plan.stripe_price_id, "quantity": 1}]
    if plan.overage_enabled:
        items.append({"price": plan.stripe_meter_price_id})  # metered: no quantity
    return items


def _metadata(account: BillingAccount, plan: Plan, user) -> dict[str, str]:
    return {"account_id": str(account.id), "plan": plan.code, "requested_by": str(getattr(user, "pk", "") or "")}


def subscription_checkout_create(*, account: BillingAccount, plan: Plan, user, success_url: str, cancel_url: str) -> str:
    """A Stripe Checkout session (subscription mode: the fee, quantity 1, plus the
    metered overage price) for ``account`` to subscribe to ``plan``; returns its URL.

    Nothing changes here until Stripe's ``customer.subscription.created`` arrives.
    """
    _paid_plan(plan)
    if subscription_current(account=account) is not None:
        raise SubscriptionError("This organization already has a subscription: change its plan instead.")
    customer = stripe_client.customer_for(account)
    session = stripe_client.client().v1.checkout.sessions.create(params={
        "mode": "subscription",
        "customer": customer,
        "line_items": _line_items(plan),
        "success_url": success_url,
        "cancel_url": cancel_url,
        "client_reference_id": str(account.id),
        "metadata": {"kind": "subscription", **_metadata(account, plan, user)},
        "subscription_data": {"metadata": _metadata(account, plan, user)},
    })
    log.info("subscription checkout %s for account %s, plan %s (user %s)", session.id, account.id, plan.code,
             getattr(user, "pk", None))
    return session.url


def _stripe_subscription(account: BillingAccount) -> tuple[Subscription, dict]:
    current = subscription_current(account=account)
    if current is None:
        raise SubscriptionError("This organization has no subscription.")
    stripe_sub = stripe_client.client().v1.subscriptions.retrieve(current.stripe_subscription_id).to_dict()
    return current, stripe_sub


def subscription_change(*, account: BillingAccount, plan: Plan, user) -> Subscription:
    """Move the subscription to ``plan`` (Subscription update, prorated).

    An upgrade is invoiced at once (``always_invoice``): the prorated fee is paid
    now, and that invoice's ``invoice.paid`` grants the prorated difference in
    included credit. A downgrade credits the unused fee on the next invoice
    (``create_prorations``). Either also withdraws a pending cancellation.
    """
    _paid_plan(plan)
    current, stripe_sub = _stripe_subscription(account)
    if current.plan_id == plan.id and not current.cancel_at_period_end:
        raise SubscriptionError(f"The subscription is already on the {plan.name} plan.")
    items = (stripe_sub.get("items") or {}).get("data") or []
    fee_items = [i for i in items if _usage_type(i.get("price")) != "metered"]
    metered_items = [i for i in items if _usage_type(i.get("price")) == "metered"]
    if len(fee_items) != 1:
        raise SubscriptionError("The subscription in Stripe does not have exactly one plan fee; change it in Stripe.")
    changes: list[dict] = [{"id": fee_items[0]["id"], "price": plan.stripe_price_id, "quantity": 1}]
    if plan.overage_enabled:
        if metered_items:
            changes.append({"id": metered_items[0]["id"], "price": plan.stripe_meter_price_id})
            changes += [{"id": i["id"], "deleted": True} for i in metered_items[1:]]
        else:
            changes.append({"price": plan.stripe_meter_price_id})
    else:
        changes += [{"id": i["id"], "deleted": True} for i in metered_items]
    upgrade = plan.monthly_fee > current.plan.monthly_fee
    stripe_client.client().v1.subscriptions.update(current.stripe_subscription_id, params={
        "items": changes,
        "proration_behavior": "always_invoice" if upgrade else "create_prorations",
        "cancel_at_period_end": False,
        "metadata": _metadata(account, plan, user),
    })
    log.info("subscription %s: plan %s -> %s (user %s)", current.stripe_subscription_id, current.plan.code, plan.code,
             getattr(user, "pk", None))
    return current


def subscription_cancel(*, account: BillingAccount, user, at_period_end: bool = True) -> Subscription:
    """Cancel at the end of the paid period (default), or now (the metered usage so
    far is invoiced at once). The plan stays until Stripe says the subscription ended."""
    current = subscription_current(account=account)
    if current is None:
        raise SubscriptionError("This organization has no subscription.")
    stripe = stripe_client.client()
    if at_period_end:
        stripe.v1.subscriptions.update(current.stripe_subscription_id, params={"cancel_at_period_end": True})
    else:
        stripe.v1.subscriptions.cancel(current.stripe_subscription_id, params={"invoice_now": True, "prorate": False})
    log.info("subscription %s: cancel (at period end: %s) by user %s", current.stripe_subscription_id, at_period_end,
             getattr(user, "pk", None))
    return current


def billing_portal_url(*, account: BillingAccount, return_url: str) -> str:
    """A Stripe customer portal session (payment methods, invoices) for the account."""
    customer = stripe_client.customer_for(account)
    session = stripe_client.client().v1.billing_portal.sessions.create(params={"customer": customer, "return_url": return_url})
    return session.url


# --- Stripe objects as they arrive -----------------------------------------------------------------


def _id(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.get("id")


def _usage_type(price: Any) -> str:
    if not isinstance(price, Mapping):
        return "licensed"
    return (price.get("recurring") or {}).get("usage_type") or "licensed"


def _when(timestamp: Any) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(int(timestamp), tz=dt.UTC) if timestamp else None


def _account_for(customer: str | None, metadata: Mapping | None) -> BillingAccount:
    account = BillingAccount.objects.filter(stripe_customer_id=customer).first() if customer else None
    if account is None:
        # The customer id is stored before any checkout starts; the metadata is a second way
        # to the account, trusted only when the account has no other Stripe customer.
        account_id = (metadata or {}).get("account_id")
        if account_id and str(account_id).isdigit():
            account = BillingAccount.objects.filter(id=int(account_id), stripe_customer_id__isnull=True).first()
    if account is None:
        raise UnknownAccount(f"no billing account for Stripe customer {customer}")
    return account


def _line_price(line: Mapping) -> str | None:
    """The price of an invoice line, in any of the shapes Stripe API versions use."""
    pricing = line.get("pricing") or {}
    return (
        _id(line.get("price"))
        or _id((pricing.get("price_details") or {}).get("price"))
        or _id(line.get("plan"))
    )


def _subscription_plan(subscription: Mapping) -> Plan | None:
    items = (subscription.get("items") or {}).get("data") or []
    price_ids = [_id(i.get("price")) or _id(i.get("plan")) for i in items if _usage_type(i.get("price")) != "metered"]
    plan = Plan.objects.filter(stripe_price_id__in=[p for p in price_ids if p]).first()
    if plan is None:
        code = (subscription.get("metadata") or {}).get("plan")
        plan = Plan.objects.filter(code=code).first() if code else None
    return plan


def _period(subscription: Mapping) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The current period: on the subscription (API before 2025-03) or on its items (after)."""
    start, end = subscription.get("current_period_start"), subscription.get("current_period_end")
    if not (start and end):
        items = (subscription.get("items") or {}).get("data") or []
        starts = [i["current_period_start"] for i in items if i.get("current_period_start")]
        ends = [i["current_period_end"] for i in items if i.get("current_period_end")]
        start, end = (min(starts) if starts else None), (max(ends) if ends else None)
    return _when(start), _when(end)


def _stale(*, subscription_id: str, event: Mapping) -> bool:
    """A newer event about this subscription was applied already (Stripe does not
    deliver in order). Events of the same second are applied in arrival order."""
    return (
        StripeEvent.objects.filter(
            type__in=SUBSCRIPTION_EVENTS,
            api_created__gt=_when(event.get("created")) or dt.datetime.min.replace(tzinfo=dt.UTC),
            payload__data__object__id=subscription_id,
        )
        .exclude(id=event["id"])
        .exists()
    )


def subscription_sync(*, subscription: Mapping, event: Mapping | None = None) -> Subscription:
    """Store the subscription as Stripe describes it and apply its plan to the
    account (plan, credit line, gateway caches). Idempotent; ``event`` (the webhook
    carrying it) lets an older event that arrives late be skipped.

    Raises ``UnknownAccount``, or ``webhooks.Ignore`` for a subscription to no plan
    of ours or an update that is older than what is stored.
    """
    subscription_id = subscription["id"]
    account = _account_for(_id(subscription.get("customer")), subscription.get("metadata"))
    plan = _subscription_plan(subscription)
    if plan is None:
        raise webhooks.Ignore(f"subscription {subscription_id} is to no plan of ours")
    status = subscription.get("status") or Subscription.Status.INCOMPLETE
    if status not in Subscription.Status.values:
        raise webhooks.Ignore(f"subscription {subscription_id} has an unknown status {status!r}")
    start, end = _period(subscription)
    with transaction.atomic():
        # One subscription change of an account at a time (webhooks race each other).
        BillingAccount.objects.select_for_update().filter(id=account.id).values_list("id", flat=True).get()
        if event is not None and _stale(subscription_id=subscription_id, event=event):
            raise webhooks.Ignore(f"a newer event about {subscription_id} was applied already")
        row = Subscription.objects.filter(stripe_subscription_id=subscription_id).first()
        if row is not None and row.status in FINAL_STATUSES and status != row.status:
            raise webhooks.Ignore(f"subscription {subscription_id} ended ({row.status}); it does not come back")
        if row is not None and status == Subscription.Status.INCOMPLETE and row.status != status:
            raise webhooks.Ignore(f"subscription {subscription_id} is already {row.status}")
        values = {
            "account": account, "plan": plan, "status": status, "current_period_start": start,
            "current_period_end": end, "cancel_at_period_end": bool(subscription.get("cancel_at_period_end")),
        }
        row, _ = Subscription.objects.update_or_create(stripe_subscription_id=subscription_id, defaults=values)
        account_plan_apply(account=account)
    return row


def _entitlement(account: BillingAccount) -> tuple[Plan | None, int] | None:
    """(plan, credit line) the account's subscriptions give it; None if they say nothing yet
    (only a checkout's unpaid subscription: the account keeps what it has)."""
    current = subscription_current(account=account)
    if current is not None:
        plan = current.plan
        credit = plan.overage_limit if current.status in CREDIT_STATUSES and plan.overage_enabled else 0
        return plan, credit
    if account.subscriptions.filter(status__in=ENDED_STATUSES).exists():
        return plan_catalog.free_plan(), 0
    return None


@transaction.atomic
def account_plan_apply(*, account: BillingAccount) -> Plan | None:
    """Derive the account's plan and credit line from its subscriptions (see the module)."""
    entitlement = _entitlement(account)
    if entitlement is None:
        return account.plan
    plan, credit = entitlement
    if account.plan_id != (plan.id if plan else None):
        account.plan = plan
        account.save(update_fields=["plan"])
    credit_line_set(account=account, credit_limit=credit, currency=plan.currency if plan else "usd")
    organization_id = account.organization_id
    transaction.on_commit(lambda: plan_catalog.plan_caches_invalidate(organization_id))
    return plan


def credit_line_set(*, account: BillingAccount, credit_limit: int, currency: str = "usd") -> None:
    """Set the customer wallet's credit line, never below what it owes plus holds."""
    Wallet.objects.filter(account=account, kind=Wallet.Kind.CUSTOMER, currency=currency).update(
        credit_limit=Greatest(Value(credit_limit), F("reserved") - F("balance"))
    )


# --- invoices ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InvoiceApplied:
    invoice: str
    overage: Transfer | None  # the overage_payment credit (new or from an earlier delivery)
    included: Transfer | None  # the included credit lot's transfer
    included_owed: Transfer | None  # included credit that went to overage the new period already used
    note: str


def _invoice_lines(invoice: Mapping) -> list[Mapping]:
    lines = invoice.get("lines") or {}
    data = list(lines.get("data") or [])
    if lines.get("has_more"):
        # A webhook carries the first lines only. A read-only call, the one Stripe call
        # a handler makes: subscription invoices have a handful of lines.
        listed = stripe_client.client().v1.invoices.line_items.list(invoice["id"], params={"limit": 100})
        data = [line.to_dict() for line in listed.auto_paging_iter()]
    return data


def _subscription_of(invoice: Mapping) -> str | None:
    parent = invoice.get("parent") or {}
    return _id(invoice.get("subscription")) or _id((parent.get("subscription_details") or {}).get("subscription"))


def _included_for(lines: Iterable[Mapping]) -> tuple[int, dt.datetime | None]:
    """The included credit a set of fee lines pays for, and when it expires.

    Each fee line buys its plan's included credit in proportion to the fee it
    charges: a whole period's fee, all of it; a prorated upgrade, the prorated
    part (the unused old plan's line is negative and takes its part back).
    Rounded down to the micro-unit, once, on the sum.
    """
    fee_plans = {p.stripe_price_id: p for p in Plan.objects.exclude(stripe_price_id="") if p.monthly_fee > 0}
    total, expires = Fraction(0), None
    for line in lines:
        plan = fee_plans.get(_line_price(line) or "")
        if plan is None:
            continue
        amount = int(line.get("amount") or 0)  # cents, negative for an unused period given back
        amount_micros = amount * stripe_client.micros_per_minor_unit(plan.currency)
        total += Fraction(plan.included_credit * amount_micros, plan.monthly_fee)
        end = _when((line.get("period") or {}).get("end"))
        if amount > 0 and end is not None and (expires is None or end > expires):
            expires = end
    return max(0, math.floor(total)), expires


def _overage_for(lines: Iterable[Mapping]) -> int:
    """Micro-units of metered overage the lines charge (a metered line's quantity is the meter's sum)."""
    meter_prices = set(Plan.objects.exclude(stripe_meter_price_id="").values_list("stripe_meter_price_id", flat=True))
    total = 0
    for line in lines:
        price = line.get("price")
        if _line_price(line) in meter_prices or _usage_type(price) == "metered":
            total += int(line.get("quantity") or 0)
    return total


def invoice_paid_apply(*, invoice: Mapping, source: str) -> InvoiceApplied | None:
    """Credit a paid subscription invoice to the ledger, once (contract, also used by
    reconciliation's heal). None if it is not a paid subscription invoice.

    * Overage: the metered lines charged for usage that went below a zero balance;
      an ``overage_payment`` (funding → customer, "inv:<id>:overage") brings the
      balance back up by exactly those micro-units.
    * Included credit: an ``included`` lot ("inv:<id>:included") expiring at the
      end of the period the fee paid for. Applied after the overage, so it starts
      on a repaid balance. If the balance is still below zero (usage of the new
      period that ran on the credit line before the invoice was paid), that much
      of the included credit pays it instead, as a ``grant`` ("inv:<id>:included-owed"):
      included credit covers the period's usage, and promotional credit cannot sit
      on a negative balance. That usage stays metered, and what its invoice later
      charges comes back as overage payment, so nothing is paid twice.

    Duplicate or out-of-order deliveries change nothing (references are unique).
    """
    invoice_id = invoice.get("id")
    paid = invoice.get("status") == "paid" or invoice.get("paid") is True
    subscription_id = _subscription_of(invoice)
    if not invoice_id or not paid or not subscription_id:
        return None
    details = (invoice.get("parent") or {}).get("subscription_details") or invoice.get("subscription_details") or {}
    account = _account_for(_id(invoice.get("customer")), details.get("metadata"))
    lines = _invoice_lines(invoice)
    overage = _overage_for(lines)
    included, expires_at = _included_for(lines)
    currency = (invoice.get("currency") or "usd").lower()
    now = timezone.now()
    notes = []
    overage_transfer = included_transfer = owed_transfer = None
    with transaction.atomic():
        # The wallet first (the lock order of settlement), so the balance read below holds.
        wallet = Wallet.objects.select_for_update().get(account=account, kind=Wallet.Kind.CUSTOMER, currency=currency)
        funding = services.wallet(account_id=account.id, currency=currency, kind=Wallet.Kind.FUNDING)
        if overage > 0:
            overage_transfer, created = services.transfer_post(
                kind=Transfer.Kind.OVERAGE_PAYMENT, debit_wallet=funding, credit_wallet=wallet, amount=overage,
                reference=f"inv:{invoice_id}:overage", stripe_object=invoice_id,
                description=f"Overage paid with invoice {invoice_id}",
            )
            notes.append(f"overage {overage}" + ("" if created else " (already credited)"))
        done = Transfer.objects.filter(
            reference__in=[f"inv:{invoice_id}:included", f"inv:{invoice_id}:included-owed"],
            kind__in=[Transfer.Kind.INCLUDED, Transfer.Kind.GRANT],
        )
        if included > 0 and done.exists():
            notes.append("included credit already granted")
            included_transfer = done.filter(kind=Transfer.Kind.INCLUDED).first()
            owed_transfer = done.filter(kind=Transfer.Kind.GRANT).first()
        elif included > 0 and (expires_at is None or expires_at <= now):
            notes.append(f"included credit {included} not granted: its period ended")
        elif included > 0:
            wallet.refresh_from_db(fields=["balance"])
            owed = min(included, max(0, -wallet.balance))
            if owed:
                owed_transfer, _ = services.transfer_post(
                    kind=Transfer.Kind.GRANT, debit_wallet=funding, credit_wallet=wallet, amount=owed,
                    reference=f"inv:{invoice_id}:included-owed", stripe_object=invoice_id,
                    description=f"Included credit (invoice {invoice_id}) for usage already on the credit line",
                )
            if included - owed:
                included_transfer = services.wallet_credit(
                    wallet=wallet, amount=included - owed, kind=Transfer.Kind.INCLUDED,
                    reference=f"inv:{invoice_id}:included", stripe_object=invoice_id, expires_at=expires_at,
                    description=f"Included credit until {expires_at:%Y-%m-%d} (invoice {invoice_id})",
                )
            notes.append(f"included {included}" + (f" ({owed} for usage already on the credit line)" if owed else ""))
        entitlement = _entitlement(account)
        if entitlement is not None:  # the balance moved: a credit line kept up for what was owed may come down
            credit_line_set(account=account, credit_limit=entitlement[1], currency=currency)
    log.info("invoice %s applied from %s: %s", invoice_id, source, "; ".join(notes) or "nothing to credit")
    return InvoiceApplied(invoice=invoice_id, overage=overage_transfer, included=included_transfer,
                          included_owed=owed_transfer, note="; ".join(notes) or "nothing to credit")


# --- webhook handlers (registered through billing/stripe_handlers.py) --------------------------------


def _on_subscription(event: dict) -> str:
    try:
        row = subscription_sync(subscription=event["data"]["object"], event=event)
    except UnknownAccount as exc:
        raise webhooks.Ignore(str(exc)) from None
    return f"{row.stripe_subscription_id}: {row.status} on {row.plan.code}"


for _type in SUBSCRIPTION_EVENTS:
    webhooks.handler(_type)(_on_subscription)


@webhooks.handler("invoice.paid")
def on_invoice_paid(event: dict) -> str:
    try:
        applied = invoice_paid_apply(invoice=event["data"]["object"], source=f"event:{event['id']}")
    except UnknownAccount as exc:
        raise webhooks.Ignore(str(exc)) from None
    if applied is None:
        raise webhooks.Ignore("not a paid subscription invoice")
    return applied.note
