"""The sealed-request wire format of gateway/SEALED.md, version 1: one module for every side.

The gateway (parsing, standard tier, receipt checks) and the node simulator
(nodes/nodeserver/sealed.py) both use it; tests use its client half (``seal_request``,
``ResponseOpener``). Pure functions over ``cryptography``; no Django.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

VERSION = 1
TIERS = ("standard", "high", "maximum")
REQUEST_INFO = b"pi-sealed/v1/request"
RESPONSE_INFO = b"pi-sealed/v1/response"
PAYLOAD_ID_BYTES = 16
NONCE_BYTES = 12
KEY_BYTES = 32
TAG_BYTES = 16
GATEWAY_NODE_ID = "gateway"  # the receipt's node_id on the standard tier
RECEIPT_FIELDS = (
    "version", "request_id", "payload_id", "key_hash", "request_hash", "model", "node_id", "measurement",
    "input_tokens", "output_tokens", "issued_at",
)
# What the gateway checks a receipt against (SEALED.md): the rest is what it settles or records.
BOUND_FIELDS = ("request_id", "payload_id", "key_hash", "request_hash", "model", "node_id")
ENVELOPE_FIELDS = (
    "version", "tier", "payload_id", "recipient", "header", "client_public_key", "ephemeral_public_key", "nonce",
    "ciphertext",
)


class EnvelopeError(ValueError):
    """A malformed envelope; ``field`` names the member at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class DecryptionFailed(Exception):
    """The ciphertext does not open with this key and these clear fields (tampered, or addressed elsewhere)."""


class ReceiptError(Exception):
    """A receipt that must not be settled from; ``reason``: bad_signature, malformed, mismatch:<field>."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# --- encodings ------------------------------------------------------------------------------


def canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: Any, field: str = "value") -> bytes:
    if not isinstance(text, str):
        raise EnvelopeError(field, f"'{field}' must be a base64 string.")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError(field, f"'{field}' is not valid base64.") from None


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: Any, field: str = "value") -> bytes:
    if not isinstance(text, str) or "=" in text or not text:
        raise EnvelopeError(field, f"'{field}' must be unpadded URL-safe base64.")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise EnvelopeError(field, f"'{field}' is not valid URL-safe base64.") from None


def raw_public(key: x25519.X25519PrivateKey | ed25519.Ed25519PrivateKey | x25519.X25519PublicKey | ed25519.Ed25519PublicKey) -> bytes:
    if hasattr(key, "public_key"):
        key = key.public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def public_b64(key) -> str:
    return b64(raw_public(key))


def _x25519_public(raw: bytes, field: str) -> x25519.X25519PublicKey:
    if len(raw) != KEY_BYTES:
        raise EnvelopeError(field, f"'{field}' must be a 32-byte X25519 public key.")
    return x25519.X25519PublicKey.from_public_bytes(raw)


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def key_hash(key_public_id: str) -> str:
    """What receipts name the billing key by: hex SHA-256 of its public id."""
    return hashlib.sha256(key_public_id.encode()).hexdigest()


# --- the request envelope -----------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    body: dict[str, Any]  # as received: forwarded to the node unchanged
    tier: str
    payload_id: str
    node_id: str | None
    recipient_key: str
    header: dict[str, Any]
    client_public_key: str
    ephemeral_public: bytes
    nonce: bytes
    ciphertext: bytes

    @property
    def model(self) -> str:
        return self.header["model"]

    @property
    def max_tokens(self) -> int:
        return self.header["max_tokens"]

    @property
    def stream(self) -> bool:
        return bool(self.header.get("stream", False))

    @property
    def request_hash(self) -> str:
        return hashlib.sha256(self.ciphertext).hexdigest()

    def aad(self) -> bytes:
        return request_aad(self.body)


def request_aad(body: dict[str, Any]) -> bytes:
    return canonical({k: body[k] for k in ("version", "tier", "payload_id", "recipient", "header", "client_public_key")})


def parse_envelope(body: Any) -> Envelope:
    """Validate a sealed request body (SEALED.md); EnvelopeError names the first bad field."""
    if not isinstance(body, dict):
        raise EnvelopeError("body", "The request body must be a JSON object.")
    unknown = sorted(set(body) - set(ENVELOPE_FIELDS))
    if unknown:
        raise EnvelopeError(unknown[0], f"Unknown field '{unknown[0]}'.")
    for name in ENVELOPE_FIELDS:
        if name not in body:
            raise EnvelopeError(name, f"Missing required field '{name}'.")
    if body["version"] != VERSION or isinstance(body["version"], bool):
        raise EnvelopeError("version", f"'version' must be {VERSION}.")
    tier = body["tier"]
    if tier not in TIERS:
        raise EnvelopeError("tier", f"'tier' must be one of {', '.join(TIERS)}.")
    payload_id = body["payload_id"]
    if len(unb64u(payload_id, "payload_id")) != PAYLOAD_ID_BYTES:
        raise EnvelopeError("payload_id", f"'payload_id' must encode {PAYLOAD_ID_BYTES} bytes.")
    recipient = body["recipient"]
    if not isinstance(recipient, dict) or set(recipient) != {"node_id", "encryption_key"}:
        raise EnvelopeError("recipient", "'recipient' must be an object with exactly 'node_id' and 'encryption_key'.")
    node_id = recipient["node_id"]
    if tier == "standard":
        if node_id is not None:
            raise EnvelopeError("recipient.node_id", "'recipient.node_id' must be null for the standard tier.")
    elif not (isinstance(node_id, str) and 0 < len(node_id) <= 64):
        raise EnvelopeError("recipient.node_id", f"'recipient.node_id' is required for the {tier} tier.")
    _x25519_public(unb64(recipient["encryption_key"], "recipient.encryption_key"), "recipient.encryption_key")
    header = body["header"]
    if not isinstance(header, dict) or not set(header) <= {"model", "max_tokens", "stream"}:
        raise EnvelopeError("header", "'header' must be an object with 'model', 'max_tokens' and optionally 'stream'.")
    if not (isinstance(header.get("model"), str) and 0 < len(header["model"]) <= 200):
        raise EnvelopeError("header.model", "'header.model' must be a model name.")
    max_tokens = header.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise EnvelopeError("header.max_tokens", "'header.max_tokens' is required: an integer >= 1.")
    if not isinstance(header.get("stream", False), bool):
        raise EnvelopeError("header.stream", "'header.stream' must be a boolean.")
    _x25519_public(unb64(body["client_public_key"], "client_public_key"), "client_public_key")
    ephemeral = unb64(body["ephemeral_public_key"], "ephemeral_public_key")
    _x25519_public(ephemeral, "ephemeral_public_key")
    nonce = unb64(body["nonce"], "nonce")
    if len(nonce) != NONCE_BYTES:
        raise EnvelopeError("nonce", f"'nonce' must encode {NONCE_BYTES} bytes.")
    ciphertext = unb64(body["ciphertext"], "ciphertext")
    if len(ciphertext) < TAG_BYTES:
        raise EnvelopeError("ciphertext", "'ciphertext' is shorter than its authentication tag.")
    return Envelope(
        body=body, tier=tier, payload_id=payload_id, node_id=node_id, recipient_key=recipient["encryption_key"],
        header=header, client_public_key=body["client_public_key"], ephemeral_public=ephemeral, nonce=nonce,
        ciphertext=ciphertext,
    )


def _request_key(shared: bytes, ephemeral_public: bytes, recipient_public: bytes) -> bytes:
    return _hkdf(shared, ephemeral_public + recipient_public, REQUEST_INFO)


def seal_request(
    *,
    recipient_key: str,
    tier: str,
    header: dict[str, Any],
    client_public_key: str,
    plaintext: dict[str, Any],
    node_id: str | None = None,
    payload_id: str | None = None,
    ephemeral: x25519.X25519PrivateKey | None = None,
    nonce: bytes | None = None,
) -> dict[str, Any]:
    """The client's half: an envelope for ``plaintext`` (the chat request without model/max_tokens/stream)."""
    ephemeral = ephemeral or x25519.X25519PrivateKey.generate()
    nonce = nonce or os.urandom(NONCE_BYTES)
    recipient_raw = base64.b64decode(recipient_key)
    ephemeral_raw = raw_public(ephemeral)
    body: dict[str, Any] = {
        "version": VERSION,
        "tier": tier,
        "payload_id": payload_id or b64u(os.urandom(PAYLOAD_ID_BYTES)),
        "recipient": {"node_id": node_id, "encryption_key": recipient_key},
        "header": header,
        "client_public_key": client_public_key,
        "ephemeral_public_key": b64(ephemeral_raw),
        "nonce": b64(nonce),
    }
    shared = ephemeral.exchange(x25519.X25519PublicKey.from_public_bytes(recipient_raw))
    key = _request_key(shared, ephemeral_raw, recipient_raw)
    body["ciphertext"] = b64(AESGCM(key).encrypt(nonce, canonical(plaintext), request_aad(body)))
    return body


def open_request(private: x25519.X25519PrivateKey, envelope: Envelope) -> dict[str, Any]:
    """The recipient's half: the plaintext chat request; DecryptionFailed if anything was changed
    or the envelope is addressed to another key."""
    recipient_raw = raw_public(private)
    if base64.b64decode(envelope.recipient_key) != recipient_raw:
        raise DecryptionFailed("the envelope is addressed to another key")
    shared = private.exchange(x25519.X25519PublicKey.from_public_bytes(envelope.ephemeral_public))
    key = _request_key(shared, envelope.ephemeral_public, recipient_raw)
    try:
        raw = AESGCM(key).decrypt(envelope.nonce, envelope.ciphertext, envelope.aad())
        plaintext = orjson.loads(raw)
    except (InvalidTag, orjson.JSONDecodeError):
        raise DecryptionFailed("the ciphertext does not open with these clear fields") from None
    if not isinstance(plaintext, dict):
        raise DecryptionFailed("the plaintext is not a JSON object")
    return plaintext


# --- the response ---------------------------------------------------------------------------------


def _piece_aad(payload_id: str, seq: int) -> bytes:
    return payload_id.encode("ascii") + b":" + str(seq).encode("ascii")


def _response_key(shared: bytes, payload_id: str) -> bytes:
    return _hkdf(shared, unb64u(payload_id, "payload_id"), RESPONSE_INFO)


class ResponseSealer:
    """The recipient's half: encrypts response pieces to the client's key."""

    def __init__(self, client_public_key: str, payload_id: str, ephemeral: x25519.X25519PrivateKey | None = None):
        ephemeral = ephemeral or x25519.X25519PrivateKey.generate()
        self.payload_id = payload_id
        self.ephemeral_public_key = public_b64(ephemeral)
        client = x25519.X25519PublicKey.from_public_bytes(base64.b64decode(client_public_key))
        self._aead = AESGCM(_response_key(ephemeral.exchange(client), payload_id))
        self.seq = 0

    def seal(self, obj: Any, *, nonce: bytes | None = None) -> dict[str, Any]:
        """The next piece: ``{"seq", "nonce", "ciphertext"}``."""
        seq, self.seq = self.seq, self.seq + 1
        nonce = nonce or os.urandom(NONCE_BYTES)
        ciphertext = self._aead.encrypt(nonce, canonical(obj), _piece_aad(self.payload_id, seq))
        return {"seq": seq, "nonce": b64(nonce), "ciphertext": b64(ciphertext)}


class ResponseOpener:
    """The client's half: opens response pieces with its private key."""

    def __init__(self, client_private: x25519.X25519PrivateKey, payload_id: str, ephemeral_public_key: str):
        peer = x25519.X25519PublicKey.from_public_bytes(base64.b64decode(ephemeral_public_key))
        self.payload_id = payload_id
        self._aead = AESGCM(_response_key(client_private.exchange(peer), payload_id))

    def open(self, piece: dict[str, Any]) -> Any:
        try:
            raw = self._aead.decrypt(
                base64.b64decode(piece["nonce"]), base64.b64decode(piece["ciphertext"]),
                _piece_aad(self.payload_id, int(piece["seq"])),
            )
        except (InvalidTag, KeyError, ValueError, TypeError):
            raise DecryptionFailed("a response piece does not open") from None
        return orjson.loads(raw)


# --- the usage receipt --------------------------------------------------------------------------------


def receipt_bytes(
    *, request_id: str, payload_id: str, key_hash: str, request_hash: str, model: str, node_id: str,
    measurement: str, input_tokens: int, output_tokens: int, issued_at: int | None = None,
) -> bytes:
    return canonical({
        "version": VERSION,
        "request_id": request_id,
        "payload_id": payload_id,
        "key_hash": key_hash,
        "request_hash": request_hash,
        "model": model,
        "node_id": node_id,
        "measurement": measurement,
        "input_tokens": int(input_tokens),
        "output_tokens": int(output_tokens),
        "issued_at": int(time.time()) if issued_at is None else int(issued_at),
    })


def sign_receipt(signing_key: ed25519.Ed25519PrivateKey, data: bytes) -> dict[str, str]:
    return {"receipt": b64(data), "signature": b64(signing_key.sign(data))}


def verify_receipt(signing_key: str | None, receipt: Any, expected: dict[str, Any]) -> tuple[bytes, bytes, dict[str, Any]]:
    """Check ``receipt`` (``{"receipt", "signature"}``) against the attested ``signing_key`` (b64 raw
    Ed25519) over its exact bytes, then every bound field against ``expected``.

    Returns (receipt bytes, signature, fields); ReceiptError says what is wrong."""
    if not isinstance(receipt, dict) or not isinstance(receipt.get("receipt"), str) or not isinstance(receipt.get("signature"), str):
        raise ReceiptError("missing", "the node sent no receipt")
    try:
        data = base64.b64decode(receipt["receipt"], validate=True)
        signature = base64.b64decode(receipt["signature"], validate=True)
    except (binascii.Error, ValueError):
        raise ReceiptError("malformed", "the receipt is not base64") from None
    if not signing_key:
        raise ReceiptError("bad_signature", "no attested signing key to check the receipt with")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(signing_key)).verify(signature, data)
    except (InvalidSignature, ValueError):
        raise ReceiptError("bad_signature", "the receipt's signature does not verify with the attested key") from None
    try:
        fields = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ReceiptError("malformed", "the receipt is not JSON") from None
    if not isinstance(fields, dict) or set(fields) != set(RECEIPT_FIELDS) or fields.get("version") != VERSION:
        raise ReceiptError("malformed", "the receipt does not have exactly the version 1 fields")
    for name in ("input_tokens", "output_tokens", "issued_at"):
        value = fields[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ReceiptError("malformed", f"the receipt's {name} is not a count")
    for name in BOUND_FIELDS:
        if fields[name] != expected[name]:
            raise ReceiptError(f"mismatch:{name}", f"the receipt's {name} does not match the request")
    return data, signature, fields
