"""The Ollama dialect: Ollama's native ``/api`` management routes over any :class:`Engine`.

Served next to the OpenAI routes when the simulator runs with ``--dialect ollama``,
so an Ollama adapter can be tested against a real process: ``GET /api/version``,
``GET /api/tags`` (models on disk), ``GET /api/ps`` (models in memory),
``POST /api/pull`` (NDJSON progress; the model is then listed and servable) and
``POST /api/generate`` without a prompt, which loads a model, or unloads it when
``keep_alive`` is 0. Errors use Ollama's envelope ``{"error": "message"}``.

Shapes follow Ollama's API docs (docs/api.md); what is not emulated: model
names are kept as given (Ollama adds ``:latest``), generation through
``/api/generate`` and ``/api/chat`` (inference goes through ``/v1``), and
keep_alive expiry (a loaded model stays loaded until unloaded or reset).
A name containing "missing" stands for a model the registry does not have.
With the simulator's ``pull_hold`` set, a streamed pull waits after its first
download step until ``pull_hold`` is cleared (``POST /_sim/config``).
"""
from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from .engines import ApiError, Engine

ENGINE = web.AppKey("ollama_engine", Engine)
VERSION = "0.9.0-sim"
MODEL_SIZE = 91_000_000  # bytes each simulated model "weighs"
PULL_STEPS = 4  # progress events for the one layer a simulated pull downloads


def _error(status: int, message: str) -> web.Response:
    return web.Response(body=orjson.dumps({"error": message}), status=status, content_type="application/json")


def _ollama_errors(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc.status, exc.message)

    return wrapped


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid JSON body") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _name(body: dict[str, Any]) -> str:
    name = body.get("model") or body.get("name")  # "name" is the older spelling Ollama still accepts
    if not isinstance(name, str) or not name:
        raise ApiError(400, "model is required")
    return name


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _describe(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": "2025-01-01T00:00:00Z",
        "size": MODEL_SIZE,
        "digest": _digest(name),
        "details": {"format": "gguf", "family": "sim", "parameter_size": "135M", "quantization_level": "Q4_0"},
    }


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": VERSION})


async def tags(request: web.Request) -> web.Response:
    return web.json_response({"models": [_describe(m) for m in request.app[ENGINE].models]})


async def ps(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    expires = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    loaded = [{**_describe(m), "expires_at": expires, "size_vram": MODEL_SIZE} for m in sorted(engine.loaded)]
    return web.json_response({"models": loaded})


@_ollama_errors
async def pull(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    body = await _body(request)
    name = _name(body)
    if body.get("stream") is False:
        if "missing" in name:
            return _error(500, "pull model manifest: file does not exist")
        if name not in engine.models:
            engine.models.append(name)
        return web.json_response({"status": "success"})
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)

    async def send(event: dict[str, Any]) -> None:
        await response.write(orjson.dumps(event) + b"\n")
        await asyncio.sleep(0.005)  # a download takes a while: the client sees separate events

    await send({"status": "pulling manifest"})
    if "missing" in name:  # Ollama answers 200 and reports the failure in the stream
        await send({"error": "pull model manifest: file does not exist"})
    else:
        layer = f"sha256:{_digest(name)}"
        for step in range(1, PULL_STEPS + 1):
            completed = MODEL_SIZE * step // PULL_STEPS
            await send({"status": f"pulling {layer[7:19]}", "digest": layer, "total": MODEL_SIZE, "completed": completed})
            while step == 1 and getattr(getattr(engine, "config", None), "pull_hold", False):
                await asyncio.sleep(0.02)
        await send({"status": "verifying sha256 digest"})
        await send({"status": "writing manifest"})
        if name not in engine.models:
            engine.models.append(name)
        await send({"status": "success"})
    await response.write_eof()
    return response


_ZERO = re.compile(r"^0+(\.0*)?(ns|us|µs|ms|s|m|h)?$")


def _unloads(keep_alive: Any) -> bool:
    """Whether ``keep_alive`` is zero, as a number or a Go duration ("0", "0s", "0m")."""
    if isinstance(keep_alive, bool):
        return False
    if isinstance(keep_alive, (int, float)):
        return keep_alive == 0
    return isinstance(keep_alive, str) and bool(_ZERO.match(keep_alive.strip()))


@_ollama_errors
async def generate(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    body = await _body(request)
    name = _name(body)
    if name not in engine.models:
        return _error(404, f"model '{name}' not found")
    if body.get("prompt"):
        return _error(400, "the simulator generates through /v1 only; send /api/generate without a prompt to load")
    unload = _unloads(body.get("keep_alive"))
    if unload:
        engine.loaded.discard(name)
    else:
        engine.loaded.add(name)
    now = datetime.now(UTC).isoformat()
    reason = "unload" if unload else "load"
    return web.json_response({"model": name, "created_at": now, "response": "", "done": True, "done_reason": reason})


def add_routes(app: web.Application, engine: Engine) -> None:
    app[ENGINE] = engine
    app.add_routes(
        [
            web.get("/api/version", version),
            web.get("/api/tags", tags),
            web.get("/api/ps", ps),
            web.post("/api/pull", pull),
            web.post("/api/generate", generate),
        ]
    )
