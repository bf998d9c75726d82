"""The simulator's Thox dialect over HTTP: a cluster API on its own port, next to the OpenAI inference API.

The shapes are our reading of Thox's docs (nodes/nodeserver/thox.py says which parts are public).
"""
import httpx
import orjson

CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "echo: up"}]}


def ndjson(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-ndjson")
    return [orjson.loads(line) for line in response.text.splitlines() if line]


def get(sim, path: str) -> httpx.Response:
    return httpx.get(sim.cluster_url + path)


def test_topology_cluster_and_nodes_describe_the_stack(thox_sim):
    topology = get(thox_sim, "/v1/topology").json()
    assert (topology["cluster_id"], topology["node_count"], topology["leader"]) == ("ms-cluster-sim", 3, "node-001")
    assert [(n["id"], n["role"], n["ram_gb"]) for n in topology["nodes"]] == [
        ("node-001", "leader", 16), ("node-002", "worker", 64), ("node-003", "worker", 16)
    ]
    assert [(link["from"], link["to"], link["up"]) for link in topology["links"]] == [
        ("node-001", "node-002", True), ("node-002", "node-003", True)
    ]
    cluster = get(thox_sim, "/v1/cluster").json()
    assert (cluster["status"], cluster["nodes_online"], cluster["gpus"]) == ("healthy", 3, 4)
    assert [m["id"] for m in cluster["models"]] == ["sim-small", "sim-large"]
    members = get(thox_sim, "/v1/nodes").json()["nodes"]
    assert [(m["id"], m["hardware"], m["gpus"], m["status"]) for m in members] == [
        ("node-001", "Jetson Orin NX 16GB", 1, "online"),
        ("node-002", "Jetson AGX Orin 64GB", 2, "online"),
        ("node-003", "Jetson Orin NX 16GB", 1, "online"),
    ]
    assert get(thox_sim, "/v1/health").json()["status"] == "healthy"


def test_a_member_going_down_degrades_the_cluster_and_moves_the_leader(thox_sim):
    thox_sim.configure(members_down=["node-001"], member_load={"node-002": 0.5})
    health = get(thox_sim, "/v1/health")
    assert health.status_code == 200
    assert health.json() == {
        "status": "degraded", "cluster_id": "ms-cluster-sim", "leader": "node-002", "nodes_total": 3, "nodes_online": 2
    }
    members = {m["id"]: m for m in get(thox_sim, "/v1/nodes").json()["nodes"]}
    assert (members["node-001"]["status"], members["node-002"]["role"], members["node-002"]["load"]) == ("offline", "leader", 0.5)
    assert get(thox_sim, "/v1/cluster").json()["gpus"] == 3
    assert [link["up"] for link in get(thox_sim, "/v1/topology").json()["links"]] == [False, True]
    assert httpx.post(f"{thox_sim.url}/v1/chat/completions", json=CHAT).status_code == 200  # the others still serve


def test_with_every_member_down_the_cluster_is_unhealthy_and_inference_answers_503(thox_sim):
    thox_sim.configure(members_down=["node-001", "node-002", "node-003"])
    health = get(thox_sim, "/v1/health")
    assert health.status_code == 503 and health.json()["status"] == "unhealthy" and health.json()["leader"] is None
    refused = httpx.post(f"{thox_sim.url}/v1/chat/completions", json=CHAT)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "cluster_unavailable"
    pull = httpx.post(f"{thox_sim.cluster_url}/v1/models/pull", json={"model": "tiny"})
    assert pull.status_code == 503
    thox_sim.reset()
    assert get(thox_sim, "/v1/health").json()["status"] == "healthy"
    assert httpx.post(f"{thox_sim.url}/v1/chat/completions", json=CHAT).json()["choices"][0]["message"]["content"] == "up"


def test_load_and_unload_change_what_members_hold_in_memory(thox_sim):
    loaded = httpx.post(f"{thox_sim.cluster_url}/v1/models/load", json={"model": "sim-large"}).json()
    assert loaded == {"model": "sim-large", "status": "loaded", "nodes": ["node-001", "node-002", "node-003"]}
    httpx.post(f"{thox_sim.cluster_url}/v1/models/unload", json={"model": "sim-large", "node": "node-002"}).raise_for_status()
    held = {m["id"]: m["models_loaded"] for m in get(thox_sim, "/v1/nodes").json()["nodes"]}
    assert held == {"node-001": ["sim-large"], "node-002": [], "node-003": ["sim-large"]}
    missing = httpx.post(f"{thox_sim.cluster_url}/v1/models/load", json={"model": "nope"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    thox_sim.configure(members_down=["node-003"])
    offline = httpx.post(f"{thox_sim.cluster_url}/v1/models/load", json={"model": "sim-small", "node": "node-003"})
    assert offline.status_code == 503 and offline.json()["error"]["code"] == "node_offline"
    unknown = httpx.post(f"{thox_sim.cluster_url}/v1/models/load", json={"model": "sim-small", "node": "node-009"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "node_not_found"


def test_pull_streams_progress_distributes_to_online_members_and_serves_until_reset(thox_sim):
    thox_sim.configure(members_down=["node-002"])
    events = ndjson(httpx.post(f"{thox_sim.cluster_url}/v1/models/pull", json={"model": "thox-coder"}))
    assert events[0]["status"] == "pulling manifest" and events[-1]["status"] == "success"
    completed = [e["completed"] for e in events if e["status"] == "downloading"]
    assert len(completed) >= 2 and completed == sorted(completed) and completed[-1] == events[1]["total"]
    assert [e["node"] for e in events if e["status"] == "distributing"] == ["node-001", "node-003"]
    chat = {**CHAT, "model": "thox-coder"}
    assert httpx.post(f"{thox_sim.url}/v1/chat/completions", json=chat).json()["model"] == "thox-coder"
    assert "thox-coder" in [m["id"] for m in get(thox_sim, "/v1/cluster").json()["models"]]
    thox_sim.reset()
    assert httpx.post(f"{thox_sim.url}/v1/chat/completions", json=chat).status_code == 404


def test_a_pull_can_break_mid_download_or_be_refused_up_front(thox_sim):
    thox_sim.configure(pull_fail_after=1)
    events = ndjson(httpx.post(f"{thox_sim.cluster_url}/v1/models/pull", json={"model": "thox-coder"}))
    assert [e["status"] for e in events] == ["pulling manifest", "downloading", "error"]
    assert "thox-coder" not in [m["id"] for m in get(thox_sim, "/v1/cluster").json()["models"]]
    refused = httpx.post(f"{thox_sim.cluster_url}/v1/models/pull", json={"model": "missing-model"})
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"


def test_bad_cluster_settings_are_refused_and_change_nothing(thox_sim):
    for bad in ({"members_down": ["node-404"]}, {"member_load": {"node-001": 2}}, {"pull_fail_after": -1}):
        response = httpx.post(f"{thox_sim.url}/_sim/config", json=bad)
        assert response.status_code == 400, bad
    assert get(thox_sim, "/v1/health").json()["nodes_online"] == 3
    settings = thox_sim.configure(ttft_ms=1, members_down=["node-003"])
    assert (settings["ttft_ms"], settings["members_down"]) == (1, ["node-003"])
