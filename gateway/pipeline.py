"""The paid request, whatever protocol it arrived in.

parse → authenticate → validate → price → rate limit → reserve → node
(failover before the first token) → answer or stream → settle. Every step
fails closed with the protocol's error shape.

A *dialect* (gateway/protocols/) translates one client protocol — OpenAI chat,
legacy completions, embeddings, the Responses API, Anthropic Messages — into
the OpenAI call every node speaks, and the node's answer and stream chunks
back. Everything about money, limits, failover and resumable streams lives
here once.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from django.conf import settings
from django.utils import timezone

from billing.pricing import Usage
from nodes import router
from nodes.adapters import NodeError, adapter_for
from nodes.registry import ServedModel

from . import background, idempotency, limits, schemas, streams, tokens
from .catalog import ModelEntry, catalog
from .context import ApiRequest, json_response, replay_response
from .errors import GatewayError
from .paid import PaidRequest
from .protocols.base import Dialect, Encoder
from .sse import SSEResponse, frame

log = logging.getLogger(__name__)


def usage_from(raw: dict[str, Any] | None) -> Usage | None:
    if not raw:
        return None
    details = raw.get("prompt_tokens_details") or {}
    prompt = int(raw.get("prompt_tokens") or 0)
    return Usage(
        input_tokens=prompt,
        output_tokens=int(raw.get("completion_tokens") or 0),
        cached_input_tokens=min(prompt, int(details.get("cached_tokens") or 0)),
    )


def node_info(served: ServedModel) -> dict[str, Any]:
    """Who served the answer: every response says whether the node was confidential (attested)."""
    node = served.node
    return {
        "id": node.public_id,
        "attestation": node.attestation,
        "confidential": node.attestation == router.VERIFIED,
        "region": node.region,
    }


def node_headers(served: ServedModel) -> dict[str, str]:
    return {"x-node-id": served.node.public_id, "x-node-attestation": served.node.attestation}


def _node_error(exc: NodeError) -> GatewayError:
    if exc.permanent:
        return GatewayError("invalid_request", f"The model rejected the request: {exc}")
    return GatewayError("upstream_unavailable", "No node could serve the request; nothing was charged.")


async def handle(req: ApiRequest, dialect_cls: type[Dialect]):
    key = await req.authenticate(publishable_ok=dialect_cls.publishable_ok, scope=dialect_cls.scope)
    body = await req.body()
    dialect = dialect_cls(schemas.parse_json(body), request_id=req.request_id)
    entry = await catalog.get_for(key, dialect.model)
    price = entry.price_at(timezone.now())
    if price is None:
        raise GatewayError("model_not_found", f"The model '{dialect.model}' has no price yet.", param="model")
    if price.per_image:  # priced per image, not per token: never served here at a token price of 0
        raise GatewayError(
            "invalid_request", f"The model '{dialect.model}' generates images; use POST /v1/images/generations.",
            param="model",
        )
    output_cap = dialect.output_cap(entry.max_output_tokens)
    if output_cap > entry.max_output_tokens:
        raise GatewayError(
            "invalid_request",
            f"{dialect.output_param} is {output_cap}, above this model's limit of {entry.max_output_tokens}.",
            param=dialect.output_param,
        )
    # A prompt can never be longer than the context window: a longer one is refused by the node.
    prompt_bound = min(dialect.prompt_bound(), entry.context_window)
    candidates = candidates_for(entry, key, modalities=dialect.modalities)
    claim = idempotency.from_request(req.headers, body, project_id=key.project_id, required=key.idempotency_required)
    decision = await limits.admit(key=key, tokens=prompt_bound + output_cap)
    req.extra_headers.update(decision.headers())

    paid = PaidRequest(
        key=key,
        request_id=req.request_id,
        endpoint=dialect.endpoint,
        price=price,
        stream=dialect.stream,
        claim=claim,
        session_id=req.session_id,
        admitted_tokens=decision.cost,
    )
    paid.request_body = body
    try:
        stored = await paid.reserve(max_input_tokens=prompt_bound, max_output_tokens=output_cap)
    except idempotency.InProgress as exc:
        _give_back(key, decision.cost)  # nothing new runs: its tokens go back (it still counts as a request)
        if dialect.stream:  # the same streamed request again: resume it, never run it twice
            return await resume(req, exc.request_id, project_id=key.project_id)
        raise
    if stored is not None:
        _give_back(key, decision.cost)
        return replay_response(req, stored, after=streams.parse_last_event_id(req.headers))

    upstream = dialect.upstream(output_cap)
    try:
        if dialect.stream:
            return await _stream(req, paid, dialect, entry, candidates, upstream)
        return await _complete(req, paid, dialect, entry, candidates, upstream)
    except Exception:
        if not paid.finished:  # a bug, not a node failure: release the hold now, not at the sweeper
            await paid.finish(usage=None, status_code=500, error_code="internal_error")
        raise


def no_nodes(message: str) -> GatewayError:
    retry = str(settings.NODE_HEALTH_INTERVAL_SECONDS)
    return GatewayError("no_nodes_available", message, headers={"retry-after": retry})


def candidates_for(entry: ModelEntry, key, *, modalities: frozenset[str] = frozenset({"text"})) -> list[ServedModel]:
    """The nodes that may serve this request, in the order to try them.

    Refused here, before any limit or money is touched: content the model's nodes
    cannot take (400), and no eligible healthy node (503 with Retry-After).
    """
    served = [s for s in entry.served_by if modalities <= s.modalities]
    if not served:
        wanted = ", ".join(sorted(modalities - {"text"}))
        raise GatewayError("unsupported_content", f"The model '{entry.name}' does not accept {wanted} input.", param="messages")
    now = time.time()
    allowed = [s for s in served if router.eligible(s, allow_non_confidential=key.allow_non_confidential, now=now)]
    if not allowed:
        if not key.allow_non_confidential and any(s.node.attestation == router.NONE for s in served):
            raise no_nodes(
                f"No attested node is serving '{entry.name}'; the nodes that serve it are not confidential "
                "and this project does not allow non-confidential nodes (see the project's settings)."
            )
        raise no_nodes(f"No node with a verified, current attestation is serving '{entry.name}' right now; retry later.")
    if not any(s.node.healthy for s in allowed):
        raise no_nodes(f"No healthy node is serving '{entry.name}' right now; retry later.")
    return router.order(allowed, region=key.region_preference)


def _give_back(key, tokens: int) -> None:
    background.spawn(limits.refund(key=key, tokens=tokens), name="refund:replay")


async def first_node(paid: PaidRequest, candidates, upstream, attempt):
    """Try nodes in order until ``attempt(served)`` succeeds; failover happens only
    here, before anything reached the client. A permanent error (a bad request)
    stops at once; a retryable one trips the node's breaker, is logged, and the
    next node is tried, up to NODE_MAX_ATTEMPTS nodes. Jobs (gateway/images.py,
    gateway/agents/) fail over the same way; their ``paid`` is a gateway.paidjobs.JobBill."""
    last: NodeError | None = None
    tries = candidates[: settings.NODE_MAX_ATTEMPTS]
    for n, served in enumerate(tries, 1):
        node = served.node
        paid.meta.attempts = n
        upstream["model"] = served.upstream_model
        router.trying(node.id)
        try:
            result = await attempt(served)
        except NodeError as exc:
            last = exc
            if exc.permanent:
                router.abandoned(node.id)
                break
            router.failed(node.id)
            log.warning(
                "request %s: node %s failed before the first token (attempt %d of %d, %s): %s",
                paid.request_id, node.public_id, n, len(tries), exc.status or "no status", exc,
            )
            continue
        except BaseException:
            router.abandoned(node.id)
            raise
        router.succeeded(node.id)
        return served, result
    raise last or NodeError("no node available", permanent=False)


async def _complete(req: ApiRequest, paid: PaidRequest, dialect: Dialect, entry: ModelEntry, candidates, upstream):
    async def answer(served: ServedModel) -> dict:
        with router.in_flight(served.node.id):
            return await getattr(adapter_for(served.node), dialect.call)(upstream)

    try:
        served, result = await first_node(paid, candidates, upstream, answer)
    except NodeError as exc:
        error = _node_error(exc)
        await paid.finish(usage=None, status_code=error.status, error_code=error.code)
        raise error from None
    usage = usage_from(result.get("usage"))
    if usage is None:  # rare: an upstream that reports no usage is billed an estimate
        usage = Usage(
            input_tokens=tokens.estimate_from_bound(dialect.prompt_bound()),
            output_tokens=min(upstream.get("max_tokens") or 0, tokens.estimate_output_tokens(result.get("choices") or [])),
        )
    obj = dialect.answer(result, usage, node_info(served), entry.name)
    payload = orjson.dumps(obj)
    headers = {**req.extra_headers, **node_headers(served)}
    stored = idempotency.StoredResponse(200, "application/json", headers, payload) if paid.claim else None
    await paid.finish(
        usage=usage, status_code=200, node_id=served.node.public_id, stored=stored, after=dialect.store(obj, paid.key),
        response_body=payload,
    )
    return json_response(req, payload, headers=node_headers(served))


async def _open_stream(served: ServedModel, call: str, upstream):
    """A node's stream and its first chunk (an empty stream counts as a failure)."""
    chunks = getattr(adapter_for(served.node), call + "_stream")(upstream)
    try:
        return await anext(chunks), chunks
    except StopAsyncIteration:
        raise NodeError("node ended the stream without output", permanent=False) from None


def _pieces(chunk: dict) -> int:
    """Output pieces in a node chunk: one token each on the nodes we run."""
    n = 0
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta")
        if delta is not None:
            if delta.get("content") or delta.get("tool_calls"):
                n += 1
        elif choice.get("text"):
            n += 1
    return n


class StreamRun:
    """Reads the node, frames the dialect's events into the stream log, settles at the end.

    The client is a follower of the log. When the last follower leaves, the node
    keeps generating for the project's resume window; if nobody is back by then
    the node request is cancelled and what was generated is billed.
    """

    def __init__(self, paid: PaidRequest, dialect: Dialect, encoder: Encoder, served: ServedModel, upstream,
                 log: streams.StreamLog, resume_seconds: float):
        self.paid, self.dialect, self.encoder, self.served = paid, dialect, encoder, served
        self.upstream = upstream
        self.log = log
        self.resume_seconds = resume_seconds
        self.usage: dict | None = None
        self.generated = 0
        self.task: asyncio.Task | None = None
        self.reaper: asyncio.Task | None = None
        self.relaying = True  # a disconnect cancels the relay, never the settlement after it
        log.on_idle = self.client_gone

    @property
    def next_id(self) -> int:
        return len(self.log.frames) + 1

    def emit(self, events) -> None:
        for name, data in events:
            self.log.append(frame(self.next_id, data, name))

    def client_gone(self) -> None:
        """Every follower left: cancel now, or after the resume window if nobody returns."""
        if not self.relaying or self.task is None or self.task.done():
            return
        if self.resume_seconds <= 0:
            self.task.cancel()
        elif self.reaper is None or self.reaper.done():
            self.reaper = background.spawn(self._reap(), name=f"reap:{self.paid.request_id}")

    async def _reap(self) -> None:
        idle_since = time.monotonic()
        while self.relaying:
            await asyncio.sleep(min(1.0, self.resume_seconds))
            if self.log.attached or await streams.watched(self.log.request_id):
                idle_since = time.monotonic()
                continue
            if time.monotonic() - idle_since >= self.resume_seconds:
                if self.relaying and self.task is not None:
                    self.task.cancel()
                return

    def _partial_usage(self) -> Usage | None:
        """What the node produced before the stream was cut; None if nothing."""
        if not self.generated:
            return None
        seen = usage_from(self.usage)
        prompt = seen.input_tokens if seen else tokens.estimate_from_bound(self.dialect.prompt_bound())
        output = max(seen.output_tokens if seen else 0, self.generated)
        return Usage(input_tokens=prompt, output_tokens=min(output, self.upstream["max_tokens"]))

    async def _relay(self, chunk: dict, chunks) -> None:
        while True:
            if chunk.get("usage"):
                self.usage = chunk["usage"]
            if chunk.get("choices"):
                self.generated += _pieces(chunk)
                self.emit(self.encoder.chunk(chunk))
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
                    usage = self._partial_usage()
                    await self._finish(usage, 502, "upstream_unavailable", ttft_ms, self.encoder.fail(message, usage))
                    return
                except asyncio.CancelledError:
                    await chunks.aclose()  # closes the node connection: it stops generating
                    usage = self._partial_usage()
                    await self._finish(usage, 499, "client_disconnected", ttft_ms, self.encoder.cancelled(usage))
                    raise
                usage = usage_from(self.usage) or self._partial_usage()
                await self._finish(usage, 200, "", ttft_ms, self.encoder.finish(usage))
        finally:
            self.log.close()

    async def _finish(self, usage: Usage | None, status: int, error_code: str, ttft_ms: int, closing) -> None:
        first = self.next_id
        tail = [frame(first + i, data, name) for i, (name, data) in enumerate(closing)]
        stored = None
        if self.paid.claim is not None:  # replayed exactly as this client saw it
            stored = idempotency.StoredResponse(
                200, "text/event-stream", node_headers(self.served), self.log.body() + b"".join(tail)
            )
        await self.paid.finish(
            usage=usage,
            status_code=status,
            error_code=error_code,
            node_id=self.served.node.public_id,
            ttft_ms=ttft_ms,
            stored=stored,
            after=self.dialect.store(self.encoder.final(), self.paid.key),
            response_body=lambda: self.log.body() + b"".join(tail),  # joined only if the project keeps bodies
        )
        for event in tail:
            self.log.append(event)


async def _stream(req: ApiRequest, paid: PaidRequest, dialect: Dialect, entry: ModelEntry, candidates, upstream):
    started = time.monotonic()
    try:
        served, (first, chunks) = await first_node(
            paid, candidates, upstream, lambda served: _open_stream(served, dialect.call, upstream)
        )
    except NodeError as exc:
        error = _node_error(exc)
        await paid.finish(usage=None, status_code=error.status, error_code=error.code)
        raise error from None
    ttft_ms = int((time.monotonic() - started) * 1000)
    kept = {"x-request-id": req.request_id, **node_headers(served)}
    if req.session_id:
        kept["x-session-id"] = req.session_id
    log = streams.register(
        streams.StreamLog(req.request_id, project_id=paid.key.project_id, endpoint=dialect.endpoint, headers=kept)
    )
    encoder = dialect.encoder(entry.name, node_info(served))
    run = StreamRun(paid, dialect, encoder, served, upstream, log, paid.key.stream_resume_seconds)
    run.emit(encoder.start())
    follower = log.follow(0)
    run.task = background.spawn(run.run(first, chunks, ttft_ms), name=f"stream:{paid.request_id}")
    headers = {**req.response_headers(), **node_headers(served), "x-accel-buffering": "no"}
    return SSEResponse(follower, headers=headers)


async def resume(req: ApiRequest, request_id: str, *, project_id: int):
    follower, kept = await streams.open_follower(
        request_id, project_id=project_id, after=streams.parse_last_event_id(req.headers)
    )
    headers = {**req.response_headers(), **kept, "x-accel-buffering": "no"}
    return SSEResponse(follower, headers=headers)


async def stream_get(req: ApiRequest):
    """GET /v1/streams/{request_id}: replay a stream after Last-Event-ID, then follow it live."""
    key = await req.authenticate(publishable_ok=True, scope=None)
    return await resume(req, req.request.path_params["request_id"], project_id=key.project_id)
