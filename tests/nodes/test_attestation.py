"""Attestation end to end: simulator processes attest to the real service, the gateway routes only to
verified, unexpired nodes, and a project can fetch and check the evidence itself.

The session simulator attests honestly with the test root's node certificate
(tests/conftest.py). A forged simulator signs under a root of its own; a stale one
replays an hour-old report whatever the nonce. Requests go through a real server
process; the simulators' /_sim/stats say who served them.
"""
from __future__ import annotations

import base64
import datetime as dt
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest
from celery import Celery
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519

from billing.invariants import check_ledger
from gateway.models import RequestRecord
from nodes.attestation import report
from nodes.attestation.x509 import fingerprint
from tests.conftest import (
    SIM_MEASUREMENT, SIM_MODEL, Process, attest, attestation_pki, cache_settle, server_env, start_server,
    start_simulator,
)

CHAT = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
BROKER = "redis://127.0.0.1:6379/11"  # not the billing worker test's broker: another suite may run at the same time


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not met in time")


@pytest.fixture(scope="module")
def forged_process():
    sim = start_simulator(attestation="forged")
    yield sim
    sim.process.stop()


@pytest.fixture(scope="module")
def stale_process():
    sim = start_simulator(attestation="stale")
    yield sim
    sim.process.stop()


@pytest.fixture
def forged(forged_process):
    forged_process.reset()
    return forged_process


@pytest.fixture
def stale(stale_process):
    stale_process.reset()
    return stale_process


def confidential_node(name: str, sim, region: str = "test-9"):
    from nodes.services import node_upsert

    return node_upsert(
        name=name, base_url=f"{sim.url}/v1", region=region, attestation="unverified",
        models=[{"model": SIM_MODEL, "context_window": 8192, "max_output_tokens": 256}],
    )


def chat(server, tenant, **extra) -> httpx.Response:
    return httpx.post(f"{server.api}/chat/completions", headers=tenant.auth(), json={**CHAT, **extra}, timeout=30)


def fetch_evidence(sim, nonce: str) -> dict:
    return httpx.post(f"{sim.url}/v1/attestation", json={"nonce": nonce}).raise_for_status().json()


# --- the real flow -------------------------------------------------------------------------


def test_the_simulator_attests_and_the_record_keeps_what_it_proved(sim_node, sim, settings):
    from nodes.models import Attestation

    record = Attestation.objects.get(node=sim_node)
    assert (record.result, record.reason, record.format, record.measurement) == ("verified", "", "x509-report-v1", SIM_MEASUREMENT)
    signed = orjson.loads(base64.b64decode(record.evidence["report"]))  # the evidence as received
    assert signed["nonce"] == record.nonce and len(record.nonce) == 64
    assert (record.signing_key, record.encryption_key) == (signed["signing_key"], signed["encryption_key"])
    assert (sim_node.signing_key, sim_node.encryption_key) == (record.signing_key, record.encryption_key)
    assert sim_node.attestation == "verified" and sim_node.attestation_expires_at == record.expires_at
    assert record.expires_at - record.verified_at == dt.timedelta(seconds=settings.ATTESTATION_TTL_SECONDS)
    root = x509.load_pem_x509_certificate((attestation_pki() / "root.pem").read_bytes())
    assert record.root_fingerprint == fingerprint(root)
    assert sim.stats()["attestations"] == 1


def test_forged_and_stale_nodes_are_never_verified_and_never_served(server, alice, sim_node, sim, forged, stale):
    from nodes.attestation.services import node_attest
    from nodes.models import Node
    from nodes.tasks import reattest_nodes

    fake, old = confidential_node("forged", forged), confidential_node("stale", stale)
    assert (node_attest(node=fake).reason, node_attest(node=old).reason) == ("untrusted_chain", "nonce_mismatch")
    assert reattest_nodes() == 3  # the beat task challenges them again (eager here): no better
    assert set(Node.objects.values_list("name", "attestation")) == {
        ("simulator", "verified"), ("forged", "unverified"), ("stale", "unverified"),
    }
    assert forged.stats()["attestations"] == stale.stats()["attestations"] == 2
    cache_settle()

    listed = httpx.get(f"{server.api}/nodes", headers=alice.auth()).json()["data"]
    assert [n["id"] for n in listed] == [sim_node.public_id]
    served = [chat(server, alice, stream=i % 2 == 1) for i in range(12)]
    assert [r.status_code for r in served] == [200] * 12
    assert {r.headers["x-node-id"] for r in served} == {sim_node.public_id}
    assert {r.headers["x-node-attestation"] for r in served} == {"verified"}
    assert sim.stats()["completed"] == 12
    assert forged.stats()["requests"] == stale.stats()["requests"] == 0

    # The honest node turns stale too: nothing is left to serve, and the forged and stale still get nothing.
    sim.configure(attestation_mode="stale")
    assert node_attest(node=sim_node).reason == "nonce_mismatch"
    cache_settle()
    refused = chat(server, alice)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "no_nodes_available"
    assert refused.headers["retry-after"].isdigit()
    assert forged.stats()["requests"] == stale.stats()["requests"] == 0 and sim.stats()["requests"] == 12
    assert check_ledger() == [] and alice.wallet.reserved == 0


def test_an_expired_attestation_is_routed_around_and_comes_back_after_reattestation(server, alice, sim_node, sim, settings):
    settings.ATTESTATION_TTL_SECONDS = 5  # the next verification is trusted for 5 s
    record = attest(sim_node)
    cache_settle()
    assert chat(server, alice).status_code == 200
    # No message tells the routers: the expiry they loaded is enough.
    refused = wait_for(
        lambda: (r := chat(server, alice)).status_code == 503 and r, timeout=15, what="the attestation to expire"
    )
    assert time.time() >= record.expires_at.timestamp()
    assert refused.json()["error"]["code"] == "no_nodes_available"
    assert httpx.get(f"{server.api}/nodes", headers=alice.auth()).json()["data"] == []
    completed = sim.stats()["completed"]

    settings.ATTESTATION_TTL_SECONDS = 3600
    attest(sim_node)
    cache_settle()
    again = chat(server, alice)
    assert again.status_code == 200 and again.headers["x-node-id"] == sim_node.public_id
    assert sim.stats()["completed"] == completed + 1


def test_an_unknown_or_revoked_measurement_is_refused(server, alice, sim_node, allowed_measurement):
    from nodes.attestation.services import measurement_allow, measurement_revoke, node_attest
    from nodes.models import Node

    assert measurement_revoke(measurement=allowed_measurement) == [sim_node.public_id]  # out of rotation at once
    cache_settle()
    assert chat(server, alice).status_code == 503
    failed = node_attest(node=sim_node)
    assert (failed.result, failed.reason) == ("failed", "unknown_measurement")
    assert Node.objects.get(id=sim_node.id).attestation == "unverified"

    measurement_allow(value=SIM_MEASUREMENT.upper())  # normalized; allowed again
    attest(sim_node)
    cache_settle()
    assert chat(server, alice).status_code == 200


def test_tampered_evidence_from_a_real_node_is_refused(sim_node, sim):
    from nodes.attestation.services import attestation_challenge, attestation_verify
    from nodes.models import Node

    def verify_with(tamper):
        challenge = attestation_challenge(node=sim_node)
        return attestation_verify(attestation=challenge, evidence=tamper(fetch_evidence(sim, challenge.nonce)))

    def flip_signature(ev):
        signature = bytearray(base64.b64decode(ev["signature"]))
        signature[0] ^= 0x80
        return {**ev, "signature": report.b64(bytes(signature))}

    def swap_sealing_key(ev):  # a man in the middle wants requests sealed to his key
        claims = orjson.loads(base64.b64decode(ev["report"]))
        claims["encryption_key"] = report.b64(os.urandom(32))
        return {**ev, "report": report.b64(orjson.dumps(claims, option=orjson.OPT_SORT_KEYS))}

    for tamper in (flip_signature, swap_sealing_key):
        failed = verify_with(tamper)
        assert (failed.result, failed.reason) == ("failed", "bad_signature"), tamper.__name__
        assert Node.objects.get(id=sim_node.id).attestation == "unverified"
        assert failed.evidence is not None  # kept as received, for the record
    assert verify_with(lambda ev: ev).result == "verified"
    assert Node.objects.get(id=sim_node.id).attestation == "verified"


def test_a_nonce_counts_once_and_dies_young(sim_node, sim):
    from nodes.attestation.services import attestation_challenge, attestation_verify
    from nodes.attestation.verifiers import AttestationFailure
    from nodes.models import Attestation, Node

    challenge = attestation_challenge(node=sim_node)
    evidence = fetch_evidence(sim, challenge.nonce)
    assert attestation_verify(attestation=challenge, evidence=evidence).result == "verified"
    replayed = Attestation.objects.get(id=challenge.id)
    replayed.result = "pending"  # as a second caller holding the same row would see it
    with pytest.raises(AttestationFailure) as used:
        attestation_verify(attestation=replayed, evidence=evidence)
    assert used.value.reason == "nonce_used"
    assert Attestation.objects.get(id=challenge.id).result == "verified"

    late = attestation_challenge(node=sim_node)
    evidence = fetch_evidence(sim, late.nonce)
    failed = attestation_verify(attestation=late, evidence=evidence, now=late.nonce_expires_at + dt.timedelta(seconds=1))
    assert (failed.result, failed.reason) == ("failed", "nonce_expired")
    assert Node.objects.get(id=sim_node.id).attestation == "unverified"


def test_an_older_challenge_never_overrides_a_newer_result(sim_node, sim):
    from nodes.attestation.services import attestation_challenge, attestation_fail, attestation_verify
    from nodes.models import Node

    older, newer = attestation_challenge(node=sim_node), attestation_challenge(node=sim_node)
    assert attestation_verify(attestation=newer, evidence=fetch_evidence(sim, newer.nonce)).result == "verified"
    assert attestation_fail(attestation=older, reason="node_error", detail="timed out").result == "failed"
    assert Node.objects.get(id=sim_node.id).attestation == "verified"


def test_an_unreachable_node_fails_attestation(transactional_db, allowed_measurement):
    from nodes.attestation.services import node_attest
    from nodes.models import Node
    from nodes.services import node_upsert

    node = node_upsert(name="gone", base_url="http://127.0.0.1:9/v1", attestation="unverified", models=[{"model": "m"}])
    failed = node_attest(node=node)
    assert (failed.result, failed.reason) == ("failed", "node_error")
    assert Node.objects.get(id=node.id).attestation == "unverified"


def test_nodes_without_attestation_are_never_challenged_and_verified_is_never_set(transactional_db, sim):
    from nodes.attestation.services import attestation_challenge
    from nodes.models import Attestation, Node
    from nodes.services import node_set_status, node_upsert
    from nodes.tasks import attest_node, reattest_nodes

    plain = node_upsert(name="plain", base_url=f"{sim.url}/v1", models=[{"model": "m"}])
    disabled = node_set_status(node=confidential_node("off", sim), status=Node.Status.DISABLED)
    with pytest.raises(ValueError):
        attestation_challenge(node=plain)
    assert reattest_nodes() == 0 and attest_node(plain.id) is None and attest_node(disabled.id) is None
    assert not Attestation.objects.exists() and sim.stats()["attestations"] == 0
    with pytest.raises(ValueError):
        node_upsert(name="cheat", base_url=f"{sim.url}/v1", attestation="verified", models=[{"model": "m"}])


# --- GET /v1/nodes/{id}/attestation ----------------------------------------------------------


def test_a_project_gets_the_evidence_and_checks_it_without_us(server, alice, sim_node):
    response = httpx.get(f"{server.api}/nodes/{sim_node.public_id}/attestation", headers=alice.auth())
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["object"], body["node"], body["result"], body["format"]) == (
        "node.attestation", sim_node.public_id, "verified", "x509-report-v1")
    assert body["measurement"] == SIM_MEASUREMENT and body["expires_at"] > time.time()
    listed = httpx.get(f"{server.api}/nodes", headers=alice.auth()).json()["data"]
    assert listed[0]["public_keys"] == body["public_keys"] == {
        "signing": sim_node.signing_key, "encryption": sim_node.encryption_key}

    # What a customer does with only `cryptography` and the root's certificate (fingerprint published).
    root = x509.load_pem_x509_certificate((attestation_pki() / "root.pem").read_bytes())
    assert body["root_fingerprint"] == root.fingerprint(hashes.SHA256()).hex()
    evidence = body["evidence"]
    leaf = x509.load_pem_x509_certificate(evidence["certificates"][0].encode())
    leaf.verify_directly_issued_by(root)
    signed = base64.b64decode(evidence["report"])
    key = leaf.public_key()
    assert isinstance(key, ed25519.Ed25519PublicKey)
    key.verify(base64.b64decode(evidence["signature"]), signed)  # raises if it does not verify
    claims = orjson.loads(signed)
    assert (claims["nonce"], claims["measurement"]) == (body["nonce"], body["measurement"])
    assert {"signing": claims["signing_key"], "encryption": claims["encryption_key"]} == body["public_keys"]


def test_evidence_of_nodes_a_project_cannot_use_is_not_found(server, alice, charlie, sim_node, forged, sim):
    from console.services import project_update
    from nodes.attestation.services import node_attest
    from nodes.services import node_upsert

    fake = confidential_node("forged", forged)
    node_attest(node=fake)
    plain = node_upsert(name="plain", base_url=f"{sim.url}/v1", models=[{"model": SIM_MODEL}])
    project_update(project=alice.project, allow_non_confidential=True)
    cache_settle()
    for tenant, node_id, message in (
        (alice, fake.public_id, "No such node"),  # never verified: nobody may use it
        (alice, "node_doesnotexist", "No such node"),
        (alice, plain.public_id, "not confidential"),  # alice may use it, but there is no evidence
        (charlie, plain.public_id, "No such node"),  # charlie's project does not allow non-confidential nodes
    ):
        response = httpx.get(f"{server.api}/nodes/{node_id}/attestation", headers=tenant.auth())
        assert response.status_code == 404, (node_id, response.text)
        error = response.json()["error"]
        assert error["code"] == "not_found" and message in error["message"] and error["request_id"]
    # The shared attested node is there for any project that may use it.
    assert httpx.get(f"{server.api}/nodes/{sim_node.public_id}/attestation", headers=charlie.auth()).status_code == 200
    publishable = {**alice.auth(alice.publishable_key), "Origin": "https://app.alice.example"}
    assert httpx.get(f"{server.api}/nodes/{sim_node.public_id}/attestation", headers=publishable).status_code == 403
    assert httpx.get(f"{server.api}/nodes/{sim_node.public_id}/attestation").status_code == 401


# --- registration -----------------------------------------------------------------------------


def test_a_node_re_registered_at_a_new_address_serves_nobody_until_it_attests_again(
    server, alice, sim, forged, allowed_measurement
):
    from billing.services import price_publish
    from nodes.models import Attestation, Node
    from nodes.services import node_token_create
    from tests.conftest import SIM_PRICE

    _, token = node_token_create(organization=operator_org())
    price_publish(model=SIM_MODEL, **SIM_PRICE)
    body = {"name": "rack", "base_url": f"{sim.url}/v1", "models": [{"model": SIM_MODEL}]}
    headers = {"Authorization": f"Bearer {token}"}
    node_id = httpx.post(f"{server.api}/nodes/register", headers=headers, json=body).json()["id"]
    wait_for(lambda: Node.objects.get(public_id=node_id).attestation == "verified", what="the first attestation")
    cache_settle()
    assert chat(server, alice).headers["x-node-id"] == node_id

    moved = httpx.post(f"{server.api}/nodes/register", headers=headers, json={**body, "base_url": f"{forged.url}/v1"})
    assert moved.json()["attestation"] == "unverified"  # at once, before the new address is checked
    last = wait_for(lambda: Attestation.objects.filter(node__public_id=node_id, result="failed").first(), what="re-attestation")
    assert last.reason == "untrusted_chain"
    cache_settle()
    assert chat(server, alice).status_code == 503 and forged.stats()["requests"] == 0


def operator_org():
    """An operator organization of its own (operators need not be customers)."""
    from django.contrib.auth import get_user_model

    from console import services

    user = get_user_model().objects.create_user(username="operator", email="op@example.com")
    return services.organization_create(name="operator org", owner=user)


# --- the schedule -------------------------------------------------------------------------------


def test_the_beat_reattests_and_routes_around_a_node_that_turns_stale(transactional_db, alice, sim_node, sim):
    from nodes.models import Attestation, Node
    from nodes.services import node_upsert

    plain = node_upsert(name="plain", base_url="http://127.0.0.1:9/v1", models=[{"model": "m"}])
    first = Node.objects.get(id=sim_node.id).attestation_expires_at
    # The embedded shape: no broker, the server runs the beat schedule itself, every second here.
    beat = start_server(EMBEDDED_BEAT="1", ATTESTATION_INTERVAL_SECONDS="1")
    try:
        wait_for(lambda: Attestation.objects.filter(node=sim_node, result="verified").count() >= 2,
                 what="re-attestation by the embedded beat")
        assert Node.objects.get(id=sim_node.id).attestation_expires_at > first  # the trust was extended
        assert chat(beat, alice).status_code == 200

        sim.configure(attestation_mode="stale")
        failed = wait_for(lambda: Attestation.objects.filter(node=sim_node, result="failed").first(), what="a stale answer")
        assert failed.reason == "nonce_mismatch"
        wait_for(lambda: chat(beat, alice).status_code == 503, what="the stale node to be routed around")

        sim.configure(attestation_mode="honest")
        wait_for(lambda: chat(beat, alice).status_code == 200, what="the node to come back")
        assert not Attestation.objects.filter(node=plain).exists()  # attestation 'none' is never challenged
    finally:
        beat.process.stop()


@pytest.mark.redis
def test_a_celery_worker_runs_the_reattestation_the_beat_task_fans_out(transactional_db, sim_node, sim, forged):
    from nodes.models import Attestation

    fake = confidential_node("forged", forged)
    worker = Process(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo", "--loglevel", "INFO",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        env=server_env(CELERY_BROKER_URL=BROKER),
        ready="ready.",
    )
    try:
        with Celery(broker=BROKER, set_as_current=False) as producer:
            producer.send_task("nodes.tasks.reattest_nodes")
        wait_for(lambda: Attestation.objects.filter(node=fake).exclude(result="pending").exists()
                 and Attestation.objects.filter(node=sim_node, result="verified").count() == 2,
                 what="the worker's attestations")
    finally:
        worker.stop()
    assert Attestation.objects.get(node=fake).reason == "untrusted_chain"
    assert sim.stats()["attestations"] == 2 and forged.stats()["attestations"] == 1


# --- the scenario ------------------------------------------------------------------------


def test_forged_dying_and_healthy_nodes_under_load(server, alice, sim_node, sim, forged):
    """Three nodes: one forged, one that dies mid-test, one healthy. Every request is answered by an
    attested node, none by the forged one; the dying node's requests fail over before any token."""
    from nodes.attestation.services import node_attest

    assert node_attest(node=confidential_node("forged", forged)).reason == "untrusted_chain"
    dying = start_simulator()
    try:
        attest(confidential_node("dying", dying))
        cache_settle()
        with ThreadPoolExecutor(8) as pool:
            first = list(pool.map(lambda i: chat(server, alice, stream=i % 2 == 0), range(16)))
        assert [r.status_code for r in first] == [200] * 16
        assert dying.stats()["completed"] > 0 and sim.stats()["completed"] > 0

        dying.configure(ttft_ms=3000)  # requests on it now wait for a first token that never comes
        with ThreadPoolExecutor(8) as pool:
            pending = [pool.submit(chat, server, alice) for _ in range(16)]
            wait_for(lambda: dying.stats()["active"] > 0, what="requests on the dying node")
            os.killpg(dying.process.proc.pid, signal.SIGKILL)
            second = [f.result() for f in pending]
        assert [r.status_code for r in second] == [200] * 16, [r.text for r in second if r.status_code != 200]
        # Those that had gone to the dying node were answered by the healthy one, after a logged failover.
        assert {r.headers["x-node-id"] for r in second} == {sim_node.public_id}
        failed_over = RequestRecord.objects.filter(request_id__in=[r.headers["x-request-id"] for r in second], attempts=2)
        assert failed_over.exists() and set(failed_over.values_list("node_id", flat=True)) == {sim_node.public_id}
        after = [chat(server, alice, stream=True) for _ in range(4)]
        assert [r.status_code for r in after] == [200] * 4
        assert {r.headers["x-node-id"] for r in after} == {sim_node.public_id}
    finally:
        dying.process.stop()
    assert forged.stats()["requests"] == 0
    assert check_ledger() == [] and alice.wallet.reserved == 0
