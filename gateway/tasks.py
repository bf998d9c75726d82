from celery import shared_task
from django.utils import timezone

from .models import IdempotencyRecord


@shared_task
def purge_expired_idempotency() -> int:
    deleted, _ = IdempotencyRecord.objects.filter(expires_at__lt=timezone.now()).delete()
    return deleted


# Paid jobs. A job is claimed once (queued → running), so a duplicate task does nothing;
# retrying a failed one would run paid work twice, so these never retry. An image job whose
# worker died mid-run is redelivered by the broker (acks_late) and run once more: charged once.
@shared_task(bind=True, acks_late=True)
def run_image_job(self, job_id: str) -> None:
    from .images import run_job

    run_job(job_id, redelivered=bool((self.request.delivery_info or {}).get("redelivered")))


@shared_task(acks_late=True)
def run_agent_job(job_id: str) -> None:
    from .agents.run import run_job

    run_job(job_id)


@shared_task
def fail_lost_jobs() -> int:
    from nodes.paidjobs import jobs_fail_lost

    return jobs_fail_lost()


@shared_task
def purge_expired_bodies() -> int:
    """Delete encrypted bodies past their project's retention time (gateway.vault)."""
    from .vault import bodies_purge_expired

    return bodies_purge_expired()
