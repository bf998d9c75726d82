"""POST /v1/chat/completions: the paid request, step by step.

parse → authenticate → validate → price → rate limit → reserve → node
(failover before the first token) → stream/answer → settle. Every step
fails closed with the one error envelope.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from django.utils import timezone

from billing.pricing import Usage
from nodes import router
from nodes.adapters import NodeError, adapter_for
from nodes.registry import ServedModel

from . import background, idempotency, limits, schemas, tokens
from .catalog import ModelEntry, catalog
from .context import ApiRequest, json_response, replay_response
from .errors import GatewayError, envelope
from .paid import PaidRequest
from .sse import DONE, QueueSSEResponse, frame


def _usage_from(raw: dict[str, Any] | None) -> Usage | None:
    if not raw:
        return None
    details = raw.get("prompt_tokens_details") or {}
    prompt = int(raw.get("prompt_tokens") or 0)
    return Usage(
        input_tokens=prompt,
        output_tokens=int(raw.get("completion_tokens") or 0),
        cached_input_tokens=min(prompt, int(details.get("cached_tokens") or 0)),
    )


def _node_error(exc: NodeError) -> GatewayError:
    if exc.permanent:
        return GatewayError("invalid_request", f"The model rejected the request: {exc}")
    return GatewayError("upstream_unavailable", "No node could serve the request; nothing was charged.")


def _node_info(served: ServedModel) -> dict[str, str]:
    return {"id": served.node.public_id, "attestation": served.node.attestation, "region": served.node.region}


def _node_headers(served: ServedModel) -> dict[str, str]:
    return {"x-node-id": served.node.public_id, "x-node-attestation": served.node.attestation}


async def chat_completions(req: ApiRequest):
    key = await req.authenticate(publishable_ok=True)
    body = await req.body()
    data = schemas.parse_json(body)
    chat = schemas.validate(schemas.ChatCompletionRequest, data)
    entry = await catalog.get(chat.model)
    price = entry.price_at(timezone.now())
    if price is None:
        raise GatewayError("model_not_found", f"The model '{chat.model}' has no price yet.", param="model")
    output_cap = chat.output_cap or entry.max_output_tokens
    if output_cap > entry.max_output_tokens:
        raise GatewayError(
            "invalid_request",
            f"max_tokens is {output_cap}, above this model's limit of {entry.max_output_tokens}.",
            param="max_completion_tokens" if chat.max_completion_tokens else "max_tokens",
        )
    prompt_bound = tokens.chat_prompt_bound(data)
    claim = idempotency.from_request(
        req.headers, body, project_id=key.project_id, required=key.idempotency_required
    )
    decision = await limits.admit(key=key, tokens=prompt_bound + output_cap)
    req.extra_headers.update(decision.headers())
    candidates = router.order(entry.served_by)
    if not any(s.node.healthy for s in candidates):
        raise GatewayError("no_nodes_available", f"No healthy node is serving '{chat.model}' right now; retry later.")

    paid = PaidRequest(
        key=key,
        request_id=req.request_id,
        endpoint="chat.completions",
        price=price,
        stream=chat.stream,
        claim=claim,
        session_id=req.session_id,
        admitted_tokens=decision.cost,
    )
    stored = await paid.reserve(max_input_tokens=prompt_bound, max_output_tokens=output_cap)
    if stored is not None:
        return replay_response(req, stored)

    # The node must never produce more than was reserved.
    upstream = dict(data)
    upstream.pop("max_completion_tokens", None)
    upstream["max_tokens"] = output_cap
    try:
        if chat.stream:
            upstream["stream_options"] = {"include_usage": True}
            return await _stream(req, paid, entry, candidates, upstream, chat.include_usage)
        return await _complete(req, paid, entry, candidates, upstream)
    except Exception:
        if not paid.finished:  # a bug, not a node failure: release the hold now, not at the sweeper
            await paid.finish(usage=None, status_code=500, error_code="internal_error")
        raise


async def _first_node(candidates, upstream, attempt):
    """Try nodes in order until ``attempt(served)`` succeeds; failover happens only
    here, before anything reached the client. A permanent error (a bad request)
    stops at once; a retryable one marks the node down and tries the next."""
    last: NodeError | None = None
    for served in candidates:
        upstream["model"] = served.upstream_model
        try:
            result = await attempt(served)
        except NodeError as exc:
            last = exc
            if exc.permanent:
                break
            router.failed(served.node.id)
            continue
        router.succeeded(served.node.id)
        return served, result
    raise last or NodeError("no node available", permanent=False)


async def _complete(req: ApiRequest, paid: PaidRequest, entry: ModelEntry, candidates, upstream) -> Any:
    async def answer(served: ServedModel) -> dict:
        with router.in_flight(served.node.id):
            return await adapter_for(served.node).chat(upstream)

    try:
        served, result = await _first_node(candidates, upstream, answer)
    except NodeError as exc:
        error = _node_error(exc)
        await paid.finish(usage=None, status_code=error.status, error_code=error.code)
        raise error from None
    usage = _usage_from(result.get("usage"))
    if usage is None:  # rare: an upstream that reports no usage is billed an estimate
        usage = Usage(
            input_tokens=tokens.estimate_prompt_tokens(upstream),
            output_tokens=min(upstream["max_tokens"], tokens.estimate_output_tokens(result.get("choices") or [])),
        )
    result["id"] = f"chatcmpl-{paid.request_id}"
    result["model"] = entry.name
    result["node"] = _node_info(served)
    payload = orjson.dumps(result)
    headers = {**req.extra_headers, **_node_headers(served)}
    stored = idempotency.StoredResponse(200, "application/json", headers, payload) if paid.claim else None
    await paid.finish(usage=usage, status_code=200, node_id=served.node.public_id, stored=stored)
    return json_response(req, payload, headers=_node_headers(served))


async def _open_stream(served: ServedModel, upstream):
    """A node's stream and its first chunk (an empty stream counts as a failure)."""
    chunks = adapter_for(served.node).chat_stream(upstream)
    try:
        return await anext(chunks), chunks
    except StopAsyncIteration:
        raise NodeError("node ended the stream without output", permanent=False) from None


class _StreamRun:
    """Reads the node, frames events for the client, settles when it ends."""

    def __init__(self, paid: PaidRequest, entry: ModelEntry, served: ServedModel, include_usage: bool, upstream):
        self.paid, self.entry, self.served = paid, entry, served
        self.include_usage = include_usage
        self.upstream = upstream
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.sent: list[bytes] = []  # kept for the idempotent replay
        self.next_id = 1
        self.usage: dict | None = None
        self.generated = 0  # content chunks: one token each on the nodes we run
        self.completion_id = f"chatcmpl-{paid.request_id}"
        self.task: asyncio.Task | None = None
        self.relaying = True  # a disconnect cancels the relay, never the settlement after it

    def emit(self, data: bytes) -> None:
        event = frame(self.next_id, data)
        self.next_id += 1
        if self.paid.claim is not None:
            self.sent.append(event)
        self.queue.put_nowait(event)

    def client_gone(self) -> None:
        if self.relaying and self.task is not None and not self.task.done():
            self.task.cancel()

    def _partial_usage(self) -> Usage | None:
        """What the node produced before the stream was cut; None if nothing."""
        if not self.generated:
            return None
        seen = _usage_from(self.usage)
        prompt = seen.input_tokens if seen else tokens.estimate_prompt_tokens(self.upstream)
        output = max(seen.output_tokens if seen else 0, self.generated)
        return Usage(input_tokens=prompt, output_tokens=min(output, self.upstream["max_tokens"]))

    async def _relay(self, chunk: dict, chunks) -> None:
        first = True
        while True:
            if chunk.get("usage"):
                self.usage = chunk["usage"]
            if chunk.get("choices"):
                for choice in chunk["choices"]:
                    delta = choice.get("delta") or {}
                    if delta.get("content") or delta.get("tool_calls"):
                        self.generated += 1
                chunk["id"] = self.completion_id
                chunk["model"] = self.entry.name
                chunk.pop("usage", None)
                if first:
                    chunk["node"] = _node_info(self.served)
                    first = False
                self.emit(orjson.dumps(chunk))
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                return

    async def run(self, first: dict, chunks, ttft_ms: int) -> None:
        """Relay, then settle, then send the closing events: a client that sees
        the end of the stream can already see the settled balance."""
        try:
            with router.in_flight(self.served.node.id):
                try:
                    try:
                        await self._relay(first, chunks)
                    finally:
                        self.relaying = False
                except NodeError:
                    router.failed(self.served.node.id)
                    message = "The node failed mid-answer; you are billed only for what it generated."
                    error = orjson.dumps(envelope("upstream_unavailable", message, self.paid.request_id))
                    await self._finish(self._partial_usage(), 502, "upstream_unavailable", ttft_ms, closing=[error])
                    return
                except asyncio.CancelledError:
                    await chunks.aclose()  # closes the node connection: it stops generating
                    await self._finish(self._partial_usage(), 499, "client_disconnected", ttft_ms, closing=[])
                    raise
                usage = _usage_from(self.usage) or self._partial_usage()
                closing = [orjson.dumps(self._usage_chunk(usage))] if self.include_usage and usage else []
                await self._finish(usage, 200, "", ttft_ms, closing=[*closing, DONE])
        finally:
            self.queue.put_nowait(None)

    def _usage_chunk(self, usage: Usage) -> dict:
        return {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.entry.name,
            "choices": [],
            "usage": {
                "prompt_tokens": usage.input_tokens,
                "completion_tokens": usage.output_tokens,
                "total_tokens": usage.input_tokens + usage.output_tokens,
                "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
            },
        }

    async def _finish(
        self, usage: Usage | None, status: int, error_code: str, ttft_ms: int, *, closing: list[bytes]
    ) -> None:
        tail = [frame(self.next_id + i, data) for i, data in enumerate(closing)]
        stored = None
        if self.paid.claim is not None:  # replayed exactly as this client saw it
            stored = idempotency.StoredResponse(
                200, "text/event-stream", _node_headers(self.served), b"".join(self.sent + tail)
            )
        await self.paid.finish(
            usage=usage,
            status_code=status,
            error_code=error_code,
            node_id=self.served.node.public_id,
            ttft_ms=ttft_ms,
            stored=stored,
        )
        for data in closing:
            self.emit(data)


async def _stream(req: ApiRequest, paid: PaidRequest, entry: ModelEntry, candidates, upstream, include_usage: bool):
    started = time.monotonic()
    try:
        served, (first, chunks) = await _first_node(candidates, upstream, lambda served: _open_stream(served, upstream))
    except NodeError as exc:
        error = _node_error(exc)
        await paid.finish(usage=None, status_code=error.status, error_code=error.code)
        raise error from None
    run = _StreamRun(paid, entry, served, include_usage, upstream)
    ttft_ms = int((time.monotonic() - started) * 1000)
    run.task = background.spawn(run.run(first, chunks, ttft_ms), name=f"stream:{paid.request_id}")
    headers = {**req.response_headers(), **_node_headers(served), "x-accel-buffering": "no"}
    return QueueSSEResponse(run.queue, headers=headers, on_disconnect=run.client_gone)
