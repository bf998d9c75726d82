"""Oversized and slow-loris bodies against a live server process.

The server here runs with a 1 MiB body limit and a 2 s body deadline (GATEWAY_MAX_BODY_BYTES,
GATEWAY_BODY_TIMEOUT_SECONDS), so the limits are reached quickly; the code paths are the defaults'.
Every refusal is a 413 or 408 in the error envelope with its request id, the connection is closed
(the rest of the body is never read), the server keeps answering other requests at normal latency
while many such connections are open, and its memory stays bounded.
"""
from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import start_server
from tests.security.helpers import assert_envelope, open_request, read_answer, rss_kib

LIMIT = 1 << 20
DEADLINE_S = 2
# (path, the answer's shape): the gateway's body-reading routes, Anthropic's route, and a Django-served one.
BODY_ROUTES = ["/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/messages", "/v1/sealed/chat/completions",
               "/v1/keys"]


@pytest.fixture(scope="module")
def bounded_server(django_db_setup, django_db_blocker):
    server = start_server(GATEWAY_MAX_BODY_BYTES=str(LIMIT), GATEWAY_BODY_TIMEOUT_SECONDS=str(DEADLINE_S))
    yield server
    server.process.stop()
    output = "".join(server.process.output)
    assert "Traceback" not in output and "unhandled error" not in output, output[-3000:]


@pytest.fixture
def api(bounded_server, alice):
    return bounded_server, alice


def head(path: str, key: str, extra: str) -> str:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\n{extra}\r\n")


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_a_declared_oversized_body_is_refused_before_it_is_sent(api, path):
    server, alice = api
    sock = open_request(server.url, head(path, alice.secret_key, f"Content-Length: {64 * LIMIT}\r\n"))
    sock.sendall(b'{"model": "' + b"x" * 4096)  # a start of the 64 MiB: the answer must not wait for the rest
    with sock:
        answer = read_answer(sock)
    assert assert_envelope(answer, 413)["code"] == "body_too_large"
    assert answer.closed


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_a_chunked_body_is_refused_once_it_passes_the_limit(api, path):
    server, alice = api
    sent = 0

    def body():
        nonlocal sent
        for _ in range(64):  # 64 MiB if the server read it all
            sent += 64 * 1024 * 16
            yield b"x" * (64 * 1024 * 16)

    response = httpx.post(server.url + path, headers={**alice.auth(), "Content-Type": "application/json"},
                          content=body(), timeout=30)
    assert assert_envelope(response, 413)["code"] == "body_too_large"
    assert response.headers.get("connection") == "close"
    assert sent < 16 * LIMIT, sent  # the server stopped reading well before the end


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_a_body_that_trickles_in_is_timed_out_with_408(api, path):
    server, alice = api
    sock = open_request(server.url, head(path, alice.secret_key, "Content-Length: 1000\r\n"))
    started = time.monotonic()
    with sock:
        stop = threading.Event()

        def trickle():
            try:
                while not stop.wait(0.5):
                    sock.sendall(b" ")
            except OSError:
                pass  # closed by the server: what we want

        threading.Thread(target=trickle, daemon=True).start()
        answer = read_answer(sock, timeout=DEADLINE_S + 10)
        stop.set()
    assert assert_envelope(answer, 408)["code"] == "body_timeout"
    assert DEADLINE_S - 0.2 <= time.monotonic() - started < DEADLINE_S + 3
    assert answer.closed


def test_a_body_sent_to_the_web_chat_relay_is_bounded_too(api):
    server, _ = api
    path = "/chat/relay/conv_matrix/"
    with open_request(server.url, f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {64 * LIMIT}\r\n\r\n") as sock:
        answer = read_answer(sock)
    assert assert_envelope(answer, 413)["code"] == "body_too_large" and answer.closed
    with open_request(server.url, f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n") as sock:
        sock.sendall(b"x")
        answer = read_answer(sock, timeout=DEADLINE_S + 10)
    assert assert_envelope(answer, 408)["code"] == "body_timeout" and answer.closed


def test_a_console_form_that_trickles_in_is_timed_out_too(api):
    server, _ = api
    sock = open_request(server.url, "POST /accounts/login/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                    "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 500\r\n\r\n")
    with sock:
        sock.sendall(b"login=a")
        answer = read_answer(sock, timeout=DEADLINE_S + 10)
    assert answer.status_code == 408 and answer.closed


def _latencies(url: str, headers: dict, n: int) -> list[float]:
    out = []
    with httpx.Client(timeout=10) as client:
        for _ in range(n):
            started = time.perf_counter()
            response = client.get(url, headers=headers)
            out.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    return out


def test_many_slow_loris_connections_neither_hang_the_worker_nor_slow_others(api):
    """200 connections trickling a byte every 0.5 s (four times the body deadline's share): the
    same process keeps answering GET /v1/models at its usual latency, then refuses every one of
    them with 408 when its deadline passes, and closes it."""
    server, alice = api
    url = f"{server.api}/models"
    _latencies(url, alice.auth(), 5)  # warm
    before = _latencies(url, alice.auth(), 30)

    paths = [BODY_ROUTES[i % len(BODY_ROUTES)] for i in range(200)]
    socks = [open_request(server.url, head(p, alice.secret_key, "Content-Length: 100000\r\n")) for p in paths]
    stop = threading.Event()

    def trickle():
        while not stop.wait(0.5):
            for sock in socks:
                try:
                    sock.sendall(b" ")
                except OSError:
                    pass

    threading.Thread(target=trickle, daemon=True).start()
    try:
        during = _latencies(url, alice.auth(), 30)
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(lambda s: read_answer(s, timeout=DEADLINE_S + 20), socks))
    finally:
        stop.set()
        for sock in socks:
            sock.close()
    for answer in answers:
        assert assert_envelope(answer, 408)["code"] == "body_timeout" and answer.closed
    # Normal latency: the median within 3x (and 50 ms) of the quiet one on this shared 2-core machine.
    p50_before, p50_during = statistics.median(before), statistics.median(during)
    assert p50_during < max(3 * p50_before, p50_before + 0.05), (p50_before, p50_during)
    assert max(during) < 1.0, max(during)
    assert _latencies(url, alice.auth(), 3)  # and after


def test_memory_stays_bounded_under_oversized_and_slow_bodies(api):
    """Each refused body holds at most the limit (1 MiB) while it is read, plus its join, so 8 at a
    time hold at most ~16 MiB; 120 oversized (64 MiB offered each: 7.5 GiB if read) and 40 slow
    bodies must leave the process within 48 MiB of where it started (the allocator keeps some
    freed arenas). A server that read whole bodies would grow by 64 MiB with the first one."""
    server, alice = api
    pid = server.process.proc.pid

    def oversized(i: int) -> int:
        def body():
            for _ in range(64):
                yield b"x" * LIMIT

        path = BODY_ROUTES[i % len(BODY_ROUTES)]
        headers = {**alice.auth(), "Content-Type": "application/json"}
        return httpx.post(server.url + path, headers=headers, content=body(), timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(oversized, range(16))) == {413}  # warm: the allocator's first arenas
    baseline = rss_kib(pid)

    socks = [open_request(server.url, head(BODY_ROUTES[i % len(BODY_ROUTES)], alice.secret_key,
                                           "Content-Length: 200000\r\n")) for i in range(40)]
    for sock in socks:
        sock.sendall(b"{" + b" " * 150_000)
    peak = baseline
    with ThreadPoolExecutor(8) as pool:
        for status in pool.map(oversized, range(120)):
            assert status == 413
            peak = max(peak, rss_kib(pid))
    for sock in socks:
        with sock:
            assert read_answer(sock, timeout=DEADLINE_S + 20).status_code == 408
    after = rss_kib(pid)
    assert max(peak, after) - baseline < 48 * 1024, (baseline, peak, after)
