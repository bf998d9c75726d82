"""GET /v1/openapi.json: a valid OpenAPI 3.1 document that the live server keeps true.

schemathesis generates requests from the document (valid ones and invalid ones)
for every non-streaming route and checks each answer against it: never a 5xx,
only documented statuses, content types and headers, bodies that match their
schemas. A route in ROUTES that the server does not serve yet (it answers
404 "No such endpoint") is skipped, so routes can be listed before they land.
"""
from __future__ import annotations

import re

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_openapi
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.errors import CODES
from tests.conftest import SIM_MODEL
from tests.security.routes import served_v1_routes

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Per route and generation mode: the whole file runs in about 35 s.
MAX_EXAMPLES = 20

# The non-streaming routes (every request is sent with `stream: false`).
ROUTES = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/responses"),
    ("GET", "/v1/responses/{response_id}"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id}"),
    ("GET", "/v1/keys"),
    ("POST", "/v1/keys"),
    ("GET", "/v1/keys/{key_id}"),
    ("PATCH", "/v1/keys/{key_id}"),
    ("POST", "/v1/keys/{key_id}"),
    ("DELETE", "/v1/keys/{key_id}"),
    ("POST", "/v1/keys/{key_id}/rotate"),
    ("GET", "/v1/balance"),
    ("GET", "/v1/nodes"),
    ("POST", "/v1/nodes/register"),
    ("POST", "/v1/nodes/{node_id}/heartbeat"),
    ("GET", "/v1/nodes/topology"),
    ("GET", "/v1/nodes/health"),
    ("POST", "/v1/nodes/{node_id}/models/load"),
    ("POST", "/v1/nodes/{node_id}/models/unload"),
    ("POST", "/v1/nodes/{node_id}/models/pull"),
    ("GET", "/v1/jobs/{job_id}"),
    ("GET", "/v1/nodes/{node_id}/attestation"),
    ("GET", "/v1/openapi.json"),
    ("POST", "/v1/images/generations"),
    ("POST", "/v1/images"),
    ("GET", "/v1/images/{job_id}/{index}"),
    ("POST", "/v1/agents/runs"),
    ("GET", "/v1/agents/runs/{run_id}/events"),
    ("POST", "/v1/sealed/chat/completions"),
    ("GET", "/v1/receipts"),
    ("GET", "/pki/public_key"),
]


@pytest.fixture
def document(server) -> dict:
    response = httpx.get(f"{server.api}/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"]
    return response.json()


def test_the_document_is_valid_openapi_3_1_and_needs_no_key(document):
    assert document["openapi"].startswith("3.1.")
    validate_openapi(document)  # raises on any violation of the OpenAPI 3.1 schema and its JSON Schema dialect
    schemathesis.openapi.from_dict(document).validate()


def test_each_error_status_lists_exactly_its_codes(document):
    assert document["components"]["schemas"]["ErrorCode"]["enum"] == list(CODES)
    responses = document["components"]["responses"]
    listed = set()
    for ops in document["paths"].values():
        for op in (o for m, o in ops.items() if m != "parameters"):
            for status, response in op["responses"].items():
                name = response.get("$ref", "").rpartition("/")[2]
                if not name:
                    continue
                schema = responses[name]["content"]["application/json"]["schema"]
                codes = schema["allOf"][1]["properties"]["error"]["properties"]["code"]["enum"]
                assert {CODES[c][0] for c in codes} == {int(status)}, (status, name, codes)
                listed.update(codes)
    # No route answers 405 to a documented method; a cancelled stream's code only closes the stream.
    assert listed == set(CODES) - {"method_not_allowed", "stream_cancelled"}


def test_every_served_route_is_documented_and_checked(document):
    served = served_v1_routes()
    documented = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops if m != "parameters"}
    assert served <= documented, f"served but not documented: {sorted(served - documented)}"
    streaming_only = {("GET", "/v1/streams/{request_id}")}
    assert documented - streaming_only == set(ROUTES), "ROUTES must list every documented non-streaming route"


def _not_served(server, method: str, path: str) -> bool:
    """Does the server answer this route with 404 "No such endpoint" (it has not landed yet)?
    Routing comes before authentication, so no key is needed to tell."""
    response = httpx.request(method, server.url + re.sub(r"\{\w+\}", "probe", path))
    if response.status_code != 404:
        return False
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and str(error.get("message", "")).startswith("No such endpoint")


def _steer(case, data, existing: dict[str, str]) -> None:
    """Point a share of the cases at things that exist (the priced model, a spare
    key, a stored response), so success answers are checked as well as refusals;
    never stream."""
    # Host is the transport's: a foreign one is refused by Django's ALLOWED_HOSTS check (400) before
    # any API code runs on the Django-served routes (/v1/keys, /v1/balance), which is not API behaviour.
    for header in [h for h in (case.headers or {}) if h.lower() == "host"]:
        del case.headers[header]
    params = case.path_parameters or {}
    for name in params.keys() & existing.keys():
        if data.draw(st.booleans(), label=f"existing {name}"):
            params[name] = existing[name]
    if isinstance(case.body, dict):
        if case.body.get("stream") is True:
            case.body["stream"] = False
        if "model" in case.body and data.draw(st.booleans(), label="existing model"):
            case.body["model"] = SIM_MODEL


def conformance(server, request, method: str, path: str, *, max_examples: int = MAX_EXAMPLES, checks=CHECKS,
                seed: int | None = None) -> None:
    """schemathesis over one documented route of the live server: valid cases (and invalid ones,
    where the route has a body or path to get wrong), each answer checked by ``checks``.
    Deterministic: the same cases for the same ``seed`` (None: hypothesis's derandomized default)."""
    from console import services

    assert not _not_served(server, method, path), f"{method} {path} is documented but not served"
    alice = request.getfixturevalue("alice")
    node = request.getfixturevalue("sim_node")  # a priced model on an attested node, so valid requests can succeed
    auth = alice.auth()
    spare, _ = services.api_key_create(project=alice.project, kind="secret", name="spare")
    existing = {"model_id": SIM_MODEL, "key_id": spare.public_id, "node_id": node.public_id}
    if "{response_id}" in path:
        stored = httpx.post(f"{server.api}/responses", headers=auth, json={"model": SIM_MODEL, "input": "hi"}, timeout=30)
        existing["response_id"] = stored.raise_for_status().json()["id"]
    schema = schemathesis.openapi.from_url(f"{server.api}/openapi.json")
    operation = schema[path][method]
    session = requests.Session()

    def run(mode: GenerationMode) -> None:
        @settings(
            max_examples=max_examples,
            deadline=None,
            database=None,
            derandomize=seed is None,  # the same cases on every run: CI stays deterministic
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(mode), data=st.data())
        def conforms(case, data):
            _steer(case, data, existing)
            case.call_and_validate(base_url=server.url, session=session, headers=auth, checks=checks, timeout=30)

        if seed is not None:
            conforms = hypothesis_seed(seed)(conforms)
        conforms()

    # Invalid cases need a body or a path to get wrong (headers alone are all free text here).
    negative = bool(operation.body.items or operation.path_parameters.items)
    with session:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if negative else (GenerationMode.POSITIVE,):
            run(mode)


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_the_live_server_keeps_the_document_true(server, request, method, path):
    conformance(server, request, method, path)
