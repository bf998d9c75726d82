import datetime as dt

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from . import services


@shared_task(autoretry_for=(Exception,), retry_backoff=True, max_retries=5)
def void_expired_reservations() -> int:
    return services.reservations_void_expired()


@shared_task
def reconcile_yesterday() -> int | None:
    """Reconcile yesterday (UTC) once it is over; hourly, so a missed or failed run catches up."""
    from .reconcile import runs

    day = timezone.now().astimezone(dt.UTC).date() - dt.timedelta(days=1)
    if runs.day_reconciled(day=day):
        return None
    return runs.reconcile_run(day=day, heal=settings.RECONCILE_AUTO_HEAL).id


@shared_task
def reconcile_today() -> int:
    """Reconcile today so far: a dropped webhook is found (and healed) within the hour."""
    from .reconcile import runs

    day = timezone.now().astimezone(dt.UTC).date()
    return runs.reconcile_run(day=day, heal=settings.RECONCILE_AUTO_HEAL).id
