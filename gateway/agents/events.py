"""An agent run's events: numbered SSE frames in the run's stream log, and kept with the job.

The stream is the same kind of log a streamed chat answer has (gateway/streams.py),
named by the run's request id, so a client follows it, drops, and resumes with
Last-Event-ID (POST with ``stream: true``, then ``GET /v1/streams/{request_id}``
or ``GET /v1/agents/runs/{id}/events``).

The edge writes event 1 (``run.created``) before the job is queued, so a
follower always finds the stream; the worker writes the rest:

* with Redis (production, and the test suite) straight into the Redis stream
  the log mirrors to (``0-<n>`` entries, the first carrying the project and
  headers), so any server process serves it, wherever the worker runs;
* without Redis (the embedded default, where the job runs on a thread of the
  server process) into the in-process log, through its event loop.

Every event is also kept in the job's sealed result, for a replay after the
stream's retention has passed.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from django.conf import settings

from config import redisconn

from .. import streams
from ..sse import frame

log = logging.getLogger(__name__)

ENDPOINT = "agents.runs"
# Logs of runs whose worker is a thread of this process (no Redis): request id -> (loop, log).
_local: dict[str, tuple[asyncio.AbstractEventLoop, streams.StreamLog]] = {}


def _payload(kind: str, n: int, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "sequence_number": n, **data}


def created_data(job_id: str, spec: dict[str, Any]) -> dict[str, Any]:
    """What ``run.created`` says; the edge and the worker both build it from the run's spec."""
    return {"run_id": job_id, "agent": spec["agent"], "model": spec["model"], "tools": spec["granted"],
            "max_steps": spec["max_steps"], "max_tokens": spec["max_tokens"]}


def _ttl_open() -> int:
    """A run may wait in the queue (as long as its hold lasts) and then run."""
    return settings.RESERVATION_TIMEOUT_SECONDS + settings.JOB_MAX_SECONDS + streams.retention_seconds()


async def open_stream(*, request_id: str, project_id: int, headers: dict[str, str], data: dict[str, Any]) -> dict:
    """Write ``run.created`` as event 1 of a new run's stream; returns the stored event."""
    body = frame(1, orjson.dumps(_payload("run.created", 1, data)), "run.created")
    client = redisconn.get_async()
    if client is not None:
        key = streams.redis_key(request_id)
        pipe = client.pipeline(transaction=False)
        pipe.xadd(key, {"f": streams.seal_entry(request_id, "0-1", body), "p": project_id, "h": orjson.dumps(headers)},
                  id="0-1")
        pipe.expire(key, _ttl_open())
        await pipe.execute()
    else:
        stream = streams.register(streams.StreamLog(request_id, project_id=project_id, endpoint=ENDPOINT, headers=headers))
        stream.append(body)
        _local[request_id] = (asyncio.get_running_loop(), stream)
    return _payload("run.created", 1, data)


def forget_local(request_id: str) -> None:
    """The run never started (it could not be queued): close its in-process log."""
    entry = _local.pop(request_id, None)
    if entry is not None:
        entry[1].close()


class RunEvents:
    """The worker's side: numbers, frames, publishes and keeps the events after ``run.created``."""

    def __init__(self, *, request_id: str, created: dict[str, Any]):
        self.request_id = request_id
        self.kept: list[dict[str, Any]] = [_payload("run.created", 1, created)]
        self.next_id = 2
        self.closed = False
        self._redis = redisconn.get_sync()
        self._local = _local.pop(request_id, None) if self._redis is None else None

    def record(self, kind: str, **data: Any) -> bytes:
        """Number and keep an event; returns its frame, to ``publish`` (separately, so the
        last event can be kept with the job before anyone sees it)."""
        n = self.next_id
        self.next_id += 1
        payload = _payload(kind, n, data)
        self.kept.append(payload)
        return frame(n, orjson.dumps(payload), kind)

    def publish(self, body: bytes) -> None:
        try:
            if self._redis is not None:
                n = int(body[8 : body.index(b"\n")])  # "id: evt_<n>\n"
                entry = f"0-{n}"
                self._redis.xadd(streams.redis_key(self.request_id), {"f": streams.seal_entry(self.request_id, entry, body)},
                                 id=entry)
            elif self._local is not None:
                loop, stream = self._local
                loop.call_soon_threadsafe(stream.append, body)
        except Exception:  # a follower misses it live; it is still kept with the job
            log.exception("run %s: could not publish an event", self.request_id)

    def emit(self, kind: str, **data: Any) -> None:
        self.publish(self.record(kind, **data))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self._redis is not None:
                key = streams.redis_key(self.request_id)
                pipe = self._redis.pipeline(transaction=False)
                entry = f"0-{self.next_id}"
                pipe.xadd(key, {"f": streams.seal_entry(self.request_id, entry, b""), "end": b"1"}, id=entry)
                pipe.expire(key, streams.retention_seconds())
                pipe.execute()
            elif self._local is not None:
                loop, stream = self._local
                loop.call_soon_threadsafe(stream.close)
        except Exception:
            log.exception("run %s: could not close its stream", self.request_id)


def frames_of(kept: list[dict[str, Any]], *, after: int) -> bytes:
    """Stored events after ``evt_<after>``, framed as they were sent."""
    return b"".join(
        frame(e["sequence_number"], orjson.dumps(e), e["type"]) for e in kept if e["sequence_number"] > after
    )
