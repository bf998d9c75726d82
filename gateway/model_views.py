"""GET /v1/models and /v1/models/{id}: the models the caller's project may use (those its
organization's plan includes, served by a node the project may use)."""
from __future__ import annotations

from typing import Any

import orjson
from django.utils import timezone

from nodes import router

from .catalog import ModelEntry, catalog
from .context import ApiRequest, json_response
from .errors import GatewayError


def _model_object(entry: ModelEntry, now) -> dict[str, Any] | None:
    price = entry.price_at(now)
    if price is None:
        return None
    obj = {
        "id": entry.name,
        "object": "model",
        "created": entry.created,
        "owned_by": "platform",
        "context_window": entry.context_window,
        "max_output_tokens": entry.max_output_tokens,
        "pricing": {
            "currency": price.currency,
            "unit": "micros_per_million_tokens",
            "input": price.input_per_mtok,
            "cached_input": price.cached_input_per_mtok,
            "output": price.output_per_mtok,
            "version": price.version,
        },
    }
    if price.per_image:  # an image model: billed per image by size (POST /v1/images/generations)
        obj["pricing"]["images"] = {"unit": "micros_per_image", **dict(price.per_image)}
    return obj


def _usable(entry: ModelEntry, key, now: float) -> bool:
    """Whether the organization's plan includes the model and a node the project may use
    serves it (healthy or not: health comes and goes)."""
    return key.may_use(entry.name) and any(
        router.eligible(s, allow_non_confidential=key.allow_non_confidential, now=now) for s in entry.served_by
    )


async def list_models(req: ApiRequest):
    key = await req.authenticate(publishable_ok=False, scope="models")
    now = timezone.now()
    epoch = now.timestamp()
    objects = [
        obj for entry in (await catalog.models()).values()
        if _usable(entry, key, epoch) and (obj := _model_object(entry, now))
    ]
    objects.sort(key=lambda o: o["id"])
    return json_response(req, orjson.dumps({"object": "list", "data": objects}))


async def get_model(req: ApiRequest):
    key = await req.authenticate(publishable_ok=False, scope="models")
    model_id = req.request.path_params["model_id"]
    entry = await catalog.get(model_id)
    now = timezone.now()
    obj = _model_object(entry, now) if _usable(entry, key, now.timestamp()) else None
    if obj is None:
        raise GatewayError("model_not_found", f"The model '{model_id}' does not exist or is not available.")
    return json_response(req, orjson.dumps(obj))
