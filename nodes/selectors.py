"""Owner-scoped reads of nodes and jobs. A caller's ids only: another owner's node or job
raises DoesNotExist (answered 404), as if it did not exist."""
from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from config.ids import plausible_id

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
    if not plausible_id(public_id):
        raise Job.DoesNotExist
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


# --- the network as projects and the public see it (no names, addresses, operators) ---------------


def network_nodes(*, now=None, models: set[str] | None = None) -> list[dict[str, Any]]:
    """Every active node as ``GET /v1/nodes`` shows one (public id, region, attestation, GPUs, load,
    models) plus its health, healthy or not: the console's network view and the status page.

    ``attestation`` is what routing honours: a verified attestation past its expiry reads
    ``expired`` (routed around, as ``nodes.router.eligible`` does). ``models`` limits the models
    listed (the priced ones, as the catalog does); a node serving none of them is left out.
    """
    from django.utils import timezone

    now = now or timezone.now()
    rows = []
    for node in Node.objects.filter(status=Node.Status.ACTIVE).prefetch_related("models").order_by("region", "public_id"):
        served = sorted(m.model for m in node.models.all() if models is None or m.model in models)
        if not served:
            continue
        attestation = node.attestation
        if attestation == Node.Attestation.VERIFIED and not (node.attestation_expires_at and node.attestation_expires_at > now):
            attestation = "expired"
        rows.append({
            "id": node.public_id,
            "region": node.region,
            "attestation": attestation,
            "confidential": attestation == Node.Attestation.VERIFIED,
            "healthy": node.healthy,
            "gpus": node.gpus,
            "load": node.load,
            "models": served,
        })
    return rows


def network_by_region(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``network_nodes`` grouped by region: each with its nodes and counts (up, attested, models)."""
    regions: dict[str, dict[str, Any]] = {}
    for node in nodes:
        group = regions.setdefault(node["region"], {"region": node["region"], "nodes": [], "models": set()})
        group["nodes"].append(node)
        group["models"].update(node["models"])
    out = []
    for name in sorted(regions):
        group = regions[name]
        out.append({
            "region": name,
            "nodes": group["nodes"],
            "total": len(group["nodes"]),
            "up": sum(1 for n in group["nodes"] if n["healthy"]),
            "attested": sum(1 for n in group["nodes"] if n["confidential"]),
            "models": sorted(group["models"]),
        })
    return out


def health_incidents(*, since, now=None, limit: int = 20) -> list[dict[str, Any]]:
    """Unhealthy periods of nodes from their health history (``NodeHealthEvent``), newest first:
    each runs from an unhealthy event to the node's next healthy one (``ended_at``), or is
    ``ongoing`` while the node is still unhealthy. A period that began before ``since`` and ended
    after it is included. Only public facts: the node's public id and region, times, the reason."""
    from django.utils import timezone

    from .models import NodeHealthEvent

    now = now or timezone.now()
    # The nodes with events in the window, and for each the last event before it (an incident may span it).
    node_ids = set(NodeHealthEvent.objects.filter(at__gte=since).values_list("node_id", flat=True))
    open_before = set(
        NodeHealthEvent.objects.filter(at__lt=since, node__healthy=False).values_list("node_id", flat=True)
    )
    node_ids |= open_before
    if not node_ids:
        return []
    nodes = {n.id: n for n in Node.objects.filter(id__in=node_ids).only("id", "public_id", "region", "healthy", "status")}
    events: dict[int, list] = {}
    for node_id in sorted(node_ids):  # the last event before the window: an incident may span its start
        before = NodeHealthEvent.objects.filter(node_id=node_id, at__lt=since).order_by("-at", "-id").first()
        if before is not None:
            events[node_id] = [before]
    for event in NodeHealthEvent.objects.filter(node_id__in=node_ids, at__gte=since).order_by("node_id", "at", "id"):
        events.setdefault(event.node_id, []).append(event)
    incidents = []
    for node_id, rows in events.items():
        node = nodes[node_id]
        current = None
        for event in rows:
            if not event.healthy and current is None:
                current = {"node": node.public_id, "region": node.region, "started_at": event.at,
                           "ended_at": None, "ongoing": False, "reason": event.reason}
            elif event.healthy and current is not None:
                current["ended_at"] = event.at
                incidents.append(current)
                current = None
        if current is not None:
            # Still open in the history: ongoing while the node is unhealthy; otherwise it came
            # back some way that wrote no event (an admin edit), so the end is unknown.
            current["ongoing"] = not node.healthy and node.status != Node.Status.DISABLED
            incidents.append(current)
    incidents = [i for i in incidents if i["ongoing"] or i["ended_at"] is None or i["ended_at"] >= since]
    for incident in incidents:
        end = incident["ended_at"] or (now if incident["ongoing"] else None)
        incident["duration_seconds"] = int((end - incident["started_at"]).total_seconds()) if end else None
    incidents.sort(key=lambda i: (not i["ongoing"], -i["started_at"].timestamp()))
    return incidents[:limit]


def operator_tokens(*, operator_id: int) -> QuerySet:
    """The operator organization's node tokens (never their hashes' use: name, last 4, status)."""
    from .models import NodeToken

    return NodeToken.objects.filter(organization_id=operator_id).order_by("status", "-created_at", "-id")


def operator_health_events(*, operator_id: int, limit: int = 20) -> QuerySet:
    """The latest health changes of the operator's nodes, newest first."""
    from .models import NodeHealthEvent

    return NodeHealthEvent.objects.filter(node__operator_id=operator_id).select_related("node").order_by("-at", "-id")[:limit]
