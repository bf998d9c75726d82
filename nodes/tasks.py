import asyncio

from celery import shared_task

from .adapters import adapter_for
from .models import Node
from .registry import NodeTarget, target_of
from .services import node_record_health


async def _probe(targets: list[NodeTarget]) -> list[bool]:
    from nodes import http

    try:
        return await asyncio.gather(*(adapter_for(t).health() for t in targets))
    finally:
        await http.close()


@shared_task
def check_node_health() -> dict[str, bool]:
    nodes = list(Node.objects.exclude(status=Node.Status.DISABLED))
    results = asyncio.run(_probe([target_of(n) for n in nodes])) if nodes else []
    return {node.public_id: node_record_health(node=node, healthy=ok) for node, ok in zip(nodes, results)}


def _attestable():
    return Node.objects.exclude(attestation=Node.Attestation.NONE).exclude(status=Node.Status.DISABLED)


@shared_task
def attest_node(node_id: int) -> str | None:
    """Challenge one confidential node; the outcome ("verified"/"failed"), or None if it is not to be attested."""
    from .attestation.services import node_attest

    node = _attestable().filter(id=node_id).first()
    return node_attest(node=node).result if node is not None else None


@shared_task
def reattest_nodes() -> int:
    """Beat: challenge every confidential node that is not disabled, one task each."""
    ids = list(_attestable().values_list("id", flat=True))
    for node_id in ids:
        attest_node.delay(node_id)
    return len(ids)
