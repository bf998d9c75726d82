"""Check 3 (the ledger against Stripe) and the heal, through the real ``stripe`` library against
the Stripe emulator (localstripe for payments, charges and refunds; the emulator's HTTP-level fake
for Checkout Sessions, disputes, payouts and balance transactions with fees). Money arrives the
way it does in production: console top-up → hosted Checkout page paid → signed webhook delivered
by the emulator to a live server. A dropped delivery is the emulator's "drop next" switch.
"""
from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from billing import recharge
from billing.invariants import check_ledger
from billing.models import Discrepancy, ReconciliationRun, StripeEvent, Transfer, Wallet
from billing.pricing import Usage
from billing.reconcile import reconcile_run, run_heal
from billing.services import wallet_credit
from tests.billing.checkout_flow import credits, login, start_topup
from tests.billing.test_ledger import price  # noqa: F401 - fixture
from tests.billing.test_reconcile import request as paid_request
from tests.billing.test_refunds_e2e import refund_from_console

WEBHOOK_PATH = "/billing/stripe/webhook"
MICROS = 10_000  # per cent


def forget_every_stripe_object(emu) -> None:
    """Empty the emulator's Stripe account, so the day's balance transactions are this test's only.

    billing.metering keeps the billing meter's id for the process: it is gone with the rest, so
    that is forgotten too (the next sender looks the meter up again, as after a restart).
    """
    from billing import metering

    emu.reset(objects=True)
    metering._meter_ids.clear()


@pytest.fixture
def emulator(stripe_emulator, server, settings):
    """A Stripe account with nothing in it yet (today's balance transactions are all this test's),
    delivering every event to the live server; payments count as missing at once (no grace)."""
    forget_every_stripe_object(stripe_emulator)
    stripe_emulator.register_webhook(server.url + WEBHOOK_PATH)
    settings.RECONCILE_WEBHOOK_GRACE_SECONDS = 0
    return stripe_emulator


def balance(tenant) -> int:
    return Wallet.objects.get(id=tenant.wallet.id).balance


def paid_topup(client, tenant, emu, dollars: str, *, drop_webhook: bool = False):
    row = start_topup(client, tenant, dollars)
    if drop_webhook:
        emu.drop_next(1, type="checkout.session.completed")
    emu.pay(row.checkout_url)
    row.refresh_from_db()
    return row


def kinds(run: ReconciliationRun) -> list[str]:
    return sorted(run.discrepancies.values_list("kind", flat=True))


def test_top_ups_refunds_disputes_and_a_payout_reconcile_with_zero_discrepancies(client, alice, emulator):
    login(client, alice)
    first = paid_topup(client, alice, emulator, "25")
    second = paid_topup(client, alice, emulator, "40")
    (topup,) = credits(second)
    refund_from_console(client, alice, topup, "15")
    emulator.deliveries(type="charge.refunded", wait_for=1)
    (first_credit,) = credits(first)
    dispute = emulator.open_dispute(payment_intent=first_credit.stripe_object)["dispute"]
    emulator.close_dispute(dispute["id"], "won")
    emulator.payout("usd")
    day = first_credit.finished_at.date()

    run = reconcile_run(day=day)

    assert (run.status, kinds(run), run.error) == ("ok", [], "")
    stripe = run.summary["checks"]["stripe"]
    ledger = stripe["ledger"]
    assert ledger["topup"] == {"count": 2, "ledger": 65_000_000, "stripe": 65_000_000,
                               "fee": (30 + 73) * MICROS + (30 + 116) * MICROS}  # 2.9% + 30c each
    assert ledger["refund"]["ledger"] == ledger["refund"]["stripe"] == 15_000_000
    assert ledger["dispute"]["ledger"] == ledger["dispute"]["stripe"] == 25_000_000
    assert ledger["dispute"]["fee"] == 1_500 * MICROS
    assert ledger["dispute_won"]["ledger"] == ledger["dispute_won"]["stripe"] == 25_000_000
    assert stripe["stripe"]["matched"] == 5  # two payments, a refund, the withdrawal and its reinstatement
    assert stripe["payouts"]["count"] == 1
    assert check_ledger() == []


def test_a_dropped_webhook_is_one_missing_credit_that_the_heal_closes_once(client, alice, emulator):
    login(client, alice)
    row = paid_topup(client, alice, emulator, "25", drop_webhook=True)
    assert credits(row) == [] and balance(alice) == 1_000_000
    [dropped] = emulator.deliveries(type="checkout.session.completed", status="dropped")
    day = row.created_at.date()

    run = reconcile_run(day=day)

    assert run.status == "discrepancies" and kinds(run) == ["missing_credit"]
    missing = run.discrepancies.get()
    refs = missing.references
    assert missing.amount == 25_000_000 and missing.status == "open"
    assert (refs["checkout_session"], refs["purpose"]) == (row.stripe_session_id, "checkout")
    assert refs["account"] == alice.organization.billing_account.id
    assert refs["payment_intent"].startswith("pi_") and refs["charge"].startswith("ch_")
    assert (refs["bt_amount"], refs["fee"], refs["net"]) == (25_000_000, 103 * MICROS, 25_000_000 - 103 * MICROS)

    outcomes = run_heal(run=run)

    missing.refresh_from_db()
    run.refresh_from_db()
    (credit,) = credits(row)
    assert missing.status == "healed" and run.status == "ok"
    assert missing.note.startswith(f"credit applied by reconciliation run {run.id}")
    assert outcomes == [(missing, missing.note)] and missing.references["healed_transfers"] == [credit.id]
    assert (credit.amount, credit.stripe_object) == (25_000_000, refs["payment_intent"])
    assert balance(alice) == 26_000_000

    # Healing again, and the dropped webhook arriving after all, credit nothing more.
    assert run_heal(run=run) == []
    emulator.replay(dropped["event_id"])
    assert StripeEvent.objects.get(id=dropped["event_id"]).error == f"already credited (cs:{row.stripe_session_id})"
    assert len(credits(row)) == 1 and balance(alice) == 26_000_000 and check_ledger() == []

    rerun = reconcile_run(day=day, rerun_of=run)
    assert (rerun.status, kinds(rerun)) == ("ok", [])


def test_reconcile_with_heal_credits_in_the_same_run_and_a_second_run_finds_nothing(client, alice, emulator):
    login(client, alice)
    row = paid_topup(client, alice, emulator, "10", drop_webhook=True)
    run = reconcile_run(day=row.created_at.date(), heal=True)
    assert run.status == "ok" and list(run.discrepancies.values_list("kind", "status")) == [("missing_credit", "healed")]
    again = reconcile_run(day=row.created_at.date(), heal=True)
    assert kinds(again) == [] and len(credits(row)) == 1 and balance(alice) == 11_000_000


def test_a_payment_younger_than_the_grace_is_in_flight_not_missing(client, alice, emulator, settings):
    settings.RECONCILE_WEBHOOK_GRACE_SECONDS = 3600
    login(client, alice)
    row = paid_topup(client, alice, emulator, "10", drop_webhook=True)
    run = reconcile_run(day=row.created_at.date())
    assert (run.status, kinds(run)) == ("ok", []) and run.summary["checks"]["stripe"]["stripe"]["in_flight"] == 1


def test_a_refund_whose_webhooks_were_dropped_is_a_missing_refund(client, alice, emulator):
    login(client, alice)
    row = paid_topup(client, alice, emulator, "20")
    (topup,) = credits(row)
    emulator.drop_next(10)  # every event of the refund (refund.created, charge.refunded, …)
    refund_from_console(client, alice, topup, "5")
    run = reconcile_run(day=topup.finished_at.date())
    assert kinds(run) == ["missing_refund"]
    missing = run.discrepancies.get()
    assert missing.amount == -5_000_000 and missing.references["stripe_object"].startswith("re_")
    assert not Discrepancy.objects.filter(kind="missing_refund", status="healed").exists()  # a person decides


def test_a_ledger_credit_stripe_does_not_back_is_found(client, alice, emulator):
    login(client, alice)
    row = paid_topup(client, alice, emulator, "10", drop_webhook=True)
    pi = emulator.client().v1.checkout.sessions.retrieve(row.stripe_session_id).payment_intent
    # Someone credits the payment by hand, for the wrong amount, and invents another one.
    wallet_credit(wallet=alice.wallet, amount=12_000_000, kind=Transfer.Kind.TOPUP, reference="manual-1", stripe_object=pi)
    wallet_credit(wallet=alice.wallet, amount=3_000_000, kind=Transfer.Kind.TOPUP, reference="manual-2",
                  stripe_object="pi_doesnotexist")
    run = reconcile_run(day=row.created_at.date())
    assert kinds(run) == ["missing_balance_transaction", "stripe_amount_mismatch"]
    mismatch = run.discrepancies.get(kind="stripe_amount_mismatch")
    assert mismatch.amount == 2_000_000
    assert (mismatch.references["stripe_amount"], mismatch.references["fee"]) == (10_000_000, 59 * MICROS)
    ghost = run.discrepancies.get(kind="missing_balance_transaction")
    assert ghost.amount == 3_000_000 and ghost.references["stripe_object"] == "pi_doesnotexist"


def test_stripe_unreachable_fails_the_run_but_keeps_the_other_checks(alice, settings):
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # nothing listens there
    run = reconcile_run(day=alice.wallet.created_at.date())
    assert run.status == "failed" and "Stripe could not be asked" in run.error
    assert "error" in run.summary["checks"]["stripe"] and run.summary["checks"]["ledger"]["posted"]["grant"]["count"] == 1


def test_an_auto_recharge_whose_webhook_was_dropped_is_healed_through_credit_payment_intent(emulator, alice, price):  # noqa: F811
    from tests.billing.test_recharge import AMOUNT, configure, save_card

    save_card(alice)
    configure(alice)
    emulator.drop_next(1, type="payment_intent.succeeded")
    # Spend down to below the threshold (a request with its record): the scan charges the card.
    paid_request(alice, price, request_id="req_1", usage=Usage(600_000, 0), hold=600_000)
    recharge.auto_recharge_scan()
    emulator.deliveries(type="payment_intent.succeeded", status="dropped", wait_for=1)
    assert not Transfer.objects.filter(kind=Transfer.Kind.TOPUP, credit_wallet=alice.wallet).exists()

    run = reconcile_run(day=timezone.now().astimezone(dt.UTC).date(), heal=True)

    healed = run.discrepancies.get()
    (credit,) = Transfer.objects.filter(kind=Transfer.Kind.TOPUP, credit_wallet=alice.wallet)
    assert (healed.kind, healed.status, healed.amount, healed.references["purpose"]) == (
        "missing_credit", "healed", AMOUNT, "payment_intent")
    assert (credit.reference, credit.amount) == (f"pi:{healed.references['payment_intent']}", AMOUNT)
    assert run.status == "ok" and balance(alice) == 1_000_000 - 600_000 + AMOUNT and check_ledger() == []


def test_finance_staff_heal_a_dropped_webhook_from_the_console(client, alice, emulator, django_user_model):
    from tests.billing.test_reconcile_console import as_user, staff

    login(client, alice)
    row = paid_topup(client, alice, emulator, "10", drop_webhook=True)
    run = reconcile_run(day=row.created_at.date())
    finance = as_user(staff(django_user_model, "fin", "billing.view_reconciliationrun", "billing.change_discrepancy"))
    page = finance.get(f"/finance/runs/{run.id}/").content.decode()
    assert 'data-kind="missing_credit" data-status="open"' in page and "Heal missing credits" in page
    healed = finance.post(f"/finance/runs/{run.id}/heal", follow=True).content.decode()
    assert f"credit applied by reconciliation run {run.id}" in healed
    assert 'data-kind="missing_credit" data-status="healed"' in healed and 'data-testid="run-status">ok<' in healed
    assert len(credits(row)) == 1 and balance(alice) == 11_000_000
    finance.post(f"/finance/runs/{run.id}/heal")  # a second click credits nothing more
    assert len(credits(row)) == 1 and balance(alice) == 11_000_000
