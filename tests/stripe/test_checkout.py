"""Checkout through the emulator with the real stripe library: a session is created, its hosted
page is paid, the payment really happens in localstripe, and the signed
``checkout.session.completed`` webhook reaches a local receiver. Checkout Sessions and Prices are
not in localstripe: the emulator's HTTP-level fake serves them (billing/stripe_emulator/)."""
from __future__ import annotations

import json
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
import stripe


def topup_session(client, **extra):
    return client.v1.checkout.sessions.create(params={
        "mode": "payment",
        "line_items": [{"price_data": {"currency": "usd", "unit_amount": 2500,
                                       "product_data": {"name": "Credit top-up"}}, "quantity": 1}],
        "success_url": "http://127.0.0.1:8000/console/billing/?session={CHECKOUT_SESSION_ID}",
        "cancel_url": "http://127.0.0.1:8000/console/billing/",
        "client_reference_id": "org_42",
        "metadata": {"org": "42", "wallet": "7"},
        "payment_intent_data": {"metadata": {"org": "42"}, "setup_future_usage": "off_session"},
        **extra,
    })


def test_paying_a_session_confirms_a_payment_intent_and_delivers_a_verified_webhook(stripe_emu, client, receiver):
    stripe_emu.register_webhook(receiver.url, enabled_events=["checkout.session.completed"])
    customer = client.v1.customers.create(params={"email": "alice@example.com"})
    session = topup_session(client, customer=customer.id)
    assert session.status == "open" and session.payment_status == "unpaid" and session.amount_total == 2500
    assert session.url.startswith(stripe_emu.api_base + "/pay/")

    redirect = stripe_emu.pay(session.url)

    assert redirect.status_code == 303
    assert parse_qs(urlparse(redirect.headers["location"]).query) == {"session": [session.id]}
    paid = client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["payment_intent"]})
    assert paid.status == "complete" and paid.payment_status == "paid" and paid.customer == customer.id
    pi = paid.payment_intent
    assert pi.status == "succeeded" and pi.amount == 2500 and pi.currency == "usd"
    assert pi.metadata.to_dict() == {"org": "42"} and pi.customer == customer.id
    charge = client.v1.charges.retrieve(pi.latest_charge)
    assert charge.paid and charge.amount == 2500 and charge.payment_intent == pi.id
    # setup_future_usage: the card stays on the customer, ready for an off-session charge.
    [card] = client.v1.payment_methods.list(params={"customer": customer.id, "type": "card"}).data
    assert card.id == pi.payment_method
    # The webhook was delivered before the redirect was answered.
    [got] = receiver.received
    event = stripe.Webhook.construct_event(got.body, got.signature, stripe_emu.webhook_secret)
    assert event.type == "checkout.session.completed"
    obj = event.data.object
    assert (obj.id, obj.payment_status, obj.payment_intent, obj.amount_total) == (session.id, "paid", pi.id, 2500)
    assert obj.metadata.to_dict() == {"org": "42", "wallet": "7"} and obj.client_reference_id == "org_42"


def test_a_paid_session_cannot_be_paid_again_and_its_page_is_gone(stripe_emu, client):
    session = topup_session(client)
    stripe_emu.pay(session.url)

    assert httpx.get(session.url).status_code == 410
    assert httpx.post(session.url, data={"card": "visa"}).status_code == 410
    assert len(client.v1.payment_intents.list(params={"customer": client.v1.checkout.sessions.retrieve(
        session.id).customer}).data) == 1


def test_a_declined_card_leaves_the_session_open(stripe_emu, client):
    session = topup_session(client)

    answer = httpx.post(session.url, data={"card": "declined"})

    assert answer.status_code == 402 and "declined" in answer.text
    again = client.v1.checkout.sessions.retrieve(session.id)
    assert again.status == "open" and again.payment_status == "unpaid"


def test_async_payment_completes_unpaid_then_succeeds_later(stripe_emu, client, receiver):
    stripe_emu.register_webhook(receiver.url, enabled_events=[
        "checkout.session.completed", "checkout.session.async_payment_succeeded"])
    session = topup_session(client)

    stripe_emu.pay(session.url, outcome="async")

    pending = client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["payment_intent"]})
    assert pending.status == "complete" and pending.payment_status == "unpaid"
    assert pending.payment_intent.status == "processing"

    result = stripe_emu.settle_async_payment(session.id)

    assert [e["type"] for e in result["events"]] == ["checkout.session.async_payment_succeeded"]
    events = [stripe.Webhook.construct_event(r.body, r.signature, stripe_emu.webhook_secret) for r in receiver.received]
    assert [(e.type, e.data.object.payment_status) for e in events] == [
        ("checkout.session.completed", "unpaid"), ("checkout.session.async_payment_succeeded", "paid")]
    assert client.v1.payment_intents.retrieve(pending.payment_intent.id).status == "succeeded"


def test_sessions_expire_list_and_show_line_items(stripe_emu, client, receiver):
    stripe_emu.register_webhook(receiver.url, enabled_events=["checkout.session.expired"])
    price = client.v1.prices.create(params={"currency": "usd", "unit_amount": 1000,
                                            "product_data": {"name": "Credits"}})
    session = client.v1.checkout.sessions.create(params={
        "mode": "payment", "line_items": [{"price": price.id, "quantity": 3}],
        "success_url": "http://127.0.0.1:8000/ok"})
    assert session.amount_total == 3000
    [item] = client.v1.checkout.sessions.line_items.list(session.id).data
    assert (item.price.id, item.quantity, item.amount_total) == (price.id, 3, 3000)

    expired = client.v1.checkout.sessions.expire(session.id)

    assert expired.status == "expired"
    assert session.id in [s.id for s in client.v1.checkout.sessions.list(params={"status": "expired",
                                                                                  "limit": 100}).data]
    assert json.loads(stripe_emu.deliveries(type="checkout.session.expired", wait_for=1)[0]["payload"])[
        "data"]["object"]["id"] == session.id
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.expire(session.id)


@pytest.mark.parametrize("params, message", [
    ({"mode": "payment", "success_url": "http://x/ok"}, "line_items"),
    ({"mode": "payment", "line_items": [{"price": "price_nope", "quantity": 1}], "success_url": "http://x/ok"},
     "No such price"),
    ({"mode": "payment", "line_items": [{"price_data": {"currency": "usd", "unit_amount": 100,
                                                        "product_data": {"name": "x"}}}], "bogus": "1",
      "success_url": "http://x/ok"}, "unknown parameter"),
    ({"mode": "payment", "line_items": [{"price_data": {"currency": "usd", "unit_amount": 100,
                                                        "product_data": {"name": "x"}}}]}, "success_url"),
])
def test_bad_session_parameters_are_refused(client, params, message):
    with pytest.raises(stripe.InvalidRequestError, match=message):
        client.v1.checkout.sessions.create(params=params)


def test_billing_portal_session_links_to_a_page_for_the_customer(stripe_emu, client):
    customer = client.v1.customers.create(params={"email": "bob@example.com"})

    portal = client.v1.billing_portal.sessions.create(params={"customer": customer.id,
                                                              "return_url": "http://127.0.0.1:8000/console/"})

    assert portal.object == "billing_portal.session" and portal.customer == customer.id
    page = httpx.get(portal.url)
    assert page.status_code == 200 and "bob@example.com" in page.text
    with pytest.raises(stripe.InvalidRequestError, match="No such customer"):
        client.v1.billing_portal.sessions.create(params={"customer": "cus_missing"})
