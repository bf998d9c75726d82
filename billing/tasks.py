from celery import shared_task

from . import metering, services


@shared_task(autoretry_for=(Exception,), retry_backoff=True, max_retries=5)
def void_expired_reservations() -> int:
    return services.reservations_void_expired()


# The outbox keeps its own retry state (attempts, last_error, flagged): a failed run is
# simply the next beat's work, so these tasks do not retry themselves.
@shared_task
def meter_outbox_send() -> dict:
    return metering.meter_outbox_send().as_dict()


@shared_task
def meter_outbox_acknowledge() -> dict:
    return metering.meter_outbox_acknowledge().as_dict()
