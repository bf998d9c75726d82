"""Redis clients: one async client per event loop, one sync client per process.

Returns None when REDIS_URL is unset (the embedded default), so callers pick
their in-process fallback explicitly.
"""
from __future__ import annotations

import asyncio
import weakref

from django.conf import settings

_async_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, object]" = weakref.WeakKeyDictionary()
_sync_client = None


def enabled() -> bool:
    return bool(settings.REDIS_URL)


def key(*parts: object) -> str:
    return ":".join([settings.REDIS_PREFIX, *map(str, parts)])


def get_async():
    if not settings.REDIS_URL:
        return None
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        import redis.asyncio as aioredis

        # A blocking pool: past max_connections a command waits (up to 5 s) for a free connection, where the
        # default pool fails at once ("Too many connections"), which refused bursts of new streams with 503.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30, max_connections=200,
            timeout=5,
        )
        client = aioredis.Redis.from_pool(pool)
        _async_clients[loop] = client
    return client


def get_sync():
    global _sync_client
    if not settings.REDIS_URL:
        return None
    if _sync_client is None:
        import redis

        _sync_client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
    return _sync_client


async def close_async() -> None:
    client = _async_clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()
