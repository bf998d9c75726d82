import asyncio

from celery import shared_task

from .adapters import adapter_for
from .models import Node
from .registry import NodeTarget, open_credentials
from .services import node_record_health


def _target(node: Node) -> NodeTarget:
    return NodeTarget(
        id=node.id,
        public_id=node.public_id,
        base_url=node.base_url,
        adapter=node.adapter,
        region=node.region,
        attestation=node.attestation,
        healthy=node.healthy,
        credentials=open_credentials(node.public_id, node.credentials),
    )


async def _probe(targets: list[NodeTarget]) -> list[bool]:
    from nodes import http

    try:
        return await asyncio.gather(*(adapter_for(t).health() for t in targets))
    finally:
        await http.close()


@shared_task
def check_node_health() -> dict[str, bool]:
    nodes = list(Node.objects.exclude(status=Node.Status.DISABLED))
    results = asyncio.run(_probe([_target(n) for n in nodes])) if nodes else []
    return {node.public_id: node_record_health(node=node, healthy=ok) for node, ok in zip(nodes, results)}
