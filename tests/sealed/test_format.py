"""The sealed-request format (gateway/SEALED.md) with fixed test vectors.

Keys, ephemeral keys and nonces are fixed below, so the envelope, a response piece and a receipt
are byte-exact; the SDK's own implementation of SEALED.md can check itself against the same
vectors. The request key is also recomputed here with an independent HKDF (RFC 5869 over hmac),
so the vectors do not only check the module against itself.
"""
from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.sealed import format as fmt

RECIPIENT = x25519.X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
CLIENT = x25519.X25519PrivateKey.from_private_bytes(bytes(range(33, 65)))
EPHEMERAL = x25519.X25519PrivateKey.from_private_bytes(bytes(range(65, 97)))
RESPONSE_EPHEMERAL = x25519.X25519PrivateKey.from_private_bytes(bytes(range(97, 129)))
SIGNER = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(129, 161)))
PAYLOAD_ID = "AAECAwQFBgcICQoLDA0ODw"  # b64u(bytes(range(16)))
HEADER = {"model": "sim-small", "max_tokens": 32, "stream": True}
PLAINTEXT = {"messages": [{"role": "user", "content": "hello"}], "temperature": 0}

VECTOR_ENVELOPE = {
    "version": 1,
    "tier": "maximum",
    "payload_id": PAYLOAD_ID,
    "recipient": {"node_id": "node_test", "encryption_key": "B6N8vBQgk8i3VdwbEOhstCY3StFqqFPtC9/AsrhtHHw="},
    "header": HEADER,
    "client_public_key": "WGmv9FBUlzLLqu1eXfmzCm2jHLDldCutWtShp2jxpns=",
    "ephemeral_public_key": "ZLEBsdC+WocEvQePmJUAH8A+jp+VIvGI3RKNmEbUhGY=",
    "nonce": "AAAAAAAAAAAAAAAA",
    "ciphertext": "AQfcDHgdeJPxF7XHwTYyML9RK4vZIEw+AhnE6YmMJARjd538ZMZoAcC78hDRpkQFnpJpDkFJs2SUbWREOMO+zoERn5QoMDpkkHSYGISq5kY=",
}
VECTOR_RESPONSE_EPHEMERAL = "JE/juWPomd0pW6/84kjTUw86mnR5ugYwAmgOv+etrUk="
VECTOR_PIECE = {"seq": 0, "nonce": "BwcHBwcHBwcHBwcH", "ciphertext": "fy9xgtgtTa9BD4UjFA3j135Q3PgB8gw="}  # {"x":1}
VECTOR_SIGNING_KEY = "AgvUJ0RrcjQk2A0srTUro982SdDvj6rgyn6yVEOUGyk="
VECTOR_RECEIPT_BYTES = (
    b'{"input_tokens":5,"issued_at":1700000000,"key_hash":"953e8055d0c4f25a22531141c993d20536eba70355011e4123282aa8b270ebc6",'
    b'"measurement":"abababababababababababababababababababababababab","model":"sim-small","node_id":"node_test",'
    b'"output_tokens":7,"payload_id":"AAECAwQFBgcICQoLDA0ODw",'
    b'"request_hash":"0000000000000000000000000000000000000000000000000000000000000000","request_id":"req_1","version":1}'
)
VECTOR_SIGNATURE = "4hWf7UIJIYk3udqcoojo201lCVTeoTzDjJaW0H1Js2yc6TMid0hNY+V78h3hJGELfZezfGM+zbIAECpuZn0RCw=="


def vector_envelope() -> dict:
    return fmt.seal_request(
        recipient_key=fmt.public_b64(RECIPIENT), tier="maximum", header=dict(HEADER),
        client_public_key=fmt.public_b64(CLIENT), plaintext=PLAINTEXT, node_id="node_test", payload_id=PAYLOAD_ID,
        ephemeral=EPHEMERAL, nonce=bytes(12),
    )


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()  # 32 bytes: one block


def test_the_envelope_matches_the_vector_byte_for_byte():
    assert vector_envelope() == VECTOR_ENVELOPE


def test_the_vector_opens_with_an_independent_key_derivation():
    shared = RECIPIENT.exchange(x25519.X25519PublicKey.from_public_bytes(base64.b64decode(VECTOR_ENVELOPE["ephemeral_public_key"])))
    salt = base64.b64decode(VECTOR_ENVELOPE["ephemeral_public_key"]) + base64.b64decode(VECTOR_ENVELOPE["recipient"]["encryption_key"])
    key = _hkdf(shared, salt, b"pi-sealed/v1/request")
    aad = (
        b'{"client_public_key":"WGmv9FBUlzLLqu1eXfmzCm2jHLDldCutWtShp2jxpns=","header":{"max_tokens":32,"model":"sim-small",'
        b'"stream":true},"payload_id":"AAECAwQFBgcICQoLDA0ODw","recipient":{"encryption_key":'
        b'"B6N8vBQgk8i3VdwbEOhstCY3StFqqFPtC9/AsrhtHHw=","node_id":"node_test"},"tier":"maximum","version":1}'
    )
    plain = AESGCM(key).decrypt(bytes(12), base64.b64decode(VECTOR_ENVELOPE["ciphertext"]), aad)
    assert plain == b'{"messages":[{"content":"hello","role":"user"}],"temperature":0}'
    assert fmt.open_request(RECIPIENT, fmt.parse_envelope(VECTOR_ENVELOPE)) == PLAINTEXT


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (("header", "max_tokens"), 4096),
        (("header", "model"), "sim-large"),
        (("tier",), "high"),
        (("client_public_key",), fmt.public_b64(x25519.X25519PrivateKey.generate())),
        (("payload_id",), fmt.b64u(bytes(16))),
    ],
)
def test_any_changed_clear_field_fails_decryption(field, value):
    body = vector_envelope()
    target = body
    for name in field[:-1]:
        target = target[name]
    target[field[-1]] = value
    with pytest.raises(fmt.DecryptionFailed):
        fmt.open_request(RECIPIENT, fmt.parse_envelope(body))


def test_another_key_cannot_open_it():
    with pytest.raises(fmt.DecryptionFailed):
        fmt.open_request(CLIENT, fmt.parse_envelope(VECTOR_ENVELOPE))


def test_response_piece_vector_and_round_trip():
    sealer = fmt.ResponseSealer(fmt.public_b64(CLIENT), PAYLOAD_ID, ephemeral=RESPONSE_EPHEMERAL)
    assert sealer.ephemeral_public_key == VECTOR_RESPONSE_EPHEMERAL
    assert sealer.seal({"x": 1}, nonce=bytes([7]) * 12) == VECTOR_PIECE
    opener = fmt.ResponseOpener(CLIENT, PAYLOAD_ID, VECTOR_RESPONSE_EPHEMERAL)
    assert opener.open(VECTOR_PIECE) == {"x": 1}
    second = sealer.seal({"y": 2})
    assert opener.open(second) == {"y": 2}
    with pytest.raises(fmt.DecryptionFailed):  # a piece replayed at another position
        opener.open({**second, "seq": 0})


def test_receipt_vector_and_its_checks():
    data = fmt.receipt_bytes(
        request_id="req_1", payload_id=PAYLOAD_ID, key_hash=fmt.key_hash("key_abc"), request_hash="00" * 32,
        model="sim-small", node_id="node_test", measurement="ab" * 24, input_tokens=5, output_tokens=7,
        issued_at=1700000000,
    )
    assert data == VECTOR_RECEIPT_BYTES
    signed = fmt.sign_receipt(SIGNER, data)
    assert signed["signature"] == VECTOR_SIGNATURE and fmt.public_b64(SIGNER) == VECTOR_SIGNING_KEY
    expected = {"request_id": "req_1", "payload_id": PAYLOAD_ID, "key_hash": fmt.key_hash("key_abc"),
                "request_hash": "00" * 32, "model": "sim-small", "node_id": "node_test"}
    _, _, fields = fmt.verify_receipt(VECTOR_SIGNING_KEY, signed, expected)
    assert (fields["input_tokens"], fields["output_tokens"]) == (5, 7)
    other = fmt.public_b64(ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(fmt.ReceiptError) as bad:
        fmt.verify_receipt(other, signed, expected)
    assert bad.value.reason == "bad_signature"
    with pytest.raises(fmt.ReceiptError) as mismatch:
        fmt.verify_receipt(VECTOR_SIGNING_KEY, signed, {**expected, "model": "sim-large"})
    assert mismatch.value.reason == "mismatch:model"
    with pytest.raises(fmt.ReceiptError) as missing:
        fmt.verify_receipt(VECTOR_SIGNING_KEY, None, expected)
    assert missing.value.reason == "missing"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"version": 2}, "version"),
        ({"tier": "ultra"}, "tier"),
        ({"payload_id": "short"}, "payload_id"),
        ({"nonce": "AAAA"}, "nonce"),
        ({"ciphertext": "not base64!"}, "ciphertext"),
        ({"header": {"model": "sim-small"}}, "header.max_tokens"),
        ({"recipient": {"node_id": None, "encryption_key": VECTOR_ENVELOPE["recipient"]["encryption_key"]}},
         "recipient.node_id"),
        ({"extra": 1}, "extra"),
    ],
)
def test_malformed_envelopes_name_the_field(change, field):
    with pytest.raises(fmt.EnvelopeError) as exc:
        fmt.parse_envelope({**VECTOR_ENVELOPE, **change})
    assert exc.value.field == field
