"""A Celery worker process SIGKILLed in the middle of a paid image job: the broker hands the job
back (acks_late, reject_on_worker_lost), it runs once more, and it is charged once."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from billing.invariants import check_ledger
from billing.models import Transfer
from gateway.models import RequestRecord
from nodes.models import Job
from tests.conftest import Process, server_env, start_server
from tests.gateway.test_images import IMAGE_MODEL, image_node  # noqa: F401 - fixture
from tests.reliability.conftest import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


@pytest.mark.slow
def test_worker_killed_mid_job_the_job_runs_once_more_and_is_charged_once(transactional_db, alice, image_node, sim,
                                                                           private_redis):
    env = {"CELERY_BROKER_URL": private_redis.url, "CELERY_QUEUE": f"jobs-kill-{uuid.uuid4().hex[:8]}"}
    server = start_server(**env)
    # The prefork pool: the child process runs the task, the parent watches it (as deployed).
    worker = Process(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "prefork", "--concurrency", "1",
         "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        env=server_env(**env), ready="ready.",
    )
    try:
        sim.configure(ttft_ms=1500)  # the node takes 1.5 s per image request
        queued = httpx.post(f"{server.api}/images/generations", headers={**alice.auth(), "Prefer": "respond-async"},
                            json={"model": IMAGE_MODEL, "prompt": "a harbour at night", "n": 2, "size": "512x512"})
        assert queued.status_code == 202, queued.text
        job_id = queued.json()["id"]
        # The job is running and its node is working on it: kill the process running it.
        wait_until(lambda: Job.objects.get(public_id=job_id).status == "running" and sim.stats()["active"],
                   timeout=20, step=0.02, message="the job to be running at the node")
        [child] = children(worker.proc.pid)
        os.kill(child, signal.SIGKILL)
        killed_at = time.monotonic()
        job = wait_until(lambda: Job.objects.filter(public_id=job_id, status__in=["succeeded", "failed"]).first(),
                         timeout=30, step=0.05, message="the job to end")
        ended_at = time.monotonic()
        result = httpx.get(f"{server.api}/jobs/{job_id}", headers=alice.auth()).json()
    finally:
        worker.stop()
        server.process.stop()
    log = "".join(worker.output)
    assert "WorkerLostError" in log or "Worker exited prematurely" in log, log[-3000:]
    assert (job.status, job.attempts) == ("succeeded", 2), (job.status, job.error_message, log[-3000:])
    assert sim.stats()["requests"] == 2  # the node was asked twice: the killed run and the retry
    [transfer] = Transfer.objects.filter(kind="usage")
    assert transfer.status == "posted" and transfer.amount == 2 * 10_000  # charged once, for the 2 images
    assert RequestRecord.objects.filter(transfer_id=transfer.id).count() == 1
    assert (alice.wallet.balance, alice.wallet.reserved) == (1_000_000 - 20_000, 0) and check_ledger() == []
    assert result["status"] == "succeeded", result
    print(f"\nCelery worker child SIGKILLed mid image job: redelivered and run again (attempt 2), succeeded "
          f"{ended_at - killed_at:.1f} s after the kill; node asked twice, charged once ({transfer.amount} "
          f"micro-units for 2 images), no hold left")
