"""Owner-scoped reads of nodes and jobs. A caller's ids only: another owner's node or job
raises DoesNotExist (answered 404), as if it did not exist."""
from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from .models import Job, Node

def operator_node(*, operator_id: int, public_id: str) -> Node:
    return Node.objects.get(public_id=public_id, operator_id=operator_id)


def operator_nodes(*, operator_id: int) -> QuerySet[Node]:
    return Node.objects.filter(operator_id=operator_id).prefetch_related("models", "members").order_by("region", "name", "id")


def job_for_owner(*, public_id: str, operator_id: int | None = None, project_id: int | None = None) -> Job:
    """A job of this operator organization or of this project; exactly one owner is given."""
    if (operator_id is None) == (project_id is None):
        raise ValueError("give exactly one of operator_id and project_id")
    owner = {"operator_id": operator_id} if operator_id is not None else {"project_id": project_id}
    return Job.objects.select_related("node").get(public_id=public_id, **owner)


def operator_jobs(*, operator_id: int, limit: int = 50) -> QuerySet[Job]:
    return Job.objects.filter(operator_id=operator_id).select_related("node").order_by("-created_at", "-id")[:limit]


def node_members(node: Node) -> list[dict[str, Any]]:
    """The members of a cluster node (a Thox-style cluster registered as one node), as its
    operator sees them (never addresses). Callers that list many nodes prefetch ``members``."""
    return [
        {
            "id": m.member_id,
            "name": m.name,
            "role": m.role,
            "hardware": m.hardware,
            "gpus": m.gpus,
            "ram_gb": m.ram_gb,
            "status": m.status,
            "healthy": m.healthy,
            "load": m.load,
            "models_loaded": m.models_loaded,
            "last_seen": int(m.last_seen.timestamp()) if m.last_seen else None,
        }
        for m in sorted(node.members.all(), key=lambda m: m.member_id)
    ]
