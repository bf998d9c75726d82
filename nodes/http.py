"""One aiohttp session per event loop for talking to nodes.

aiohttp was measured against httpx for this proxy workload (bench/http_clients.py):
it has the lower per-request overhead, so nodes are reached through it.
"""
from __future__ import annotations

import asyncio
import weakref

import aiohttp

_sessions: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession]" = weakref.WeakKeyDictionary()


def session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    s = _sessions.get(loop)
    if s is None or s.closed:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30, ttl_dns_cache=300)
        s = aiohttp.ClientSession(connector=connector, json_serialize=None, auto_decompress=True)
        _sessions[loop] = s
    return s


async def close() -> None:
    s = _sessions.pop(asyncio.get_running_loop(), None)
    if s is not None:
        await s.close()
