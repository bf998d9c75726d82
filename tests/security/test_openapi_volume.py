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
