"""Ollama: inference through its OpenAI-compatible ``/v1``, models through its native ``/api``.

A node's ``base_url`` is the ``/v1`` base (``http://host:11434/v1``), as for any
OpenAI-compatible node; the native root is that URL without the ``/v1``.
Loading and unloading use ``/api/generate`` with no prompt, which is how
Ollama's docs say to do it: ``keep_alive`` "5m" loads, 0 unloads.

For the management calls a 404 (the model is not on this node) is permanent:
retrying the same call cannot make the model appear. Inference keeps the
OpenAI adapter's mapping.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from django.conf import settings

from nodes import http

from .base import NodeError, register
from .openai import OpenAICompatibleAdapter, _error_from, _timeout

KEEP_ALIVE = "5m"  # Ollama's own default for a loaded model
PULL_IDLE_SECONDS = 300  # a pull may go quiet this long (large layers, slow registry) before it counts as stuck


def _native_error(status: int, raw: bytes) -> NodeError:
    error = _error_from(status, raw)
    if status == 404:
        error.permanent, error.code = True, error.code or "model_not_found"
    return error


@register
class OllamaAdapter(OpenAICompatibleAdapter):
    kind = "ollama"

    def _native(self, path: str) -> str:
        return self.target.base_url.rstrip("/").removesuffix("/v1") + path

    async def _native_json(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = orjson.dumps(body) if body is not None else None
        try:
            async with http.session().request(
                method, self._native(path), data=data, headers=self._json, timeout=_timeout()
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise _native_error(resp.status, raw)
                answer = orjson.loads(raw)
        except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError) as exc:
            raise NodeError(f"ollama unreachable or broken: {exc.__class__.__name__}", permanent=False) from exc
        if not isinstance(answer, dict):
            raise NodeError("ollama answered something other than a JSON object", permanent=False)
        return answer

    async def list_models(self) -> list[str]:
        """The models on disk (``/api/tags``): Ollama serves any of them, loading it on first use."""
        models = (await self._native_json("GET", "/api/tags")).get("models")
        try:
            return [m["name"] for m in models]
        except (KeyError, TypeError) as exc:
            raise NodeError(f"ollama model list is malformed: {exc.__class__.__name__}", permanent=False) from exc

    async def health(self) -> bool:
        try:
            await self._native_json("GET", "/api/version")
        except NodeError:
            return False
        return True

    async def load_model(self, name: str) -> None:
        await self._native_json("POST", "/api/generate", {"model": name, "keep_alive": KEEP_ALIVE})

    async def unload_model(self, name: str) -> None:
        await self._native_json("POST", "/api/generate", {"model": name, "keep_alive": 0})

    async def pull_model(self, name: str) -> AsyncIterator[dict[str, Any]]:
        """Ollama's NDJSON progress, as ``{"status", "completed"?, "total"?}``, ending with status "success".

        An ``{"error"}`` line (e.g. no such model in the registry) is permanent;
        a stream that ends without "success" is retryable.
        """
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.GATEWAY_UPSTREAM_CONNECT_SECONDS, sock_read=PULL_IDLE_SECONDS
        )
        body = orjson.dumps({"model": name, "stream": True})
        try:
            async with http.session().post(self._native("/api/pull"), data=body, headers=self._json, timeout=timeout) as resp:
                if resp.status >= 400:
                    raise _native_error(resp.status, await resp.read())
                async for event in http.ndjson(resp):
                    if not isinstance(event, dict):
                        raise NodeError("ollama pull sent something other than a JSON object", permanent=False)
                    if "error" in event:
                        raise NodeError(f"ollama could not pull {name}: {event['error']}", permanent=True)
                    yield {k: event[k] for k in ("status", "completed", "total") if k in event}
                    if event.get("status") == "success":
                        return
        except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError) as exc:
            raise NodeError(f"ollama pull broke: {exc.__class__.__name__}", permanent=False) from exc
        raise NodeError(f"ollama pull of {name} ended before it succeeded", permanent=False)
