"""What operators and load balancers talk to, in front of every route (config/asgi.py).

* ``GET /healthz``: liveness. The event loop answers: no I/O, always 200 while the process runs.
* ``GET /readyz``: readiness. 200 when PostgreSQL and Redis answer and every migration is
  applied; 503 naming the failed check, or ``draining`` once the process was told to stop
  (config/server.py), so load balancers and Kubernetes take it out before it stops accepting.
  Checked at most once a second (a result is kept 1 s): probes from anywhere stay cheap.
* ``GET /metrics``: Prometheus text (config/metrics.py). With METRICS_TOKEN set it wants
  ``Authorization: Bearer <token>``; nginx does not pass /metrics from outside either way.

None of them needs an API key, reads tenant data or is counted in the request metrics.

Every other HTTP request goes through :func:`observe`: one histogram observation and one counter
increment, the ``X-Served-By`` header when PROCESS_NAME is set, and (ACCESS_LOG, on in
production) one access log line: request id, route template, method, status, latency. Never
a path's ids, a query string, a header or a body.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import time

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings

from . import metrics

access_log = logging.getLogger("platform.access")
log = logging.getLogger(__name__)

PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
CHECK_TIMEOUT = 2.0
READY_CACHE_SECONDS = 1.0

_draining = False
_migrated = False
_ready_cache: tuple[float, int, bytes] | None = None
_served_by = [(b"x-served-by", metrics.PROCESS_NAME.encode())] if settings.SERVED_BY_HEADER else []
# Django's areas by first path segment (a bounded label set); the gateway's routes are named by template.
_AREAS = frozenset({"console", "accounts", "admin", "billing", "chat", "status", "static", "pki", "v1", "api", "ws"})


def start_draining() -> None:
    global _draining, _ready_cache
    if not _draining:
        log.info("draining: readiness is 503 from now on; open streams are finishing")
    _draining, _ready_cache = True, None
    metrics.DRAINING.set(1)


def draining() -> bool:
    return _draining


# --- readiness ---------------------------------------------------------------------------------


def _pending_migrations() -> int:
    from django.db import close_old_connections, connection
    from django.db.migrations.executor import MigrationExecutor

    try:
        executor = MigrationExecutor(connection)
        return len(executor.migration_plan(executor.loader.graph.leaf_nodes()))
    finally:
        close_old_connections()


async def _check_database() -> None:
    from . import asyncdb

    await asyncdb.run(asyncdb.Stmt("SELECT 1", fetch=True))


async def _check_redis() -> None:
    from . import redisconn

    client = redisconn.get_async()
    if client is not None:
        await client.ping()


async def _check_migrations() -> None:
    global _migrated
    if _migrated:  # applied once, applied for the life of the process
        return
    pending = await sync_to_async(_pending_migrations, thread_sensitive=True)()
    if pending:
        raise RuntimeError(f"{pending} migrations not applied")
    _migrated = True


async def _readiness() -> tuple[int, bytes]:
    if _draining:
        return 503, orjson.dumps({"status": "draining"})
    checks = {"database": _check_database, "redis": _check_redis, "migrations": _check_migrations}
    results = await asyncio.gather(
        *(asyncio.wait_for(check(), CHECK_TIMEOUT) for check in checks.values()), return_exceptions=True
    )
    report = {}
    for name, result in zip(checks, results):
        if isinstance(result, BaseException):
            report[name] = "failed"
            log.warning("readiness: %s check failed: %s", name, type(result).__name__)
        else:
            report[name] = "ok"
    ok = all(value == "ok" for value in report.values())
    if _draining:  # told to stop while checking
        return 503, orjson.dumps({"status": "draining"})
    return (200 if ok else 503), orjson.dumps({"status": "ready" if ok else "unavailable", "checks": report})


async def readiness() -> tuple[int, bytes]:
    global _ready_cache
    now = time.monotonic()
    if _ready_cache is not None and now - _ready_cache[0] < READY_CACHE_SECONDS:
        return _ready_cache[1], _ready_cache[2]
    status, body = await _readiness()
    _ready_cache = (time.monotonic(), status, body)
    return status, body


# --- the three endpoints -------------------------------------------------------------------------


async def _respond(send, status: int, body: bytes, content_type: bytes, extra: list | None = None) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store"), *_served_by, *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _metrics_allowed(scope) -> bool:
    token = settings.METRICS_TOKEN
    if not token:
        return True
    for name, value in scope["headers"]:
        if name == b"authorization":
            return hmac.compare_digest(value, f"Bearer {token}".encode())
    return False


async def serve(scope, receive, send) -> None:
    path = scope["path"]
    if scope["method"] not in ("GET", "HEAD"):
        return await _respond(send, 405, b'{"error":"method not allowed"}', b"application/json", [(b"allow", b"GET, HEAD")])
    if path == "/healthz":
        return await _respond(send, 200, b'{"status":"ok"}', b"application/json")
    if path == "/readyz":
        status, body = await readiness()
        return await _respond(send, status, body, b"application/json")
    if not _metrics_allowed(scope):
        return await _respond(send, 401, b'{"error":"metrics need the bearer token"}', b"application/json",
                              [(b"www-authenticate", b"Bearer")])
    body, content_type = metrics.exposition()
    await _respond(send, 200, body, content_type.encode())


# --- every other request ---------------------------------------------------------------------------


def route_of(scope) -> str:
    route = scope.get("route")  # set by the gateway's Starlette router: the template, e.g. /v1/streams/{request_id}
    if route is not None:
        return getattr(route, "path", "other")
    head = scope["path"].split("/", 2)[1] if scope["path"].count("/") else ""
    return f"/{head}/*" if head in _AREAS else "other"


async def observe(app, scope, receive, send) -> None:
    started = time.perf_counter()
    status = 0
    request_id = b""
    logging_on = settings.ACCESS_LOG

    async def sending(message) -> None:
        nonlocal status, request_id
        if message["type"] == "http.response.start":
            status = message["status"]
            if _served_by:
                message["headers"] = [*message.get("headers", ()), *_served_by]
            if logging_on:
                for name, value in message.get("headers", ()):
                    if name == b"x-request-id":
                        request_id = value
                        break
        await send(message)

    try:
        await app(scope, receive, sending)
    finally:
        elapsed = time.perf_counter() - started
        route = route_of(scope)
        metrics.observe_request(route, scope["method"], status or 500, elapsed)
        if logging_on:
            latency_ms = round(elapsed * 1000, 1)
            access_log.info(
                "%s %s %s %.1fms", scope["method"], route, status or 500, latency_ms,
                extra={"request_id": request_id.decode("latin-1"), "route": route, "method": scope["method"],
                       "status": status or 500, "latency_ms": latency_ms, "served_by": metrics.PROCESS_NAME},
            )
