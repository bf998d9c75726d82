"""Operators register nodes and push heartbeats with node tokens; projects list the nodes that may serve them."""
from __future__ import annotations

import time

import httpx
from django.conf import settings
import pytest

from tests.conftest import SIM_PRICE, cache_settle, start_simulator

MODEL = "sim-large"
SECRET = "upstream-secret-7f3a9c"


@pytest.fixture
def operator_token(charlie):
    from nodes.services import node_token_create

    _, plaintext = node_token_create(organization=charlie.organization, name="rack tokens")
    return plaintext


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def registration(sim, name: str = "rack-1", **fields) -> dict:
    return {
        "name": name,
        "base_url": f"{sim.url}/v1",
        "adapter": "openai",
        "region": "eu-1",
        "hardware": "8x H100",
        "models": [{"model": MODEL, "context_window": 8192, "max_output_tokens": 256}],
        "credentials": SECRET,
        **fields,
    }


def register(server, token: str, body: dict) -> dict:
    response = httpx.post(f"{server.api}/nodes/register", headers=bearer(token), json=body)
    assert response.status_code == 200, response.text
    return response.json()


def heartbeat(server, token: str, node_id: str, **body) -> httpx.Response:
    return httpx.post(f"{server.api}/nodes/{node_id}/heartbeat", headers=bearer(token), json=body)


def attested(node_id: str, timeout: float = 15.0):
    """The node's first attestation, which registering queued (the server process runs it on commit)."""
    from nodes.models import Attestation

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = Attestation.objects.filter(node__public_id=node_id).exclude(result="pending").order_by("id").first()
        if done is not None:
            cache_settle()
            return done
        time.sleep(0.05)
    raise AssertionError(f"node {node_id} was never attested")


def list_nodes(server, tenant) -> httpx.Response:
    return httpx.get(f"{server.api}/nodes", headers=tenant.auth())


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def chat_node(server, tenant) -> str:
    response = httpx.post(
        f"{server.api}/chat/completions",
        headers=tenant.auth(),
        json=CHAT,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.headers["x-node-id"]


def test_a_registered_node_is_attested_listed_once_priced_and_serves_traffic(
    server, alice, sim, operator_token, allowed_measurement
):
    from billing.services import price_publish
    from nodes.models import Node

    node = register(server, operator_token, registration(sim))
    assert node["id"].startswith("node_") and node["object"] == "node"
    assert (node["status"], node["attestation"], node["gpus"], node["has_credentials"]) == ("active", "unverified", 8, True)
    assert "credentials" not in node and SECRET not in str(node)
    assert attested(node["id"]).result == "verified"  # registering queued the first attestation
    again = register(server, operator_token, registration(sim, region="eu-2"))
    assert again["id"] == node["id"] and again["attestation"] == "verified"  # idempotent by name; keeps what it earned
    assert Node.objects.get().region == "eu-2"

    cache_settle()
    assert list_nodes(server, alice).json() == {"object": "list", "data": []}  # not priced yet: never served unbilled

    price_publish(model=MODEL, **SIM_PRICE)
    cache_settle()
    listed = list_nodes(server, alice)
    assert listed.status_code == 200
    keys = Node.objects.get().signing_key, Node.objects.get().encryption_key
    assert all(keys)
    assert listed.json() == {
        "object": "list",
        "data": [{"id": node["id"], "region": "eu-2", "attestation": "verified", "gpus": 8, "load": 0.0, "models": [MODEL],
                  "public_keys": {"signing": keys[0], "encryption": keys[1]}}],
    }
    for secret in (sim.url, "127.0.0.1", SECRET, "nt_live_", "credentials", "base_url", "operator"):
        assert secret not in listed.text

    assert chat_node(server, alice) == node["id"]


def test_a_registered_node_that_fails_attestation_serves_nobody(server, alice, operator_token, allowed_measurement):
    from billing.services import price_publish

    forged = start_simulator(attestation="forged")
    try:
        price_publish(model=MODEL, **SIM_PRICE)
        node = register(server, operator_token, registration(forged))
        failed = attested(node["id"])
        assert (failed.result, failed.reason) == ("failed", "untrusted_chain")
        assert list_nodes(server, alice).json()["data"] == []
        refused = httpx.post(f"{server.api}/chat/completions", headers=alice.auth(), json=CHAT, timeout=30)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "no_nodes_available"
        assert refused.headers["retry-after"].isdigit()
        assert forged.stats()["requests"] == 0 and forged.stats()["attestations"] == 1
    finally:
        forged.process.stop()


def test_credentials_are_stored_sealed(server, sim, operator_token):
    from nodes.models import Node
    from nodes.services import node_credentials, node_credentials_set

    register(server, operator_token, registration(sim))
    node = Node.objects.get()
    assert SECRET.encode() not in bytes(node.credentials)
    assert node_credentials(node=node) == SECRET
    # Bound to the node: the same blob under another node's id does not open.
    other = Node.objects.create(name="other", base_url="http://10.0.0.1/v1")
    Node.objects.filter(id=other.id).update(credentials=node.credentials)
    with pytest.raises(Exception):
        node_credentials(node=other)
    node_credentials_set(node=node, credentials=None)
    assert node_credentials(node=node) is None


def test_heartbeats_record_load_and_the_router_prefers_the_least_loaded_node(
    server, alice, sim, operator_token, allowed_measurement
):
    from billing.services import price_publish
    from nodes.models import Node

    price_publish(model=MODEL, **SIM_PRICE)
    a = register(server, operator_token, registration(sim, "rack-a"))["id"]
    b = register(server, operator_token, registration(sim, "rack-b"))["id"]
    assert attested(a).result == attested(b).result == "verified"

    response = heartbeat(server, operator_token, a, load=0.9, queue_depth=12, models_loaded=[MODEL])
    assert response.status_code == 200, response.text
    assert response.json()["id"] == a and response.json()["healthy"] is True
    assert heartbeat(server, operator_token, b, load=0.1).status_code == 200
    node = Node.objects.get(public_id=a)
    assert (node.load, node.queue_depth, node.models_loaded) == (0.9, 12, [MODEL])
    assert node.last_heartbeat_at is not None
    assert {n["id"]: n["load"] for n in list_nodes(server, alice).json()["data"]} == {a: 0.9, b: 0.1}
    assert {chat_node(server, alice) for _ in range(4)} == {b}

    assert heartbeat(server, operator_token, a, load=0.05).status_code == 200
    assert heartbeat(server, operator_token, b, load=0.95).status_code == 200
    assert {chat_node(server, alice) for _ in range(4)} == {a}


def test_a_heartbeat_brings_an_unhealthy_node_back(server, alice, sim, operator_token, allowed_measurement):
    from billing.services import price_publish
    from nodes.models import Node
    from nodes.services import node_record_health

    price_publish(model=MODEL, **SIM_PRICE)
    node_id = register(server, operator_token, registration(sim))["id"]
    assert attested(node_id).result == "verified"
    for _ in range(settings.NODE_UNHEALTHY_AFTER):  # failed probes in a row
        node_record_health(node=Node.objects.get(public_id=node_id), healthy=False)
    cache_settle()
    assert list_nodes(server, alice).json()["data"] == []
    assert heartbeat(server, operator_token, node_id, load=0.2).status_code == 200
    cache_settle()
    assert [n["id"] for n in list_nodes(server, alice).json()["data"]] == [node_id]
    node = Node.objects.get(public_id=node_id)
    assert node.healthy and node.consecutive_failures == 0


def test_another_operators_node_is_not_found(server, alice, sim, operator_token):
    from nodes.services import node_token_create

    node_id = register(server, operator_token, registration(sim))["id"]
    _, alice_token = node_token_create(organization=alice.organization)
    for token, target in ((alice_token, node_id), (operator_token, "node_doesnotexist")):
        response = heartbeat(server, token, target, load=0.5)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    # Registering the same name under another operator makes a node of its own.
    assert register(server, alice_token, registration(sim))["id"] != node_id


def test_bad_or_revoked_tokens_are_refused(server, alice, sim, operator_token):
    from console import keys
    from nodes.models import NodeToken
    from nodes.services import node_token_revoke

    node_id = register(server, operator_token, registration(sim))["id"]
    unknown = keys.generate(keys.NODE_TOKEN).plaintext
    for token in ("nt_live_short", unknown, operator_token[:-1] + ("A" if operator_token[-1] != "A" else "B")):
        response = httpx.post(f"{server.api}/nodes/register", headers=bearer(token), json=registration(sim))
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.post(f"{server.api}/nodes/register", json=registration(sim)).status_code == 401

    node_token_revoke(token=NodeToken.objects.get())
    response = heartbeat(server, operator_token, node_id, load=0.1)
    assert response.status_code == 401 and "revoked" in response.json()["error"]["message"]
    assert httpx.post(f"{server.api}/nodes/register", headers=bearer(operator_token), json=registration(sim)).status_code == 401


def test_api_keys_cannot_manage_nodes_and_node_tokens_are_no_api_keys(server, alice, sim, operator_token):
    node_id = register(server, operator_token, registration(sim))["id"]
    for key in (alice.secret_key, alice.publishable_key):
        response = httpx.post(f"{server.api}/nodes/register", headers=bearer(key), json=registration(sim))
        assert response.status_code == 403, response.text
        assert heartbeat(server, key, node_id, load=0.1).status_code == 403
    for method, path in (("GET", "/nodes"), ("GET", "/models"), ("POST", "/chat/completions")):
        response = httpx.request(method, f"{server.api}{path}", headers=bearer(operator_token), json={})
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key", path


def test_publishable_keys_cannot_list_nodes(server, alice):
    response = httpx.get(f"{server.api}/nodes", headers={**alice.auth(alice.publishable_key), "Origin": "https://app.alice.example"})
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"base_url": "ftp://10.0.0.1"}, "base_url"),
        ({"adapter": "carrier-pigeon"}, "adapter"),
        ({"models": []}, "models"),
        ({"models": [{"model": MODEL, "input_modalities": ["video"]}]}, "models"),
        ({"models": [{"model": MODEL}, {"model": MODEL}]}, "models"),
        ({"models": [{"model": MODEL, "context_window": 0}]}, "models.0.context_window"),
        ({"gpus": -1}, "gpus"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_registrations_name_the_field(server, sim, operator_token, change, param):
    from nodes.models import Node

    response = httpx.post(f"{server.api}/nodes/register", headers=bearer(operator_token), json=registration(sim, **change))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert not Node.objects.exists()


@pytest.mark.parametrize(("body", "param"), [({"load": 1.5}, "load"), ({}, "load"), ({"load": 0.1, "queue_depth": -1}, "queue_depth")])
def test_bad_heartbeats_name_the_field(server, sim, operator_token, body, param):
    node_id = register(server, operator_token, registration(sim))["id"]
    response = heartbeat(server, operator_token, node_id, **body)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_gpus_come_from_the_hardware_when_not_given():
    from nodes.services import gpus_from_hardware

    assert [gpus_from_hardware(h) for h in ("8x H100", "2 x A100 80GB", "H100", "")] == [8, 2, 0, 0]
