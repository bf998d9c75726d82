"""Issue 5's "done when", end to end: money flows through the real ``stripe`` library and the Stripe
emulator (localstripe for customers, payment methods, payment intents, charges, refunds and
subscriptions; the emulator's HTTP-level fake for Prices, Checkout Sessions, meters, disputes,
payouts and balance transactions with fees), signed webhooks reach a live server process, usage
goes through the real gateway (openai SDK → simulator node), and the day is reconciled:

1. a top-up, a subscription period with overage (included credit, usage into the credit line,
   meter events sent and acknowledged, the renewal invoice paid), a refund and a dispute →
   reconciling the day reports zero discrepancies;
2. then a top-up whose webhook the emulator drops → exactly one ``missing_credit`` → the heal
   applies it once (wallet right, ledger clean) → a re-run reports zero.
"""
from __future__ import annotations

import datetime as dt

import pytest
from django.db.models import Sum
from django.utils import timezone

from billing import metering
from billing.invariants import check_ledger
from billing.models import MeterOutbox, Transfer, Wallet
from billing.reconcile import reconcile_run, run_heal
from billing.reconcile.reports import finance_report
from tests.billing.checkout_flow import credits, login, start_topup
from tests.billing.subscription_kit import (
    customer_wallet,
    delivered,
    subscribe,
    synced_plans,
)
from tests.billing.test_reconcile_stripe import forget_every_stripe_object
from tests.billing.test_refunds_e2e import refund_from_console
from tests.billing.test_subscriptions_e2e import chat
from tests.conftest import cache_settle, make_tenant

WEBHOOK_PATH = "/billing/stripe/webhook"


@pytest.fixture
def emulator(stripe_emulator, server, settings):
    """An empty Stripe account (every balance transaction of the day is this test's), delivering
    every event to the live server; a payment without its credit counts as missing at once."""
    forget_every_stripe_object(stripe_emulator)
    stripe_emulator.register_webhook(server.url + WEBHOOK_PATH)
    settings.RECONCILE_WEBHOOK_GRACE_SECONDS = 0
    return stripe_emulator


def paid_topup(client, tenant, emu, dollars: str, *, drop_webhook: bool = False):
    row = start_topup(client, tenant, dollars)
    if drop_webhook:
        emu.drop_next(1, type="checkout.session.completed")
    emu.pay(row.checkout_url)
    row.refresh_from_db()
    return row


def found(run) -> list[tuple[str, str]]:
    return sorted(run.discrepancies.values_list("kind", "status"))


def test_a_day_of_stripe_money_reconciles_and_a_dropped_webhook_is_found_and_healed(
    client, server, sim_node, emulator, alice, charlie,
):
    # A top-up, part of it refunded; a second top-up, disputed.
    login(client, alice)
    first = paid_topup(client, alice, emulator, "40")
    (topup,) = credits(first)
    refund_from_console(client, alice, topup, "15")
    emulator.deliveries(type="charge.refunded", wait_for=1)
    second = paid_topup(client, alice, emulator, "25")
    (disputed,) = credits(second)
    emulator.open_dispute(payment_intent=disputed.stripe_object)

    # A subscription period with overage: included credit, usage through the gateway past the
    # prepaid balance into the credit line, meter events sent and acknowledged, the renewal paid.
    plans = synced_plans()
    dora = make_tenant("dora", credit=50)
    subscription = subscribe(emulator, dora, plans["developer"])
    cache_settle()
    chat(dora, server, n=4)
    wallet = customer_wallet(dora)
    assert wallet.balance < 0 and wallet.promo == 0
    overage = Transfer.objects.filter(kind="usage", debit_wallet=wallet).aggregate(s=Sum("overage_amount"))["s"]
    assert overage == -wallet.balance > 0
    assert metering.meter_outbox_send().sent == MeterOutbox.objects.filter(account=wallet.account).count()
    # Stripe's meter summaries cover whole minutes: acknowledged once the minute is over.
    acked = metering.meter_outbox_acknowledge(now=timezone.now() + dt.timedelta(minutes=1))
    assert acked.acknowledged == MeterOutbox.objects.filter(account=wallet.account).count()
    renewal = emulator.renew_subscription(subscription.stripe_subscription_id)["invoice"]
    delivered(emulator, "invoice.paid", 2)
    (repaid,) = Transfer.objects.filter(kind=Transfer.Kind.OVERAGE_PAYMENT, stripe_object=renewal["id"])
    assert repaid.amount == overage and customer_wallet(dora).balance >= 0
    emulator.payout("usd")
    day = topup.finished_at.date()

    run = reconcile_run(day=day)

    assert (run.status, found(run), run.error) == ("ok", [], "")
    matched = run.summary["checks"]["stripe"]["ledger"]
    assert set(matched) >= {"topup", "refund", "dispute", "included", "overage_payment"}
    assert all(row["ledger"] == row["stripe"] for row in matched.values())
    assert matched["overage_payment"]["ledger"] == overage
    usage = run.summary["checks"]["usage"]["per_model"]
    assert all(m["difference"] == 0 and m["charged"] == m["expected"] for m in usage.values())
    assert run.summary["checks"]["stripe"]["meter_outbox"]["acknowledged"]["value"] == overage
    assert check_ledger() == []

    # The finance report of the day: revenue from each flow, as the ledger and Stripe agree.
    fee = plans["developer"].monthly_fee
    report = finance_report(start=day, end=day)
    totals = report.totals
    assert (totals.topups, totals.refunds, totals.disputes) == (65_000_000, 15_000_000, 25_000_000)
    assert (totals.subscription_fees, totals.overage_paid) == (2 * fee, overage)  # first invoice and renewal
    assert totals.revenue == 65_000_000 - 15_000_000 - 25_000_000 + 2 * fee + overage
    assert totals.usage_overage == overage

    # A top-up whose webhook never arrives (Stripe took the money; the ledger has nothing).
    # Charlie's: alice's wallet is suspended by her dispute, so she cannot top up.
    client.logout()
    login(client, charlie)
    before = Wallet.objects.get(id=charlie.wallet.id).balance
    lost = paid_topup(client, charlie, emulator, "30", drop_webhook=True)
    assert credits(lost) == []

    found_it = reconcile_run(day=day, rerun_of=run)

    assert found(found_it) == [("missing_credit", "open")]
    missing = found_it.discrepancies.get()
    assert missing.amount == 30_000_000 and missing.references["checkout_session"] == lost.stripe_session_id

    run_heal(run=found_it)

    missing.refresh_from_db()
    found_it.refresh_from_db()
    (healed,) = credits(lost)
    assert (missing.status, found_it.status) == ("healed", "ok")
    assert missing.note.startswith(f"credit applied by reconciliation run {found_it.id}")
    assert healed.amount == 30_000_000
    assert Wallet.objects.get(id=charlie.wallet.id).balance == before + 30_000_000
    run_heal(run=found_it)  # again: nothing more
    assert len(credits(lost)) == 1 and check_ledger() == []

    after = reconcile_run(day=day, rerun_of=found_it)
    assert (after.status, found(after)) == ("ok", [])
