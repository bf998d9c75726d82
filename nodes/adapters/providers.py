"""Hosted OpenAI-protocol providers: OpenAI's own API, and any OpenAI-compatible one with a key.

What differs from a self-hosted OpenAI-compatible server (``openai``):

* The node is a provider: it sees prompts in clear and is never attested (attestation
  ``none``; only projects that allow non-confidential nodes reach it).
* Streams always ask for usage (``stream_options.include_usage``): billing needs exact
  counts, and a provider bills us the same way.
* Errors are read as a provider's: 401/403 mean the node's key is bad or lacks access, a
  node problem (another node may serve; the client did nothing wrong), and the provider's
  own message is not kept (OpenAI quotes part of the key in it). 404 means the node's
  upstream model name is wrong or not open to its key: a node problem too. 429 (rate limit
  or ``insufficient_quota``), 408/409 and 5xx are retryable. 400/413/415/422 are the
  request's fault and permanent. A provider's message never carries the node's key.

``provider-openai`` also sends ``max_completion_tokens`` instead of ``max_tokens`` on chat
(OpenAI deprecated ``max_tokens`` and refuses it on reasoning models: o-series, gpt-5).
``provider-compatible`` keeps ``max_tokens``, which every compatible provider understands.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from .base import NodeError, redact, register
from .openai import _PERMANENT, OpenAICompatibleAdapter, _error_from


def provider_error(status: int, code: str | None, message: str, secret: str | None) -> NodeError:
    """How a hosted provider's error status reads for routing (shared by every provider adapter)."""
    if status in (401, 403):
        what = "rejected the node's API key" if status == 401 else "refused the node's key access"
        return NodeError(f"the provider {what} (HTTP {status})", permanent=False, status=status,
                         code="provider_auth_failed")
    if status == 404:
        return NodeError(f"the provider does not serve this node's model to its key (HTTP 404): {redact(message, secret)}",
                         permanent=False, status=status, code="upstream_model_not_found")
    if status == 429 and code == "insufficient_quota":
        return NodeError("the provider account behind this node is out of quota (HTTP 429)", permanent=False,
                         status=status, code="provider_quota_exhausted")
    return NodeError(redact(message, secret), permanent=status in _PERMANENT, status=status, code=code)


class _OpenAIProtocolProvider(OpenAICompatibleAdapter):
    provider = True

    def _error(self, status: int, raw: bytes) -> NodeError:
        parsed = _error_from(status, raw)
        return provider_error(status, parsed.code, str(parsed), self.target.credentials)

    def _chat_body(self, body: dict[str, Any]) -> dict[str, Any]:
        return body

    def _with_usage(self, body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "stream": True, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        return await super().chat(self._chat_body(body))

    def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return super().chat_stream(self._with_usage(self._chat_body(body)))

    def completions_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return super().completions_stream(self._with_usage(body))


@register
class OpenAIProviderAdapter(_OpenAIProtocolProvider):
    """OpenAI's own API (base URL ``https://api.openai.com/v1``, the key as credentials)."""

    kind = "provider-openai"

    def _chat_body(self, body: dict[str, Any]) -> dict[str, Any]:
        if "max_tokens" not in body:
            return body
        body = dict(body)
        cap = body.pop("max_tokens")
        if body.get("max_completion_tokens") is None:
            body["max_completion_tokens"] = cap
        return body


@register
class CompatibleProviderAdapter(_OpenAIProtocolProvider):
    """Any hosted OpenAI-compatible API with a key: Together, Groq, OpenRouter, Fireworks, DeepInfra, …"""

    kind = "provider-compatible"
