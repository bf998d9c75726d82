"""Paid jobs (images, agent runs): reserved at the edge, run and settled by a Celery worker.

Edge (on the event loop): the job row is inserted in the reservation's own round
trip (``submit``), so there is never a job without its hold or a hold without its
job; then the job is handed to Celery. A job that cannot be queued is failed and
its hold voided at once (503, nothing charged).

Worker (``JobRun``, sync code between async steps on the task's own event
loop): the job is claimed once (queued → running); its hold is extended to cover
the job's longest possible run, so the reservation sweeper cannot void it
underneath (a hold that already expired while the job waited in the queue means
the job fails without running: nothing was charged, nothing is served); then the
exact cost is settled (or the hold voided) together with the request record and
the job's final state, in one transaction.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing import ledger
from billing import selectors as billing_selectors
from billing.pricing import Usage
from billing.services import reservation_extend
from config import asyncdb
from nodes import jobs, paidjobs
from nodes.models import Job

from .errors import CODES, GatewayError
from .paid import PaidRequest
from .records import RequestMeta, insert_statement

log = logging.getLogger(__name__)

POLL_FIRST, POLL_MAX = 0.05, 0.5


# --- edge ------------------------------------------------------------------------------


async def create(*, paid: PaidRequest, kind: str, params: dict[str, Any], input: Any, amount: int) -> Job:
    """Reserve ``amount`` and create the job, in one round trip."""
    job, insert = paidjobs.job_insert(
        kind=kind, project_id=paid.key.project_id, params=params, input=input, request_id=paid.request_id,
        now=timezone.now(),
    )
    await paid.reserve(amount=amount, before=[insert], held_here=False)  # the worker settles it
    return job


async def abandon(*, paid: PaidRequest, job: Job, message: str) -> GatewayError:
    """A created job that cannot go on: failed, its hold voided (nothing charged); the 503 to raise."""
    failed = paidjobs.job_fail_statement(public_id=job.public_id, code="service_unavailable", message=message,
                                         now=timezone.now())
    await paid.finish(usage=None, status_code=503, error_code="service_unavailable", after=[failed])
    job.status, job.error_code, job.error_message = Job.Status.FAILED, "service_unavailable", message
    return GatewayError("service_unavailable", message)


async def queue(*, paid: PaidRequest, job: Job, task) -> None:
    """Hand a created job to Celery (off the event loop: the broker call blocks)."""
    try:
        await asyncio.to_thread(paidjobs.job_dispatch, job_id=job.public_id, task=task)
    except Exception:
        log.exception("job %s could not be queued", job.public_id)
        raise await abandon(paid=paid, job=job, message="The job queue is unreachable; nothing was charged.") from None


async def submit(*, paid: PaidRequest, kind: str, params: dict[str, Any], input: Any, amount: int, task) -> Job:
    job = await create(paid=paid, kind=kind, params=params, input=input, amount=amount)
    await queue(paid=paid, job=job, task=task)
    return job


async def wait(*, job_id: str, project_id: int, timeout: float) -> Job | None:
    """The job once it ended, or None if it is still running after ``timeout`` seconds.
    Polls one indexed row with a growing interval: the event loop is never blocked."""
    deadline = time.monotonic() + timeout
    delay = POLL_FIRST
    while True:
        status = await paidjobs.job_status(public_id=job_id, project_id=project_id)
        if status in jobs.TERMINAL:
            return await paidjobs.job_load(public_id=job_id, project_id=project_id)
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 2, POLL_MAX)


def job_error(job: Job) -> GatewayError:
    """A failed job as the error the synchronous caller gets."""
    code = job.error_code if job.error_code in CODES else "upstream_unavailable"
    return GatewayError(code, job.error_message or "The job failed; nothing was charged.",
                        headers={"x-job-id": job.public_id})


# --- worker ------------------------------------------------------------------------------


@dataclass
class JobBill:
    """A running job's hold and the request record its settlement writes."""

    reservation: ledger.Reservation
    meta: RequestMeta

    @classmethod
    def load(cls, job: Job, *, endpoint: str) -> JobBill | None:
        found = billing_selectors.pending_reservation(request_id=job.request_id, project_id=job.project_id)
        if found is None:
            return None
        reservation, api_key_id = found
        meta = RequestMeta(
            request_id=job.request_id, organization_id=job.project.organization_id, project_id=job.project_id,
            api_key_id=api_key_id, endpoint=endpoint, created_at=job.created_at, model=reservation.price.model,
            price_version=reservation.price.version, transfer_id=reservation.transfer_id,
        )
        return cls(reservation, meta)

    @property
    def request_id(self) -> str:
        return self.meta.request_id

    def extend(self) -> bool:
        until = timezone.now() + dt.timedelta(seconds=settings.JOB_MAX_SECONDS + settings.JOB_HOLD_MARGIN_SECONDS)
        return reservation_extend(transfer_id=self.reservation.transfer_id, until=until)

    def _record(self, *, status_code: int, error_code: str, node_id: str, usage: Usage | None, cost: int) -> None:
        meta = self.meta
        meta.status_code, meta.error_code, meta.node_id, meta.cost = status_code, error_code, node_id, cost
        meta.latency_ms = int((timezone.now() - meta.created_at).total_seconds() * 1000)
        if usage is not None:
            meta.input_tokens, meta.output_tokens = usage.input_tokens, usage.output_tokens
            meta.cached_input_tokens = usage.cached_input_tokens

    def settle(self, *, usage: Usage, node_id: str, amount: int | None = None) -> int:
        """Post the exact cost (token-priced from ``usage``, or ``amount``); returns what was posted."""
        if amount is None:
            amount, _ = ledger.settlement_amount(self.reservation, usage)
        else:
            amount, _ = ledger.fixed_amount(self.reservation, amount)
        self._record(status_code=200, error_code="", node_id=node_id, usage=usage, cost=amount)
        stmts = ledger.settle_statements(
            transfer_id=self.reservation.transfer_id, amount=amount, usage=usage, now=timezone.now()
        )
        results = asyncdb.run_sync(*stmts, insert_statement(self.meta))
        if results[0].rowcount != 1:  # cannot happen while the hold is extended; say so if it does
            log.error("job request %s: its hold was no longer pending at settlement", self.meta.request_id)
            return 0
        return amount

    def void(self, *, error_code: str, node_id: str = "") -> None:
        status = CODES.get(error_code, (500,))[0] if error_code else 200
        self._record(status_code=status, error_code=error_code, node_id=node_id,
                     usage=None, cost=0)
        stmts = ledger.void_statements(transfer_id=self.reservation.transfer_id, now=timezone.now())
        asyncdb.run_sync(*stmts, insert_statement(self.meta))


class JobFailed(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def node_failure(exc) -> JobFailed:
    """A NodeError as the job's failure (the same codes a request would get)."""
    if exc.permanent:
        return JobFailed("invalid_request", f"The model rejected the request: {exc}")
    return JobFailed("upstream_unavailable", "No node could run the job; nothing was charged for the failed attempts.")


class JobRun:
    """One run of a job in a worker: claim, hold, async steps on a private loop, finish.

    Sync code runs between the async steps (``step``), so the ORM is used with
    no event loop running, as Django requires.
    """

    endpoint = ""

    def __init__(self, job: Job):
        self.job = job
        self.loop = asyncio.new_event_loop()
        self.deadline = time.monotonic() + settings.JOB_MAX_SECONDS
        self.bill: JobBill | None = None

    @classmethod
    def claim(cls, job_id: str, *, redelivered: bool = False) -> JobRun | None:
        """The job, claimed for this worker; None if another worker (or an earlier try) took it.

        ``redelivered``: the broker handed the task back because the worker running it died
        (acks_late + reject_on_worker_lost); a job still running is then claimed once more
        (jobs.job_reclaim). Its hold is still pending, so it is settled once, by whichever run
        ends it; a run that had ended it already left nothing to claim."""
        job = Job.objects.select_related("project").filter(public_id=job_id).first()
        if job is None:
            return None
        if not jobs.job_start(job=job) and not (redelivered and jobs.job_reclaim(job=job)):
            return None
        if job.attempts > 1:
            log.warning("job %s: its worker was lost mid-run; running it again (attempt %d)", job_id, job.attempts)
        return cls(job)

    def hold(self) -> None:
        self.bill = JobBill.load(self.job, endpoint=self.endpoint)
        if self.bill is None or not self.bill.extend():
            raise JobFailed(
                "service_unavailable",
                "The job waited in the queue longer than its reservation lasts; it did not run and nothing was charged.",
            )

    def step(self, coro):
        """Run one async step on this job's loop, within what is left of the job's time."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            coro.close()
            raise JobFailed("upstream_unavailable", f"The job ran past its {settings.JOB_MAX_SECONDS} s limit.")
        try:
            return self.loop.run_until_complete(asyncio.wait_for(coro, left))
        except TimeoutError:
            raise JobFailed("upstream_unavailable", f"The job ran past its {settings.JOB_MAX_SECONDS} s limit.") from None

    def close(self) -> None:
        from config import redisconn
        from nodes import http

        async def release() -> None:
            await http.close()
            await asyncdb.close_pools()
            await redisconn.close_async()

        try:
            self.loop.run_until_complete(release())
        finally:
            self.loop.close()

    def finish(self, *, status: str, result: Any = None, error: JobFailed | None = None, settle=None) -> None:
        """Settle or void (``settle()`` does it) and end the job, in one transaction."""
        with transaction.atomic():
            if settle is not None:
                settle()
            jobs.job_finish(
                job=self.job, status=status, result=result,
                error_code=error.code if error else "", error_message=error.message if error else "",
            )
