"""Disputes of top-up payments from signed webhooks: reversal + suspension, given back if won,
kept (and suspended until finance reactivates) if lost; any order, any number of deliveries.

Webhook level; the emulator flow with a request refused through the gateway is in
test_disputes_e2e.py.
"""
import pytest

from billing.disputes import ReactivateError, wallet_reactivate
from billing.invariants import check_ledger
from billing.models import Dispute, StripeEvent, Transfer, Wallet
from tests.billing import stripe_payloads as sp
from tests.billing.test_refunds_webhooks import credited_topup, wallets

TEN_DOLLARS = 10_000_000


@pytest.fixture(autouse=True)
def webhook_secret(settings):
    settings.STRIPE_WEBHOOK_SECRETS = [sp.SECRET]


def customer(tenant) -> Wallet:
    return Wallet.objects.get(id=tenant.wallet.id)


def test_a_dispute_reverses_the_payment_and_suspends_the_wallet(alice):
    topup = credited_topup(alice)
    dispute = sp.dispute(topup.stripe_object, 1000)
    assert sp.post(sp.event("charge.dispute.created", dispute)).json()["status"] == "processed"
    w = customer(alice)
    assert (w.status, w.suspended_reason, w.balance) == ("suspended", "dispute", 1_000_000)
    (reversal,) = Transfer.objects.filter(kind=Transfer.Kind.DISPUTE)
    assert (reversal.reference, reversal.amount, reversal.stripe_object) == (f"dp:{dispute['id']}", TEN_DOLLARS, dispute["id"])
    row = Dispute.objects.get()
    assert (row.topup_id, row.amount, row.status) == (topup.id, TEN_DOLLARS, "open") and row.reversed_at
    assert check_ledger() == []


def test_funds_withdrawn_and_duplicates_do_not_post_twice(alice):
    topup = credited_topup(alice)
    dispute = sp.dispute(topup.stripe_object, 1000)
    created = sp.event("charge.dispute.created", dispute)
    for evt in [created, created, created, sp.event("charge.dispute.funds_withdrawn", dispute)]:
        assert sp.post(evt).status_code == 200
    assert StripeEvent.objects.get(type="charge.dispute.funds_withdrawn").status == "ignored"
    assert Transfer.objects.filter(kind=Transfer.Kind.DISPUTE).count() == 1
    assert customer(alice).balance == 1_000_000


def test_a_won_dispute_gives_back_exactly_both_parts_and_lifts_the_suspension(alice):
    topup = credited_topup(alice)
    # spend most of it first: the reversal is then mostly owed
    w = customer(alice)
    other = Wallet.objects.get(account_id=w.account_id, kind="usage")
    from billing.services import transfer_post

    transfer_post(kind=Transfer.Kind.ADJUSTMENT, debit_wallet=w, credit_wallet=other, amount=8_000_000,
                  reference="test:spent")
    dispute = sp.dispute(topup.stripe_object, 1000)
    sp.post(sp.event("charge.dispute.created", dispute))
    after_reversal = wallets(alice)
    assert after_reversal["customer"].balance == 0 and after_reversal["receivable"].balance == -7_000_000

    won = {**dispute, "status": "won"}
    sp.post(sp.event("charge.dispute.funds_reinstated", won))
    sp.post(sp.event("charge.dispute.closed", won))
    sp.post(sp.event("charge.dispute.closed", won))
    w = wallets(alice)
    assert (w["customer"].status, w["customer"].suspended_reason) == ("active", "")
    assert w["customer"].balance == 3_000_000 and w["receivable"].balance == 0
    back = dict(Transfer.objects.filter(kind=Transfer.Kind.DISPUTE_WON).values_list("reference", "amount"))
    assert back == {f"dpw:{dispute['id']}": 3_000_000, f"dpw:{dispute['id']}:owed": 7_000_000}
    assert Dispute.objects.get().status == "won"
    assert check_ledger() == []


def test_a_lost_dispute_stays_reversed_and_suspended_until_finance_reactivates(alice):
    topup = credited_topup(alice)
    dispute = sp.dispute(topup.stripe_object, 1000)
    sp.post(sp.event("charge.dispute.created", dispute))
    sp.post(sp.event("charge.dispute.closed", {**dispute, "status": "lost"}))
    w = customer(alice)
    assert (w.status, w.balance) == ("suspended", 1_000_000)
    assert not Transfer.objects.filter(kind=Transfer.Kind.DISPUTE_WON).exists()
    with pytest.raises(ReactivateError, match="Say why"):
        wallet_reactivate(wallet=w, user=alice.user, note="  ")
    wallet_reactivate(wallet=w, user=alice.user, note="customer paid the chargeback fee by wire")
    w = customer(alice)
    assert (w.status, w.suspended_reason) == ("active", "")
    row = Dispute.objects.get()
    assert row.resolved_by_id == alice.user.id and "wire" in row.resolution_note
    with pytest.raises(ReactivateError, match="already active"):
        wallet_reactivate(wallet=w, user=alice.user, note="again")
    assert check_ledger() == []


def test_reactivation_waits_for_open_disputes(alice):
    topup = credited_topup(alice)
    sp.post(sp.event("charge.dispute.created", sp.dispute(topup.stripe_object, 500)))
    with pytest.raises(ReactivateError, match="still open"):
        wallet_reactivate(wallet=customer(alice), user=alice.user, note="trusted")
    assert customer(alice).status == "suspended"


def test_out_of_order_a_won_close_before_the_open_moves_nothing(alice):
    topup = credited_topup(alice)
    dispute = sp.dispute(topup.stripe_object, 1000)
    sp.post(sp.event("charge.dispute.closed", {**dispute, "status": "won"}))
    sp.post(sp.event("charge.dispute.created", dispute))
    w = customer(alice)
    assert (w.status, w.balance) == ("active", 1_000_000 + TEN_DOLLARS)
    assert not Transfer.objects.filter(kind__in=["dispute", "dispute_won"]).exists()


def test_out_of_order_a_lost_close_before_the_open_reverses_once(alice):
    topup = credited_topup(alice)
    dispute = sp.dispute(topup.stripe_object, 600)
    sp.post(sp.event("charge.dispute.closed", {**dispute, "status": "lost"}))
    sp.post(sp.event("charge.dispute.created", dispute))
    w = customer(alice)
    assert (w.status, w.balance) == ("suspended", 1_000_000 + TEN_DOLLARS - 6_000_000)
    assert Transfer.objects.filter(kind="dispute").count() == 1
    assert check_ledger() == []


def test_winning_one_dispute_keeps_the_wallet_suspended_while_another_is_open(alice):
    first, second = credited_topup(alice), credited_topup(alice)
    d1, d2 = sp.dispute(first.stripe_object, 1000), sp.dispute(second.stripe_object, 1000)
    sp.post(sp.event("charge.dispute.created", d1))
    sp.post(sp.event("charge.dispute.created", d2))
    sp.post(sp.event("charge.dispute.closed", {**d1, "status": "won"}))
    assert customer(alice).status == "suspended"
    sp.post(sp.event("charge.dispute.closed", {**d2, "status": "won"}))
    w = customer(alice)
    assert (w.status, w.balance) == ("active", 1_000_000 + 2 * TEN_DOLLARS)


def test_a_manual_suspension_is_not_lifted_by_a_won_dispute(alice):
    topup = credited_topup(alice)
    Wallet.objects.filter(id=alice.wallet.id).update(status="suspended", suspended_reason="manual")
    dispute = sp.dispute(topup.stripe_object, 1000)
    sp.post(sp.event("charge.dispute.created", dispute))
    sp.post(sp.event("charge.dispute.closed", {**dispute, "status": "won"}))
    w = customer(alice)
    assert (w.status, w.suspended_reason) == ("suspended", "manual")


def test_inquiries_and_other_payments_change_nothing(alice):
    topup = credited_topup(alice)
    inquiry = sp.dispute(topup.stripe_object, 1000, status="warning_needs_response")
    sp.post(sp.event("charge.dispute.created", inquiry))
    sp.post(sp.event("charge.dispute.closed", {**inquiry, "status": "warning_closed"}))
    foreign = sp.post(sp.event("charge.dispute.created", sp.dispute("pi_not_a_topup", 1000)))
    assert foreign.json()["status"] == "ignored"
    w = customer(alice)
    assert (w.status, w.balance) == ("active", 1_000_000 + TEN_DOLLARS)
    assert not Transfer.objects.filter(kind="dispute").exists()
