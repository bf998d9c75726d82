"""What the gateway adds on top of a node: latency and throughput, direct vs through it.

Starts the node simulator (core 1) and one gateway process (core 0) in the
production shape when PostgreSQL and Redis are on this machine (a scratch
database ``bench_platform``), else the embedded default, then measures with an
aiohttp client on core 1:

* non-streaming: latency p50/p99 at concurrency 1, throughput and p50/p99 at 16;
* streaming: time to first token p50/p99 at concurrency 1 and 16.

Every request through the gateway is authenticated, rate limited, reserved,
settled and recorded. Prints a table; figures are medians over --repeat runs.

    python bench/gateway_overhead.py [--seconds 5] [--repeat 3] [--tenants 16] [--plan]

The load is spread over --tenants organizations; --tenants 1 shows one hot
wallet, whose reservations and settlements serialize on its row.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time

import aiohttp
from common import (cpu_seconds, environment, free_port, machine, migrate_and_seed, percentile, pinned, print_table,
                    start, start_gateway)

MODEL = "bench-model"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say something short."}], "max_tokens": 16}


async def one(session: aiohttp.ClientSession, url: str, headers: dict, stream: bool) -> float:
    started = time.perf_counter()
    async with session.post(url, json={**BODY, "stream": stream}, headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {await resp.text()}")
        if not stream:
            await resp.read()
            return time.perf_counter() - started
        first = None
        async for line in resp.content:
            if first is None and b'"content":"' in line and b'"content":""' not in line:
                first = time.perf_counter() - started
        return first


async def load(url: str, headers: list[dict], *, concurrency: int, seconds: float, stream: bool,
               pid: int | None = None) -> dict:
    """Worker i sends with headers[i % len(headers)] (one tenant each when there are several).

    With ``pid``, also the CPU that process spent per request: steadier than
    throughput on a machine whose neighbours come and go."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        for h in headers * 5:  # warm caches and connections
            await one(session, url, h, stream)

        async def worker(h: dict) -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                try:
                    latencies.append(await one(session, url, h, stream))
                except Exception:
                    errors += 1

        started, cpu = time.perf_counter(), cpu_seconds(pid)
        await asyncio.gather(*(worker(headers[i % len(headers)]) for i in range(concurrency)))
        elapsed, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu
    latencies.sort()
    return {"p50": percentile(latencies, 0.50) * 1000, "p99": percentile(latencies, 0.99) * 1000,
            "rps": len(latencies) / elapsed, "n": len(latencies), "errors": errors,
            "cpu_us": cpu / max(1, len(latencies)) * 1e6}


def median_of(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tenants", type=int, default=16,
                        help="spread the load over this many organizations (wallets); 1 = one hot wallet")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this text")
    parser.add_argument("--plan", action="store_true",
                        help="put every bench organization on a plan (model list and limits checked per request)")
    args = parser.parse_args()

    state = tempfile.mkdtemp(prefix="bench-state-")
    env, shape = environment(state)
    py = sys.executable
    sim_port, gw_port = free_port(), free_port()
    sim = start(pinned(1, [py, "manage.py", "run_node_simulator", "--port", str(sim_port), "--models", MODEL]),
                env, "listening on")
    keys = migrate_and_seed(env, {MODEL: f"http://127.0.0.1:{sim_port}"}, args.tenants, args.plan)
    gateway = start_gateway(env, gw_port)
    direct = (f"http://127.0.0.1:{sim_port}/v1/chat/completions", [{}])
    through = (f"http://127.0.0.1:{gw_port}/v1/chat/completions", [{"Authorization": f"Bearer {k}"} for k in keys])
    cases = [("chat, concurrency 1", 1, False), ("chat, concurrency 16", 16, False),
             ("stream TTFT, concurrency 1", 1, True), ("stream TTFT, concurrency 16", 16, True)]
    cases = [case for case in cases if args.only in case[0]]
    rows = []
    try:
        for name, concurrency, stream in cases:
            results = {}
            for label, (url, headers), pid in (("direct", direct, None), ("gateway", through, gateway.pid)):
                runs = [asyncio.run(load(url, headers, concurrency=concurrency, seconds=args.seconds, stream=stream,
                                         pid=pid))
                        for _ in range(args.repeat)]
                results[label] = median_of(runs)
            rows.append((name, results["direct"], results["gateway"]))
    finally:
        for proc in (gateway, sim):
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(state, ignore_errors=True)

    print(f"\nGateway overhead — {shape}; {machine()}; medians of {args.repeat} × {args.seconds:.0f} s; "
          f"{args.tenants} tenant wallet{'s' if args.tenants > 1 else ''}{' on a plan' if args.plan else ''}")
    print("Simulator: 16 output tokens, 0 ms latency. Gateway pinned to core 0; simulator and client on core 1.\n")
    ms = lambda v: f"{v:.2f}ms"  # noqa: E731
    print_table(
        ["case", "direct p50", "p99", "gateway p50", "p99", "added p50", "added p99", "gateway req/s", "CPU/req",
         "errors"],
        [[name, ms(d["p50"]), ms(d["p99"]), ms(g["p50"]), ms(g["p99"]), ms(g["p50"] - d["p50"]),
          ms(g["p99"] - d["p99"]), f"{g['rps']:.0f}", f"{g['cpu_us']:.0f}µs", f"{g['errors']:.0f}"]
         for name, d, g in rows],
    )

if __name__ == "__main__":
    main()
