"""The adapter interface every inference backend implements.

Nodes speak the OpenAI protocol to the gateway (chat completions, legacy text
completions, embeddings); an adapter translates to whatever the backend needs.
Answers are OpenAI JSON objects; streams yield the parsed chunks up to
``[DONE]`` and raise NodeError if the node fails or stops before it. Errors say whether trying another node could help
(``permanent=False``: connection refused, 5xx, 429, timeouts) or not
(``permanent=True``: the request itself is bad for this model).

Images, model management (load, unload, pull) and attestation exist only on some
backends; the defaults here refuse with a permanent NodeError, so a caller
never retries them on the same kind of node.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from nodes.registry import NodeTarget


class NodeError(Exception):
    def __init__(self, message: str, *, permanent: bool, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.permanent = permanent
        self.status = status
        self.code = code


class NodeAdapter:
    kind = "base"
    # A hosted model API (OpenAI, Anthropic, …): it sees prompts in clear and can never be
    # attested, so its nodes always carry attestation "none" (Node.PROVIDER_ADAPTERS).
    provider = False

    def __init__(self, target: NodeTarget):
        self.target = target

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Parsed ``chat.completion.chunk`` objects; raises NodeError if the node fails."""
        raise NotImplementedError

    async def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        """A legacy ``/completions`` answer (``text_completion``)."""
        raise NotImplementedError

    def completions_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Parsed ``text_completion`` chunks; raises NodeError if the node fails."""
        raise NotImplementedError

    async def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        """An ``/embeddings`` answer: ``{"object": "list", "data": [...], "usage": {...}}``."""
        raise NotImplementedError

    async def list_models(self) -> list[str]:
        raise NotImplementedError

    async def health(self) -> bool:
        """Whether the node answers; by default, whether it lists its models."""
        try:
            await self.list_models()
        except NodeError:
            return False
        return True

    async def images(self, body: dict[str, Any]) -> dict[str, Any]:
        """An ``/images/generations`` answer."""
        raise self._unsupported("image generation")

    async def load_model(self, name: str) -> None:
        """Bring a model into memory so the first request does not pay for it."""
        raise self._unsupported("loading models")

    async def unload_model(self, name: str) -> None:
        raise self._unsupported("unloading models")

    async def pull_model(self, name: str) -> AsyncIterator[dict[str, Any]]:
        """Download a model; yields progress events ``{"status", "completed"?, "total"?}`` until it is servable."""
        raise self._unsupported("pulling models")
        yield {}  # an async generator, like the overrides, so callers always iterate it

    async def sealed_chat(self, envelope: dict[str, Any], *, request_id: str, key_hash: str) -> dict[str, Any]:
        """Forward a sealed request (gateway/SEALED.md) unchanged; the node's ``sealed.response`` object."""
        raise self._unsupported("sealed requests")

    def sealed_chat_stream(
        self, envelope: dict[str, Any], *, request_id: str, key_hash: str
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The node's sealed SSE events as ``(name, data)``: ``sealed.start``, ``sealed.chunk``…,
        ``sealed.receipt``; ends at ``[DONE]``, raises NodeError if the node fails or stops before it."""
        raise self._unsupported("sealed requests")

    async def attest(self, nonce: str) -> dict[str, Any]:
        """The node's attestation evidence bound to ``nonce`` (nodes/attestation/), as the node sent it."""
        raise self._unsupported("attestation")

    def _unsupported(self, what: str) -> NodeError:
        return NodeError(f"{what} is not supported by this backend ({self.kind})", permanent=True, code="unsupported")


def redact(message: str, secret: str | None) -> str:
    """An upstream's message without the node's credentials (errors are logged and may reach clients)."""
    return message.replace(secret, "[redacted]") if secret else message


ADAPTERS: dict[str, type[NodeAdapter]] = {}


def register(cls: type[NodeAdapter]) -> type[NodeAdapter]:
    ADAPTERS[cls.kind] = cls
    return cls


def adapter_for(target: NodeTarget) -> NodeAdapter:
    try:
        return ADAPTERS[target.adapter](target)
    except KeyError:
        raise NodeError(f"node {target.public_id} uses unknown adapter {target.adapter!r}", permanent=False) from None
