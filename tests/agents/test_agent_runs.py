"""POST /v1/agents/runs against a live server: the run loop calls the simulator as its model,
runs only granted tools, audits every call, streams its events and bills every model call."""
from __future__ import annotations

import json

import httpx
import pytest

from billing.invariants import check_ledger
from billing.models import Transfer
from console.models import AuditEvent
from gateway.models import RequestRecord
from nodes.jobs import job_object
from tests.agents.conftest import wait_job
from tests.conftest import SIM_MODEL, sim_cost

START = 1_000_000


def run(server, tenant, **body) -> dict:
    response = httpx.post(f"{server.api}/agents/runs", headers=tenant.auth(), json={"model": SIM_MODEL, **body},
                          timeout=30)
    assert response.status_code == 202, response.text
    assert response.headers["x-job-id"] == response.json()["id"]
    return response.json()


def finished(server, tenant, job_id: str) -> dict:
    """The finished job as its owner reads it at GET /v1/jobs/{id} (the same as what is stored)."""
    stored = job_object(wait_job(job_id))
    response = httpx.get(f"{server.api}/jobs/{job_id}", headers=tenant.auth(), timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == json.loads(json.dumps(stored))
    return response.json()


def parse_sse(text: str) -> list[tuple[int, str, dict]]:
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "data" in fields:
            events.append((int(fields["id"].removeprefix("evt_")), fields["event"], json.loads(fields["data"])))
    return events


def billed_exactly_for_every_model_call(sim, tenant, calls: int):
    """The run's one transfer posts the sum of what the node counted for each call."""
    made = sim.stats()["last"][:calls]
    assert len(made) == calls and all(m["outcome"] == "completed" for m in made)
    cost = sum(sim_cost(m["prompt_tokens"], m["completion_tokens"]) for m in made)
    transfer = Transfer.objects.get(kind="usage")
    assert transfer.status == "posted" and transfer.amount == cost
    assert transfer.input_tokens == sum(m["prompt_tokens"] for m in made)
    assert transfer.output_tokens == sum(m["completion_tokens"] for m in made)
    assert (tenant.wallet.balance, tenant.wallet.reserved) == (START - cost, 0)
    assert RequestRecord.objects.get().cost == cost and RequestRecord.objects.get().endpoint == "agents.runs"
    assert check_ledger() == []
    return cost


def test_a_granted_node_metrics_call_runs_and_is_audited(agent_server, alice, sim_node, sim):
    job = run(agent_server, alice, input="call: node_metrics", tools=["node_metrics"])
    assert job["kind"] == "agent.run" and job["params"]["tools"] == ["node_metrics"]
    done = finished(agent_server, alice, job["id"])
    assert done["status"] == "succeeded", done["error"]
    result = done["result"]
    assert result["stop_reason"] == "final_answer" and result["steps"] == 2
    [call] = [e for e in result["events"] if e["type"] == "tool.result"]
    assert call["outcome"] == "executed" and call["name"] == "node_metrics"
    [node] = call["output"]["nodes"]
    assert node["id"] == sim_node.public_id and node["attestation"] == "verified" and node["region"] == "test-1"
    assert "base_url" not in node and "credentials" not in node and "name" not in node
    assert result["output"].startswith("result: {\"nodes\":")  # the model was given the metrics
    [audit] = AuditEvent.objects.filter(project=alice.project)
    assert (audit.action, audit.outcome, audit.subject) == ("agent.tool_call", "executed", job["id"])
    assert audit.data["tool"] == "node_metrics" and audit.data["summary"] == "1 nodes"
    assert audit.actor.startswith("key_") and audit.request_id == Transfer.objects.get(kind="usage").request_id
    cost = billed_exactly_for_every_model_call(sim, alice, calls=2)
    assert result["cost"] == cost and result["usage"]["total_tokens"] == sum(
        m["prompt_tokens"] + m["completion_tokens"] for m in sim.stats()["last"][:2])


def test_a_tool_that_was_not_granted_is_refused_never_run_and_audited(agent_server, alice, sim_node, sim):
    job = run(agent_server, alice, input="call: node_metrics", tools=["http_fetch"])
    result = finished(agent_server, alice, job["id"])["result"]
    [refused] = [e for e in result["events"] if e["type"] == "tool.result"]
    assert refused["outcome"] == "refused" and "nodes" not in refused["output"]
    assert refused["output"] == {"error": "tool 'node_metrics' is not granted for this run; it was not run."}
    assert "not granted" in result["output"]  # the refusal went back to the model as the tool's result
    [audit] = AuditEvent.objects.all()
    assert (audit.outcome, audit.data["tool"]) == ("refused", "node_metrics")
    billed_exactly_for_every_model_call(sim, alice, calls=2)


def test_http_fetch_reaches_an_allowed_host(agent_server, alice, sim_node, sim, allowed_site):
    url = allowed_site.url("/hello")
    job = run(agent_server, alice, input=f'call: http_fetch {{"url": "{url}"}}', tools=["http_fetch"])
    result = finished(agent_server, alice, job["id"])["result"]
    [fetched] = [e for e in result["events"] if e["type"] == "tool.result"]
    assert fetched["outcome"] == "executed"
    assert fetched["output"]["status"] == 200 and fetched["output"]["body"] == "hello from the allowed site"
    assert allowed_site.hits == ["/hello"]
    [audit] = AuditEvent.objects.all()
    assert audit.outcome == "executed" and audit.data["arguments"] == {"url": url}
    assert audit.data["summary"].startswith("HTTP 200 text/plain")
    billed_exactly_for_every_model_call(sim, alice, calls=2)


@pytest.mark.parametrize("path", ["/here"])
def test_http_fetch_follows_a_redirect_on_the_same_host(agent_server, alice, sim_node, allowed_site, path):
    url = allowed_site.url(path)
    result = finished(agent_server, alice, run(agent_server, alice, input=f'call: http_fetch {{"url": "{url}"}}', tools=["http_fetch"])["id"])
    [fetched] = [e for e in result["result"]["events"] if e["type"] == "tool.result"]
    assert fetched["output"]["body"] == "hello from the allowed site" and allowed_site.hits == ["/here", "/hello"]


def test_http_fetch_cuts_a_large_body(agent_server, alice, sim_node, allowed_site):
    url = allowed_site.url("/big")
    result = finished(agent_server, alice, run(agent_server, alice, input=f'call: http_fetch {{"url": "{url}"}}', tools=["http_fetch"])["id"])
    [fetched] = [e for e in result["result"]["events"] if e["type"] == "tool.result"]
    assert fetched["output"]["truncated"] is True and fetched["output"]["body"] == "x" * 1024


@pytest.mark.parametrize("how", ["other host", "redirect", "scheme"])
def test_http_fetch_refuses_hosts_off_the_allow_list(agent_server, alice, sim_node, sim, allowed_site, elsewhere, how):
    url = {"other host": elsewhere.url("/secret"), "redirect": allowed_site.url("/away"),
           "scheme": f"ftp://127.0.0.1:{allowed_site.port}/hello"}[how]
    job = run(agent_server, alice, input=f'call: http_fetch {{"url": "{url}"}}', tools=["http_fetch"])
    result = finished(agent_server, alice, job["id"])["result"]
    [refused] = [e for e in result["events"] if e["type"] == "tool.result"]
    assert refused["outcome"] == "failed"
    expected = "only http and https" if how == "scheme" else f"127.0.0.1:{elsewhere.port} is not on the fetch allow-list"
    assert expected in refused["output"]["error"]
    assert elsewhere.hits == []  # nothing ever reached the other host
    [audit] = AuditEvent.objects.all()
    assert audit.outcome == "failed" and expected in audit.data["summary"]
    billed_exactly_for_every_model_call(sim, alice, calls=2)


def test_streamed_events_arrive_in_order_and_resume(agent_server, alice, sim_node, sim, charlie):
    with httpx.stream("POST", f"{agent_server.api}/agents/runs", headers=alice.auth(), timeout=30, json={
        "model": SIM_MODEL, "input": "call: node_metrics", "tools": ["node_metrics"], "stream": True,
    }) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        job_id, request_id = response.headers["x-job-id"], response.headers["x-request-id"]
        events = parse_sse(response.read().decode())
    assert [n for n, _, _ in events] == list(range(1, len(events) + 1))
    assert [kind for _, kind, _ in events] == [
        "run.created", "step.started", "message", "tool.call", "tool.result", "step.started", "message",
        "run.completed",
    ]
    assert all(data["type"] == kind and data["sequence_number"] == n for n, kind, data in events)
    assert events[0][2]["run_id"] == job_id and events[3][2]["name"] == "node_metrics"
    completed = events[-1][2]
    cost = billed_exactly_for_every_model_call(sim, alice, calls=2)
    assert completed["cost"] == cost and completed["stop_reason"] == "final_answer"
    # The same events, kept with the job, and from any point on.
    kept = job_object(wait_job(job_id))["result"]["events"]
    assert [e["type"] for e in kept] == [kind for _, kind, _ in events]
    again = httpx.get(f"{agent_server.api}/agents/runs/{job_id}/events", headers={**alice.auth(), "Last-Event-ID": "evt_5"})
    assert [n for n, _, _ in parse_sse(again.text)] == [6, 7, 8]
    resumed = httpx.get(f"{agent_server.api}/streams/{request_id}", headers={**alice.auth(), "Last-Event-ID": "evt_6"})
    assert [kind for _, kind, _ in parse_sse(resumed.text)] == ["message", "run.completed"]
    # Another tenant sees neither.
    assert httpx.get(f"{agent_server.api}/agents/runs/{job_id}/events", headers=charlie.auth()).status_code == 404
    assert httpx.get(f"{agent_server.api}/streams/{request_id}", headers=charlie.auth()).status_code == 404


def test_max_steps_stops_the_run_and_bills_the_calls_made(agent_server, alice, sim_node, sim):
    result = finished(agent_server, alice, run(agent_server, alice, input="call: node_metrics", tools=["node_metrics"], max_steps=1)["id"])
    assert result["status"] == "succeeded"
    assert (result["result"]["stop_reason"], result["result"]["steps"], result["result"]["output"]) == (
        "max_steps", 1, None)
    billed_exactly_for_every_model_call(sim, alice, calls=1)


def test_the_token_budget_bounds_the_run(agent_server, alice, sim_node, sim):
    # Room for the first call's prompt and answer, not for a second call after the tool result.
    job = run(agent_server, alice, input="call: node_metrics", tools=["node_metrics"], max_tokens=1000)
    result = finished(agent_server, alice, job["id"])["result"]
    assert result["stop_reason"] == "max_tokens" and result["steps"] == 1
    assert result["usage"]["total_tokens"] <= 1000
    transfer = Transfer.objects.get(kind="usage")
    assert transfer.pending_amount == 1000 * 2  # the budget at the dearer (output) price
    billed_exactly_for_every_model_call(sim, alice, calls=1)


def test_a_failing_node_fails_the_run_and_charges_nothing(agent_server, alice, sim_node, sim):
    sim.configure(fail_rate=1.0, fail_mode="http500")
    done = finished(agent_server, alice, run(agent_server, alice, input="hello", tools=[])["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "upstream_unavailable"
    transfer = Transfer.objects.get(kind="usage")
    assert transfer.status == "voided" and alice.wallet.balance == START and alice.wallet.reserved == 0
    assert check_ledger() == []


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"agent": "nobody"}, 404, "agent"),
        ({"tools": ["shell"]}, 400, "tools"),
        ({"agent": "operator", "tools": ["http_fetch"]}, 400, "tools"),
        ({"tools": ["node_metrics", "node_metrics"]}, 400, "tools"),
        ({"max_tokens": 50}, 400, "max_tokens"),
        ({"max_steps": 0}, 400, "max_steps"),
        ({"input": ""}, 400, "input"),
        ({"model": "sim-missing"}, 404, "model"),
        ({"surprise": 1}, 400, "surprise"),
    ],
)
def test_bad_runs_are_refused_before_anything_is_held(agent_server, alice, sim_node, body, status, param):
    response = httpx.post(f"{agent_server.api}/agents/runs", headers=alice.auth(),
                          json={"model": SIM_MODEL, "input": "hi", **body})
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    assert not Transfer.objects.filter(kind="usage").exists()


def test_a_publishable_key_cannot_start_a_run(agent_server, alice, sim_node):
    response = httpx.post(f"{agent_server.api}/agents/runs", json={"model": SIM_MODEL, "input": "hi"},
                          headers={**alice.auth(alice.publishable_key), "origin": "https://app.alice.example"})
    assert response.status_code == 403


def test_the_unused_budget_goes_back_to_the_token_rate_limit(agent_server, alice, sim_node, sim):
    from console.services import project_update
    from tests.conftest import cache_settle

    project_update(project=alice.project, tpm_limit=5000)
    cache_settle()
    first = run(agent_server, alice, input="call: node_metrics", tools=["node_metrics"], max_tokens=4000)
    assert finished(agent_server, alice, first["id"])["status"] == "succeeded"
    # 4000 were admitted of 5000; the run used a few hundred and gave the rest back, so another
    # 4000-token run is admitted at once (without the give-back only ~1000 would be left: 429).
    second = httpx.post(f"{agent_server.api}/agents/runs", headers=alice.auth(), timeout=30,
                        json={"model": SIM_MODEL, "input": "hello", "max_tokens": 4000})
    assert second.status_code == 202, second.text
    finished(agent_server, alice, second.json()["id"])
