"""Done-when of issue 7, through the SDK: a maximum-tier chat made with ``Client`` reaches the attested
simulator node, and the gateway process never holds its plaintext. The gateway runs with the test-only
``GATEWAY_TRACE_FILE`` (gateway/sealed/trace.py: every byte it read from or sent to clients and nodes);
the canary in the prompt comes back decrypted to the SDK and appears nowhere in that trace. A control
request in clear shows the trace would have caught it. Skipped while the server lacks the sealed endpoint."""
import secrets

import httpx
import pytest
from django.conf import settings
from private_inference import Client

from tests.conftest import SIM_MODEL, cache_settle, start_server
from tests.sdk.conftest import FAST
from tests.sdk.test_sdk_live import settled


@pytest.fixture(scope="module")
def traced_server(django_db_setup, django_db_blocker, tmp_path_factory):
    trace = tmp_path_factory.mktemp("trace") / "gateway.trace"
    server = start_server(GATEWAY_TRACE_FILE=str(trace))
    server.trace = trace
    yield server
    server.process.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_sdk_maximum_tier_plaintext_never_reaches_the_gateway(traced_server, transactional_db, alice, sim_node, sim,
                                                              stream):
    cache_settle()
    canary = f"CANARY-{secrets.token_hex(12)}"
    traced_server.trace.write_bytes(b"")
    with Client(api_key=alice.secret_key, base_url=traced_server.url, retry_policy=FAST,
                trust_roots=settings.ATTESTATION_TRUST_ROOTS) as client:
        params = {"model": SIM_MODEL, "max_tokens": 64, "security_tier": "maximum",
                  "messages": [{"role": "user", "content": f"echo: {canary} stays between us"}]}
        if stream:
            chunks = client.chat.completions.create(**params, stream=True)
            text = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
            receipt = chunks.sealed.receipt
        else:
            reply = client.chat.completions.create(**params)
            text, receipt = reply.choices[0].message.content, reply.sealed.receipt
    assert text == f"{canary} stays between us"  # the node read it; the SDK decrypted its echo
    assert receipt["node_id"] == sim_node.public_id
    trace = traced_server.trace.read_bytes()
    assert b"client>gateway" in trace or b"gateway>client" in trace  # the trace saw this request
    assert b"gateway>node" in trace and b"node>gateway" in trace
    for secret in (canary, "stays between us"):
        assert secret.encode() not in trace, secret
    [transfer] = settled()
    assert transfer.output_tokens == receipt["output_tokens"]

    control = httpx.post(f"{traced_server.api}/chat/completions", headers=alice.auth(), timeout=30,
                         json={"model": SIM_MODEL, "messages": [{"role": "user", "content": f"echo: {canary}"}]})
    assert control.status_code == 200 and canary.encode() in traced_server.trace.read_bytes()
