import datetime as dt

import stripe
from celery import shared_task
from django.conf import settings
from django.utils import timezone

from . import metering, promo, recharge, services


@shared_task(autoretry_for=(Exception,), retry_backoff=True, max_retries=5)
def void_expired_reservations() -> int:
    return services.reservations_void_expired()


@shared_task
def auto_recharge_scan() -> dict:
    return recharge.auto_recharge_scan()


# Declines and bad requests are settled inside; what reaches here is Stripe being
# unreachable or busy, retried with the same idempotency key (one charge at most).
@shared_task(autoretry_for=(stripe.StripeError,), retry_backoff=True, retry_backoff_max=600, max_retries=8)
def auto_recharge_charge(attempt_id: int) -> str:
    return recharge.recharge_charge(attempt_id=attempt_id).status


@shared_task(autoretry_for=(Exception,), retry_backoff=True, max_retries=5)
def promo_expire_due() -> dict:
    return promo.promo_expire_due()


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


# The outbox keeps its own retry state (attempts, last_error, flagged): a failed run is
# simply the next beat's work, so these tasks do not retry themselves.
@shared_task
def meter_outbox_send() -> dict:
    return metering.meter_outbox_send().as_dict()


@shared_task
def meter_outbox_acknowledge() -> dict:
    return metering.meter_outbox_acknowledge().as_dict()
