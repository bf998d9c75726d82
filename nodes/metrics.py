"""What a project may know about the nodes serving it: load, health, region, attestation.

Read by the agent tool ``node_metrics``. Never a node's address, credentials,
operator or name: only what GET /v1/nodes shows, plus health and queue depth.
"""
from __future__ import annotations

import time
from typing import Any

from . import router
from .models import Node
from .registry import ServedModel, target_for


def project_node_metrics(*, allow_non_confidential: bool, model: str | None = None) -> list[dict[str, Any]]:
    """The active nodes eligible to serve the project (optionally only those serving ``model``)."""
    now = time.time()
    out = []
    for node in Node.objects.filter(status=Node.Status.ACTIVE).prefetch_related("models").order_by("public_id"):
        target = target_for(node)
        names = sorted(m.model for m in node.models.all())
        probe = ServedModel(model="", upstream_model="", context_window=0, max_output_tokens=0, node=target)
        if not names or not router.eligible(probe, allow_non_confidential=allow_non_confidential, now=now):
            continue
        if model is not None and model not in names:
            continue
        out.append({
            "id": node.public_id,
            "region": node.region,
            "attestation": node.attestation,
            "confidential": node.attestation == Node.Attestation.VERIFIED,
            "healthy": node.healthy,
            "load": node.load,
            "queue_depth": node.queue_depth,
            "gpus": node.gpus,
            "hardware": node.hardware,
            "models": names,
            "last_heartbeat_at": int(node.last_heartbeat_at.timestamp()) if node.last_heartbeat_at else None,
        })
    return out
