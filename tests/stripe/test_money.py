"""Refunds, disputes, payouts and subscriptions through the emulator, and the balance
transactions a finance reconciliation compares with the ledger (amount, fee = 2.9% + 30c, net).
localstripe holds the charges and refunds; disputes, payouts, prices and the renewal invoice come
from the emulator's HTTP-level fake (localstripe has none of them)."""
from __future__ import annotations

import json
import uuid

import pytest
import stripe


def charge(client, amount: int):
    customer = client.v1.customers.create(params={"email": f"{uuid.uuid4().hex[:6]}@example.com"})
    card = client.v1.payment_methods.attach("pm_card_visa", params={"customer": customer.id})
    return client.v1.payment_intents.create(params={
        "amount": amount, "currency": "usd", "customer": customer.id, "payment_method": card.id,
        "confirm": True, "off_session": True})


def test_a_charge_has_a_balance_transaction_with_stripes_fee(client):
    pi = charge(client, 2500)

    ch = client.v1.charges.retrieve(pi.latest_charge)
    bt = client.v1.balance_transactions.retrieve(ch.balance_transaction)

    # 2.9% of 25.00 = 0.725 -> 0.73 (half up), + 0.30
    assert (bt.amount, bt.fee, bt.net, bt.type, bt.source) == (2500, 103, 2397, "charge", ch.id)
    assert bt.fee_details[0].type == "stripe_fee"
    listed = client.v1.balance_transactions.list(params={"source": ch.id, "expand": ["data.source"]}).data
    assert [(b.id, b.source.payment_intent) for b in listed] == [(bt.id, pi.id)]


def test_refunds_post_negative_balance_transactions_and_announce_charge_refunded(stripe_emu, client, receiver):
    stripe_emu.register_webhook(receiver.url, enabled_events=["charge.refunded"])
    pi = charge(client, 2000)

    refund = client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 500, "reason": "requested_by_customer",
                                              "metadata": {"transfer": "17"}})

    assert (refund.amount, refund.status, refund.payment_intent, refund.reason) == (
        500, "succeeded", pi.id, "requested_by_customer")
    bt = client.v1.balance_transactions.retrieve(refund.balance_transaction)
    assert (bt.amount, bt.fee, bt.net, bt.type) == (-500, 0, -500, "refund")
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 1501})
    assert too_much.value.code == "amount_too_large"
    client.v1.refunds.create(params={"payment_intent": pi.id})
    assert client.v1.charges.retrieve(pi.latest_charge).refunded is True
    with pytest.raises(stripe.InvalidRequestError) as again:
        client.v1.refunds.create(params={"payment_intent": pi.id})
    assert again.value.code == "charge_already_refunded"
    [first, second] = stripe_emu.deliveries(type="charge.refunded", wait_for=2)
    events = [stripe.Webhook.construct_event(d["payload"], d["signature"], stripe_emu.webhook_secret)
              for d in (first, second)]
    assert [e.data.object.amount_refunded for e in events] == [500, 2000]


def test_a_dispute_withdraws_amount_and_fee_and_winning_returns_the_amount(stripe_emu, client, receiver):
    stripe_emu.register_webhook(receiver.url, enabled_events=["charge.dispute.created", "charge.dispute.closed"])
    pi = charge(client, 4000)

    opened = stripe_emu.open_dispute(payment_intent=pi.id)

    dispute = client.v1.disputes.retrieve(opened["dispute"]["id"])
    assert (dispute.amount, dispute.charge, dispute.status) == (4000, pi.latest_charge, "needs_response")
    [withdrawal] = dispute.balance_transactions
    assert (withdrawal.amount, withdrawal.fee, withdrawal.net, withdrawal.reporting_category) == (
        -4000, 1500, -5500, "dispute")
    assert client.v1.charges.retrieve(pi.latest_charge).disputed is True
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.refunds.create(params={"payment_intent": pi.id})
    assert refused.value.code == "charge_disputed"

    stripe_emu.close_dispute(dispute.id, "won")

    won = client.v1.disputes.retrieve(dispute.id)
    assert won.status == "won"
    assert [(b.amount, b.fee) for b in won.balance_transactions] == [(-4000, 1500), (4000, 0)]
    types = [json.loads(r.body)["type"] for r in receiver.received]
    assert types == ["charge.dispute.created", "charge.dispute.closed"]


def test_a_payout_sweeps_the_balance_and_lists_its_transactions(stripe_emu, client):
    stripe_emu.reset(objects=True)
    first = charge(client, 1000)
    charge(client, 3000)
    client.v1.refunds.create(params={"payment_intent": first.id, "amount": 400})

    payout = stripe_emu.payout("usd")["payout"]

    included = client.v1.balance_transactions.list(params={"payout": payout["id"], "limit": 100}).data
    # charge nets: 1000-59=941, 3000-117=2883; refund -400
    swept = [b for b in included if b.type != "payout"]
    assert sorted(b.net for b in swept) == [-400, 941, 2883]
    assert payout["amount"] == 941 + 2883 - 400 == sum(b.net for b in swept)
    [own] = [b for b in included if b.type == "payout"]
    assert own.amount == -payout["amount"] and own.id == client.v1.payouts.retrieve(payout["id"]).balance_transaction
    assert client.v1.balance.retrieve().available[0].amount == 0


def test_subscription_checkout_then_renewal_bills_metered_usage(stripe_emu, client, receiver):
    stripe_emu.register_webhook(receiver.url, enabled_events=["checkout.session.completed", "invoice.paid"])
    product = client.v1.products.create(params={"name": "Team"})
    meter = client.v1.billing.meters.create(params={
        "display_name": "Overage", "event_name": f"ovr_{uuid.uuid4().hex[:8]}",
        "default_aggregation": {"formula": "sum"}})
    fee = client.v1.prices.create(params={"product": product.id, "currency": "usd", "unit_amount": 4900,
                                          "recurring": {"interval": "month"}})
    # one cent per 10,000 micro-units of overage
    overage = client.v1.prices.create(params={
        "product": product.id, "currency": "usd", "unit_amount_decimal": "0.0001",
        "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id}})
    session = client.v1.checkout.sessions.create(params={
        "mode": "subscription", "line_items": [{"price": fee.id, "quantity": 1}, {"price": overage.id}],
        "success_url": "http://127.0.0.1:8000/ok", "customer_email": "team@example.com",
        "subscription_data": {"metadata": {"plan": "team"}}, "metadata": {"org": "5"}})

    stripe_emu.pay(session.url)

    done = client.v1.checkout.sessions.retrieve(session.id)
    sub = client.v1.subscriptions.retrieve(done.subscription)
    assert sub.status == "active" and sub.metadata.to_dict() == {"plan": "team"}
    assert sorted(i.price.id for i in sub["items"].data) == sorted([fee.id, overage.id])
    first_period_end = sub.current_period_end
    for n, value in enumerate((1_234_567, 765_433)):
        client.v1.billing.meter_events.create(params={
            "event_name": meter.event_name, "identifier": f"ovr_{uuid.uuid4().hex}_{n}",
            "payload": {"stripe_customer_id": done.customer, "value": str(value)}})

    renewal = stripe_emu.renew_subscription(sub.id)

    invoice = client.v1.invoices.retrieve(renewal["invoice"]["id"])
    assert invoice.status == "paid" and invoice.parent.subscription_details.subscription == sub.id
    lines = {line.pricing.price_details.price: line for line in invoice.lines.data}
    assert lines[fee.id].amount == 4900 and lines[overage.id].quantity == 2_000_000
    assert lines[overage.id].amount == 200  # 2,000,000 x 0.0001 cent
    assert invoice.amount_paid == 5100
    assert client.v1.subscriptions.retrieve(sub.id).current_period_start == first_period_end
    paid_events = [stripe.Webhook.construct_event(r.body, r.signature, stripe_emu.webhook_secret)
                   for r in receiver.received if json.loads(r.body)["type"] == "invoice.paid"]
    assert paid_events[-1].data.object.id == invoice.id
    again = stripe_emu.renew_subscription(sub.id)["invoice"]
    assert {line["pricing"]["price_details"]["price"]: line["amount"] for line in again["lines"]["data"]} == {
        fee.id: 4900, overage.id: 0}
