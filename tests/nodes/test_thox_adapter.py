"""The Thox adapter against a real process speaking the Thox dialect: the simulator with --dialect thox.

This is the simulator emulating a Thox cluster (our reading of Thox's API), not a Thox device.
"""
import pytest

from nodes.adapters import NodeError, ThoxAdapter, adapter_for
from nodes.adapters.thox import cluster_root
from nodes.registry import NodeTarget
from tests.nodes.conftest import start_thox_simulator


def target(sim, *, credentials: str | None = None, cluster_url: str | None = None) -> NodeTarget:
    return NodeTarget(
        id=1, public_id="node_t", base_url=sim.url + "/v1", adapter="thox", region="edge", attestation="none",
        healthy=True, credentials=credentials, cluster_url=sim.cluster_url if cluster_url is None else cluster_url,
    )


async def test_chat_streams_and_models_go_through_the_inference_api(thox_sim):
    adapter = adapter_for(target(thox_sim))
    assert isinstance(adapter, ThoxAdapter)
    body = {"model": "sim-large", "messages": [{"role": "user", "content": "echo: on the stack"}], "max_tokens": 8}
    answer = await adapter.chat(body)
    assert answer["choices"][0]["message"]["content"] == "on the stack"
    chunks = [c async for c in adapter.chat_stream({**body, "stream": True, "stream_options": {"include_usage": True}})]
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    assert await adapter.list_models() == ["sim-small", "sim-large"]


async def test_health_is_the_cluster_serving_at_all(thox_sim):
    adapter = adapter_for(target(thox_sim))
    assert await adapter.health() is True
    thox_sim.configure(members_down=["node-001", "node-002"])
    assert await adapter.health() is True  # degraded still serves
    thox_sim.configure(members_down=["node-001", "node-002", "node-003"])
    assert await adapter.health() is False


async def test_snapshot_reads_members_roles_and_models(thox_sim):
    thox_sim.configure(members_down=["node-001"], member_load={"node-002": 0.25, "node-003": 0.75})
    await adapter_for(target(thox_sim)).load_model("sim-small", member="node-003")
    snapshot = await adapter_for(target(thox_sim)).snapshot()
    assert (snapshot.cluster_id, snapshot.leader) == ("ms-cluster-sim", "node-002")
    assert [(m.id, m.role, m.status, m.gpus, m.load, m.models_loaded) for m in snapshot.members] == [
        ("node-001", "worker", "offline", 1, 0.0, []),
        ("node-002", "leader", "online", 2, 0.25, []),
        ("node-003", "worker", "online", 1, 0.75, ["sim-small"]),
    ]
    assert [m.id for m in snapshot.online] == ["node-002", "node-003"]
    assert [m.id for m in snapshot.served_models()] == ["sim-small", "sim-large"]
    assert snapshot.members[1].hardware == "Jetson AGX Orin 64GB" and snapshot.members[1].ram_gb == 64
    topology = await adapter_for(target(thox_sim)).topology()
    assert topology.node_count == 3 and topology.leader == "node-002"


async def test_load_and_unload_report_the_members_they_changed(thox_sim):
    adapter = adapter_for(target(thox_sim))
    assert await adapter.load_model("sim-large") == ["node-001", "node-002", "node-003"]
    assert await adapter.unload_model("sim-large", member="node-001") == ["node-001"]
    held = {m.id: m.models_loaded for m in await adapter.members()}
    assert held == {"node-001": [], "node-002": ["sim-large"], "node-003": ["sim-large"]}


async def test_management_errors_say_whether_retrying_can_help(thox_sim):
    adapter = adapter_for(target(thox_sim))
    with pytest.raises(NodeError) as missing:
        await adapter.load_model("no-such-model")
    assert (missing.value.permanent, missing.value.status, missing.value.code) == (True, 404, "model_not_found")
    thox_sim.configure(members_down=["node-002"])
    with pytest.raises(NodeError) as offline:
        await adapter.load_model("sim-small", member="node-002")
    assert (offline.value.permanent, offline.value.status, offline.value.code) == (False, 503, "node_offline")
    thox_sim.configure(members_down=["node-001", "node-002", "node-003"])
    with pytest.raises(NodeError) as down:
        await adapter.unload_model("sim-small")
    assert (down.value.permanent, down.value.status) == (False, 503)
    with pytest.raises(NodeError) as inference:
        await adapter.chat({"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]})
    assert (inference.value.permanent, inference.value.status) == (False, 503)  # fail over to another node


async def test_pull_yields_progress_then_the_model_is_listed_and_servable(thox_sim):
    adapter = adapter_for(target(thox_sim))
    events = [e async for e in adapter.pull_model("thox-coder")]
    assert events[0] == {"status": "pulling manifest"} and events[-1] == {"status": "success"}
    progress = [(e["completed"], e["total"]) for e in events if "completed" in e]
    assert len(progress) >= 2 and progress == sorted(progress) and progress[-1][0] == progress[-1][1]
    assert all(set(e) <= {"status", "completed", "total"} for e in events)
    assert "thox-coder" in await adapter.list_models()
    answer = await adapter.chat({"model": "thox-coder", "messages": [{"role": "user", "content": "echo: pulled"}]})
    assert answer["choices"][0]["message"]["content"] == "pulled"


async def test_a_pull_the_registry_refuses_is_permanent_and_one_that_breaks_is_retryable(thox_sim):
    adapter = adapter_for(target(thox_sim))
    with pytest.raises(NodeError) as refused:
        [e async for e in adapter.pull_model("missing-model")]
    assert (refused.value.permanent, refused.value.status) == (True, 404)

    thox_sim.configure(pull_fail_after=2)
    seen = []
    with pytest.raises(NodeError) as broke:
        async for event in adapter.pull_model("thox-coder"):
            seen.append(event)
    assert broke.value.permanent is False and "download interrupted" in str(broke.value)
    assert [e["status"] for e in seen] == ["pulling manifest", "downloading", "downloading"]
    assert "thox-coder" not in await adapter.list_models()


async def test_both_apis_carry_the_nodes_credentials():
    sim = start_thox_simulator("--api-key", "edge-s3cret")
    try:
        assert await adapter_for(target(sim)).health() is False  # no key: the cluster API answers 401
        with pytest.raises(NodeError):
            await adapter_for(target(sim)).members()
        keyed = adapter_for(target(sim, credentials="edge-s3cret"))
        assert await keyed.health() is True
        assert len(await keyed.members()) == 3
        answer = await keyed.chat({"model": "sim-small", "messages": [{"role": "user", "content": "echo: keyed"}]})
        assert answer["choices"][0]["message"]["content"] == "keyed"
    finally:
        sim.process.stop()


async def test_an_unreachable_cluster_is_unhealthy_and_retryable():
    sim = start_thox_simulator()
    adapter = adapter_for(target(sim))
    try:
        assert await adapter.health() is True
    finally:
        sim.process.stop()
    assert await adapter.health() is False
    with pytest.raises(NodeError) as raised:
        await adapter.snapshot()
    assert raised.value.permanent is False


def test_the_cluster_api_defaults_to_the_inference_host_on_port_5381():
    assert cluster_root("http://10.0.0.5:8080/v1") == "http://10.0.0.5:5381"
    assert cluster_root("https://thox.local:8080/v1") == "https://thox.local:5381"
    assert cluster_root("http://[fd00::5]:8080/v1") == "http://[fd00::5]:5381"
    assert cluster_root("http://10.0.0.5:8080/v1", "http://mgmt.example:9000/") == "http://mgmt.example:9000"
