"""The authorization matrix, generated from the URL confs so a new endpoint cannot be missed.

/v1 (the gateway's Starlette routes, the Django-served management API, /pki/public_key): every
served route needs an entry in V1 saying who may call it and which path parameter names the
caller's own resource; a route without one fails `test_every_v1_route_has_an_expectation`. Each
route is then asked, on a live server, by every caller below, and must answer in the error
envelope with its request id, never a 5xx:

* no key, a signed-in developer's or finance member's session cookie (the console's session never
  authenticates the API), an expired Web Chat relay credential (as `Relay …` and as a bearer) → 401;
* a publishable key (with its allowed Origin) → 403 permission_denied but on the browser routes;
* another tenant's secret key (or node token) on a resource of alice's → 404 not_found, exactly
  as for an id that does not exist — while alice's own key is answered (not 401/403/404).

The console (every other Django URL): views declaring a permission are walked by role in
tests/console/test_role_matrix.py (owner/admin/developer/finance/outsider/anonymous/staff);
here every Django URL must be one of those, the admin (staff only), allauth's account pages or a
/v1 route, and every guarded console page refuses API keys and relay credentials (no session →
sign-in). The relay itself refuses an expired credential, another user's session, and no session.
"""
from __future__ import annotations

import base64
import datetime as dt
import re
from dataclasses import dataclass

import httpx
import pytest
from allauth.account.models import EmailAddress
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import NoReverseMatch, get_resolver, reverse
from django.utils import timezone

from console import services, webchat
from console.models import ApiKey, Conversation, RelayCredential, Role
from tests.conftest import SIM_MODEL
from tests.console.test_role_matrix import ROUTES as CONSOLE_ROUTES
from tests.console.test_role_matrix import _walk, fill
from tests.security.helpers import assert_envelope
from tests.security.routes import fill as fill_v1
from tests.security.routes import path_kwargs, served_v1_routes

PUBLIC, KEY, BROWSER, OPERATOR, KEY_OR_OPERATOR = "public", "key", "browser key", "operator", "key or operator"


@dataclass(frozen=True)
class Expect:
    """Who may call a route (PUBLIC: anyone; KEY: a secret key; BROWSER: a secret or publishable key;
    OPERATOR: a node token; KEY_OR_OPERATOR: either), and the path parameter naming the caller's
    own resource, which another tenant must get 404 for."""

    auth: str
    owned: str | None = None


V1: dict[tuple[str, str], Expect] = {
    ("POST", "/v1/chat/completions"): Expect(BROWSER),
    ("POST", "/v1/completions"): Expect(BROWSER),
    ("POST", "/v1/embeddings"): Expect(KEY),
    ("POST", "/v1/responses"): Expect(BROWSER),
    ("GET", "/v1/responses/{response_id}"): Expect(KEY, owned="response_id"),
    ("POST", "/v1/messages"): Expect(BROWSER),
    ("POST", "/v1/messages/count_tokens"): Expect(BROWSER),
    ("GET", "/v1/streams/{request_id}"): Expect(BROWSER, owned="request_id"),
    ("GET", "/v1/models"): Expect(KEY),
    ("GET", "/v1/models/{model_id}"): Expect(KEY),
    ("GET", "/v1/nodes"): Expect(KEY),
    ("POST", "/v1/nodes/register"): Expect(OPERATOR),
    ("POST", "/v1/nodes/{node_id}/heartbeat"): Expect(OPERATOR, owned="node_id"),
    ("GET", "/v1/nodes/{node_id}/attestation"): Expect(KEY),
    ("GET", "/v1/nodes/topology"): Expect(KEY_OR_OPERATOR),
    ("GET", "/v1/nodes/health"): Expect(KEY_OR_OPERATOR),
    ("POST", "/v1/nodes/{node_id}/models/load"): Expect(OPERATOR, owned="node_id"),
    ("POST", "/v1/nodes/{node_id}/models/unload"): Expect(OPERATOR, owned="node_id"),
    ("POST", "/v1/nodes/{node_id}/models/pull"): Expect(OPERATOR, owned="node_id"),
    ("GET", "/v1/jobs/{job_id}"): Expect(KEY_OR_OPERATOR, owned="job_id"),
    ("POST", "/v1/images/generations"): Expect(KEY),
    ("POST", "/v1/images"): Expect(KEY),
    ("GET", "/v1/images/{job_id}/{index}"): Expect(KEY, owned="job_id"),
    ("POST", "/v1/agents/runs"): Expect(KEY),
    ("GET", "/v1/agents/runs/{run_id}/events"): Expect(KEY, owned="run_id"),
    ("GET", "/v1/openapi.json"): Expect(PUBLIC),
    ("POST", "/v1/sealed/chat/completions"): Expect(KEY),
    ("GET", "/v1/receipts"): Expect(KEY),
    ("GET", "/pki/public_key"): Expect(PUBLIC),
    ("GET", "/v1/keys"): Expect(KEY),
    ("POST", "/v1/keys"): Expect(KEY),
    ("GET", "/v1/keys/{key_id}"): Expect(KEY, owned="key_id"),
    ("PATCH", "/v1/keys/{key_id}"): Expect(KEY, owned="key_id"),
    ("POST", "/v1/keys/{key_id}"): Expect(KEY, owned="key_id"),
    ("DELETE", "/v1/keys/{key_id}"): Expect(KEY, owned="key_id"),
    ("POST", "/v1/keys/{key_id}/rotate"): Expect(KEY, owned="key_id"),
    ("GET", "/v1/balance"): Expect(KEY),
}
V1_ROUTES = sorted(served_v1_routes())
PNG = base64.b64encode(bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
                                     "0000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")).decode()


def test_every_v1_route_has_an_expectation():
    missing = [f"{m} {p}" for m, p in V1_ROUTES if (m, p) not in V1]
    assert not missing, f"served /v1 routes with no entry in V1 ({__file__}): {missing}"
    gone = sorted(set(V1) - set(V1_ROUTES))
    assert not gone, f"V1 lists routes the server no longer serves: {gone}"
    for (method, path), expect in V1.items():
        assert expect.owned is None or expect.owned in path_kwargs(path), (method, path)


# --- the tenants, their resources and the callers ----------------------------------------------


def _session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


@pytest.fixture
def v1(server, alice, charlie, sim_node):
    """alice's resources (one per kind of id a /v1 path takes) and every caller of the matrix."""
    from nodes import jobs
    from nodes.models import Job
    from nodes.services import node_register, node_token_create

    def member(role):
        user = get_user_model().objects.create_user(username=f"alice-{role}", email=f"{role}@alice.example",
                                                    password="pw")
        services.membership_add(organization=alice.organization, user=user, role=role)
        return user

    stored = httpx.post(f"{server.api}/responses", headers=alice.auth(), timeout=30,
                        json={"model": SIM_MODEL, "input": "hi", "max_output_tokens": 4})
    with httpx.stream("POST", f"{server.api}/chat/completions", headers=alice.auth(), timeout=30, json={
        "model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True,
    }) as streamed:
        streamed.read()
    alice_node = node_register(operator=alice.organization, name="alice-node", base_url=f"{sim_node.base_url}",
                               models=[{"model": SIM_MODEL}])
    # A finished image job as gateway/images.py leaves one (its params, its sealed result).
    image = jobs.job_create(kind=Job.Kind.IMAGE, project=alice.project, params={"model": "sim-image", "size": "1x1"})
    jobs.job_finish(job=image, status=Job.Status.SUCCEEDED,
                    result={"images": [PNG], "created": int(timezone.now().timestamp()), "cost": 0})
    run = jobs.job_create(kind=Job.Kind.AGENT_RUN, project=alice.project, params={"agent": "matrix"})
    jobs.job_finish(job=run, status=Job.Status.SUCCEEDED, result={"events": []})
    spare, _ = services.api_key_create(project=alice.project, kind=ApiKey.Kind.SECRET, name="spare")
    conversation = Conversation.objects.create(project=alice.project, user=alice.user, model=SIM_MODEL, title="m")
    expired = "wcr_matrix-expired-credential"
    RelayCredential.objects.create(
        token_hash=webchat.hash_token(expired), user=alice.user, conversation=conversation, turn_id="turn_expired",
        model=SIM_MODEL, spend_cap=0, expires_at=timezone.now() - dt.timedelta(seconds=1),
    )
    return {
        "ids": {
            "response_id": stored.raise_for_status().json()["id"],
            "request_id": streamed.headers["x-request-id"],
            "model_id": SIM_MODEL,
            "node_id": alice_node.public_id,
            "job_id": image.public_id,
            "index": "0",
            "run_id": run.public_id,
            "key_id": spare.public_id,
        },
        "platform_node": sim_node.public_id,  # the one alice's project may use (its attestation is public to it)
        "alice_token": node_token_create(organization=alice.organization)[1],
        "charlie_token": node_token_create(organization=charlie.organization)[1],
        "sessions": {role: _session_cookie(member(role)) for role in (Role.DEVELOPER, Role.FINANCE)},
        "expired_relay": expired,
        "conversation": conversation,
    }


# Valid bodies where a route checks its body before the resource: the 404 must then still come.
BODIES = {
    "/v1/nodes/{node_id}/heartbeat": {"load": 0.1, "queue_depth": 0, "models_loaded": []},
    "/v1/nodes/{node_id}/models/load": {"model": SIM_MODEL},
    "/v1/nodes/{node_id}/models/unload": {"model": SIM_MODEL},
    "/v1/nodes/{node_id}/models/pull": {"model": SIM_MODEL},
}


_client = httpx.Client(timeout=30)  # one connection pool for the hundreds of calls below


def _call(server, method: str, path: str, headers: dict[str, str], cookies: dict | None = None,
          route: str = "") -> httpx.Response:
    body = None if method in ("GET", "DELETE") else BODIES.get(route, {})
    if cookies:
        headers = {**headers, "Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}
    _client.cookies.clear()  # nothing a server set carries over to the next caller
    return _client.request(method, server.url + path, headers=headers, json=body)


def _path(method: str, route: str, v1) -> str:
    ids = dict(v1["ids"])
    if route == "/v1/nodes/{node_id}/attestation":
        ids["node_id"] = v1["platform_node"]
    return fill_v1(route, ids)


def test_v1_matrix(server, alice, charlie, v1):
    """Every served /v1 route (read from the URL confs) against every caller; one world for all of
    them (DELETE last: it revokes the key the other key routes name), every failure reported."""
    failures = []
    for method, route in sorted(V1_ROUTES, key=lambda r: (r[0] == "DELETE", r)):
        try:
            check_route(server, alice, charlie, v1, method, route)
        except AssertionError as exc:
            failures.append(f"{method} {route}: {exc}")
    assert not failures, "\n".join(failures)


def check_route(server, alice, charlie, v1, method: str, route: str) -> None:
    expect = V1.get((method, route))
    assert expect is not None, f"{method} {route}: no entry in V1"
    path = _path(method, route, v1)
    origin = {"Origin": "https://app.alice.example"}

    refused_anyone = {
        "no key": {},
        "expired relay credential": {"Authorization": f"Relay {v1['expired_relay']}"},
        "expired relay credential as a bearer": {"Authorization": f"Bearer {v1['expired_relay']}"},
    }
    answers = {who: _call(server, method, path, headers) for who, headers in refused_anyone.items()}
    for role, session in v1["sessions"].items():
        answers[f"{role}'s session"] = _call(server, method, path, {}, cookies={"sessionid": session})
    for who, response in answers.items():
        if expect.auth == PUBLIC:
            assert response.status_code == 200, (who, response.status_code, response.text[:300])
        else:
            assert assert_envelope(response, 401)["code"] in {"unauthenticated", "invalid_api_key"}, who

    publishable = _call(server, method, path, {**alice.auth(alice.publishable_key), **origin})
    if expect.auth == PUBLIC:
        assert publishable.status_code == 200
    elif expect.auth == BROWSER:
        assert publishable.status_code not in {401, 403} and publishable.status_code < 500, publishable.text[:300]
    else:
        assert assert_envelope(publishable, 403)["code"] == "permission_denied"

    if expect.owned is None:
        return
    # Another tenant's credential on alice's resource: not found, as for an id that does not exist...
    own, foreign = ((v1["alice_token"], v1["charlie_token"]) if expect.auth == OPERATOR
                    else (alice.secret_key, charlie.secret_key))
    foreign_answer = _call(server, method, path, {"Authorization": f"Bearer {foreign}"}, route=route)
    assert assert_envelope(foreign_answer, 404)["code"] in {"not_found", "model_not_found"}, foreign_answer.text
    missing = _call(server, method, fill_v1(route, {**v1["ids"], expect.owned: "zz_missing0"}),
                    {"Authorization": f"Bearer {own}"}, route=route)
    assert assert_envelope(missing, 404)["code"] == assert_envelope(foreign_answer, 404)["code"]
    # ...while its owner is answered (this is what makes the 404 above mean something).
    owner = _call(server, method, path, {"Authorization": f"Bearer {own}", **origin}, route=route)
    assert owner.status_code not in {401, 403, 404} and owner.status_code < 500, (owner.status_code, owner.text[:300])


# --- the relay ------------------------------------------------------------------------------------


def test_the_relay_refuses_an_expired_credential_another_user_and_no_session(server, alice, charlie, v1):
    url = f"{server.url}/chat/relay/{v1['conversation'].public_id}/"
    relay = {"Authorization": f"Relay {v1['expired_relay']}"}
    as_alice = httpx.get(url, headers=relay, cookies={"sessionid": _session_cookie(alice.user)}, timeout=10)
    assert as_alice.status_code == 401 and as_alice.json()["error"]["code"] == "credential_expired"
    assert as_alice.json()["error"]["request_id"]
    for cookies in ({"sessionid": _session_cookie(charlie.user)}, {}):
        refused = httpx.get(url, headers=relay, cookies=cookies, timeout=10)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "credential_invalid", refused.text
    assert RelayCredential.objects.get(turn_id="turn_expired").state == "minted"  # nothing ran


# --- the console ----------------------------------------------------------------------------------


def django_routes():
    return list(_walk(get_resolver().url_patterns))


def test_every_django_url_has_an_expectation():
    """Every URL is walked by the role matrix (it declares a permission), is the admin (staff only:
    test_the_admin_is_staff_only), an allauth account page (sign-in, sign-up, the signed-in user's
    own settings), or a /v1 route of V1 (or the management API's catch-all 404)."""
    walked = {r.route for r in CONSOLE_ROUTES}
    v1_paths = {p for _, p in V1}
    missing = []
    for r in django_routes():
        if r.route in walked or r.route.startswith(("admin/", "accounts/")):
            continue
        if r.route.startswith("v1/"):
            path = "/" + re.sub(r"<\w+:(\w+)>", r"{\1}", r.route)
            if path in v1_paths or r.route == "v1/^.*$":
                continue
        missing.append(f"{r.name} ({r.route})")
    assert not missing, f"Django URLs with no expectation: {missing}"


@pytest.mark.parametrize("route", [r for r in CONSOLE_ROUTES if r.permission not in ("public", "missing")],
                         ids=lambda r: r.name)
def test_console_pages_refuse_api_keys_and_relay_credentials(route, world):
    """A key or a relay credential is not a session: every guarded page sends it to sign in."""
    tenant = world["tenant"]
    path = fill(route, world)
    credentials = [tenant.secret_key, tenant.publishable_key, "wcr_matrix-relay"]
    for credential in credentials:
        for scheme in ("Bearer", "Relay"):
            client = Client(HTTP_AUTHORIZATION=f"{scheme} {credential}")
            for response in (client.get(path, {"org": tenant.organization.public_id}),
                             client.post(path, {"org": tenant.organization.public_id})):
                assert response.status_code == 405 or "/accounts/login/" in response.get("Location", ""), (
                    route.name, scheme, response.status_code)


def _admin_urls() -> list[str]:
    """The admin index and, for every registered model, its list, add, change, delete and history pages."""
    urls = [reverse("admin:index")]
    for model in admin.site._registry:
        info = f"admin:{model._meta.app_label}_{model._meta.model_name}"
        urls.append(reverse(f"{info}_changelist"))
        for action, args in (("add", []), ("change", ["1"]), ("delete", ["1"]), ("history", ["1"])):
            try:
                urls.append(reverse(f"{info}_{action}", args=args))
            except NoReverseMatch:  # a read-only admin has no add (or change) page
                continue
    return urls


def test_the_admin_is_staff_only(world):
    urls = _admin_urls()
    assert len(urls) > 10
    people = {"anonymous": None, **{str(role): user for role, user in world["people"].items()}}
    for url in urls:
        for who, user in people.items():
            client = Client()
            if user is not None:
                client.force_login(user)
            response = client.get(url)
            assert response.status_code == 302 and "/admin/login/" in response["Location"], (url, who,
                                                                                           response.status_code)
    staff = Client()
    staff.force_login(world["staff"])
    assert staff.get(reverse("admin:index")).status_code == 200


def test_allauth_account_pages_need_a_session_for_account_settings(world):
    """Sign-in and sign-up are public; the pages about an account need its session (a key is not one)."""
    assert Client().get("/accounts/login/").status_code == 200
    tenant = world["tenant"]
    for url in ("/accounts/email/", "/accounts/password/change/", "/accounts/2fa/"):
        keyed = Client(HTTP_AUTHORIZATION=f"Bearer {tenant.secret_key}").get(url)
        assert keyed.status_code == 302 and "/accounts/login/" in keyed["Location"], (url, keyed.status_code)
    EmailAddress.objects.get_or_create(user=tenant.user, email=tenant.user.email,
                                       defaults={"verified": True, "primary": True})
    signed_in = Client()
    signed_in.force_login(tenant.user)
    assert signed_in.get("/accounts/email/").status_code == 200
