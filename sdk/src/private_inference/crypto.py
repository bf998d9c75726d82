"""The sealed wire format of gateway/SEALED.md (version 1), client side, plus the recipient side for tests.

Request: X25519(ephemeral, recipient) → HKDF-SHA256 → AES-256-GCM, the clear fields bound as
associated data. Response: X25519(node ephemeral, client) → HKDF-SHA256 (salt = payload id) →
AES-256-GCM per piece, associated data ``payload_id || ":" || seq``. Receipts: Ed25519 over the exact bytes.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._errors import SecurityError

VERSION = 1
TIERS = ("standard", "high", "maximum")
REQUEST_INFO = b"pi-sealed/v1/request"
RESPONSE_INFO = b"pi-sealed/v1/response"
AD_MEMBERS = ("version", "tier", "payload_id", "recipient", "header", "client_public_key")
HEADER_FIELDS = ("model", "max_tokens", "stream")
RECEIPT_FIELDS = ("version", "request_id", "payload_id", "key_hash", "request_hash", "model", "node_id",
                  "measurement", "input_tokens", "output_tokens", "issued_at")


# --- encodings ------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: Any, what: str = "value") -> bytes:
    if not isinstance(text, str):
        raise SecurityError(f"{what} is not base64 text", reason="malformed")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SecurityError(f"{what} is not valid base64", reason="malformed") from None


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def canonical(value: Any) -> bytes:
    """JSON with sorted keys, no insignificant whitespace, UTF-8 (what orjson's OPT_SORT_KEYS writes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def raw_public(key: x25519.X25519PublicKey | ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def x25519_public(text: str, what: str = "X25519 key") -> x25519.X25519PublicKey:
    raw = unb64(text, what)
    if len(raw) != 32:
        raise SecurityError(f"{what} must be 32 bytes", reason="malformed")
    return x25519.X25519PublicKey.from_public_bytes(raw)


def ed25519_public(text: str, what: str = "Ed25519 key") -> ed25519.Ed25519PublicKey:
    raw = unb64(text, what)
    if len(raw) != 32:
        raise SecurityError(f"{what} must be 32 bytes", reason="malformed")
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


# --- client key pairs ---------------------------------------------------------------------------


class ClientKeyPair:
    """The X25519 key pair a sealed response is encrypted to. Fresh per client by default; keep one
    in a password-protected PEM file (PKCS#8, the library's best available encryption) to reuse it."""

    def __init__(self, private_key: x25519.X25519PrivateKey | None = None):
        self.private_key = private_key or x25519.X25519PrivateKey.generate()

    @classmethod
    def generate(cls) -> ClientKeyPair:
        return cls()

    @property
    def public_key(self) -> x25519.X25519PublicKey:
        return self.private_key.public_key()

    @property
    def public_b64(self) -> str:
        return b64(raw_public(self.public_key))

    def to_pem(self, password: str | bytes | None) -> bytes:
        if password is None or password == "":
            encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
        else:
            encryption = serialization.BestAvailableEncryption(password.encode() if isinstance(password, str) else password)
        return self.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)

    @classmethod
    def from_pem(cls, data: bytes, password: str | bytes | None) -> ClientKeyPair:
        secret = password.encode() if isinstance(password, str) else password
        try:
            key = serialization.load_pem_private_key(data, password=secret or None)
        except (ValueError, TypeError) as exc:
            raise SecurityError(f"Cannot load the key pair: {exc}", reason="bad_key_file") from None
        if not isinstance(key, x25519.X25519PrivateKey):
            raise SecurityError("The PEM file does not hold an X25519 private key.", reason="bad_key_file")
        return cls(key)

    def save(self, path: str | os.PathLike, password: str | bytes | None) -> Path:
        """Write the PEM with mode 0600 (created so, never world-readable in between)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.to_pem(password))
        os.chmod(path, 0o600)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, password: str | bytes | None) -> ClientKeyPair:
        return cls.from_pem(Path(path).read_bytes(), password)


# --- the request envelope ---------------------------------------------------------------------


@dataclass
class SealedRequest:
    envelope: dict[str, Any]
    payload_id: str  # b64u, as in the envelope
    request_hash: str  # hex SHA-256 of the raw ciphertext (what the receipt must name)


def associated_data(envelope: dict[str, Any]) -> bytes:
    return canonical({name: envelope[name] for name in AD_MEMBERS})


def seal_request(
    body: dict[str, Any],
    *,
    tier: str,
    recipient_key: str,
    node_id: str | None,
    client_public_key: str,
    payload_id: str | None = None,
    ephemeral: x25519.X25519PrivateKey | None = None,
    nonce: bytes | None = None,
) -> SealedRequest:
    """The envelope for a chat request ``body`` (``model`` and ``max_tokens`` required; ``stream`` optional).
    ``payload_id``, ``ephemeral`` and ``nonce`` are fresh random values unless given (test vectors only)."""
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {', '.join(TIERS)}")
    if tier != "standard" and not node_id:
        raise ValueError("tiers high and maximum are addressed to a node: node_id is required")
    body = dict(body)
    model, max_tokens, stream = body.pop("model", None), body.pop("max_tokens", None), bool(body.pop("stream", False))
    if not isinstance(model, str) or not model:
        raise ValueError("model is required")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError("max_tokens (a positive integer) is required for sealed requests: the reservation comes from it")
    recipient_public = x25519_public(recipient_key, "recipient key")
    ephemeral = ephemeral or x25519.X25519PrivateKey.generate()
    ephemeral_raw = raw_public(ephemeral.public_key())
    key = _hkdf(ephemeral.exchange(recipient_public), ephemeral_raw + raw_public(recipient_public), REQUEST_INFO)
    payload_id = payload_id or b64u(os.urandom(16))
    envelope: dict[str, Any] = {
        "version": VERSION,
        "tier": tier,
        "payload_id": payload_id,
        "recipient": {"node_id": node_id if tier != "standard" else None, "encryption_key": recipient_key},
        "header": {"model": model, "max_tokens": max_tokens, "stream": stream},
        "client_public_key": client_public_key,
        "ephemeral_public_key": b64(ephemeral_raw),
    }
    nonce = nonce or os.urandom(12)
    ciphertext = AESGCM(key).encrypt(nonce, canonical(body), associated_data(envelope))
    envelope["nonce"] = b64(nonce)
    envelope["ciphertext"] = b64(ciphertext)
    return SealedRequest(envelope, payload_id, hashlib.sha256(ciphertext).hexdigest())


def open_request(envelope: dict[str, Any], recipient_private: x25519.X25519PrivateKey) -> dict[str, Any]:
    """The recipient's side (a node, the gateway for standard): the chat request the envelope holds."""
    ephemeral_raw = unb64(envelope["ephemeral_public_key"], "ephemeral_public_key")
    ephemeral = x25519.X25519PublicKey.from_public_bytes(ephemeral_raw)
    recipient_raw = raw_public(recipient_private.public_key())
    key = _hkdf(recipient_private.exchange(ephemeral), ephemeral_raw + recipient_raw, REQUEST_INFO)
    try:
        plaintext = AESGCM(key).decrypt(unb64(envelope["nonce"], "nonce"), unb64(envelope["ciphertext"], "ciphertext"),
                                        associated_data(envelope))
    except InvalidTag:
        raise SecurityError("The envelope does not decrypt (wrong key or altered clear fields).", reason="decryption_failed") from None
    return {**json.loads(plaintext), **{k: envelope["header"][k] for k in HEADER_FIELDS}}


# --- the response -------------------------------------------------------------------------------


def _response_ad(payload_id: str, seq: int) -> bytes:
    return payload_id.encode("ascii") + b":" + str(seq).encode("ascii")


class ResponseOpener:
    """Decrypts the pieces of one sealed response, in order (``seq`` 0, 1, …: a replayed, dropped or
    reordered piece is refused)."""

    def __init__(self, client: ClientKeyPair, payload_id: str):
        self.client = client
        self.payload_id = payload_id
        self.key: bytes | None = None
        self.next_seq = 0

    def start(self, ephemeral_public_key: str) -> None:
        node_ephemeral = x25519_public(ephemeral_public_key, "response ephemeral_public_key")
        self.key = _hkdf(self.client.private_key.exchange(node_ephemeral), unb64u(self.payload_id), RESPONSE_INFO)

    def open(self, seq: Any, nonce: str, ciphertext: str) -> dict[str, Any]:
        if self.key is None:
            raise SecurityError("A sealed piece came before the response's key.", reason="decryption_failed")
        if seq != self.next_seq:
            raise SecurityError(f"Sealed piece {seq!r} out of order (expected {self.next_seq}).", reason="decryption_failed")
        try:
            plaintext = AESGCM(self.key).decrypt(unb64(nonce, "nonce"), unb64(ciphertext, "ciphertext"),
                                                 _response_ad(self.payload_id, seq))
        except InvalidTag:
            raise SecurityError("A sealed piece does not decrypt: altered, or not for this client.", reason="decryption_failed") from None
        self.next_seq += 1
        return json.loads(plaintext)


class ResponseSealer:
    """The node's side of the response (tests, and anyone implementing a node)."""

    def __init__(self, client_public_key: str, payload_id: str):
        ephemeral = x25519.X25519PrivateKey.generate()
        self.ephemeral_public_key = b64(raw_public(ephemeral.public_key()))
        self.key = _hkdf(ephemeral.exchange(x25519_public(client_public_key)), unb64u(payload_id), RESPONSE_INFO)
        self.payload_id = payload_id
        self.seq = 0

    def seal(self, obj: dict[str, Any]) -> dict[str, Any]:
        nonce = os.urandom(12)
        ciphertext = AESGCM(self.key).encrypt(nonce, canonical(obj), _response_ad(self.payload_id, self.seq))
        piece = {"seq": self.seq, "nonce": b64(nonce), "ciphertext": b64(ciphertext)}
        self.seq += 1
        return piece


# --- receipts -------------------------------------------------------------------------------------


def sign_receipt(fields: dict[str, Any], signing_key: ed25519.Ed25519PrivateKey) -> dict[str, str]:
    data = canonical({"version": VERSION, **fields})
    return {"receipt": b64(data), "signature": b64(signing_key.sign(data))}


def verify_receipt(receipt: Any, *, signing_key: str, expected: dict[str, Any]) -> dict[str, Any]:
    """The receipt's fields once its Ed25519 signature verifies over the exact bytes with
    ``signing_key`` (b64 raw) and every field of ``expected`` matches; SecurityError otherwise."""
    if not isinstance(receipt, dict) or "receipt" not in receipt or "signature" not in receipt:
        raise SecurityError("The answer carries no usage receipt.", reason="missing_receipt")
    data = unb64(receipt["receipt"], "receipt")
    signature = unb64(receipt["signature"], "receipt signature")
    try:
        ed25519_public(signing_key, "signing key").verify(signature, data)
    except InvalidSignature:
        raise SecurityError("The usage receipt's signature does not verify with the node's attested key.",
                            reason="bad_signature") from None
    try:
        fields = json.loads(data)
    except ValueError:
        raise SecurityError("The usage receipt is not JSON.", reason="bad_receipt") from None
    if not isinstance(fields, dict) or fields.get("version") != VERSION:
        raise SecurityError("The usage receipt is not a version 1 receipt.", reason="bad_receipt")
    for name in ("input_tokens", "output_tokens"):
        value = fields.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SecurityError(f"The usage receipt's {name} is not a count.", reason="bad_receipt")
    for name, value in expected.items():
        if value is not None and fields.get(name) != value:
            raise SecurityError(f"The usage receipt's {name} is {fields.get(name)!r}, not {value!r}.",
                                reason="receipt_mismatch")
    return fields
