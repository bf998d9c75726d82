"""Hand work to Celery without making the caller wait for it.

With a broker the task goes to a worker. Without one (eager Celery: the embedded
default) it runs on a daemon thread of this process, so a request handler on the
event loop never waits for a model pull, an attestation, a cluster sync or a job.
"""
from __future__ import annotations

import logging
import threading

from django.conf import settings
from django.db import connections, transaction

log = logging.getLogger(__name__)


def dispatch(task, *args, name: str) -> None:
    """Run ``task(*args)`` now (blocking only for the broker's send: call it off the event loop)."""
    if settings.CELERY_TASK_ALWAYS_EAGER:
        threading.Thread(target=_run_eager, args=(task, args), daemon=True, name=name).start()
    else:
        task.delay(*args)


def after_commit(task, *args, name: str) -> None:
    """Run ``task(*args)`` once the current transaction commits (never for one that rolls back)."""
    transaction.on_commit(lambda: dispatch(task, *args, name=name))


def _run_eager(task, args: tuple) -> None:
    try:
        # throw=False: with eager propagation a task's self.retry() would escape this thread as an
        # exception instead of running the retry (Task.apply retries only results it holds).
        result = task.apply(args=args, throw=False)
        if result.failed():
            log.error("task %s%r failed\n%s", task.name, args, result.traceback)
    finally:
        connections.close_all()  # this thread's connections die with it
