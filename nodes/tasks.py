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


@shared_task(bind=True, acks_late=True)
def pull_model(self, job_id: str) -> str:
    """Pull a model onto a node for a ``model.pull`` job (nodes.model_management.model_pull_create)."""
    import time

    from .model_management import model_pull_run
    from .models import Job

    job = Job.objects.select_related("node").filter(public_id=job_id, kind=Job.Kind.MODEL_PULL).first()
    if job is None:
        return "missing"
    outcome = model_pull_run(job=job, attempt=self.request.retries + 1)
    if outcome.retry_in is not None:
        if self.request.is_eager:  # eager retries run at once, on this job's own thread: wait here
            time.sleep(outcome.retry_in)
        raise self.retry(countdown=outcome.retry_in, max_retries=None)
    return outcome.status


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
