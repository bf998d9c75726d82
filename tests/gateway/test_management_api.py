"""/v1/keys and /v1/balance for secret keys; other tenants' ids answer 404."""
import time

import httpx

from billing.models import SpendCounter
from console.models import ApiKey
from tests.conftest import SIM_MODEL, cache_settle

CHAT = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_create_list_and_revoke_keys(server, alice):
    created = httpx.post(f"{server.api}/keys", headers=alice.auth(), json={"kind": "secret", "name": "ci"})
    assert created.status_code == 201
    body = created.json()
    assert body["key"].startswith("sk_live_") and body["redacted"].endswith(body["key"][-4:])
    listed = httpx.get(f"{server.api}/keys", headers=alice.auth()).json()["data"]
    assert body["id"] in {k["id"] for k in listed} and all("key" not in k for k in listed)
    revoked = httpx.delete(f"{server.api}/keys/{body['id']}", headers=alice.auth())
    assert revoked.json()["status"] == "revoked"
    assert httpx.get(f"{server.api}/keys", headers={"Authorization": f"Bearer {body['key']}"}).status_code == 401


def test_rotation_keeps_the_old_key_for_the_grace_period(server, alice, sim_node):
    old_id = ApiKey.objects.get(project=alice.project, kind="secret").public_id
    rotated = httpx.post(f"{server.api}/keys/{old_id}/rotate", headers=alice.auth(), json={"grace_seconds": 2}).json()
    cache_settle()
    new_auth = {"Authorization": f"Bearer {rotated['key']}"}
    assert rotated["previous"]["expires_at"] is not None and rotated["rotated_from"] == old_id
    for auth in (alice.auth(), new_auth):  # both work during the grace period
        assert httpx.post(f"{server.api}/chat/completions", headers=auth, json=CHAT).status_code == 200
    time.sleep(2.2)
    expired = httpx.post(f"{server.api}/chat/completions", headers=alice.auth(), json=CHAT)
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
    assert httpx.post(f"{server.api}/chat/completions", headers=new_auth, json=CHAT).status_code == 200


def test_other_tenants_keys_answer_404(server, alice, charlie):
    theirs = ApiKey.objects.get(project=charlie.project, kind="secret").public_id
    for response in (
        httpx.get(f"{server.api}/keys/{theirs}", headers=alice.auth()),
        httpx.delete(f"{server.api}/keys/{theirs}", headers=alice.auth()),
        httpx.post(f"{server.api}/keys/{theirs}/rotate", headers=alice.auth(), json={}),
    ):
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert ApiKey.objects.get(public_id=theirs).status == "active"


def test_a_key_id_no_key_can_have_answers_404_not_500(server, alice):
    for key_id in ("%00", "key_%00abc", "k%C3%A9y"):  # a NUL byte once reached PostgreSQL and failed there
        for response in (
            httpx.get(f"{server.api}/keys/{key_id}", headers=alice.auth()),
            httpx.patch(f"{server.api}/keys/{key_id}", headers=alice.auth(), json={"rpm_limit": 5}),
            httpx.delete(f"{server.api}/keys/{key_id}", headers=alice.auth()),
            httpx.post(f"{server.api}/keys/{key_id}/rotate", headers=alice.auth(), json={}),
        ):
            assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", response.text


def test_bad_input_is_named(server, alice):
    bad_kind = httpx.post(f"{server.api}/keys", headers=alice.auth(), json={"kind": "root"})
    assert bad_kind.status_code == 400 and bad_kind.json()["error"]["param"] == "kind"
    malformed = httpx.post(f"{server.api}/keys", headers={**alice.auth(), "content-type": "application/json"}, content=b"{")
    assert malformed.status_code == 400 and malformed.json()["error"]["code"] == "invalid_request"


def test_balance(server, alice):
    balance = httpx.get(f"{server.api}/balance", headers=alice.auth()).json()
    assert balance == {"object": "balance", "currency": "usd", "balance_micros": 1_000_000, "reserved_micros": 0,
                       "available_micros": 1_000_000}


def test_an_unexpected_error_is_an_envelope_not_an_html_page(alice, monkeypatch):
    from django.test import Client

    from billing import selectors

    def broken(**kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(selectors, "balance_for_organization", broken)
    response = Client(raise_request_exception=False).get("/v1/balance", HTTP_AUTHORIZATION=f"Bearer {alice.secret_key}")
    assert response.status_code == 500 and response.json()["error"]["code"] == "internal_error"
    assert response.json()["error"]["request_id"] == response["X-Request-ID"]


def test_keys_carry_their_limits_and_spend_cap(server, alice):
    created = httpx.post(f"{server.api}/keys", headers=alice.auth(),
                         json={"kind": "secret", "rpm_limit": 30, "tpm_limit": 5000, "monthly_spend_cap": 2_000_000})
    assert created.status_code == 201
    body = created.json()
    assert (body["rpm_limit"], body["tpm_limit"], body["monthly_spend_cap"]) == (30, 5000, 2_000_000)
    key = ApiKey.objects.get(public_id=body["id"])
    assert (key.rpm_limit, key.tpm_limit, key.monthly_spend_cap) == (30, 5000, 2_000_000)
    assert SpendCounter.objects.get(scope="key", scope_id=key.id).cap == 2_000_000

    url = f"{server.api}/keys/{body['id']}"
    changed = httpx.patch(url, headers=alice.auth(), json={"rpm_limit": 60, "monthly_spend_cap": None})
    assert changed.status_code == 200
    assert (changed.json()["rpm_limit"], changed.json()["tpm_limit"], changed.json()["monthly_spend_cap"]) == (60, 5000, None)
    assert SpendCounter.objects.get(scope="key", scope_id=key.id).cap is None
    posted = httpx.post(url, headers=alice.auth(), json={"tpm_limit": None}).json()  # OpenAI-style update
    assert (posted["rpm_limit"], posted["tpm_limit"]) == (60, None)
    assert httpx.get(url, headers=alice.auth()).json()["rpm_limit"] == 60


def test_a_key_limit_set_over_the_api_applies_at_once(server, alice, sim_node):
    key_id = ApiKey.objects.get(project=alice.project, kind="secret").public_id
    assert httpx.patch(f"{server.api}/keys/{key_id}", headers=alice.auth(), json={"rpm_limit": 1}).status_code == 200
    cache_settle()
    first = httpx.post(f"{server.api}/chat/completions", headers=alice.auth(), json=CHAT)
    assert first.status_code == 200 and first.headers["x-ratelimit-limit-requests"] == "1"
    second = httpx.post(f"{server.api}/chat/completions", headers=alice.auth(), json=CHAT)
    assert second.status_code == 429 and "API key" in second.json()["error"]["message"]


def test_bad_limits_are_named_and_other_tenants_keys_answer_404(server, alice, charlie):
    key_id = ApiKey.objects.get(project=alice.project, kind="secret").public_id
    for field, value in (("rpm_limit", 0), ("tpm_limit", -5), ("monthly_spend_cap", -1), ("rpm_limit", "many")):
        bad = httpx.patch(f"{server.api}/keys/{key_id}", headers=alice.auth(), json={field: value})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == field
    theirs = ApiKey.objects.get(project=charlie.project, kind="secret")
    response = httpx.patch(f"{server.api}/keys/{theirs.public_id}", headers=alice.auth(), json={"rpm_limit": 1})
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    theirs.refresh_from_db()
    assert theirs.rpm_limit is None
