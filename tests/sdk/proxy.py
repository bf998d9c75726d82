"""A fault-injecting HTTP proxy in front of the live server: it answers 429/503 itself, forwards a
request and then drops the connection instead of answering, or cuts a stream after N events.

``proxy.plan("429", "forward")`` queues behaviours for the next requests (then: forward)."""
from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field

import httpx
import orjson
from aiohttp import web

HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "accept-encoding"}


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    action: str


@dataclass
class FaultProxy:
    upstream: str
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    _plan: deque = field(default_factory=deque)

    def plan(self, *actions: str) -> None:
        self._plan.extend(actions)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self, path_part: str = "") -> list[Seen]:
        return [s for s in self.seen if path_part in s.path]

    # --- the server ---

    def start(self) -> FaultProxy:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def main():
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
            self._client = httpx.AsyncClient(timeout=60)
            ready.set()

        def run():
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(main())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        async def shutdown():
            await self._client.aclose()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        action = self._plan.popleft() if self._plan else "forward"
        self.seen.append(Seen(request.method, request.path_qs, {k.lower(): v for k, v in request.headers.items()}, action))
        if action.startswith(("429", "503", "500")):
            status, _, retry_after = action.partition(":")
            headers = {"Retry-After": retry_after} if retry_after else {}
            code = {"429": "rate_limited", "503": "service_unavailable", "500": "internal_error"}[status]
            body = {"error": {"type": "rate_limit_error" if status == "429" else "api_error", "code": code,
                              "message": f"injected {status}", "request_id": "req_proxy"}}
            return web.Response(status=int(status), body=orjson.dumps(body), headers=headers,
                                content_type="application/json")
        if action == "refuse":  # close before any answer, without forwarding
            request.transport.abort()
            return web.Response()
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        upstream = self._client.build_request(request.method, self.upstream + request.path_qs, content=body, headers=headers)
        response = await self._client.send(upstream, stream=True)
        try:
            if action == "drop":  # the server did the work; the client never hears of it
                await response.aread()
                request.transport.abort()
                return web.Response()
            out = web.StreamResponse(status=response.status_code,
                                     headers={k: v for k, v in response.headers.items() if k.lower() not in HOP})
            await out.prepare(request)
            cut = int(action.split(":")[1]) if action.startswith("cut:") else None
            events = 0
            async for line in response.aiter_lines():
                await out.write(line.encode() + b"\n")
                if cut is not None and line == "":
                    events += 1
                    if events >= cut:
                        request.transport.abort()
                        return out
            await out.write_eof()
            return out
        finally:
            await response.aclose()
