"""Webhooks from the emulator: full Stripe events, signed so that the stripe library's own
verifier accepts them; endpoints, drops, replays. (The emulator is localstripe plus an HTTP-level
fake for what localstripe lacks; the stripe library and the receiver are real.)"""
from __future__ import annotations

import json

import pytest
import stripe


def test_a_triggered_event_is_a_full_stripe_event_that_construct_event_verifies(stripe_emu, receiver):
    stripe_emu.register_webhook(receiver.url)

    result = stripe_emu.trigger("customer.updated", {"id": "cus_x", "object": "customer"})

    [delivery] = result["deliveries"]
    assert delivery["status"] == "delivered" and delivery["http_status"] == 200
    [got] = receiver.received
    event = stripe.Webhook.construct_event(got.body, got.signature, stripe_emu.webhook_secret)
    assert event.id.startswith("evt_") and event.object == "event" and event.type == "customer.updated"
    assert event.livemode is False and event.api_version == stripe.api_version and event.created > 0
    assert event.data.object.id == "cus_x"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(got.body, got.signature, "whsec_other")
    tampered = got.body.replace(b"cus_x", b"cus_y")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(tampered, got.signature, stripe_emu.webhook_secret)


def test_during_a_rotation_each_secret_signs_and_either_verifies(stripe_emu, receiver):
    stripe_emu.register_webhook(receiver.url, secrets=["whsec_old", "whsec_new"])

    stripe_emu.trigger("ping", {"id": "x"})

    [got] = receiver.received
    assert got.signature.count("v1=") == 2
    for secret in ("whsec_old", "whsec_new"):
        assert stripe.Webhook.construct_event(got.body, got.signature, secret).type == "ping"


def test_enabled_events_filter_what_an_endpoint_receives(stripe_emu, receiver):
    stripe_emu.register_webhook(receiver.url, enabled_events=["charge.refunded"])

    stripe_emu.trigger("customer.updated", {"id": "cus_1"})
    stripe_emu.trigger("charge.refunded", {"id": "ch_1"})

    assert [json.loads(r.body)["type"] for r in receiver.received] == ["charge.refunded"]


def test_drop_next_delivery_records_it_unsent_and_replay_delivers_it(stripe_emu, receiver):
    stripe_emu.register_webhook(receiver.url)
    stripe_emu.drop_next(1, type="checkout.session.completed")

    other = stripe_emu.trigger("customer.updated", {"id": "cus_1"})
    dropped = stripe_emu.trigger("checkout.session.completed", {"id": "cs_1"})
    after = stripe_emu.trigger("checkout.session.completed", {"id": "cs_2"})

    assert other["deliveries"][0]["status"] == "delivered"
    assert dropped["deliveries"][0]["status"] == "dropped"
    assert after["deliveries"][0]["status"] == "delivered"
    assert [json.loads(r.body)["data"]["object"]["id"] for r in receiver.received] == ["cus_1", "cs_2"]
    event_id = dropped["events"][0]["id"]
    assert [d["status"] for d in stripe_emu.deliveries(event_id=event_id)] == ["dropped"]

    [replayed] = stripe_emu.replay(event_id)

    assert replayed["status"] == "delivered" and replayed["replay_of"] == dropped["deliveries"][0]["id"]
    event = stripe.Webhook.construct_event(receiver.received[-1].body, receiver.received[-1].signature,
                                           stripe_emu.webhook_secret)
    assert event.id == event_id and event.data.object.id == "cs_1"


def test_a_failing_endpoint_is_recorded_as_failed(stripe_emu, receiver):
    receiver.status = 500
    stripe_emu.register_webhook(receiver.url)

    [delivery] = stripe_emu.trigger("ping", {"id": "x"})["deliveries"]

    assert delivery["status"] == "failed" and delivery["http_status"] == 500


def test_events_are_listed_through_the_api(stripe_emu, client):
    event = stripe_emu.trigger("ping", {"id": "listed"})["events"][0]

    assert client.v1.events.retrieve(event["id"]).data.object.id == "listed"
    assert event["id"] in [e.id for e in client.v1.events.list(params={"type": "ping", "limit": 100}).data]
