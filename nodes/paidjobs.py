"""A project's paid jobs (images, agent runs) from the gateway's side.

The gateway creates the job row in the same round trip that reserves its money
(``job_insert``: a statement for ``config.asyncdb``, so it commits or fails with
the reservation), hands it to Celery (``job_dispatch``: the row is committed
already), and reads it back on the event loop without the sync ORM
(``job_load``, ``job_status``). The worker records which node ran it
(``job_assign_node``). Every other change goes through nodes.jobs.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from config import asyncdb
from config.asyncdb import Stmt
from config.ids import plausible_id

from . import dispatch, jobs
from .models import Job, Node

_INSERT = """
INSERT INTO nodes_job (public_id, kind, status, project_id, request_id, params, progress, sealed_input,
                       error_code, error_message, created_at)
VALUES (%(public_id)s, %(kind)s, 'queued', %(project_id)s, %(request_id)s, %(params)s, '{}', %(sealed_input)s,
        '', '', %(created_at)s)
"""
_COLUMNS = "j.public_id, j.kind, j.status, j.project_id, j.request_id, j.params, j.progress, j.error_code, " \
           "j.error_message, j.created_at, j.started_at, j.finished_at, n.id, n.public_id"
_LOAD = f"""
SELECT {_COLUMNS}, j.sealed_result FROM nodes_job j LEFT JOIN nodes_node n ON n.id = j.node_id
WHERE j.public_id = %(public_id)s AND j.project_id = %(project_id)s
"""
_LOAD_KIND = _LOAD.rstrip() + " AND j.kind = %(kind)s"
_STATUS = "SELECT status FROM nodes_job WHERE public_id = %(public_id)s AND project_id = %(project_id)s"
_FAIL = """
UPDATE nodes_job SET status = 'failed', finished_at = %(now)s, error_code = %(code)s, error_message = %(message)s
WHERE public_id = %(public_id)s AND status IN ('queued', 'running')
"""


def job_insert(
    *, kind: str, project_id: int, params: dict[str, Any], input: Any, request_id: str, now: dt.datetime
) -> tuple[Job, Stmt]:
    """An unsaved job (its public id drawn, its input sealed) and the statement that inserts it."""
    job = Job(kind=kind, project_id=project_id, params=params, request_id=request_id, created_at=now)
    job.sealed_input = jobs._seal(job, "input", input)
    return job, Stmt(_INSERT, {
        "public_id": job.public_id, "kind": kind, "project_id": project_id, "request_id": request_id,
        "params": orjson.dumps(params).decode(), "sealed_input": job.sealed_input, "created_at": now,
    })


def job_fail_statement(*, public_id: str, code: str, message: str, now: dt.datetime) -> Stmt:
    """Fail a job that never ran (e.g. it could not be queued), in the caller's round trip."""
    return Stmt(_FAIL, {"public_id": public_id, "code": code, "message": message[:2000], "now": now})


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, (str, bytes)) else value


async def job_load(*, public_id: str, project_id: int, kind: str | None = None) -> Job | None:
    """The project's job (None for another project's or a missing one), as an unsaved
    instance that ``jobs.job_object`` and ``jobs.job_result`` can read."""
    if not plausible_id(public_id):
        return None
    sql, params = (_LOAD_KIND, {"kind": kind}) if kind else (_LOAD, {})
    row = await asyncdb.fetch_one(sql, {"public_id": public_id, "project_id": project_id, **params})
    if row is None:
        return None
    job = Job(
        public_id=row[0], kind=row[1], status=row[2], project_id=row[3], request_id=row[4], params=_json(row[5]),
        progress=_json(row[6]), error_code=row[7], error_message=row[8], created_at=asyncdb.as_datetime(row[9]),
        started_at=asyncdb.as_datetime(row[10]), finished_at=asyncdb.as_datetime(row[11]),
        sealed_result=bytes(row[14]) if row[14] is not None else None,
    )
    if row[12] is not None:
        job.node = Node(id=row[12], public_id=row[13])  # cached on the instance: no query when read
    return job


async def job_status(*, public_id: str, project_id: int) -> str | None:
    if not plausible_id(public_id):
        return None
    row = await asyncdb.fetch_one(_STATUS, {"public_id": public_id, "project_id": project_id})
    return row[0] if row else None


def job_dispatch(*, job_id: str, task) -> None:
    """Hand a committed job to Celery (nodes.dispatch). Blocking: call it off the event loop.
    Raises if the broker is unreachable."""
    dispatch.dispatch(task, job_id, name=f"job:{job_id}")


def job_assign_node(*, job: Job, node_id: int) -> None:
    """Record the node that ran a running job."""
    Job.objects.filter(id=job.id, status=Job.Status.RUNNING).update(node_id=node_id)
    job.node_id = node_id


def jobs_fail_lost(*, now: dt.datetime | None = None) -> int:
    """Fail paid jobs that can no longer end by themselves: running past the longest a
    job may run plus its hold's margin (the worker died), or still queued after their
    hold lapsed (the broker lost the message). Their holds have lapsed by then and the
    reservation sweeper voids them: nothing is charged. A worker that picks one up
    later finds it no longer queued and does nothing."""
    from django.conf import settings
    from django.db.models import Q
    from django.utils import timezone

    now = now or timezone.now()
    margin = dt.timedelta(seconds=settings.JOB_HOLD_MARGIN_SECONDS)
    ran_out = now - dt.timedelta(seconds=settings.JOB_MAX_SECONDS) - margin
    waited_out = now - dt.timedelta(seconds=settings.RESERVATION_TIMEOUT_SECONDS) - margin
    lost = Q(status=Job.Status.RUNNING, started_at__lt=ran_out) | Q(status=Job.Status.QUEUED, created_at__lt=waited_out)
    return Job.objects.filter(lost, kind__in=(Job.Kind.IMAGE, Job.Kind.AGENT_RUN)).update(
        status=Job.Status.FAILED, finished_at=now, error_code="internal_error",
        error_message="The job was lost (its worker stopped, or it never reached one); nothing was charged.",
    )
