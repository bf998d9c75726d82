"""Node faults, with real simulator processes killed (SIGKILL) under a live request."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest

from billing.invariants import check_ledger
from billing.models import Transfer
from billing.services import price_publish
from gateway.models import RequestRecord
from nodes.services import node_upsert
from tests.conftest import SIM_MODEL, SIM_PRICE, attest, cache_settle, sim_cost, start_simulator
from tests.reliability.conftest import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

LONG = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "long answer please"}], "max_tokens": 200,
        "stream": True, "stream_options": {"include_usage": True}}


@pytest.fixture
def killable_sims(transactional_db, allowed_measurement):
    """Start simulator processes registered as attested nodes for ``sim-small``; stopped at the end."""
    started = []

    def start(n: int):
        sims = []
        for i in range(n):
            sim = start_simulator()
            started.append(sim)
            node = node_upsert(name=f"killable-{len(started)}", base_url=f"{sim.url}/v1", region="test-1",
                               attestation="unverified",
                               models=[{"model": SIM_MODEL, "context_window": 8192, "max_output_tokens": 256}])
            attest(node)
            sims.append(sim)
        price_publish(model=SIM_MODEL, **SIM_PRICE)
        cache_settle()
        return sims

    yield start
    for sim in started:
        sim.process.stop()


def sigkill(sim) -> float:
    os.killpg(sim.process.proc.pid, signal.SIGKILL)
    sim.process.proc.wait()
    return time.monotonic()


def parse(lines):
    """The data payloads of an SSE stream, JSON-decoded ([DONE] kept as a string)."""
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:]) for line in lines if line.startswith("data: ")]


def content_chunks(payloads) -> int:
    return sum(1 for p in payloads if isinstance(p, dict) and any(
        (c.get("delta") or {}).get("content") for c in p.get("choices") or ()))


def test_node_killed_mid_stream_ends_with_an_error_event_and_bills_only_delivered_tokens(server, alice,
                                                                                         killable_sims):
    [sim] = killable_sims(1)
    sim.configure(tokens_per_s=25)
    lines, killed_at, error_at = [], None, None
    with httpx.stream("POST", f"{server.api}/chat/completions", headers=alice.auth(), json=LONG, timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            lines.append(line)
            if killed_at is None and content_chunks(parse(lines)) >= 5:
                killed_at = sigkill(sim)
            if killed_at and error_at is None and '"error"' in line:
                error_at = time.monotonic()
    ended_at = time.monotonic()
    payloads = parse(lines)
    delivered = content_chunks(payloads)
    errors = [p["error"] for p in payloads if isinstance(p, dict) and "error" in p]
    assert len(errors) == 1 and errors[0]["code"] == "upstream_unavailable", payloads[-3:]
    assert errors[0]["request_id"] == r.headers["x-request-id"]
    assert payloads[-1] is not None and "[DONE]" not in payloads  # the stream ends with the error, not as done

    transfer = wait_until(lambda: Transfer.objects.filter(kind="usage").exclude(status="pending").first(),
                          timeout=10, message="settlement")
    assert transfer.status == "posted" and transfer.output_tokens == delivered < 200
    assert transfer.amount == sim_cost(transfer.input_tokens, delivered)
    record = RequestRecord.objects.get()
    assert (record.status_code, record.error_code, record.cost) == (502, "upstream_unavailable", transfer.amount)
    assert alice.wallet.reserved == 0 and check_ledger() == []
    print(f"\nnode SIGKILLed mid-stream after {delivered} delivered tokens: error event "
          f"{(error_at - killed_at) * 1000:.0f} ms after the kill, stream closed after "
          f"{(ended_at - killed_at) * 1000:.0f} ms; billed {transfer.amount} micro-units = {transfer.input_tokens} in "
          f"+ {delivered} out (of 200 reserved); reservation closed")


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "not-streamed"])
def test_node_killed_before_the_first_token_fails_over_without_a_client_error(server, alice, killable_sims, stream):
    sims = killable_sims(2)
    for sim in sims:
        sim.configure(ttft_ms=800)
    body = {**LONG, "max_tokens": 20, "stream": stream}
    if not stream:
        del body["stream_options"]
    result = {}

    def call():
        r = httpx.post(f"{server.api}/chat/completions", headers=alice.auth(), json=body, timeout=30)
        result.update(response=r, at=time.monotonic())

    started = time.monotonic()
    client = threading.Thread(target=call)
    client.start()
    # The request is at a node, which has sent nothing yet: kill that node.
    busy = wait_until(lambda: [s for s in sims if s.stats()["active"]], timeout=5, step=0.01,
                      message="a node to take the request")
    killed_at = sigkill(busy[0])
    client.join(30)
    r, answered_at = result["response"], result["at"]
    text = r.text
    assert r.status_code == 200, text
    [survivor] = [s for s in sims if s is not busy[0]]
    if stream:
        payloads = parse(text.splitlines())
        assert payloads[-1] == "[DONE]" and not any("error" in p for p in payloads if isinstance(p, dict))
        assert content_chunks(payloads) == 20
    else:
        assert r.json()["usage"]["completion_tokens"] == 20
    assert survivor.stats()["completed"] == 1
    transfer = wait_until(lambda: Transfer.objects.filter(kind="usage", status="posted").first(), timeout=10,
                          message="settlement")
    assert transfer.output_tokens == 20 and Transfer.objects.filter(kind="usage").count() == 1
    record = RequestRecord.objects.get()
    assert (record.status_code, record.attempts) == (200, 2)
    assert alice.wallet.reserved == 0 and check_ledger() == []
    print(f"\nnode SIGKILLed before the first token ({'streamed' if stream else 'not streamed'}): failed over, "
          f"answered {(answered_at - killed_at) * 1000:.0f} ms after the kill (ttft 800 ms on the second node), "
          f"{(answered_at - started) * 1000:.0f} ms in all; no client error, billed once ({transfer.amount})")
