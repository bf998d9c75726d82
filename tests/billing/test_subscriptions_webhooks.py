"""Subscription and invoice webhooks, event by event: signed events posted to our webhook view
(tests/billing/stripe_payloads.py signs them with the stripe library's scheme). The objects
are in the shape of the current API (periods on subscription items, an invoice's subscription
under ``parent``, line prices under ``pricing``); the end-to-end tests get the emulator's.

What they pin: duplicates and out-of-order deliveries change nothing, an ended subscription
stays ended, the credit line never drops below what is owed, included credit is granted once
per invoice (prorated for an upgrade), overage paid comes back exactly, and usage that already
ran on the credit line is paid first from the new included credit.
"""
from __future__ import annotations

import datetime as dt
import time

import pytest
from django.utils import timezone

from billing import ledger
from billing.invariants import check_ledger
from billing.models import (
    BillingAccount,
    CreditLot,
    StripeEvent,
    Subscription,
    Transfer,
    Wallet,
)
from billing.pricing import Usage
from tests.billing import stripe_payloads as sp
from tests.billing.subscription_kit import plans_in_db
from tests.billing.test_ledger import price, reserve  # noqa: F401  (fixture)
from tests.conftest import run_async

DAY = 86_400
CUSTOMER = "cus_alice_subs"


@pytest.fixture(autouse=True)
def webhook_secret(settings):
    settings.STRIPE_WEBHOOK_SECRETS = [sp.SECRET]


@pytest.fixture
def plans(transactional_db):
    plans = plans_in_db()
    for code in ("developer", "team"):
        plans[code].stripe_price_id, plans[code].stripe_meter_price_id = f"price_{code}_fee", f"price_{code}_ovr"
        plans[code].save(update_fields=["stripe_price_id", "stripe_meter_price_id"])
    return plans


@pytest.fixture
def account(alice) -> BillingAccount:
    account = alice.organization.billing_account
    account.stripe_customer_id = CUSTOMER
    account.save(update_fields=["stripe_customer_id"])
    return account


def wallet(account) -> Wallet:
    return Wallet.objects.get(account=account, kind=Wallet.Kind.CUSTOMER)


def subscription(plan, *, sub_id="sub_1", status="active", start=None, cancel_at_period_end=False,
                 customer=CUSTOMER, metered=True) -> dict:
    start = start or int(time.time()) - DAY
    end = start + 30 * DAY
    items = [{"id": f"si_{sub_id}_fee", "object": "subscription_item", "quantity": 1,
              "price": {"id": plan.stripe_price_id, "object": "price", "recurring": {"interval": "month",
                                                                                   "usage_type": "licensed"}},
              "current_period_start": start, "current_period_end": end}]
    if metered:
        items.append({"id": f"si_{sub_id}_ovr", "object": "subscription_item",
                      "price": {"id": plan.stripe_meter_price_id, "object": "price",
                                "recurring": {"interval": "month", "usage_type": "metered"}},
                      "current_period_start": start, "current_period_end": end})
    return {"id": sub_id, "object": "subscription", "customer": customer, "status": status,
            "cancel_at_period_end": cancel_at_period_end, "metadata": {"plan": plan.code},
            "items": {"object": "list", "data": items, "has_more": False}}


def line(price_id: str, amount: int, *, start: int, end: int, quantity: int = 1) -> dict:
    return {"id": sp.new_id("il"), "object": "line_item", "amount": amount, "currency": "usd", "quantity": quantity,
            "period": {"start": start, "end": end},
            "pricing": {"type": "price_details", "price_details": {"price": price_id, "product": "prod_x"}}}


def invoice(lines: list[dict], *, invoice_id=None, sub_id="sub_1", status="paid", customer=CUSTOMER) -> dict:
    return {"id": invoice_id or sp.new_id("in"), "object": "invoice", "customer": customer, "status": status,
            "currency": "usd", "billing_reason": "subscription_cycle",
            "parent": {"type": "subscription_details", "subscription_details": {"subscription": sub_id}},
            "lines": {"object": "list", "data": lines, "has_more": False},
            "amount_paid": sum(x["amount"] for x in lines) if status == "paid" else 0}


def post(event_type: str, obj: dict, *, created: int | None = None, event_id: str | None = None):
    evt = sp.event(event_type, obj, event_id=event_id)
    if created is not None:
        evt["created"] = created
    response = sp.post(evt)
    assert response.status_code == 200, response.content
    return response.json()


def spend(tenant, price_, amount: int, request_id: str) -> None:
    """A request of exactly ``amount`` micro-units, reserved and settled by the hot-path SQL."""
    async def run():
        held = await reserve(tenant, price_, amount, request_id=request_id)
        await ledger.settle(reservation=held, usage=Usage(input_tokens=amount, output_tokens=0), now=timezone.now())

    run_async(run())


def period_end() -> int:
    return int(time.time()) + 29 * DAY


# --- subscriptions ---------------------------------------------------------------------------------


def test_subscription_events_set_the_plan_and_credit_line_once(alice, account, plans):
    evt = sp.event("customer.subscription.created", subscription(plans["developer"]))
    answers = [sp.post(evt) for _ in range(3)]
    assert [a.json()["duplicate"] for a in answers] == [False, True, True]
    account.refresh_from_db()
    row = Subscription.objects.get()
    assert account.plan == plans["developer"] and row.plan == plans["developer"]
    assert row.status == "active" and row.current_period_end - row.current_period_start == dt.timedelta(days=30)
    assert wallet(account).credit_limit == plans["developer"].overage_limit
    assert StripeEvent.objects.get().status == StripeEvent.Status.PROCESSED


def test_an_older_event_arriving_late_is_skipped(alice, account, plans):
    now = int(time.time())
    post("customer.subscription.updated", subscription(plans["team"]), created=now)
    late = post("customer.subscription.created", subscription(plans["developer"]), created=now - 5)
    assert late["status"] == "ignored" and "newer event" in StripeEvent.objects.get(id=late["id"]).error
    account.refresh_from_db()
    assert account.plan == plans["team"] and wallet(account).credit_limit == plans["team"].overage_limit


def test_a_canceled_subscription_does_not_come_back(alice, account, plans):
    post("customer.subscription.created", subscription(plans["developer"]))
    post("customer.subscription.deleted", subscription(plans["developer"], status="canceled"))
    revived = post("customer.subscription.updated", subscription(plans["team"]), created=int(time.time()) + 5)
    assert revived["status"] == "ignored"
    account.refresh_from_db()
    assert Subscription.objects.get().status == "canceled"
    assert account.plan == plans["free"] and wallet(account).credit_limit == 0


def test_the_credit_line_never_drops_below_what_is_owed(alice, account, plans, price):  # noqa: F811
    post("customer.subscription.created", subscription(plans["team"]))
    spend(alice, price, 1_000_000 + 3_000_000, "req_over")  # the prepaid million, then 3,000,000 on the line
    held = run_async(reserve(alice, price, 500_000, request_id="req_held"))
    assert (wallet(account).balance, wallet(account).reserved) == (-3_000_000, 500_000)

    # Down to Developer (a 1,000,000 line): the line stays at what is owed plus held.
    post("customer.subscription.updated", subscription(plans["developer"]))
    assert wallet(account).credit_limit == 3_500_000
    run_async(ledger.void(reservation=held, now=timezone.now()))

    # The invoice charges the 3,000,000 of overage: paid back, the line comes down to the plan's.
    end = period_end()
    lines = [line("price_developer_fee", 2000, start=end - 30 * DAY, end=end),
             line("price_developer_ovr", 300, start=end - 60 * DAY, end=end - 30 * DAY, quantity=3_000_000)]
    post("invoice.paid", invoice(lines))
    w = wallet(account)
    assert w.credit_limit == plans["developer"].overage_limit
    assert w.balance == plans["developer"].included_credit and w.promo == plans["developer"].included_credit
    # Cancelled with nothing owed: Free, no line.
    post("customer.subscription.deleted", subscription(plans["developer"], status="canceled"))
    assert wallet(account).credit_limit == 0
    assert check_ledger() == []


def test_past_due_keeps_the_plan_but_closes_the_credit_line(alice, account, plans):
    post("customer.subscription.created", subscription(plans["developer"]))
    post("customer.subscription.updated", subscription(plans["developer"], status="past_due"))
    account.refresh_from_db()
    assert account.plan == plans["developer"] and wallet(account).credit_limit == 0
    post("customer.subscription.updated", subscription(plans["developer"]))
    assert wallet(account).credit_limit == plans["developer"].overage_limit


def test_a_checkout_that_was_never_paid_changes_nothing(alice, account, plans):
    post("customer.subscription.created", subscription(plans["developer"], status="incomplete"))
    post("customer.subscription.updated", subscription(plans["developer"], status="incomplete_expired"))
    account.refresh_from_db()
    assert account.plan is None and wallet(account).credit_limit == 0  # no plan: not even Free
    assert Subscription.objects.get().status == "incomplete_expired"


def test_events_of_unknown_customers_or_prices_are_stored_and_ignored(alice, account, plans):
    stranger = post("customer.subscription.created", subscription(plans["developer"], customer="cus_stranger"))
    foreign = subscription(plans["developer"], sub_id="sub_foreign")
    foreign["items"]["data"][0]["price"]["id"] = "price_of_another_product"
    foreign["metadata"] = {}
    other = post("customer.subscription.created", foreign)
    assert (stranger["status"], other["status"]) == ("ignored", "ignored")
    assert not Subscription.objects.exists() and BillingAccount.objects.get(id=account.id).plan is None


# --- invoices ----------------------------------------------------------------------------------------


def test_invoice_paid_grants_included_credit_once_and_pays_back_overage_exactly(alice, account, plans, price):  # noqa: F811
    team = plans["team"]
    post("customer.subscription.created", subscription(team))
    spend(alice, price, 1_000_000 + 12_345, "req_over")
    assert wallet(account).balance == -12_345
    end = period_end()
    paid = invoice([line("price_team_fee", 10_000, start=end - 30 * DAY, end=end),
                    line("price_team_ovr", 1, start=end - 60 * DAY, end=end - 30 * DAY, quantity=12_345)])
    # The same invoice three times, as one event redelivered and as two different events.
    evt = sp.event("invoice.paid", paid)
    sp.post(evt)
    sp.post(evt)
    post("invoice.paid", paid)
    payment = Transfer.objects.get(kind=Transfer.Kind.OVERAGE_PAYMENT)
    assert (payment.amount, payment.reference, payment.stripe_object) == (12_345, f"inv:{paid['id']}:overage", paid["id"])
    included = Transfer.objects.get(kind=Transfer.Kind.INCLUDED)
    assert included.amount == team.included_credit and included.reference == f"inv:{paid['id']}:included"
    assert included.credit_lot.expires_at == dt.datetime.fromtimestamp(end, tz=dt.UTC)
    w = wallet(account)
    assert (w.balance, w.promo) == (team.included_credit, team.included_credit)
    assert check_ledger() == []


def test_a_prorated_upgrade_grants_the_prorated_difference_in_included_credit(alice, account, plans):
    post("customer.subscription.created", subscription(plans["developer"]))
    end = period_end()
    # A third of the period left: 1/3 of Team's fee charged, 1/3 of Developer's given back.
    upgrade = invoice([line("price_team_fee", 3_333, start=end - 10 * DAY, end=end),
                       line("price_developer_fee", -667, start=end - 10 * DAY, end=end)])
    post("invoice.paid", upgrade)
    granted = Transfer.objects.get(kind=Transfer.Kind.INCLUDED)
    # 600 x 3333/10000 - 100 x 667/2000 = 199.98 - 33.35 = 166.63 → 166 (rounded down once, on the sum)
    assert granted.amount == 166
    downgrade = invoice([line("price_developer_fee", 667, start=end - 10 * DAY, end=end),
                         line("price_team_fee", -3_333, start=end - 10 * DAY, end=end)])
    note = post("invoice.paid", downgrade)
    assert note["status"] == "processed"
    assert Transfer.objects.filter(kind=Transfer.Kind.INCLUDED).count() == 1  # a downgrade grants nothing
    assert check_ledger() == []


def test_new_included_credit_first_covers_usage_already_on_the_credit_line(alice, account, plans, price):  # noqa: F811
    team = plans["team"]
    post("customer.subscription.created", subscription(team))
    spend(alice, price, 1_000_000 + 250, "req_early")  # the new period began; its invoice is not paid yet
    end = period_end()
    paid = invoice([line("price_team_fee", 10_000, start=end - 30 * DAY, end=end)])
    post("invoice.paid", paid)
    owed = Transfer.objects.get(kind=Transfer.Kind.GRANT, reference=f"inv:{paid['id']}:included-owed")
    lot = CreditLot.objects.get()
    assert owed.amount == 250 and lot.amount == team.included_credit - 250
    w = wallet(account)
    assert (w.balance, w.promo) == (team.included_credit - 250, team.included_credit - 250)
    post("invoice.paid", paid)  # again: nothing more
    assert Transfer.objects.filter(stripe_object=paid["id"]).count() == 2
    assert check_ledger() == []


def test_an_invoice_paid_before_its_subscription_is_known_still_credits(alice, account, plans):
    end = period_end()
    post("invoice.paid", invoice([line("price_developer_fee", 2_000, start=end - 30 * DAY, end=end)]))
    account.refresh_from_db()
    assert Transfer.objects.get(kind=Transfer.Kind.INCLUDED).amount == plans["developer"].included_credit
    assert account.plan is None and wallet(account).credit_limit == 0  # the subscription's event sets those
    post("customer.subscription.created", subscription(plans["developer"]))
    account.refresh_from_db()
    assert account.plan == plans["developer"] and wallet(account).credit_limit == plans["developer"].overage_limit


def test_invoices_that_are_not_paid_subscription_invoices_credit_nothing(alice, account, plans):
    end = period_end()
    fee = [line("price_developer_fee", 2_000, start=end - 30 * DAY, end=end)]
    open_invoice = post("invoice.paid", invoice(fee, status="open"))
    one_off = invoice(fee)
    one_off["parent"] = None
    not_subscription = post("invoice.paid", one_off)
    stranger = post("invoice.paid", invoice(fee, customer="cus_stranger"))
    ended = post("invoice.paid", invoice([line("price_developer_fee", 2_000, start=end - 90 * DAY,
                                                end=int(time.time()) - DAY)]))
    assert [open_invoice["status"], not_subscription["status"], stranger["status"]] == ["ignored"] * 3
    assert ended["status"] == "processed" and "period ended" in StripeEvent.objects.get(id=ended["id"]).error
    assert not Transfer.objects.exclude(kind=Transfer.Kind.GRANT).exists()
    assert wallet(account).balance == 1_000_000
