"""The Anthropic dialect: Anthropic's Messages API over any :class:`Engine` (``--dialect anthropic``).

So the Anthropic node adapter, and the official ``anthropic`` SDK, can be tested against a
real process: ``POST /v1/messages`` (whole answers and SSE streams, text and ``tool_use``,
stop sequences, usage) and ``GET /v1/models``, with Anthropic's headers and errors:

* every ``/v1`` request needs ``anthropic-version``, and the key when the simulator runs
  with ``--api-key``: ``x-api-key``, or ``Authorization: Bearer`` as the anthropic SDK 2.x
  sends it (401 ``authentication_error`` otherwise);
* errors are ``{"type": "error", "error": {"type", "message"}, "request_id"}`` with
  Anthropic's types by status (400 ``invalid_request_error``, 404 ``not_found_error``,
  429 ``rate_limit_error``, 500 ``api_error``, 529 ``overloaded_error``, …) and a
  ``request-id`` header;
* a stream is ``message_start``, ``content_block_start``, ``ping``, ``content_block_delta``
  (``text_delta`` / ``input_json_delta``), ``content_block_stop``, ``message_delta``
  (stop reason, cumulative output tokens), ``message_stop``, each with its ``event:`` name.
  A failure after output has begun is an ``event: error`` (``overloaded_error``), as
  Anthropic sends it, and the stream ends without ``message_stop``;
* prompt caching: blocks marked ``cache_control`` are breakpoints; a prefix of at least
  :data:`MIN_CACHEABLE_TOKENS` up to the last one is written to the cache the first time
  (``cache_creation_input_tokens``) and read from it afterwards
  (``cache_read_input_tokens``); ``input_tokens`` counts the rest, as Anthropic does.

Requests are checked the way Anthropic checks them (``max_tokens`` required, roles user or
assistant, ``temperature`` and ``top_p`` in [0, 1], stop sequences with non-whitespace),
then translated to chat with the same code the gateway uses for its own /v1/messages
(nodes/anthropic_messages.py) and validated and counted by the OpenAI layer (app.py), so
the token counts are the simulator's usual ones (tokens.py).

Not emulated: extended thinking, server tools (web search…), citations, documents,
``/v1/messages/count_tokens``, batches, and the beta headers.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from nodes.anthropic_messages import ERROR_TYPES, FormatError, STOP_REASONS, to_chat_messages, tool_choice_to_chat, tool_input, tools_to_chat

from . import app as chat_app
from .engines import ApiError, DropConnection, Engine, Generation
from .tokens import text_tokens

log = logging.getLogger(__name__)

ENGINE = web.AppKey("anthropic_engine", Engine)
MIN_CACHEABLE_TOKENS = 1024  # Anthropic's minimum for a cacheable prefix (Sonnet, Opus)
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def _request_id() -> str:
    return "req_" + os.urandom(12).hex()


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    request_id = _request_id()
    body = {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
            "request_id": request_id}
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json",
                        headers={**(headers or {}), "request-id": request_id})


@web.middleware
async def errors(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason)
    except Exception:
        log.exception("error handling %s %s", request.method, request.path)
        return error_response(500, "Internal server error")


def require_headers(api_key: str):
    """``anthropic-version`` on every /v1 request, and the key when the simulator has one: as
    ``x-api-key``, or as ``Authorization: Bearer`` (what the anthropic SDK 2.x sends)."""

    @web.middleware
    async def check(request: web.Request, handler) -> web.StreamResponse:
        if request.path.startswith("/v1/"):
            if api_key:
                presented = request.headers.get("x-api-key")
                bearer = request.headers.get("authorization", "")
                if presented is None and bearer.lower().startswith("bearer "):
                    presented = bearer[7:].strip()
                if presented is None:
                    return error_response(401, "x-api-key header is required")
                if presented != api_key:
                    return error_response(401, "invalid x-api-key")
            if not request.headers.get("anthropic-version"):
                return error_response(400, "anthropic-version: header is required")
        return await handler(request)

    return check


# --- request ------------------------------------------------------------------------------


def _bad(message: str) -> ApiError:
    return ApiError(400, message)


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise _bad(f"{name}: Input should be a number between {low:g} and {high:g}")
    return float(value)


def _checked(body: dict[str, Any], engine: Engine) -> dict[str, Any]:
    """The Messages request's fields, checked as Anthropic checks them."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model: Field required")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise _bad("max_tokens: Field required")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _bad("max_tokens: Input should be greater than or equal to 1")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages: Field required" if messages is None else "messages: at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise _bad(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        if not (isinstance(content, str) or (isinstance(content, list) and content)):
            raise _bad(f"messages.{i}.content: Input should be a valid string or a non-empty list of content blocks")
    stops = body.get("stop_sequences") or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _bad("stop_sequences: Input should be a valid list of strings")
    if any(not s.strip() for s in stops):
        raise _bad("stop_sequences: each stop sequence must contain non-whitespace")
    tools = body.get("tools") or []
    if not isinstance(tools, list) or not all(
        isinstance(t, dict) and isinstance(t.get("name"), str) and t["name"]
        and isinstance(t.get("input_schema"), dict) and t["input_schema"].get("type") == "object"
        for t in tools
    ):
        raise _bad("tools: each tool needs a name and an input_schema of type 'object'")
    choice = body.get("tool_choice")
    if choice is not None and (not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none")):
        raise _bad("tool_choice: Input should be an object with type 'auto', 'any', 'tool' or 'none'")
    if choice and choice["type"] in ("any", "tool") and not tools:
        raise _bad("tool_choice: may only be specified while providing tools")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream: Input should be a valid boolean")
    if model not in engine.models:
        raise ApiError(404, f"model: {model}")
    return {
        "model": model, "max_tokens": max_tokens, "messages": messages, "system": body.get("system"),
        "stop": tuple(stops), "tools": tools, "tool_choice": choice, "stream": stream,
        "temperature": _number(body, "temperature", 0, 1), "top_p": _number(body, "top_p", 0, 1),
    }


def _generation(body: dict[str, Any], engine: Engine) -> Generation:
    request = _checked(body, engine)
    try:
        chat = {
            "messages": to_chat_messages(request["system"], request["messages"]),
            "tools": tools_to_chat(request["tools"]) or [],
            "tool_choice": tool_choice_to_chat(request["tool_choice"]),
        }
    except FormatError as exc:
        raise _bad(str(exc).rstrip(".")) from None
    gen = Generation(
        id="msg_" + os.urandom(12).hex(),
        model=request["model"],
        stream=request["stream"],
        messages=chat_app._messages(chat),
        **chat_app._tools(chat),
        max_tokens=request["max_tokens"],
        stop=request["stop"],
        temperature=request["temperature"],
        top_p=request["top_p"],
    )
    chat_app._check_modalities(engine, gen.model, gen.messages)
    return gen


def _cached_prefix(body: dict[str, Any]) -> str | None:
    """The prompt up to its last ``cache_control`` breakpoint, in Anthropic's order: tools, system, messages."""
    pieces: list[str] = []
    last = 0

    def add(block: Any) -> None:
        nonlocal last
        if isinstance(block, dict):
            pieces.append(block["text"] if isinstance(block.get("text"), str)
                          else orjson.dumps({k: v for k, v in block.items() if k != "cache_control"}).decode())
            if block.get("cache_control"):
                last = len(pieces)
        else:
            pieces.append(str(block))

    for tool in body.get("tools") or ():
        add(tool)
    system = body.get("system")
    for block in (system if isinstance(system, list) else [system] if system else []):
        add(block)
    for message in body.get("messages") or ():
        content = message.get("content")
        for block in (content if isinstance(content, list) else [content]):
            add(block)
    return "".join(pieces[:last]) if last else None


def _usage(gen: Generation, cache: tuple[int, bool]) -> dict[str, int]:
    cached, hit = cache
    cached = min(cached, gen.prompt_tokens)
    return {
        "input_tokens": gen.prompt_tokens - cached,
        "cache_creation_input_tokens": 0 if hit else cached,
        "cache_read_input_tokens": cached if hit else 0,
        "output_tokens": gen.completion_tokens,
    }


def _cache(engine: Engine, model: str, body: dict[str, Any]) -> tuple[int, bool]:
    """(tokens in the cached prefix, whether it was already cached); (0, False) if nothing is cacheable."""
    prefix = _cached_prefix(body)
    if prefix is None or text_tokens(prefix) < MIN_CACHEABLE_TOKENS:
        return 0, False
    key = hashlib.sha256(f"{model}\0{prefix}".encode()).hexdigest()
    hit = key in engine.prompt_cache
    engine.prompt_cache.add(key)
    return text_tokens(prefix), hit


# --- answer ---------------------------------------------------------------------------------


def _stop_reason(gen: Generation) -> str:
    if gen.stop_sequence is not None:
        return "stop_sequence"
    return STOP_REASONS.get(gen.finish_reason, "end_turn")


def _tool_id(gen: Generation) -> str:
    return "toolu_" + gen.tool_call.id.removeprefix("call_")


def _message(gen: Generation, content: list[dict[str, Any]], usage: dict[str, int], stop: str | None) -> dict[str, Any]:
    return {"id": gen.id, "type": "message", "role": "assistant", "model": gen.model, "content": content,
            "stop_reason": stop, "stop_sequence": gen.stop_sequence if stop else None, "usage": usage}


async def _whole(gen: Generation, pieces: AsyncIterator[str], cache_of) -> web.Response:
    text = "".join([piece async for piece in pieces])
    if gen.tool_call is not None:
        content = [{"type": "tool_use", "id": _tool_id(gen), "name": gen.tool_call.name, "input": tool_input(text)}]
    else:
        content = [{"type": "text", "text": text}] if text else []
    message = _message(gen, content, _usage(gen, cache_of()), _stop_reason(gen))
    return web.Response(body=orjson.dumps(message), content_type="application/json",
                        headers={"request-id": _request_id()})


async def _stream(request: web.Request, gen: Generation, pieces: AsyncIterator[str], cache_of) -> web.StreamResponse:
    first = await anext(pieces, None)  # errors before any output still get their own status
    cache = cache_of()
    response = web.StreamResponse(headers={**SSE_HEADERS, "request-id": _request_id()})
    await response.prepare(request)

    async def send(kind: str, **fields: Any) -> None:
        await response.write(f"event: {kind}\ndata: ".encode() + orjson.dumps({"type": kind, **fields}) + b"\n\n")

    start_usage = {**_usage(gen, cache), "output_tokens": 1 if first is not None else 0}
    await send("message_start", message=_message(gen, [], start_usage, None))
    if gen.tool_call is not None:
        block = {"type": "tool_use", "id": _tool_id(gen), "name": gen.tool_call.name, "input": {}}
        delta = lambda piece: {"type": "input_json_delta", "partial_json": piece}  # noqa: E731
    else:
        block = {"type": "text", "text": ""}
        delta = lambda piece: {"type": "text_delta", "text": piece}  # noqa: E731
    await send("content_block_start", index=0, content_block=block)
    await send("ping")
    try:
        if gen.tool_call is not None:
            await send("content_block_delta", index=0, delta=delta(""))  # Anthropic opens tool input with ""
        if first is not None:
            await send("content_block_delta", index=0, delta=delta(first))
            async for piece in pieces:
                await send("content_block_delta", index=0, delta=delta(piece))
    except (DropConnection, ApiError):  # too late for a status: Anthropic reports it in the stream
        await send("error", error={"type": "overloaded_error", "message": "Overloaded"})
        await response.write_eof()
        return response
    await send("content_block_stop", index=0)
    await send("message_delta", delta={"stop_reason": _stop_reason(gen), "stop_sequence": gen.stop_sequence},
               usage={"output_tokens": gen.completion_tokens})
    await send("message_stop")
    await response.write_eof()
    return response


async def messages(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    body = await chat_app.read_json(request)
    gen = _generation(body, engine)
    engine.stats.started()
    outcome = "failed"
    pieces = engine.generate(gen)
    cache_of = lambda: _cache(engine, gen.model, body)  # noqa: E731 - once the prompt has been read
    try:
        if gen.stream:
            response = await _stream(request, gen, pieces, cache_of)
        else:
            response = await _whole(gen, pieces, cache_of)
        outcome = "completed"
        return response
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    except ConnectionResetError:
        outcome = "cancelled"
        return chat_app._dropped(request)
    except DropConnection:
        return chat_app._dropped(request)
    finally:
        await pieces.aclose()
        if gen.injected_failure:
            outcome = "failed"
        engine.stats.finished(gen, outcome)


async def models(request: web.Request) -> web.Response:
    created = datetime.fromtimestamp(request.app[chat_app.STARTED], UTC).isoformat().replace("+00:00", "Z")
    data = [{"type": "model", "id": m, "display_name": m, "created_at": created} for m in request.app[ENGINE].models]
    return web.json_response({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                              "last_id": data[-1]["id"] if data else None})


def middlewares(api_key: str) -> list:
    return [errors, require_headers(api_key)]


def add_routes(app: web.Application, engine: Engine) -> None:
    app[ENGINE] = engine
    app.add_routes([web.post("/v1/messages", messages), web.get("/v1/models", models)])

