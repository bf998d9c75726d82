"""Stripe events and their signed webhook deliveries (the emulator's side of `/_emulator/webhook_endpoints`).

Every event the emulator makes (its own, and localstripe's, which are routed here instead of
localstripe's unsigned-by-default sender) becomes a full Stripe Event object, is kept for
``GET /v1/events``, and is queued for delivery to each registered endpoint that wants its type.
One worker delivers in creation order. Each delivery is recorded (delivered, failed or dropped),
can be replayed, and can be awaited: the hosted pay page waits for its ``checkout.session.*``
deliveries before it redirects, so a test (or a developer) sees the webhook land before the
success page.
"""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import stripe

log = logging.getLogger("stripe_emulator")

DELIVERY_TIMEOUT_SECONDS = 10


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def signature_header(payload: str, secrets_: list[str], timestamp: int) -> str:
    """``t=…,v1=…[,v1=…]``: one v1 signature per active secret, as Stripe signs during a rotation.

    Each signature comes from the stripe library's own helper, so it is exactly what
    ``stripe.Webhook.construct_event`` verifies."""
    parts = [f"t={timestamp}"]
    for secret in secrets_:
        header = stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=timestamp)
        parts.append(header.split(",", 1)[1])
    return ",".join(parts)


@dataclass
class Endpoint:
    id: str
    url: str
    secrets: list[str]
    enabled_events: list[str] | None  # None or ["*"]: every type

    def wants(self, event_type: str) -> bool:
        return self.enabled_events is None or "*" in self.enabled_events or event_type in self.enabled_events

    def export(self) -> dict:
        return {"id": self.id, "url": self.url, "enabled_events": self.enabled_events or ["*"],
                "secret_count": len(self.secrets)}


@dataclass
class Drop:
    remaining: int
    event_type: str | None  # None: any type


@dataclass
class Delivery:
    id: str
    event_id: str
    type: str
    endpoint_id: str
    url: str
    status: str  # delivered | failed | dropped
    http_status: int | None
    error: str
    payload: str
    signature: str
    at: float
    replay_of: str | None = None

    def export(self) -> dict:
        return dict(vars(self))


@dataclass
class Hub:
    api_version: str = stripe.api_version
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    events: dict[str, dict] = field(default_factory=dict)  # insertion order = creation order
    deliveries: list[Delivery] = field(default_factory=list)
    drops: list[Drop] = field(default_factory=list)
    _queue: asyncio.Queue | None = None
    _changed: asyncio.Condition | None = None
    _worker: asyncio.Task | None = None
    _session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._changed = asyncio.Condition()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DELIVERY_TIMEOUT_SECONDS))
        self._worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()
        if self._session:
            await self._session.close()

    # --- configuration ----------------------------------------------------------------

    def register(self, *, url: str, secrets_: list[str], enabled_events: list[str] | None,
                 endpoint_id: str | None = None) -> Endpoint:
        endpoint = Endpoint(id=endpoint_id or new_id("we_"), url=url, secrets=list(secrets_),
                            enabled_events=enabled_events)
        self.endpoints[endpoint.id] = endpoint
        return endpoint

    def drop_next(self, count: int, event_type: str | None) -> None:
        self.drops.append(Drop(remaining=count, event_type=event_type))

    def reset(self) -> None:
        """Forget endpoints, pending drops and the delivery log (Stripe objects and events stay)."""
        self.endpoints.clear()
        self.drops.clear()
        self.deliveries.clear()

    # --- events -------------------------------------------------------------------------

    def publish(self, event_type: str, obj: dict, *, event_id: str | None = None,
                created: int | None = None, previous_attributes: dict | None = None) -> tuple[dict, asyncio.Future]:
        """Record an event and queue its deliveries; the future resolves once they are all made."""
        data: dict[str, Any] = {"object": obj}
        if previous_attributes:
            data["previous_attributes"] = previous_attributes
        event = {
            "id": event_id or new_id("evt_"),
            "object": "event",
            "api_version": self.api_version,
            "created": created or int(time.time()),
            "data": data,
            "livemode": False,
            "pending_webhooks": sum(1 for e in self.endpoints.values() if e.wants(event_type)),
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
        }
        self.events[event["id"]] = event
        done = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((event, None, False, done))
        return event, done

    def replay(self, event_id: str, endpoint_id: str | None = None) -> asyncio.Future:
        """Deliver again (drops do not apply) to one endpoint, or to every endpoint that wants it."""
        event = self.events[event_id]
        done = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((event, endpoint_id, True, done))
        return done

    # --- delivery -----------------------------------------------------------------------

    def _take_drop(self, event_type: str) -> bool:
        for drop in self.drops:
            if drop.remaining > 0 and drop.event_type in (None, event_type):
                drop.remaining -= 1
                if drop.remaining == 0:
                    self.drops.remove(drop)
                return True
        return False

    async def _run(self) -> None:
        while True:
            event, only_endpoint, replay, done = await self._queue.get()
            made: list[Delivery] = []
            try:
                for endpoint in list(self.endpoints.values()):
                    if only_endpoint and endpoint.id != only_endpoint:
                        continue
                    if only_endpoint is None and not endpoint.wants(event["type"]):
                        continue
                    made.append(await self._deliver(event, endpoint, replay=replay))
            except Exception:  # never let one bad delivery stop the worker
                log.exception("webhook delivery of %s failed", event["id"])
            finally:
                if not done.done():
                    done.set_result(made)
                async with self._changed:
                    self._changed.notify_all()

    async def _deliver(self, event: dict, endpoint: Endpoint, *, replay: bool) -> Delivery:
        payload = json.dumps(event, indent=2, sort_keys=True)
        timestamp = int(time.time())
        header = signature_header(payload, endpoint.secrets, timestamp)
        previous = next((d.id for d in self.deliveries if d.event_id == event["id"]), None)
        delivery = Delivery(
            id=new_id("dlv_"), event_id=event["id"], type=event["type"], endpoint_id=endpoint.id, url=endpoint.url,
            status="dropped", http_status=None, error="", payload=payload, signature=header, at=time.time(),
            replay_of=previous if replay else None,
        )
        if not replay and self._take_drop(event["type"]):
            self.deliveries.append(delivery)
            log.info("webhook %s %s to %s: dropped on request", event["type"], event["id"], endpoint.url)
            return delivery
        try:
            async with self._session.post(endpoint.url, data=payload.encode(), headers={
                "Content-Type": "application/json; charset=utf-8", "Stripe-Signature": header,
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            }) as response:
                delivery.http_status = response.status
                delivery.status = "delivered" if 200 <= response.status < 300 else "failed"
                if delivery.status == "failed":
                    delivery.error = (await response.text())[:500]
        except (TimeoutError, aiohttp.ClientError) as exc:
            delivery.status = "failed"
            delivery.error = f"{type(exc).__name__}: {exc}"
        self.deliveries.append(delivery)
        log.info("webhook %s %s to %s: %s %s", event["type"], event["id"], endpoint.url, delivery.status,
                 delivery.http_status or delivery.error)
        return delivery

    def find_deliveries(self, *, event_type: str | None = None, event_id: str | None = None,
                        status: str | None = None) -> list[Delivery]:
        return [
            d for d in self.deliveries
            if (event_type is None or d.type == event_type) and (event_id is None or d.event_id == event_id)
            and (status is None or d.status == status)
        ]

    async def wait_for(self, *, count: int, timeout: float, **filters) -> list[Delivery]:
        """Wait (without polling) until at least ``count`` deliveries match, or the timeout passes."""
        deadline = asyncio.get_running_loop().time() + timeout
        async with self._changed:
            while len(found := self.find_deliveries(**filters)) < count:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    break
            return found
