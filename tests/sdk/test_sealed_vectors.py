"""The SDK's SEALED.md implementation against the fixed vectors of the gateway's format tests
(tests/sealed/test_format.py, copied here): byte-exact envelope, a response piece, a signed receipt.
Two independent implementations agreeing on the same bytes."""
import base64

from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from private_inference import ClientKeyPair, crypto

RECIPIENT = x25519.X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
CLIENT = x25519.X25519PrivateKey.from_private_bytes(bytes(range(33, 65)))
EPHEMERAL = x25519.X25519PrivateKey.from_private_bytes(bytes(range(65, 97)))
SIGNER = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(129, 161)))
PAYLOAD_ID = "AAECAwQFBgcICQoLDA0ODw"
VECTOR_ENVELOPE = {
    "version": 1,
    "tier": "maximum",
    "payload_id": PAYLOAD_ID,
    "recipient": {"node_id": "node_test", "encryption_key": "B6N8vBQgk8i3VdwbEOhstCY3StFqqFPtC9/AsrhtHHw="},
    "header": {"model": "sim-small", "max_tokens": 32, "stream": True},
    "client_public_key": "WGmv9FBUlzLLqu1eXfmzCm2jHLDldCutWtShp2jxpns=",
    "ephemeral_public_key": "ZLEBsdC+WocEvQePmJUAH8A+jp+VIvGI3RKNmEbUhGY=",
    "nonce": "AAAAAAAAAAAAAAAA",
    "ciphertext": "AQfcDHgdeJPxF7XHwTYyML9RK4vZIEw+AhnE6YmMJARjd538ZMZoAcC78hDRpkQFnpJpDkFJs2SUbWREOMO+zoERn5QoMDpkkHSYGISq5kY=",
}
VECTOR_RESPONSE_EPHEMERAL = "JE/juWPomd0pW6/84kjTUw86mnR5ugYwAmgOv+etrUk="
VECTOR_PIECE = {"seq": 0, "nonce": "BwcHBwcHBwcHBwcH", "ciphertext": "fy9xgtgtTa9BD4UjFA3j135Q3PgB8gw="}
VECTOR_SIGNING_KEY = "AgvUJ0RrcjQk2A0srTUro982SdDvj6rgyn6yVEOUGyk="
VECTOR_RECEIPT_BYTES = (
    b'{"input_tokens":5,"issued_at":1700000000,"key_hash":"953e8055d0c4f25a22531141c993d20536eba70355011e4123282aa8b270ebc6",'
    b'"measurement":"abababababababababababababababababababababababab","model":"sim-small","node_id":"node_test",'
    b'"output_tokens":7,"payload_id":"AAECAwQFBgcICQoLDA0ODw",'
    b'"request_hash":"0000000000000000000000000000000000000000000000000000000000000000","request_id":"req_1","version":1}'
)
VECTOR_SIGNATURE = "4hWf7UIJIYk3udqcoojo201lCVTeoTzDjJaW0H1Js2yc6TMid0hNY+V78h3hJGELfZezfGM+zbIAECpuZn0RCw=="


def test_envelope_is_byte_exact():
    client = ClientKeyPair(CLIENT)
    body = {"model": "sim-small", "max_tokens": 32, "stream": True,
            "messages": [{"role": "user", "content": "hello"}], "temperature": 0}
    sealed = crypto.seal_request(body, tier="maximum", recipient_key=crypto.b64(crypto.raw_public(RECIPIENT.public_key())),
                                 node_id="node_test", client_public_key=client.public_b64, payload_id=PAYLOAD_ID,
                                 ephemeral=EPHEMERAL, nonce=bytes(12))
    assert sealed.envelope == VECTOR_ENVELOPE
    assert crypto.open_request(VECTOR_ENVELOPE, RECIPIENT)["messages"] == [{"role": "user", "content": "hello"}]


def test_response_piece_opens():
    opener = crypto.ResponseOpener(ClientKeyPair(CLIENT), PAYLOAD_ID)
    opener.start(VECTOR_RESPONSE_EPHEMERAL)
    assert opener.open(**VECTOR_PIECE) == {"x": 1}


def test_receipt_verifies_and_binds_its_fields():
    assert crypto.b64(crypto.raw_public(SIGNER.public_key())) == VECTOR_SIGNING_KEY
    receipt = {"receipt": base64.b64encode(VECTOR_RECEIPT_BYTES).decode(), "signature": VECTOR_SIGNATURE}
    fields = crypto.verify_receipt(receipt, signing_key=VECTOR_SIGNING_KEY,
                                   expected={"request_id": "req_1", "payload_id": PAYLOAD_ID, "node_id": "node_test"})
    assert (fields["input_tokens"], fields["output_tokens"]) == (5, 7)
    assert crypto.sign_receipt({k: v for k, v in fields.items() if k != "version"}, SIGNER) == receipt
