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
