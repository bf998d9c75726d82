"""Routing through the gateway: non-confidential nodes only for projects that allow them,
the project's preferred region first, and what the answer says about who served it."""
import httpx

from billing.models import Transfer
from console.services import project_update
from gateway.models import RequestRecord
from nodes.services import node_upsert
from tests.conftest import SIM_MODEL, SIM_PRICE, attest, cache_settle

BODY = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "echo: routed"}], "max_tokens": 5}
SERVED = [{"model": SIM_MODEL, "context_window": 8192, "max_output_tokens": 256}]


def chat(server, tenant):
    return httpx.post(f"{server.api}/chat/completions", headers=tenant.auth(), json=BODY, timeout=30)


def listed(server, tenant):
    return [n["id"] for n in httpx.get(f"{server.api}/nodes", headers=tenant.auth()).json()["data"]]


def models(server, tenant):
    return [m["id"] for m in httpx.get(f"{server.api}/models", headers=tenant.auth()).json()["data"]]


def test_non_confidential_nodes_serve_only_projects_that_allow_them(server, alice, sim):
    from billing.services import price_publish

    plain = node_upsert(name="plain", base_url=f"{sim.url}/v1", region="test-1", models=SERVED)
    price_publish(model=SIM_MODEL, **SIM_PRICE)
    cache_settle()

    refused = chat(server, alice)
    assert refused.status_code == 503, refused.text
    error = refused.json()["error"]
    assert error["code"] == "no_nodes_available" and "non-confidential" in error["message"]
    assert int(refused.headers["retry-after"]) > 0
    assert listed(server, alice) == []
    assert models(server, alice) == [] and httpx.get(f"{server.api}/models/{SIM_MODEL}", headers=alice.auth()).status_code == 404
    assert not Transfer.objects.filter(kind="usage").exists() and sim.stats()["completed"] == 0

    project_update(project=alice.project, allow_non_confidential=True)
    cache_settle()
    served = chat(server, alice)
    assert served.status_code == 200, served.text
    assert served.json()["node"] == {"id": plain.public_id, "attestation": "none", "confidential": False, "region": "test-1"}
    assert served.headers["x-node-attestation"] == "none"
    assert listed(server, alice) == [plain.public_id]
    assert models(server, alice) == [SIM_MODEL]


def test_the_projects_preferred_region_is_tried_first(server, alice, sim, allowed_measurement):
    from billing.services import price_publish

    eu = node_upsert(name="eu", base_url=f"{sim.url}/v1", region="eu-west", attestation="unverified", models=SERVED)
    us = node_upsert(name="us", base_url=f"{sim.url}/v1", region="us-east", attestation="unverified", models=SERVED)
    for node in (eu, us):
        attest(node)
    price_publish(model=SIM_MODEL, **SIM_PRICE)

    project_update(project=alice.project, region_preference="us-east")
    cache_settle()
    assert {chat(server, alice).headers["x-node-id"] for _ in range(4)} == {us.public_id}
    project_update(project=alice.project, region_preference="eu-west")
    cache_settle()
    answers = [chat(server, alice) for _ in range(4)]
    assert {a.headers["x-node-id"] for a in answers} == {eu.public_id}
    assert answers[0].json()["node"]["confidential"] is True
    records = RequestRecord.objects.filter(project=alice.project)
    assert records.count() == 8 and set(records.values_list("attempts", flat=True)) == {1}
