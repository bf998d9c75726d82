"""Every failure under /v1 answers in the one envelope, loses nothing, and is never an HTML page."""
import httpx

from billing.invariants import check_ledger
from billing.models import Transfer
from console import services
from console.models import ApiKey
from nodes.models import Node
from nodes.services import node_set_status
from tests.conftest import SIM_MODEL, cache_settle


def post_chat(server, headers, body=None, **kwargs):
    body = body if body is not None else {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(f"{server.api}/chat/completions", headers=headers, json=body, timeout=30, **kwargs)


def assert_envelope(response, status, code):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["type"]
    assert error["request_id"] == response.headers["x-request-id"]
    return error


def test_missing_and_invalid_keys(server, alice, sim_node):
    assert_envelope(post_chat(server, {}), 401, "unauthenticated")
    assert_envelope(post_chat(server, {"Authorization": "Bearer sk_live_nope"}), 401, "invalid_api_key")
    forged = alice.secret_key[:-8] + ("A" if alice.secret_key[-8] != "A" else "B") + alice.secret_key[-7:]
    assert_envelope(post_chat(server, {"Authorization": f"Bearer {forged}"}), 401, "invalid_api_key")
    assert post_chat(server, {"x-api-key": alice.secret_key}).status_code == 200


def test_publishable_key_only_on_chat_and_only_from_allowed_origins(server, alice, sim_node):
    pk = {"Authorization": f"Bearer {alice.publishable_key}"}
    assert_envelope(post_chat(server, pk), 403, "origin_not_allowed")
    assert_envelope(post_chat(server, {**pk, "Origin": "https://evil.example"}), 403, "origin_not_allowed")
    ok = post_chat(server, {**pk, "Origin": "https://app.alice.example"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.alice.example"
    models = httpx.get(f"{server.api}/models", headers={**pk, "Origin": "https://app.alice.example"})
    assert_envelope(models, 403, "permission_denied")
    keys = httpx.get(f"{server.api}/keys", headers=pk)
    assert_envelope(keys, 403, "permission_denied")
    preflight = httpx.options(
        f"{server.api}/chat/completions",
        headers={"Origin": "https://app.alice.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 204 and "authorization" in preflight.headers["access-control-allow-headers"]


def test_bad_bodies_name_the_problem(server, alice, sim_node):
    malformed = httpx.post(f"{server.api}/chat/completions", headers=alice.auth(), content=b'{"model": ')
    assert "not valid JSON" in assert_envelope(malformed, 400, "invalid_request")["message"]
    assert_envelope(httpx.post(f"{server.api}/chat/completions", headers=alice.auth(), content=b"[1]"), 400, "invalid_request")
    bad_role = post_chat(server, alice.auth(), {"model": SIM_MODEL, "messages": [{"role": "wizard", "content": "x"}]})
    assert assert_envelope(bad_role, 400, "invalid_request")["param"] == "messages.0.role"
    no_messages = post_chat(server, alice.auth(), {"model": SIM_MODEL, "messages": []})
    assert assert_envelope(no_messages, 400, "invalid_request")["param"] == "messages"
    too_many = post_chat(server, alice.auth(), {"model": SIM_MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 10_000})
    assert assert_envelope(too_many, 400, "invalid_request")["param"] == "max_tokens"
    assert_envelope(post_chat(server, alice.auth(), {"model": "gpt-nope", "messages": [{"role": "user", "content": "x"}]}), 404, "model_not_found")
    assert Transfer.objects.filter(kind="usage").count() == 0


def test_body_over_limit_is_refused_before_it_is_read(server, alice, sim_node):
    huge = b'{"model": "sim-small", "messages": [{"role": "user", "content": "' + b"x" * (5 * 1024 * 1024) + b'"}]}'
    assert_envelope(httpx.post(f"{server.api}/chat/completions", headers=alice.auth(), content=huge), 413, "body_too_large")

    def chunked():
        yield b'{"model": "sim-small", "messages": [{"role": "user", "content": "'
        for _ in range(6):
            yield b"y" * (1024 * 1024)
        yield b'"}]}'

    assert_envelope(httpx.post(f"{server.api}/chat/completions", headers=alice.auth(), content=chunked()), 413, "body_too_large")


def test_insufficient_balance_is_402_and_reserves_nothing(server, transactional_db, sim_node):
    from tests.conftest import make_tenant

    poor = make_tenant("poor", credit=10)
    error = assert_envelope(post_chat(server, poor.auth()), 402, "insufficient_balance")
    assert "micro-units" in error["message"]
    assert (poor.wallet.balance, poor.wallet.reserved) == (10, 0)
    assert check_ledger() == []


def test_no_nodes_and_unreachable_nodes(server, alice, sim_node, sim):
    sim.configure(fail_rate=1.0, fail_mode="http500")
    assert_envelope(post_chat(server, alice.auth()), 502, "upstream_unavailable")
    assert (alice.wallet.balance, alice.wallet.reserved) == (1_000_000, 0)
    node_set_status(node=Node.objects.get(), status=Node.Status.DISABLED)
    cache_settle()
    # The model has a price but nothing serves it any more.
    assert_envelope(post_chat(server, alice.auth()), 404, "model_not_found")
    assert check_ledger() == []


def test_unknown_paths_and_methods_answer_in_the_envelope(server, alice):
    for response in (
        httpx.get(f"{server.api}/nothing-here", headers=alice.auth()),
        httpx.get(f"{server.api}/keys/key_x/y/z", headers=alice.auth()),
    ):
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    wrong_method = httpx.get(f"{server.api}/chat/completions", headers=alice.auth())
    assert_envelope(wrong_method, 405, "method_not_allowed")
    assert wrong_method.headers["allow"] == "POST"


def test_rate_limit_answers_429_with_headers(server, alice, sim_node):
    services.project_update(project=alice.project, rpm_limit=2)
    cache_settle()
    first = post_chat(server, alice.auth())
    assert first.status_code == 200 and first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    post_chat(server, alice.auth())
    limited = post_chat(server, alice.auth())
    assert_envelope(limited, 429, "rate_limited")
    assert int(limited.headers["retry-after"]) >= 1 and limited.headers["x-ratelimit-remaining-requests"] == "0"


def test_revoked_and_expired_keys_are_refused(server, alice, sim_node):
    key = ApiKey.objects.get(project=alice.project, kind="secret")
    assert post_chat(server, alice.auth()).status_code == 200
    services.api_key_revoke(key=key)
    cache_settle()
    assert "revoked" in assert_envelope(post_chat(server, alice.auth()), 401, "invalid_api_key")["message"]


def test_project_can_require_idempotency_keys(server, alice, sim_node):
    services.project_update(project=alice.project, idempotency_required=True)
    cache_settle()
    assert_envelope(post_chat(server, alice.auth()), 400, "idempotency_key_required")
    assert post_chat(server, {**alice.auth(), "Idempotency-Key": "k1"}).status_code == 200
