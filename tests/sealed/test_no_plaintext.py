"""Proof that the gateway never holds a maximum-tier request's plaintext.

A gateway process started with the test-only ``GATEWAY_TRACE_FILE`` appends every byte it handled
for API requests to that file: request bodies read from clients, bytes sent to clients, bytes
sent to and received from nodes (gateway/sealed/trace.py). A sealed chat whose prompt carries a
canary goes to an attested simulator node, which echoes it: the client decrypts an answer that
contains the canary, and the canary (and the answer's text) appear nowhere in the trace, nor in
the database or Redis. A control request in clear through the same process does show up in the
trace, so the trace would have caught a leak.
"""
from __future__ import annotations

import os
import secrets
import subprocess

import httpx
import pytest

from tests.conftest import SIM_MODEL, cache_settle, start_server
from tests.dbenv import HAVE_REDIS
from tests.sealed.client import SealedClient


@pytest.fixture(scope="module")
def traced_server(django_db_setup, django_db_blocker, tmp_path_factory):
    trace = tmp_path_factory.mktemp("trace") / "gateway.trace"
    server = start_server(GATEWAY_TRACE_FILE=str(trace))
    server.trace = trace
    yield server
    server.process.stop()


def _database_dump() -> bytes:
    from django.db import connection

    if connection.vendor != "postgresql":
        return b""
    s = connection.settings_dict
    return subprocess.run(
        ["pg_dump", "-h", s["HOST"] or "127.0.0.1", "-p", str(s["PORT"] or 5432), "-U", s["USER"] or "postgres",
         "--data-only", s["NAME"]],
        check=True, capture_output=True, env={**os.environ, "PGPASSWORD": s.get("PASSWORD") or ""},
    ).stdout


def _redis_dump() -> bytes:
    if not HAVE_REDIS:
        return b""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    out = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"string":
            out.append(client.get(key) or b"")
        elif kind == b"stream":
            for _, fields in client.xrange(key):
                out.extend(v if isinstance(v, bytes) else str(v).encode() for v in fields.values())
        elif kind == b"hash":
            out.extend(client.hgetall(key).values())
    return b"\n".join(out)


@pytest.mark.parametrize("stream", [False, True])
def test_the_gateway_never_handles_a_maximum_tier_plaintext(traced_server, transactional_db, alice, sim_node, sim,
                                                            stream):
    cache_settle()
    canary = f"CANARY-{secrets.token_hex(12)}"
    traced_server.trace.write_bytes(b"")
    client = SealedClient(traced_server, alice)
    envelope = client.envelope(
        tier="maximum", recipient_key=sim_node.encryption_key, node_id=sim_node.public_id, model=SIM_MODEL,
        max_tokens=64, stream=stream, messages=[{"role": "user", "content": f"echo: {canary} is the secret"}],
    )
    answer = client.answer(envelope, client.post(envelope))
    assert answer.status == 200 and answer.error is None, answer.body
    assert canary in answer.text  # the client got the node's echo of it, decrypted
    trace = traced_server.trace.read_bytes()
    # The trace saw this request: the envelope's ciphertext in, the node's traffic both ways, the answer out.
    assert envelope["ciphertext"].encode() in trace
    assert b"gateway>node" in trace and b"node>gateway" in trace and b"gateway>client" in trace
    assert envelope["ciphertext"].encode() in trace.split(b"gateway>node", 1)[1]  # forwarded unchanged
    # …and never the plaintext: neither the canary nor the answer's words.
    for secret in (canary, "is the secret", answer.text.strip()):
        assert secret.encode() not in trace, secret
    dump = _database_dump() + _redis_dump()
    assert canary.encode() not in dump

    # Control: the same canary in clear through the same process is in the trace.
    control = httpx.post(f"{traced_server.api}/chat/completions", headers=alice.auth(), timeout=30,
                         json={"model": SIM_MODEL, "messages": [{"role": "user", "content": f"echo: {canary}"}]})
    assert control.status_code == 200
    assert canary.encode() in traced_server.trace.read_bytes()
