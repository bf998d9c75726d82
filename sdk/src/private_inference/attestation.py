"""Checking a node's attestation evidence (``x509-report-v1``) on the client, trusting only the roots given.

The same checks the gateway makes (nodes/attestation/x509.py), made again here so a client need not
trust the platform's word: every certificate currently valid with an Ed25519 or ECDSA P-256/P-384 key;
the chain, leaf first, unbroken (each signature checked against its issuer's key) up to one of the
trust roots; intermediates are CAs allowed to sign; the leaf is no CA; the signature over the exact
report bytes verifies with the leaf's key; the report is well formed; and then what a client adds:
the report's keys are the ones the platform lists for the node, its measurement is allowed (when the
client names allowed measurements), and it is fresh enough.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519

from ._errors import SecurityError

FORMAT = "x509-report-v1"
MAX_CHAIN = 4
MAX_REPORT_BYTES = 4096
CURVE_HASHES = {ec.SECP256R1: hashes.SHA256, ec.SECP384R1: hashes.SHA384}
HEX = re.compile(r"[0-9a-f]+")
MEASUREMENT = re.compile(r"[0-9a-f]{40,128}")


@dataclass(frozen=True)
class VerifiedReport:
    measurement: str
    signing_key: str  # b64 raw Ed25519: receipts
    encryption_key: str  # b64 raw X25519: sealed requests
    issued_at: int
    nonce: str
    root_subject: str


def _fail(reason: str, message: str) -> SecurityError:
    return SecurityError(f"Attestation not verified: {message}", reason=reason)


def load_trust_roots(source: Any) -> list[x509.Certificate]:
    """Certificates from PEM bytes/text, a path, or a list of those; only CA certificates are kept."""
    items = source if isinstance(source, (list, tuple)) else [source]
    roots: list[x509.Certificate] = []
    for item in items:
        if isinstance(item, x509.Certificate):
            roots.append(item)
            continue
        if isinstance(item, (str, os.PathLike)) and not str(item).lstrip().startswith("-----BEGIN"):
            data = Path(item).read_bytes()
        else:
            data = item.encode() if isinstance(item, str) else bytes(item)
        try:
            roots.extend(x509.load_pem_x509_certificates(data))
        except ValueError:
            raise _fail("no_trust_roots", "a trust root holds no PEM certificate") from None
    roots = [cert for cert in roots if _is_ca(cert)]
    if not roots:
        raise _fail("no_trust_roots", "no CA certificate among the trust roots")
    return roots


def _unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise _fail("malformed_evidence", f"{what} is not base64")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _fail("malformed_evidence", f"{what} is not base64") from None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(no subject)"


def _check_valid(cert: x509.Certificate, now: dt.datetime) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise _fail("invalid_certificate", f"certificate {_name(cert)} is not valid now")
    key = cert.public_key()
    if not (isinstance(key, ed25519.Ed25519PublicKey)
            or (isinstance(key, ec.EllipticCurvePublicKey) and type(key.curve) in CURVE_HASHES)):
        raise _fail("invalid_certificate", f"certificate {_name(cert)} has a key that is not Ed25519 or ECDSA P-256/P-384")
    if isinstance(cert.signature_hash_algorithm, (hashes.SHA1, hashes.MD5)):
        raise _fail("invalid_certificate", f"certificate {_name(cert)} is signed with a weak hash")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_may_sign(ca: x509.Certificate, below: int) -> None:
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise _fail("untrusted_chain", f"certificate {_name(ca)} signs others but is no CA")
    if constraints.path_length is not None and below > constraints.path_length:
        raise _fail("untrusted_chain", f"certificate {_name(ca)} may not sign a chain this long")
    try:
        usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise _fail("untrusted_chain", f"certificate {_name(ca)} may not sign certificates")


def chain_to_root(chain: list[x509.Certificate], roots: list[x509.Certificate], now: dt.datetime) -> x509.Certificate:
    for cert in chain:
        _check_valid(cert, now)
    leaf = chain[0]
    if _is_ca(leaf):
        raise _fail("invalid_certificate", "the attestation key's certificate must not be a CA")
    try:
        if not leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            raise _fail("invalid_certificate", "the attestation key's certificate does not allow signatures")
    except x509.ExtensionNotFound:
        pass
    current, intermediates = leaf, chain[1:]
    for below in range(len(chain)):
        for root in roots:
            if root.subject == current.issuer and _issued_by(current, root):
                _check_valid(root, now)
                _check_may_sign(root, below)
                return root
        if below >= len(intermediates):
            break
        issuer = intermediates[below]
        if issuer.subject != current.issuer or not _issued_by(current, issuer):
            raise _fail("untrusted_chain", f"certificate {_name(current)} is not signed by the next in the chain")
        _check_may_sign(issuer, below)
        current = issuer
    raise _fail("untrusted_chain", "the certificate chain does not lead to a trusted root")


def _raw_key(value: Any, name: str, load) -> str:
    raw = _unb64(value, f"the report's {name}")
    try:
        load(raw)
    except ValueError:
        raise _fail("malformed_evidence", f"the report's {name} is not a raw public key") from None
    return value


def verify_evidence(
    evidence: dict[str, Any],
    trust_roots: list[x509.Certificate],
    *,
    expected_keys: dict[str, str] | None = None,
    allowed_measurements: set[str] | None = None,
    max_age: float | None = None,
    now: dt.datetime | None = None,
) -> VerifiedReport:
    """The report's claims once the evidence verifies against ``trust_roots``; SecurityError otherwise.

    ``expected_keys`` ({"signing", "encryption"}, b64): the keys the platform lists for the node,
    which must be the report's. ``max_age``: seconds the report may be old."""
    now = now or dt.datetime.now(dt.UTC)
    if not isinstance(evidence, dict) or evidence.get("format") != FORMAT:
        raise _fail("unsupported_format", f"evidence format must be {FORMAT}")
    data, signature = _unb64(evidence.get("report"), "report"), _unb64(evidence.get("signature"), "signature")
    if not 0 < len(data) <= MAX_REPORT_BYTES:
        raise _fail("malformed_evidence", "report size out of bounds")
    pems = evidence.get("certificates")
    if not (isinstance(pems, list) and 0 < len(pems) <= MAX_CHAIN):
        raise _fail("malformed_evidence", "certificates must list 1 to 4 PEM certificates")
    try:
        chain = [x509.load_pem_x509_certificate(p.encode()) for p in pems]
    except (ValueError, AttributeError):
        raise _fail("malformed_evidence", "a certificate is not valid PEM") from None
    root = chain_to_root(chain, trust_roots, now)
    key = chain[0].public_key()
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            key.verify(signature, data, ec.ECDSA(CURVE_HASHES[type(key.curve)]()))
    except InvalidSignature:
        raise _fail("bad_signature", "the report's signature does not verify with the attestation key") from None
    try:
        report = json.loads(data)
    except ValueError:
        raise _fail("malformed_evidence", "the report is not JSON") from None
    if not isinstance(report, dict) or report.get("version") != 1:
        raise _fail("malformed_evidence", "the report must be a version 1 JSON object")
    nonce, issued_at, measurement = report.get("nonce"), report.get("issued_at"), report.get("measurement")
    if not (isinstance(nonce, str) and 0 < len(nonce) <= 128 and HEX.fullmatch(nonce)):
        raise _fail("malformed_evidence", "the report's nonce must be lowercase hex")
    if isinstance(issued_at, bool) or not isinstance(issued_at, int) or not 0 < issued_at < 2**33:
        raise _fail("malformed_evidence", "the report's issued_at must be Unix seconds")
    if not (isinstance(measurement, str) and MEASUREMENT.fullmatch(measurement)):
        raise _fail("malformed_evidence", "the report's measurement must be a lowercase hex digest")
    signing = _raw_key(report.get("signing_key"), "signing_key", ed25519.Ed25519PublicKey.from_public_bytes)
    encryption = _raw_key(report.get("encryption_key"), "encryption_key", x25519.X25519PublicKey.from_public_bytes)
    if max_age is not None and now.timestamp() - issued_at > max_age:
        raise _fail("stale", f"the report is {int(now.timestamp() - issued_at)} s old (at most {int(max_age)} s allowed)")
    if issued_at > now.timestamp() + 300:
        raise _fail("stale", "the report is dated in the future")
    if allowed_measurements is not None and measurement not in {m.lower() for m in allowed_measurements}:
        raise _fail("measurement_not_allowed", f"measurement {measurement} is not among the allowed ones")
    if expected_keys and (expected_keys.get("signing") not in (None, signing)
                          or expected_keys.get("encryption") not in (None, encryption)):
        raise _fail("key_mismatch", "the keys the platform lists for the node are not the ones its report binds")
    return VerifiedReport(measurement, signing, encryption, issued_at, nonce, _name(root))
