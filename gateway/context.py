"""Per-request state at the edge: request id, bounded body, tenant, response helpers."""
from __future__ import annotations

import asyncio
import re

from django.conf import settings
from starlette.requests import Request
from starlette.responses import Response

from config.ids import new_id

from . import auth
from .auth import KeyRecord
from .errors import GatewayError, envelope_bytes
from .idempotency import StoredResponse
from .sse import frames_after

# Never one of a key's scopes: an endpoint that does not name its scope is for unscoped keys only.
UNNAMED_SCOPE = "*"
# Sent with a refusal given before the body was read to its end: the server closes the connection
# instead of reading (and discarding) the rest of it.
_CLOSE = {"connection": "close"}
_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")
_EXPOSED = "x-request-id, x-client-request-id, x-session-id, x-node-id, x-node-attestation, idempotent-replayed, retry-after, " + ", ".join(
    f"x-ratelimit-{a}-{b}" for a in ("limit", "remaining", "reset") for b in ("requests", "tokens")
)


class ApiRequest:
    __slots__ = ("request", "request_id", "session_id", "extra_headers", "key", "_body")

    def __init__(self, request: Request):
        self.request = request
        # Always ours: it names the stream a client resumes and the records it is billed by,
        # so two requests can never share it. A client's own id is echoed beside it.
        self.request_id = new_id("req")
        session = request.headers.get("x-session-id")
        self.session_id = session if session and _CLIENT_ID.match(session) else ""
        self.extra_headers: dict[str, str] = {}
        self.key: KeyRecord | None = None
        self._body: bytes | None = None

    @property
    def headers(self):
        return self.request.headers

    async def authenticate(self, *, publishable_ok: bool, scope: str | None = UNNAMED_SCOPE) -> KeyRecord:
        """The caller's key, refused (permission_denied) unless it may call an endpoint of ``scope``
        (console.keys.SCOPES). None: any key of the project (e.g. reading back its own job). An
        endpoint that names no scope fails closed: only keys without scopes may call it."""
        relay = self.request.scope.get("relay_key")
        if relay is not None:
            # An in-process call from the Web Chat relay (console.relay), which checked its
            # credential and built this record; only code in this process can put it in the
            # scope (a network request's scope comes from the server).
            self.key = relay
            return relay
        key = await auth.authenticate(self.headers)
        if scope is not None and key.scopes is not None and scope not in key.scopes:
            raise GatewayError("permission_denied", f"This API key's scopes do not include '{scope}'.")
        if key.publishable:
            if not publishable_ok:
                raise GatewayError(
                    "permission_denied", "Publishable keys may only call chat, completions, messages and responses."
                )
            auth.check_origin(key, self.headers)
            self.extra_headers["access-control-allow-origin"] = self.headers["origin"]
            self.extra_headers["vary"] = "Origin"
            self.extra_headers["access-control-expose-headers"] = _EXPOSED
        self.key = key
        return key

    async def body(self) -> bytes:
        """The body, refused with 413 as soon as it passes the limit (before it is all read), and
        with 408 when it has not all arrived within GATEWAY_BODY_TIMEOUT_SECONDS. Both answers close
        the connection: the rest of the body is never read."""
        if self._body is not None:
            return self._body
        limit = settings.GATEWAY_MAX_BODY_BYTES
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        parts, size = [], 0
        seconds = settings.GATEWAY_BODY_TIMEOUT_SECONDS
        task = _body_deadlines.watch(seconds)
        try:
            async for part in self.request.stream():
                size += len(part)
                if size > limit:
                    raise _too_large(limit)
                parts.append(part)
        except asyncio.CancelledError as exc:
            if not _body_deadlines.expired(task, exc):
                raise
            raise GatewayError(
                "body_timeout", f"The request body did not arrive within {seconds} s.", headers=_CLOSE
            ) from None
        finally:
            _body_deadlines.unwatch(task)
        self._body = b"".join(parts)
        return self._body

    def response_headers(self) -> dict[str, str]:
        headers = {"x-request-id": self.request_id, **self.extra_headers}
        client_id = self.request.headers.get("x-client-request-id") or self.request.headers.get("x-request-id")
        if client_id and _CLIENT_ID.match(client_id):
            headers["x-client-request-id"] = client_id
        if self.session_id:
            headers["x-session-id"] = self.session_id
        return headers


class _Deadlines:
    """Cancels a task still reading its body past its deadline (checked each second, so a body
    gets its GATEWAY_BODY_TIMEOUT_SECONDS and at most one more). One sweeper per event loop
    instead of a timer per request: watching a read costs a dict insert and delete (~0.2 µs),
    where asyncio.timeout() costs ~10 µs a request on this machine."""

    _MESSAGE = "request body deadline"

    def __init__(self):
        self._reading: dict[asyncio.Task, float] = {}
        self._sweeper: asyncio.Task | None = None

    def watch(self, seconds: float) -> asyncio.Task:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        self._reading[task] = loop.time() + seconds
        if self._sweeper is None or self._sweeper.done() or self._sweeper.get_loop() is not loop:
            self._sweeper = loop.create_task(self._sweep(loop), name="body deadlines")
        return task

    def unwatch(self, task: asyncio.Task) -> None:
        self._reading.pop(task, None)

    def expired(self, task: asyncio.Task, exc: asyncio.CancelledError) -> bool:
        """Was this cancellation our deadline (then the task is no longer being cancelled)?"""
        if exc.args != (self._MESSAGE,):
            return False
        task.uncancel()
        return True

    async def _sweep(self, loop) -> None:
        while True:
            await asyncio.sleep(1)
            now = loop.time()
            for task, deadline in list(self._reading.items()):
                if task.get_loop() is not loop:
                    continue
                if deadline <= now or task.done():
                    del self._reading[task]
                    if not task.done():
                        task.cancel(self._MESSAGE)


_body_deadlines = _Deadlines()


def _too_large(limit: int) -> GatewayError:
    return GatewayError("body_too_large", f"The request body exceeds the {limit}-byte limit.", headers=_CLOSE)


def json_response(req: ApiRequest, payload: bytes, *, status: int = 200, headers: dict[str, str] | None = None):
    return Response(
        payload, status_code=status, media_type="application/json", headers={**req.response_headers(), **(headers or {})}
    )


def error_response(req: ApiRequest, exc: GatewayError) -> Response:
    return json_response(req, envelope_bytes(exc, req.request_id), status=exc.status, headers=exc.headers)


def replay_response(req: ApiRequest, stored: StoredResponse, *, after: int = 0) -> Response:
    """The stored response again; for a stream, only the events after Last-Event-ID."""
    headers = {**req.response_headers(), **stored.headers, "idempotent-replayed": "true"}
    body = stored.body
    if after and stored.content_type == "text/event-stream":
        body = frames_after(body, after)
    return Response(body, status_code=stored.status, media_type=stored.content_type, headers=headers)
