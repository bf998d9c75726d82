"""Anthropic's Messages API, natively: ``POST {base}/v1/messages`` with ``x-api-key`` and ``anthropic-version``.

The gateway sends nodes OpenAI chat requests; this adapter translates them into
Messages requests and the answers and SSE streams back into chat completions and
chunks (nodes/anthropic_messages.py), with exact usage: prompt tokens are input
tokens plus cache reads and writes, cache reads are reported as cached tokens.

``base_url`` is the API root (``https://api.anthropic.com``; a trailing ``/v1`` is
accepted too). Chat only: legacy completions and embeddings are refused as
permanently unsupported (Anthropic has neither).

Errors, by Anthropic's statuses: 400 ``invalid_request_error`` and 413
``request_too_large`` are the request's fault (permanent); 401/403 are a bad or
unauthorised node key and 404 a model this node's key cannot use: node problems,
so another node may serve (this keeps the gateway's meaning of "permanent": no
other node could help). 429, 500, 529 ``overloaded_error``, timeouts and broken
connections are retryable, and so is an ``error`` event inside a stream. Before
any content arrives nothing has been yielded, so the gateway can still fail over.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from nodes import http
from nodes.anthropic_messages import ChunkTranslator, FormatError, StreamError, completion_from_message, to_messages_request

from .base import NodeAdapter, NodeError, redact, register
from .openai import _timeout
from .providers import provider_error

API_VERSION = "2023-06-01"
_PERMANENT = {400, 413}
# A max_tokens for a request that came without one (the gateway always sends one).
DEFAULT_MAX_TOKENS = 4096


@register
class AnthropicAdapter(NodeAdapter):
    kind = "provider-anthropic"
    provider = True

    def __init__(self, target):
        super().__init__(target)
        headers = {"content-type": "application/json", "accept": "application/json", "anthropic-version": API_VERSION}
        if target.credentials:
            headers["x-api-key"] = target.credentials
        self._headers = headers
        self._sse = {**headers, "accept": "text/event-stream"}

    def _url(self, path: str) -> str:
        return self.target.base_url.rstrip("/").removesuffix("/v1") + path

    def _error(self, status: int, raw: bytes) -> NodeError:
        kind, message = None, f"provider answered HTTP {status}"
        try:
            error = orjson.loads(raw).get("error")
            if isinstance(error, dict):
                kind, message = error.get("type"), str(error.get("message") or message)
        except (orjson.JSONDecodeError, AttributeError):
            pass
        if status in (401, 403, 404):
            return provider_error(status, kind, message, self.target.credentials)
        return NodeError(redact(message, self.target.credentials), permanent=status in _PERMANENT, status=status, code=kind)

    def _request(self, body: dict[str, Any], *, stream: bool) -> bytes:
        try:
            request = to_messages_request(body, default_max_tokens=DEFAULT_MAX_TOKENS)
        except FormatError as exc:
            raise NodeError(str(exc), permanent=True, status=400, code="invalid_request") from None
        if stream:
            request["stream"] = True
        else:
            request.pop("stream", None)
        return orjson.dumps(request)

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        data = self._request(body, stream=False)
        try:
            async with http.session().post(
                self._url("/v1/messages"), data=data, headers=self._headers, timeout=_timeout()
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise self._error(resp.status, raw)
                message = orjson.loads(raw)
        except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError) as exc:
            raise NodeError(f"provider unreachable or broken: {exc.__class__.__name__}", permanent=False) from exc
        if not isinstance(message, dict) or message.get("type") != "message":
            raise NodeError("provider answered something other than a message", permanent=False)
        return completion_from_message(message)

    async def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        data = self._request(body, stream=True)
        try:
            resp = await http.session().post(self._url("/v1/messages"), data=data, headers=self._sse, timeout=_timeout())
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise NodeError(f"provider unreachable: {exc.__class__.__name__}", permanent=False) from exc
        translator = ChunkTranslator()
        try:
            if resp.status >= 400:
                raise self._error(resp.status, await resp.read())
            async for payload in http.sse_data(resp):  # "event:" names repeat the data's "type"
                for chunk in translator.feed(orjson.loads(payload)):
                    yield chunk
                if translator.done:
                    return
            raise NodeError("provider closed the stream before message_stop", permanent=False)
        except StreamError as exc:
            raise NodeError(f"provider stream failed: {redact(str(exc), self.target.credentials)}", permanent=False,
                            code=exc.type) from None
        except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError) as exc:
            raise NodeError(f"provider stream broke: {exc.__class__.__name__}", permanent=False) from exc
        finally:
            # An unfinished stream is closed, not pooled, so the provider stops generating.
            if translator.done:
                resp.release()
            else:
                resp.close()

    async def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        raise self._unsupported("the legacy completions API")

    def completions_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        raise self._unsupported("the legacy completions API")

    async def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        raise self._unsupported("embeddings")

    async def list_models(self) -> list[str]:
        try:
            async with http.session().get(
                self._url("/v1/models?limit=1000"), headers=self._headers, timeout=_timeout()
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise self._error(resp.status, raw)
                return [m["id"] for m in orjson.loads(raw).get("data", [])]
        except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise NodeError(f"provider model list failed: {exc.__class__.__name__}", permanent=False) from exc
