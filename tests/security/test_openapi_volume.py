"""Bad input at volume: schemathesis over the OpenAPI document against a live server process, with
many more (and other) examples per operation than the conformance test (tests/gateway/test_openapi.py,
20 per route and mode, derandomized), whose machinery this reuses.

Besides that test's checks (no 5xx; documented statuses, content types, headers and bodies), every
error must be in the envelope with the request id its header carries, and the server must log no
unhandled error. CI runs the paid routes and POST /v1/keys at 30 examples per mode (other cases than
the conformance test's); `make test-slow` runs every documented route at 400.
"""
from __future__ import annotations

import pytest

from tests.gateway.test_openapi import CHECKS, ROUTES, conformance
from tests.security.helpers import Answer, assert_envelope

SEED = 8  # other cases than the conformance test's derandomized ones; fixed, so CI is deterministic
# In CI: the paid routes and the key API, where a body reaches the most code.
PAID_ROUTES = [(m, p) for m, p in ROUTES if m == "POST" and p in (
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages",
    "/v1/sealed/chat/completions", "/v1/keys")]


def error_envelope(ctx, response, case) -> None:
    """An error answer is in the one envelope (Anthropic's on /v1/messages) with its request id."""
    if response.status_code >= 400:
        headers = {name.lower(): values[0] for name, values in response.headers.items()}
        assert_envelope(Answer(response.status_code, headers, response.content, closed=False))


def volume(server, request, method: str, path: str, examples: int) -> None:
    logged = len(server.process.output)
    conformance(server, request, method, path, max_examples=examples, checks=[*CHECKS, error_envelope], seed=SEED)
    unhandled = [line for line in server.process.output[logged:] if "unhandled error" in line or "Traceback" in line]
    assert not unhandled, unhandled


@pytest.mark.parametrize(("method", "path"), PAID_ROUTES, ids=[f"{m} {p}" for m, p in PAID_ROUTES])
def test_bad_input_at_volume_on_the_paid_routes(server, request, method, path):
    volume(server, request, method, path, 30)


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_bad_input_at_high_volume_on_every_route(server, request, method, path):
    volume(server, request, method, path, 400)


# Found at volume: a NUL byte in GET /v1/receipts?request_id= reached PostgreSQL, which refused the
# query (a 500); probing every id the same way found it in /v1/jobs/{id} and /v1/agents/runs/{id}/events
# too, and a POST to an unknown /v1/keys/… path answered with CSRF's HTML 403. Every id a path or
# query takes is probed with the bytes that once broke one.
HOSTILE_IDS = ["%00", "a%00b", "%C3%A9", "%F0%9F%92%A5", "..%2F..", "%25", "x" * 300, "req_%00" + "a" * 22]
ID_ROUTES = ["/v1/receipts?request_id={id}", "/v1/streams/{id}", "/v1/responses/{id}", "/v1/jobs/{id}",
             "/v1/agents/runs/{id}/events", "/v1/images/{id}/0", "/v1/images/job_x/{id}", "/v1/models/{id}",
             "/v1/nodes/{id}/attestation", "/v1/keys/{id}", "/v1/keys/{id}/rotate"]


def test_hostile_ids_in_paths_and_queries_are_never_a_server_error(server, alice):
    import httpx

    failures = []
    with httpx.Client(timeout=30, headers=alice.auth()) as client:
        for route in ID_ROUTES:
            for hostile in HOSTILE_IDS:
                method = "POST" if route.endswith("/rotate") else "GET"
                response = client.request(method, server.url + route.replace("{id}", hostile))
                try:
                    if response.status_code >= 400:
                        assert_envelope(response)
                    else:
                        assert route.startswith("/v1/receipts") and response.json()["data"] == []
                except AssertionError:
                    failures.append((route, hostile, response.status_code))
    assert not failures, failures
