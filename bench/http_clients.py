"""aiohttp vs httpx as the upstream HTTP client of a proxy (the /v1 gateway -> inference nodes).

Starts a fast upstream on core 1: a minimal aiohttp.web server (this file run
with ``--upstream PORT``) answering

* POST /json: a ~300-byte JSON body;
* POST /sse:  text/event-stream, 64 small ``data: {...}`` events, then ``data: [DONE]``.

Then, for each client library x mode x concurrency, a fresh client process
(this file with ``--client``) pinned to core 0 with ``taskset -c 0`` sends
--requests POSTs through ONE shared aiohttp.ClientSession / httpx.AsyncClient
(HTTP/1.1 keep-alive, connection limit = concurrency) after a warm-up, and
reports requests/s, latency p50/p99 and client CPU time per request
(``time.process_time()`` delta / requests). Streaming reads the body line by
line (aiohttp: ``async for line in resp.content``; httpx: ``resp.aiter_lines()``)
and checks all 64 events and [DONE] arrived. Both run on uvloop, like the gateway.
Each case is run --repeat times; the run with the median req/s is reported.

    python bench/http_clients.py [--requests 3000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time

from common import free_port, machine, percentile, print_table

EVENTS = 64
PAYLOAD = {"model": "bench-model", "messages": [{"role": "user", "content": "Say something short."}],
           "max_tokens": 16}


# --- upstream ---------------------------------------------------------------------------------

def upstream(port: int) -> None:
    from aiohttp import web

    body = json.dumps({
        "id": "chatcmpl-0123456789abcdef", "object": "chat.completion", "created": 1700000000,
        "model": "bench-model", "choices": [{"index": 0, "finish_reason": "stop",
                                             "message": {"role": "assistant", "content": "Hello there, friend."}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }).encode()
    chunk = b'data: {"id":"chatcmpl-0","choices":[{"index":0,"delta":{"content":"tok"}}]}\n\n'

    async def as_json(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    async def as_sse(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for _ in range(EVENTS):
            await resp.write(chunk)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.add_routes([web.post("/json", as_json), web.post("/sse", as_sse)])
    print(f"upstream body {len(body)} bytes", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=_loop())


def _loop() -> asyncio.AbstractEventLoop:
    import uvloop

    return uvloop.new_event_loop()


# --- client -----------------------------------------------------------------------------------

def make_client(library: str, concurrency: int):
    if library == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))

        async def request(url: str, stream: bool) -> None:
            async with session.post(url, json=PAYLOAD) as resp:
                assert resp.status == 200, resp.status
                if not stream:
                    await resp.read()
                    return
                lines = [line async for line in resp.content if line.startswith(b"data:")]
                assert len(lines) == EVENTS + 1 and lines[-1].strip() == b"data: [DONE]", len(lines)

        return request, session.close
    import httpx

    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency,
                                                   max_keepalive_connections=concurrency), timeout=30)

    async def request(url: str, stream: bool) -> None:
        if not stream:
            resp = await client.post(url, json=PAYLOAD)
            assert resp.status_code == 200, resp.status_code
            return
        async with client.stream("POST", url, json=PAYLOAD) as resp:
            assert resp.status_code == 200, resp.status_code
            lines = [line async for line in resp.aiter_lines() if line.startswith("data:")]
            assert len(lines) == EVENTS + 1 and lines[-1] == "data: [DONE]", len(lines)

    return request, client.aclose


async def client_run(library: str, url: str, stream: bool, concurrency: int, total: int) -> dict:
    request, close = make_client(library, concurrency)
    latencies: list[float] = []

    async def worker(count: int, record: bool) -> None:
        for _ in range(count):
            started = time.perf_counter()
            await request(url, stream)
            if record:
                latencies.append(time.perf_counter() - started)

    try:
        await asyncio.gather(*(worker(max(200 // concurrency, 10), False) for _ in range(concurrency)))  # warm-up
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(total // concurrency, True) for _ in range(concurrency)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await close()
    latencies.sort()
    n = len(latencies)
    return {"rps": n / wall, "p50": percentile(latencies, 0.50) * 1000, "p99": percentile(latencies, 0.99) * 1000, "cpu_us": cpu / n * 1e6, "n": n}


# --- driver -----------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per measured run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=5, help=argparse.SUPPRESS)  # library url stream concurrency total
    args = parser.parse_args()
    if args.upstream:
        return upstream(args.upstream)
    if args.client:
        library, url, stream, concurrency, total = args.client
        result = _loop().run_until_complete(client_run(library, url, stream == "1", int(concurrency), int(total)))
        return print(json.dumps(result))

    port = free_port()
    server = subprocess.Popen(["taskset", "-c", "1", sys.executable, __file__, "--upstream", str(port)],
                              stdout=subprocess.PIPE, text=True)
    body_line = server.stdout.readline().strip()
    rows = []
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        for stream in (False, True):
            for concurrency in (1, 16):
                for library in ("aiohttp", "httpx"):
                    url = f"http://127.0.0.1:{port}/{'sse' if stream else 'json'}"
                    runs = []
                    for _ in range(args.repeat):
                        out = subprocess.run(["taskset", "-c", "0", sys.executable, __file__, "--client", library, url,
                                              str(int(stream)), str(concurrency), str(args.requests)],
                                             capture_output=True, text=True)
                        if out.returncode:
                            raise SystemExit(f"{library} client failed:\n{out.stderr}")
                        runs.append(json.loads(out.stdout))
                    runs.sort(key=lambda r: r["rps"])
                    rows.append(("SSE, line by line" if stream else "JSON", concurrency, library,
                                 runs[len(runs) // 2]))
    finally:
        server.terminate()
        server.wait(10)

    import aiohttp
    import httpx

    print(f"\nUpstream HTTP client: aiohttp {aiohttp.__version__} vs httpx {httpx.__version__} — {machine()}, uvloop")
    print(f"upstream (aiohttp.web, {body_line}; SSE = {EVENTS} events + [DONE]) on core 1, client on core 0; "
          f"{args.requests} requests per run, median of {args.repeat} runs\n")
    print_table(
        ["response", "conc", "client", "req/s", "p50", "p99", "CPU/req"],
        [[kind, str(conc), library, f"{r['rps']:.0f}", f"{r['p50']:.2f}ms", f"{r['p99']:.2f}ms", f"{r['cpu_us']:.0f}µs"]
         for kind, conc, library, r in rows],
    )
    print()
    for i in range(0, len(rows), 2):
        (kind, conc, _, a), (_, _, _, h) = rows[i], rows[i + 1]
        print(f"{kind}, concurrency {conc}: httpx uses {h['cpu_us'] / a['cpu_us']:.2f}× the client CPU of aiohttp "
              f"per request, {h['rps'] / a['rps']:.2f}× its req/s")


if __name__ == "__main__":
    main()
