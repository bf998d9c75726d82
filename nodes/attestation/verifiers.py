"""Evidence verifiers, registered by format, and the checks every format shares.

A verifier answers one question: is this evidence authentic, and what does it
bind? It checks the format's own cryptography (for ``x509-report-v1`` a
certificate chain to a trusted root and a signature; for an AMD SEV-SNP or Intel
TDX quote it would be the VCEK/PCK chain to AMD's or Intel's root and the
quote's signature) and returns the :class:`Claims`. :func:`verify` then applies
what does not depend on the format: the nonce is the one we sent, the report
is fresh, the measurement is allow-listed.

Adding a TEE quote format is one class::

    @register
    class SevSnpVerifier(EvidenceVerifier):
        format = "sev-snp-v1"

        def verify(self, evidence, *, now):
            # check the VCEK chain to AMD's ARK and the report signature, then read REPORT_DATA,
            # which the node sets to SHA-512(nonce || signing key || encryption key)
            return Claims(nonce=..., measurement=report.measurement.hex(), signing_key=..., encryption_key=...,
                          issued_at=None)  # no clock in a quote: the nonce alone proves freshness
"""
from __future__ import annotations

import datetime as dt
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

HEX = re.compile(r"[0-9a-f]+")
MEASUREMENT = re.compile(r"[0-9a-f]{32,128}")


class AttestationFailure(Exception):
    """Evidence refused; ``reason`` is a stable code (stored on the record), the message says why."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Claims:
    """What authentic evidence binds together, whatever its format."""

    nonce: str  # lowercase hex, as we sent it
    measurement: str  # lowercase hex digest of the node's software
    signing_key: str  # base64 raw Ed25519 public key (usage receipts)
    encryption_key: str  # base64 raw X25519 public key (sealed requests)
    issued_at: dt.datetime | None  # None where the format has no clock: the nonce alone proves freshness
    root_fingerprint: str = ""  # SHA-256 (hex) of the trust anchor the evidence chained to


class EvidenceVerifier:
    format: ClassVar[str]

    def verify(self, evidence: dict[str, Any], *, now: dt.datetime) -> Claims:
        """The claims of authentic evidence; raises AttestationFailure otherwise."""
        raise NotImplementedError


VERIFIERS: dict[str, EvidenceVerifier] = {}


def register(cls: type[EvidenceVerifier]) -> type[EvidenceVerifier]:
    VERIFIERS[cls.format] = cls()
    return cls


def verify(
    evidence: Any,
    *,
    nonce: str,
    challenged_at: dt.datetime,
    now: dt.datetime,
    skew: dt.timedelta,
    allowed: Callable[[str], bool],
) -> Claims:
    """Authentic evidence for this challenge from a node running allowed software, or AttestationFailure.

    Fresh means: bound to ``nonce`` (issued at ``challenged_at``), and, where the
    format carries a time, issued no earlier than the challenge and not in the
    future (both within ``skew`` for the two clocks).
    """
    if not isinstance(evidence, dict) or not isinstance(evidence.get("format"), str):
        raise AttestationFailure("malformed_evidence", "evidence must be a JSON object with a 'format'")
    verifier = VERIFIERS.get(evidence["format"])
    if verifier is None:
        known = ", ".join(sorted(VERIFIERS))
        raise AttestationFailure("unsupported_format", f"unknown evidence format {evidence['format'][:64]!r}; known: {known}")
    claims = verifier.verify(evidence, now=now)
    if not hmac.compare_digest(claims.nonce.encode(), nonce.encode()):
        raise AttestationFailure("nonce_mismatch", "the evidence is not bound to the nonce we sent (a replay?)")
    if claims.issued_at is not None:
        if claims.issued_at < challenged_at - skew:
            raise AttestationFailure("stale_report", f"the report was issued at {claims.issued_at.isoformat()}, before our challenge")
        if claims.issued_at > now + skew:
            raise AttestationFailure("future_report", f"the report claims to be issued at {claims.issued_at.isoformat()}, in the future")
    if not allowed(claims.measurement):
        raise AttestationFailure("unknown_measurement", f"measurement {claims.measurement} is not in the allow-list")
    return claims


# The formats this platform knows; imported for their @register.
from . import x509 as _x509  # noqa: E402,F401
