"""Model pulls through a real Celery worker process on a Redis broker.

A gateway process with CELERY_BROKER_URL sends the pull task; a worker process (its own
queue, so no other checkout's worker on the same Redis takes it) runs it against the
simulator speaking Ollama's dialect. The job is watched through GET /v1/jobs/{id}.
"""
from __future__ import annotations

import os
import sys

import pytest

from tests.conftest import Process, server_env, start_server
from tests.nodes.test_model_management import finished, model_call, pull_and_watch_progress, wait_job

BROKER = "redis://127.0.0.1:6379/13"
QUEUE = f"pi-test-pulls-{os.getpid()}"
RETRIES = 2

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


@pytest.fixture(scope="module")
def broker_server(django_db_setup, django_db_blocker):
    server = start_server(CELERY_BROKER_URL=BROKER, CELERY_QUEUE=QUEUE)
    yield server
    server.process.stop()


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker):
    process = Process(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo", "--loglevel", "INFO",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        env=server_env(CELERY_BROKER_URL=BROKER, CELERY_QUEUE=QUEUE, NODE_PULL_MAX_RETRIES=str(RETRIES),
                       NODE_PULL_RETRY_SECONDS="1"),
        ready="ready.",
    )
    yield process
    process.stop()


@pytest.fixture
def operator_token(charlie):
    from nodes.services import node_token_create

    return node_token_create(organization=charlie.organization, name="rack")[1]


def test_a_worker_runs_the_pull_with_progress_and_serves_the_model(
    broker_server, worker, transactional_db, charlie, ollama_sim, operator_token
):
    from nodes.models import NodeModel
    from nodes.services import node_register

    node = node_register(operator=charlie.organization, name="ollama-w", base_url=f"{ollama_sim.url}/v1",
                         adapter="ollama", models=[{"model": "sim-small"}])
    body = {"model": "tiny:1b", "serve": {"model": "tiny-1b", "context_window": 2048}}
    job = pull_and_watch_progress(broker_server, operator_token, node.public_id, ollama_sim, body)
    assert job["status"] == "succeeded", (job, "".join(worker.output[-30:]))
    assert job["result"]["served_model"] == "tiny-1b" and job["progress"]["status"] == "success"
    assert NodeModel.objects.get(node=node, model="tiny-1b").upstream_model == "tiny:1b"
    assert any("nodes.tasks.pull_model" in line and "succeeded" in line for line in worker.output)


def test_a_pull_from_a_node_that_is_down_is_retried_with_backoff_then_fails(
    broker_server, worker, transactional_db, charlie, operator_token
):
    from nodes.services import node_register
    from tests.conftest import start_simulator

    sim = start_simulator("--dialect", "ollama")
    node = node_register(operator=charlie.organization, name="down", base_url=f"{sim.url}/v1", adapter="ollama",
                         models=[{"model": "sim-small"}])
    sim.process.stop()
    response = model_call(broker_server, operator_token, node.public_id, "pull", {"model": "tiny:1b"})
    assert response.status_code == 202, response.text
    job, seen = wait_job(broker_server, operator_token, response.json()["id"], finished, timeout=60)
    assert job["status"] == "failed" and job["error"]["code"] == "upstream_unavailable", job
    assert job["error"]["message"].endswith(f"after {RETRIES + 1} attempts")
    waits = [(s["progress"]["attempt"], s["progress"]["retry_in"]) for s in seen if s["progress"].get("status") == "retrying"]
    assert waits == [(1, 1), (2, 2)], seen  # queued again between attempts, the wait doubling
    assert all(s["status"] == "queued" for s in seen if s["progress"].get("status") == "retrying")
    assert sum("Retry in" in line for line in worker.output) == RETRIES
