"""Thox-style edge clusters in the registry: one Node per cluster, its devices as NodeMembers.

Routing and projects see a cluster as one node: ``GET /v1/nodes`` shows its
gpus, load and models, never its members. What that node says is kept up to
date from the cluster API (``ThoxAdapter.snapshot``) by :func:`cluster_apply`,
which the health beat (``nodes.tasks.check_node_health``) calls on every probe
of a thox node and :func:`cluster_sync_enqueue` schedules once a node is
registered:

* members: one NodeMember per device the cluster lists (gone from the list, gone here);
* ``gpus``: the online members' GPUs, summed (capacity that can serve now);
* ``hardware``: e.g. "2x Jetson Orin NX 16GB + 1x Jetson AGX Orin 64GB", online
  members, with "(1 of 3 members offline)" when some are down;
* ``load``: the online members' mean (1.0 when none is online);
* ``models_loaded``: every model some online member holds in memory;
* served models (NodeModel): what some online member holds. A model already
  listed keeps its public name and limits (an operator's choice); a new one is
  listed under its own name with the cluster's ``context_length``; a model no
  online member holds any more is dropped. With no member online the list stays
  as it was: the node is unhealthy then, and a power cycle must not erase it.

Health itself stays with ``services.node_record_health``: a cluster whose API
does not answer, or answers with no member online, is a failed probe, and
NODE_UNHEALTHY_AFTER of those in a row mark the node unhealthy as for any node.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter

from django.db import transaction
from django.utils import timezone

from config import bus

from . import dispatch
from .adapters.base import NodeError
from .adapters.thox import ClusterSnapshot, ThoxAdapter
from .models import Node, NodeMember, NodeModel
from .registry import LOAD_TOPIC, NODES_TOPIC, NodeTarget, target_for

log = logging.getLogger(__name__)

KIND = ThoxAdapter.kind
DEFAULT_CONTEXT_WINDOW = 4096
DEFAULT_MAX_OUTPUT_TOKENS = 1024
_MEMBER_FIELDS = ("name", "role", "hardware", "gpus", "ram_gb", "status", "healthy", "load", "models_loaded", "last_seen", "updated_at")


# --- reading the cluster (async, no ORM) -------------------------------------------------


async def cluster_probe(target: NodeTarget) -> tuple[bool, ClusterSnapshot | None]:
    """One health probe of a cluster: did it answer with some member online, and what it said.

    Unreachable or malformed: ``(False, None)``; reachable with every member down: ``(False, snapshot)``,
    so the members' state is still recorded.
    """
    try:
        snapshot = await ThoxAdapter(target).snapshot()
    except NodeError as exc:
        log.info("cluster %s did not answer: %s", target.public_id, exc)
        return False, None
    return snapshot.serving, snapshot


# --- writing what it said -------------------------------------------------------------------


def hardware_summary(snapshot: ClusterSnapshot) -> str:
    counts = Counter(m.hardware or "unknown device" for m in snapshot.online)
    summary = " + ".join(f"{n}x {hw}" for hw, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    offline = len(snapshot.members) - len(snapshot.online)
    if offline:
        summary = f"{summary} ({offline} of {len(snapshot.members)} members offline)".lstrip()
    return summary[:200]


def _members(node: Node, snapshot: ClusterSnapshot, now) -> None:
    existing = {m.member_id: m for m in NodeMember.objects.filter(node=node)}
    new, changed = [], []
    for m in snapshot.members:
        row = existing.pop(m.id, None)
        if row is None:
            row = NodeMember(node=node, member_id=m.id)
            new.append(row)
        else:
            changed.append(row)
        row.name, row.role, row.hardware = m.hostname[:200], m.role[:32], m.hardware[:200]
        row.gpus, row.ram_gb, row.status = m.gpus, int(round(m.ram_gb)), m.status[:32]
        row.healthy, row.load, row.models_loaded = m.online, m.load, sorted(set(m.models_loaded))
        row.last_seen = m.last_seen or (now if m.online else row.last_seen)
        row.updated_at = now
    if existing:  # taken off the stack
        NodeMember.objects.filter(id__in=[r.id for r in existing.values()]).delete()
    NodeMember.objects.bulk_create(new)
    NodeMember.objects.bulk_update(changed, _MEMBER_FIELDS)


def _models(node: Node, snapshot: ClusterSnapshot) -> bool:
    """Reconcile the served models; whether the list changed."""
    if not snapshot.serving:
        return False
    served = {m.id: m for m in snapshot.served_models()}
    rows = list(NodeModel.objects.filter(node=node))
    gone = [r.id for r in rows if r.upstream_model not in served]
    listed = {r.upstream_model for r in rows}
    names = {r.model for r in rows if r.id not in gone}
    added = []
    for upstream, model in served.items():
        if upstream in listed or upstream in names:  # already served, or its name is an alias taken by another
            continue
        context = model.context_length or DEFAULT_CONTEXT_WINDOW
        added.append(NodeModel(
            node=node, model=upstream, upstream_model=upstream, context_window=context,
            max_output_tokens=min(DEFAULT_MAX_OUTPUT_TOKENS, context),
        ))
    if gone:
        NodeModel.objects.filter(id__in=gone).delete()
    NodeModel.objects.bulk_create(added)
    return bool(gone or added)


@transaction.atomic
def cluster_apply(*, node: Node, snapshot: ClusterSnapshot, now=None) -> Node:
    """Record a cluster's members and the aggregates the registry routes by; routers hear of it on commit."""
    now = now or timezone.now()
    # The node row is the lock: the beat and a registration's sync never interleave their writes.
    locked = Node.objects.select_for_update().filter(id=node.id).first()
    if locked is None:  # deleted while the cluster was being read
        return node
    _members(locked, snapshot, now)
    models_changed = _models(locked, snapshot)
    online = snapshot.online
    loaded = sorted({name for m in online for name in m.models_loaded})
    aggregates = {
        "gpus": sum(m.gpus for m in online),
        "hardware": hardware_summary(snapshot),
        "load": round(sum(m.load for m in online) / len(online), 4) if online else 1.0,
        "models_loaded": loaded,
    }
    Node.objects.filter(id=locked.id).update(**aggregates)
    if models_changed or aggregates["gpus"] != locked.gpus or aggregates["hardware"] != locked.hardware:
        transaction.on_commit(lambda: bus.publish(NODES_TOPIC, locked.public_id))
    if aggregates["load"] != locked.load:
        transaction.on_commit(lambda: bus.publish(LOAD_TOPIC, f"{locked.id}:{aggregates['load']}"))
    for name, value in aggregates.items():
        setattr(node, name, value)
    return node


async def _fetch(target: NodeTarget) -> tuple[bool, ClusterSnapshot | None]:
    from nodes import http

    try:
        return await cluster_probe(target)
    finally:
        await http.close()


def cluster_sync(*, node: Node) -> ClusterSnapshot | None:
    """Read the cluster now and record it; None if it did not answer (health is the beat's to judge)."""
    _, snapshot = asyncio.run(_fetch(target_for(node)))
    if snapshot is not None:
        cluster_apply(node=node, snapshot=snapshot)
    return snapshot


def cluster_sync_enqueue(*, node: Node) -> None:
    """Sync a newly registered cluster once the registration is committed, without holding up
    its caller (``nodes.tasks.sync_cluster``, through nodes.dispatch)."""
    from .tasks import sync_cluster

    dispatch.after_commit(sync_cluster, node.id, name=f"sync:{node.id}")
