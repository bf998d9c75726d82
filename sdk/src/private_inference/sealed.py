"""Sealed chat completions (gateway/SEALED.md): choose and verify the recipient, seal, open, check the receipt.

The pure parts live here; the clients fetch what they need (nodes, attestation, the gateway key) and
hand it over, so the sync and async clients share every check."""
from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from typing import Any

from ._errors import SecurityError
from ._types import Obj, wrap
from .attestation import VerifiedReport, load_trust_roots, verify_evidence
from .crypto import (
    TIERS,
    ClientKeyPair,
    ResponseOpener,
    SealedRequest,
    seal_request,
    verify_receipt,
)

DEFAULT_MAX_AGE = 24 * 3600  # maximum tier: an attestation report at most this old


@dataclass
class SecurityOptions:
    """What the client trusts. ``trust_roots``: PEM paths/bytes of the attestation root(s) (default:
    $PI_TRUST_ROOTS, paths separated by os.pathsep; else the server's published roots, if any — which
    trusts the server's word on who may attest). ``allowed_measurements``: software digests a node
    may run (default: any the chain vouches for)."""

    trust_roots: Any = None
    allowed_measurements: set[str] | None = None
    keypair: ClientKeyPair = field(default_factory=ClientKeyPair.generate)
    max_age: float | None = DEFAULT_MAX_AGE

    def roots(self, published: Any = None):
        source = self.trust_roots
        if source is None and os.environ.get("PI_TRUST_ROOTS"):
            source = os.environ["PI_TRUST_ROOTS"].split(os.pathsep)
        if source is None:
            source = published
        if source is None:
            raise SecurityError("No attestation trust root: pass trust_roots= (or set PI_TRUST_ROOTS) to verify nodes.",
                                reason="no_trust_roots")
        return load_trust_roots(source)


@dataclass
class Recipient:
    node_id: str | None  # None: the gateway (standard tier)
    encryption_key: str
    signing_key: str
    measurement: str
    report: VerifiedReport | None = None


def node_keys(node: dict[str, Any]) -> dict[str, str]:
    """A /v1/nodes entry's attested keys (``public_keys: {signing, encryption}``; null when unverified)."""
    keys = node.get("public_keys") or {}
    return {"signing": keys.get("signing"), "encryption": keys.get("encryption")}


def candidates(nodes: list[dict[str, Any]], model: str, tier: str) -> list[dict[str, Any]]:
    """Nodes that may take a sealed request for ``model``: attested, serving it, with keys; least loaded first."""
    found = []
    for node in nodes:
        keys = node_keys(node)
        if model not in (node.get("models") or []) or not keys["encryption"] or not keys["signing"]:
            continue
        if node.get("attestation") != "verified":
            continue
        found.append(node)
    return sorted(found, key=lambda n: (n.get("load") or 0, n.get("id")))


def recipient_from_attestation(
    node: dict[str, Any], attestation: dict[str, Any], options: SecurityOptions, tier: str, roots
) -> Recipient:
    """Verify ``attestation`` (GET /v1/nodes/{id}/attestation) ourselves; the recipient it vouches for."""
    now = dt.datetime.now(dt.UTC)
    if tier == "maximum":
        expires = attestation.get("expires_at")
        if isinstance(expires, (int, float)) and expires <= now.timestamp():
            raise SecurityError(f"Node {node.get('id')}'s attestation has expired.", reason="stale")
    report = verify_evidence(
        attestation.get("evidence"), roots, expected_keys=node_keys(node),
        allowed_measurements=options.allowed_measurements,
        max_age=options.max_age if tier == "maximum" else None, now=now,
    )
    if attestation.get("measurement") not in (None, report.measurement):
        raise SecurityError("The platform's stated measurement is not the report's.", reason="key_mismatch")
    return Recipient(node.get("id"), report.encryption_key, report.signing_key, report.measurement, report)


def gateway_recipient(pki: dict[str, Any]) -> Recipient:
    if not isinstance(pki, dict) or not pki.get("encryption_key") or not pki.get("signing_key"):
        raise SecurityError("The gateway publishes no sealing key (GET /pki/public_key).", reason="no_gateway_key")
    return Recipient(None, pki["encryption_key"], pki["signing_key"], "")


class SealedCall:
    """One sealed request: its envelope, and the checks on what comes back."""

    def __init__(self, body: dict[str, Any], *, tier: str, recipient: Recipient, keypair: ClientKeyPair):
        if tier not in TIERS:
            raise ValueError(f"security_tier must be one of {', '.join(TIERS)}")
        self.tier = tier
        self.recipient = recipient
        self.model = body.get("model")
        self.sealed: SealedRequest = seal_request(
            body, tier=tier, recipient_key=recipient.encryption_key, node_id=recipient.node_id,
            client_public_key=keypair.public_b64,
        )
        self.opener = ResponseOpener(keypair, self.sealed.payload_id)
        self.receipt: dict[str, Any] | None = None
        self.usage_seen: dict[str, Any] | None = None

    @property
    def envelope(self) -> dict[str, Any]:
        return self.sealed.envelope

    def check_receipt(self, receipt: Any, request_id: str | None) -> dict[str, Any]:
        expected = {
            "request_id": request_id,
            "payload_id": self.sealed.payload_id,
            "request_hash": self.sealed.request_hash,
            "model": self.model,
            "node_id": self.recipient.node_id or "gateway",
            "measurement": self.recipient.measurement,
        }
        fields = verify_receipt(receipt, signing_key=self.recipient.signing_key, expected=expected)
        usage = self.usage_seen
        if usage and (usage.get("prompt_tokens") not in (None, fields["input_tokens"])
                      or usage.get("completion_tokens") not in (None, fields["output_tokens"])):
            raise SecurityError("The signed receipt's token counts differ from the answer's usage.",
                                reason="receipt_mismatch", request_id=request_id)
        self.receipt = fields
        return fields

    def info(self) -> dict[str, Any]:
        return {"tier": self.tier, "node_id": self.recipient.node_id or "gateway",
                "measurement": self.recipient.measurement, "payload_id": self.sealed.payload_id,
                "receipt": self.receipt}

    def open_response(self, body: Any, request_id: str | None) -> Obj:
        """A non-streamed sealed answer → the chat completion, with ``sealed`` (tier, node, verified receipt)."""
        if not isinstance(body, dict) or body.get("object") != "sealed.response":
            raise SecurityError("The answer is not a sealed response.", reason="not_sealed", request_id=request_id)
        self.opener.start(body.get("ephemeral_public_key"))
        completion = self.opener.open(body.get("seq"), body.get("nonce"), body.get("ciphertext"))
        self.usage_seen = completion.get("usage") if isinstance(completion, dict) else None
        self.check_receipt(body.get("receipt"), request_id)
        result = wrap(completion)
        result["sealed"] = wrap(self.info())
        return result

    def feed(self, event_name: str | None, data: str, request_id: str | None) -> Obj | None:
        """One SSE event of a sealed stream → a decrypted chunk (or None)."""
        if data.strip() == "[DONE]":
            return None
        try:
            payload = json.loads(data)
        except ValueError:
            raise SecurityError("A sealed stream event is not JSON.", reason="not_sealed", request_id=request_id) from None
        if event_name == "sealed.start":
            self.opener.start(payload.get("ephemeral_public_key"))
            return None
        if event_name == "sealed.chunk":
            chunk = self.opener.open(payload.get("seq"), payload.get("nonce"), payload.get("ciphertext"))
            if isinstance(chunk, dict) and chunk.get("usage"):
                self.usage_seen = chunk["usage"]
            return wrap(chunk)
        if event_name == "sealed.receipt":
            self.check_receipt(payload.get("receipt"), request_id)
            return None
        return None

    def finish(self, request_id: str | None) -> dict[str, Any]:
        if self.receipt is None:
            raise SecurityError("The sealed stream ended without a signed usage receipt.", reason="missing_receipt",
                                request_id=request_id)
        return self.receipt
