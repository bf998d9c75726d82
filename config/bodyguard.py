"""Bounds on request bodies for the Django-served paths (the gateway's own routes bound theirs in
gateway.context.ApiRequest.body).

Django's ASGI handler reads a whole body (spooling it to a temporary file past 2.5 MB) before any
view runs, with no deadline: a client could trickle a byte every few seconds and hold its
connection forever, or send a gigabyte to /v1/keys and have it written to disk before the 400.
This wrapper watches the body as Django receives it:

* on the API's paths (the /v1 management API, the Web Chat relay), a body above
  GATEWAY_MAX_BODY_BYTES (declared or counted) is refused with 413 in the error envelope, without
  reading the rest;
* everywhere, a body not complete within GATEWAY_BODY_TIMEOUT_SECONDS is refused with 408.

Both answers close the connection. Requests without a body pay one dictionary lookup.
"""
from __future__ import annotations

import asyncio

import orjson
from django.conf import settings

from config.ids import new_id
from gateway.errors import envelope


class _Refused(Exception):
    def __init__(self, code: str, status: int, message: str):
        super().__init__(message)
        self.code, self.status, self.message = code, status, message


def _has_body(scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value != b"0"
        if name == b"transfer-encoding":
            return True
    return False


def _declared_length(scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def guard(app, *, api_prefixes: tuple[str, ...]):
    async def guarded(scope, receive, send):
        if scope["type"] != "http" or not _has_body(scope):
            return await app(scope, receive, send)
        api = scope["path"].startswith(api_prefixes)
        limit = settings.GATEWAY_MAX_BODY_BYTES if api else None
        seconds = settings.GATEWAY_BODY_TIMEOUT_SECONDS
        too_large = _Refused("body_too_large", 413, f"The request body exceeds the {limit}-byte limit.")
        started = False

        if limit is not None and (_declared_length(scope) or 0) > limit:
            return await _refuse(send, too_large, api)

        deadline = asyncio.get_running_loop().time() + seconds
        size, done = 0, False

        async def bounded_receive():
            nonlocal size, done
            if done:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise _Refused("body_timeout", 408, f"The request body did not arrive within {seconds} s.") from None
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if limit is not None and size > limit:
                    raise too_large
                done = not message.get("more_body", False)
            return message

        async def tracking_send(message):
            nonlocal started
            started = True
            await send(message)

        try:
            await app(scope, bounded_receive, tracking_send)
        except _Refused as refused:
            if started:
                raise
            await _refuse(send, refused, api)

    return guarded


async def _refuse(send, refused: _Refused, api: bool) -> None:
    request_id = new_id("req")
    if api:
        body, content_type = orjson.dumps(envelope(refused.code, refused.message, request_id)), b"application/json"
    else:
        body, content_type = refused.message.encode(), b"text/plain; charset=utf-8"
    await send({"type": "http.response.start", "status": refused.status, "headers": [
        (b"content-type", content_type), (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()), (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})
