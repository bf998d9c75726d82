"""Platform staff load, unload and pull models from Django admin, through the same services as operators.

The simulator speaks Ollama's dialect in a real process; Celery is eager here, so the pull
job runs on a job thread of this test process and is watched in the database.
"""
from __future__ import annotations

import time

import httpx
import pytest


@pytest.fixture
def admin_client(transactional_db, django_user_model):
    from django.test import Client

    client = Client()
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "pw-rootroot"))
    return client


@pytest.fixture
def ollama_node(charlie, ollama_sim):
    from nodes.services import node_register

    return node_register(operator=charlie.organization, name="ollama-admin", base_url=f"{ollama_sim.url}/v1",
                         adapter="ollama", models=[{"model": "sim-small"}])


def act(client, action: str, nodes, **fields):
    data = {"action": action, "_selected_action": [n.id for n in nodes], **fields}
    return client.post("/admin/nodes/node/", data, follow=True)


def page_text(response) -> str:
    return response.content.decode()


def test_the_action_asks_for_the_model_first(admin_client, ollama_node, ollama_sim):
    response = act(admin_client, "load_model", [ollama_node])
    assert response.status_code == 200 and 'name="model"' in page_text(response) and ollama_node.name in page_text(response)
    assert httpx.get(f"{ollama_sim.url}/api/ps").json()["models"] == []


def test_load_and_unload_from_the_admin_reach_the_node(admin_client, ollama_node, ollama_sim):
    from nodes.models import Node

    response = act(admin_client, "load_model", [ollama_node], apply="1", model="sim-large")
    assert "loaded now: sim-large" in page_text(response)
    assert [m["name"] for m in httpx.get(f"{ollama_sim.url}/api/ps").json()["models"]] == ["sim-large"]
    assert Node.objects.get(id=ollama_node.id).models_loaded == ["sim-large"]
    response = act(admin_client, "unload_model", [ollama_node], apply="1", model="sim-large")
    assert "loaded now: none" in page_text(response) and httpx.get(f"{ollama_sim.url}/api/ps").json()["models"] == []
    response = act(admin_client, "load_model", [ollama_node], apply="1", model="nope")
    assert "load nope failed" in page_text(response) and "not found" in page_text(response)


def test_a_pull_from_the_admin_is_the_same_job(admin_client, ollama_node, ollama_sim):
    from nodes.jobs import job_result
    from nodes.models import Job, NodeModel

    response = act(admin_client, "pull_model", [ollama_node], apply="1", model="tiny:1b", serve="on",
                   served_model="tiny", context_window="2048", max_output_tokens="128")
    job = Job.objects.get()
    assert job.public_id in page_text(response)
    assert (job.kind, job.operator_id, job.node_id) == (Job.Kind.MODEL_PULL, ollama_node.operator_id, ollama_node.id)
    deadline = time.monotonic() + 30
    while job.status not in (Job.Status.SUCCEEDED, Job.Status.FAILED):
        assert time.monotonic() < deadline, job.progress
        time.sleep(0.05)
        job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and job_result(job=job)["served_model"] == "tiny"
    assert NodeModel.objects.get(node=ollama_node, model="tiny").context_window == 2048

    listing = page_text(admin_client.get("/admin/nodes/job/"))
    assert job.public_id in listing and "success 100%" in listing
    assert admin_client.get(f"/admin/nodes/job/{job.id}/change/").status_code == 200


def test_pulls_the_admin_cannot_run_say_why(admin_client, sim):
    from nodes.models import Job
    from nodes.services import node_upsert

    no_operator = node_upsert(name="staff-added", base_url=f"{sim.url}/v1", adapter="ollama", models=[{"model": "m"}])
    openai = node_upsert(name="vllm", base_url=f"{sim.url}/v1", adapter="openai", models=[{"model": "m"}])
    text = page_text(act(admin_client, "pull_model", [no_operator, openai], apply="1", model="tiny:1b"))
    assert "no operator organization to own the pull job" in text and "cannot pull models" in text
    assert not Job.objects.exists()
