"""Sealed requests end to end (gateway/SEALED.md) against the live server and an attested simulator node:
tiers, refusals before any reservation, receipts verified and settled from, a forged receipt voided
and its node quarantined, inflated tokens capped, resume, idempotency, the receipts export."""
from __future__ import annotations

import base64
import datetime as dt

import httpx
import orjson
import pytest
from django.utils import timezone

from billing.invariants import check_ledger
from billing.models import Transfer
from gateway.models import UsageReceipt
from gateway.sealed import format as fmt
from gateway.sealed.keys import gateway_keys
from nodes.models import Attestation, Node
from tests.conftest import SIM_MODEL, cache_settle, sim_cost
from tests.sealed.client import SealedClient, parse_sse

MESSAGES = [{"role": "user", "content": "echo: the sealed answer"}]


def node_envelope(client: SealedClient, node, *, tier="maximum", stream=False, max_tokens=32, messages=MESSAGES):
    return client.envelope(tier=tier, recipient_key=node.encryption_key, node_id=node.public_id, model=SIM_MODEL,
                           max_tokens=max_tokens, stream=stream, messages=messages)


def transfers(request_id: str):
    return list(Transfer.objects.filter(request_id=request_id, kind="usage"))


def assert_settled_from(answer, node_id: str, tenant):
    """The receipt verifies with the attested key and the ledger posted exactly its cost."""
    request_id = answer.headers["x-request-id"]
    data = base64.b64decode(answer.receipt["receipt"])
    fields = orjson.loads(data)
    assert fields["request_id"] == request_id and fields["node_id"] == node_id
    (transfer,) = transfers(request_id)
    assert transfer.status == "posted"
    assert transfer.amount == sim_cost(fields["input_tokens"], fields["output_tokens"]) > 0
    stored = UsageReceipt.objects.get(request_id=request_id)
    assert stored.verified and bytes(stored.receipt) == data and stored.cost == transfer.amount
    return fields


def test_public_keys_are_published(server, alice, sim_node):
    keys = httpx.get(f"{server.url}/pki/public_key").raise_for_status().json()
    assert keys == gateway_keys().public()
    nodes = httpx.get(f"{server.api}/nodes", headers=alice.auth()).raise_for_status().json()["data"]
    (node,) = [n for n in nodes if n["id"] == sim_node.public_id]
    assert node["public_keys"] == {"encryption": sim_node.encryption_key, "signing": sim_node.signing_key}
    assert len(base64.b64decode(node["public_keys"]["encryption"])) == 32


def test_maximum_tier_non_streamed_is_billed_from_the_signed_receipt(server, alice, sim_node, sim):
    client = SealedClient(server, alice)
    envelope = node_envelope(client, sim_node)
    answer = client.answer(envelope, client.post(envelope))
    assert answer.status == 200, answer.body
    assert "the sealed answer" in answer.text
    assert answer.headers["x-node-id"] == sim_node.public_id
    fields = assert_settled_from(answer, sim_node.public_id, alice)
    from console.models import ApiKey

    public_ids = {k.public_id for k in ApiKey.objects.filter(project=alice.project)}
    assert fields["key_hash"] in {fmt.key_hash(p) for p in public_ids}
    assert alice.wallet.balance == 1_000_000 - sim_cost(fields["input_tokens"], fields["output_tokens"])
    assert check_ledger() == []


def test_maximum_tier_streamed_and_the_receipts_export(server, alice, charlie, sim_node, sim):
    client = SealedClient(server, alice)
    envelope = node_envelope(client, sim_node, stream=True)
    answer = client.answer(envelope, client.post(envelope))
    assert answer.status == 200 and answer.error is None
    assert "the sealed answer" in answer.text
    names = [name for _, name, _ in answer.events]
    assert names[0] == "sealed.start" and names[-2:] == ["sealed.receipt", "message"]
    assert [i for i, _, _ in answer.events] == [f"evt_{n}" for n in range(1, len(answer.events) + 1)]
    fields = assert_settled_from(answer, sim_node.public_id, alice)
    request_id = answer.headers["x-request-id"]

    exported = httpx.get(f"{server.api}/receipts", params={"request_id": request_id}, headers=alice.auth()).json()
    (receipt,) = exported["data"]
    (transfer,) = transfers(request_id)
    assert receipt["cost"] == transfer.amount and receipt["verified"] and receipt["tier"] == "maximum"
    assert receipt["receipt"] == answer.receipt["receipt"] and receipt["signature"] == answer.receipt["signature"]
    assert receipt["signing_key"] == sim_node.signing_key
    fmt.verify_receipt(receipt["signing_key"], receipt, {k: fields[k] for k in fmt.BOUND_FIELDS})
    # The project's listing has it; another project's does not.
    listed = httpx.get(f"{server.api}/receipts", headers=alice.auth()).json()["data"]
    assert [r["request_id"] for r in listed] == [request_id]
    assert httpx.get(f"{server.api}/receipts", headers=charlie.auth()).json()["data"] == []
    publishable = httpx.get(f"{server.api}/receipts", headers=alice.auth(alice.publishable_key))
    assert publishable.status_code == 403


def test_high_tier_accepts_a_lapsed_attestation_that_maximum_refuses(server, alice, sim_node, sim):
    Node.objects.filter(id=sim_node.id).update(attestation_expires_at=timezone.now() - dt.timedelta(seconds=1))
    from config import bus
    from nodes.registry import NODES_TOPIC

    bus.publish(NODES_TOPIC, sim_node.public_id)
    cache_settle()
    client = SealedClient(server, alice)
    refused = client.post(node_envelope(client, sim_node, tier="maximum"))
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "no_nodes_available"
    envelope = node_envelope(client, sim_node, tier="high")
    answer = client.answer(envelope, client.post(envelope))
    assert answer.status == 200 and "the sealed answer" in answer.text
    assert_settled_from(answer, sim_node.public_id, alice)


def test_maximum_refused_on_an_unverified_node_before_any_reservation(server, alice, sim_node, sim):
    client = SealedClient(server, alice)
    envelope = node_envelope(client, sim_node)
    Node.objects.filter(id=sim_node.id).update(attestation="unverified", attestation_expires_at=None)
    from config import bus
    from nodes.registry import NODES_TOPIC

    bus.publish(NODES_TOPIC, sim_node.public_id)
    cache_settle()
    response = client.post(envelope)
    assert response.status_code == 503 and response.json()["error"]["code"] == "no_nodes_available"
    assert not Transfer.objects.filter(kind="usage").exists() and sim.stats()["requests"] == 0
    assert alice.wallet.balance == 1_000_000


def test_a_key_the_node_no_longer_attests_is_409(server, alice, sim_node, sim):
    client = SealedClient(server, alice)
    stale_key = fmt.public_b64(__import__("cryptography.hazmat.primitives.asymmetric.x25519", fromlist=["x"])
                               .X25519PrivateKey.generate())
    envelope = client.envelope(tier="maximum", recipient_key=stale_key, node_id=sim_node.public_id, model=SIM_MODEL,
                               max_tokens=16, stream=False, messages=MESSAGES)
    response = client.post(envelope)
    assert response.status_code == 409 and response.json()["error"]["code"] == "node_key_mismatch"
    assert response.json()["error"]["param"] == "recipient.encryption_key"
    assert not Transfer.objects.filter(kind="usage").exists() and sim.stats()["requests"] == 0


def test_a_tampered_header_is_refused_by_the_node_and_nothing_is_billed(server, alice, sim_node, sim):
    client = SealedClient(server, alice)
    envelope = node_envelope(client, sim_node, max_tokens=8)
    envelope["header"]["max_tokens"] = 200  # the gateway reserves more; the node cannot open it
    response = client.post(envelope)
    assert response.status_code == 400, response.text
    assert "could not decrypt" in response.json()["error"]["message"]
    (transfer,) = transfers(response.headers["x-request-id"])
    assert transfer.status == "voided" and transfer.amount == 0
    assert alice.wallet.balance == 1_000_000 and sim.stats()["requests"] == 0
    assert not UsageReceipt.objects.exists()


@pytest.mark.parametrize(("stream", "mode", "reason"), [
    (False, "bad_signature", "bad_signature"),
    (True, "bad_signature", "bad_signature"),
    (False, "other_request", "mismatch:request_id"),
])
def test_a_forged_receipt_voids_the_charge_and_quarantines_the_node(server, alice, sim_node, sim, stream, mode, reason):
    sim.configure(sealed_mode=mode)
    client = SealedClient(server, alice)
    envelope = node_envelope(client, sim_node, stream=stream)
    answer = client.answer(envelope, client.post(envelope))
    if stream:
        assert answer.status == 200 and answer.receipt is None
    else:
        assert answer.status == 502
    assert answer.error["code"] == "upstream_unavailable" and reason in answer.error["message"]
    request_id = answer.headers["x-request-id"]
    (transfer,) = transfers(request_id)
    assert transfer.status == "voided" and alice.wallet.balance == 1_000_000
    stored = UsageReceipt.objects.get(request_id=request_id)
    assert not stored.verified and stored.reason == reason and stored.cost == 0
    node = Node.objects.get(id=sim_node.id)
    assert (node.status, node.attestation, node.encryption_key) == ("disabled", "unverified", "")
    assert Attestation.objects.filter(node=node, result="failed", reason="bad_receipt").exists()
    cache_settle()
    again = client.post(node_envelope(client, sim_node))
    # The router no longer uses it (its only model now has no node: 404 model_not_found).
    assert again.status_code in (400, 404, 503) and sim.stats()["requests"] == 1
    assert check_ledger() == []


def test_inflated_tokens_are_capped_at_the_reservation(server, alice, sim_node, sim):
    sim.configure(sealed_mode="inflate_tokens")
    client = SealedClient(server, alice)
    envelope = node_envelope(client, sim_node, max_tokens=16)
    answer = client.answer(envelope, client.post(envelope))
    assert answer.status == 200
    fields = orjson.loads(base64.b64decode(answer.receipt["receipt"]))
    (transfer,) = transfers(answer.headers["x-request-id"])
    prompt_bound = len(base64.b64decode(envelope["ciphertext"]))
    assert transfer.amount == sim_cost(min(fields["input_tokens"], prompt_bound), 16)
    assert transfer.amount < sim_cost(fields["input_tokens"], fields["output_tokens"])
    stored = UsageReceipt.objects.get(request_id=answer.headers["x-request-id"])
    assert stored.verified and stored.output_tokens == fields["output_tokens"] and stored.cost == transfer.amount


@pytest.mark.parametrize(
    "elsewhere", [False, pytest.param(True, marks=pytest.mark.redis)],  # another process resumes through Redis
    ids=["same-process", "other-process"],
)
def test_a_dropped_stream_resumes_after_last_event_id(server, request, alice, sim_node, sim, elsewhere):
    resume_on = request.getfixturevalue("second_server_proc") if elsewhere else server
    sim.configure(tokens_per_s=40)
    client = SealedClient(server, alice)
    envelope = node_envelope(client, sim_node, stream=True, max_tokens=24,
                             messages=[{"role": "user", "content": "echo: " + " ".join(f"w{i}" for i in range(20))}])
    seen = b""
    with httpx.stream("POST", f"{server.api}/sealed/chat/completions", json=envelope, headers=alice.auth(),
                      timeout=30) as response:
        request_id = response.headers["x-request-id"]
        for part in response.iter_raw():
            seen += part
            if seen.count(b"\n\n") >= 4:
                break
    first = parse_sse(seen)[:4]
    assert first[0][1] == "sealed.start"
    rest = httpx.get(f"{resume_on.api}/streams/{request_id}", headers={**alice.auth(), "Last-Event-ID": first[-1][0]},
                     timeout=30)
    events = first + parse_sse(rest.content)
    assert [e[0] for e in events] == [f"evt_{n}" for n in range(1, len(events) + 1)]
    ephemeral = orjson.loads(first[0][2])["ephemeral_public_key"]
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in client.open_events(envelope, events, ephemeral)
                   if c["choices"])
    assert "w0 w1" in text and events[-2][1] == "sealed.receipt"
    (transfer,) = transfers(request_id)
    assert transfer.status == "posted"


def test_idempotent_retry_replays_and_bills_once(server, alice, sim_node, sim):
    client = SealedClient(server, alice)
    envelope = node_envelope(client, sim_node)
    first = client.post(envelope, {"Idempotency-Key": "sealed-1"})
    second = client.post(envelope, {"Idempotency-Key": "sealed-1"})
    assert first.status_code == second.status_code == 200
    assert second.headers["idempotent-replayed"] == "true" and second.json() == first.json()
    assert sim.stats()["requests"] == 1 and Transfer.objects.filter(kind="usage").count() == 1
    assert UsageReceipt.objects.count() == 1


@pytest.mark.parametrize("stream", [False, True])
def test_standard_tier_is_sealed_to_the_gateway_and_signed_by_it(server, alice, sim_node, sim, stream):
    client = SealedClient(server, alice)
    keys = httpx.get(f"{server.url}/pki/public_key").json()
    envelope = client.envelope(tier="standard", recipient_key=keys["encryption_key"], node_id=None, model=SIM_MODEL,
                               max_tokens=32, stream=stream, messages=MESSAGES)
    answer = client.answer(envelope, client.post(envelope))
    assert answer.status == 200 and answer.error is None, answer.body
    assert "the sealed answer" in answer.text
    request_id = answer.headers["x-request-id"]
    fields = orjson.loads(base64.b64decode(answer.receipt["receipt"]))
    expected = {"request_id": request_id, "payload_id": envelope["payload_id"], "key_hash": fields["key_hash"],
                "request_hash": fields["request_hash"], "model": SIM_MODEL, "node_id": "gateway"}
    fmt.verify_receipt(keys["signing_key"], answer.receipt, expected)
    (transfer,) = transfers(request_id)
    assert transfer.amount == sim_cost(fields["input_tokens"], fields["output_tokens"]) > 0
    assert UsageReceipt.objects.get(request_id=request_id).cost == transfer.amount


def test_malformed_envelopes_name_the_field(server, alice, sim_node):
    client = SealedClient(server, alice)
    envelope = node_envelope(client, sim_node)
    del envelope["nonce"]
    response = client.post(envelope)
    assert response.status_code == 400 and response.json()["error"]["param"] == "nonce"
    publishable = httpx.post(f"{server.api}/sealed/chat/completions", json=envelope,
                             headers=alice.auth(alice.publishable_key))
    assert publishable.status_code in (401, 403)


def test_the_console_exports_the_same_receipts_as_csv(server, client, alice, charlie, sim_node, sim):
    import csv
    import io

    from tests.console.pages import login

    sealed = SealedClient(server, alice)
    envelope = node_envelope(sealed, sim_node)
    answer = sealed.answer(envelope, sealed.post(envelope))
    assert answer.status == 200
    request_id = answer.headers["x-request-id"]
    login(client, alice)
    response = client.get("/console/receipts.csv", {"org": alice.organization.public_id})
    assert response["Content-Type"].startswith("text/csv") and "attachment" in response["Content-Disposition"]
    (row,) = list(csv.DictReader(io.StringIO(response.content.decode())))
    (transfer,) = transfers(request_id)
    assert (row["request_id"], row["node"], row["tier"], row["verified"]) == (request_id, sim_node.public_id, "maximum", "true")
    assert int(row["cost_micros"]) == transfer.amount
    assert (row["receipt_b64"], row["signature_b64"]) == (answer.receipt["receipt"], answer.receipt["signature"])
    assert client.get("/console/receipts.csv", {"org": charlie.organization.public_id}).status_code == 404


def test_an_idempotent_stream_retry_replays_the_same_events(server, alice, sim_node, sim):
    client = SealedClient(server, alice)
    envelope = node_envelope(client, sim_node, stream=True)
    first = client.post(envelope, {"Idempotency-Key": "sealed-stream-1"})
    assert first.status_code == 200 and b"sealed.receipt" in first.content
    again = client.post(envelope, {"Idempotency-Key": "sealed-stream-1", "Last-Event-ID": "evt_2"})
    assert again.headers["idempotent-replayed"] == "true"
    assert parse_sse(again.content) == parse_sse(first.content)[2:]
    assert sim.stats()["requests"] == 1 and Transfer.objects.filter(kind="usage").count() == 1
