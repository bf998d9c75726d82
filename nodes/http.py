"""One aiohttp session per event loop for talking to nodes.

aiohttp was measured against httpx for this proxy workload (bench/http_clients.py):
it has the lower per-request overhead, so nodes are reached through it.
"""
from __future__ import annotations

import asyncio
import weakref

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from gateway.sealed import trace

_sessions: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession]" = weakref.WeakKeyDictionary()


def session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    s = _sessions.get(loop)
    if s is None or s.closed:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30, ttl_dns_cache=300)
        s = aiohttp.ClientSession(
            connector=connector, json_serialize=None, auto_decompress=True, trace_configs=trace.trace_configs()
        )
        _sessions[loop] = s
    return s


async def close() -> None:
    s = _sessions.pop(asyncio.get_running_loop(), None)
    if s is not None:
        await s.close()


async def ndjson(resp: aiohttp.ClientResponse) -> AsyncIterator[Any]:
    """The JSON values of a newline-delimited JSON body as they arrive (progress streams: Ollama's
    and Thox's pulls); blank lines are skipped. Raises orjson.JSONDecodeError on a bad line."""
    buffer = b""
    async for data in resp.content.iter_any():
        buffer += data
        while (cut := buffer.find(b"\n")) >= 0:
            line, buffer = buffer[:cut].strip(), buffer[cut + 1 :]
            if line:
                yield orjson.loads(line)
    if buffer.strip():
        yield orjson.loads(buffer)


async def chunks(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """A streamed body's bytes as they arrive (recorded when the test-only trace is on:
    aiohttp's own trace hooks see only whole bodies read at once)."""
    traced = trace.enabled()
    async for data in resp.content.iter_any():
        if traced:
            trace.record(f"node>gateway {resp.url}", data)
        yield data


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, bytes]]:
    """``(event name, data)`` of each SSE event as it arrives ("message" when unnamed); comments skipped."""
    buffer = b""
    name, data = "message", []
    async for part in chunks(resp):
        buffer += part
        while (cut := buffer.find(b"\n")) >= 0:
            line, buffer = buffer[:cut].rstrip(b"\r"), buffer[cut + 1 :]
            if not line:
                if data:
                    yield name, b"\n".join(data)
                name, data = "message", []
            elif line.startswith(b"event:"):
                name = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data.append(line[5:].strip())


async def sse_data(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The payloads of an SSE body's ``data:`` lines as they arrive (stripped); comments,
    ``event:`` names and the blank lines between events are skipped."""
    buffer = b""
    source = chunks(resp) if trace.enabled() else resp.content.iter_any()  # no extra layer on the hot path
    async for data in source:
        buffer += data
        while (cut := buffer.find(b"\n")) >= 0:
            line, buffer = buffer[:cut].rstrip(b"\r"), buffer[cut + 1 :]
            if line.startswith(b"data:"):
                yield line[5:].strip()
