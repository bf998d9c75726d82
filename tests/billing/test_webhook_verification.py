"""POST /billing/stripe/webhook: signature, tolerance, rotation, store-once, rollback with the effect.

Signed with the stripe library's own scheme (stripe.WebhookSignature.generate_signature_header).
"""
import time

import orjson
import pytest
import stripe
from django.test import Client

from billing import webhooks
from billing.models import StripeEvent

SECRET = "whsec_test_current_0123456789abcdef"
OLD = "whsec_test_previous_0123456789abcdef"
URL = "/billing/stripe/webhook"


@pytest.fixture(autouse=True)
def secrets(settings):
    settings.STRIPE_WEBHOOK_SECRETS = [SECRET, OLD]


def event(event_id="evt_1", type_="test.unknown_kind", **data):
    return {"id": event_id, "object": "event", "type": type_, "created": int(time.time()), "livemode": False,
            "api_version": "2025-01-27.acacia", "data": {"object": data or {"id": "obj_1"}}}


def post(payload: bytes, header: str | None):
    headers = {"HTTP_STRIPE_SIGNATURE": header} if header is not None else {}
    return Client().post(URL, data=payload, content_type="application/json", **headers)


def signed(body: dict, secret=SECRET, timestamp=None) -> tuple[bytes, str]:
    payload = orjson.dumps(body)
    return payload, stripe.WebhookSignature.generate_signature_header(payload.decode(), secret, timestamp)


@pytest.mark.django_db
def test_unknown_event_is_stored_once_and_ignored():
    payload, header = signed(event())
    first = post(payload, header)
    assert first.status_code == 200 and first.json()["status"] == "ignored" and not first.json()["duplicate"]
    again = post(payload, header)
    assert again.status_code == 200 and again.json()["duplicate"]
    assert StripeEvent.objects.filter(id="evt_1").count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "mangle",
    [
        lambda p, h: (p.replace(b"obj_1", b"obj_2"), h),  # tampered body
        lambda p, h: (p, None),  # unsigned
        lambda p, h: (p, "t=abc,v1=zz"),  # malformed
        lambda p, h: (p, h.split(",v1=")[0] + ",v1=" + "0" * 64),  # wrong signature
    ],
    ids=["tampered", "unsigned", "malformed", "wrong-signature"],
)
def test_bad_signatures_are_refused_and_change_nothing(mangle):
    payload, header = mangle(*signed(event()))
    response = post(payload, header)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    assert not StripeEvent.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("skew", [-301, 400])
def test_stale_or_future_timestamps_are_refused(skew):
    payload, header = signed(event(), timestamp=int(time.time()) + skew)
    assert post(payload, header).status_code == 400
    assert not StripeEvent.objects.exists()


@pytest.mark.django_db
def test_an_unconfigured_secret_is_refused_and_either_rotated_secret_is_accepted():
    payload, header = signed(event("evt_a"), secret="whsec_someone_else")
    assert post(payload, header).status_code == 400
    payload, header = signed(event("evt_old"), secret=OLD)
    assert post(payload, header).status_code == 200
    # During rotation Stripe sends one v1 per secret; any one matching is enough.
    payload = orjson.dumps(event("evt_both"))
    both = stripe.WebhookSignature.generate_signature_header(payload.decode(), "whsec_retired")
    t = both.split(",")[0][2:]
    good = stripe.WebhookSignature._compute_signature(f"{t}.{payload.decode()}", SECRET)
    assert post(payload, f"{both},v1={good}").status_code == 200
    assert set(StripeEvent.objects.values_list("id", flat=True)) == {"evt_old", "evt_both"}


@pytest.mark.django_db
def test_a_signed_body_that_is_not_an_event_is_refused():
    payload = b'{"hello": "world"}'
    header = stripe.WebhookSignature.generate_signature_header(payload.decode(), SECRET)
    assert post(payload, header).status_code == 400


@pytest.mark.django_db(transaction=True)
def test_a_failing_handler_stores_nothing_and_answers_500_so_stripe_retries(monkeypatch):
    calls = []

    def explode(evt):
        StripeEvent.objects.create(id="evt_side_effect", type="x", api_created="2026-01-01T00:00Z", payload={},
                                   status="processed")
        calls.append(evt["id"])
        raise RuntimeError("downstream broke")

    monkeypatch.setitem(webhooks._HANDLERS, "test.explodes", [explode])
    payload, header = signed(event("evt_boom", "test.explodes"))
    client = Client(raise_request_exception=False)
    response = client.post(URL, data=payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)
    assert response.status_code == 500 and calls == ["evt_boom"]
    assert not StripeEvent.objects.exists()  # neither the event nor the handler's write


def test_oversized_bodies_are_refused_before_reading(db):
    response = Client().post(URL, data=b"x" * (webhooks.MAX_BODY + 1), content_type="application/json",
                             HTTP_STRIPE_SIGNATURE="t=1,v1=0")
    assert response.status_code == 413
