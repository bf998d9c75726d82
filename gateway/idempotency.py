"""Idempotency keys on paid requests, claimed in the reservation's transaction.

The claim is an INSERT under the unique constraint (project, key) sent in the
same round trip as the reservation, so a first attempt costs no extra round
trip. A retry breaks the constraint, which rolls the reservation back; only
then is the stored record read: same body and finished → replay the stored
response; still running → 409; different body → 422.
Stored responses are sealed with AES-GCM (config.crypto), bound to project and key.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import struct
from dataclasses import dataclass

import orjson
from django.conf import settings

from config import asyncdb, crypto
from config.asyncdb import Stmt

from .errors import GatewayError

CONSTRAINT = "idempotency_unique_key"
MAX_KEY_LENGTH = 255
_PURPOSE = "idempotency"


@dataclass(frozen=True, slots=True)
class Claim:
    key: str
    body_hash: str
    project_id: int


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    content_type: str
    headers: dict[str, str]
    body: bytes


def from_request(headers, body: bytes, *, project_id: int, required: bool) -> Claim | None:
    key = headers.get("idempotency-key") or headers.get("x-idempotency-key")
    if not key:
        if required:
            raise GatewayError(
                "idempotency_key_required", "This project requires an Idempotency-Key header on paid requests."
            )
        return None
    if len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise GatewayError("invalid_request", "Idempotency-Key must be at most 255 printable characters.")
    return Claim(key=key, body_hash=hashlib.sha256(body).hexdigest(), project_id=project_id)


def _aad(claim: Claim) -> bytes:
    return f"idem:{claim.project_id}:{claim.key}".encode()


def _seal(claim: Claim, stored: StoredResponse) -> bytes:
    meta = orjson.dumps({"status": stored.status, "content_type": stored.content_type, "headers": stored.headers})
    return crypto.seal(_PURPOSE, struct.pack(">I", len(meta)) + meta + stored.body, _aad(claim))


def _open(claim: Claim, blob: bytes) -> StoredResponse:
    plain = crypto.open_sealed(_PURPOSE, bytes(blob), _aad(claim))
    (n,) = struct.unpack(">I", plain[:4])
    meta = orjson.loads(plain[4 : 4 + n])
    return StoredResponse(meta["status"], meta["content_type"], meta["headers"], plain[4 + n :])


def claim_statement(claim: Claim, *, request_id: str, now: dt.datetime) -> Stmt:
    return Stmt(
        """
        INSERT INTO gateway_idempotencyrecord (project_id, key, body_hash, request_id, status, created_at, expires_at)
        VALUES (%(project_id)s, %(key)s, %(body_hash)s, %(request_id)s, 'in_progress', %(now)s, %(expires_at)s)
        """,
        {
            "project_id": claim.project_id,
            "key": claim.key,
            "body_hash": claim.body_hash,
            "request_id": request_id,
            "now": now,
            "expires_at": now + dt.timedelta(seconds=settings.IDEMPOTENCY_TTL_SECONDS),
        },
    )


def complete_statement(claim: Claim, *, request_id: str, stored: StoredResponse) -> Stmt:
    return Stmt(
        """
        UPDATE gateway_idempotencyrecord SET status = 'completed', response_status = %(status)s, response = %(blob)s
        WHERE project_id = %(project_id)s AND key = %(key)s AND request_id = %(request_id)s
        """,
        {
            "status": stored.status,
            "blob": _seal(claim, stored),
            "project_id": claim.project_id,
            "key": claim.key,
            "request_id": request_id,
        },
    )


def release_statement(claim: Claim, *, request_id: str) -> Stmt:
    """Forget a claim whose request produced nothing, so a retry may run."""
    return Stmt(
        "DELETE FROM gateway_idempotencyrecord WHERE project_id = %(project_id)s AND key = %(key)s "
        "AND request_id = %(request_id)s",
        {"project_id": claim.project_id, "key": claim.key, "request_id": request_id},
    )


class InProgress(GatewayError):
    """The first request with this key still runs (a stream may be resumed instead)."""

    def __init__(self, request_id: str):
        super().__init__(
            "idempotency_in_progress",
            "A request with this Idempotency-Key is still in progress; retry after it finishes.",
            headers={"retry-after": "1"},
        )
        self.request_id = request_id


async def resolve_conflict(claim: Claim, *, now: dt.datetime) -> StoredResponse | None:
    """The stored response to replay, or None if the old claim expired and was removed.

    Raises 422 for a different body and 409 while the first request still runs.
    """
    row = await asyncdb.fetch_one(
        "SELECT body_hash, status, response, expires_at, request_id FROM gateway_idempotencyrecord "
        "WHERE project_id = %(project_id)s AND key = %(key)s",
        {"project_id": claim.project_id, "key": claim.key},
    )
    if row is None:  # released between our insert and this read: the caller retries
        return None
    body_hash, status, blob, expires_at, request_id = row
    if asyncdb.as_datetime(expires_at) <= now:
        await asyncdb.run(release_statement(claim, request_id=request_id))
        return None
    if body_hash != claim.body_hash:
        raise GatewayError(
            "idempotency_key_reused",
            "This Idempotency-Key was already used with a different request body.",
        )
    if status != "completed":
        raise InProgress(request_id)
    return _open(claim, blob)
