"""Refunds of top-ups posted from signed webhooks: reversing entries only, once per refund id, from
what the wallet can give (never promo credit or money held for requests in flight), the rest owed.

Webhook level (events signed with the stripe library's scheme); the console → Stripe → webhook
flow through the emulator is in test_refunds_e2e.py.
"""
import datetime as dt

import pytest
from django.utils import timezone

from billing import ledger
from billing.invariants import check_ledger
from billing.models import Entry, StripeEvent, TopupRefund, Transfer, Wallet
from billing.pricing import Usage
from billing.refunds import RefundError, topup_refund
from billing.services import wallet_credit
from tests.billing import stripe_payloads as sp
from tests.billing.test_ledger import price, reserve  # noqa: F401  (fixture)
from tests.conftest import run_async

TEN_DOLLARS = 10_000_000


@pytest.fixture(autouse=True)
def webhook_secret(settings):
    settings.STRIPE_WEBHOOK_SECRETS = [sp.SECRET]


def credited_topup(tenant, amount=TEN_DOLLARS) -> Transfer:
    row = sp.topup_row(tenant, amount, customer=f"cus_{tenant.user.username}")
    assert sp.post(sp.event("checkout.session.completed", sp.session(row))).status_code == 200
    return Transfer.objects.get(reference=f"cs:{row.stripe_session_id}")


def wallets(tenant) -> dict[str, Wallet]:
    return {w.kind: w for w in Wallet.objects.filter(account__organization=tenant.organization)}


def spend(tenant, price, amount, request_id="req_spend"):  # noqa: F811
    async def go():
        r = await reserve(tenant, price, amount, request_id=request_id)
        await ledger.settle(reservation=r, usage=Usage(input_tokens=1, output_tokens=0), now=timezone.now(), amount=amount)

    run_async(go())


def test_a_partial_refund_takes_its_amount_from_the_wallet(alice):
    topup = credited_topup(alice)
    refund = sp.refund(topup.stripe_object, 400)
    assert sp.post(sp.event("refund.created", refund)).json()["status"] == "processed"
    w = wallets(alice)
    assert w["customer"].balance == 1_000_000 + TEN_DOLLARS - 4_000_000
    assert w["receivable"].balance == 0
    (reversal,) = Transfer.objects.filter(kind=Transfer.Kind.REFUND)
    assert (reversal.reference, reversal.amount, reversal.stripe_object) == (f"re:{refund['id']}", 4_000_000, refund["id"])
    assert (reversal.debit_wallet_id, reversal.credit_wallet_id) == (w["customer"].id, w["funding"].id)
    row = TopupRefund.objects.get()
    assert (row.topup_id, row.amount, row.status) == (topup.id, 4_000_000, TopupRefund.Status.SUCCEEDED)
    assert check_ledger() == []


def test_one_refund_in_every_shape_and_three_times_posts_once(alice):
    topup = credited_topup(alice)
    refund = sp.refund(topup.stripe_object, 250)
    created = sp.event("refund.created", refund)
    for evt in [created, created, created, sp.event("refund.updated", refund),
                sp.event("charge.refunded", sp.charge_refunded(topup.stripe_object, 1000, [refund]))]:
        assert sp.post(evt).status_code == 200
    assert Transfer.objects.filter(kind=Transfer.Kind.REFUND).count() == 1
    assert wallets(alice)["customer"].balance == 1_000_000 + TEN_DOLLARS - 2_500_000
    assert TopupRefund.objects.count() == 1
    assert check_ledger() == []


def test_charge_refunded_lists_refunds_and_the_nested_ones_need_no_payment_intent(alice):
    topup = credited_topup(alice)
    nested = sp.refund(topup.stripe_object, 100)
    nested.pop("payment_intent")  # older shapes: the charge says which payment it was
    sp.post(sp.event("charge.refunded", sp.charge_refunded(topup.stripe_object, 1000, [nested])))
    assert Transfer.objects.get(kind=Transfer.Kind.REFUND).amount == 1_000_000


def test_a_charge_refunded_without_its_refunds_list_waits_for_the_refund_events(alice):
    topup = credited_topup(alice)
    response = sp.post(sp.event("charge.refunded", sp.charge_refunded(topup.stripe_object, 1000, None)))
    assert response.json()["status"] == "ignored" and not Transfer.objects.filter(kind="refund").exists()
    sp.post(sp.event("refund.updated", sp.refund(topup.stripe_object, 1000)))
    assert wallets(alice)["customer"].balance == 1_000_000


def test_a_pending_refund_posts_when_it_succeeds_and_a_failed_one_never(alice):
    topup = credited_topup(alice)
    refund = sp.refund(topup.stripe_object, 300, status="pending")
    sp.post(sp.event("refund.created", refund))
    assert not Transfer.objects.filter(kind="refund").exists()
    assert TopupRefund.objects.get().status == TopupRefund.Status.PENDING
    sp.post(sp.event("refund.updated", {**refund, "status": "succeeded"}))
    assert Transfer.objects.get(kind="refund").amount == 3_000_000
    failing = sp.refund(topup.stripe_object, 200, status="pending")
    sp.post(sp.event("refund.created", failing))
    sp.post(sp.event("refund.failed", {**failing, "status": "failed", "failure_reason": "expired_or_canceled_card"}))
    row = TopupRefund.objects.get(stripe_refund_id=failing["id"])
    assert row.status == TopupRefund.Status.FAILED and row.error == "expired_or_canceled_card"
    assert Transfer.objects.filter(kind="refund").count() == 1
    assert check_ledger() == []


def test_a_full_refund_of_spent_money_spares_promo_and_holds_and_books_the_rest_as_owed(alice, price):  # noqa: F811
    topup = credited_topup(alice)  # balance 11.00
    spend(alice, price, 9_000_000)  # balance 2.00
    wallet_credit(wallet=alice.wallet, amount=500_000, kind=Transfer.Kind.PROMO, reference="promo:w1",
                  expires_at=timezone.now() + dt.timedelta(days=30))  # balance 2.50, of which promo 0.50
    hold = run_async(reserve(alice, price, 300_000, request_id="req_in_flight"))  # 0.30 in flight
    before = wallets(alice)["customer"]
    assert (before.balance, before.promo, before.reserved) == (2_500_000, 500_000, 300_000)

    refund = sp.refund(topup.stripe_object, 1000)  # the whole 10.00
    sp.post(sp.event("refund.created", refund))

    w = wallets(alice)
    # recoverable = min(balance - promo, balance + credit_limit - reserved) = min(2.00, 2.20) = 2.00
    assert (w["customer"].balance, w["customer"].promo, w["customer"].reserved) == (500_000, 500_000, 300_000)
    assert w["receivable"].balance == -8_000_000  # the customer owes 8.00
    parts = dict(Transfer.objects.filter(kind="refund").values_list("reference", "amount"))
    assert parts == {f"re:{refund['id']}": 2_000_000, f"re:{refund['id']}:owed": 8_000_000}
    assert w["funding"].balance == -(1_000_000 + TEN_DOLLARS + 500_000) + TEN_DOLLARS
    # the request in flight still settles from what it held
    run_async(ledger.settle(reservation=hold, usage=Usage(input_tokens=1, output_tokens=0), now=timezone.now(), amount=300_000))
    assert wallets(alice)["customer"].balance == 200_000
    assert check_ledger() == []


def test_a_refund_never_updates_or_deletes_ledger_rows(alice):
    topup = credited_topup(alice)
    snapshot = list(Entry.objects.order_by("id").values_list("id", "transfer_id", "wallet_id", "amount", "created_at"))
    transfers = list(Transfer.objects.order_by("id").values_list("id", "kind", "status", "amount", "reference"))
    sp.post(sp.event("refund.created", sp.refund(topup.stripe_object, 1000)))
    assert list(Entry.objects.order_by("id").values_list("id", "transfer_id", "wallet_id", "amount", "created_at"))[
        : len(snapshot)] == snapshot
    assert list(Transfer.objects.order_by("id").values_list("id", "kind", "status", "amount", "reference"))[
        : len(transfers)] == transfers


def test_refunds_of_payments_that_were_not_top_ups_are_ignored(alice):
    credited_topup(alice)
    response = sp.post(sp.event("refund.created", sp.refund("pi_subscription_invoice", 500)))
    assert response.json()["status"] == "ignored"
    assert "not of a top-up" in StripeEvent.objects.get(type="refund.created").error
    assert not Transfer.objects.filter(kind="refund").exists() and not TopupRefund.objects.exists()


def test_the_console_refund_refuses_more_than_is_left_before_calling_stripe(alice):
    topup = credited_topup(alice)
    TopupRefund.objects.create(topup=topup, amount=6_000_000, status=TopupRefund.Status.SUCCEEDED)
    TopupRefund.objects.create(topup=topup, amount=1_000_000, status=TopupRefund.Status.PENDING)
    TopupRefund.objects.create(topup=topup, amount=9_000_000, status=TopupRefund.Status.FAILED)  # does not count
    with pytest.raises(RefundError, match=r"At most 3\.00 USD"):
        topup_refund(transfer=topup, amount=3_010_000, user=alice.user)
    with pytest.raises(RefundError, match="whole number of cents"):
        topup_refund(transfer=topup, amount=1_000_001, user=alice.user)
    with pytest.raises(RefundError, match="Only a top-up"):
        topup_refund(transfer=Transfer.objects.get(reference="seed:alice"), amount=10_000, user=alice.user)
    assert TopupRefund.objects.count() == 3
