"""Operators load, unload and pull models on their nodes; pulls are jobs watched through GET /v1/jobs/{id}.

Real processes: the gateway (uvicorn, eager Celery: a pull runs on a job thread in the
server process) and the simulator speaking Ollama's dialect (not a real Ollama server).
The same pull through a real Celery worker on Redis is in test_model_pull_worker.py.
"""
from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import SIM_PRICE, attest, cache_settle, make_tenant

PULLED = "tiny:1b"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def operator_token(charlie):
    from nodes.services import node_token_create

    return node_token_create(organization=charlie.organization, name="rack")[1]


@pytest.fixture
def ollama_node(charlie, ollama_sim):
    from nodes.services import node_register

    return node_register(
        operator=charlie.organization, name="ollama-1", base_url=f"{ollama_sim.url}/v1", adapter="ollama",
        region="eu-1", hardware="1x L4", models=[{"model": "small", "upstream_model": "sim-small"}], credentials="op-secret",
    )


def loaded(sim) -> list[str]:
    return [m["name"] for m in httpx.get(f"{sim.url}/api/ps").json()["models"]]


def model_call(server, token: str, node_id: str, action: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.api}/nodes/{node_id}/models/{action}", headers=bearer(token), json=body, timeout=30)


def get_job(server, token: str, job_id: str) -> httpx.Response:
    return httpx.get(f"{server.api}/jobs/{job_id}", headers=bearer(token), timeout=10)


def wait_job(server, token: str, job_id: str, done, timeout: float = 30.0) -> tuple[dict, list[dict]]:
    """Poll the job until ``done(job)``; every distinct state seen on the way."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while True:
        response = get_job(server, token, job_id)
        assert response.status_code == 200, response.text
        job = response.json()
        if not seen or (job["status"], job["progress"]) != (seen[-1]["status"], seen[-1]["progress"]):
            seen.append(job)
        if done(job):
            return job, seen
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)


def finished(job: dict) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


def pull_and_watch_progress(server, token: str, node_id: str, sim, body: dict) -> dict:
    """Start a pull with the simulator holding it after its first download step; see the job
    running with partial progress; let it go; wait for the end."""
    sim.configure(pull_hold=True)
    response = model_call(server, token, node_id, "pull", body)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["object"] == "job" and job["kind"] == "model.pull" and job["node"] == node_id
    assert job["status"] in ("queued", "running") and job["params"]["model"] == body["model"]
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    midway, _ = wait_job(server, token, job["id"], lambda j: j["progress"].get("completed", 0) > 0)
    assert midway["status"] == "running" and 0 < midway["progress"]["completed"] < midway["progress"]["total"]
    assert midway["progress"]["status"].startswith("pulling") and midway["started_at"] is not None
    sim.configure(pull_hold=False)
    return wait_job(server, token, job["id"], finished)[0]


def test_a_pull_is_a_job_with_progress_and_the_served_model_takes_traffic(
    server, alice, ollama_sim, ollama_node, operator_token, allowed_measurement
):
    from billing.services import price_publish
    from nodes.models import NodeModel

    body = {"model": PULLED, "serve": {"model": "tiny-1b", "context_window": 2048, "max_output_tokens": 64}}
    job = pull_and_watch_progress(server, operator_token, ollama_node.public_id, ollama_sim, body)
    assert job["status"] == "succeeded", job
    assert job["result"] == {"model": PULLED, "served": True, "served_model": "tiny-1b", "already_served": False}
    assert job["progress"]["status"] == "success" and job["progress"]["completed"] == job["progress"]["total"]
    assert job["finished_at"] >= job["started_at"] >= job["created_at"] and job["error"] is None
    served = NodeModel.objects.get(node=ollama_node, model="tiny-1b")
    assert (served.upstream_model, served.context_window, served.max_output_tokens) == (PULLED, 2048, 64)
    assert PULLED in [m["name"] for m in httpx.get(f"{ollama_sim.url}/api/tags").json()["models"]]

    # Served, priced and attested: the pulled model answers paid requests through the gateway.
    price_publish(model="tiny-1b", **SIM_PRICE)
    attest(ollama_node)
    cache_settle()
    answer = httpx.post(
        f"{server.api}/chat/completions", headers=alice.auth(), timeout=30,
        json={"model": "tiny-1b", "messages": [{"role": "user", "content": "echo: pulled it"}], "max_tokens": 8},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "pulled it"
    assert answer.headers["x-node-id"] == ollama_node.public_id


def test_a_pull_without_serve_only_downloads(server, ollama_sim, ollama_node, operator_token):
    from nodes.models import NodeModel

    response = model_call(server, operator_token, ollama_node.public_id, "pull", {"model": PULLED})
    assert response.status_code == 202, response.text
    job, _ = wait_job(server, operator_token, response.json()["id"], finished)
    assert job["status"] == "succeeded" and job["result"] == {"model": PULLED, "served": False, "served_model": None}
    assert list(NodeModel.objects.filter(node=ollama_node).values_list("model", flat=True)) == ["small"]
    assert PULLED in [m["name"] for m in httpx.get(f"{ollama_sim.url}/api/tags").json()["models"]]


def test_pulling_a_model_the_registry_lacks_fails_at_once(server, ollama_sim, ollama_node, operator_token):
    from nodes.models import NodeModel

    response = model_call(server, operator_token, ollama_node.public_id, "pull", {"model": "missing-model", "serve": {}})
    assert response.status_code == 202, response.text
    job, _ = wait_job(server, operator_token, response.json()["id"], finished)
    assert job["status"] == "failed" and job["error"]["code"] == "pull_failed", job
    assert "file does not exist" in job["error"]["message"] and "attempt" not in job["error"]["message"]
    assert job["progress"] == {"status": "pulling manifest", "attempt": 1}  # permanent: never retried
    assert "result" not in job and not NodeModel.objects.filter(model="missing-model").exists()


def test_load_and_unload_reach_the_node_and_are_recorded(server, ollama_sim, ollama_node, operator_token):
    from nodes.models import Node

    node_id = ollama_node.public_id
    response = model_call(server, operator_token, node_id, "load", {"model": "sim-large"})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "object": "node.model", "node": node_id, "model": "sim-large", "action": "load", "models_loaded": ["sim-large"],
    }
    assert loaded(ollama_sim) == ["sim-large"]
    # A public name the node serves is loaded under the backend's own name.
    assert model_call(server, operator_token, node_id, "load", {"model": "small"}).json()["models_loaded"] == ["sim-large", "sim-small"]
    assert loaded(ollama_sim) == ["sim-large", "sim-small"]
    response = model_call(server, operator_token, node_id, "unload", {"model": "sim-large"})
    assert response.status_code == 200 and response.json()["models_loaded"] == ["sim-small"]
    assert loaded(ollama_sim) == ["sim-small"]
    assert Node.objects.get(id=ollama_node.id).models_loaded == ["sim-small"]

    missing = model_call(server, operator_token, node_id, "load", {"model": "nope"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found", missing.text
    assert missing.json()["error"]["param"] == "model" and Node.objects.get(id=ollama_node.id).models_loaded == ["sim-small"]


def test_a_node_that_is_down_answers_502(server, charlie, operator_token):
    from nodes.services import node_register
    from tests.conftest import start_simulator

    sim = start_simulator("--dialect", "ollama")
    node = node_register(operator=charlie.organization, name="gone", base_url=f"{sim.url}/v1", adapter="ollama",
                         models=[{"model": "sim-small"}])
    sim.process.stop()
    for action in ("load", "unload"):
        response = model_call(server, operator_token, node.public_id, action, {"model": "sim-small"})
        assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_unavailable", response.text


def test_backends_without_model_management_say_so(server, charlie, sim, operator_token):
    from nodes.models import Job
    from nodes.services import node_register

    node = node_register(operator=charlie.organization, name="vllm", base_url=f"{sim.url}/v1", adapter="openai",
                         models=[{"model": "sim-small"}])
    for action in ("load", "unload", "pull"):
        response = model_call(server, operator_token, node.public_id, action, {"model": "sim-small"})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "unsupported_operation" and error["type"] == "invalid_request_error"
        assert "not supported" in error["message"] or "cannot pull" in error["message"]
    assert not Job.objects.exists()


def test_other_operators_nodes_and_jobs_are_not_found(server, alice, ollama_sim, ollama_node, operator_token):
    from nodes.services import node_token_create

    dave = make_tenant("dave")
    dave_token = node_token_create(organization=dave.organization)[1]
    node_id = ollama_node.public_id
    for action in ("load", "unload", "pull"):
        for token, target in ((dave_token, node_id), (operator_token, "node_doesnotexist")):
            response = model_call(server, token, target, action, {"model": "sim-small"})
            assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", response.text
    assert loaded(ollama_sim) == []

    job_id = model_call(server, operator_token, node_id, "pull", {"model": PULLED}).json()["id"]
    wait_job(server, operator_token, job_id, finished)
    for token in (dave_token, dave.secret_key, alice.secret_key):
        response = get_job(server, token, job_id)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", response.text
        assert job_id in response.json()["error"]["message"]


def test_api_keys_cannot_manage_models(server, alice, ollama_node):
    for action in ("load", "unload", "pull"):
        for key in (alice.secret_key, alice.publishable_key):
            response = model_call(server, key, ollama_node.public_id, action, {"model": "sim-small"})
            assert response.status_code == 403 and response.json()["error"]["code"] == "permission_denied", response.text
        response = httpx.post(f"{server.api}/nodes/{ollama_node.public_id}/models/{action}", json={"model": "x"})
        assert response.status_code == 401 and response.json()["error"]["code"] == "unauthenticated"


@pytest.mark.parametrize(
    ("action", "body", "param"),
    [
        ("load", {}, "model"),
        ("load", {"model": ""}, "model"),
        ("unload", {"model": "x", "extra": 1}, "extra"),
        ("pull", {"model": "x" * 201}, "model"),
        ("pull", {"model": "x", "serve": "yes"}, "serve"),
        ("pull", {"model": "x", "serve": {"context_window": 0}}, "serve.context_window"),
        ("pull", {"model": "x", "serve": {"input_modalities": ["smell"]}}, "serve.input_modalities"),
    ],
)
def test_bad_bodies_name_the_field(server, ollama_node, operator_token, action, body, param):
    from nodes.models import Job

    response = model_call(server, operator_token, ollama_node.public_id, action, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request" and response.json()["error"]["param"] == param
    assert not Job.objects.exists()


def test_a_project_sees_its_own_jobs_only(server, alice, bob, charlie, operator_token):
    from nodes.jobs import job_create
    from nodes.models import Job

    job = job_create(kind=Job.Kind.IMAGE, project=alice.project, params={"size": "512x512"}, input={"prompt": "a cat"})
    response = get_job(server, alice.secret_key, job.public_id)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["id"], body["status"], body["kind"], body["params"]) == (job.public_id, "queued", "image.generation", {"size": "512x512"})
    assert "a cat" not in response.text  # the sealed input is never shown back
    for token, status, code in (
        (charlie.secret_key, 404, "not_found"),
        (operator_token, 404, "not_found"),
        (alice.publishable_key, 403, "permission_denied"),
        ("sk_live_" + "x" * 38, 401, "invalid_api_key"),
    ):
        response = get_job(server, token, job.public_id)
        assert response.status_code == status and response.json()["error"]["code"] == code, (token, response.text)
    assert httpx.get(f"{server.api}/jobs/{job.public_id}").status_code == 401


def test_jobs_and_model_changes_match_the_document(server, ollama_sim, ollama_node, operator_token):
    from tests.nodes.test_topology import conforms

    change = model_call(server, operator_token, ollama_node.public_id, "load", {"model": "sim-small"}).json()
    conforms(server, change, "NodeModelChange")
    queued = model_call(server, operator_token, ollama_node.public_id, "pull", {"model": PULLED, "serve": {}}).json()
    conforms(server, queued, "Job")
    done, _ = wait_job(server, operator_token, queued["id"], finished)
    conforms(server, done, "Job")


def test_under_eager_celery_a_pull_is_retried_on_its_thread_then_fails(charlie, settings):
    """No broker: the task runs on a job thread of this process, and Celery's eager retries wait their backoff there."""
    from nodes.model_management import model_pull_create
    from nodes.models import Job
    from nodes.services import node_register
    from tests.conftest import start_simulator

    assert settings.CELERY_TASK_ALWAYS_EAGER
    settings.NODE_PULL_MAX_RETRIES, settings.NODE_PULL_RETRY_SECONDS = 1, 1
    sim = start_simulator("--dialect", "ollama")
    node = node_register(operator=charlie.organization, name="flaky", base_url=f"{sim.url}/v1", adapter="ollama",
                         models=[{"model": "sim-small"}])
    sim.process.stop()
    job = model_pull_create(node=node, model=PULLED)
    seen = set()
    deadline = time.monotonic() + 30
    while (job := Job.objects.get(id=job.id)).status not in (Job.Status.SUCCEEDED, Job.Status.FAILED):
        seen.add((job.status, job.progress.get("status"), job.progress.get("attempt")))
        assert time.monotonic() < deadline, seen
        time.sleep(0.02)
    assert ("queued", "retrying", 1) in seen
    assert (job.error_code, job.error_message.endswith("after 2 attempts")) == ("upstream_unavailable", True)
