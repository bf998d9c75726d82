"""Health, readiness, /metrics and the access log, through real server processes (config/ops.py)."""
import json
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SIM_MODEL, free_port, start_server

METRICS_TOKEN = "metrics-token-for-tests-0123456789"
CANARY = "canary-7f3a9c-never-in-a-log"


@pytest.fixture(scope="module")
def ops_server(django_db_setup, django_db_blocker):
    """A server in the production logging shape: JSON lines, access log, a metrics token, a name."""
    server = start_server(LOG_FORMAT="json", ACCESS_LOG="1", METRICS_TOKEN=METRICS_TOKEN, SERVED_BY_HEADER="1",
                          PROCESS_NAME="web-test-a")
    yield server
    server.process.stop()


def samples(text: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def scrape(server) -> dict[tuple, float]:
    response = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


def test_liveness_and_readiness_answer_without_a_key(server):
    live = httpx.get(f"{server.url}/healthz")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "redis": "ok", "migrations": "ok"}}
    assert httpx.post(f"{server.url}/readyz").status_code == 405
    assert "x-served-by" not in ready.headers  # off unless SERVED_BY_HEADER


def test_readiness_is_503_naming_the_check_when_redis_is_unreachable(django_db_setup, django_db_blocker):
    server = start_server(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        ready = httpx.get(f"{server.url}/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json() == {"status": "unavailable",
                                "checks": {"database": "ok", "redis": "failed", "migrations": "ok"}}
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # alive: restarting it would not help
    finally:
        server.process.stop()


def test_metrics_want_the_token_when_one_is_set(ops_server):
    assert httpx.get(f"{ops_server.url}/metrics").status_code == 401
    assert httpx.get(f"{ops_server.url}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert scrape(ops_server)[("platform_draining", ())] == 0


def test_metrics_count_requests_latency_tokens_streams_and_node_health(ops_server, alice, sim_node, sim):
    before = scrape(ops_server)
    body = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "echo: one two three"}], "max_tokens": 20}
    plain = httpx.post(f"{ops_server.api}/chat/completions", json=body, headers=alice.auth(), timeout=30)
    assert plain.status_code == 200
    streamed = httpx.post(f"{ops_server.api}/chat/completions", headers=alice.auth(), timeout=30,
                          json={**body, "stream": True, "stream_options": {"include_usage": True}})
    assert streamed.status_code == 200 and "[DONE]" in streamed.text
    stream_usage = [json.loads(line[6:])["usage"] for line in streamed.text.splitlines()
                    if line.startswith("data: {") and '"usage":{' in line.replace(" ", "")][-1]
    missing = httpx.get(f"{ops_server.api}/streams/req_nosuchstream", headers=alice.auth())
    assert missing.status_code == 404
    after = {}

    def grew(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    deadline = time.monotonic() + 10  # a request is counted once its response is sent: it may trail the client
    while time.monotonic() < deadline:
        after = scrape(ops_server)
        if grew("platform_http_requests_total", route="/v1/streams/{request_id}", method="GET", status="404"):
            break
        time.sleep(0.05)

    chat = {"route": "/v1/chat/completions", "method": "POST"}
    assert grew("platform_http_requests_total", **chat, status="200") == 2
    assert grew("platform_http_requests_total", route="/v1/streams/{request_id}", method="GET", status="404") == 1
    assert grew("platform_http_request_duration_seconds_count", **chat) == 2
    assert grew("platform_http_request_duration_seconds_bucket", **chat, le="+Inf") == 2
    usage = plain.json()["usage"]
    assert grew("platform_tokens_total", model=SIM_MODEL, direction="input") == usage["prompt_tokens"] + stream_usage["prompt_tokens"]
    assert grew("platform_tokens_total", model=SIM_MODEL, direction="output") == 6  # "one two three", twice
    assert after[("platform_reservations_open", ())] == 0 and after[("platform_streams_open", ())] == 0
    node = (("node", sim_node.public_id), ("region", "test-1"))
    assert after[("platform_node_up", node)] == 1 and ("platform_node_load", node) in after
    # probes and scrapes are not requests
    assert not any(dict(labels).get("route") in ("/healthz", "/readyz", "/metrics") for _, labels in after)


def test_access_log_is_one_json_line_per_request_without_keys_or_bodies(ops_server, alice, sim_node, sim):
    body = {"model": SIM_MODEL, "messages": [{"role": "user", "content": f"echo: {CANARY}"}], "max_tokens": 20}
    response = httpx.post(f"{ops_server.api}/chat/completions", json=body, headers=alice.auth(), timeout=30)
    assert response.status_code == 200 and CANARY in response.text
    assert response.headers["x-served-by"] == "web-test-a"
    request_id = response.headers["x-request-id"]
    refused = httpx.post(f"{ops_server.api}/chat/completions", json=body, headers={"Authorization": "Bearer sk_bogus"})
    assert refused.status_code == 401
    console = httpx.get(f"{ops_server.url}/console/")

    def access_lines() -> list[dict]:
        lines = [json.loads(line) for line in ops_server.process.output if line.startswith("{")]
        return [line for line in lines if line["logger"] == "platform.access"]

    deadline = time.monotonic() + 10  # a line is written once its response is sent: it may trail the client
    while not any(line["route"] == "/console/*" for line in access_lines()) and time.monotonic() < deadline:
        time.sleep(0.05)
    access = access_lines()
    [mine] = [line for line in access if line["request_id"] == request_id]
    assert mine["route"] == "/v1/chat/completions" and mine["method"] == "POST" and mine["status"] == 200
    assert 0 < mine["latency_ms"] < 30_000 and mine["process"] == "web-test-a" and mine["level"] == "INFO"
    assert {"time", "message"} <= set(mine)
    assert any(line["status"] == 401 and line["route"] == "/v1/chat/completions" for line in access)
    assert any(line["route"] == "/console/*" and line["status"] == console.status_code for line in access)
    everything = "".join(ops_server.process.output)
    assert CANARY not in everything and alice.secret_key not in everything and "sk_bogus" not in everything
    assert all(line.startswith("{") for line in ops_server.process.output if line.strip())  # nothing but JSON
