"""The node's side of sealed requests (gateway/SEALED.md): ``POST /v1/sealed/chat/completions``.

The gateway forwards the client's envelope unchanged with ``x-request-id`` and ``x-key-hash``.
The node opens it with the X25519 key its attestation bound (a tampered clear header, or an
envelope for another key, is refused with 400 ``decryption_failed`` before anything runs), runs
the chat on its engine, encrypts the answer to the client's key, and signs a usage receipt with
its attested Ed25519 key. The receipt names the node as the client addressed it
(``recipient.node_id``: bound into the ciphertext's associated data, so nobody could change it).

The simulator can misbehave for tests (``sealed_mode`` through /_sim/config): ``bad_signature``
signs with a key that is not the attested one; ``inflate_tokens`` claims 1000x the tokens;
``other_request`` signs, with the right key, a receipt naming another request id.
"""
from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.sealed import format as fmt

from .engines import ApiError

_FORGER = Ed25519PrivateKey.generate()  # "bad_signature": a key nobody attested


def handler(identity):
    from .app import ENGINE, SSE_HEADERS, ChatShape, _generation, _usage, read_json

    async def sealed_chat(request: web.Request) -> web.StreamResponse:
        engine = request.app[ENGINE]
        body = await read_json(request)
        try:
            envelope = fmt.parse_envelope(body)
        except fmt.EnvelopeError as exc:
            raise ApiError(400, str(exc), code="invalid_envelope") from None
        try:
            plaintext = fmt.open_request(identity.encryption_key, envelope)
        except fmt.DecryptionFailed:
            raise ApiError(400, "The sealed request does not decrypt with this node's key.", code="decryption_failed") from None
        chat = {k: v for k, v in plaintext.items() if k not in ("model", "max_tokens", "stream", "stream_options")}
        chat.update(model=envelope.model, max_tokens=envelope.max_tokens, stream=envelope.stream)
        gen, _ = _generation(chat, engine, ChatShape)
        mode = getattr(engine.config, "sealed_mode", "honest") if hasattr(engine, "config") else "honest"
        request_id = request.headers.get("x-request-id", "")
        key_hash = request.headers.get("x-key-hash", "")
        sealer = fmt.ResponseSealer(envelope.client_public_key, envelope.payload_id)

        def receipt() -> dict[str, str]:
            factor = 1000 if mode == "inflate_tokens" else 1
            data = fmt.receipt_bytes(
                request_id="req_replayed" if mode == "other_request" else request_id, payload_id=envelope.payload_id, key_hash=key_hash,
                request_hash=envelope.request_hash, model=envelope.model, node_id=envelope.node_id or "",
                measurement=identity.measurement, input_tokens=gen.prompt_tokens * factor,
                output_tokens=gen.completion_tokens * factor,
            )
            return fmt.sign_receipt(_FORGER if mode == "bad_signature" else identity.signing_key, data)

        engine.stats.started()
        outcome = "failed"
        pieces = engine.generate(gen)
        try:
            created = int(time.time())
            if not envelope.stream:
                text = "".join([piece async for piece in pieces])
                answer = {
                    "id": gen.id, "object": "chat.completion", "created": created, "model": gen.model,
                    "choices": [ChatShape.choice(gen, text)], "usage": _usage(gen),
                }
                sealed = sealer.seal(answer)
                outcome = "completed"
                return web.Response(
                    body=orjson.dumps({
                        "object": "sealed.response", "ephemeral_public_key": sealer.ephemeral_public_key, **sealed,
                        "receipt": receipt(),
                    }),
                    content_type="application/json",
                )
            first = await anext(pieces, None)  # errors before any output keep their own status
            response = web.StreamResponse(headers=SSE_HEADERS)
            await response.prepare(request)
            head: dict[str, Any] = {"id": gen.id, "object": "chat.completion.chunk", "created": created, "model": gen.model}

            async def send(name: str, data: dict[str, Any]) -> None:
                await response.write(f"event: {name}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n")

            async def chunk(choices: list[dict[str, Any]], **extra: Any) -> None:
                await send("sealed.chunk", sealer.seal({**head, "choices": choices, "usage": None, **extra}))

            await send("sealed.start", {"ephemeral_public_key": sealer.ephemeral_public_key})
            await chunk([ChatShape.opening(gen)])
            if first is not None:
                await chunk([ChatShape.chunk(gen, first, None)])
                async for piece in pieces:
                    await chunk([ChatShape.chunk(gen, piece, None)])
            await chunk([ChatShape.chunk(gen, None, gen.finish_reason)])
            await chunk([], usage=_usage(gen))
            await send("sealed.receipt", {"receipt": receipt()})
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            outcome = "completed"
            return response
        except (ConnectionResetError, web.HTTPException):
            outcome = "cancelled"
            raise
        finally:
            await pieces.aclose()
            engine.stats.finished(gen, outcome)

    return sealed_chat
