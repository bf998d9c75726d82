"""Paid jobs through a real Celery worker process on a Redis broker, apart from the server process:
the server holds and queues, the worker runs, settles and streams events through Redis."""
from __future__ import annotations

import datetime as dt
import json
import os
import sys
import uuid

import httpx
import openai
import pytest
from django.utils import timezone

from billing.invariants import check_ledger
from billing.models import Transfer
from billing.services import reservations_void_expired
from nodes.models import Job
from tests.agents.conftest import wait_job
from tests.agents.test_agent_runs import parse_sse
from tests.conftest import SIM_MODEL, Process, server_env, start_server
from tests.gateway.test_images import IMAGE_MODEL, image_node  # noqa: F401 - fixture

BROKER = "redis://127.0.0.1:6379/13"
# A queue of our own: other checkouts' workers on the same broker never take these jobs.
QUEUE = f"jobs-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
WORKER_ENV = {"CELERY_BROKER_URL": BROKER, "CELERY_QUEUE": QUEUE, "AGENT_DEFAULT_MODEL": SIM_MODEL}

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


@pytest.fixture(scope="module")
def broker_server_proc(django_db_setup, django_db_blocker):
    server = start_server(**WORKER_ENV)
    yield server
    server.process.stop()


@pytest.fixture
def broker_server(broker_server_proc, transactional_db):
    return broker_server_proc


@pytest.fixture
def start_worker(transactional_db):
    started = []

    def start() -> Process:
        process = Process(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo", "--loglevel", "INFO",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            env=server_env(**WORKER_ENV),
            ready="ready.",
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def test_a_worker_runs_an_image_job_and_a_streamed_agent_run(broker_server, start_worker, alice, sim_node, image_node,
                                                              sim):
    worker = start_worker()
    client = openai.OpenAI(base_url=broker_server.api, api_key=alice.secret_key, max_retries=0)
    images = client.images.generate(model=IMAGE_MODEL, prompt="a harbour", n=2, size="512x512")
    assert len(images.data) == 2
    assert any("gateway.tasks.run_image_job" in line and "succeeded" in line for line in worker.output), worker.output
    with httpx.stream("POST", f"{broker_server.api}/agents/runs", headers=alice.auth(), timeout=30, json={
        "model": SIM_MODEL, "input": "call: node_metrics", "tools": ["node_metrics"], "stream": True,
    }) as response:
        assert response.status_code == 200
        events = parse_sse(response.read().decode())
    assert [kind for _, kind, _ in events] == [
        "run.created", "step.started", "message", "tool.call", "tool.result", "step.started", "message",
        "run.completed",
    ]
    assert [n for n, _, _ in events] == list(range(1, 9))
    assert any("gateway.tasks.run_agent_job" in line for line in worker.output)
    posted = Transfer.objects.filter(kind="usage", status="posted")
    assert posted.count() == 2 and alice.wallet.reserved == 0
    assert alice.wallet.balance == 1_000_000 - 2 * 10_000 - events[-1][2]["cost"]
    assert check_ledger() == []


def test_a_job_whose_hold_lapsed_in_the_queue_never_runs(broker_server, start_worker, alice, image_node, sim):
    headers = {**alice.auth(), "Prefer": "respond-async"}
    body = {"model": IMAGE_MODEL, "prompt": "a late ship", "size": "512x512"}
    queued = httpx.post(f"{broker_server.api}/images/generations", headers=headers, json=body)
    assert queued.status_code == 202 and queued.json()["status"] == "queued"
    # No worker yet: the job waits in the queue until its hold times out and the sweeper voids it.
    assert reservations_void_expired(now=timezone.now() + dt.timedelta(days=1)) == 1
    start_worker()
    job = wait_job(queued.json()["id"])
    assert (job.status, job.error_code) == ("failed", "service_unavailable")
    assert "did not run" in job.error_message
    assert sim.stats()["requests"] == 0  # the node was never asked
    assert Transfer.objects.get(kind="usage").status == "voided"
    assert (alice.wallet.balance, alice.wallet.reserved) == (1_000_000, 0) and check_ledger() == []
    # A job queued now runs and is billed: the worker is fine, only the lapsed hold was refused.
    done = httpx.post(f"{broker_server.api}/images/generations", headers=alice.auth(), json=body, timeout=30)
    assert done.status_code == 200 and len(done.json()["data"]) == 1
    assert Job.objects.filter(status="succeeded").count() == 1 and check_ledger() == []
    assert json.loads(done.content)["billing"] == {"images": 1, "cost_micros": 10_000}
