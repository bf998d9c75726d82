"""The console's nodes page: an operator organization's nodes and jobs, with progress that refreshes itself."""
from __future__ import annotations

import time

import pytest

from tests.console.test_views import login
from tests.nodes.conftest import ollama_process, ollama_sim  # noqa: F401  (the Ollama-dialect simulator)


@pytest.fixture
def ollama_node(charlie, ollama_sim):
    from nodes.services import node_register

    return node_register(operator=charlie.organization, name="rack-ollama", base_url=f"{ollama_sim.url}/v1",
                         adapter="ollama", region="eu-1", hardware="1x L4", models=[{"model": "sim-small"}])


def nodes_url(tenant) -> str:
    return f"/console/orgs/{tenant.organization.public_id}/nodes/"


def test_the_page_lists_the_nodes_and_follows_a_running_job(client, charlie, ollama_node):
    from nodes import jobs
    from nodes.models import Job

    job = jobs.job_create(kind=Job.Kind.MODEL_PULL, operator=charlie.organization, node=ollama_node, params={"model": "tiny:1b"})
    jobs.job_start(job=job)
    jobs.job_progress(job=job, progress={"status": "pulling 0a1b2c", "completed": 25, "total": 100, "attempt": 2})
    login(client, charlie)
    page = client.get(nodes_url(charlie)).content.decode()
    assert "rack-ollama" in page and ollama_node.public_id in page and "eu-1" in page and "1x L4" in page
    assert "<code>sim-small</code>" in page and ollama_node.base_url not in page
    assert job.public_id in page and "tiny:1b" in page and "pulling 0a1b2c 25% (attempt 2)" in page
    assert 'value="25"' in page and 'data-active="true"' in page
    fragment_url = f"{nodes_url(charlie)}jobs"
    assert f'data-url="{fragment_url}"' in page

    jobs.job_finish(job=job, status=Job.Status.FAILED, error_code="upstream_unavailable", error_message="gone after 3 attempts")
    fragment = client.get(fragment_url).content.decode()
    assert "<html" not in fragment and job.public_id in fragment
    assert "failed" in fragment and "upstream_unavailable" in fragment and 'data-active="false"' in fragment


def test_a_real_pull_shows_up_finished(client, charlie, ollama_node):
    from nodes.model_management import model_pull_create
    from nodes.models import Job

    job = model_pull_create(node=ollama_node, model="tiny:1b")  # eager Celery: a job thread of this process
    deadline = time.monotonic() + 30
    while (job := Job.objects.get(id=job.id)).status not in (Job.Status.SUCCEEDED, Job.Status.FAILED):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    login(client, charlie)
    fragment = client.get(f"{nodes_url(charlie)}jobs").content.decode()
    assert job.public_id in fragment and "succeeded" in fragment and "success 100%" in fragment


def test_only_members_who_run_infrastructure_see_it(client, alice, bob, charlie, ollama_node, django_user_model):
    from console import services
    from console.models import Role

    assert client.get(nodes_url(charlie)).status_code == 302  # login first
    login(client, alice)
    assert client.get(nodes_url(charlie)).status_code == 404
    assert client.get(f"{nodes_url(charlie)}jobs").status_code == 404
    own = client.get(nodes_url(alice))
    assert own.status_code == 200 and "No nodes yet" in own.content.decode() and "rack-ollama" not in own.content.decode()
    login(client, bob)  # a developer of alice's organization
    assert client.get(nodes_url(alice)).status_code == 200
    finance = django_user_model.objects.create_user(username="fin", email="fin@example.com", password="pw-finfin")
    services.membership_add(organization=charlie.organization, user=finance, role=Role.FINANCE)
    assert client.login(username="fin", password="pw-finfin")
    assert client.get(nodes_url(charlie)).status_code == 404


def test_the_dashboard_links_to_the_nodes_page(client, charlie):
    login(client, charlie)
    assert nodes_url(charlie) in client.get("/console/").content.decode()
