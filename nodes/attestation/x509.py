"""``x509-report-v1``: a report signed by an attestation key whose certificate chains to a trusted root.

Checked, in order: the evidence's shape and sizes; every certificate is currently
valid; the chain, leaf first, is unbroken (each certificate's signature verified
with its issuer's key by ``Certificate.verify_directly_issued_by``) and ends at a
root in ``ATTESTATION_TRUST_ROOTS``; intermediates are CAs allowed to sign
(basic constraints, path length, key usage); the leaf is no CA; every key is
Ed25519 or ECDSA P-256/P-384; the signature over the exact report bytes verifies
with the leaf's key; the report is well formed. The nonce, freshness and
measurement are checked by :func:`verifiers.verify`, as for any format.

Why not ``cryptography.x509.verification`` (the library's path builder)? It
applies the Web PKI algorithm policy, which forbids Ed25519 keys ("Forbidden
public key algorithm"), and attestation chains here may be Ed25519. The walk
below is short because the chain is given in order and is at most
:data:`MAX_CHAIN` long.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from typing import Any

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.hazmat.primitives.serialization import Encoding
from django.conf import settings

from . import report as fmt
from .verifiers import HEX, MEASUREMENT, AttestationFailure, Claims, EvidenceVerifier, register

log = logging.getLogger(__name__)

MAX_CHAIN = 4  # leaf + intermediates presented
MAX_PEM_CHARS = 8192
MAX_REPORT_BYTES = 4096
_WEAK_HASHES = (hashes.SHA1, hashes.MD5)


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


# --- trust roots ---------------------------------------------------------------------

_roots_cache: tuple[tuple, list[x509.Certificate]] | None = None


def trust_roots() -> list[x509.Certificate]:
    """The certificates in ``ATTESTATION_TRUST_ROOTS`` (PEM files, each may hold several), reread when a file changes.

    A missing or unreadable file raises AttestationFailure: a misconfigured platform verifies nobody.
    """
    global _roots_cache
    paths = list(settings.ATTESTATION_TRUST_ROOTS)
    try:
        stamp = tuple((p, os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in paths)
    except OSError as exc:
        log.error("attestation trust root unreadable: %s", exc)
        raise AttestationFailure("no_trust_roots", f"a trust root file is unreadable: {exc.strerror}") from None
    if _roots_cache is not None and _roots_cache[0] == stamp:
        return _roots_cache[1]
    roots: list[x509.Certificate] = []
    for path in paths:
        with open(path, "rb") as f:
            try:
                certs = x509.load_pem_x509_certificates(f.read())
            except ValueError:
                log.error("attestation trust root %s holds no PEM certificate", path)
                raise AttestationFailure("no_trust_roots", "a trust root file holds no certificate") from None
        for cert in certs:
            if _is_ca(cert):
                roots.append(cert)
            else:
                log.error("attestation trust root %s: %s is not a CA certificate; ignored", path, cert.subject.rfc4514_string())
    _roots_cache = (stamp, roots)
    return roots


# --- checks ------------------------------------------------------------------------------


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _key_ok(cert: x509.Certificate) -> bool:
    key = cert.public_key()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return True
    return isinstance(key, ec.EllipticCurvePublicKey) and type(key.curve) in fmt.CURVE_HASHES


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(no subject)"


def _check_valid(cert: x509.Certificate, now: dt.datetime) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise AttestationFailure(
            "invalid_certificate",
            f"certificate {_describe(cert)} is valid from {cert.not_valid_before_utc.isoformat()} "
            f"to {cert.not_valid_after_utc.isoformat()}, not now",
        )
    if not _key_ok(cert):
        raise AttestationFailure("invalid_certificate", f"certificate {_describe(cert)} has a key that is not Ed25519 or ECDSA P-256/P-384")
    if isinstance(cert.signature_hash_algorithm, _WEAK_HASHES):
        raise AttestationFailure("invalid_certificate", f"certificate {_describe(cert)} is signed with a weak hash")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_may_sign(ca: x509.Certificate, below: int) -> None:
    """``ca`` signs a chain with ``below`` intermediate CAs under it."""
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise AttestationFailure("untrusted_chain", f"certificate {_describe(ca)} signs others but is no CA")
    if constraints.path_length is not None and below > constraints.path_length:
        raise AttestationFailure("untrusted_chain", f"certificate {_describe(ca)} may not sign a chain this long")
    try:
        usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise AttestationFailure("untrusted_chain", f"certificate {_describe(ca)} may not sign certificates")


def _check_leaf(leaf: x509.Certificate) -> None:
    if _is_ca(leaf):
        raise AttestationFailure("invalid_certificate", "the attestation key's certificate must not be a CA")
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.digital_signature:
        raise AttestationFailure("invalid_certificate", "the attestation key's certificate does not allow signatures")


def chain_to_root(chain: list[x509.Certificate], roots: list[x509.Certificate], now: dt.datetime) -> x509.Certificate:
    """The trusted root ``chain`` (leaf first, then intermediates in order) leads to; AttestationFailure otherwise."""
    for cert in chain:
        _check_valid(cert, now)
    _check_leaf(chain[0])
    current, intermediates = chain[0], chain[1:]
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
            raise AttestationFailure("untrusted_chain", f"certificate {_describe(current)} is not signed by the next in the chain")
        _check_may_sign(issuer, below)
        current = issuer
    raise AttestationFailure("untrusted_chain", "the certificate chain does not lead to a trusted root")


# --- the report --------------------------------------------------------------------------


def _raw_key(value: Any, name: str, load) -> str:
    try:
        raw = fmt.unb64(value)
        load(raw)  # 32 bytes and a valid point
    except ValueError:
        raise AttestationFailure("malformed_evidence", f"the report's {name} is not a base64 raw public key") from None
    return value


def parse_report(data: bytes) -> dict[str, Any]:
    """The report's fields, checked; AttestationFailure if any is missing or malformed."""
    try:
        report = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise AttestationFailure("malformed_evidence", "the report is not JSON") from None
    if not isinstance(report, dict) or report.get("version") != fmt.VERSION:
        raise AttestationFailure("malformed_evidence", f"the report must be a JSON object with version {fmt.VERSION}")
    nonce, issued_at, measurement = report.get("nonce"), report.get("issued_at"), report.get("measurement")
    if not (isinstance(nonce, str) and 0 < len(nonce) <= 128 and HEX.fullmatch(nonce)):
        raise AttestationFailure("malformed_evidence", "the report's nonce must be lowercase hex")
    if isinstance(issued_at, bool) or not isinstance(issued_at, int) or not 0 < issued_at < 2**33:
        raise AttestationFailure("malformed_evidence", "the report's issued_at must be Unix seconds")
    if not (isinstance(measurement, str) and MEASUREMENT.fullmatch(measurement)):
        raise AttestationFailure("malformed_evidence", "the report's measurement must be a lowercase hex digest")
    return {
        "nonce": nonce,
        "issued_at": dt.datetime.fromtimestamp(issued_at, dt.timezone.utc),
        "measurement": measurement,
        "signing_key": _raw_key(report.get("signing_key"), "signing_key", ed25519.Ed25519PublicKey.from_public_bytes),
        "encryption_key": _raw_key(report.get("encryption_key"), "encryption_key", x25519.X25519PublicKey.from_public_bytes),
    }


def _certificates(evidence: dict[str, Any]) -> list[x509.Certificate]:
    pems = evidence.get("certificates")
    if not (isinstance(pems, list) and 0 < len(pems) <= MAX_CHAIN):
        raise AttestationFailure("malformed_evidence", f"'certificates' must list 1 to {MAX_CHAIN} PEM certificates, the key's own first")
    chain = []
    for pem in pems:
        if not isinstance(pem, str) or len(pem) > MAX_PEM_CHARS:
            raise AttestationFailure("malformed_evidence", "each certificate must be a PEM string")
        try:
            chain.append(x509.load_pem_x509_certificate(pem.encode()))
        except ValueError:
            raise AttestationFailure("malformed_evidence", "a certificate is not valid PEM") from None
    return chain


def _check_signature(leaf: x509.Certificate, signature: bytes, data: bytes) -> None:
    key = leaf.public_key()
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            key.verify(signature, data, ec.ECDSA(fmt.CURVE_HASHES[type(key.curve)]()))
    except InvalidSignature:
        raise AttestationFailure("bad_signature", "the report's signature does not verify with the attestation key") from None


@register
class X509ReportVerifier(EvidenceVerifier):
    format = fmt.FORMAT

    def verify(self, evidence: dict[str, Any], *, now: dt.datetime) -> Claims:
        try:
            data, signature = fmt.unb64(evidence.get("report")), fmt.unb64(evidence.get("signature"))
        except ValueError:
            raise AttestationFailure("malformed_evidence", "'report' and 'signature' must be base64") from None
        if not 0 < len(data) <= MAX_REPORT_BYTES:
            raise AttestationFailure("malformed_evidence", f"the report must be 1 to {MAX_REPORT_BYTES} bytes")
        chain = _certificates(evidence)
        root = chain_to_root(chain, trust_roots(), now)
        _check_signature(chain[0], signature, data)
        report = parse_report(data)
        return Claims(**report, root_fingerprint=fingerprint(root))
