"""The Stripe API as the emulator serves it to the real stripe library: localstripe's objects
(customers, payment methods, payment intents, refunds) and the HTTP-level fake's (prices, meters,
meter events), which localstripe lacks."""
from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
import stripe


def test_customer_with_an_attached_card_is_charged_off_session(client):
    customer = client.v1.customers.create(params={"email": "carol@example.com", "metadata": {"org": "9"}})
    card = client.v1.payment_methods.attach("pm_card_visa", params={"customer": customer.id})

    pi = client.v1.payment_intents.create(params={
        "amount": 1500, "currency": "usd", "customer": customer.id, "payment_method": card.id,
        "confirm": True, "off_session": True, "metadata": {"recharge": "1"}})

    assert pi.status == "succeeded" and isinstance(pi.latest_charge, str)
    assert client.v1.customers.retrieve(customer.id).metadata.to_dict() == {"org": "9"}
    assert [p.id for p in client.v1.payment_intents.list(params={"customer": customer.id}).data] == [pi.id]


def test_a_declined_card_raises_card_error(client):
    with pytest.raises(stripe.CardError):
        client.v1.payment_intents.create(params={"amount": 500, "currency": "usd", "confirm": True,
                                                 "payment_method": "pm_card_chargeCustomerFail"})


def test_a_wrong_api_key_is_refused(stripe_emu):
    bad = stripe.StripeClient("pk_test_nope", base_addresses={"api": stripe_emu.api_base})
    with pytest.raises(stripe.AuthenticationError):
        bad.v1.prices.list()
    with pytest.raises(stripe.AuthenticationError):
        bad.v1.customers.list()


def test_prices_recurring_metered_and_lookup_keys(client):
    product = client.v1.products.create(params={"name": "Developer"})
    key = f"developer_monthly_{uuid.uuid4().hex[:8]}"
    fee = client.v1.prices.create(params={"product": product.id, "currency": "usd", "unit_amount": 2000,
                                          "recurring": {"interval": "month"}, "lookup_key": key})
    meter = client.v1.billing.meters.create(params={
        "display_name": "Overage", "event_name": f"overage_{uuid.uuid4().hex[:8]}",
        "default_aggregation": {"formula": "sum"}})
    metered = client.v1.prices.create(params={
        "product": product.id, "currency": "usd", "unit_amount_decimal": "0.0001",
        "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id}})

    assert (fee.type, fee.unit_amount, fee.recurring.interval, fee.recurring.usage_type) == (
        "recurring", 2000, "month", "licensed")
    assert metered.unit_amount is None and metered.unit_amount_decimal == Decimal("0.0001")
    assert metered.recurring.usage_type == "metered" and metered.recurring.meter == meter.id
    assert client.v1.prices.retrieve(fee.id).lookup_key == key
    assert [p.id for p in client.v1.prices.list(params={"lookup_keys": [key]}).data] == [fee.id]
    assert {p.id for p in client.v1.prices.list(params={"product": product.id}).data} == {fee.id, metered.id}
    with pytest.raises(stripe.InvalidRequestError, match="already uses that lookup key"):
        client.v1.prices.create(params={"product": product.id, "currency": "usd", "unit_amount": 1,
                                        "lookup_key": key})
    moved = client.v1.prices.create(params={"product": product.id, "currency": "usd", "unit_amount": 2500,
                                            "recurring": {"interval": "month"}, "lookup_key": key,
                                            "transfer_lookup_key": True})
    assert [p.id for p in client.v1.prices.list(params={"lookup_keys": [key]}).data] == [moved.id]
    assert client.v1.prices.update(fee.id, params={"active": False}).active is False
    with pytest.raises(stripe.InvalidRequestError, match="No such price"):
        client.v1.prices.retrieve("price_missing")


def test_meter_events_dedupe_by_identifier(stripe_emu, client):
    customer = client.v1.customers.create(params={"email": "dave@example.com"})
    name = f"overage_{uuid.uuid4().hex[:8]}"
    first = client.v1.billing.meter_events.create(params={
        "event_name": name, "identifier": "ovr_1", "payload": {"stripe_customer_id": customer.id, "value": "700"}})
    assert first.identifier == "ovr_1" and first.payload["value"] == "700"

    with pytest.raises(stripe.InvalidRequestError) as duplicate:
        client.v1.billing.meter_events.create(params={
            "event_name": name, "identifier": "ovr_1",
            "payload": {"stripe_customer_id": customer.id, "value": "700"}})
    assert duplicate.value.code == "resource_already_exists"
    client.v1.billing.meter_events.create(params={
        "event_name": name, "identifier": "ovr_2", "payload": {"stripe_customer_id": customer.id, "value": "300"}})

    assert stripe_emu.meter_events(customer.id)["totals"] == {customer.id: {name: 1000}}
    with pytest.raises(stripe.InvalidRequestError) as bad_value:
        client.v1.billing.meter_events.create(params={
            "event_name": name, "payload": {"stripe_customer_id": customer.id, "value": "1.5"}})
    assert bad_value.value.code == "meter_event_invalid_value"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.billing.meter_events.create(params={
            "event_name": name, "payload": {"stripe_customer_id": "cus_missing", "value": "1"}})
    assert stripe_emu.meter_events(customer.id)["totals"] == {customer.id: {name: 1000}}


def test_an_idempotency_key_replays_the_first_answer(client):
    customer = client.v1.customers.create(params={"email": "erin@example.com"})
    card = client.v1.payment_methods.attach("pm_card_visa", params={"customer": customer.id})
    body = {"amount": 900, "currency": "usd", "customer": customer.id, "payment_method": card.id,
            "confirm": True, "off_session": True}
    key = f"recharge-{uuid.uuid4()}"

    first = client.v1.payment_intents.create(params=body, options={"idempotency_key": key})
    again = client.v1.payment_intents.create(params=body, options={"idempotency_key": key})

    assert first.id == again.id
    assert len(client.v1.payment_intents.list(params={"customer": customer.id}).data) == 1
    with pytest.raises(stripe.IdempotencyError):
        client.v1.payment_intents.create(params={**body, "amount": 901}, options={"idempotency_key": key})
