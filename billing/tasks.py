from celery import shared_task

from . import services


@shared_task(autoretry_for=(Exception,), retry_backoff=True, max_retries=5)
def void_expired_reservations() -> int:
    return services.reservations_void_expired()
