"""A server process SIGKILLed while clients stream from it: they resume on the other process."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest
from django.utils import timezone

from billing.invariants import check_ledger
from billing.models import Transfer
from billing.services import reservations_void_expired
from tests.conftest import SIM_MODEL, start_server
from tests.reliability.conftest import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

BODY = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "long answer please"}], "max_tokens": 200,
        "stream": True}
CLIENTS = 4


def event_ids_and_data(lines):
    out, current, name = [], None, None
    for line in lines:
        if line.startswith("id: evt_"):
            current, name = int(line[8:]), None
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            out.append((current, name, line[6:]))
    return out


@pytest.fixture
def doomed_server(transactional_db):
    """A server process of this test's own, to be killed."""
    server = start_server()
    yield server
    server.process.stop()


def test_server_killed_with_open_streams_clients_resume_on_the_other_process(doomed_server, second_server_proc,
                                                                              alice, sim_node, sim):
    sim.configure(tokens_per_s=20)
    opened = []  # (request id, events seen) per client, each stream read until the kill
    ready = threading.Barrier(CLIENTS + 1)
    killed = threading.Event()

    def client():
        lines = []
        with httpx.stream("POST", f"{doomed_server.api}/chat/completions", headers=alice.auth(), json=BODY,
                          timeout=30) as r:
            assert r.status_code == 200
            counted = False
            try:
                for line in r.iter_lines():
                    lines.append(line)
                    if not counted and len(event_ids_and_data(lines)) >= 4:
                        counted = True
                        ready.wait(10)
            except httpx.HTTPError:
                pass  # the process died under it
            assert killed.is_set()
            opened.append((r.headers["x-request-id"], event_ids_and_data(lines)))

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    ready.wait(20)
    killed.set()
    os.killpg(doomed_server.process.proc.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    for t in threads:
        t.join(30)
    assert len(opened) == CLIENTS

    took = []
    for request_id, seen in opened:
        assert [n for n, _, _ in seen] == list(range(1, len(seen) + 1))
        started = time.monotonic()
        with httpx.stream("GET", f"{second_server_proc.api}/streams/{request_id}", timeout=30,
                          headers={**alice.auth(), "Last-Event-ID": f"evt_{seen[-1][0]}"}) as r:
            assert r.status_code == 200 and r.headers["x-request-id"] == request_id
            lines = []
            for line in r.iter_lines():  # heartbeats keep a stream open: bound the wait here
                lines.append(line)
                assert time.monotonic() - started < 15, "the resumed stream never ended"
            rest = event_ids_and_data(lines)
        took.append(time.monotonic() - started)
        ids = [n for n, _, _ in seen + rest]
        assert ids == list(range(1, len(ids) + 1))  # the mirrored events, none lost or repeated
        _, name, data = rest[-1]
        error = json.loads(data)
        assert name == "error" and error["error"]["code"] == "upstream_unavailable", rest[-1]
        assert error["error"]["request_id"] == request_id
        assert not any(d == "[DONE]" for _, _, d in rest)

    # The generator died with its process: nobody settles those holds. The follower that saw the
    # producer gone brought each forward, so the sweeper's next run voids them: nothing charged.
    transfers = Transfer.objects.filter(kind="usage")
    assert transfers.count() == CLIENTS and {t.status for t in transfers} == {"pending"}
    wait_until(lambda: not transfers.filter(timeout_at__gte=timezone.now()).exists(), timeout=5,
               message="the holds to be brought forward")
    assert reservations_void_expired() == CLIENTS and {t.status for t in Transfer.objects.filter(kind="usage")} == {"voided"}
    wallet = alice.wallet
    assert (wallet.balance, wallet.reserved) == (1_000_000, 0) and check_ledger() == []
    deadline = time.monotonic() + 10
    while sim.stats()["active"]:  # the node saw its connections drop and stopped generating
        assert time.monotonic() < deadline
        time.sleep(0.05)
    print(f"\nserver SIGKILLed with {CLIENTS} open streams: each client resumed on the other process with "
          f"Last-Event-ID, got the missed events and an error event in {min(took):.1f}–{max(took):.1f} s "
          f"({time.monotonic() - killed_at:.1f} s after the kill for all); nothing lost or repeated; "
          f"{CLIENTS} holds voided by the sweeper's next run, nothing charged")
