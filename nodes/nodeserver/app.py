"""The node server's HTTP layer: an OpenAI-compatible API over any :class:`Engine`.

Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``,
``POST /v1/completions``, ``POST /v1/embeddings``, ``POST /v1/images/generations``
(real PNGs from ``png.py``; engines without images answer 400), ``GET /stats``, ``POST /v1/attestation``
when the node has an attestation identity (``attestation.py``) and then also ``POST
/v1/sealed/chat/completions`` (sealed requests, ``sealed.py``), plus the
engine's own control endpoints (the simulator's ``/_sim/*``), with the
"ollama" dialect Ollama's native ``/api`` routes (``ollama.py``), with the
"anthropic" dialect Anthropic's Messages API in place of the OpenAI routes (``anthropic.py``),
and with the "thox" dialect a second app, a MagStack-style cluster API (``thox.py``). Errors use
OpenAI's envelope ``{"error": {"message", "type", "code"}}``.

Chat messages may carry text, ``image_url`` and ``input_audio`` parts; parts of
a modality the engine does not accept (:attr:`Engine.input_modalities`) are
refused with a 400 ``unsupported_modality`` before the engine sees the request.
``tools`` / ``tool_choice`` are validated here and passed on; an engine that
answers with a call sets ``Generation.tool_call`` and yields the arguments.

Streams follow OpenAI exactly, including ``stream_options.include_usage``
(a last chunk with ``"choices": []`` and the usage, and ``"usage": null`` on
the others), which the gateway's billing relies on. The HTTP layer waits for
the engine's first token before it sends the 200 headers, so every failure
that happens before any output (unknown model, context too long, injected
500/429) reaches the client as a real status. The server runs with aiohttp's
handler cancellation, so a client that goes away cancels its handler at once,
which stops the engine and is counted as ``cancelled``.

Measured throughput of the simulator with 0 ms latency, pinned to one core
(``taskset -c 0``), wrk on the other (``wrk -t1 -c16 -d5s``), 16-token chat
answers: about 12,000 non-stream requests/s (mean latency 1.3 ms), and 3,700 streamed
requests/s (~63,000 SSE chunks/s) with include_usage.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import signal
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from . import anthropic, ollama, thox
from .engines import ApiError, Control, DropConnection, Engine, Generation

log = logging.getLogger(__name__)

ENGINE = web.AppKey("engine", Engine)
STARTED = web.AppKey("started", int)  # the models' "created" time
MAX_BODY_BYTES = 16 * 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# --- JSON in and out -----------------------------------------------------------------


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers=headers, content_type="application/json")


def error_response(
    status: int, message: str, type: str, code: str | None, headers: dict[str, str] | None = None
) -> web.Response:
    return json_response({"error": {"message": message, "type": type, "code": code}}, status, headers)


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; {} for an empty body (control endpoints take none)."""
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error, ours or aiohttp's (404, 405, 413), in the OpenAI envelope."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message, exc.type, exc.code, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason, "invalid_request_error", None)
    except Exception:
        log.exception("error handling %s %s", request.method, request.path)
        return error_response(500, "The node failed to handle the request.", "server_error", "internal_error")


# --- request validation --------------------------------------------------------------


def _invalid(name: str, expected: str) -> ApiError:
    return ApiError(400, f"'{name}' must be {expected}.", code="invalid_value")


def _int(body: dict[str, Any], name: str, low: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _invalid(name, f"an integer >= {low}")
    return value


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise _invalid(name, f"a number in [{low:g}, {high:g}]")
    return float(value)


def _model(body: dict[str, Any], engine: Engine) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model", "a model name")
    if model not in engine.models:
        raise ApiError(404, f"The model '{model}' does not exist on this node.", code="model_not_found")
    return model


# Content part type -> the input modality it needs (text parts need "text", which every engine takes).
MEDIA_PARTS = {"image_url": "image", "input_audio": "audio"}


def _part_ok(part: dict[str, Any], kind: str) -> bool:
    if kind == "text":
        return isinstance(part.get("text"), str)
    if kind == "image_url":
        return isinstance(image := part.get("image_url"), dict) and isinstance(image.get("url"), str)
    audio = part.get("input_audio")
    return isinstance(audio, dict) and isinstance(audio.get("data"), str) and isinstance(audio.get("format"), str)


def _content(content: Any) -> tuple[str, list[str]]:
    """A message's text (text parts joined without separators) and the modalities of its media parts, in order."""
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise ApiError(400, "Message content must be a string or a list of content parts.", code="unsupported_content")
    texts: list[str] = []
    media: list[str] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" and kind not in MEDIA_PARTS:
            raise ApiError(
                400,
                f"Unsupported content part type {kind!r}; use 'text', 'image_url' or 'input_audio'.",
                code="unsupported_content",
            )
        if not _part_ok(part, kind):
            raise _invalid(f"{kind} content part", f"a well-formed '{kind}' part")
        if kind == "text":
            texts.append(part["text"])
        else:
            media.append(MEDIA_PARTS[kind])
    return "".join(texts), media


def _tool_calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    calls = message.get("tool_calls")
    if calls is None:
        return []
    ok = isinstance(calls, list) and all(
        isinstance(c, dict)
        and isinstance(c.get("id"), str)
        and c.get("type") == "function"
        and isinstance(f := c.get("function"), dict)
        and isinstance(f.get("name"), str)
        and isinstance(f.get("arguments"), str)
        for c in calls
    )
    if not ok or message["role"] != "assistant":
        raise _invalid("tool_calls", "a list of function calls on an assistant message")
    return calls


def _message(m: dict[str, Any]) -> dict[str, Any]:
    """A message as the engines see it: ``role``, text ``content``, and ``media`` / ``tool_calls`` /
    ``tool_call_id`` when it has them."""
    text, media = _content(m.get("content"))
    message: dict[str, Any] = {"role": m["role"], "content": text}
    if media:
        message["media"] = media
    if calls := _tool_calls(m):
        message["tool_calls"] = calls
    if m["role"] == "tool":
        if not isinstance(m.get("tool_call_id"), str):
            raise _invalid("tool_call_id", "the id of the tool call a 'tool' message answers")
        message["tool_call_id"] = m["tool_call_id"]
    return message


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages", "a non-empty list")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise _invalid("messages", "a list of objects with a 'role'")
    return [_message(m) for m in messages]


def _tools(body: dict[str, Any]) -> dict[str, Any]:
    """``tools`` as sent, and ``tool_choice`` as "none", "auto" or "required" (with the forced function's name)."""
    tools = body.get("tools") or []
    if not isinstance(tools, list) or not all(
        isinstance(t, dict)
        and t.get("type") == "function"
        and isinstance(f := t.get("function"), dict)
        and isinstance(f.get("name"), str)
        and f["name"]
        for t in tools
    ):
        raise _invalid("tools", "a list of {'type': 'function', 'function': {'name': ...}} objects")
    choice, forced = body.get("tool_choice"), None
    if choice is None:
        choice = "auto" if tools else "none"  # OpenAI's defaults
    elif isinstance(choice, dict):
        function = choice.get("function")
        forced = function.get("name") if choice.get("type") == "function" and isinstance(function, dict) else None
        if forced not in [t["function"]["name"] for t in tools]:
            raise _invalid("tool_choice", "a function named in 'tools'")
        choice = "required"
    elif choice not in ("none", "auto", "required"):
        raise _invalid("tool_choice", "'none', 'auto', 'required' or a function")
    if choice == "required" and not tools:
        raise _invalid("tool_choice", "'none' or 'auto' when there are no 'tools'")
    return {"tools": tools, "tool_choice": choice, "forced_tool": forced}


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:  # what clients send for a batch of one
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _invalid("prompt", "a string (or a list of one string: batches are not supported)")
    return prompt


def _check_modalities(engine: Engine, model: str, messages: list[dict[str, Any]] | None) -> None:
    wanted = {kind for m in messages or () for kind in m.get("media", ())}
    if missing := wanted - engine.input_modalities:
        raise ApiError(
            400,
            f"The model '{model}' on this node does not accept {' or '.join(sorted(missing))} input "
            f"(it accepts: {', '.join(sorted(engine.input_modalities))}).",
            code="unsupported_modality",
        )


# --- response shapes -------------------------------------------------------------


def _usage(gen: Generation) -> dict[str, Any]:
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


class ChatShape:
    """Chat completions: text in ``message`` / ``delta``, opened by a role chunk.

    A tool call (``gen.tool_call``, set by the engine before its first piece)
    streams as OpenAI does: the opening chunk names the function (with empty
    arguments), then each piece is a fragment of its JSON arguments.
    """

    id_prefix, object, chunk_object = "chatcmpl-", "chat.completion", "chat.completion.chunk"

    @staticmethod
    def inputs(body: dict[str, Any]) -> dict[str, Any]:
        return {"messages": _messages(body), **_tools(body)}

    @staticmethod
    def choice(gen: Generation, text: str) -> dict[str, Any]:
        if gen.tool_call is None:
            message = {"role": "assistant", "content": text}
        else:
            call = gen.tool_call
            function = {"name": call.name, "arguments": text}
            message = {"role": "assistant", "content": None, "tool_calls": [{**call.head(), "function": function}]}
        return {"index": 0, "message": message, "logprobs": None, "finish_reason": gen.finish_reason}

    @staticmethod
    def opening(gen: Generation) -> dict[str, Any] | None:
        if gen.tool_call is None:
            delta: dict[str, Any] = {"role": "assistant", "content": ""}
        else:
            call = {"index": 0, **gen.tool_call.head(), "function": {"name": gen.tool_call.name, "arguments": ""}}
            delta = {"role": "assistant", "content": None, "tool_calls": [call]}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}

    @staticmethod
    def chunk(gen: Generation, text: str | None, finish_reason: str | None) -> dict[str, Any]:
        if text is None:
            delta: dict[str, Any] = {}
        elif gen.tool_call is None:
            delta = {"content": text}
        else:
            delta = {"tool_calls": [{"index": 0, "function": {"arguments": text}}]}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


class TextShape:
    """Legacy text completions: ``text`` in every choice, no opening chunk."""

    id_prefix, object, chunk_object = "cmpl-", "text_completion", "text_completion"

    @staticmethod
    def inputs(body: dict[str, Any]) -> dict[str, Any]:
        return {"prompt": _prompt(body)}

    @staticmethod
    def choice(gen: Generation, text: str) -> dict[str, Any]:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": gen.finish_reason}

    @staticmethod
    def opening(gen: Generation) -> dict[str, Any] | None:
        return None

    @staticmethod
    def chunk(gen: Generation, text: str | None, finish_reason: str | None) -> dict[str, Any]:
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}


Shape = type[ChatShape] | type[TextShape]


# OpenAI's reasoning models (o-series, gpt-5) refuse max_tokens: they take max_completion_tokens.
REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")


def _generation(body: dict[str, Any], engine: Engine, shape: Shape) -> tuple[Generation, bool]:
    """Validate a completion request; also say whether its stream should end with usage."""
    model = _model(body, engine)
    if shape is ChatShape and body.get("max_tokens") is not None and REASONING_MODEL.match(model):
        raise ApiError(
            400,
            "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
            code="unsupported_parameter",
        )
    if body.get("n") not in (None, 1):
        raise ApiError(400, "Only n=1 is supported.", code="unsupported")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise _invalid("stop", "a string or a list of strings")
    stream = body.get("stream") or False
    options = body.get("stream_options") or {}
    if not isinstance(stream, bool) or not isinstance(options, dict):
        raise _invalid("stream", "a boolean, with 'stream_options' an object")
    max_completion = _int(body, "max_completion_tokens", 1)
    gen = Generation(
        id=shape.id_prefix + os.urandom(12).hex(),
        model=model,
        stream=stream,
        **shape.inputs(body),
        max_tokens=max_completion if max_completion is not None else _int(body, "max_tokens", 1),
        stop=tuple(stop or ()),
        temperature=_number(body, "temperature", 0, 2),
        top_p=_number(body, "top_p", 0, 1),
        seed=_int(body, "seed", -(2**63)),
    )
    _check_modalities(engine, model, gen.messages)
    return gen, stream and options.get("include_usage") is True


# --- answering -------------------------------------------------------------------


def _dropped(request: web.Request) -> web.Response:
    """Cut the connection; aiohttp then finds it closed and sends nothing more."""
    if request.transport is not None:
        request.transport.close()
    return web.Response()


async def _whole(gen: Generation, shape: Shape, pieces: AsyncIterator[str]) -> web.Response:
    text = "".join([piece async for piece in pieces])
    body = {"id": gen.id, "object": shape.object, "created": int(time.time()), "model": gen.model}
    return json_response({**body, "choices": [shape.choice(gen, text)], "usage": _usage(gen)})


async def _stream(
    request: web.Request, gen: Generation, shape: Shape, include_usage: bool, pieces: AsyncIterator[str]
) -> web.StreamResponse:
    first = await anext(pieces, None)  # errors before any output still get their own status
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    head: dict[str, Any] = {"id": gen.id, "object": shape.chunk_object, "created": int(time.time()), "model": gen.model}
    if include_usage:
        head["usage"] = None

    async def send(choices: list[dict[str, Any]], **extra: Any) -> None:
        await response.write(b"data: " + orjson.dumps({**head, "choices": choices, **extra}) + b"\n\n")

    try:
        if (opening := shape.opening(gen)) is not None:
            await send([opening])
        if first is not None:
            await send([shape.chunk(gen, first, None)])
            async for piece in pieces:
                await send([shape.chunk(gen, piece, None)])
    except ApiError as exc:  # too late for an error status: end without [DONE], like a crashed node
        raise DropConnection from exc
    await send([shape.chunk(gen, None, gen.finish_reason)])
    if include_usage:
        await send([], usage=_usage(gen))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _answer(request: web.Request, shape: Shape) -> web.StreamResponse:
    engine = request.app[ENGINE]
    body = await read_json(request)
    gen, include_usage = _generation(body, engine, shape)
    engine.stats.started()
    outcome = "failed"
    pieces = engine.generate(gen)
    try:
        if gen.stream:
            response = await _stream(request, gen, shape, include_usage, pieces)
        else:
            response = await _whole(gen, shape, pieces)
        outcome = "completed"
        return response
    except asyncio.CancelledError:  # the client went away (aiohttp cancels the handler)
        outcome = "cancelled"
        raise
    except ConnectionResetError:  # the client went away while we were writing
        outcome = "cancelled"
        return _dropped(request)
    except DropConnection:
        return _dropped(request)
    finally:
        await pieces.aclose()  # stops the engine if the answer was abandoned
        if gen.injected_failure:  # e.g. a client giving up on an injected hang
            outcome = "failed"
        engine.stats.finished(gen, outcome)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _answer(request, ChatShape)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _answer(request, TextShape)


async def embeddings(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    body = await read_json(request)
    model = _model(body, engine)
    if not engine.can_embed(model):
        raise ApiError(400, f"The model '{model}' does not support embeddings.", code="unsupported")
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not (isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts)):
        raise _invalid("input", "a string or a non-empty list of strings")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise _invalid("encoding_format", "'float' or 'base64'")
    input_type = body.get("input_type")  # for models trained with query/passage prefixes (see embedders.py)
    if input_type not in (None, "query", "passage"):
        raise _invalid("input_type", "'query' or 'passage'")
    dimensions = _int(body, "dimensions", 1)
    if dimensions is not None and (fixed := engine.embedding_dimensions(model)) not in (None, dimensions):
        raise ApiError(400, f"The model '{model}' makes {fixed}-dimensional vectors only.", code="invalid_value")
    # Counted like a completion (an answer with no output tokens), so tests see every request a node served.
    record = Generation(id="emb-" + os.urandom(12).hex(), model=model, stream=False)
    engine.stats.started()
    outcome = "failed"
    try:
        vectors, record.prompt_tokens = await engine.embed(model, texts, input_type=input_type)
        outcome = "completed"
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        engine.stats.finished(record, outcome)
    used = record.prompt_tokens
    data = [{"object": "embedding", "index": i, "embedding": _encode(v, encoding)} for i, v in enumerate(vectors)]
    return json_response(
        {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": used, "total_tokens": used}}
    )


MAX_IMAGES = 10
MAX_IMAGE_SIDE = 4096


def _size(body: dict[str, Any]) -> tuple[int, int]:
    size = body.get("size") or "1024x1024"
    width, _, height = size.partition("x") if isinstance(size, str) else ("", "", "")
    if not (width.isdigit() and height.isdigit() and 1 <= int(width) <= MAX_IMAGE_SIDE and 1 <= int(height) <= MAX_IMAGE_SIDE):
        raise _invalid("size", f"'<width>x<height>' with sides from 1 to {MAX_IMAGE_SIDE}")
    return int(width), int(height)


async def image_generations(request: web.Request) -> web.Response:
    """``/v1/images/generations``: n real PNGs (``b64_json`` only: a node keeps no files to link to)."""
    engine = request.app[ENGINE]
    body = await read_json(request)
    model = _model(body, engine)
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise _invalid("prompt", "a non-empty string")
    n = _int(body, "n", 1) or 1
    if n > MAX_IMAGES:
        raise _invalid("n", f"an integer from 1 to {MAX_IMAGES}")
    size = _size(body)
    if (body.get("response_format") or "b64_json") != "b64_json":
        raise ApiError(400, "Only response_format 'b64_json' is supported.", code="unsupported")
    record = Generation(id="img-" + os.urandom(12).hex(), model=model, stream=False)
    engine.stats.started()
    outcome = "failed"
    try:
        images = await engine.images(record, prompt, n, size)
        outcome = "completed"
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    except DropConnection:
        return _dropped(request)
    finally:
        engine.stats.finished(record, outcome)
    data = [{"b64_json": base64.b64encode(image).decode(), "revised_prompt": prompt} for image in images]
    return json_response({"created": int(time.time()), "data": data})


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    """base64 is what the openai SDK asks for by default: little-endian float32s."""
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


async def health(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    status = {"status": "ok", "engine": engine.name, "models": engine.models, "active": engine.stats.active}
    return json_response(status)


async def models(request: web.Request) -> web.Response:
    created = request.app[STARTED]
    data = [{"id": m, "object": "model", "created": created, "owned_by": "node"} for m in request.app[ENGINE].models]
    return json_response({"object": "list", "data": data})


async def stats(request: web.Request) -> web.Response:
    return json_response(request.app[ENGINE].stats.snapshot())


def _control(control: Control) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return json_response(control(await read_json(request)))

    return handler


DIALECTS = ("openai", "ollama", "anthropic", "thox")


def require_key(api_key: str):
    """Like a hosted upstream: /v1 answers 401 unless ``Authorization: Bearer <api_key>``."""
    expected = f"Bearer {api_key}"

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        presented = request.headers.get("Authorization", "")
        if request.path.startswith("/v1/") and presented != expected:
            # OpenAI's message quotes part of the key it was given: an adapter must not pass it on.
            key = presented.removeprefix("Bearer ")
            shown = f"{key[:3]}{'*' * max(len(key) - 7, 0)}{key[-4:]}" if len(key) > 7 else "***"
            message = f"Incorrect API key provided: {shown}. You can find your API key at https://platform.openai.com/account/api-keys."
            return error_response(401, message, "invalid_request_error", "invalid_api_key")
        return await handler(request)

    return check


def build_app(
    engine: Engine, dialect: str = "openai", api_key: str = "", cluster: thox.Cluster | None = None, identity=None
) -> web.Application:
    """The OpenAI routes; with the "ollama" dialect also Ollama's native ``/api`` (see ``ollama.py``);
    with the "anthropic" dialect Anthropic's Messages API instead of the OpenAI routes (``anthropic.py``);
    with the "thox" dialect inference needs an online member of ``cluster`` (its API is :func:`thox.build_cluster_app`);
    with an ``identity`` (attestation.NodeIdentity) the attestation route."""
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, got {dialect!r}")
    if dialect == "anthropic":
        middlewares = anthropic.middlewares(api_key)
    else:
        middlewares = [errors, require_key(api_key)] if api_key else [errors]
    if dialect == "thox":
        cluster = cluster or thox.Cluster(engine)
        middlewares.append(thox.serving_guard(cluster))
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    app[ENGINE] = engine
    app[STARTED] = int(time.time())
    app.add_routes([web.get("/health", health), web.get("/stats", stats)])
    if dialect == "anthropic":
        anthropic.add_routes(app, engine)
    else:
        app.add_routes(
            [
                web.get("/v1/models", models),
                web.post("/v1/chat/completions", chat_completions),
                web.post("/v1/completions", completions),
                web.post("/v1/embeddings", embeddings),
                web.post("/v1/images/generations", image_generations),
            ]
        )
    if identity is not None:
        from .attestation import handler

        app.router.add_post("/v1/attestation", handler(identity))
        if dialect != "anthropic":
            from . import sealed

            app.router.add_post("/v1/sealed/chat/completions", sealed.handler(identity))
    controls = engine.controls()
    if dialect == "ollama":
        ollama.add_routes(app, engine)
    elif dialect == "thox" and cluster is not None:
        controls = cluster.wrap_controls(controls)
    for (method, path), control in controls.items():
        app.router.add_route(method, path, _control(control))

    async def close_engine(app: web.Application) -> None:
        await engine.close()

    app.on_cleanup.append(close_engine)
    return app


async def _serve(
    engine: Engine, host: str, port: int, banner: str, dialect: str, api_key: str,
    cluster: thox.Cluster | None, cluster_port: int, identity=None,
) -> None:
    if dialect == "thox":
        cluster = cluster or thox.Cluster(engine)
    runner = web.AppRunner(
        build_app(engine, dialect, api_key, cluster, identity), handler_cancellation=True, access_log=None, shutdown_timeout=5.0
    )
    runners = [runner]
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()
        bound_port = runner.addresses[0][1]  # the real one when asked for port 0
        print(f"{banner} listening on http://{host}:{bound_port}", flush=True)
        if cluster is not None:
            keyed = [require_key(api_key)] if api_key else []
            cluster_runner = web.AppRunner(thox.build_cluster_app(cluster, keyed), access_log=None, shutdown_timeout=5.0)
            runners.append(cluster_runner)
            await cluster_runner.setup()
            await web.TCPSite(cluster_runner, host, cluster_port).start()
            print(f"thox cluster API listening on http://{host}:{cluster_runner.addresses[0][1]}", flush=True)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await stopping.wait()
    finally:
        for r in reversed(runners):
            await r.cleanup()


def serve(
    engine: Engine, host: str, port: int, banner: str, dialect: str = "openai", api_key: str = "",
    cluster: thox.Cluster | None = None, cluster_port: int = thox.DEFAULT_CLUSTER_PORT, identity=None,
) -> None:
    """Serve until SIGTERM or SIGINT, printing ``<banner> listening on http://HOST:PORT`` when ready
    (and, for the "thox" dialect, ``thox cluster API listening on http://HOST:PORT`` after it)."""
    if identity is not None:
        print(f"{banner} attests with measurement {identity.measurement} (mode {engine.attestation_mode})", flush=True)
    asyncio.run(_serve(engine, host, port, banner, dialect, api_key, cluster, cluster_port, identity))
