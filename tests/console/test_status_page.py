"""The public status page: its components, the node network by region, incidents from the nodes'
health history (a node flipping unhealthy opens one, its heartbeat closes it), no tenant data,
signed out or in, and a cached snapshot so the page cannot hammer the database."""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from console import status
from tests.conftest import SIM_MODEL, run_async
from tests.console.test_views import login

DEAD_URL = "http://127.0.0.1:9/v1"  # nothing listens on the discard port


@pytest.fixture(autouse=True)
def fresh_status():
    status.forget()
    yield
    status.forget()


@pytest.fixture
def operated_node(charlie):
    """A node charlie's organization operates, in eu-9, serving the simulator model name at an
    address nothing answers (so its probes fail)."""
    from nodes.services import node_register

    return node_register(operator=charlie.organization, name="charlies-secret-rack", base_url=DEAD_URL,
                         region="eu-9", models=[{"model": SIM_MODEL}])


def test_signed_out_visitors_see_every_component(client, transactional_db):
    assert reverse("console:status") == "/status/"
    response = client.get("/status/")
    assert response.status_code == 200
    page = response.content.decode()
    for name in ("gateway", "database", "redis", "workers", "nodes"):
        assert f'data-component="{name}"' in page
    snap = client.get("/status.json").json()
    components = {c["name"]: c for c in snap["components"]}
    assert components["gateway"]["status"] == "ok"
    assert components["database"]["status"] == "ok" and components["database"]["latency_ms"] >= 0
    # tests run with REDIS_URL set and Celery eager (no broker)
    assert components["redis"]["status"] == "ok" and "latency_ms" in components["redis"]
    assert components["workers"]["status"] == "info" and "eager" in components["workers"]["detail"]
    assert components["nodes"]["status"] == "down" and snap["regions"] == []  # no node at all


def test_the_view_is_marked_public():
    from console import status_views

    assert status_views.status_page.permission == "public" and status_views.status_json.permission == "public"


def test_redis_unset_reads_embedded_none(settings):
    settings.REDIS_URL = None
    check = status.check_redis()
    assert check["status"] == "info" and check["detail"].startswith("embedded: none")


def test_a_broker_without_workers_is_down(settings):
    settings.CELERY_TASK_ALWAYS_EAGER = False
    from config.celery import app

    original = app.control.ping
    app.control.ping = lambda timeout: []  # a broker nobody consumes from
    try:
        check = status.check_workers()
    finally:
        app.control.ping = original
    assert check["status"] == "down" and check["workers"] == 0


def test_a_node_flipping_unhealthy_opens_an_incident_its_heartbeat_closes(client, charlie, operated_node, settings):
    from nodes.heartbeat import node_heartbeat_record
    from nodes.models import NodeHealthEvent
    from nodes.tasks import check_node_health

    page = client.get("/status/").content.decode()
    assert 'data-region="eu-9"' in page and "1 / 1" in page and 'data-testid="no-incidents"' in page

    outcomes = [check_node_health()[operated_node.public_id] for _ in range(settings.NODE_UNHEALTHY_AFTER)]
    assert outcomes[-1] is False
    # exactly one event: written when the health flipped, not per failed probe
    [event] = NodeHealthEvent.objects.filter(node=operated_node)
    assert event.healthy is False and f"{settings.NODE_UNHEALTHY_AFTER} probes failed" in event.reason
    check_node_health()  # still down: nothing new
    assert NodeHealthEvent.objects.filter(node=operated_node).count() == 1

    status.forget()
    snap = client.get("/status.json").json()
    assert snap["status"] == "degraded"
    [incident] = snap["incidents"]
    assert incident["node"] == operated_node.public_id and incident["region"] == "eu-9" and incident["ongoing"] is True
    assert incident["ended_at"] is None and incident["started_at"] == int(event.at.timestamp())
    assert snap["regions"] == [{"region": "eu-9", "up": 0, "total": 1, "attested": 0, "models": [SIM_MODEL],
                                "nodes": [{"id": operated_node.public_id, "healthy": False, "attestation": "unverified",
                                           "load": 0.0, "models": [SIM_MODEL]}]}]
    page = client.get("/status/").content.decode()
    assert f'data-incident="{operated_node.public_id}" data-ongoing="true"' in page and "ongoing" in page
    assert "0 / 1" in page

    # The node's heartbeat brings it back: the incident ends at that moment.
    from django.utils import timezone

    back = timezone.now()
    run_async(node_heartbeat_record(node_public_id=operated_node.public_id, operator_id=charlie.organization.id,
                                    load=0.25, queue_depth=0, models_loaded=[], now=back))
    events = list(NodeHealthEvent.objects.filter(node=operated_node).order_by("at", "id").values_list("healthy", "reason"))
    assert events == [(False, event.reason), (True, "heartbeat received")]
    status.forget()
    snap = client.get("/status.json").json()
    [incident] = snap["incidents"]
    assert incident["ongoing"] is False and incident["ended_at"] == int(back.timestamp())
    assert incident["duration_seconds"] >= 0
    assert snap["regions"][0]["up"] == 1 and snap["status"] == "ok"
    page = client.get("/status/").content.decode()
    assert 'data-ongoing="true"' not in page and operated_node.public_id in page


def test_silent_heartbeats_and_a_probe_that_answers_again(client, transactional_db, sim, settings):
    """The other flips: a node that stopped sending heartbeats goes down at once (an incident
    saying why), and one successful probe later it is up again (the incident ends)."""
    import datetime as dt

    from django.utils import timezone

    from nodes.models import Node, NodeHealthEvent
    from nodes.services import node_upsert
    from nodes.tasks import check_node_health

    node = node_upsert(name="quiet", base_url=f"{sim.url}/v1", region="test-1", models=[{"model": SIM_MODEL}])
    silent = timezone.now() - dt.timedelta(seconds=settings.NODE_HEARTBEAT_STALE_SECONDS + 1)
    Node.objects.filter(id=node.id).update(last_heartbeat_at=silent)
    assert check_node_health() == {node.public_id: False}
    Node.objects.filter(id=node.id).update(last_heartbeat_at=None)  # heartbeats no longer expected
    assert check_node_health() == {node.public_id: True}
    reasons = list(NodeHealthEvent.objects.filter(node=node).order_by("at", "id").values_list("healthy", "reason"))
    assert reasons == [(False, "heartbeats stopped"), (True, "probe succeeded")]
    [incident] = client.get("/status.json").json()["incidents"]
    assert incident["reason"] == "heartbeats stopped" and incident["ongoing"] is False and incident["ended_at"]


def test_no_tenant_data_on_the_page_signed_in_or_out(client, alice, charlie, operated_node, settings):
    from nodes.tasks import check_node_health

    for _ in range(settings.NODE_UNHEALTHY_AFTER):
        check_node_health()
    status.forget()
    secrets = [charlie.organization.name, charlie.organization.public_id, "charlies-secret-rack", DEAD_URL,
               alice.organization.name, alice.project.public_id, alice.user.email, charlie.user.email]
    signed_out = client.get("/status/").content.decode() + client.get("/status.json").content.decode()
    assert operated_node.public_id in signed_out  # public ids and regions are public, as in GET /v1/nodes
    for secret in secrets:
        assert secret not in signed_out
    login(client, alice)
    signed_in = client.get("/status/").content.decode()
    assert "<h1>Status</h1>" in signed_in
    snap_part = signed_in.split('<main id="main"', 1)[1]  # the header names the signed-in user's own org
    for secret in secrets:
        assert secret not in snap_part


def test_the_checks_are_cached_for_a_few_seconds(client, transactional_db):
    client.get("/status/")  # fills the cache
    with CaptureQueriesContext(connection) as queries:
        for _ in range(20):
            assert client.get("/status/").status_code == 200
            assert client.get("/status.json").status_code == 200
    assert len(queries) == 0
    assert client.get("/status.json")["Cache-Control"] == f"public, max-age={status.STATUS_CACHE_SECONDS}"


def test_a_database_failure_shows_as_down_not_as_an_error(monkeypatch):
    class Broken:
        vendor = "postgresql"

        def cursor(self):
            raise RuntimeError("connection refused")

    monkeypatch.setattr(status, "connection", Broken())
    check = status.check_database()
    assert check["status"] == "down" and "RuntimeError" in check["detail"]


def test_workers_behind_a_broker_answer_the_ping(transactional_db):
    """With a real broker: no worker → down; a worker process started → it answers (the page of a
    separate server process, whose snapshot is cached for a few seconds, so it is polled)."""
    import sys
    import time

    import httpx

    from tests.conftest import Process, server_env, start_server

    broker = "redis://127.0.0.1:6379/11"  # a database of its own: a ping reaches every worker on it
    server = start_server(CELERY_BROKER_URL=broker)
    worker = None
    try:
        def workers() -> dict:
            snap = httpx.get(f"{server.url}/status.json", timeout=10).json()
            return next(c for c in snap["components"] if c["name"] == "workers")

        check = workers()
        assert check["status"] == "down" and check["workers"] == 0, check
        worker = Process(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo", "--loglevel", "INFO",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"status-{time.time_ns()}@%h"],
            env=server_env(CELERY_BROKER_URL=broker),
            ready="ready.",
        )
        deadline = time.monotonic() + 30
        while (check := workers())["status"] != "ok":
            assert time.monotonic() < deadline, check
            time.sleep(0.5)
        assert check["workers"] >= 1 and check["latency_ms"] < 1000
    finally:
        if worker is not None:
            worker.stop()
        server.process.stop()
