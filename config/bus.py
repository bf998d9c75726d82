"""Cache invalidation across server processes.

A write that changes something a process caches (an API key, a project's
settings, prices, nodes) calls ``publish(topic, value)`` after commit. Every
process runs ``listen()`` and drops the matching entries within milliseconds.

Caches ask ``max_age()`` how long an entry may be trusted: long while this
process is subscribed, ``CACHE_UNSUBSCRIBED_TTL_SECONDS`` (1 s) otherwise, so a
revocation reaches every process within a second even when no listener runs
(embedded mode, a CLI in another process) or Redis is down.
"""
from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable

from django.conf import settings

from config import redisconn

log = logging.getLogger(__name__)

Handler = Callable[[str | None], None]  # None means "drop everything"
_handlers: dict[str, list[Handler]] = defaultdict(list)
_subscribed = False


def channel() -> str:
    return redisconn.key("invalidate")


def on(topic: str, handler: Handler) -> None:
    _handlers[topic].append(handler)


def _dispatch(topic: str, value: str | None) -> None:
    for handler in _handlers.get(topic, ()):
        handler(value)


def _dispatch_all() -> None:
    for topic in list(_handlers):
        _dispatch(topic, None)


def publish(topic: str, value: str) -> None:
    """Invalidate ``topic``/``value`` here and in every other process."""
    _dispatch(topic, value)
    client = redisconn.get_sync()
    if client is not None:
        try:
            client.publish(channel(), f"{topic}\x00{value}")
        except Exception:  # the short unsubscribed TTL still bounds staleness
            log.exception("invalidation publish failed for %s", topic)


async def publish_async(topic: str, value: str) -> None:
    """``publish`` from the event loop, for frequent messages (a node's heartbeat load)."""
    _dispatch(topic, value)
    client = redisconn.get_async()
    if client is not None:
        try:
            await client.publish(channel(), f"{topic}\x00{value}")
        except Exception:
            log.exception("invalidation publish failed for %s", topic)


def subscribed() -> bool:
    """Whether invalidations reach this process right now."""
    return _subscribed


def max_age() -> float:
    return settings.CACHE_SUBSCRIBED_TTL_SECONDS if _subscribed else settings.CACHE_UNSUBSCRIBED_TTL_SECONDS


async def listen() -> None:
    """Run for the life of the process; reconnects with backoff."""
    global _subscribed
    client = redisconn.get_async()
    if client is None:
        return
    delay = 0.2
    while True:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel())
            # Anything published while we were away is lost: start clean.
            _dispatch_all()
            _subscribed = True
            delay = 0.2
            while True:
                message = await pubsub.get_message(timeout=5.0)
                if message is None:
                    await pubsub.ping()
                    continue
                topic, _, value = message["data"].decode().partition("\x00")
                _dispatch(topic, value)
        except asyncio.CancelledError:
            _subscribed = False
            await pubsub.aclose()
            raise
        except Exception:
            _subscribed = False
            log.warning("invalidation listener lost Redis; retrying in %.1fs", delay)
            try:
                await pubsub.aclose()
            except Exception:
                pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
