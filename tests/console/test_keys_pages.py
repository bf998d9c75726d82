"""The keys page: a key is shown once, rotated with a grace period, revoked (the gateway refuses it
within a second), scoped (the gateway refuses other endpoints, 403) and expiring; last used and
spend per key from the request log; Web Chat keys stay off the page."""
from __future__ import annotations

import datetime as dt
import time

import httpx
import openai
import pytest
from django.utils import timezone

from console import services, usage
from console.models import ApiKey
from tests.conftest import SIM_MODEL
from tests.console.pages import login, record


def keys_url(tenant) -> str:
    return f"/console/projects/{tenant.project.public_id}/keys/"


def shown_key(html: str) -> str | None:
    if '<code id="new-key">' not in html:
        return None
    return html.split('<code id="new-key">')[1].split("</code>")[0]


def create(client, tenant, **data) -> tuple[ApiKey, str]:
    response = client.post(keys_url(tenant) + "new", {"kind": "secret", **data}, follow=True)
    assert response.status_code == 200, response.content.decode()[:3000]
    plaintext = shown_key(response.content.decode())
    assert plaintext is not None
    return ApiKey.objects.get(project=tenant.project, last4=plaintext[-4:], lookup=plaintext[8:20]), plaintext


def chat(server, key: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]})


def refused_within_a_second(server, key: str) -> float:
    start = time.monotonic()
    while chat(server, key).status_code != 401:
        assert time.monotonic() - start < 1.5, "the gateway still accepts the key"
        time.sleep(0.05)
    return time.monotonic() - start


def test_a_new_key_is_shown_exactly_once_with_a_copy_button(client, bob):
    login(client, bob)  # a developer manages keys
    key, plaintext = create(client, bob, name="ci", scopes=["chat", "models"])
    assert plaintext.startswith("sk_live_") and key.name == "ci" and key.scopes == ["chat", "models"]
    assert key.created_by == bob.user
    page = client.get(keys_url(bob)).content.decode()
    assert plaintext not in page and shown_key(page) is None
    assert key.redacted in page and "Chat, completions, responses, messages, Read models and nodes" in page
    # The copy button is there for JavaScript; the key itself is visible text without it.
    response = client.post(keys_url(bob) + "new", {"kind": "publishable", "name": "web"}, follow=True)
    html = response.content.decode()
    assert 'data-copy="new-key"' in html and shown_key(html).startswith("pk_live_")


def test_create_validates_scopes_and_expiry(client, alice):
    login(client, alice)
    bad = client.post(keys_url(alice) + "new", {"kind": "secret", "scopes": ["chat", "admin"]})
    assert bad.status_code == 400 and "Select a valid choice" in bad.content.decode()
    today = timezone.now().astimezone(dt.UTC).date()
    past = client.post(keys_url(alice) + "new", {"kind": "secret", "expires_on": today.isoformat()})
    assert past.status_code == 400 and "Pick a day after today" in past.content.decode()
    assert client.post(keys_url(alice) + "new", {"kind": "webchat"}).status_code == 400
    day = today + dt.timedelta(days=7)
    key, _ = create(client, alice, name="week", expires_on=day.isoformat())
    assert key.expires_at == dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)


def test_an_expired_key_is_refused_by_the_gateway(server, alice):
    _, plaintext = services.api_key_create(project=alice.project, kind="secret",
                                             expires_at=timezone.now() + dt.timedelta(seconds=1))
    assert chat(server, plaintext).json()["error"]["code"] == "model_not_found"
    time.sleep(1.1)
    assert chat(server, plaintext).json()["error"]["code"] == "invalid_api_key"


def test_rotate_keeps_the_old_key_for_the_grace_period_and_shows_the_new_one_once(client, server, alice):
    login(client, alice)
    old = ApiKey.objects.get(project=alice.project, kind="secret")
    old.scopes = ["chat"]
    old.save(update_fields=["scopes"])
    before = timezone.now()
    response = client.post(keys_url(alice) + f"{old.public_id}/rotate", {"grace_hours": "2"}, follow=True)
    html = response.content.decode()
    new_plaintext = shown_key(html)
    assert "The old key keeps working for 2 h" in html and new_plaintext.startswith("sk_live_")
    old.refresh_from_db()
    new = ApiKey.objects.get(rotated_from=old)
    assert new.scopes == ["chat"] and new.last4 == new_plaintext[-4:]
    assert before + dt.timedelta(hours=2) <= old.expires_at <= timezone.now() + dt.timedelta(hours=2)
    # Both work through the gateway during the grace period.
    assert chat(server, alice.secret_key).json()["error"]["code"] == "model_not_found"
    assert chat(server, new_plaintext).json()["error"]["code"] == "model_not_found"
    # A rotated key is not rotated twice; a grace period out of range is refused.
    again = client.post(keys_url(alice) + f"{old.public_id}/rotate", {"grace_hours": "1"}, follow=True)
    assert "already rotated" in again.content.decode()
    too_long = client.post(keys_url(alice) + f"{new.public_id}/rotate", {"grace_hours": "721"}, follow=True)
    assert "from 0 to 720" in too_long.content.decode()
    assert not ApiKey.objects.filter(rotated_from=new).exists()


def test_rotating_with_no_grace_stops_the_old_key_within_a_second(client, server, alice):
    login(client, alice)
    old = ApiKey.objects.get(project=alice.project, kind="secret")
    assert chat(server, alice.secret_key).status_code == 404
    client.post(keys_url(alice) + f"{old.public_id}/rotate", {"grace_hours": "0"})
    assert refused_within_a_second(server, alice.secret_key) < 1.5


def test_revoke_makes_the_gateway_refuse_the_key_within_a_second(client, server, alice):
    login(client, alice)
    key = ApiKey.objects.get(project=alice.project, kind="secret")
    assert chat(server, alice.secret_key).status_code == 404  # accepted (the model is unknown)
    response = client.post(keys_url(alice) + f"{key.public_id}/revoke", follow=True)
    assert "revoked everywhere" in response.content.decode()
    elapsed = refused_within_a_second(server, alice.secret_key)
    assert chat(server, alice.secret_key).json()["error"]["message"] == "The API key has been revoked."
    assert elapsed < 1.5
    key.refresh_from_db()
    assert key.status == "revoked"
    page = client.get(keys_url(alice)).content.decode()
    row = page.split(f'data-key="{key.public_id}"')[1].split("</tr>")[0]
    assert "revoked" in row and "Revoke" not in row


def test_scopes_are_enforced_by_the_gateway(server, alice, sim_node):
    chat_key = services.api_key_create(project=alice.project, kind="secret", scopes=["chat"])[1]
    embed_key = services.api_key_create(project=alice.project, kind="secret", scopes=["embeddings"])[1]
    models_key = services.api_key_create(project=alice.project, kind="secret", scopes=["models"])[1]

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=chat_key, max_retries=0)
    answer = client.chat.completions.create(model=SIM_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    assert answer.choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client.models.list()
    assert denied.value.status_code == 403 and denied.value.body["code"] == "permission_denied"
    assert "'models'" in denied.value.body["message"]

    embedder = openai.OpenAI(base_url=f"{server.url}/v1", api_key=embed_key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        embedder.chat.completions.create(model=SIM_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert denied.value.body["code"] == "permission_denied"
    with pytest.raises(openai.PermissionDeniedError) as denied:
        embedder.responses.create(model=SIM_MODEL, input="hi")
    assert "'chat'" in denied.value.body["message"]

    reader = openai.OpenAI(base_url=f"{server.url}/v1", api_key=models_key, max_retries=0)
    assert SIM_MODEL in [m.id for m in reader.models.list()]
    with pytest.raises(openai.PermissionDeniedError) as denied:
        reader.images.generate(model="sim-image", prompt="a cat")
    assert denied.value.body["code"] == "permission_denied" and "'images'" in denied.value.body["message"]
    # A key without scopes may call everything.
    unscoped = openai.OpenAI(base_url=f"{server.url}/v1", api_key=alice.secret_key, max_retries=0)
    assert SIM_MODEL in [m.id for m in unscoped.models.list()]


def test_last_used_and_month_spend_per_key_in_one_query(client, alice, django_assert_num_queries):
    secret = ApiKey.objects.get(project=alice.project, kind="secret")
    pk = ApiKey.objects.get(project=alice.project, kind="publishable")
    now = timezone.now()
    record(alice, key=secret, cost=1_500_000, at=now - dt.timedelta(minutes=5))
    last = record(alice, key=secret, cost=250_001, at=now - dt.timedelta(minutes=1))
    record(alice, key=secret, cost=7_000_000, at=usage.month_start() - dt.timedelta(days=1))  # last month
    with django_assert_num_queries(1):
        stats = usage.key_stats(alice.project)
    assert stats[secret.id]["month_spend"] == 1_750_001 and stats[secret.id]["month_requests"] == 2
    assert stats[secret.id]["last_used"] == last.created_at
    assert pk.id not in stats
    login(client, alice)
    page = client.get(keys_url(alice)).content.decode()
    row = page.split(f'data-key="{secret.public_id}"')[1].split("</tr>")[0]
    assert 'data-micros="1750001"' in row and "1.750001 USD" in row
    assert last.created_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") in row
    pk_row = page.split(f'data-key="{pk.public_id}"')[1].split("</tr>")[0]
    assert "never" in pk_row and 'data-micros="0"' in pk_row


def test_web_chat_keys_are_not_listed_or_managed_here(client, alice):
    from console import keys as key_format

    new = key_format.generate("secret")
    webchat = ApiKey.objects.create(project=alice.project, kind="webchat", name="relay", lookup=new.lookup,
                                    hash=new.hash, last4=new.last4)
    login(client, alice)
    page = client.get(keys_url(alice)).content.decode()
    assert webchat.public_id not in page and "relay" not in page
    assert client.post(keys_url(alice) + f"{webchat.public_id}/revoke").status_code == 404
    assert client.post(keys_url(alice) + f"{webchat.public_id}/rotate", {"grace_hours": "1"}).status_code == 404
    webchat.refresh_from_db()
    assert webchat.status == "active"


def test_roles_and_tenants_on_the_keys_page(client, alice, charlie):
    from django.contrib.auth import get_user_model

    from console.models import Role

    finance = get_user_model().objects.create_user(username="fin", email="fin@example.com", password="pw-finfin")
    services.membership_add(organization=alice.organization, user=finance, role=Role.FINANCE)
    key = ApiKey.objects.get(project=alice.project, kind="secret")
    client.login(username="fin", password="pw-finfin")
    assert client.get(keys_url(alice)).status_code == 404
    assert client.post(keys_url(alice) + "new", {"kind": "secret"}).status_code == 404
    assert client.post(keys_url(alice) + f"{key.public_id}/revoke").status_code == 404
    client.logout()
    login(client, charlie)
    assert client.get(keys_url(alice)).status_code == 404
    assert client.post(f"/console/projects/{charlie.project.public_id}/keys/{key.public_id}/revoke").status_code == 404
    key.refresh_from_db()
    assert key.status == "active"


async def test_the_key_record_carries_scopes_and_an_unnamed_scope_fails_closed(alice, monkeypatch):
    import dataclasses

    from asgiref.sync import sync_to_async
    from starlette.requests import Request

    from console import keys as key_format
    from gateway import auth, context
    from gateway.errors import GatewayError

    key = await sync_to_async(ApiKey.objects.get)(project=alice.project, kind="secret")
    key.scopes = ["embeddings", "chat"]
    await sync_to_async(key.save)(update_fields=["scopes"])
    auth.cache.drop(None)
    record = await auth.cache.get(key_format.parse(alice.secret_key).lookup)
    assert record.scopes == frozenset({"chat", "embeddings"})

    async def authenticate(headers):
        return record

    monkeypatch.setattr(auth, "authenticate", authenticate)
    req = context.ApiRequest(Request({"type": "http", "method": "POST", "path": "/", "headers": []}))
    assert await req.authenticate(publishable_ok=False, scope="chat") is record
    assert await req.authenticate(publishable_ok=False, scope=None) is record
    for scope in ("models", context.UNNAMED_SCOPE):
        with pytest.raises(GatewayError) as refused:
            await req.authenticate(publishable_ok=False, scope=scope)
        assert refused.value.code == "permission_denied" and refused.value.status == 403
    with pytest.raises(GatewayError):
        await req.authenticate(publishable_ok=False)  # an endpoint naming no scope: unscoped keys only
    record = dataclasses.replace(record, scopes=None)
    assert await req.authenticate(publishable_ok=False) is record


def test_a_scoped_key_cannot_manage_keys_over_the_api(server, alice):
    scoped = services.api_key_create(project=alice.project, kind="secret", scopes=["chat"])[1]
    response = httpx.post(f"{server.url}/v1/keys", headers={"Authorization": f"Bearer {scoped}"},
                          json={"kind": "secret"})
    assert response.status_code == 403 and response.json()["error"]["code"] == "permission_denied"
    assert httpx.get(f"{server.url}/v1/keys", headers={"Authorization": f"Bearer {scoped}"}).status_code == 403
    # An unscoped key creates a scoped one there too; bad scopes are named.
    made = httpx.post(f"{server.url}/v1/keys", headers=alice.auth(), json={"kind": "secret", "scopes": ["models"]})
    assert made.status_code == 201 and made.json()["scopes"] == ["models"]
    bad = httpx.post(f"{server.url}/v1/keys", headers=alice.auth(), json={"kind": "secret", "scopes": ["root"]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "scopes"
    system = httpx.post(f"{server.url}/v1/keys", headers=alice.auth(), json={"kind": "webchat"})
    assert system.status_code == 400 and system.json()["error"]["param"] == "kind"  # the system's own key
