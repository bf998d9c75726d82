"""Stream logs: every event of a stream, kept so a client can come back for it.

A streamed answer is produced by one task in the process that holds the node
connection. It appends each framed SSE event to a :class:`StreamLog`; clients
are *followers* of that log, reading from a position (the Last-Event-ID) on.
The client that started the request is just the first follower, so a client
that drops and reconnects gets exactly the events after the last id it saw.

In production the log is mirrored to a Redis stream (one entry per batch of
events written together, ``0-<n>`` for a batch ending with ``evt_<n>``; batches
gather for 25 ms, so a fast stream is one or two writes), so the reconnect
may land on any server process; a remote follower refreshes a short-lived
``watch`` key, which tells the producer that someone is still listening. The
embedded default (no Redis) resumes within the process only.

The frames hold answer text, so they are sealed in Redis (:func:`seal_entry`):
AES-256-GCM under a key derived per stream from the master key (config.envelope)
and the request id, with the request id and the entry id as associated data; a
follower in any process derives the same key and opens them.

Each server process keeps a liveness key in Redis (:func:`heartbeat`) and names
itself in the first entry of the streams it produces. A remote follower that
finds no new entry checks it: if the producing process is gone (killed, crashed)
the stream can never end by itself, so the follower ends it with an error event
instead of waiting, and brings the dead request's hold forward to the sweeper's
next run, which voids it: an answer cut by our own crash is not charged.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import uuid
import weakref
from functools import lru_cache

import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.utils import timezone

from billing import ledger
from config import asyncdb, envelope, metrics, redisconn

from . import background
from .errors import GatewayError
from .errors import envelope as error_envelope
from .sse import frame, frames_after

log = logging.getLogger(__name__)

WATCH_MS = 3000  # a remote follower refreshes its watch key every ≤1 s
READ_BLOCK_MS = 1000
COALESCE_SECONDS = 0.025
STARTING_MS = 500  # how long a reconnect waits for a stream that is still being opened
PROCESS_ID = uuid.uuid4().hex  # this server process, as named in the streams it produces
ALIVE_MS = 3000  # a process refreshes its liveness key every second
ALIVE_EVERY = 1.0
_EVENT_ID = re.compile(r"^(?:evt_)?(\d{1,9})$")


def retention_seconds() -> int:
    return settings.GATEWAY_STREAM_RETENTION_SECONDS


def _keys(request_id: str) -> tuple[str, str]:
    """The stream's Redis stream, and the key its remote followers keep alive."""
    return redisconn.key("stream", request_id), redisconn.key("stream", request_id, "watch")


def _alive_key(process_id: str) -> str:
    return redisconn.key("proc", process_id, "alive")


async def heartbeat() -> None:
    """Keep this process's liveness key fresh while it runs (a lifespan task, with Redis only)."""
    client = redisconn.get_async()
    failing = False
    while True:
        try:
            await client.set(_alive_key(PROCESS_ID), b"1", px=ALIVE_MS)
            failing = False
        except Exception:  # Redis down: followers cannot read it either; retried next second
            if not failing:
                log.warning("cannot refresh this process's liveness key (Redis unreachable); retrying")
            failing = True
        await asyncio.sleep(ALIVE_EVERY)


def redis_key(request_id: str) -> str:
    """The Redis stream a log is mirrored to; an agent run's worker writes its events there itself."""
    return _keys(request_id)[0]


SEALED = b"\x01"


@lru_cache(maxsize=4096)
def _stream_aead(provider: envelope.MasterKeyProvider, version: int, request_id: str) -> AESGCM:
    return AESGCM(provider.derive(version, f"stream:{request_id}"))


def seal_entry(request_id: str, entry_id: str, data: bytes) -> bytes:
    """A Redis stream entry's frames, sealed: marker ‖ master version ‖ nonce ‖ ciphertext."""
    provider = envelope.master()
    version = provider.current_version
    nonce = os.urandom(12)
    sealed = _stream_aead(provider, version, request_id).encrypt(nonce, data, f"{request_id}|{entry_id}".encode())
    return SEALED + version.to_bytes(4, "big") + nonce + sealed


def open_entry(request_id: str, entry_id: str, data: bytes) -> bytes:
    if data[:1] != SEALED:
        raise ValueError(f"stream {request_id}: an unsealed entry in Redis")
    version = int.from_bytes(data[1:5], "big")
    aead = _stream_aead(envelope.master(), version, request_id)
    return aead.decrypt(data[5:17], data[17:], f"{request_id}|{entry_id}".encode())


def parse_last_event_id(headers) -> int:
    """The number of events the client already has (0 when it sends none)."""
    raw = headers.get("last-event-id")
    if raw is None or raw.strip() == "":
        return 0
    match = _EVENT_ID.match(raw.strip())
    if not match:
        raise GatewayError("invalid_request", "Last-Event-ID must be an event id from this stream, such as 'evt_12'.")
    return int(match.group(1))


class StreamLog:
    """The events of one stream, in order; ``frames[i]`` is event ``evt_<i+1>``."""

    def __init__(self, request_id: str, *, project_id: int, endpoint: str, headers: dict[str, str]):
        self.request_id = request_id
        self.project_id = project_id
        self.endpoint = endpoint
        self.headers = headers  # what a resuming client gets besides the SSE basics
        self.frames: list[bytes] = []
        self.done = False
        self.attached = 0
        self.on_idle = None  # called when the last local follower leaves
        self.counted_open = False  # in metrics.STREAMS_OPEN (register) until closed
        self._waiter: asyncio.Future | None = None
        self._mirror = _RedisMirror(self) if redisconn.enabled() else None

    def append(self, frame: bytes) -> None:
        self.frames.append(frame)
        if self._mirror is not None:
            self._mirror.push(frame)
        self._notify()

    def close(self) -> None:
        self.done = True
        if self.counted_open:
            self.counted_open = False
            metrics.STREAMS_OPEN.dec()
        self._notify()
        if self._mirror is not None:
            self._mirror.push(None)  # Redis keeps it for reconnects; this process forgets it once written
        else:
            _forget_later(self)

    def body(self) -> bytes:
        return b"".join(self.frames)

    async def flushed(self) -> None:
        """Wait until Redis has every event appended so far (a no-op without Redis)."""
        if self._mirror is not None:
            await self._mirror.flushed()

    def _notify(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def waiter(self) -> asyncio.Future:
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    def follow(self, after: int) -> LocalFollower:
        return LocalFollower(self, after)


class LocalFollower:
    def __init__(self, stream: StreamLog, after: int):
        self.stream = stream
        self.pos = after
        self.closed = False
        stream.attached += 1

    async def read(self, timeout: float) -> list[bytes] | None:
        """New events; [] when ``timeout`` passed without any; None at the end."""
        stream = self.stream
        if not self.closed and self.pos >= len(stream.frames) and not stream.done:
            try:
                await asyncio.wait_for(asyncio.shield(stream.waiter()), timeout)
            except TimeoutError:
                return []
        if self.closed:
            return None
        if self.pos < len(stream.frames):
            out = stream.frames[self.pos :]
            self.pos = len(stream.frames)
            return out
        return None if stream.done else []

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        stream = self.stream
        stream.attached -= 1
        stream._notify()
        if stream.attached == 0 and not stream.done and stream.on_idle is not None:
            stream.on_idle()


class RemoteFollower:
    """Follows a stream produced by another process, through Redis."""

    def __init__(self, client, request_id: str, after: int, *, project_id: int, producer: str | None = None):
        self.client = client
        self.request_id = request_id
        self.project_id = project_id
        self.key, self.watch = _keys(request_id)
        self.last = f"0-{after}"
        self.closed = False
        self.ended = False
        self.producer = producer  # the producing server process (None: a worker, which ends its own streams)
        self.missed = 0  # idle reads in a row that found the producer gone
        # A producer never runs longer than a request may; past that, its process is gone.
        self.give_up_at = time.monotonic() + settings.GATEWAY_MAX_REQUEST_SECONDS

    async def read(self, timeout: float) -> list[bytes] | None:
        if self.closed or self.ended or time.monotonic() > self.give_up_at:
            return None
        block = max(1, int(min(timeout * 1000, READ_BLOCK_MS)))
        deadline = time.monotonic() + timeout
        while True:
            pipe = self.client.pipeline(transaction=False)
            pipe.set(self.watch, b"1", px=WATCH_MS)
            await pipe.execute()
            reply = await self.client.xread({self.key: self.last}, count=1000, block=block)
            out: list[bytes] = []
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    # The first entry may start before the client's Last-Event-ID.
                    body = open_entry(self.request_id, entry_id, fields[b"f"])
                    frames = frames_after(body, int(self.last.split("-")[1]))
                    self.last = entry_id
                    if frames:
                        out.append(frames)
                    if b"end" in fields:
                        self.ended = True
            if out or self.ended:
                return out if out else None
            if self.closed or await self._ended_before_position():
                return None
            if await self._producer_gone():
                self.ended = True
                background.spawn(self._release_hold(), name=f"release:{self.request_id}")
                return [self._interrupted()]
            if time.monotonic() >= deadline:
                return []

    async def _ended_before_position(self) -> bool:
        """Has the stream ended at or before where this follower reads from? A Last-Event-ID past
        a stream's end would otherwise wait for events that never come (until give_up_at). One
        Redis read per idle block, only for a follower with nothing to read."""
        last = await self.client.xrevrange(self.key, count=1)
        if not last:
            return False  # expired: the block loop gives up at give_up_at as before
        entry_id, fields = last[0]
        entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        if b"end" in fields and int(entry_id.split("-")[1]) <= int(self.last.split("-")[1]):
            self.ended = True
        return self.ended

    async def _producer_gone(self) -> bool:
        """True once the producing process's liveness key was missing on two idle reads in a row
        (≥ 1 s apart: a Redis restart that lost the key is healed by the next refresh)."""
        if self.producer is None:
            return False
        try:
            alive = await self.client.exists(_alive_key(self.producer))
        except Exception:
            return False  # unknown: keep waiting
        self.missed = 0 if alive else self.missed + 1
        return self.missed >= 2

    async def _release_hold(self) -> None:
        """Nobody will settle the dead request: let the sweeper void its hold now, not at its timeout."""
        stmt = ledger.expire_statement(request_id=self.request_id, project_id=self.project_id, now=timezone.now())
        try:
            await asyncdb.run(stmt)
        except asyncdb.DatabaseUnavailable:  # the hold still times out as usual
            log.warning("stream %s: could not bring its hold forward to the sweeper", self.request_id)

    def _interrupted(self) -> bytes:
        """The closing event of a stream whose producer died: numbered after the last one written."""
        message = ("The server process producing this stream stopped; the answer is incomplete. "
                   "Nothing is charged for it (its hold is released).")
        body = {"type": "error", **error_envelope("upstream_unavailable", message, self.request_id)}
        log.warning("stream %s: its producer %s is gone; ended it for the follower", self.request_id, self.producer)
        return frame(int(self.last.split("-")[1]) + 1, orjson.dumps(body), "error")

    def close(self) -> None:
        self.closed = True


class _RedisMirror:
    """A log's events on their way to Redis, in order. The process's one writer (_MirrorWriter) sends
    what piled up in every open stream as one pipeline, so a paced stream no longer costs a round trip
    per event or two (1,000 streams: one round trip per 25 ms, not ~40,000 a second)."""

    __slots__ = ("first", "idle", "pending", "stream", "written")

    def __init__(self, stream: StreamLog):
        self.stream = stream
        self.pending: list[bytes | None] = []
        self.written = 0
        self.first = True
        self.idle = asyncio.Event()
        self.idle.set()

    def push(self, frame: bytes | None) -> None:
        self.pending.append(frame)
        self.idle.clear()
        _writer().add(self)

    async def flushed(self) -> None:
        await self.idle.wait()

    def queue(self, pipe, retention: int) -> bool:
        """Put what piled up on ``pipe`` as one entry; whether the stream ended with it."""
        stream = self.stream
        key, _ = _keys(stream.request_id)
        batch, self.pending = self.pending, []
        # One entry per batch: its id is its last event's number, its value the frames joined.
        frames = [f for f in batch if f is not None]
        ended = len(frames) < len(batch)
        self.written += len(frames)
        entry_id = f"0-{self.written if frames else self.written + 1}"
        fields = {"f": seal_entry(stream.request_id, entry_id, b"".join(frames))}
        if self.first:  # the first entry says whose stream it is, and which process produces it
            fields["p"] = stream.project_id
            fields["h"] = orjson.dumps(stream.headers)
            fields["o"] = PROCESS_ID
        if ended:
            fields["end"] = b"1"
        # (an end marker alone takes the next number: ids must grow, and no event has it)
        pipe.xadd(key, fields, id=entry_id)
        if ended:  # kept while it may still run, then for the retention time
            pipe.expire(key, retention)
        elif self.first:
            pipe.expire(key, settings.GATEWAY_MAX_REQUEST_SECONDS + retention)
        self.first = False
        return ended


class _MirrorWriter:
    """Writes the pending events of every stream of this event loop to Redis, one pipeline per batch."""

    def __init__(self) -> None:
        self.dirty: dict[_RedisMirror, None] = {}  # insertion-ordered set
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None

    def add(self, mirror: _RedisMirror) -> None:
        self.dirty[mirror] = None
        self.wake.set()
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run(), name="stream-mirror")

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            # Coalesce: a remote reader sees events up to 25 ms late (the local client never waits,
            # and a reconnect waits for a stream's first entry); one write per batch, not per
            # event, is most of what keeps resumable streams cheap.
            await asyncio.sleep(COALESCE_SECONDS)
            self.wake.clear()
            mirrors, self.dirty = [m for m in self.dirty if m.pending], {}
            try:
                await self._write(mirrors)
            except Exception:  # the local clients still get every event; only resume elsewhere degrades
                log.exception("mirroring %d streams to Redis failed", len(mirrors))
            for mirror in mirrors:
                if not mirror.pending:  # else it is dirty again: events arrived while this batch was written
                    mirror.idle.set()

    async def _write(self, mirrors: list[_RedisMirror]) -> None:
        retention = retention_seconds()
        pipe = redisconn.get_async().pipeline(transaction=False)
        spans = []
        for mirror in mirrors:
            at = len(pipe.command_stack)
            ended = mirror.queue(pipe, retention)
            spans.append((mirror, at, len(pipe.command_stack), ended))
        try:
            results = await pipe.execute(raise_on_error=False)
            for mirror, at, end, _ in spans:
                if errors := [r for r in results[at:end] if isinstance(r, Exception)]:
                    log.error("stream %s: mirroring to Redis failed: %s", mirror.stream.request_id, errors[0])
        finally:
            for mirror, _, _, ended in spans:
                if ended:
                    _forget(mirror.stream)


_writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _MirrorWriter] = weakref.WeakKeyDictionary()


def _writer() -> _MirrorWriter:
    loop = asyncio.get_running_loop()
    writer = _writers.get(loop)
    if writer is None:
        writer = _writers[loop] = _MirrorWriter()
    return writer


# --- the streams of this process --------------------------------------------------------

_local: dict[str, StreamLog] = {}


def register(stream: StreamLog) -> StreamLog:
    _local[stream.request_id] = stream
    stream.counted_open = True
    metrics.STREAMS_OPEN.inc()
    return stream


async def flush_all() -> None:
    """Wait until Redis holds every event of this process's streams (shutdown: a client resumes elsewhere)."""
    for stream in list(_local.values()):
        await stream.flushed()


def _forget(stream: StreamLog) -> None:
    if _local.get(stream.request_id) is stream:
        del _local[stream.request_id]


def _forget_later(stream: StreamLog) -> None:
    """Without Redis this process is the only place a reconnect can read the stream."""
    try:
        asyncio.get_running_loop().call_later(retention_seconds(), _forget, stream)
    except RuntimeError:
        _forget(stream)


def _not_found(request_id: str) -> GatewayError:
    return GatewayError("not_found", f"No stream '{request_id}' for this project (or it is no longer kept).")


async def open_follower(request_id: str, *, project_id: int, after: int):
    """A follower of the stream from event ``after`` on, and the stream's response headers.

    Another project's stream is indistinguishable from a missing one (404).
    """
    stream = _local.get(request_id)
    if stream is not None:
        if stream.project_id != project_id:
            raise _not_found(request_id)
        return stream.follow(after), dict(stream.headers)
    client = redisconn.get_async()
    if client is None:
        raise _not_found(request_id)
    key, _ = _keys(request_id)
    try:
        first = await client.xrange(key, count=1)
        if not first:  # a stream that started a moment ago may not be written yet
            reply = await client.xread({key: "0-0"}, count=1, block=STARTING_MS)
            first = reply[0][1] if reply else []
    except Exception as exc:
        raise GatewayError("service_unavailable", "The stream store is unreachable; try again shortly.") from exc
    fields = first[0][1] if first else {}
    if int(fields.get(b"p", b"0")) != project_id:
        raise _not_found(request_id)
    producer = fields[b"o"].decode() if b"o" in fields else None
    follower = RemoteFollower(client, request_id, after, project_id=project_id, producer=producer)
    return follower, orjson.loads(fields[b"h"])


async def watched(request_id: str) -> bool:
    """Whether a follower in another process is attached to this stream right now."""
    client = redisconn.get_async()
    if client is None:
        return False
    try:
        return bool(await client.exists(_keys(request_id)[1]))
    except Exception:  # unknown: assume someone is there rather than cut a live stream
        log.warning("stream %s: cannot read its watch key", request_id)
        return True
