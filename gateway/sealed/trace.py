"""A test-only trace of every byte the gateway process handled for API requests.

With ``GATEWAY_TRACE_FILE`` set in the environment, the gateway appends to that file every
request body it read from a client, every byte it sent to a client, and every byte it sent to
or received from a node (through aiohttp's trace hooks on the node session). The sealed
requests' proof (tests/sealed/test_no_plaintext.py) searches it for a canary. Off (and free)
otherwise; never set it in production.
"""
from __future__ import annotations

import os
import threading

_lock = threading.Lock()


def path() -> str:
    return os.environ.get("GATEWAY_TRACE_FILE", "")


def enabled() -> bool:
    return bool(path())


def record(direction: str, data: bytes) -> None:
    if not data or not enabled():
        return
    with _lock, open(path(), "ab") as out:
        out.write(f"\n--- {direction} {len(data)}\n".encode() + data)


def wrap_asgi(app):
    """The ASGI app with its client-side bytes traced (request bodies in, response bodies out)."""
    if not enabled():
        return app

    async def traced(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)

        async def receive_traced():
            message = await receive()
            if message["type"] == "http.request":
                record(f"client>gateway {scope['path']}", message.get("body", b""))
            return message

        async def send_traced(message):
            if message["type"] == "http.response.body":
                record(f"gateway>client {scope['path']}", message.get("body", b""))
            await send(message)

        return await app(scope, receive_traced, send_traced)

    return traced


def trace_configs() -> list:
    """aiohttp trace configs recording node traffic (empty when tracing is off)."""
    if not enabled():
        return []
    import aiohttp

    config = aiohttp.TraceConfig()

    async def sent(session, ctx, params):
        record(f"gateway>node {params.url}", bytes(params.chunk))

    async def received(session, ctx, params):
        record(f"node>gateway {params.url}", bytes(params.chunk))

    config.on_request_chunk_sent.append(sent)
    config.on_response_chunk_received.append(received)
    return [config]
