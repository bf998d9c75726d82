"""Server-sent events: framing, and a response that streams a log's events.

Every event carries an ``id: evt_<n>`` (increasing per stream) so a client can
later resume with Last-Event-ID; a comment line is sent as a heartbeat when
nothing else went out for ``GATEWAY_HEARTBEAT_SECONDS``.
"""
from __future__ import annotations

import asyncio

from django.conf import settings

DONE = b"[DONE]"
HEARTBEAT = b": ping\n\n"


def frame(event_id: int, data: bytes, event: str | None = None) -> bytes:
    head = f"id: evt_{event_id}\n".encode()
    if event:
        head += f"event: {event}\n".encode()
    return head + b"data: " + data + b"\n\n"


def frames_after(body: bytes, after: int) -> bytes:
    """The events of a recorded stream body after event ``evt_<after>``."""
    if after <= 0:
        return body
    events = body.split(b"\n\n")
    out = []
    for event in events:
        if event.startswith(b"id: evt_"):
            number = int(event[8 : event.index(b"\n")] if b"\n" in event else event[8:])
            if number > after:
                out.append(event + b"\n\n")
    return b"".join(out)


class SSEResponse:
    """An ASGI response that sends what a stream follower reads.

    It watches for the client going away and closes the follower at once; the
    producer decides what that means (keep generating for the resume window).
    """

    def __init__(self, follower, *, headers: dict[str, str]):
        self.follower = follower
        self.headers = headers

    async def __call__(self, scope, receive, send) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        headers += [(k.encode(), v.encode()) for k, v in self.headers.items()]
        follower = self.follower
        await send({"type": "http.response.start", "status": 200, "headers": headers})

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            follower.close()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            heartbeat = settings.GATEWAY_HEARTBEAT_SECONDS
            while True:
                items = await follower.read(heartbeat)
                if items is None or watcher.done():
                    break
                body = b"".join(items) if items else HEARTBEAT
                await send({"type": "http.response.body", "body": body, "more_body": True})
            if not watcher.done():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the socket went away under a send
            pass
        finally:
            watcher.cancel()
            follower.close()
