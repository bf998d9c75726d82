"""Streams: disconnects bill only what was generated; node failures end with an error event;
failover happens before the first token."""
import time

import httpx
import openai
import pytest

from billing.invariants import check_ledger
from billing.models import Transfer
from gateway.models import RequestRecord
from console.services import project_update
from nodes.services import node_upsert
from tests.conftest import SIM_MODEL, attest, cache_settle, sim_cost, start_simulator


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_client_disconnect_mid_stream_bills_only_generated_tokens(server, alice, sim_node, sim):
    project_update(project=alice.project, stream_resume_seconds=0)  # no resume window: stop at once
    cache_settle()
    sim.configure(tokens_per_s=50)
    body = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "long answer please"}], "max_tokens": 200, "stream": True}
    received = 0
    with httpx.stream("POST", f"{server.api}/chat/completions", headers=alice.auth(), json=body, timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                received += 1
                if received == 5:
                    break  # the client goes away
    transfer = wait_for(lambda: Transfer.objects.filter(kind="usage").exclude(status="pending").first())
    node = wait_for(lambda: next((e for e in sim.stats()["last"] if e["outcome"] == "cancelled"), None))
    assert node["outcome"] == "cancelled"
    assert 5 <= transfer.output_tokens <= node["completion_tokens"] < 200
    assert transfer.status == "posted" and transfer.amount == sim_cost(transfer.input_tokens, transfer.output_tokens)
    assert alice.wallet.reserved == 0 and alice.wallet.balance == 1_000_000 - transfer.amount
    record = RequestRecord.objects.get()
    assert (record.status_code, record.error_code) == (499, "client_disconnected")
    assert check_ledger() == []


def test_node_failing_mid_stream_ends_with_an_error_event_and_partial_bill(server, alice, sim_node, sim):
    sim.configure(fail_rate=1.0, fail_mode="midstream", fail_after_tokens=4)
    client = openai.OpenAI(base_url=server.api, api_key=alice.secret_key, max_retries=0)
    stream = client.chat.completions.create(
        model=SIM_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=50, stream=True
    )
    tokens = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                tokens.append(chunk.choices[0].delta.content)
    assert "mid-answer" in str(raised.value)
    assert len(tokens) == 4
    transfer = Transfer.objects.get(kind="usage")
    assert transfer.status == "posted" and transfer.output_tokens == 4
    assert alice.wallet.reserved == 0 and check_ledger() == []


def test_failure_before_first_token_fails_over_to_another_node(server, alice, sim_node, sim):
    healthy = start_simulator()
    try:
        second = node_upsert(name="second", base_url=f"{healthy.url}/v1", region="test-2", attestation="unverified",
                             models=[{"model": SIM_MODEL, "context_window": 8192, "max_output_tokens": 256}])
        attest(second)
        cache_settle()
        sim.configure(fail_rate=1.0, fail_mode="disconnect")
        client = openai.OpenAI(base_url=server.api, api_key=alice.secret_key, max_retries=0)
        served = set()
        for _ in range(4):
            raw = client.chat.completions.with_raw_response.create(
                model=SIM_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True
            )
            assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
            served.add(raw.headers["x-node-id"])
        assert len(served) == 1 and healthy.stats()["completed"] == 4
        assert Transfer.objects.filter(kind="usage", status="posted").count() == 4 and check_ledger() == []
    finally:
        healthy.process.stop()


def test_heartbeat_comments_flow_while_the_node_is_slow(transactional_db, alice, sim_node, sim):
    from tests.conftest import start_server

    fast_heartbeat = start_server(GATEWAY_HEARTBEAT_SECONDS="1")
    try:
        sim.configure(tokens_per_s=0.4)  # 2.5 s between tokens
        body = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True}
        with httpx.stream("POST", f"{fast_heartbeat.api}/chat/completions", headers=alice.auth(), json=body, timeout=30) as r:
            lines = list(r.iter_lines())
        assert lines.count(": ping") >= 2
        assert "data: [DONE]" in lines
    finally:
        fast_heartbeat.process.stop()


def test_a_node_cut_ends_responses_and_messages_streams_with_their_error_event(server, alice, sim_node, sim):
    import anthropic

    sim.configure(fail_rate=1.0, fail_mode="midstream", fail_after_tokens=3)
    client = openai.OpenAI(base_url=server.api, api_key=alice.secret_key, max_retries=0)
    with client.responses.stream(model=SIM_MODEL, input="hello", max_output_tokens=40) as stream:
        kinds = [event.type for event in stream]
    assert kinds.count("response.output_text.delta") == 3 and kinds[-1] == "response.failed"

    claude = anthropic.Anthropic(base_url=server.url, api_key=alice.secret_key, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as raised:
        with claude.messages.stream(model=SIM_MODEL, max_tokens=40, messages=[{"role": "user", "content": "hi"}]) as s:
            for _ in s:
                pass
    assert "mid-answer" in str(raised.value)
    transfers = list(Transfer.objects.filter(kind="usage"))
    assert [(t.status, t.output_tokens) for t in transfers] == [("posted", 3), ("posted", 3)]
    assert alice.wallet.reserved == 0 and check_ledger() == []
