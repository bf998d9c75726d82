"""Streams survive disconnects: a client that drops comes back (on another server process too)
with Last-Event-ID and gets exactly the events it missed; the answer is generated and billed once."""
import json
import time

import httpx
import pytest

from billing.invariants import check_ledger
from billing.models import Transfer
from console.services import project_update
from gateway.models import RequestRecord
from tests.conftest import SIM_MODEL, cache_settle, sim_cost

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

WORDS = [f"w{i}" for i in range(30)]
BODY = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "echo: " + " ".join(WORDS)}],
        "max_tokens": 100, "stream": True, "stream_options": {"include_usage": True}}


def events(lines):
    """(id, data) pairs from SSE lines."""
    out, current = [], None
    for line in lines:
        if line.startswith("id: "):
            current = int(line[len("id: evt_"):])
        elif line.startswith("data: "):
            out.append((current, line[len("data: "):]))
    return out


def read_some(url, headers, n, body=BODY):
    """Open a stream, keep the first n events, then drop the connection."""
    kept = []
    with httpx.stream("POST", url, headers=headers, json=body, timeout=30) as response:
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        lines = []
        for line in response.iter_lines():
            lines.append(line)
            kept = events(lines)
            if len(kept) == n and line == "":
                break
    return request_id, kept


def text_of(evts):
    text = ""
    for _, data in evts:
        if data != "[DONE]":
            chunk = json.loads(data)
            for choice in chunk.get("choices") or ():
                text += choice["delta"].get("content") or ""
    return text


def wait_settled():
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        transfers = list(Transfer.objects.filter(kind="usage"))
        if transfers and all(t.status != "pending" for t in transfers):
            return transfers
        time.sleep(0.05)
    raise AssertionError("never settled")


def test_resume_on_another_server_process_loses_and_repeats_nothing(server, second_server_proc, alice, sim_node, sim):
    sim.configure(tokens_per_s=40)
    request_id, first = read_some(f"{server.api}/chat/completions", alice.auth(), 5)
    assert [i for i, _ in first] == [1, 2, 3, 4, 5]
    with httpx.stream("GET", f"{second_server_proc.api}/streams/{request_id}", timeout=30,
                      headers={**alice.auth(), "Last-Event-ID": "evt_5"}) as response:
        assert response.status_code == 200 and response.headers["x-request-id"] == request_id
        rest = events(response.iter_lines())
    ids = [i for i, _ in first + rest]
    assert ids == list(range(1, len(ids) + 1))  # nothing lost, nothing twice
    assert text_of(first + rest) == " ".join(WORDS) and rest[-1][1] == "[DONE]"
    usage = json.loads(rest[-2][1])["usage"]

    [transfer] = wait_settled()
    assert (transfer.status, transfer.output_tokens) == ("posted", 30)
    assert transfer.amount == sim_cost(usage["prompt_tokens"], 30)
    stats = sim.stats()
    assert (stats["completed"], stats["cancelled"]) == (1, 0)  # generated once, never stopped
    assert RequestRecord.objects.get().status_code == 200
    assert alice.wallet.reserved == 0 and check_ledger() == []


def test_same_idempotency_key_resumes_live_and_later_replays_after_the_last_event(server, second_server_proc, alice,
                                                                                  sim_node, sim):
    sim.configure(tokens_per_s=40)
    headers = {**alice.auth(), "Idempotency-Key": "resume-me"}
    request_id, first = read_some(f"{server.api}/chat/completions", headers, 3)
    with httpx.stream("POST", f"{second_server_proc.api}/chat/completions", json=BODY, timeout=30,
                      headers={**headers, "Last-Event-ID": "evt_3"}) as response:
        assert response.status_code == 200 and response.headers["x-request-id"] == request_id
        rest = events(response.iter_lines())
    assert [i for i, _ in first + rest] == list(range(1, len(first + rest) + 1))
    assert text_of(first + rest) == " ".join(WORDS)
    [transfer] = wait_settled()
    assert transfer.status == "posted" and transfer.output_tokens == 30

    replay = httpx.post(f"{second_server_proc.api}/chat/completions", json=BODY,
                        headers={**headers, "Last-Event-ID": "evt_10"}, timeout=30)
    assert replay.headers["idempotent-replayed"] == "true"
    replayed = events(replay.text.splitlines())
    assert replayed == rest[10 - 3:]  # exactly the events after evt_10
    assert Transfer.objects.filter(kind="usage").count() == 1 and sim.stats()["completed"] == 1


def test_streams_of_other_projects_are_not_found_and_bad_event_ids_are_refused(server, alice, charlie, sim_node, sim):
    request_id, _ = read_some(f"{server.api}/chat/completions", alice.auth(), 2)
    outsider = httpx.get(f"{server.api}/streams/{request_id}", headers=charlie.auth())
    assert outsider.status_code == 404 and outsider.json()["error"]["code"] == "not_found"
    bad = httpx.get(f"{server.api}/streams/{request_id}", headers={**alice.auth(), "Last-Event-ID": "yesterday"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    unknown = httpx.get(f"{server.api}/streams/req_doesnotexist", headers=alice.auth())
    assert unknown.status_code == 404


def test_nobody_back_within_the_resume_window_stops_the_node_and_bills_what_was_generated(server, alice, sim_node, sim):
    project_update(project=alice.project, stream_resume_seconds=1)
    cache_settle()
    sim.configure(tokens_per_s=20)
    body = {**BODY, "messages": [{"role": "user", "content": "long answer please"}], "max_tokens": 200}
    started = time.monotonic()
    read_some(f"{server.api}/chat/completions", alice.auth(), 3, body=body)
    [transfer] = wait_settled()
    waited = time.monotonic() - started
    stats = sim.stats()
    assert stats["cancelled"] == 1
    node = stats["last"][-1]
    assert 3 <= transfer.output_tokens <= node["completion_tokens"] < 200
    assert waited >= 1.0  # it kept generating through the window
    assert transfer.amount == sim_cost(transfer.input_tokens, transfer.output_tokens)
    assert RequestRecord.objects.get().error_code == "client_disconnected"
    assert alice.wallet.reserved == 0 and check_ledger() == []


def test_a_finished_stream_is_still_readable_after_its_last_event_id(server, second_server_proc, alice, sim_node, sim):
    with httpx.stream("POST", f"{server.api}/chat/completions", headers=alice.auth(), json=BODY, timeout=30) as r:
        request_id = r.headers["x-request-id"]
        whole = events(r.iter_lines())
    wait_settled()
    for process in (server, second_server_proc):  # the producer's process forgot it: both read Redis
        tail = httpx.get(f"{process.api}/streams/{request_id}", headers={**alice.auth(), "Last-Event-ID": "evt_3"})
        assert tail.status_code == 200 and events(tail.text.splitlines()) == whole[3:]
    assert Transfer.objects.filter(kind="usage").count() == 1


def test_session_id_groups_requests_and_comes_back_on_a_resumed_stream(server, second_server_proc, alice, sim_node,
                                                                       sim):
    sim.configure(tokens_per_s=40)
    headers = {**alice.auth(), "X-Session-ID": "sess-42"}
    plain = httpx.post(f"{server.api}/chat/completions", headers=headers, timeout=30,
                       json={**BODY, "stream": False, "stream_options": None})
    assert plain.headers["x-session-id"] == "sess-42"
    request_id, _ = read_some(f"{server.api}/chat/completions", headers, 2)
    resumed = httpx.get(f"{second_server_proc.api}/streams/{request_id}", timeout=30,
                        headers={**alice.auth(), "Last-Event-ID": "evt_2"})
    assert resumed.headers["x-session-id"] == "sess-42" and resumed.headers["x-request-id"] == request_id
    wait_settled()
    assert sorted(RequestRecord.objects.values_list("session_id", flat=True)) == ["sess-42", "sess-42"]
    invalid = httpx.post(f"{server.api}/chat/completions", headers={**alice.auth(), "X-Session-ID": "bad id!"},
                         json={**BODY, "stream": False, "stream_options": None}, timeout=30)
    assert invalid.status_code == 200 and "x-session-id" not in invalid.headers
