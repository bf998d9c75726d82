"""Server-sent events: framing, and a response that streams from a queue.

Every event carries an ``id: evt_<n>`` (increasing per stream) so a client can
later resume with Last-Event-ID; a comment line is sent as a heartbeat when
nothing else went out for ``GATEWAY_HEARTBEAT_SECONDS``.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable

from django.conf import settings

DONE = b"[DONE]"
HEARTBEAT = b": ping\n\n"


def frame(event_id: int, data: bytes, event: str | None = None) -> bytes:
    head = f"id: evt_{event_id}\n".encode()
    if event:
        head += f"event: {event}\n".encode()
    return head + b"data: " + data + b"\n\n"


class QueueSSEResponse:
    """An ASGI response that sends what a producer puts on ``queue`` (None ends it).

    It watches for the client going away and calls ``on_disconnect`` at once,
    so the producer can stop the node and settle for what was generated.
    """

    def __init__(self, queue: asyncio.Queue, *, headers: dict[str, str], on_disconnect: Callable[[], None]):
        self.queue = queue
        self.headers = headers
        self.on_disconnect = on_disconnect

    async def __call__(self, scope, receive, send) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        headers += [(k.encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            self.on_disconnect()
            self.queue.put_nowait(None)

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            heartbeat = settings.GATEWAY_HEARTBEAT_SECONDS
            while True:
                try:
                    async with asyncio.timeout(heartbeat):
                        item = await self.queue.get()
                except TimeoutError:
                    item = HEARTBEAT
                if item is None or watcher.done():
                    break
                await send({"type": "http.response.body", "body": item, "more_body": True})
            if not watcher.done():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
