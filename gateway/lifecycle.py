"""Process start-up and shutdown for the gateway (ASGI lifespan)."""
from __future__ import annotations

import asyncio
import gc
import logging

from django.conf import settings

from config import asyncdb, bus, redisconn
from nodes import http as node_http

from . import background, streams

log = logging.getLogger(__name__)


async def _embedded_beat(name: str, task: str, every: float) -> None:
    """Run a periodic Celery task in-process (embedded default: no beat, no broker)."""
    from django.db import close_old_connections

    from config.celery import app as celery_app

    def run() -> None:
        try:
            celery_app.tasks[task].apply(throw=True)
        except Exception:
            log.exception("periodic task %s failed", name)
        finally:
            close_old_connections()

    while True:
        await asyncio.sleep(every)
        await asyncio.to_thread(run)


async def startup() -> list[asyncio.Task]:
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(bus.listen(), name="invalidation-listener")]
    if redisconn.enabled():  # streams this process produces name it; followers elsewhere check it is alive
        tasks.append(loop.create_task(streams.heartbeat(), name="stream-producer-heartbeat"))
    if settings.EMBEDDED_BEAT:
        from config.celery import app as celery_app

        # Autodiscovery is lazy: without this no app's tasks are registered and every run fails.
        celery_app.loader.import_default_modules()
        for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
            tasks.append(loop.create_task(_embedded_beat(name, entry["task"], float(entry["schedule"])), name=name))
    _settle_heap()
    return tasks


def _settle_heap() -> None:
    """Keep the cyclic garbage collector off the request path's tail.

    Everything imported and built at start-up (Django, the URL confs, pools, caches: ~100 MiB of long-lived
    objects) moves to the permanent generation, so a full collection no longer walks it: unfrozen, each one
    stalled whatever request was running for tens of milliseconds (the p99 at concurrency 1). Young
    collections run every 10,000 net allocations instead of 700: a request allocates a few thousand
    short-lived objects, nearly all freed by reference counting, so most requests now run none.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


async def shutdown(tasks: list[asyncio.Task]) -> None:
    """After the server stopped accepting and its open responses ended (config/server.py):
    finish the settlements and other background work, then flush what is written in batches
    (stream events to Redis, kept bodies), then close the pools."""
    from config import ops

    from . import streams, vault

    ops.start_draining()  # a plain uvicorn run comes here directly
    await background.drain(timeout=settings.SHUTDOWN_DRAIN_SECONDS)
    for flush in (streams.flush_all, vault.bodies_flushed):
        try:
            await asyncio.wait_for(flush(), timeout=10)
        except Exception:
            log.exception("shutdown: %s did not finish", flush.__qualname__)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await node_http.close()
    await asyncdb.close_pools()
    await redisconn.close_async()


async def lifespan(scope, receive, send) -> None:
    tasks = None
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                tasks = await startup()
            except Exception as exc:
                log.exception("start-up failed")
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if tasks is not None:
                await shutdown(tasks)
            await send({"type": "lifespan.shutdown.complete"})
            return
