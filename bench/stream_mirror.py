"""What making a stream resumable costs: the Redis mirror of its events, in gateway CPU.

Runs batches of 16 concurrent streams of 18 events each (a 16-token chat answer
with its usage chunk and [DONE]) through gateway.streams.StreamLog against the
local Redis, events arriving 1 ms apart, and prints the CPU this process spent
per stream with the mirror and without it (the embedded default's in-process log).
A steadier measure than end-to-end throughput on a shared 2-core machine.

    python bench/stream_mirror.py [--streams 640]
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


async def one(n: int, mirrored: bool) -> None:
    log = streams.StreamLog(f"req_bench{n}", project_id=1, endpoint="chat.completions", headers={"x-request-id": "r"})
    if not mirrored:
        log._mirror = None
    follower = log.follow(0)
    for i in range(18):
        log.append(FRAME % (i + 1))
        await asyncio.sleep(0.001)
        await follower.read(1)
    log.close()
    follower.close()
    await log.flushed()


async def measure(count: int, mirrored: bool) -> float:
    await asyncio.gather(*(one(-i - 1, mirrored) for i in range(16)))  # warm connections
    cpu = time.process_time()
    for batch in range(count // 16):
        await asyncio.gather(*(one(batch * 16 + i, mirrored) for i in range(16)))
    return (time.process_time() - cpu) / count * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=640)
    args = parser.parse_args()
    plain = await measure(args.streams, mirrored=False)
    mirrored = await measure(args.streams, mirrored=True)
    print(f"Stream log CPU per 18-event stream ({args.streams} streams, 16 at a time, events 1 ms apart)")
    print(f"  in-process only:        {plain:6.0f} µs")
    print(f"  mirrored to Redis:      {mirrored:6.0f} µs  (+{mirrored - plain:.0f} µs for resumability)")
    client = redisconn.get_async()
    keys = [k async for k in client.scan_iter(match=f"{os.environ['REDIS_PREFIX']}:*")]
    if keys:
        await client.delete(*keys)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
