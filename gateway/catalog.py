"""The models a request can name: priced (billing) and served by an active node (nodes)."""
from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass

from billing import selectors as billing_selectors
from billing.pricing import Price, price_at
from billing.services import PRICES_TOPIC
from config import asyncdb, bus
from nodes import registry
from nodes.registry import ServedModel

from .errors import GatewayError


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    context_window: int
    max_output_tokens: int
    served_by: tuple[ServedModel, ...]
    prices: tuple[Price, ...]
    created: int

    def price_at(self, when: dt.datetime) -> Price | None:
        return price_at(self.prices, when)


class Catalog:
    def __init__(self) -> None:
        self._models: dict[str, ModelEntry] | None = None
        self._loaded_at = 0.0
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._generation = 0

    def drop(self, _value: str | None = None) -> None:
        self._generation += 1
        self._models = None

    async def models(self) -> dict[str, ModelEntry]:
        models = self._models
        if models is not None and time.monotonic() - self._loaded_at < bus.max_age():
            return models
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:
            self._lock = (loop, asyncio.Lock())
        async with self._lock[1]:
            if self._models is not None and time.monotonic() - self._loaded_at < bus.max_age():
                return self._models
            generation, loaded_at = self._generation, time.monotonic()
            try:
                served, prices = await asyncio.gather(registry.served_models(), billing_selectors.price_versions())
            except asyncdb.DatabaseUnavailable:
                raise GatewayError("service_unavailable", "The model catalog is unreachable; try again shortly.") from None
            models = _build(served, prices)
            if generation == self._generation:  # not invalidated while loading
                self._models, self._loaded_at = models, loaded_at
            return models

    async def get(self, name: str) -> ModelEntry:
        entry = (await self.models()).get(name)
        if entry is None:
            raise GatewayError("model_not_found", f"The model '{name}' does not exist or is not available.", param="model")
        return entry

    async def get_for(self, key, name: str) -> ModelEntry:
        """``name``'s entry, if the key's plan may use it (403 model_forbidden otherwise)."""
        plan_allows(key, name)
        return await self.get(name)


def plan_allows(key, model: str) -> None:
    """Refuse a model outside the organization's plan (checked from the cached key record)."""
    if not key.may_use(model):
        raise GatewayError(
            "model_forbidden",
            f"The model '{model}' is not included in the {key.plan_name} plan; choose another model or upgrade the plan.",
            param="model",
        )


def _build(served: list[ServedModel], prices: dict[str, list[Price]]) -> dict[str, ModelEntry]:
    by_model: dict[str, list[ServedModel]] = {}
    for s in served:
        by_model.setdefault(s.model, []).append(s)
    out = {}
    for name, nodes in by_model.items():
        versions = prices.get(name)
        if not versions:
            continue  # never served unbilled
        out[name] = ModelEntry(
            name=name,
            context_window=max(s.context_window for s in nodes),
            max_output_tokens=max(s.max_output_tokens for s in nodes),
            served_by=tuple(nodes),
            prices=tuple(versions),
            created=int(versions[0].effective_from.timestamp()),
        )
    return out


catalog = Catalog()
bus.on(registry.NODES_TOPIC, catalog.drop)
bus.on(PRICES_TOPIC, catalog.drop)
