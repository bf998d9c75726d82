"""Top-up credits from signed Checkout webhooks: exactly once whatever arrives, never on a mismatch.

Webhook level: events are built here and signed with the stripe library's scheme
(tests/billing/stripe_payloads.py); the end-to-end flow through the emulator is in
test_topups_e2e.py.
"""
import threading

import pytest
from django.db import connection

from billing.invariants import check_ledger
from billing.models import StripeEvent, TopupSession, Transfer, Wallet
from billing.topups import credit_checkout_session
from tests.billing import stripe_payloads as sp

TEN_DOLLARS = 10_000_000


@pytest.fixture(autouse=True)
def webhook_secret(settings):
    settings.STRIPE_WEBHOOK_SECRETS = [sp.SECRET]


def balance(tenant) -> int:
    return Wallet.objects.get(id=tenant.wallet.id).balance


def topups(row) -> list[Transfer]:
    return list(Transfer.objects.filter(kind=Transfer.Kind.TOPUP, reference=f"cs:{row.stripe_session_id}"))


def test_a_paid_session_credits_the_wallet_once(alice):
    row = sp.topup_row(alice, TEN_DOLLARS, customer="cus_alice")
    before = balance(alice)
    response = sp.post(sp.event("checkout.session.completed", sp.session(row)))
    assert response.status_code == 200 and response.json()["status"] == "processed"
    (credit,) = topups(row)
    assert credit.amount == TEN_DOLLARS and credit.stripe_object == f"pi_for_{row.stripe_session_id}"
    assert credit.credit_wallet_id == alice.wallet.id and credit.status == "posted"
    assert balance(alice) == before + TEN_DOLLARS
    row.refresh_from_db()
    assert row.status == TopupSession.Status.CREDITED and row.transfer_id == credit.id
    assert check_ledger() == []


def test_the_same_event_three_times_credits_once(alice):
    row = sp.topup_row(alice, TEN_DOLLARS, customer="cus_alice")
    evt = sp.event("checkout.session.completed", sp.session(row))
    answers = [sp.post(evt) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.json()["duplicate"] for a in answers] == [False, True, True]
    assert len(topups(row)) == 1 and balance(alice) == 1_000_000 + TEN_DOLLARS
    assert check_ledger() == []


def test_completed_and_async_succeeded_for_one_session_credit_once_in_either_order(alice):
    first = sp.topup_row(alice, TEN_DOLLARS, customer="cus_alice")
    sp.post(sp.event("checkout.session.completed", sp.session(first)))
    sp.post(sp.event("checkout.session.async_payment_succeeded", sp.session(first)))
    second = sp.topup_row(alice, 2 * TEN_DOLLARS)
    sp.post(sp.event("checkout.session.async_payment_succeeded", sp.session(second)))
    sp.post(sp.event("checkout.session.completed", sp.session(second)))
    assert len(topups(first)) == 1 and len(topups(second)) == 1
    assert balance(alice) == 1_000_000 + 3 * TEN_DOLLARS
    assert check_ledger() == []


def test_an_unpaid_completed_session_waits_for_the_async_payment(alice):
    row = sp.topup_row(alice, TEN_DOLLARS, customer="cus_alice")
    response = sp.post(sp.event("checkout.session.completed", sp.session(row, paid=False)))
    assert response.status_code == 200 and "not cleared" in StripeEvent.objects.get().error
    assert topups(row) == [] and balance(alice) == 1_000_000
    row.refresh_from_db()
    assert row.status == TopupSession.Status.PROCESSING
    sp.post(sp.event("checkout.session.async_payment_succeeded", sp.session(row)))
    assert len(topups(row)) == 1 and balance(alice) == 1_000_000 + TEN_DOLLARS
    row.refresh_from_db()
    assert row.status == TopupSession.Status.CREDITED


def test_async_success_before_the_unpaid_completed_event_stays_credited(alice):
    row = sp.topup_row(alice, TEN_DOLLARS, customer="cus_alice")
    sp.post(sp.event("checkout.session.async_payment_succeeded", sp.session(row)))
    sp.post(sp.event("checkout.session.completed", sp.session(row, paid=False)))
    row.refresh_from_db()
    assert row.status == TopupSession.Status.CREDITED and len(topups(row)) == 1
    assert balance(alice) == 1_000_000 + TEN_DOLLARS


def test_a_failed_async_payment_is_recorded_and_credits_nothing(alice):
    row = sp.topup_row(alice, TEN_DOLLARS, customer="cus_alice")
    sp.post(sp.event("checkout.session.completed", sp.session(row, paid=False)))
    response = sp.post(sp.event("checkout.session.async_payment_failed", sp.session(row, paid=False)))
    assert response.status_code == 200
    row.refresh_from_db()
    assert row.status == TopupSession.Status.FAILED and "failed" in row.error
    assert topups(row) == [] and balance(alice) == 1_000_000
    assert check_ledger() == []


def test_an_amount_that_does_not_match_the_metadata_is_refused_and_kept_for_reconciliation(alice):
    row = sp.topup_row(alice, TEN_DOLLARS, customer="cus_alice")
    response = sp.post(sp.event("checkout.session.completed", sp.session(row, amount_total=100)))
    assert response.status_code == 200  # genuine event: a retry would be refused the same way
    stored = StripeEvent.objects.get()
    assert stored.status == StripeEvent.Status.FAILED and "amount_total 100" in stored.error
    row.refresh_from_db()
    assert row.status == TopupSession.Status.REFUSED and "metadata says 10000000" in row.error
    assert topups(row) == [] and balance(alice) == 1_000_000
    assert check_ledger() == []


def test_metadata_amount_that_differs_from_our_row_is_refused(alice):
    row = sp.topup_row(alice, TEN_DOLLARS, customer="cus_alice")
    forged = sp.session(row, amount_total=5_000)
    forged["metadata"]["amount_micros"] = "50000000"  # consistent with amount_total, not with what we asked
    sp.post(sp.event("checkout.session.completed", forged))
    row.refresh_from_db()
    assert row.status == TopupSession.Status.REFUSED and "asked for 10000000" in row.error
    assert topups(row) == [] and balance(alice) == 1_000_000


def test_a_session_naming_another_accounts_customer_is_refused(alice, charlie):
    charlie_account = charlie.organization.billing_account
    charlie_account.stripe_customer_id = "cus_charlie"
    charlie_account.save(update_fields=["stripe_customer_id"])
    row = sp.topup_row(alice, TEN_DOLLARS, customer="cus_alice")
    # charlie paid, but the metadata names alice's account: the money is not alice's to spend
    sp.post(sp.event("checkout.session.completed", sp.session(row, customer="cus_charlie")))
    row.refresh_from_db()
    assert row.status == TopupSession.Status.REFUSED and "cus_charlie" in row.error
    assert StripeEvent.objects.get().status == StripeEvent.Status.FAILED
    assert topups(row) == [] and balance(alice) == 1_000_000 and balance(charlie) == 1_000_000


def test_an_account_without_a_stripe_customer_is_never_credited(alice):
    row = sp.topup_row(alice, TEN_DOLLARS)
    sp.post(sp.event("checkout.session.completed", sp.session(row, customer="cus_someone")))
    row.refresh_from_db()
    assert row.status == TopupSession.Status.REFUSED and topups(row) == []


def test_a_tampered_amount_is_refused_before_anything_is_stored(alice):
    row = sp.topup_row(alice, TEN_DOLLARS, customer="cus_alice")
    import orjson
    from django.test import Client

    payload = orjson.dumps(sp.event("checkout.session.completed", sp.session(row)))
    header = sp.sign(payload)
    tampered = payload.replace(b'"amount_micros":"10000000"', b'"amount_micros":"99000000"')
    assert tampered != payload
    response = Client().post(sp.URL, data=tampered, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)
    assert response.status_code == 400 and not StripeEvent.objects.exists()
    assert topups(row) == [] and balance(alice) == 1_000_000
    signed_elsewhere = sp.post(sp.event("checkout.session.completed", sp.session(row)), secret="whsec_attacker")
    assert signed_elsewhere.status_code == 400 and topups(row) == []


def test_subscription_sessions_are_not_top_ups(alice):
    row = sp.topup_row(alice, TEN_DOLLARS, customer="cus_alice")
    response = sp.post(sp.event("checkout.session.completed", sp.session(row, mode="subscription", metadata={})))
    assert response.json()["status"] == "ignored" and topups(row) == []


def test_a_session_without_our_row_is_credited_from_its_verified_metadata(alice):
    """Stripe signed it and the customer is the account's: the row is a convenience, not the proof."""
    row = sp.topup_row(alice, TEN_DOLLARS, customer="cus_alice")
    obj = sp.session(row)
    row.delete()
    sp.post(sp.event("checkout.session.completed", obj))
    assert Transfer.objects.filter(reference=f"cs:{obj['id']}").count() == 1


def test_reconciliation_heal_and_a_late_webhook_credit_once(alice):
    row = sp.topup_row(alice, TEN_DOLLARS, customer="cus_alice")
    healed, created = credit_checkout_session(session=sp.session(row), source="heal run 1")
    assert created and "heal run 1" in healed.description
    again, created_again = credit_checkout_session(session=sp.session(row), source="heal run 2")
    assert again.id == healed.id and not created_again
    assert sp.post(sp.event("checkout.session.completed", sp.session(row))).status_code == 200
    assert topups(row) == [healed] and balance(alice) == 1_000_000 + TEN_DOLLARS
    assert check_ledger() == []


def test_an_expired_session_is_marked_and_credits_nothing(alice):
    row = sp.topup_row(alice, TEN_DOLLARS, customer="cus_alice")
    sp.post(sp.event("checkout.session.expired", sp.session(row, paid=False, status="expired")))
    row.refresh_from_db()
    assert row.status == TopupSession.Status.EXPIRED and topups(row) == []


@pytest.mark.postgres
def test_concurrent_deliveries_of_every_event_credit_once(alice):
    """Twelve threads at once: the same event redelivered and the two crediting events, each on its
    own database connection."""
    row = sp.topup_row(alice, TEN_DOLLARS, customer="cus_alice")
    completed = sp.event("checkout.session.completed", sp.session(row))
    succeeded = sp.event("checkout.session.async_payment_succeeded", sp.session(row))
    events = [completed, succeeded] * 3 + [sp.event("checkout.session.completed", sp.session(row)) for _ in range(6)]
    barrier = threading.Barrier(len(events))
    statuses, errors = [], []

    def deliver(evt):
        try:
            barrier.wait(timeout=30)
            statuses.append(sp.post(evt).status_code)
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver, args=(evt,)) for evt in events]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and statuses == [200] * len(events)
    assert len(topups(row)) == 1 and balance(alice) == 1_000_000 + TEN_DOLLARS
    assert StripeEvent.objects.count() == 8  # every distinct event stored once
    assert check_ledger() == []
