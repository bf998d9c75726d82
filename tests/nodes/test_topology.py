"""GET /v1/nodes/topology and /v1/nodes/health: an operator sees its own nodes in full (never
credentials); a project sees the network eligible to serve it, with nothing of the operators'."""
from __future__ import annotations

import datetime as dt

import httpx
import pytest
from django.utils import timezone

from tests.conftest import SIM_PRICE, attest, cache_settle, make_tenant

SECRET = "operator-upstream-secret-91c2"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def network(charlie, sim, allowed_measurement):
    """charlie operates three nodes in two regions; dave operates one; one model is priced."""
    from billing.services import price_publish
    from nodes.models import Node
    from nodes.services import node_register, node_set_status, node_token_create

    def add(operator, name, region, models, **fields):
        return node_register(operator=operator, name=name, base_url=f"{sim.url}/v1", region=region,
                             models=[{"model": m} for m in models], credentials=SECRET, **fields)

    eu_a = add(charlie.organization, "eu-a", "eu-1", ["sim-small", "sim-large"], hardware="8x H100")
    eu_b = add(charlie.organization, "eu-b", "eu-1", ["sim-small"])
    us_a = add(charlie.organization, "us-a", "us-1", ["sim-small"], hardware="2x A100")
    dave = make_tenant("dave")
    other = add(dave.organization, "dave-1", "ap-1", ["sim-small"])
    for node in (eu_a, eu_b, us_a, other):
        attest(node)
    Node.objects.filter(id=eu_a.id).update(
        load=0.25, queue_depth=3, models_loaded=["sim-small"], last_heartbeat_at=timezone.now() - dt.timedelta(seconds=5)
    )
    Node.objects.filter(id=eu_b.id).update(healthy=False, consecutive_failures=4, last_health_at=timezone.now())
    node_set_status(node=us_a, status=Node.Status.DISABLED)
    price_publish(model="sim-small", **SIM_PRICE)
    cache_settle()
    return {
        "token": node_token_create(organization=charlie.organization)[1],
        "dave_token": node_token_create(organization=dave.organization)[1],
        "eu_a": eu_a.public_id, "eu_b": eu_b.public_id, "us_a": us_a.public_id, "other": other.public_id,
    }


def get(server, path: str, token: str) -> httpx.Response:
    return httpx.get(f"{server.api}/nodes/{path}", headers=bearer(token), timeout=10)


def test_an_operator_sees_its_own_nodes_by_region_in_full(server, sim, network):
    response = get(server, "topology", network["token"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["object"], body["scope"]) == ("node.topology", "operator")
    assert [(r["region"], [n["id"] for n in r["nodes"]]) for r in body["regions"]] == [
        ("eu-1", [network["eu_a"], network["eu_b"]]), ("us-1", [network["us_a"]]),
    ]
    eu_a, eu_b = body["regions"][0]["nodes"]
    assert eu_a["name"] == "eu-a" and eu_a["base_url"] == f"{sim.url}/v1" and eu_a["adapter"] == "openai"
    assert (eu_a["hardware"], eu_a["gpus"], eu_a["status"], eu_a["healthy"]) == ("8x H100", 8, "active", True)
    assert eu_a["attestation"] == "verified" and eu_a["attestation_expires_at"] > eu_a["last_heartbeat_at"]
    assert (eu_a["load"], eu_a["queue_depth"]) == (0.25, 3)
    assert eu_a["models"] == {"served": ["sim-large", "sim-small"], "loaded": ["sim-small"]}
    assert eu_a["members"] == [] and eu_a["consecutive_failures"] == 0
    assert (eu_b["healthy"], eu_b["consecutive_failures"], eu_b["last_heartbeat_at"]) == (False, 4, None)
    assert eu_b["last_probe_at"] is not None
    assert body["regions"][1]["nodes"][0]["status"] == "disabled"
    assert network["other"] not in response.text and SECRET not in response.text and "credentials" not in response.text


def test_an_operator_sees_the_health_of_its_nodes_with_counts(server, network):
    response = get(server, "health", network["token"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["object"], body["scope"], body["nodes"], body["healthy"], body["unhealthy"]) == ("node.health", "operator", 3, 2, 1)
    eu, us = body["regions"]
    assert (eu["region"], eu["healthy"], eu["unhealthy"]) == ("eu-1", 1, 1)
    assert (us["region"], us["healthy"], us["unhealthy"]) == ("us-1", 1, 0)
    node = eu["nodes"][1]
    assert set(node) == {
        "id", "name", "status", "healthy", "attestation", "attestation_expires_at", "load", "queue_depth",
        "last_heartbeat_at", "last_probe_at", "consecutive_failures", "members",
    }
    assert (node["id"], node["healthy"], node["consecutive_failures"]) == (network["eu_b"], False, 4)

    dave = get(server, "health", network["dave_token"]).json()
    assert [n["id"] for r in dave["regions"] for n in r["nodes"]] == [network["other"]]


def test_a_project_sees_the_eligible_network_and_nothing_of_the_operators(server, alice, sim, network):
    response = get(server, "topology", alice.secret_key)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["object"], body["scope"]) == ("node.topology", "project")
    # Active, attested, serving a priced model: the disabled us-a is not part of the network.
    eu = [
        {"id": network["eu_a"], "healthy": True, "attestation": "verified", "load": 0.25, "gpus": 8, "models": ["sim-small"]},
        {"id": network["eu_b"], "healthy": False, "attestation": "verified", "load": 0.0, "gpus": 0, "models": ["sim-small"]},
    ]
    assert body["regions"] == [
        {"region": "ap-1", "nodes": [
            {"id": network["other"], "healthy": True, "attestation": "verified", "load": 0.0, "gpus": 0, "models": ["sim-small"]},
        ]},
        {"region": "eu-1", "nodes": sorted(eu, key=lambda n: n["id"])},  # by region, then id
    ]
    health = get(server, "health", alice.secret_key).json()
    assert (health["scope"], health["nodes"], health["healthy"], health["unhealthy"]) == ("project", 3, 2, 1)
    assert [(r["region"], r["healthy"], r["unhealthy"]) for r in health["regions"]] == [("ap-1", 1, 0), ("eu-1", 1, 1)]
    assert all(set(n) == {"id", "healthy", "attestation", "load"} for r in health["regions"] for n in r["nodes"])
    for text in (response.text, get(server, "health", alice.secret_key).text):
        for secret in (sim.url, "127.0.0.1", SECRET, "base_url", "operator", "eu-a", "H100", "credentials", "name"):
            assert secret not in text


def test_an_unattested_node_is_not_part_of_a_projects_network(server, alice, network):
    from nodes.models import Node
    from nodes.services import _changed

    Node.objects.filter(public_id=network["eu_a"]).update(attestation=Node.Attestation.UNVERIFIED)
    _changed()
    cache_settle()
    ids = [n["id"] for r in get(server, "topology", alice.secret_key).json()["regions"] for n in r["nodes"]]
    assert sorted(ids) == sorted([network["other"], network["eu_b"]])
    # Its operator still sees it, unverified.
    mine = {n["id"]: n for r in get(server, "topology", network["token"]).json()["regions"] for n in r["nodes"]}
    assert mine[network["eu_a"]]["attestation"] == "unverified"


@pytest.mark.parametrize("path", ["topology", "health"])
def test_publishable_and_bad_credentials_are_refused(server, alice, path):
    for headers, status, code in (
        (bearer(alice.publishable_key), 403, "permission_denied"),
        ({**bearer(alice.publishable_key), "Origin": "https://app.alice.example"}, 403, "permission_denied"),
        (bearer("nt_live_short"), 401, "invalid_api_key"),
        ({}, 401, "unauthenticated"),
    ):
        response = httpx.get(f"{server.api}/nodes/{path}", headers=headers)
        assert response.status_code == status and response.json()["error"]["code"] == code, response.text


def test_an_operator_without_nodes_has_an_empty_topology(server, transactional_db):
    from nodes.services import node_token_create

    token = node_token_create(organization=make_tenant("erin").organization)[1]
    assert get(server, "topology", token).json() == {"object": "node.topology", "scope": "operator", "regions": []}
    health = get(server, "health", token).json()
    assert (health["nodes"], health["healthy"], health["unhealthy"], health["regions"]) == (0, 0, 0, [])


def conforms(server, instance: dict, schema_name: str) -> None:
    """``instance`` matches the OpenAPI document's schema (schemathesis only calls these routes with API keys)."""
    import jsonschema

    document = httpx.get(f"{server.api}/openapi.json").json()
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "components": document["components"],
              "$ref": f"#/components/schemas/{schema_name}"}
    jsonschema.validate(instance, schema, cls=jsonschema.Draft202012Validator)


def test_the_operator_views_match_the_document(server, network):
    topology = get(server, "topology", network["token"]).json()
    conforms(server, topology, "NodeTopology")
    conforms(server, get(server, "health", network["token"]).json(), "NodeHealth")
    import jsonschema

    del topology["regions"][0]["nodes"][0]["consecutive_failures"]  # the check can fail: this no longer conforms
    with pytest.raises(jsonschema.ValidationError):
        conforms(server, topology, "NodeTopology")
