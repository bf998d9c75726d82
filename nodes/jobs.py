"""Jobs: create, claim, report progress, finish; and how a job looks through the API.

Every state change is a conditional UPDATE on the status, so a job is started
once and finished once, whatever the retries (style: claim work with a
conditional UPDATE). Inputs and results are sealed, bound to the job's id.
"""
from __future__ import annotations

import logging
from typing import Any

import orjson
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from config import crypto

from . import dispatch

from .models import Job

log = logging.getLogger(__name__)

PURPOSE = "job"
TERMINAL = (Job.Status.SUCCEEDED, Job.Status.FAILED, Job.Status.CANCELLED)


def _aad(job: Job, part: str) -> bytes:
    owner = f"project:{job.project_id}" if job.project_id else f"operator:{job.operator_id}"
    return f"job:{job.public_id}:{owner}:{part}".encode()


def _seal(job: Job, part: str, value: Any) -> bytes:
    return crypto.seal(PURPOSE, orjson.dumps(value), _aad(job, part))


def _open(job: Job, part: str, blob) -> Any:
    return None if not blob else orjson.loads(crypto.open_sealed(PURPOSE, bytes(blob), _aad(job, part)))


@transaction.atomic
def job_create(
    *,
    kind: str,
    project=None,
    operator=None,
    node=None,
    params: dict[str, Any] | None = None,
    input: Any = None,
    request_id: str = "",
) -> Job:
    job = Job(kind=kind, project=project, operator=operator, node=node, params=params or {}, request_id=request_id)
    if input is not None:
        job.sealed_input = _seal(job, "input", input)
    job.save()
    return job


def job_input(*, job: Job) -> Any:
    return _open(job, "input", job.sealed_input)


def job_result(*, job: Job) -> Any:
    return _open(job, "result", job.sealed_result)


def job_start(*, job: Job) -> bool:
    """queued → running; False if another worker (or a retry) already took it."""
    now = timezone.now()
    taken = Job.objects.filter(id=job.id, status=Job.Status.QUEUED).update(
        status=Job.Status.RUNNING, started_at=now, attempts=F("attempts") + 1
    )
    if taken:
        job.status, job.started_at, job.attempts = Job.Status.RUNNING, now, job.attempts + 1
    return bool(taken)


def job_reclaim(*, job: Job, max_attempts: int = 2) -> bool:
    """running → running again, for a redelivered task whose worker died mid-run (the broker
    gives a message back only when its worker was lost); at most ``max_attempts`` claims in all.
    False if it ended meanwhile (then it was settled or voided with its end: nothing to redo)."""
    now = timezone.now()
    taken = Job.objects.filter(id=job.id, status=Job.Status.RUNNING, attempts__lt=max_attempts).update(
        started_at=now, attempts=F("attempts") + 1
    )
    if taken:
        job.started_at, job.attempts = now, job.attempts + 1
    return bool(taken)


def job_progress(*, job: Job, progress: dict[str, Any]) -> None:
    Job.objects.filter(id=job.id, status=Job.Status.RUNNING).update(progress=progress)
    job.progress = progress


def job_requeue(*, job: Job, progress: dict[str, Any]) -> bool:
    """running → queued, before a retry: the retry claims it again with job_start. False if it
    was no longer running (finished or cancelled meanwhile: then there is nothing to retry)."""
    back = Job.objects.filter(id=job.id, status=Job.Status.RUNNING).update(status=Job.Status.QUEUED, progress=progress)
    if back:
        job.status, job.progress = Job.Status.QUEUED, progress
    return bool(back)


def job_finish(
    *, job: Job, status: str, result: Any = None, error_code: str = "", error_message: str = ""
) -> bool:
    """running (or queued, for a job refused before it ran) → a terminal status, once."""
    if status not in TERMINAL:
        raise ValueError(f"{status!r} is not a terminal job status")
    now = timezone.now()
    changes: dict[str, Any] = {
        "status": status, "finished_at": now, "error_code": error_code, "error_message": error_message[:2000],
    }
    if result is not None:
        changes["sealed_result"] = _seal(job, "result", result)
    done = Job.objects.filter(id=job.id, status__in=(Job.Status.QUEUED, Job.Status.RUNNING)).update(**changes)
    if done:
        for field, value in changes.items():
            setattr(job, field, value)
    return bool(done)


def job_object(job: Job, *, include_result: bool = True) -> dict[str, Any]:
    """A job as its owner sees it through ``GET /v1/jobs/{id}``."""
    obj: dict[str, Any] = {
        "id": job.public_id,
        "object": "job",
        "kind": job.kind,
        "status": job.status,
        "node": job.node.public_id if job.node_id and job.node else None,
        "params": job.params,
        "progress": job.progress,
        "created_at": int(job.created_at.timestamp()),
        "started_at": int(job.started_at.timestamp()) if job.started_at else None,
        "finished_at": int(job.finished_at.timestamp()) if job.finished_at else None,
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
    }
    if include_result and job.status == Job.Status.SUCCEEDED:
        obj["result"] = job_result(job=job)
    return obj


def progress_percent(progress: dict[str, Any]) -> int | None:
    """How far the current step is (``completed`` of ``total``), rounded down; None if unknown."""
    completed, total = progress.get("completed"), progress.get("total")
    if isinstance(completed, int) and isinstance(total, int) and total > 0:
        return max(0, min(100, completed * 100 // total))
    return None


def progress_text(progress: dict[str, Any]) -> str:
    """A line for people (admin, console): ``pulling 0a1b2c 25% (attempt 2)``."""
    text = str(progress.get("status", ""))
    if (percent := progress_percent(progress)) is not None:
        text += f" {percent}%"
    attempt = progress.get("attempt")
    if isinstance(attempt, int) and attempt > 1:
        text += f" (attempt {attempt})"
    return text


def job_enqueue(*, job: Job, task) -> None:
    """Run the Celery ``task(job.public_id)`` once the job row is committed (nodes.dispatch)."""
    dispatch.after_commit(task, job.public_id, name=f"job:{job.public_id}")
