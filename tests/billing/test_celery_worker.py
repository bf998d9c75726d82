"""The reservation sweeper through a real Celery worker process and a Redis broker."""
import datetime as dt
import sys
import time

import pytest

from billing.invariants import check_ledger
from billing.models import Transfer
from celery import Celery
from tests.billing.test_ledger import reserve
from tests.conftest import Process, run_async, server_env

BROKER = "redis://127.0.0.1:6379/13"


@pytest.fixture
def worker(transactional_db):
    process = Process(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo", "--loglevel", "INFO",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        env=server_env(CELERY_BROKER_URL=BROKER),
        ready="ready.",
    )
    yield process
    process.stop()


@pytest.mark.redis
@pytest.mark.postgres
def test_worker_voids_stale_reservations(alice, worker):
    from billing.services import price_publish
    from billing.pricing import Price

    p = price_publish(model="worker-model", input_per_mtok=1_000_000, output_per_mtok=1_000_000)
    price = Price(p.id, p.model, p.version, p.currency, p.input_per_mtok, p.cached_input_per_mtok, p.output_per_mtok,
                  p.effective_from)
    stale = run_async(reserve(alice, price, 700, request_id="stale", timeout=dt.timedelta(seconds=-5)))
    with Celery(broker=BROKER, set_as_current=False) as producer:  # a client of the worker's broker (the suite's own app is eager)
        producer.send_task("billing.tasks.void_expired_reservations")
    deadline = time.monotonic() + 20
    while Transfer.objects.get(id=stale.transfer_id).status == "pending":
        assert time.monotonic() < deadline, "".join(worker.output[-30:])
        time.sleep(0.1)
    assert Transfer.objects.get(id=stale.transfer_id).status == "voided"
    assert alice.wallet.reserved == 0 and check_ledger() == []
