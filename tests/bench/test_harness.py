"""bench/run.py's load generators and the parsing of what they print (no timing is asserted).

They run for real against the Node.js mock upstream: the wrk script's summary line, and the stream
client's count of lost streams (a stream short of its chunks is lost, whatever its speed).
"""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import run  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mock():
    """The mock upstream: 10 chunks 1 ms apart, no latency; yields its base URL."""
    port = _free_port()
    proc = subprocess.Popen(["node", str(ROOT / "bench/mock_upstream.js"), "--port", str(port), "--chunks", "10",
                             "--chunk-interval-ms", "1"], stdout=subprocess.PIPE, text=True)
    assert "mock upstream on" in proc.stdout.readline()
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(5)


def test_wrk_summary_is_parsed_with_its_errors(mock):
    ok = run.wrk(f"{mock}/v1/chat/completions", connections=2, seconds=1, model="bench-model", keys=["k1", "k2"])
    assert ok["requests"] > 0 and ok["errors"] == 0 and 0 < ok["p50"] <= ok["p99"] <= ok["max"]
    # A path the mock does not serve answers 404: wrk counts every one as a status error.
    bad = run.wrk(f"{mock}/v1/nothing", connections=1, seconds=1, model="bench-model", keys=[])
    assert bad["requests"] > 0 and bad["errors"] == bad["requests"] and bad["rps"] == 0
    with pytest.raises(ValueError, match="WRK_JSON"):
        run.parse_wrk("Running 1s test @ http://x\n  1 threads and 1 connections\n")


def test_stream_client_counts_complete_and_lost_streams(mock):
    url = f"{mock}/v1/chat/completions"
    started = time.monotonic()
    whole = run.stream_client(url, streams=5, keys=[], chunks=10)
    assert (whole["streams"], whole["ok"], whole["lost"], whole["errors"]) == (5, 5, 0, 0)
    assert whole["ttft_p50"] is not None and whole["gap_p99"] is not None
    # Expecting more chunks than the mock sends: every stream is short, so lost (not an error).
    short = run.stream_client(url, streams=3, keys=[], chunks=64)
    assert (short["ok"], short["lost"], short["errors"]) == (0, 3, 0)
    # Nobody listening: each stream errors and is lost.
    gone = run.stream_client(f"http://127.0.0.1:{_free_port()}/v1/chat/completions", streams=2, keys=[], chunks=10)
    assert (gone["ok"], gone["lost"], gone["errors"]) == (0, 2, 2) and gone["error_samples"]
    assert time.monotonic() - started < 30
