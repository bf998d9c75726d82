"""A Thox cluster end to end: an operator registers it, the gateway serves a project's chat through it,
and projects see it as one node (gpus, load, models), never its members.

Real processes: the uvicorn server, the simulated cluster (--dialect thox), PostgreSQL, Redis.
"""
import time

import httpx
import pytest

from tests.conftest import SIM_PRICE, attest, cache_settle

MODEL = "sim-small"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "echo: from the edge"}], "max_tokens": 8}
# What only an operator may see of a cluster: its members, their hosts and hardware, its APIs.
MEMBER_DETAILS = ("node-00", "thox-00", "Jetson", "members", "leader", "127.0.0.1", "base_url", "cluster_url")


@pytest.fixture
def operator_token(charlie):
    from nodes.services import node_token_create

    _, plaintext = node_token_create(organization=charlie.organization, name="edge tokens")
    return plaintext


def register(server, token: str, sim) -> dict:
    body = {"name": "edge-stack", "base_url": f"{sim.url}/v1", "adapter": "thox", "cluster_url": sim.cluster_url,
            "region": "edge-1"}
    response = httpx.post(f"{server.api}/nodes/register", headers={"Authorization": f"Bearer {token}"}, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def attested(public_id: str) -> None:
    """A cluster registers unverified; its inference API attests like any node (the simulator's test identity)."""
    from nodes.models import Node

    attest(Node.objects.get(public_id=public_id))
    cache_settle()


def wait_for_members(public_id: str, count: int = 3):
    from nodes.models import Node, NodeMember

    deadline = time.monotonic() + 15
    while NodeMember.objects.filter(node__public_id=public_id).count() < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return Node.objects.get(public_id=public_id)


def listed(server, tenant) -> httpx.Response:
    response = httpx.get(f"{server.api}/nodes", headers=tenant.auth())
    assert response.status_code == 200, response.text
    return response


def test_a_cluster_serves_chat_and_projects_see_it_once_without_its_members(
    server, alice, charlie, thox_sim, operator_token, allowed_measurement
):
    from billing.services import price_publish
    from nodes.tasks import check_node_health

    registered = register(server, operator_token, thox_sim)
    assert (registered["adapter"], registered["cluster_url"], registered["models"]) == ("thox", thox_sim.cluster_url, [])
    node = wait_for_members(registered["id"])  # read by the server process once the registration committed
    assert (node.gpus, node.models.count()) == (4, 2)

    attested(registered["id"])
    price_publish(model=MODEL, **SIM_PRICE)
    cache_settle()

    response = httpx.post(f"{server.api}/chat/completions", headers=alice.auth(), json=CHAT, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "from the edge"
    assert (response.headers["x-node-id"], response.headers["x-node-attestation"]) == (registered["id"], "verified")
    assert thox_sim.stats()["completed"] == 1

    nodes = listed(server, alice)
    [entry] = nodes.json()["data"]
    assert entry.pop("public_keys")["signing"]  # the cluster's attested keys
    assert entry == {"id": registered["id"], "region": "edge-1", "attestation": "verified", "gpus": 4, "load": 0.0,
                     "models": [MODEL]}
    for detail in MEMBER_DETAILS:
        assert detail not in nodes.text, detail
    # Another tenant sees the same one node, and no more of it.
    assert [n["id"] for n in listed(server, charlie).json()["data"]] == [registered["id"]]

    # A member goes down: the next health beat updates what projects see, and the cluster keeps serving.
    thox_sim.configure(members_down=["node-002"], member_load={"node-001": 0.5, "node-003": 0.25})
    assert check_node_health() == {registered["id"]: True}
    cache_settle()
    [entry] = listed(server, alice).json()["data"]
    assert (entry["gpus"], entry["load"]) == (2, 0.375)
    again = httpx.post(f"{server.api}/chat/completions", headers=alice.auth(), json=CHAT, timeout=30)
    assert again.status_code == 200 and again.headers["x-node-id"] == registered["id"]

    # Its operator sees the members (registering again is idempotent and answers with the node).
    operator_view = register(server, operator_token, thox_sim)
    assert operator_view["id"] == registered["id"] and operator_view["models"] != []
    assert [(m["id"], m["role"], m["status"], m["gpus"]) for m in operator_view["members"]] == [
        ("node-001", "leader", "online", 1), ("node-002", "worker", "offline", 2), ("node-003", "worker", "online", 1)
    ]


def test_a_cluster_with_no_member_online_drops_out_after_failed_probes(
    server, alice, thox_sim, operator_token, settings, allowed_measurement
):
    from billing.services import price_publish
    from nodes.tasks import check_node_health

    registered = register(server, operator_token, thox_sim)
    wait_for_members(registered["id"])
    attested(registered["id"])
    price_publish(model=MODEL, **SIM_PRICE)
    cache_settle()
    assert [n["id"] for n in listed(server, alice).json()["data"]] == [registered["id"]]

    thox_sim.configure(members_down=["node-001", "node-002", "node-003"])
    for _ in range(settings.NODE_UNHEALTHY_AFTER):
        check_node_health()
    cache_settle()
    assert listed(server, alice).json()["data"] == []
    refused = httpx.post(f"{server.api}/chat/completions", headers=alice.auth(), json=CHAT, timeout=30)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "no_nodes_available"

    thox_sim.reset()
    assert check_node_health() == {registered["id"]: True}
    cache_settle()
    assert [n["id"] for n in listed(server, alice).json()["data"]] == [registered["id"]]


def test_registrations_name_what_is_wrong(server, sim, operator_token):
    headers = {"Authorization": f"Bearer {operator_token}"}
    base = {"name": "n", "base_url": f"{sim.url}/v1", "region": "edge-1"}
    for body, param in [
        ({**base, "adapter": "openai"}, "models"),  # only a cluster may leave its models to discovery
        ({**base, "adapter": "thox", "cluster_url": "ftp://x"}, "cluster_url"),
        ({**base, "adapter": "openai", "models": [{"model": MODEL}], "cluster_url": "http://10.0.0.5:5381"}, "cluster_url"),
    ]:
        response = httpx.post(f"{server.api}/nodes/register", headers=headers, json=body)
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text
