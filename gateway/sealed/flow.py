"""``POST /v1/sealed/chat/completions``: a sealed request, routed and billed from its clear header.

parse the envelope → authenticate → model, price, limits → pick the addressed node (tier rules,
before anything is reserved) → rate limit → reserve from ``header.max_tokens`` and the
ciphertext's length → forward the envelope unchanged → relay the encrypted answer (JSON, or a
resumable SSE stream) → verify the node's signed usage receipt → settle from it (capped at the
reservation) and store it, or void, quarantine the node and tell the client.

Tiers ``high``/``maximum`` never decrypt anything here: the gateway holds no key that opens
the envelope or the answer. Tier ``standard`` is addressed to the gateway's own key
(keys.py): it decrypts, runs an ordinary chat through the pipeline's node machinery (any
eligible node, failover), encrypts the answer to the client and signs the receipt itself, so
the client-side code is the same for every tier.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from django.utils import timezone

from billing import ledger
from billing.pricing import Usage
from config.asyncdb import Stmt
from nodes import router
from nodes.adapters import NodeError, adapter_for
from nodes.quarantine import node_quarantine
from nodes.registry import ServedModel

from .. import background, idempotency, limits, pipeline, schemas, streams
from ..catalog import ModelEntry, catalog
from ..context import ApiRequest, json_response, replay_response
from ..errors import GatewayError, envelope
from ..paid import PaidRequest
from ..sse import DONE, SSEResponse, frame
from . import format as fmt
from .keys import gateway_keys

log = logging.getLogger(__name__)

ENDPOINT = "/v1/sealed/chat/completions"
TIER_HIGH, TIER_MAXIMUM, TIER_STANDARD = "high", "maximum", "standard"

_INSERT_RECEIPT = """
INSERT INTO gateway_usagereceipt (request_id, project_id, node_id, tier, signing_key, receipt, signature, verified,
                                  reason, input_tokens, output_tokens, cost, created_at)
VALUES (%(request_id)s, %(project_id)s, %(node_id)s, %(tier)s, %(signing_key)s, %(receipt)s, %(signature)s,
        %(verified)s, %(reason)s, %(input_tokens)s, %(output_tokens)s, %(cost)s, %(created_at)s)
"""


# --- routing: the tier rules ------------------------------------------------------------------


def _unavailable(message: str) -> GatewayError:
    return pipeline.no_nodes(message)


def addressed_node(entry: ModelEntry, envelope: fmt.Envelope) -> ServedModel:
    """The node the envelope is addressed to, if the tier allows it now; refused before any reservation.

    ``maximum``: the node's attestation must be verified and current (else 503, never another node).
    ``high``: the node must hold keys from a verified attestation (one that lapsed but never failed
    will do until it is checked again). Both: healthy, serving the model, and its attested X25519
    key equal to the one the client encrypted to (else 409 node_key_mismatch).
    """
    served = next((s for s in entry.served_by if s.node.public_id == envelope.node_id), None)
    if served is None:
        raise GatewayError(
            "invalid_request", f"No node '{envelope.node_id}' serves '{entry.name}'; list them with GET /v1/nodes.",
            param="recipient.node_id",
        )
    node = served.node
    if envelope.tier == TIER_MAXIMUM:
        if node.attestation != router.VERIFIED or node.attested_until is None or node.attested_until <= time.time():
            raise _unavailable(
                f"Node {node.public_id} has no verified, current attestation; the maximum tier is never served "
                "by any other node. Retry later or pick another attested node."
            )
    elif node.attestation != router.VERIFIED or not node.encryption_key:
        raise _unavailable(f"Node {node.public_id} has no attested encryption key; the {envelope.tier} tier needs one.")
    if not node.healthy or not router.usable(node.id):
        raise _unavailable(f"Node {node.public_id} is not healthy right now; retry later.")
    if node.encryption_key != envelope.recipient_key:
        raise GatewayError(
            "node_key_mismatch",
            f"The envelope is encrypted to a key node {node.public_id} no longer attests; refresh GET /v1/nodes "
            "and encrypt again. Nothing was charged.",
            param="recipient.encryption_key",
        )
    return served


# --- the receipt ---------------------------------------------------------------------------------


def _receipt_row(paid: PaidRequest, *, node_id: str, tier: str, signing_key: str, data: bytes, signature: bytes,
                 verified: bool, reason: str, fields: dict[str, Any] | None, cost: int) -> Stmt:
    return Stmt(_INSERT_RECEIPT, {
        "request_id": paid.request_id, "project_id": paid.key.project_id, "node_id": node_id, "tier": tier,
        "signing_key": signing_key or "", "receipt": data, "signature": signature, "verified": verified,
        "reason": reason, "input_tokens": int((fields or {}).get("input_tokens") or 0),
        "output_tokens": int((fields or {}).get("output_tokens") or 0), "cost": cost, "created_at": timezone.now(),
    })


def _raw(receipt: Any, name: str) -> bytes:
    try:
        return fmt.unb64(receipt.get(name), name) if isinstance(receipt, dict) else b""
    except fmt.EnvelopeError:
        return b""


class Sealed:
    """One sealed request after its reservation: where it went and how it is settled."""

    def __init__(self, req: ApiRequest, paid: PaidRequest, envelope: fmt.Envelope, *, prompt_bound: int,
                 served: ServedModel | None, candidates: list[ServedModel], plaintext: dict[str, Any] | None):
        self.req, self.paid, self.envelope = req, paid, envelope
        self.prompt_bound = prompt_bound
        self.served = served  # the addressed node (high/maximum); for standard, the node that answered
        self.candidates = candidates
        self.plaintext = plaintext
        self.key_hash = fmt.key_hash(paid.key.key_public_id)
        if envelope.tier == TIER_STANDARD:
            self.receipt_node, self.signing_key = fmt.GATEWAY_NODE_ID, gateway_keys().signing_key
        else:
            self.receipt_node, self.signing_key = served.node.public_id, served.node.signing_key or ""

    @property
    def node_public_id(self) -> str:
        return self.served.node.public_id if self.served is not None else ""

    def headers(self) -> dict[str, str]:
        out = {"x-sealed-tier": self.envelope.tier}
        if self.served is not None:
            out.update(pipeline.node_headers(self.served))
        return out

    async def settle(self, receipt: Any, *, stored=None, ttft_ms: int | None = None) -> GatewayError | None:
        """Verify the receipt and settle from it, storing it beside the request; on any fault void
        the charge, quarantine the node and return the error for the client."""
        env, paid = self.envelope, self.paid
        expected = {
            "request_id": paid.request_id, "payload_id": env.payload_id, "key_hash": self.key_hash,
            "request_hash": env.request_hash, "model": env.model, "node_id": self.receipt_node,
        }
        try:
            data, signature, fields = fmt.verify_receipt(self.signing_key, receipt, expected)
        except fmt.ReceiptError as exc:
            row = _receipt_row(
                paid, node_id=self.receipt_node, tier=env.tier, signing_key=self.signing_key,
                data=_raw(receipt, "receipt"), signature=_raw(receipt, "signature"), verified=False,
                reason=exc.reason[:64], fields=None, cost=0,
            )
            await paid.finish(usage=None, status_code=502, error_code="upstream_unavailable",
                              node_id=self.node_public_id, ttft_ms=ttft_ms, after=[row])
            if self.served is not None and env.tier != TIER_STANDARD:
                await node_quarantine(
                    node_id=self.served.node.id, public_id=self.served.node.public_id, reason="bad_receipt",
                    detail=f"request {paid.request_id}: {exc} ({exc.reason})",
                )
            return GatewayError(
                "upstream_unavailable",
                f"The node's usage receipt failed verification ({exc.reason}); nothing was charged and the node "
                "was taken out of service.",
            )
        # Never more than was reserved for: the prompt bound and the header's max_tokens.
        usage = Usage(
            input_tokens=min(fields["input_tokens"], self.prompt_bound),
            output_tokens=min(fields["output_tokens"], env.max_tokens),
        )
        if usage.input_tokens < fields["input_tokens"] or usage.output_tokens < fields["output_tokens"]:
            log.warning("request %s: receipt claims %s/%s tokens, above the reservation; capped", paid.request_id,
                        fields["input_tokens"], fields["output_tokens"])
        amount, _ = ledger.settlement_amount(paid.reservation, usage)
        row = _receipt_row(
            paid, node_id=self.receipt_node, tier=env.tier, signing_key=self.signing_key, data=data,
            signature=signature, verified=True, reason="", fields=fields, cost=amount,
        )
        await paid.finish(usage=usage, status_code=200, node_id=self.node_public_id, ttft_ms=ttft_ms, stored=stored,
                          after=[row])
        return None

    # --- producing the encrypted answer --------------------------------------------------------

    async def complete(self) -> dict[str, Any]:
        """The ``sealed.response`` object (answer ciphertext and receipt)."""
        env = self.envelope
        if env.tier != TIER_STANDARD:
            with router.in_flight(self.served.node.id):
                return await adapter_for(self.served.node).sealed_chat(
                    env.body, request_id=self.paid.request_id, key_hash=self.key_hash
                )
        upstream = self._upstream(stream=False)

        async def answer(served: ServedModel) -> dict:
            with router.in_flight(served.node.id):
                return await adapter_for(served.node).chat(upstream)

        self.served, result = await pipeline.first_node(self.paid, self.candidates, upstream, answer)
        usage = pipeline.usage_from(result.get("usage")) or Usage(input_tokens=0, output_tokens=0)
        sealer = fmt.ResponseSealer(env.client_public_key, env.payload_id)
        result["model"] = env.model
        return {"object": "sealed.response", "ephemeral_public_key": sealer.ephemeral_public_key,
                **sealer.seal(result), "receipt": self._gateway_receipt(usage)}

    async def open_stream(self) -> tuple[tuple[str, dict], AsyncIterator[tuple[str, dict]]]:
        """The first event and the rest, ``(name, data)``; NodeError before the first one."""
        env = self.envelope
        if env.tier != TIER_STANDARD:
            events = adapter_for(self.served.node).sealed_chat_stream(
                env.body, request_id=self.paid.request_id, key_hash=self.key_hash
            )
        else:
            upstream = self._upstream(stream=True)
            self.served, (first, chunks) = await pipeline.first_node(
                self.paid, self.candidates, upstream,
                lambda served: pipeline._open_stream(served, "chat", upstream),
            )
            events = self._gateway_events(first, chunks)
        try:
            return await anext(events), events
        except StopAsyncIteration:
            raise NodeError("node ended the stream without output", permanent=False) from None

    def _upstream(self, *, stream: bool) -> dict[str, Any]:
        body = {k: v for k, v in self.plaintext.items() if k not in ("model", "max_tokens", "stream", "stream_options")}
        body.update(model=self.envelope.model, max_tokens=self.envelope.max_tokens, stream=stream)
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _gateway_receipt(self, usage: Usage) -> dict[str, str]:
        env = self.envelope
        data = fmt.receipt_bytes(
            request_id=self.paid.request_id, payload_id=env.payload_id, key_hash=self.key_hash,
            request_hash=env.request_hash, model=env.model, node_id=fmt.GATEWAY_NODE_ID, measurement="",
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
        )
        return fmt.sign_receipt(gateway_keys().signing, data)

    async def _gateway_events(self, first: dict, chunks) -> AsyncIterator[tuple[str, dict]]:
        env = self.envelope
        sealer = fmt.ResponseSealer(env.client_public_key, env.payload_id)
        yield "sealed.start", {"ephemeral_public_key": sealer.ephemeral_public_key}
        usage, pieces, chunk = None, 0, first
        while True:
            if chunk.get("usage"):
                usage = chunk["usage"]
            pieces += pipeline._pieces(chunk)
            chunk["model"] = env.model
            yield "sealed.chunk", sealer.seal(chunk)
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
        counted = pipeline.usage_from(usage) or Usage(input_tokens=0, output_tokens=pieces)
        yield "sealed.receipt", {"receipt": self._gateway_receipt(counted)}


# --- the stream ---------------------------------------------------------------------------------------


class SealedRun:
    """Relays the node's encrypted events into a resumable stream log; settles at the receipt."""

    def __init__(self, sealed: Sealed, log: streams.StreamLog):
        self.sealed, self.log = sealed, log

    def emit(self, name: str | None, data: bytes) -> bytes:
        event = frame(len(self.log.frames) + 1, data, name)
        self.log.append(event)
        return event

    def _tail(self, events: list[tuple[str | None, bytes]]) -> list[bytes]:
        first = len(self.log.frames) + 1
        return [frame(first + i, data, name) for i, (name, data) in enumerate(events)]

    async def run(self, first: tuple[str, dict], events, ttft_ms: int) -> None:
        sealed, paid = self.sealed, self.sealed.paid
        node = sealed.served.node if sealed.served is not None else None
        receipt = None
        try:
            with router.in_flight(node.id) if node is not None else contextlib.nullcontext():
                try:
                    event = first
                    while True:
                        name, data = event
                        if name == "sealed.receipt":
                            receipt = data.get("receipt")
                        elif name in ("sealed.start", "sealed.chunk"):
                            self.emit(name, orjson.dumps(data))
                        try:
                            event = await anext(events)
                        except StopAsyncIteration:
                            break
                except NodeError as exc:
                    if node is not None:
                        router.failed(node.id)
                    log.warning("sealed request %s: node failed mid-answer: %s", paid.request_id, exc)
                    message = "The node failed mid-answer; without its signed receipt nothing is charged."
                    await self._fail(message, ttft_ms)
                    return
                except asyncio.CancelledError:
                    await events.aclose()
                    await paid.finish(usage=None, status_code=499, error_code="client_disconnected",
                                      node_id=sealed.node_public_id, ttft_ms=ttft_ms)
                    raise
            ok = [("sealed.receipt", orjson.dumps({"receipt": receipt})), (None, DONE)]
            tail = self._tail(ok)
            stored = None
            if paid.claim is not None:
                stored = idempotency.StoredResponse(200, "text/event-stream", self.log.headers,
                                                    self.log.body() + b"".join(tail))
            error = await sealed.settle(receipt, stored=stored, ttft_ms=ttft_ms)
            if error is not None:
                tail = self._tail([("error", orjson.dumps(envelope(error.code, error.message, paid.request_id))),
                                   (None, DONE)])
            for item in tail:
                self.log.append(item)
        except Exception:  # a bug, not a node failure: release the hold now and end the stream
            log.exception("sealed request %s: relay failed", paid.request_id)
            if not paid.finished:
                await self._fail("Internal error; nothing was charged.", ttft_ms, code="internal_error")
        finally:
            self.log.close()

    async def _fail(self, message: str, ttft_ms: int, code: str = "upstream_unavailable") -> None:
        paid = self.sealed.paid
        await paid.finish(usage=None, status_code=502 if code == "upstream_unavailable" else 500, error_code=code,
                          node_id=self.sealed.node_public_id, ttft_ms=ttft_ms)
        self.emit("error", orjson.dumps(envelope(code, message, paid.request_id)))
        self.emit(None, DONE)


# --- the handler -----------------------------------------------------------------------------------


def _node_error(exc: NodeError) -> GatewayError:
    if exc.code == "decryption_failed":
        return GatewayError(
            "invalid_request",
            "The node could not decrypt the envelope (a changed clear field, or encrypted to another key); "
            "nothing was charged.",
        )
    return pipeline._node_error(exc)


async def sealed_chat_completions(req: ApiRequest):
    # Secret keys only: a sealed request's point is a client holding its own key pair, and its
    # receipts are exported with the same key; a browser's publishable key gains nothing here.
    key = await req.authenticate(publishable_ok=False, scope="chat")
    body = await req.body()
    try:
        env = fmt.parse_envelope(schemas.parse_json(body))
    except fmt.EnvelopeError as exc:
        raise GatewayError("invalid_request", f"Invalid sealed envelope: {exc}", param=exc.field) from None
    entry = await catalog.get_for(key, env.model)
    price = entry.price_at(timezone.now())
    if price is None:
        raise GatewayError("model_not_found", f"The model '{env.model}' has no price yet.", param="header.model")
    if price.per_image:
        raise GatewayError("invalid_request", f"The model '{env.model}' generates images.", param="header.model")
    if env.max_tokens > entry.max_output_tokens:
        raise GatewayError(
            "invalid_request",
            f"header.max_tokens is {env.max_tokens}, above this model's limit of {entry.max_output_tokens}.",
            param="header.max_tokens",
        )
    # The gateway cannot count the prompt: it is bounded by the ciphertext's length (a token is ≥ 1 byte).
    prompt_bound = min(len(env.ciphertext), entry.context_window)
    plaintext, served, candidates = None, None, []
    if env.tier == TIER_STANDARD:
        if env.recipient_key != gateway_keys().encryption_key:
            raise GatewayError(
                "node_key_mismatch", "The envelope is not encrypted to the gateway's key; fetch GET /pki/public_key.",
                param="recipient.encryption_key",
            )
        try:
            plaintext = fmt.open_request(gateway_keys().encryption, env)
        except fmt.DecryptionFailed:
            raise GatewayError("invalid_request", "The envelope does not decrypt with the gateway's key.",
                               param="ciphertext") from None
        candidates = pipeline.candidates_for(entry, key)
    else:
        served = addressed_node(entry, env)
    claim = idempotency.from_request(req.headers, body, project_id=key.project_id, required=key.idempotency_required)
    decision = await limits.admit(key=key, tokens=prompt_bound + env.max_tokens)
    req.extra_headers.update(decision.headers())
    paid = PaidRequest(
        key=key, request_id=req.request_id, endpoint=ENDPOINT, price=price, stream=env.stream, claim=claim,
        session_id=req.session_id, admitted_tokens=decision.cost,
    )
    try:
        stored = await paid.reserve(max_input_tokens=prompt_bound, max_output_tokens=env.max_tokens)
    except idempotency.InProgress as exc:
        _give_back(key, decision.cost)
        if env.stream:
            return await pipeline.resume(req, exc.request_id, project_id=key.project_id)
        raise
    if stored is not None:
        _give_back(key, decision.cost)
        return replay_response(req, stored, after=streams.parse_last_event_id(req.headers))

    sealed = Sealed(req, paid, env, prompt_bound=prompt_bound, served=served, candidates=candidates,
                    plaintext=plaintext)
    try:
        if env.stream:
            return await _stream(req, sealed)
        return await _complete(req, sealed)
    except Exception:
        if not paid.finished:
            await paid.finish(usage=None, status_code=500, error_code="internal_error")
        raise


def _give_back(key, tokens: int) -> None:
    background.spawn(limits.refund(key=key, tokens=tokens), name="refund:replay")


async def _failed_before_answer(sealed: Sealed, exc: NodeError) -> GatewayError:
    """The node failed before answering: trip its breaker if it may recover, void the hold, say why."""
    if sealed.served is not None and not exc.permanent:
        router.failed(sealed.served.node.id)
    error = _node_error(exc)
    await sealed.paid.finish(usage=None, status_code=error.status, error_code=exc.code or error.code,
                             node_id=sealed.node_public_id)
    return error


async def _complete(req: ApiRequest, sealed: Sealed):
    paid = sealed.paid
    started = time.monotonic()
    try:
        result = await sealed.complete()
    except NodeError as exc:
        raise await _failed_before_answer(sealed, exc) from None
    ttft_ms = int((time.monotonic() - started) * 1000)
    if not isinstance(result, dict) or result.get("object") != "sealed.response":
        result = {}
    payload = orjson.dumps(result)
    headers = {**req.extra_headers, **sealed.headers()}
    stored = idempotency.StoredResponse(200, "application/json", headers, payload) if paid.claim else None
    error = await sealed.settle(result.get("receipt"), stored=stored, ttft_ms=ttft_ms)
    if error is not None:
        raise error
    return json_response(req, payload, headers=sealed.headers())


async def _stream(req: ApiRequest, sealed: Sealed):
    paid = sealed.paid
    started = time.monotonic()
    try:
        first, events = await sealed.open_stream()
    except NodeError as exc:
        raise await _failed_before_answer(sealed, exc) from None
    ttft_ms = int((time.monotonic() - started) * 1000)
    kept = {"x-request-id": req.request_id, **sealed.headers()}
    if req.session_id:
        kept["x-session-id"] = req.session_id
    log = streams.register(streams.StreamLog(req.request_id, project_id=paid.key.project_id, endpoint=ENDPOINT,
                                             headers=kept))
    run = SealedRun(sealed, log)
    follower = log.follow(0)
    background.spawn(run.run(first, events, ttft_ms), name=f"sealed:{paid.request_id}")
    headers = {**req.response_headers(), **sealed.headers(), "x-accel-buffering": "no"}
    return SSEResponse(follower, headers=headers)
