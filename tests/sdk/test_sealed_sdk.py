"""Sealed calls through the SDK against an in-process platform that follows gateway/SEALED.md:
the client verifies the node's attestation chain itself, encrypts to the attested key, decrypts the
answer and checks the signed receipt; every lie (forged chain, listed keys not the attested ones,
an unverified node for maximum, a bad receipt signature, a receipt for another model or more
tokens, altered or reordered ciphertext, no receipt) is a SecurityError."""
import httpx
import pytest
from private_inference import Client, SecurityError

from nodes.attestation import ca
from tests.sdk.fake_platform import FakePlatform

CANARY = "canary-7f3a9c1e"
ASK = [{"role": "user", "content": f"echo: hello {CANARY} world"}]


@pytest.fixture
def platform():
    return FakePlatform()


def client_for(platform, **kwargs):
    kwargs.setdefault("trust_roots", [str(platform.root_path)])
    return Client(api_key="sk_live_test", base_url="https://pi.test", max_retries=0,
                  http_client=httpx.Client(transport=platform.transport()), **kwargs)


@pytest.mark.parametrize("tier", ["high", "maximum"])
def test_sealed_call_reaches_the_attested_node_and_the_gateway_sees_only_ciphertext(platform, tier):
    client = client_for(platform)
    completion = client.chat.completions.create(model="sim-small", messages=ASK, max_tokens=50, security_tier=tier)
    assert completion.choices[0].message.content == f"hello {CANARY} world"
    assert completion.sealed.tier == tier and completion.sealed.node_id == "node_1"
    receipt = completion.sealed.receipt
    assert (receipt["input_tokens"], receipt["output_tokens"]) == (7, 3) and receipt["request_id"] == "req_fake1"
    assert platform.opened[0]["messages"] == ASK  # the node got the request
    assert not any(CANARY.encode() in body for body in platform.bodies)  # nothing in clear on the wire


def test_sealed_stream_decrypts_chunks_and_verifies_the_receipt_at_the_end(platform):
    stream = client_for(platform).chat.completions.create(model="sim-small", messages=ASK, max_tokens=50, stream=True,
                                                          security_tier="maximum")
    text = "".join(c.choices[0].delta.content for c in stream if c.choices)
    assert text == f"hello {CANARY} world"
    assert stream.sealed.receipt["output_tokens"] == 3 and stream.request_id == "req_fake1"


def test_standard_tier_is_sealed_to_the_gateway_key_and_its_receipt_checked(platform):
    completion = client_for(platform, trust_roots=None).chat.completions.create(
        model="sim-small", messages=ASK, max_tokens=50, security_tier="standard")
    assert completion.sealed.node_id == "gateway" and completion.choices[0].message.content.endswith("world")
    assert not any(CANARY.encode() in body for body in platform.bodies)


def test_clear_header_changes_do_not_decrypt_at_the_recipient(platform):
    """The associated data binds model, max_tokens, tier: a gateway raising max_tokens breaks decryption."""
    from private_inference import crypto

    sealed = crypto.seal_request({"model": "sim-small", "max_tokens": 5, "messages": ASK}, tier="high",
                                 recipient_key=platform.keys()["encryption"], node_id="node_1",
                                 client_public_key=crypto.ClientKeyPair().public_b64)
    assert crypto.open_request(sealed.envelope, platform.encryption)["max_tokens"] == 5
    for field, value in [("max_tokens", 500), ("model", "sim-large")]:
        altered = {**sealed.envelope, "header": {**sealed.envelope["header"], field: value}}
        with pytest.raises(SecurityError) as failed:
            crypto.open_request(altered, platform.encryption)
        assert failed.value.reason == "decryption_failed"
    with pytest.raises(SecurityError):
        crypto.open_request({**sealed.envelope, "tier": "maximum"}, platform.encryption)


@pytest.mark.parametrize("tamper,reason", [
    ("receipt_signature", "bad_signature"),
    ("receipt_model", "receipt_mismatch"),
    ("tokens", "receipt_mismatch"),
    ("ciphertext", "decryption_failed"),
])
def test_a_lying_answer_is_a_security_error(platform, tamper, reason):
    platform.tamper = tamper
    with pytest.raises(SecurityError) as failed:
        client_for(platform).chat.completions.create(model="sim-small", messages=ASK, max_tokens=50,
                                                     security_tier="maximum")
    assert failed.value.reason == reason


@pytest.mark.parametrize("tamper,reason", [("reorder", "decryption_failed"), ("no_receipt", "missing_receipt"),
                                           ("receipt_signature", "bad_signature")])
def test_a_lying_stream_is_a_security_error(platform, tamper, reason):
    platform.tamper = tamper
    stream = client_for(platform).chat.completions.create(model="sim-small", messages=ASK, max_tokens=50, stream=True,
                                                          security_tier="high")
    with pytest.raises(SecurityError) as failed:
        list(stream)
    assert failed.value.reason == reason


@pytest.mark.parametrize("tamper", ["unverified", "key_mismatch", "report_signature"])
def test_nothing_is_sent_to_a_node_whose_attestation_does_not_verify_here(platform, tamper):
    platform.tamper = tamper
    with pytest.raises(SecurityError):
        client_for(platform).chat.completions.create(model="sim-small", messages=ASK, max_tokens=50,
                                                     security_tier="maximum")
    assert platform.counter == 0 and not platform.opened


def test_a_chain_to_a_root_the_client_does_not_trust_is_refused():
    own_key = ca.new_key()
    own_root = ca.make_root(name="somebody else's root", key=own_key)
    leaf_key = ca.new_key("p256")
    leaf = ca.issue(name="forged node", public_key=leaf_key.public_key(), issuer_key=own_key, issuer=own_root)
    platform = FakePlatform(attestation_key=leaf_key, certificates=[ca.pem(leaf)])
    with pytest.raises(SecurityError) as failed:
        client_for(platform).chat.completions.create(model="sim-small", messages=ASK, max_tokens=50,
                                                     security_tier="high")
    assert "trusted root" in str(failed.value) and platform.counter == 0
    # ... and accepted by a client that trusts that root (the check is the chain, not a flag)
    trusting = client_for(platform, trust_roots=[ca.pem(own_root).encode()])
    assert trusting.chat.completions.create(model="sim-small", messages=ASK, max_tokens=50,
                                            security_tier="high").sealed.node_id == "node_1"


def test_measurement_allow_list_and_missing_trust_roots(platform, monkeypatch):
    with pytest.raises(SecurityError) as failed:
        client_for(platform, allowed_measurements={"ab" * 24}).chat.completions.create(
            model="sim-small", messages=ASK, max_tokens=50, security_tier="maximum")
    assert failed.value.reason == "measurement_not_allowed"
    monkeypatch.delenv("PI_TRUST_ROOTS", raising=False)
    with pytest.raises(SecurityError) as failed:  # no root given, and the server publishes none
        client_for(platform, trust_roots=None).chat.completions.create(
            model="sim-small", messages=ASK, max_tokens=50, security_tier="high")
    assert failed.value.reason == "no_trust_roots" and platform.counter == 0


def test_no_node_for_the_model_is_refused_before_sending(platform):
    with pytest.raises(SecurityError) as failed:
        client_for(platform).chat.completions.create(model="sim-large", messages=ASK, max_tokens=5,
                                                     security_tier="maximum")
    assert failed.value.reason == "no_attested_node" and platform.counter == 0


def test_sealed_requests_need_max_tokens(platform):
    with pytest.raises(ValueError, match="max_tokens"):
        client_for(platform).chat.completions.create(model="sim-small", messages=ASK, security_tier="high")


async def test_async_client_sealed_plain_and_streamed(platform):
    from private_inference import AsyncClient

    async with AsyncClient(api_key="sk_live_test", base_url="https://pi.test", max_retries=0,
                           trust_roots=[str(platform.root_path)],
                           http_client=httpx.AsyncClient(transport=platform.transport())) as client:
        completion = await client.chat.completions.create(model="sim-small", messages=ASK, max_tokens=50,
                                                          security_tier="maximum")
        assert completion.choices[0].message.content == f"hello {CANARY} world"
        stream = await client.chat.completions.create(model="sim-small", messages=ASK, max_tokens=50, stream=True,
                                                      security_tier="maximum")
        text = "".join([c.choices[0].delta.content async for c in stream if c.choices])
        assert text == f"hello {CANARY} world" and stream.sealed.receipt["output_tokens"] == 3
    assert not any(CANARY.encode() in body for body in platform.bodies)
