"""Attestation writes: challenge a node, verify its answer, keep the record, set the node's state.

A node is *verified* for ``ATTESTATION_TTL_SECONDS`` after evidence that passes
every check (nodes/attestation/verifiers.py) and *unverified* after any failure:
forged, stale, wrong nonce, unknown measurement, unreachable. Routers everywhere
hear of every change (the registry topic), so the new expiry or the refusal
applies in every gateway process at once. Nodes with attestation ``none``
(hosted providers, plain servers) are never challenged.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import secrets
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from config import bus
from nodes import dispatch
from nodes.models import AllowedMeasurement, Attestation, Node
from nodes.registry import NODES_TOPIC, target_for

from . import verifiers
from .verifiers import AttestationFailure, Claims

log = logging.getLogger(__name__)

NONCE_BYTES = 32
_MEASUREMENT = re.compile(r"[0-9a-f]{32,128}")


def _publish(node: Node) -> None:
    transaction.on_commit(lambda: bus.publish(NODES_TOPIC, node.public_id))


# --- the allow-list ------------------------------------------------------------------


def normalize_measurement(value: str) -> str:
    """Lowercase hex of 16 to 64 bytes; ValueError otherwise."""
    value = (value or "").strip().lower()
    if not _MEASUREMENT.fullmatch(value):
        raise ValueError("a measurement is a hex digest of 16 to 64 bytes (32 to 128 hex characters)")
    return value


@transaction.atomic
def measurement_allow(*, value: str, description: str = "") -> AllowedMeasurement:
    """Allow nodes running this software; idempotent (re-activates a revoked value)."""
    value = normalize_measurement(value)
    measurement, created = AllowedMeasurement.objects.get_or_create(
        value=value, defaults={"description": description, "active": True}
    )
    if not created:
        measurement.active = True
        measurement.description = description or measurement.description
        measurement.save(update_fields=["active", "description"])
    return measurement


@transaction.atomic
def measurement_revoke(*, measurement: AllowedMeasurement) -> list[str]:
    """Refuse this software from now on; nodes verified with it stop serving at once.

    Returns the public ids of the nodes taken out. The UPDATE locks the allow-list row
    first, as a verification does while it records success (_record): a node can never
    end up verified with a measurement revoked meanwhile, and the two never deadlock.
    """
    AllowedMeasurement.objects.filter(id=measurement.id).update(active=False)
    measurement.active = False
    now = timezone.now()
    taken_out = []
    for node in Node.objects.select_for_update().filter(attestation=Node.Attestation.VERIFIED):
        latest = _latest_verified(node)
        if latest is not None and latest.measurement == measurement.value:
            _set_unverified(node)
            Attestation.objects.filter(id=latest.id).update(expires_at=now)
            taken_out.append(node.public_id)
    return taken_out


def _allowed(value: str) -> bool:
    return AllowedMeasurement.objects.filter(value=value, active=True).exists()


# --- challenge, verify, record ---------------------------------------------------------------


def attestation_challenge(*, node: Node) -> Attestation:
    """A fresh single-use nonce for ``node``, valid for ATTESTATION_NONCE_SECONDS."""
    if node.attestation == Node.Attestation.NONE:
        raise ValueError(f"node {node.public_id} is not confidential (attestation 'none'); it is never attested")
    now = timezone.now()
    return Attestation.objects.create(
        node=node,
        nonce=secrets.token_hex(NONCE_BYTES),
        nonce_expires_at=now + dt.timedelta(seconds=settings.ATTESTATION_NONCE_SECONDS),
    )


def attestation_verify(*, attestation: Attestation, evidence: Any, now: dt.datetime | None = None) -> Attestation:
    """Check ``evidence`` against the challenge ``attestation`` and record the outcome.

    Raises AttestationFailure("nonce_used") if this challenge was already answered:
    a nonce counts once, and the first answer's record stands.
    """
    now = now or timezone.now()
    try:
        if now >= attestation.nonce_expires_at:
            raise AttestationFailure("nonce_expired", "the node answered after the challenge expired")
        claims = verifiers.verify(
            evidence,
            nonce=attestation.nonce,
            challenged_at=attestation.created_at,
            now=now,
            skew=dt.timedelta(seconds=settings.ATTESTATION_CLOCK_SKEW_SECONDS),
            allowed=_allowed,
        )
    except AttestationFailure as failure:
        return _record(attestation, now=now, evidence=evidence, failure=failure)
    return _record(attestation, now=now, evidence=evidence, claims=claims)


def attestation_fail(*, attestation: Attestation, reason: str, detail: str) -> Attestation:
    """Record a challenge that got no evidence to check (the node unreachable or refusing)."""
    return _record(attestation, now=timezone.now(), evidence=None, failure=AttestationFailure(reason, detail))


@transaction.atomic
def _record(
    attestation: Attestation,
    *,
    now: dt.datetime,
    evidence: Any,
    claims: Claims | None = None,
    failure: AttestationFailure | None = None,
) -> Attestation:
    if claims is not None:
        # Locked until commit, and before the node (measurement_revoke takes them in the same
        # order): a revocation either waits for this and then finds the node, or came first
        # and is seen here.
        allowed = AllowedMeasurement.objects.select_for_update().filter(value=claims.measurement, active=True).first()
        if allowed is None:
            claims, failure = None, AttestationFailure(
                "unknown_measurement", "the measurement was revoked while the evidence was checked"
            )
    # The node row lock serializes a node's attestations: of two racing ones, the
    # newer challenge decides the node's state, whichever finishes last.
    node = Node.objects.select_for_update().get(id=attestation.node_id)
    changes: dict[str, Any] = {"checked_at": now, "evidence": evidence if isinstance(evidence, dict) else None}
    if isinstance(evidence, dict) and isinstance(evidence.get("format"), str):
        changes["format"] = evidence["format"][:64]
    if claims is not None:
        changes.update(
            result=Attestation.Result.VERIFIED,
            measurement=claims.measurement,
            signing_key=claims.signing_key,
            encryption_key=claims.encryption_key,
            root_fingerprint=claims.root_fingerprint,
            issued_at=claims.issued_at,
            verified_at=now,
            expires_at=now + dt.timedelta(seconds=settings.ATTESTATION_TTL_SECONDS),
        )
    else:
        changes.update(result=Attestation.Result.FAILED, reason=failure.reason, detail=failure.message[:2000])
    # pending → verified/failed once: this is what makes the nonce single use.
    if not Attestation.objects.filter(id=attestation.id, result=Attestation.Result.PENDING).update(**changes):
        raise AttestationFailure("nonce_used", "this challenge was already answered; a nonce counts once")
    for field, value in changes.items():
        setattr(attestation, field, value)
    newer = (
        Attestation.objects.filter(node_id=node.id, id__gt=attestation.id).exclude(result=Attestation.Result.PENDING).exists()
    )
    if node.attestation != Node.Attestation.NONE and not newer:
        if claims is not None:
            Node.objects.filter(id=node.id).update(
                attestation=Node.Attestation.VERIFIED,
                attestation_expires_at=changes["expires_at"],
                signing_key=claims.signing_key,
                encryption_key=claims.encryption_key,
            )
            _publish(node)  # also when it was verified already: every router needs the new expiry
        else:
            log.warning("node %s failed attestation: %s (%s)", node.public_id, failure.reason, failure.message)
            _set_unverified(node)
    return attestation


def _set_unverified(node: Node) -> None:
    Node.objects.filter(id=node.id).exclude(attestation=Node.Attestation.NONE).update(
        attestation=Node.Attestation.UNVERIFIED, attestation_expires_at=None, signing_key="", encryption_key=""
    )
    _publish(node)


def _latest_verified(node: Node) -> Attestation | None:
    return node.attestations.filter(result=Attestation.Result.VERIFIED).order_by("-verified_at", "-id").first()


# --- the whole round -------------------------------------------------------------------------


async def _ask(node: Node, nonce: str) -> Any:
    from nodes import http
    from nodes.adapters import adapter_for

    try:
        return await adapter_for(target_for(node)).attest(nonce)
    finally:
        await http.close()


def node_attest(*, node: Node) -> Attestation:
    """Challenge ``node`` through its adapter, verify what it sends, record it and set the node's state.

    Sync (tasks, admin actions, threads); never call it on an event loop.
    """
    from nodes.adapters import NodeError

    attestation = attestation_challenge(node=node)
    try:
        evidence = asyncio.run(_ask(node, attestation.nonce))
    except NodeError as exc:
        return attestation_fail(attestation=attestation, reason="node_error", detail=f"the node did not attest: {exc}")
    return attestation_verify(attestation=attestation, evidence=evidence)


@transaction.atomic
def node_attestation_reset(*, node: Node) -> None:
    """The node changed (address, adapter, confidentiality): it serves nobody until it attests again."""
    _set_unverified(node)
    attestation_enqueue(node=node)


def attestation_enqueue(*, node: Node) -> None:
    """Attest ``node`` once the current transaction commits: on a worker, or, under eager
    Celery (the embedded default), on a daemon thread, so a request never waits for it."""
    from nodes.tasks import attest_node

    dispatch.after_commit(attest_node, node.id, name=f"attest:{node.id}")


# --- reads --------------------------------------------------------------------------------------


def latest_verified(*, node: Node) -> Attestation | None:
    return _latest_verified(node)
