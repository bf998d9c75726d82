"""Sealed calls through the SDK against the live server and the attested simulator (gateway/SEALED.md):
the SDK verifies the node's attestation against the tests' root itself, seals, decrypts, checks the
signed receipt; the bill is the receipt's. Skipped while the server lacks the sealed endpoint
(branch issue7-sealed not merged yet)."""
import base64
import hashlib
import json

import pytest
from django.conf import settings
from private_inference import Client, SecurityError

from billing.invariants import check_ledger
from billing.models import Transfer
from console.models import ApiKey
from nodes.attestation import ca
from tests.conftest import SIM_MODEL, sim_cost
from tests.sdk.conftest import FAST
from tests.sdk.test_sdk_live import settled

WORDS = [f"s{i}" for i in range(20)]
ASK = [{"role": "user", "content": "echo: the sealed answer"}]


@pytest.fixture
def sealed(server, alice, sim_node):
    with Client(api_key=alice.secret_key, base_url=server.url, retry_policy=FAST,
                trust_roots=settings.ATTESTATION_TRUST_ROOTS) as client:
        yield client


def key_hash(tenant):
    key = ApiKey.objects.get(project=tenant.project, kind=ApiKey.Kind.SECRET, name="test")
    return hashlib.sha256(key.public_id.encode()).hexdigest()


def test_maximum_tier_reaches_the_attested_node_and_the_bill_is_the_signed_receipt(sealed, alice, sim_node, sim):
    completion = sealed.chat.completions.create(model=SIM_MODEL, messages=ASK, max_tokens=32, security_tier="maximum")
    assert completion.choices[0].message.content == "the sealed answer"
    receipt = completion.sealed.receipt
    assert completion.sealed.node_id == sim_node.public_id and receipt["node_id"] == sim_node.public_id
    assert receipt["key_hash"] == key_hash(alice)
    [transfer] = settled()
    assert transfer.status == "posted" and transfer.amount == sim_cost(receipt["input_tokens"], receipt["output_tokens"])
    assert alice.wallet.balance == 1_000_000 - transfer.amount and check_ledger() == []
    # the export holds the very bytes the SDK verified
    [exported] = sealed.receipts.list(request_id=receipt["request_id"]).data
    assert json.loads(base64.b64decode(exported.receipt)) == receipt and exported.verified


def test_maximum_tier_streamed_with_resume_after_a_cut(server, alice, sim_node, sim, proxy):
    sim.configure(tokens_per_s=40)
    proxy.plan("forward", "forward", "cut:4")  # the node list, its attestation, then the sealed stream
    with Client(api_key=alice.secret_key, base_url=proxy.url, retry_policy=FAST,
                trust_roots=settings.ATTESTATION_TRUST_ROOTS) as client:
        stream = client.chat.completions.create(model=SIM_MODEL, max_tokens=64, stream=True, security_tier="maximum",
                                                messages=[{"role": "user", "content": "echo: " + " ".join(WORDS)}])
        text = "".join((c.choices[0].delta.content or "") for c in stream if c.choices)
    assert text == " ".join(WORDS)
    resumed = [s for s in proxy.seen if s.method == "GET" and s.path.startswith("/v1/streams/")]
    assert [s.action for s in proxy.seen][:3] == ["forward", "forward", "cut:4"]
    assert resumed and resumed[0].headers["last-event-id"] == "evt_4"
    receipt = stream.sealed.receipt
    assert receipt["output_tokens"] == len(WORDS)
    [transfer] = settled()
    assert transfer.amount == sim_cost(receipt["input_tokens"], receipt["output_tokens"])
    assert sim.stats()["completed"] == 1


def test_standard_tier_is_sealed_to_the_gateway(sealed, sim):
    completion = sealed.chat.completions.create(model=SIM_MODEL, messages=ASK, max_tokens=32, security_tier="standard")
    assert completion.choices[0].message.content == "the sealed answer"
    assert completion.sealed.receipt["node_id"] == "gateway" and completion.sealed.receipt["measurement"] == ""
    assert len(settled()) == 1


def test_a_client_that_does_not_trust_the_nodes_root_sends_nothing(server, alice, sim_node, sim):
    own = ca.new_key()
    with (Client(api_key=alice.secret_key, base_url=server.url, max_retries=0,
                 trust_roots=[ca.pem(ca.make_root(name="another root", key=own)).encode()]) as client,
          pytest.raises(SecurityError) as refused):
        client.chat.completions.create(model=SIM_MODEL, messages=ASK, max_tokens=32, security_tier="maximum")
    assert refused.value.reason == "untrusted_chain"
    assert sim.stats()["requests"] == 0 and not Transfer.objects.filter(kind="usage").exists()


def test_cli_chat_with_tier_maximum(server, alice, sim_node, sim, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PI_CONFIG_DIR": str(tmp_path), "PI_API_KEY": alice.secret_key, "PI_BASE_URL": server.url,
           "PI_KEY_PASSWORD": "pw"}
    pi = str(Path(sys.executable).parent / "pi")
    subprocess.run([pi, "keypair", "create", str(tmp_path / "me.pem")], check=True, env=env, capture_output=True)
    result = subprocess.run(
        [pi, "chat", "-M", SIM_MODEL, "--tier", "maximum", "--json", "--keypair", str(tmp_path / "me.pem"),
         "--trust-root", settings.ATTESTATION_TRUST_ROOTS[0], "-m", "echo: sealed from the shell"],
        check=False, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["content"] == "sealed from the shell"
    assert answer["sealed"]["tier"] == "maximum" and answer["sealed"]["node_id"] == sim_node.public_id
    receipt = answer["sealed"]["receipt"]
    [transfer] = settled()
    assert transfer.amount == sim_cost(receipt["input_tokens"], receipt["output_tokens"])


def test_sealed_answer_lost_after_the_charge_is_retried_under_the_same_key_and_charged_once(
        server, alice, sim_node, sim, proxy):
    proxy.plan("forward", "forward", "drop")  # the node list, its attestation, then the answer is lost
    with Client(api_key=alice.secret_key, base_url=proxy.url, retry_policy=FAST,
                trust_roots=settings.ATTESTATION_TRUST_ROOTS) as client:
        reply = client.chat.completions.create(model=SIM_MODEL, messages=ASK, max_tokens=32, security_tier="maximum")
    assert reply.choices[0].message.content == "the sealed answer"
    first, second = proxy.requests("/v1/sealed/")
    assert first.action == "drop" and first.headers["idempotency-key"] == second.headers["idempotency-key"]
    [transfer] = settled()
    assert transfer.amount == sim_cost(reply.sealed.receipt["input_tokens"], reply.sealed.receipt["output_tokens"])
    assert sim.stats()["completed"] == 1
