"""What making a stream resumable costs: the Redis mirror of its events, in gateway CPU.

Runs batches of 16 concurrent streams of 18 events each (a 16-token chat answer
with its usage chunk and [DONE]) through gateway.streams.StreamLog against the
local Redis, events arriving 1 ms apart, and prints the CPU this process spent
per stream with the mirror and without it (the embedded default's in-process log).
A steadier measure than end-to-end throughput on a shared 2-core machine.

    python bench/stream_mirror.py [--streams 640] [--events 18] [--gap-ms 1] [--at-once 16]

(bench/run.py's paced streams: --events 64 --gap-ms 20 --at-once 500 --streams 1000.)
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/13")
os.environ.setdefault("REDIS_PREFIX", f"bench-mirror-{os.getpid()}")

import django  # noqa: E402

django.setup()

from config import redisconn  # noqa: E402
from gateway import streams  # noqa: E402

FRAME = b'id: evt_%d\ndata: {"id":"chatcmpl-x","choices":[{"index":0,"delta":{"content":" word"}}]}\n\n'


EVENTS, GAP, AT_ONCE = 18, 0.001, 16


async def one(n: int, mirrored: bool) -> None:
    log = streams.StreamLog(f"req_bench{n}", project_id=1, endpoint="chat.completions", headers={"x-request-id": "r"})
    if not mirrored:
        log._mirror = None
    follower = log.follow(0)
    for i in range(EVENTS):
        log.append(FRAME % (i + 1))
        await asyncio.sleep(GAP)
        await follower.read(1)
    log.close()
    follower.close()
    await log.flushed()


async def measure(count: int, mirrored: bool) -> float:
    await asyncio.gather(*(one(-i - 1, mirrored) for i in range(16)))  # warm connections
    cpu = time.process_time()
    for batch in range(count // AT_ONCE):
        await asyncio.gather(*(one(batch * AT_ONCE + i, mirrored) for i in range(AT_ONCE)))
    return (time.process_time() - cpu) / count * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=640)
    parser.add_argument("--events", type=int, default=18, help="events per stream")
    parser.add_argument("--gap-ms", type=float, default=1.0, help="between a stream's events")
    parser.add_argument("--at-once", type=int, default=16, help="streams open at the same time")
    args = parser.parse_args()
    global EVENTS, GAP, AT_ONCE
    EVENTS, GAP, AT_ONCE = args.events, args.gap_ms / 1000, args.at_once
    plain = await measure(args.streams, mirrored=False)
    mirrored = await measure(args.streams, mirrored=True)
    print(f"Stream log CPU per {EVENTS}-event stream ({args.streams} streams, {AT_ONCE} at a time, "
          f"events {args.gap_ms:g} ms apart)")
    print(f"  in-process only:        {plain:6.0f} µs")
    print(f"  mirrored to Redis:      {mirrored:6.0f} µs  (+{mirrored - plain:.0f} µs for resumability)")
    client = redisconn.get_async()
    keys = [k async for k in client.scan_iter(match=f"{os.environ['REDIS_PREFIX']}:*")]
    if keys:
        await client.delete(*keys)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
