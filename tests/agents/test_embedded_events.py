"""Without Redis (the embedded default) a run's worker is a thread of the server process and
its events reach the client through the in-process stream log."""
from __future__ import annotations

import time

import httpx
import pytest

from billing.invariants import check_ledger
from tests.agents.test_agent_runs import parse_sse
from tests.conftest import SIM_MODEL, start_server


@pytest.fixture(scope="module")
def no_redis_server(django_db_setup, django_db_blocker):
    server = start_server(REDIS_URL="", AGENT_DEFAULT_MODEL=SIM_MODEL)
    yield server
    server.process.stop()


def test_a_streamed_run_without_redis(no_redis_server, transactional_db, alice, sim_node):
    time.sleep(1.1)  # without pub/sub the server trusts its cached catalog for up to 1 s
    with httpx.stream("POST", f"{no_redis_server.api}/agents/runs", headers=alice.auth(), timeout=30, json={
        "input": "call: node_metrics", "tools": ["node_metrics"], "stream": True,
    }) as response:
        assert response.status_code == 200, response.read()
        job_id = response.headers["x-job-id"]
        events = parse_sse(response.read().decode())
    assert [kind for _, kind, _ in events] == [
        "run.created", "step.started", "message", "tool.call", "tool.result", "step.started", "message",
        "run.completed",
    ]
    assert [n for n, _, _ in events] == list(range(1, 9))
    replay = httpx.get(f"{no_redis_server.api}/agents/runs/{job_id}/events",
                       headers={**alice.auth(), "Last-Event-ID": "evt_7"})
    assert [kind for _, kind, _ in parse_sse(replay.text)] == ["run.completed"]
    assert alice.wallet.reserved == 0 and alice.wallet.balance == 1_000_000 - events[-1][2]["cost"]
    assert check_ledger() == []
