import asyncio

from celery import shared_task

from . import clusters
from .adapters import adapter_for
from .adapters.thox import ClusterSnapshot
from .models import Node
from .registry import NodeTarget, target_for
from .services import node_record_health


async def _probe_one(target: NodeTarget) -> tuple[bool, ClusterSnapshot | None]:
    if target.adapter == clusters.KIND:  # a cluster's probe also reads its members
        return await clusters.cluster_probe(target)
    return await adapter_for(target).health(), None


async def _probe(targets: list[NodeTarget]) -> list[tuple[bool, ClusterSnapshot | None]]:
    from nodes import http

    try:
        return await asyncio.gather(*(_probe_one(t) for t in targets))
    finally:
        await http.close()


@shared_task
def check_node_health() -> dict[str, bool]:
    nodes = list(Node.objects.exclude(status=Node.Status.DISABLED))
    results = asyncio.run(_probe([target_for(n) for n in nodes])) if nodes else []
    health = {}
    for node, (ok, snapshot) in zip(nodes, results):
        if snapshot is not None:
            clusters.cluster_apply(node=node, snapshot=snapshot)
        health[node.public_id] = node_record_health(node=node, healthy=ok)
    return health


@shared_task
def sync_cluster(node_id: int) -> bool:
    """Read a cluster node's members and models now (after registration); whether it answered."""
    node = Node.objects.filter(id=node_id, adapter=clusters.KIND).exclude(status=Node.Status.DISABLED).first()
    return node is not None and clusters.cluster_sync(node=node) is not None
