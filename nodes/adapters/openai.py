"""Any OpenAI-compatible upstream: vLLM, llama.cpp server, Ollama's /v1, TGI, OpenAI."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from django.conf import settings

from nodes import http

from .base import NodeAdapter, NodeError, redact, register

_JSON = {"content-type": "application/json", "accept": "application/json"}
_SSE = {"content-type": "application/json", "accept": "text/event-stream"}
# Upstream statuses that say "this request is wrong", not "this node is unwell".
_PERMANENT = {400, 413, 415, 422}
ATTESTATION_MAX_BYTES = 64 * 1024  # a report and a short certificate chain are a few KiB


def _timeout() -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=settings.GATEWAY_MAX_REQUEST_SECONDS,
        sock_connect=settings.GATEWAY_UPSTREAM_CONNECT_SECONDS,
        sock_read=settings.GATEWAY_FIRST_TOKEN_SECONDS,
    )


def _error_from(status: int, raw: bytes) -> NodeError:
    message, code = f"node answered HTTP {status}", None
    auth_failed = status in (401, 403)  # the node's credentials: the upstream's text may quote them (OpenAI's does)
    try:
        err = orjson.loads(raw).get("error")
        if isinstance(err, dict):
            message, code = str(err.get("message") or message), err.get("code")
        elif isinstance(err, str):
            message = err
    except (orjson.JSONDecodeError, AttributeError):
        pass
    if auth_failed:
        message = f"the node refused its credentials (HTTP {status})"
    return NodeError(message, permanent=status in _PERMANENT, status=status, code=code)


@register
class OpenAICompatibleAdapter(NodeAdapter):
    kind = "openai"

    def __init__(self, target):
        super().__init__(target)
        if target.credentials:  # a hosted or protected upstream: its key goes with every call
            auth = {"authorization": f"Bearer {target.credentials}"}
            self._json, self._sse = {**_JSON, **auth}, {**_SSE, **auth}
        else:
            self._json, self._sse = _JSON, _SSE

    def _url(self, path: str) -> str:
        return self.target.base_url.rstrip("/") + path

    def _error(self, status: int, raw: bytes) -> NodeError:
        """An upstream error status as a NodeError (provider adapters map statuses their own way)."""
        error = _error_from(status, raw)
        return NodeError(redact(str(error), self.target.credentials), permanent=error.permanent, status=status,
                         code=error.code)

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._post_json("/chat/completions", body)

    def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return self._post_stream("/chat/completions", body)

    async def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._post_json("/completions", body)

    def completions_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return self._post_stream("/completions", body)

    async def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._post_json("/embeddings", body)

    async def images(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._post_json("/images/generations", body)

    async def _post_json(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        try:
            async with http.session().post(
                self._url(path), data=orjson.dumps(body), headers=headers or self._json, timeout=_timeout()
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise self._error(resp.status, raw)
                return orjson.loads(raw)
        except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError) as exc:
            raise NodeError(f"node unreachable or broken: {exc.__class__.__name__}", permanent=False) from exc

    async def _post_stream(
        self, path: str, body: dict[str, Any], *, headers: dict[str, str] | None = None, named: bool = False
    ) -> AsyncIterator[Any]:
        """The parsed ``data:`` events of an SSE answer, up to ``[DONE]``; with ``named``, each as
        ``(event name, object)`` (a sealed answer's events are told apart by name)."""
        try:
            resp = await http.session().post(
                self._url(path), data=orjson.dumps(body), headers=headers or self._sse, timeout=_timeout()
            )
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise NodeError(f"node unreachable: {exc.__class__.__name__}", permanent=False) from exc
        done = False
        try:
            if resp.status >= 400:
                raise self._error(resp.status, await resp.read())
            if named:
                async for name, payload in http.sse_events(resp):
                    if payload == b"[DONE]":
                        done = True
                        return
                    data = orjson.loads(payload)
                    if not isinstance(data, dict):
                        raise NodeError("node sent a sealed event that is not an object", permanent=False)
                    yield name, data
            else:
                async for payload in http.sse_data(resp):  # the hot path: one generator layer
                    if payload == b"[DONE]":
                        done = True
                        return
                    yield orjson.loads(payload)
            raise NodeError("node closed the stream before it finished", permanent=False)
        except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError) as exc:
            raise NodeError(f"node stream broke: {exc.__class__.__name__}", permanent=False) from exc
        finally:
            # An unfinished stream is closed, not returned to the pool, so the
            # node sees the disconnect and stops generating.
            if done:
                resp.release()
            else:
                resp.close()

    def _sealed_headers(self, base: dict[str, str], request_id: str, key_hash: str) -> dict[str, str]:
        return {**base, "x-request-id": request_id, "x-key-hash": key_hash}

    async def sealed_chat(self, envelope: dict[str, Any], *, request_id: str, key_hash: str) -> dict[str, Any]:
        return await self._post_json(
            "/sealed/chat/completions", envelope, headers=self._sealed_headers(self._json, request_id, key_hash)
        )

    def sealed_chat_stream(
        self, envelope: dict[str, Any], *, request_id: str, key_hash: str
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        headers = self._sealed_headers(self._sse, request_id, key_hash)
        return self._post_stream("/sealed/chat/completions", envelope, headers=headers, named=True)

    async def attest(self, nonce: str) -> dict[str, Any]:
        """``POST {base_url}/attestation`` with ``{"nonce"}``: the evidence, a JSON object of at most
        ATTESTATION_MAX_BYTES. Waits no longer than the nonce lives."""
        timeout = aiohttp.ClientTimeout(
            total=settings.ATTESTATION_NONCE_SECONDS, sock_connect=settings.GATEWAY_UPSTREAM_CONNECT_SECONDS
        )
        try:
            async with http.session().post(
                self._url("/attestation"), data=orjson.dumps({"nonce": nonce}), headers=self._json, timeout=timeout
            ) as resp:
                raw = await resp.content.read(ATTESTATION_MAX_BYTES + 1)
                if resp.status >= 400:
                    raise _error_from(resp.status, raw)
                if len(raw) > ATTESTATION_MAX_BYTES:
                    raise NodeError("attestation evidence is too large", permanent=True)
                evidence = orjson.loads(raw)
        except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError) as exc:
            raise NodeError(f"node attestation failed: {exc.__class__.__name__}", permanent=False) from exc
        if not isinstance(evidence, dict):
            raise NodeError("node sent attestation evidence that is not a JSON object", permanent=True)
        return evidence

    async def list_models(self) -> list[str]:
        try:
            async with http.session().get(self._url("/models"), headers=self._json, timeout=_timeout()) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise self._error(resp.status, raw)
                return [m["id"] for m in orjson.loads(raw).get("data", [])]
        except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise NodeError(f"node model list failed: {exc.__class__.__name__}", permanent=False) from exc
