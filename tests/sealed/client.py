"""A minimal sealed-request client for the tests (the SDK has its own, written from SEALED.md)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from cryptography.hazmat.primitives.asymmetric import x25519

from gateway.sealed import format as fmt


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any  # JSON (non-streamed or an error) or the SSE events
    events: list[tuple[str, str, bytes]] = field(default_factory=list)  # (id, event name, data)
    opened: list[Any] = field(default_factory=list)  # decrypted pieces, in order
    receipt: dict | None = None
    error: dict | None = None

    @property
    def text(self) -> str:
        """The decrypted answer's text."""
        out = []
        for piece in self.opened:
            for choice in piece.get("choices") or ():
                message = choice.get("message") or choice.get("delta") or {}
                out.append(message.get("content") or "")
        return "".join(out)


def parse_sse(raw: bytes) -> list[tuple[str, str, bytes]]:
    events = []
    for block in raw.split(b"\n\n"):
        ident, name, data = "", "message", []
        for line in block.split(b"\n"):
            if line.startswith(b"id:"):
                ident = line[3:].strip().decode()
            elif line.startswith(b"event:"):
                name = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data.append(line[5:].strip())
        if data:
            events.append((ident, name, b"\n".join(data)))
    return events


class SealedClient:
    def __init__(self, server, tenant, key: str | None = None):
        self.server, self.tenant, self.key = server, tenant, key
        self.private = x25519.X25519PrivateKey.generate()
        self.public = fmt.public_b64(self.private)

    def envelope(self, *, tier: str, recipient_key: str, node_id: str | None, model: str, max_tokens: int,
                 stream: bool, messages: list[dict], **extra) -> dict:
        return fmt.seal_request(
            recipient_key=recipient_key, tier=tier, node_id=node_id,
            header={"model": model, "max_tokens": max_tokens, "stream": stream},
            client_public_key=self.public, plaintext={"messages": messages, **extra},
        )

    def post(self, envelope: dict, headers: dict | None = None) -> httpx.Response:
        return httpx.post(
            f"{self.server.api}/sealed/chat/completions", json=envelope,
            headers={**self.tenant.auth(self.key), **(headers or {})}, timeout=30,
        )

    def answer(self, envelope: dict, response: httpx.Response) -> Answer:
        """Parse and decrypt what the gateway sent back."""
        headers = dict(response.headers)
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            events = parse_sse(response.content)
            out = Answer(response.status_code, headers, None, events=events)
            opener = None
            for _, name, data in events:
                if data == b"[DONE]":
                    continue
                obj = orjson.loads(data)
                if name == "sealed.start":
                    opener = fmt.ResponseOpener(self.private, envelope["payload_id"], obj["ephemeral_public_key"])
                elif name == "sealed.chunk":
                    out.opened.append(opener.open(obj))
                elif name == "sealed.receipt":
                    out.receipt = obj["receipt"]
                elif name == "error":
                    out.error = obj["error"]
            return out
        body = response.json()
        out = Answer(response.status_code, headers, body)
        if response.status_code == 200:
            opener = fmt.ResponseOpener(self.private, envelope["payload_id"], body["ephemeral_public_key"])
            out.opened.append(opener.open(body))
            out.receipt = body["receipt"]
        else:
            out.error = body.get("error")
        return out

    def open_events(self, envelope: dict, events: list[tuple[str, str, bytes]], ephemeral: str) -> list[Any]:
        opener = fmt.ResponseOpener(self.private, envelope["payload_id"], ephemeral)
        return [opener.open(orjson.loads(d)) for _, n, d in events if n == "sealed.chunk"]
