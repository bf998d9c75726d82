"""SIGTERM drains: readiness 503 first, then no new connections, open streams finish and are
settled, then the process exits (config/server.py, gateway/lifecycle.py). A real server process."""
import json
import os
import signal
import sys
import threading
import time

import httpx
import pytest

from billing.invariants import check_ledger
from billing.models import Transfer
from tests.conftest import SIM_MODEL, Process, free_port, server_env, sim_cost

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

WORDS = [f"w{i}" for i in range(30)]
BODY = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "echo: " + " ".join(WORDS)}],
        "max_tokens": 100, "stream": True, "stream_options": {"include_usage": True}}


def start(**env) -> tuple[Process, str]:
    port = free_port()
    process = Process([sys.executable, "-m", "config.server", "--port", str(port)], env=server_env(**env),
                      ready="Application startup complete")
    return process, f"http://127.0.0.1:{port}"


def test_sigterm_turns_readiness_503_stops_accepting_and_lets_the_open_stream_finish_and_settle(alice, sim_node, sim):
    process, url = start(SHUTDOWN_READY_DELAY_SECONDS="2", SHUTDOWN_DRAIN_SECONDS="30")
    sim.configure(tokens_per_s=8)  # 30 tokens: ~4 s of stream
    lines, started, done = [], threading.Event(), threading.Event()

    def read() -> None:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=BODY, headers=alice.auth(), timeout=60) as response:
            lines.append(response.status_code)
            for line in response.iter_lines():
                lines.append(line)
                if line.startswith("data: "):
                    started.set()
        done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(15)
        assert httpx.get(f"{url}/readyz").status_code == 200
        os.kill(process.proc.pid, signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.3)
        ready = httpx.get(f"{url}/readyz")  # still accepting during the delay, but out of rotation
        assert (ready.status_code, ready.json()) == (503, {"status": "draining"})
        assert httpx.get(f"{url}/healthz").status_code == 200
        while True:  # after the delay: no new connections, while the stream still runs
            try:
                httpx.get(f"{url}/healthz", timeout=1)
            except httpx.ConnectError:
                break
            assert time.monotonic() - signalled < 5, "still accepting connections after the delay"
            time.sleep(0.1)
        assert time.monotonic() - signalled >= 1.9
        assert not done.is_set(), "the stream ended before the server stopped accepting: the test proves nothing"
        assert done.wait(30)
        process.proc.wait(timeout=30)
    finally:
        process.stop()

    assert lines[0] == 200
    ids = [int(line[len("id: evt_"):]) for line in lines[1:] if line.startswith("id: ")]
    assert ids == list(range(1, len(ids) + 1))
    data = [line[6:] for line in lines[1:] if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    text = "".join(choice["delta"].get("content") or "" for d in data[:-1] for choice in json.loads(d).get("choices") or ())
    assert text == " ".join(WORDS)  # the whole answer, nothing cut
    usage = json.loads(data[-2])["usage"]
    [transfer] = Transfer.objects.filter(kind="usage")  # settled before the process exited
    assert (transfer.status, transfer.output_tokens) == ("posted", 30)
    assert transfer.amount == sim_cost(usage["prompt_tokens"], 30)
    assert alice.wallet.reserved == 0 and check_ledger() == []
    output = "".join(process.output)
    assert "Draining: readiness is 503" in output and "Application shutdown complete" in output


def test_a_stream_longer_than_the_drain_bound_is_cut_and_the_process_still_exits(alice, sim_node, sim):
    process, url = start(SHUTDOWN_READY_DELAY_SECONDS="0", SHUTDOWN_DRAIN_SECONDS="2")
    sim.configure(tokens_per_s=2)  # 30 tokens: 15 s, far beyond the bound
    got_first = threading.Event()

    def read() -> None:
        try:
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=BODY, headers=alice.auth(), timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        got_first.set()
        except httpx.HTTPError:
            pass

    threading.Thread(target=read, daemon=True).start()
    try:
        assert got_first.wait(15)
        os.kill(process.proc.pid, signal.SIGTERM)
        signalled = time.monotonic()
        process.proc.wait(timeout=60)
        took = time.monotonic() - signalled
    finally:
        process.stop()
    # bounded: 2 s for responses, then the stream's own settlement (background work, same bound)
    assert 2 <= took < 12, took
    assert "timeout graceful shutdown exceeded" in "".join(process.output)
