"""The ``x509-report-v1`` evidence format: what a node sends, byte for byte.

The node signs a *report*, a JSON object, with its attestation key::

    {"version": 1, "nonce": "<hex, as the gateway sent it>", "issued_at": <unix seconds>,
     "measurement": "<lowercase hex digest of the node's software>",
     "signing_key": "<base64, raw Ed25519 public key>", "encryption_key": "<base64, raw X25519 public key>"}

and sends the *evidence*::

    {"format": "x509-report-v1",
     "report": "<base64 of the exact report bytes it signed>",
     "signature": "<base64: Ed25519, or DER ECDSA with SHA-256 (P-256) / SHA-384 (P-384)>",
     "certificates": ["<PEM of the attestation key's certificate>", "<PEM of an intermediate>", ...]}

The report travels as the bytes that were signed, so nobody (the gateway storing it,
a customer checking it later) has to re-serialize JSON to check the signature.
"""
from __future__ import annotations

import base64
import binascii
import time
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

FORMAT = "x509-report-v1"
VERSION = 1
# A curve's own hash, as in TLS 1.3 and WebAuthn: P-256 with SHA-256, P-384 with SHA-384.
CURVE_HASHES: dict[type[ec.EllipticCurve], type[hashes.HashAlgorithm]] = {
    ec.SECP256R1: hashes.SHA256,
    ec.SECP384R1: hashes.SHA384,
}
AttestationKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: Any) -> bytes:
    """Strict base64; ValueError on anything else."""
    if not isinstance(text, str):
        raise ValueError("not a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"bad base64: {exc}") from None


def raw_public(key: ed25519.Ed25519PublicKey | x25519.X25519PublicKey) -> str:
    return b64(key.public_bytes(Encoding.Raw, PublicFormat.Raw))


def sign(key: AttestationKey, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    if isinstance(key, ec.EllipticCurvePrivateKey) and type(key.curve) in CURVE_HASHES:
        return key.sign(data, ec.ECDSA(CURVE_HASHES[type(key.curve)]()))
    raise TypeError("an attestation key is Ed25519 or ECDSA P-256/P-384")


def report_bytes(
    *, nonce: str, measurement: str, signing_key: str, encryption_key: str, issued_at: int | None = None
) -> bytes:
    return orjson.dumps(
        {
            "version": VERSION,
            "nonce": nonce,
            "issued_at": int(time.time()) if issued_at is None else issued_at,
            "measurement": measurement,
            "signing_key": signing_key,
            "encryption_key": encryption_key,
        },
        option=orjson.OPT_SORT_KEYS,
    )


def evidence(key: AttestationKey, certificates: list[str], report: bytes) -> dict[str, Any]:
    """The evidence for ``report``, signed by ``key``; ``certificates``: PEM, the key's own first."""
    return {"format": FORMAT, "report": b64(report), "signature": b64(sign(key, report)), "certificates": certificates}
