"""A node's upstream credentials: sealed at rest, sent as Authorization, never shown."""
import httpx
import pytest

from billing.services import price_publish
from nodes import registry
from nodes.services import node_credentials_set, node_upsert
from tests.conftest import SIM_MODEL, SIM_PRICE, cache_settle, run_async, start_simulator

BODY = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "echo: guarded"}], "max_tokens": 5}


@pytest.fixture
def guarded():
    sim = start_simulator("--api-key", "upstream-s3cret")
    yield sim
    sim.process.stop()


def test_credentials_reach_a_protected_upstream_and_nowhere_else(server, alice, guarded):
    from console.services import project_update

    project_update(project=alice.project, allow_non_confidential=True)  # a hosted upstream has no attestation
    node = node_upsert(name="hosted", base_url=f"{guarded.url}/v1", region="test-1",
                       models=[{"model": SIM_MODEL, "context_window": 8192, "max_output_tokens": 256}])
    price_publish(model=SIM_MODEL, **SIM_PRICE)
    cache_settle()
    refused = httpx.post(f"{server.api}/chat/completions", headers=alice.auth(), json=BODY, timeout=30)
    assert refused.status_code == 502 and refused.json()["error"]["code"] == "upstream_unavailable"

    node_credentials_set(node=node, credentials="upstream-s3cret")
    cache_settle()
    served = httpx.post(f"{server.api}/chat/completions", headers=alice.auth(), json=BODY, timeout=30)
    assert served.status_code == 200, served.text
    assert served.json()["choices"][0]["message"]["content"] == "guarded"
    assert "upstream-s3cret" not in served.text
    node.refresh_from_db()
    assert b"upstream-s3cret" not in bytes(node.credentials)  # sealed at rest
    listed = httpx.get(f"{server.api}/nodes", headers=alice.auth())
    assert listed.status_code == 200 and "upstream-s3cret" not in listed.text

    [served_model] = run_async(registry.served_models())
    assert served_model.node.credentials == "upstream-s3cret" and "s3cret" not in repr(served_model)


def test_health_probes_mark_a_node_down_after_failures_in_a_row_and_up_after_one_success(
    transactional_db, guarded, settings
):
    from nodes.models import Node
    from nodes.services import node_credentials_set
    from nodes.tasks import check_node_health

    node = node_upsert(name="hosted", base_url=f"{guarded.url}/v1", region="test-1",
                       models=[{"model": SIM_MODEL, "context_window": 8192, "max_output_tokens": 256}])
    node_credentials_set(node=node, credentials="upstream-s3cret")
    assert check_node_health() == {node.public_id: True}  # the probe carries the node's credentials

    node_credentials_set(node=node, credentials="wrong")  # now every probe fails
    outcomes = [check_node_health()[node.public_id] for _ in range(settings.NODE_UNHEALTHY_AFTER)]
    assert outcomes == [True] * (settings.NODE_UNHEALTHY_AFTER - 1) + [False]
    assert Node.objects.get(id=node.id).consecutive_failures == settings.NODE_UNHEALTHY_AFTER

    node_credentials_set(node=node, credentials="upstream-s3cret")
    assert check_node_health() == {node.public_id: True}
    assert Node.objects.get(id=node.id).consecutive_failures == 0


def test_a_node_whose_heartbeats_stopped_is_unhealthy(transactional_db, sim, settings):
    import datetime as dt

    from django.utils import timezone

    from nodes.models import Node
    from nodes.tasks import check_node_health

    node = node_upsert(name="quiet", base_url=f"{sim.url}/v1", region="test-1",
                       models=[{"model": SIM_MODEL, "context_window": 8192, "max_output_tokens": 256}])
    Node.objects.filter(id=node.id).update(last_heartbeat_at=timezone.now())
    assert check_node_health() == {node.public_id: True}
    silent = timezone.now() - dt.timedelta(seconds=settings.NODE_HEARTBEAT_STALE_SECONDS + 1)
    Node.objects.filter(id=node.id).update(last_heartbeat_at=silent)
    assert check_node_health() == {node.public_id: False}  # it answers probes, but stopped reporting
