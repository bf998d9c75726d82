"""A Thox cluster in the registry: one node, its members recorded, its aggregates kept by the health beat.

Against a real simulated cluster (the simulator's thox dialect) and real PostgreSQL.
"""
import dataclasses
import time

import httpx

from nodes.registry import served_models
from tests.conftest import run_async
from tests.nodes.conftest import start_thox_simulator

MIXED = "2x Jetson Orin NX 16GB + 1x Jetson AGX Orin 64GB"


def cluster_node(sim, **fields):
    from nodes.services import node_upsert

    return node_upsert(
        name="stack", base_url=f"{sim.url}/v1", adapter="thox", cluster_url=sim.cluster_url, region="edge-1",
        **{"models": [], **fields},
    )


def members(node) -> dict[str, tuple]:
    return {m.member_id: (m.role, m.status, m.healthy, m.gpus, m.load) for m in node.members.all()}


def models(node) -> list[tuple]:
    return list(node.models.order_by("model").values_list("model", "upstream_model", "context_window", "max_output_tokens"))


def test_a_sync_records_the_members_and_the_aggregates_routing_sees(transactional_db, thox_sim):
    from nodes.clusters import cluster_sync

    # An operator's alias and limits for one model survive; the cluster's other model is added as it is.
    node = cluster_node(thox_sim, models=[{"model": "coder", "upstream_model": "sim-small", "context_window": 2048}])
    thox_sim.configure(member_load={"node-001": 0.2, "node-002": 0.4, "node-003": 0.6})
    httpx.post(f"{thox_sim.cluster_url}/v1/models/load", json={"model": "sim-large", "node": "node-002"}).raise_for_status()

    assert cluster_sync(node=node) is not None
    node.refresh_from_db()
    assert members(node) == {
        "node-001": ("leader", "online", True, 1, 0.2),
        "node-002": ("worker", "online", True, 2, 0.4),
        "node-003": ("worker", "online", True, 1, 0.6),
    }
    assert (node.gpus, node.hardware, node.load, node.models_loaded) == (4, MIXED, 0.4, ["sim-large"])
    assert models(node) == [("coder", "sim-small", 2048, 1024), ("sim-large", "sim-large", 8192, 1024)]
    assert node.members.get(member_id="node-002").name == "thox-002.local"
    assert node.members.get(member_id="node-002").ram_gb == 64 and node.members.get(member_id="node-002").last_seen

    served = {s.model: s.node for s in run_async(served_models())}
    assert set(served) == {"coder", "sim-large"}  # one node, not three
    assert {(t.public_id, t.gpus, t.load) for t in served.values()} == {(node.public_id, 4, 0.4)}


def test_a_member_going_down_updates_the_node_which_stays_healthy(transactional_db, thox_sim):
    from nodes.tasks import check_node_health

    node = cluster_node(thox_sim)
    assert check_node_health() == {node.public_id: True}
    node.refresh_from_db()
    assert (node.gpus, node.hardware) == (4, MIXED)

    thox_sim.configure(members_down=["node-001"], member_load={"node-002": 0.5, "node-003": 0.1})
    assert check_node_health() == {node.public_id: True}  # degraded still serves
    node.refresh_from_db()
    assert (node.gpus, node.load, node.healthy) == (3, 0.3, True)
    assert node.hardware == "1x Jetson AGX Orin 64GB + 1x Jetson Orin NX 16GB (1 of 3 members offline)"
    assert members(node) == {
        "node-001": ("worker", "offline", False, 1, 0.0),
        "node-002": ("leader", "online", True, 2, 0.5),  # the leadership moved
        "node-003": ("worker", "online", True, 1, 0.1),
    }

    thox_sim.reset()
    check_node_health()
    node.refresh_from_db()
    assert (node.gpus, node.hardware, node.load) == (4, MIXED, 0.0)
    assert all(healthy for _, _, healthy, _, _ in members(node).values())


def test_with_every_member_down_the_node_goes_unhealthy_and_keeps_its_models(transactional_db, thox_sim, settings):
    from nodes.tasks import check_node_health

    node = cluster_node(thox_sim)
    check_node_health()
    before = models(node)
    thox_sim.configure(members_down=["node-001", "node-002", "node-003"])
    outcomes = [check_node_health()[node.public_id] for _ in range(settings.NODE_UNHEALTHY_AFTER)]
    assert outcomes == [True] * (settings.NODE_UNHEALTHY_AFTER - 1) + [False]
    node.refresh_from_db()
    assert (node.healthy, node.gpus, node.load) == (False, 0, 1.0)
    assert node.hardware == "(3 of 3 members offline)"
    assert {status for _, status, _, _, _ in members(node).values()} == {"offline"}
    assert models(node) == before  # a power cycle must not erase what the node serves

    thox_sim.reset()
    assert check_node_health() == {node.public_id: True}  # back after one success
    node.refresh_from_db()
    assert (node.healthy, node.gpus) == (True, 4)


def test_an_unreachable_cluster_goes_unhealthy_after_failures_in_a_row_and_back_after_one_success(transactional_db, settings):
    from nodes.tasks import check_node_health

    sim = start_thox_simulator()
    ports = (int(sim.url.rpartition(":")[2]), int(sim.cluster_url.rpartition(":")[2]))
    try:
        node = cluster_node(sim)
        assert check_node_health() == {node.public_id: True}
    finally:
        sim.process.stop()
    outcomes = [check_node_health()[node.public_id] for _ in range(settings.NODE_UNHEALTHY_AFTER)]
    assert outcomes == [True] * (settings.NODE_UNHEALTHY_AFTER - 1) + [False]
    node.refresh_from_db()
    assert node.healthy is False and node.consecutive_failures == settings.NODE_UNHEALTHY_AFTER
    assert len(members(node)) == 3 and node.gpus == 4  # the last thing the cluster said stays on record

    sim = start_thox_simulator(ports=ports)
    try:
        assert check_node_health() == {node.public_id: True}
    finally:
        sim.process.stop()


def test_pulled_models_are_served_after_the_next_beat_and_forgotten_ones_dropped(transactional_db, thox_sim):
    from nodes.tasks import check_node_health

    node = cluster_node(thox_sim)
    check_node_health()
    assert [m for m, *_ in models(node)] == ["sim-large", "sim-small"]
    httpx.post(f"{thox_sim.cluster_url}/v1/models/pull", json={"model": "thox-coder"}).raise_for_status()
    check_node_health()
    assert [m for m, *_ in models(node)] == ["sim-large", "sim-small", "thox-coder"]
    thox_sim.reset()  # the simulator forgets what was pulled
    check_node_health()
    assert [m for m, *_ in models(node)] == ["sim-large", "sim-small"]


def test_a_member_taken_off_the_stack_is_forgotten(transactional_db, thox_sim):
    from nodes.adapters.thox import ThoxAdapter
    from nodes.clusters import cluster_apply
    from nodes.registry import target_for

    node = cluster_node(thox_sim)
    snapshot = run_async(ThoxAdapter(target_for(node)).snapshot())
    cluster_apply(node=node, snapshot=snapshot)
    assert sorted(members(node)) == ["node-001", "node-002", "node-003"]
    cluster_apply(node=node, snapshot=dataclasses.replace(snapshot, members=snapshot.members[:2]))
    node.refresh_from_db()
    assert sorted(members(node)) == ["node-001", "node-002"] and node.gpus == 3


def test_registering_a_cluster_reads_it_once_the_registration_commits(transactional_db, thox_sim, charlie):
    from nodes.models import Node
    from nodes.services import node_register

    node = node_register(
        operator=charlie.organization, name="stack", base_url=f"{thox_sim.url}/v1", adapter="thox",
        cluster_url=thox_sim.cluster_url, models=[],
    )
    deadline = time.monotonic() + 15
    while node.members.count() < 3 and time.monotonic() < deadline:  # a daemon thread (eager Celery) reads it
        time.sleep(0.05)
    node = Node.objects.get(id=node.id)
    assert (node.gpus, node.hardware, node.cluster_url) == (4, MIXED, thox_sim.cluster_url)
    assert [m for m, *_ in models(node)] == ["sim-large", "sim-small"]
    # Registering again with no models keeps what the cluster said it serves, and reads it again.
    read_at = max(m.updated_at for m in node.members.all())
    node_register(operator=charlie.organization, name="stack", base_url=f"{thox_sim.url}/v1", adapter="thox",
                  cluster_url=thox_sim.cluster_url, models=[])
    assert [m for m, *_ in models(node)] == ["sim-large", "sim-small"]
    while node.members.filter(updated_at__gt=read_at).count() < 3 and time.monotonic() < deadline + 15:
        time.sleep(0.05)
    assert node.members.filter(updated_at__gt=read_at).count() == 3


def test_other_nodes_are_not_read_as_clusters(transactional_db, sim):
    from nodes.services import node_upsert
    from nodes.tasks import check_node_health

    node = node_upsert(name="plain", base_url=f"{sim.url}/v1", models=[{"model": "sim-small"}], hardware="2x L4")
    assert check_node_health() == {node.public_id: True}
    node.refresh_from_db()
    assert (node.members.count(), node.gpus, node.hardware, [m for m, *_ in models(node)]) == (0, 2, "2x L4", ["sim-small"])
