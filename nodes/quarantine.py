"""Take a node out of service because it misbehaved on a request (e.g. a sealed request's usage
receipt with a bad signature or fields that do not match): async, raw SQL, from the gateway.

The node is *quarantined*: disabled (the periodic attestation skips disabled nodes, so only an
operator brings it back, through nodes.services.node_set_status and a fresh attestation), its
attestation marked failed (a failed Attestation row with the reason, the node unverified, its
attested keys cleared), and every router told at once (the registry topic).
"""
from __future__ import annotations

import logging
import secrets

from django.utils import timezone

from config import asyncdb, bus
from config.asyncdb import Stmt
from config.ids import new_id

from .registry import NODES_TOPIC

log = logging.getLogger(__name__)

_DISABLE = """
UPDATE nodes_node SET status = 'disabled', attestation = 'unverified', attestation_expires_at = NULL,
       signing_key = '', encryption_key = ''
WHERE id = %(node)s AND attestation <> 'none'
"""
_FAILED = """
INSERT INTO nodes_attestation (public_id, node_id, nonce, nonce_expires_at, format, result, reason, detail,
                               measurement, signing_key, encryption_key, root_fingerprint, created_at, checked_at)
VALUES (%(public_id)s, %(node)s, %(nonce)s, %(now)s, '', 'failed', %(reason)s, %(detail)s, '', '', '', '',
        %(now)s, %(now)s)
"""


async def node_quarantine(*, node_id: int, public_id: str, reason: str, detail: str) -> None:
    now = timezone.now()
    log.error("node %s quarantined: %s (%s)", public_id, reason, detail)
    await asyncdb.run(
        Stmt(_DISABLE, {"node": node_id}),
        Stmt(_FAILED, {
            "public_id": new_id("att"), "node": node_id, "nonce": secrets.token_hex(32), "now": now,
            "reason": reason[:64], "detail": detail[:2000],
        }),
    )
    await bus.publish_async(NODES_TOPIC, public_id)
