"""Model management on a node: load and unload (at once), pull (a job with progress).

The adapter does the talking (NodeAdapter.load_model / unload_model / pull_model) and
raises NodeError, permanent or retryable; this module records what changed:

- load / unload: the node's ``models_loaded`` (what its heartbeats report too: the next
  heartbeat is the truth, this is the answer until then);
- pull: a Job (kind ``model.pull``, owned by the node's operator organization) whose
  progress is written as the node reports it, at a bounded rate, and which ends
  ``succeeded`` or ``failed``. A retryable failure (node unreachable, stream cut) puts
  the job back to ``queued`` and the task retries with backoff, NODE_PULL_MAX_RETRIES
  times; a permanent one (no such model upstream) fails it at once.

A pulled model is on the node's disk, not yet routed to: only a pull that asked to serve
it (``serve`` in the job's params: public name, context window, output cap, modalities)
adds it to the node's served models (a NodeModel), and only if the node does not serve
that name already. It then takes paid traffic once the model has a price (billing).

The same functions serve operators (gateway/node_management.py, node tokens), platform
staff (nodes/admin.py actions) and the Celery task (nodes/tasks.pull_model).
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.db import transaction

from . import http, jobs, services
from .adapters import NodeAdapter, NodeError, adapter_for
from .models import Job, Node, NodeModel
from .registry import NodeTarget, target_for

log = logging.getLogger(__name__)

MAX_RETRY_SECONDS = 600


def supports(node: Node, operation: str) -> bool:
    """Whether the node's adapter implements ``operation`` ("load_model", "unload_model",
    "pull_model") rather than refusing it as the base class does."""
    from .adapters import ADAPTERS

    cls = ADAPTERS.get(node.adapter)
    return cls is not None and getattr(cls, operation) is not getattr(NodeAdapter, operation)


def upstream_name(*, node: Node, model: str) -> str:
    """The backend's own name for ``model``: a public name the node serves maps to its
    upstream model; anything else is taken as the backend's name already."""
    served = NodeModel.objects.filter(node=node, model=model).values_list("upstream_model", flat=True).first()
    return served or model


@transaction.atomic
def node_models_loaded_set(*, node: Node, model: str, loaded: bool) -> list[str]:
    """Add ``model`` to (or drop it from) the node's models_loaded; the row is locked so a
    concurrent load and unload do not lose each other's change."""
    current = Node.objects.select_for_update().values_list("models_loaded", flat=True).get(id=node.id) or []
    current = [m for m in current if m != model] + ([model] if loaded else [])
    Node.objects.filter(id=node.id).update(models_loaded=current)
    node.models_loaded = current
    return current


def _prepare(node: Node, model: str) -> tuple[NodeTarget, str]:
    return target_for(node), upstream_name(node=node, model=model)


async def model_load(*, node: Node, model: str) -> list[str]:
    """Load ``model`` into the node's memory; the node's models_loaded after it. Raises NodeError."""
    target, upstream = await sync_to_async(_prepare, thread_sensitive=True)(node, model)
    await adapter_for(target).load_model(upstream)
    return await sync_to_async(node_models_loaded_set, thread_sensitive=True)(node=node, model=upstream, loaded=True)


async def model_unload(*, node: Node, model: str) -> list[str]:
    """Free ``model`` from the node's memory; the node's models_loaded after it. Raises NodeError."""
    target, upstream = await sync_to_async(_prepare, thread_sensitive=True)(node, model)
    await adapter_for(target).unload_model(upstream)
    return await sync_to_async(node_models_loaded_set, thread_sensitive=True)(node=node, model=upstream, loaded=False)


def run_sync(call, **kwargs):
    """Run model_load / model_unload from sync code (admin actions), closing its HTTP session."""

    async def run():
        try:
            return await call(**kwargs)
        finally:
            await http.close()

    return async_to_sync(run)()


# --- pull ----------------------------------------------------------------------------------


@transaction.atomic
def model_pull_create(*, node: Node, model: str, serve: dict[str, Any] | None = None) -> Job:
    """A queued pull job for ``model`` on ``node``, sent to a worker once committed.

    ``serve``: ``{"model"?, "context_window"?, "max_output_tokens"?, "input_modalities"?}`` to
    serve the model once pulled (``model`` defaults to the pulled name), or None to only pull.
    Raises ValueError for a node without an operator (the job needs an owner) or bad ``serve``.
    """
    from .tasks import pull_model

    if node.operator_id is None:
        raise ValueError("this node has no operator organization to own the pull job")
    if serve is not None:
        serve = {**serve, "model": serve.get("model") or model}
        serve["input_modalities"] = services._input_modalities(serve.get("input_modalities"))
    job = jobs.job_create(
        kind=Job.Kind.MODEL_PULL,
        operator=node.operator,
        node=node,
        params={"model": model, "upstream_model": upstream_name(node=node, model=model), "serve": serve},
    )
    jobs.job_enqueue(job=job, task=pull_model)
    return job


@dataclass(frozen=True)
class PullOutcome:
    status: str  # the job's status after this attempt
    retry_in: int | None = None  # seconds before the task should try again


def retry_delay(attempt: int) -> int:
    """Backoff after the ``attempt``-th failed try (1-based): base, 2×base, 4×base… at most 10 minutes."""
    return min(settings.NODE_PULL_RETRY_SECONDS * 2 ** (attempt - 1), MAX_RETRY_SECONDS)


class _Progress:
    """Writes a pull's progress when the node reports a new step (its ``status`` text changes),
    else at most once per NODE_PULL_PROGRESS_SECONDS: a fast download of many chunks costs a
    handful of UPDATEs. ``completed``/``total`` stay from the last event that had them."""

    def __init__(self, job: Job, attempt: int) -> None:
        self.job, self.attempt = job, attempt
        self.current: dict[str, Any] = {"status": "starting", "attempt": attempt}
        self.written_status: str | None = None
        self.written_at = -math.inf
        self.dirty = False

    def update(self, event: dict[str, Any]) -> None:
        self.current = {**self.current, **event, "attempt": self.attempt}
        now = time.monotonic()
        if event.get("status") != self.written_status or now - self.written_at >= settings.NODE_PULL_PROGRESS_SECONDS:
            self.write(now)
        else:
            self.dirty = True

    def write(self, now: float | None = None) -> None:
        jobs.job_progress(job=self.job, progress=self.current)
        self.written_status, self.written_at, self.dirty = self.current.get("status"), now or time.monotonic(), False

    def flush(self) -> None:
        if self.dirty:
            self.write()


def _pull(target: NodeTarget, name: str, progress: _Progress) -> None:
    """Iterate the adapter's pull on a private event loop, writing progress between events.

    The loop is not running while progress is written, so the sync ORM is safe here (this
    runs on a Celery worker, or on a job thread under eager Celery: never on a server's loop).
    """
    loop = asyncio.new_event_loop()
    events = adapter_for(target).pull_model(name)
    try:
        while True:
            try:
                event = loop.run_until_complete(anext(events))
            except StopAsyncIteration:
                return
            progress.update(event)
    finally:
        loop.run_until_complete(events.aclose())
        loop.run_until_complete(http.close())
        loop.close()


def model_pull_run(*, job: Job, attempt: int) -> PullOutcome:
    """One attempt at a pull job (``attempt`` counts from 1); what to do next is in the outcome."""
    if not jobs.job_start(job=job):
        return PullOutcome(job.status)  # taken by another delivery, or already finished
    node = job.node
    if node is None:  # deleted since the job was created
        jobs.job_finish(job=job, status=Job.Status.FAILED, error_code="not_found", error_message="The node was deleted.")
        return PullOutcome(Job.Status.FAILED)
    name = job.params.get("upstream_model") or job.params["model"]
    progress = _Progress(job, attempt)
    progress.write()  # {"status": "starting", "attempt": n}: a retry shows as such at once
    try:
        _pull(target_for(node), name, progress)
    except NodeError as exc:
        progress.flush()
        retries_left = settings.NODE_PULL_MAX_RETRIES - (attempt - 1)
        if exc.permanent or retries_left <= 0:
            code = exc.code or ("model_not_found" if exc.status == 404 else "pull_failed" if exc.permanent else "upstream_unavailable")
            tries = f" after {attempt} attempt{'s' if attempt > 1 else ''}" if not exc.permanent else ""
            jobs.job_finish(job=job, status=Job.Status.FAILED, error_code=code, error_message=f"{exc}{tries}")
            return PullOutcome(Job.Status.FAILED)
        delay = retry_delay(attempt)
        waiting = {**progress.current, "status": "retrying", "error": str(exc), "retry_in": delay}
        if not jobs.job_requeue(job=job, progress=waiting):
            return PullOutcome(job.status)
        return PullOutcome(Job.Status.QUEUED, retry_in=delay)
    except Exception as exc:  # a bug must not leave the job running for ever
        log.exception("pull job %s broke", job.public_id)
        jobs.job_finish(job=job, status=Job.Status.FAILED, error_code="internal_error", error_message=exc.__class__.__name__)
        return PullOutcome(Job.Status.FAILED)
    progress.flush()
    result: dict[str, Any] = {"model": name, "served": False, "served_model": None}
    serve = job.params.get("serve")
    if serve:
        _, created = services.node_model_add(
            node=node,
            model=serve["model"],
            upstream_model=name,
            context_window=serve.get("context_window", 4096),
            max_output_tokens=serve.get("max_output_tokens", 1024),
            input_modalities=serve.get("input_modalities"),
        )
        result.update(served=True, served_model=serve["model"], already_served=not created)
    jobs.job_finish(job=job, status=Job.Status.SUCCEEDED, result=result)
    return PullOutcome(Job.Status.SUCCEEDED)
