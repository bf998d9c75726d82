from celery import shared_task
from django.utils import timezone

from .models import IdempotencyRecord


@shared_task
def purge_expired_idempotency() -> int:
    deleted, _ = IdempotencyRecord.objects.filter(expires_at__lt=timezone.now()).delete()
    return deleted
