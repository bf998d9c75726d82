"""Idempotency-Key on paid requests: replay, conflict, mismatch, billed once."""
import concurrent.futures

import httpx
import openai

from billing.invariants import check_ledger
from billing.models import Transfer
from gateway.models import IdempotencyRecord
from tests.conftest import SIM_MODEL

BODY = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "echo: same answer"}], "max_tokens": 8}


def post(server, tenant, key, body=BODY, **extra):
    return httpx.post(
        f"{server.api}/chat/completions", headers={**tenant.auth(), "Idempotency-Key": key, **extra}, json=body, timeout=30
    )


def test_retry_with_same_key_replays_and_bills_once(server, alice, sim_node, sim):
    first = post(server, alice, "order-1")
    balance_after_first = alice.wallet.balance
    second = post(server, alice, "order-1")
    assert first.status_code == second.status_code == 200
    assert second.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert second.json() == first.json()
    assert sim.stats()["requests"] == 1
    assert alice.wallet.balance == balance_after_first < 1_000_000
    assert Transfer.objects.filter(kind="usage").count() == 1 and check_ledger() == []
    # X-Idempotency-Key is the same header under another name.
    third = httpx.post(f"{server.api}/chat/completions", headers={**alice.auth(), "X-Idempotency-Key": "order-1"}, json=BODY)
    assert third.headers["idempotent-replayed"] == "true"


def test_same_key_different_body_is_422(server, alice, sim_node):
    assert post(server, alice, "order-2").status_code == 200
    other = post(server, alice, "order-2", {**BODY, "max_tokens": 9})
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"


def test_concurrent_duplicate_is_409_while_the_first_runs(server, alice, sim_node, sim):
    sim.configure(ttft_ms=800)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, server, alice, "order-3")
        import time

        time.sleep(0.3)
        second = post(server, alice, "order-3")
        assert second.status_code == 409 and second.json()["error"]["code"] == "idempotency_in_progress"
        assert first.result().status_code == 200
    assert Transfer.objects.filter(kind="usage", status="posted").count() == 1


def test_keys_are_scoped_to_the_project(server, alice, charlie, sim_node):
    assert post(server, alice, "shared-key").status_code == 200
    theirs = post(server, charlie, "shared-key")
    assert theirs.status_code == 200 and "idempotent-replayed" not in theirs.headers


def test_failed_request_releases_its_key_for_a_retry(server, alice, sim_node, sim):
    sim.configure(fail_rate=1.0, fail_mode="http500")
    assert post(server, alice, "order-4").status_code == 502
    assert not IdempotencyRecord.objects.filter(key="order-4").exists()
    sim.configure(fail_rate=0.0)
    assert post(server, alice, "order-4").status_code == 200


def test_streamed_request_is_replayed_as_the_same_stream(server, alice, sim_node):
    client = openai.OpenAI(base_url=server.api, api_key=alice.secret_key, max_retries=0)
    body = dict(model=SIM_MODEL, messages=[{"role": "user", "content": "echo: one two three"}], max_tokens=8, stream=True)
    first = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**body, extra_headers={"Idempotency-Key": "s-1"}) if c.choices)
    balance = alice.wallet.balance
    raw = client.chat.completions.with_raw_response.create(**body, extra_headers={"Idempotency-Key": "s-1"})
    assert raw.headers["idempotent-replayed"] == "true"
    replayed = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert replayed == first == "one two three"
    assert alice.wallet.balance == balance
