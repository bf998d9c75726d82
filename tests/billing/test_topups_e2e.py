"""Top-ups end to end: console form → Stripe Checkout in the emulator (real ``stripe`` library;
Checkout Sessions are the emulator's HTTP-level fake, payments localstripe's) → hosted page paid →
signed webhook delivered to a live server → wallet credited exactly once.
"""
import threading

import pytest
from django.db import connection

from billing.invariants import check_ledger
from billing.models import BillingAccount, StripeEvent, TopupSession, Wallet
from billing.topups import credit_checkout_session
from tests.billing.checkout_flow import (  # noqa: F401  (fixture)
    WEBHOOK_PATH,
    credits,
    emulator,
    local_path,
    login,
    post_concurrently,
    start_topup,
)


def balance(tenant) -> int:
    return Wallet.objects.get(id=tenant.wallet.id).balance


def test_a_console_top_up_is_paid_on_checkout_and_credited_once_by_the_webhook(client, alice, emulator):  # noqa: F811
    login(client, alice)
    row = start_topup(client, alice, "25.50")
    assert row.amount == 25_500_000 and row.status == TopupSession.Status.OPEN

    stripe = emulator.client()
    session = stripe.v1.checkout.sessions.retrieve(row.stripe_session_id)
    account = BillingAccount.objects.get(id=alice.organization.billing_account.id)
    assert (session.mode, session.amount_total, session.currency) == ("payment", 2550, "usd")
    assert session.customer == account.stripe_customer_id and session.client_reference_id == row.public_id
    assert session.metadata.to_dict() == {"purpose": "topup", "account_id": str(account.id),
                                          "amount_micros": "25500000", "topup_session": row.public_id}
    assert stripe.v1.customers.retrieve(session.customer).metadata["account_id"] == str(account.id)

    redirect = emulator.pay(row.checkout_url)  # returns once the webhook was delivered

    assert redirect.status_code == 303
    assert balance(alice) == 1_000_000 + 25_500_000
    (credit,) = credits(row)
    paid = stripe.v1.checkout.sessions.retrieve(row.stripe_session_id, params={"expand": ["payment_intent"]})
    assert credit.stripe_object == paid.payment_intent.id and paid.payment_intent.status == "succeeded"
    # The card stays on the customer for auto-recharge.
    assert paid.payment_intent.setup_future_usage == "off_session"
    assert paid.payment_intent.metadata["purpose"] == "topup_checkout"  # not an auto-recharge payment intent
    [card] = stripe.v1.payment_methods.list(params={"customer": session.customer, "type": "card"}).data
    assert card.id == paid.payment_intent.payment_method

    page = client.get(local_path(redirect.headers["location"]))
    html = page.content.decode()
    assert page.status_code == 200 and 'data-status="credited"' in html and "25.50 USD" in html
    assert 'http-equiv="refresh"' not in html
    billing = client.get(f"/billing/?org={alice.organization.public_id}").content.decode()
    assert "26.50 USD" in billing and "Top-up via Stripe Checkout" in billing
    assert check_ledger() == []

    assert {(d["status"], d["http_status"]) for d in emulator.deliveries()} == {("delivered", 200)}
    # A second top-up reuses the account's Stripe customer.
    again = start_topup(client, alice, "10")
    assert stripe.v1.checkout.sessions.retrieve(again.stripe_session_id).customer == session.customer


def test_the_same_webhook_three_times_credits_once(client, alice, emulator):  # noqa: F811
    login(client, alice)
    row = start_topup(client, alice, "10")
    emulator.pay(row.checkout_url)
    [event] = [e for e in emulator.events(type="checkout.session.completed") if e["data"]["object"]["id"] == row.stripe_session_id]
    for _ in range(3):
        [replayed] = emulator.replay(event["id"])
        assert (replayed["status"], replayed["http_status"]) == ("delivered", 200)
    assert len(credits(row)) == 1 and balance(alice) == 11_000_000
    assert StripeEvent.objects.filter(id=event["id"]).count() == 1
    assert check_ledger() == []


def test_an_async_payment_is_credited_when_it_clears_and_the_page_says_processing_until_then(client, alice, emulator):  # noqa: F811
    login(client, alice)
    row = start_topup(client, alice, "12")
    redirect = emulator.pay(row.checkout_url, outcome="async")
    page = client.get(local_path(redirect.headers["location"])).content.decode()
    assert 'data-status="processing"' in page and 'http-equiv="refresh"' in page
    assert credits(row) == [] and balance(alice) == 1_000_000

    emulator.settle_async_payment(row.stripe_session_id, "succeeded")

    assert len(credits(row)) == 1 and balance(alice) == 13_000_000
    assert 'data-status="credited"' in client.get(local_path(redirect.headers["location"])).content.decode()
    assert check_ledger() == []


def test_async_success_arriving_before_the_completed_event_credits_once(client, alice, emulator):  # noqa: F811
    login(client, alice)
    row = start_topup(client, alice, "7")
    emulator.drop_next(1, type="checkout.session.completed")
    emulator.pay(row.checkout_url, outcome="async")
    emulator.settle_async_payment(row.stripe_session_id, "succeeded")  # out of order: this one first
    assert len(credits(row)) == 1
    [late] = emulator.deliveries(type="checkout.session.completed", status="dropped")
    [replayed] = emulator.replay(late["event_id"])  # the unpaid completed event, late
    assert replayed["http_status"] == 200
    row.refresh_from_db()
    assert row.status == TopupSession.Status.CREDITED and len(credits(row)) == 1
    assert balance(alice) == 8_000_000
    assert check_ledger() == []


def test_a_failed_async_payment_credits_nothing(client, alice, emulator):  # noqa: F811
    login(client, alice)
    row = start_topup(client, alice, "9")
    redirect = emulator.pay(row.checkout_url, outcome="async")
    emulator.settle_async_payment(row.stripe_session_id, "failed")
    row.refresh_from_db()
    assert row.status == TopupSession.Status.FAILED and credits(row) == []
    page = client.get(local_path(redirect.headers["location"])).content.decode()
    assert 'data-status="failed"' in page and "Nothing was credited" in page
    assert balance(alice) == 1_000_000


def test_the_success_redirect_racing_the_webhook_shows_pending_and_never_credits(client, alice, emulator):  # noqa: F811
    login(client, alice)
    row = start_topup(client, alice, "20")
    emulator.drop_next(1, type="checkout.session.completed")
    redirect = emulator.pay(row.checkout_url)  # the webhook is held back: the customer is faster
    success = local_path(redirect.headers["location"])
    for _ in range(3):
        page = client.get(success).content.decode()
        assert "Payment received, credit pending" in page and 'http-equiv="refresh"' in page
    assert credits(row) == [] and balance(alice) == 1_000_000

    [held] = emulator.deliveries(type="checkout.session.completed", status="dropped")
    emulator.replay(held["event_id"])

    assert 'data-status="credited"' in client.get(success).content.decode()
    assert len(credits(row)) == 1 and balance(alice) == 21_000_000
    assert check_ledger() == []


@pytest.mark.postgres
def test_concurrent_deliveries_to_two_servers_and_a_heal_credit_once(client, alice, emulator, second_server_proc, server):  # noqa: F811
    login(client, alice)
    row = start_topup(client, alice, "30")
    emulator.drop_next(1, type="checkout.session.completed")
    emulator.pay(row.checkout_url)
    [held] = emulator.deliveries(type="checkout.session.completed", status="dropped")
    session = emulator.client().v1.checkout.sessions.retrieve(row.stripe_session_id).to_dict()
    healed = []

    def heal_now():
        try:
            healed.append(credit_checkout_session(session=session, source="heal"))
        finally:
            connection.close()

    heal = threading.Thread(target=heal_now)
    heal.start()
    statuses = post_concurrently([server.url + WEBHOOK_PATH, second_server_proc.url + WEBHOOK_PATH], held, copies=4)
    heal.join(timeout=60)
    assert statuses == [200] * 8 and len(healed) == 1
    assert len(credits(row)) == 1 and balance(alice) == 31_000_000
    assert StripeEvent.objects.filter(id=held["event_id"]).count() == 1
    assert check_ledger() == []


def test_a_declined_card_leaves_the_session_open_and_credits_nothing(client, alice, emulator):  # noqa: F811
    import httpx

    login(client, alice)
    row = start_topup(client, alice, "15")
    answer = httpx.post(row.checkout_url, data={"card": "declined"}, timeout=30)
    assert answer.status_code == 402
    assert credits(row) == [] and balance(alice) == 1_000_000
    assert emulator.client().v1.checkout.sessions.retrieve(row.stripe_session_id).status == "open"


def test_a_session_tampered_on_the_way_is_refused_by_the_live_server(alice, emulator, server):  # noqa: F811
    import httpx

    row_client = emulator.client()
    account = alice.organization.billing_account
    from billing.stripe_client import customer_for

    customer = customer_for(account)
    session = row_client.v1.checkout.sessions.create(params={
        "mode": "payment", "customer": customer, "success_url": "http://testserver/ok",
        "line_items": [{"quantity": 1, "price_data": {"currency": "usd", "unit_amount": 500,
                                                      "product_data": {"name": "credit"}}}],
        "metadata": {"purpose": "topup", "account_id": str(account.id), "amount_micros": "5000000"}})
    emulator.drop_next(1, type="checkout.session.completed")
    emulator.pay(session.url)
    [held] = emulator.deliveries(type="checkout.session.completed", status="dropped")
    tampered = held["payload"].replace('"amount_micros": "5000000"', '"amount_micros": "500000000"')
    assert tampered != held["payload"]
    answer = httpx.post(server.url + WEBHOOK_PATH, content=tampered.encode(), timeout=30,
                        headers={"Content-Type": "application/json", "Stripe-Signature": held["signature"]})
    assert answer.status_code == 400 and not StripeEvent.objects.filter(id=held["event_id"]).exists()
    assert balance(alice) == 1_000_000
    emulator.replay(held["event_id"])  # the genuine one: no row of ours, verified metadata, credited
    assert balance(alice) == 6_000_000
    assert check_ledger() == []
