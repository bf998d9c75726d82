"""The public status page's checks: gateway, database, Redis, Celery workers, the node network
by region and recent incidents from the nodes' health history.

Everything here is public: no organization, project, user or node name appears, only node
public ids and regions (as ``GET /v1/nodes`` shows them). The whole snapshot is computed at
most once every ``STATUS_CACHE_SECONDS`` per deployment (kept in the cache, Redis when
configured), so the page cannot be used to load the database or the broker.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from config import redisconn

log = logging.getLogger(__name__)

STATUS_CACHE_SECONDS = 5
INCIDENT_WINDOW = dt.timedelta(days=7)
WORKER_PING_TIMEOUT = 0.5  # seconds: an `inspect ping` waits this long for replies
OK, DEGRADED, DOWN, INFO = "ok", "degraded", "down", "info"
_STARTED = time.time()


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


def check_gateway() -> dict[str, Any]:
    return {"name": "gateway", "status": OK, "detail": "serving (this process)",
            "uptime_seconds": int(time.time() - _STARTED)}


def check_database() -> dict[str, Any]:
    start = time.perf_counter()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # noqa: BLE001 - any failure is "down"; the class name says which
        return {"name": "database", "status": DOWN, "detail": f"unreachable ({type(exc).__name__})"}
    return {"name": "database", "status": OK, "detail": connection.vendor, "latency_ms": _ms(start)}


def check_redis() -> dict[str, Any]:
    client = redisconn.get_sync()
    if client is None:
        return {"name": "redis", "status": INFO, "detail": "embedded: none (REDIS_URL unset; in-process cache and bus)"}
    start = time.perf_counter()
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        return {"name": "redis", "status": DOWN, "detail": f"unreachable ({type(exc).__name__})"}
    return {"name": "redis", "status": OK, "detail": "ping", "latency_ms": _ms(start)}


def check_workers() -> dict[str, Any]:
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return {"name": "workers", "status": INFO, "detail": "eager mode: background tasks run in the web process"}
    from config.celery import app

    start = time.perf_counter()
    try:
        replies = app.control.ping(timeout=WORKER_PING_TIMEOUT) or []
    except Exception as exc:  # noqa: BLE001
        return {"name": "workers", "status": DOWN, "detail": f"broker unreachable ({type(exc).__name__})"}
    if not replies:
        return {"name": "workers", "status": DOWN, "detail": "no worker answered a ping", "workers": 0}
    return {"name": "workers", "status": OK, "detail": f"{len(replies)} answered a ping", "workers": len(replies),
            "latency_ms": _ms(start)}


def _network() -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """(the check, regions, incidents); a database failure is the database check's to report."""
    from nodes import selectors as node_selectors

    now = timezone.now()
    try:
        regions = node_selectors.network_by_region(node_selectors.network_nodes(now=now))
        incidents = node_selectors.health_incidents(since=now - INCIDENT_WINDOW, now=now)
    except Exception as exc:  # noqa: BLE001
        return {"name": "nodes", "status": DOWN, "detail": f"unavailable ({type(exc).__name__})"}, [], []
    total = sum(r["total"] for r in regions)
    up = sum(r["up"] for r in regions)
    if total == 0:
        check = {"name": "nodes", "status": DOWN, "detail": "no active node"}
    else:
        status = OK if up == total else DEGRADED if up else DOWN
        check = {"name": "nodes", "status": status, "detail": f"{up} of {total} nodes up in {len(regions)} region(s)"}
    check.update(up=up, total=total)
    return check, regions, incidents


def _epoch(value: dt.datetime | None) -> int | None:
    return int(value.timestamp()) if value else None


def snapshot() -> dict[str, Any]:
    """The status, computed now (use :func:`cached_snapshot` from views)."""
    network, regions, incidents = _network()
    components = [check_gateway(), check_database(), check_redis(), check_workers(), network]
    states = {c["status"] for c in components}
    overall = DOWN if {c["status"] for c in components[1:3]} & {DOWN} else DEGRADED if states & {DOWN, DEGRADED} else OK
    if overall == OK and any(i["ongoing"] for i in incidents):
        overall = DEGRADED
    return {
        "object": "status",
        "status": overall,
        "checked_at": int(time.time()),
        "components": components,
        "regions": [
            {"region": r["region"], "up": r["up"], "total": r["total"], "attested": r["attested"], "models": r["models"],
             "nodes": [{"id": n["id"], "healthy": n["healthy"], "attestation": n["attestation"],
                        "load": round(n["load"], 2), "models": n["models"]} for n in r["nodes"]]}
            for r in regions
        ],
        "incidents": [
            {"node": i["node"], "region": i["region"], "started_at": _epoch(i["started_at"]),
             "ended_at": _epoch(i["ended_at"]), "ongoing": i["ongoing"], "reason": i["reason"],
             "duration_seconds": i["duration_seconds"]}
            for i in incidents
        ],
    }


def _cache_key() -> str:
    return redisconn.key("status", "snapshot")


_local: tuple[float, dict[str, Any]] | None = None  # this process's copy: holds even when the cache is down


def cached_snapshot() -> dict[str, Any]:
    """The snapshot of the last ``STATUS_CACHE_SECONDS`` (this process's, else the deployment's
    shared cache), or a fresh one. The cache failing (Redis down) does not take the page with it."""
    global _local
    if _local is not None and time.monotonic() < _local[0]:
        return _local[1]
    try:
        found = cache.get(_cache_key())
    except Exception:  # noqa: BLE001
        found = None
    if found is None:
        found = snapshot()
        try:
            cache.set(_cache_key(), found, STATUS_CACHE_SECONDS)
        except Exception as exc:  # noqa: BLE001 - this process's copy still spares the database
            log.warning("status snapshot not cached: %s", exc)
    _local = (time.monotonic() + STATUS_CACHE_SECONDS, found)
    return found


def forget() -> None:
    """Drop the cached snapshot (tests; after a change an operator wants to see at once)."""
    global _local
    _local = None
    cache.delete(_cache_key())
