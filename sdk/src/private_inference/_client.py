"""``Client`` and ``AsyncClient``: the platform's /v1 API, OpenAI-style."""
from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any, Self

import httpx

from ._errors import ConflictError, NotFoundError, SecurityError
from ._retry import RetryPolicy
from ._transport import AsyncTransport, SSEEvent, SyncTransport
from ._types import Obj, wrap
from .crypto import ClientKeyPair
from .sealed import (
    SealedCall,
    SecurityOptions,
    candidates,
    gateway_recipient,
    recipient_from_attestation,
)

SEALED_PATH = "/v1/sealed/chat/completions"
PUBLISHED_ROOTS_PATH = "/pki/attestation_roots"
_END = object()


def _billed_request_id(response: httpx.Response) -> str | None:
    """The request id a sealed answer's receipt must name: this response's, unless it is an idempotent
    replay of an earlier request (then the receipt names that one, which the server does not repeat;
    the receipt stays bound to this call by its payload id and the hash of our ciphertext)."""
    if response.headers.get("idempotent-replayed") == "true":
        return None
    return response.headers.get("x-request-id")


def _unverified(tier: str, failures: list[tuple[str, Exception]]) -> SecurityError:
    reasons = {getattr(exc, "reason", "unverified_node") for _, exc in failures}
    return SecurityError(
        f"No node's attestation verified for a {tier}-tier request; nothing was sent. "
        + "; ".join(f"{node}: {exc}" for node, exc in failures),
        reason=reasons.pop() if len(reasons) == 1 else "unverified_node",
    )


def _body(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _headers(extra_headers: dict[str, str] | None, idempotency_key: str | None) -> dict[str, str]:
    headers = dict(extra_headers or {})
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    return headers


def _event_obj(event: SSEEvent) -> Obj | None:
    if event.data.strip() == "[DONE]":
        return None
    try:
        data = wrap(event.json())
    except ValueError:
        return None
    if isinstance(data, Obj) and event.event and "type" not in data:
        data["type"] = event.event
    return data


# --- streams ----------------------------------------------------------------------------


class Stream:
    """An iterator of chunk objects (OpenAI ``chat.completion.chunk``, Responses or Messages events).
    The request is sent when the stream is created; a cut connection resumes by itself.
    ``request_id`` names the stream; for sealed streams ``sealed`` has the verified receipt at the end."""

    def __init__(self, events: Iterator[SSEEvent], sealed: SealedCall | None = None):
        self.request_id: str | None = None
        self.headers: dict[str, str] = {}
        self._billed_id: str | None = None
        self._sealed = sealed
        self._events = events
        self._first = next(self._events, _END)  # sends the request: errors raise here

    def _on_response(self, response: httpx.Response) -> None:
        self.request_id = response.headers.get("x-request-id")
        self.headers = {k.lower(): v for k, v in response.headers.items()}
        self._billed_id = _billed_request_id(response)

    @property
    def sealed(self) -> Obj | None:
        return wrap(self._sealed.info()) if self._sealed else None

    def __iter__(self) -> Iterator[Obj]:
        event = self._first
        while event is not _END:
            item = self._item(event)
            if item is not None:
                yield item
            event = next(self._events, _END)
        if self._sealed:
            self._sealed.finish(self._billed_id)

    def _item(self, event: SSEEvent) -> Obj | None:
        if self._sealed:
            return self._sealed.feed(event.event, event.data, self._billed_id)
        return _event_obj(event)

    def close(self) -> None:
        self._events.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncStream:
    def __init__(self, events: AsyncIterator[SSEEvent], sealed: SealedCall | None = None):
        self.request_id: str | None = None
        self.headers: dict[str, str] = {}
        self._billed_id: str | None = None
        self._sealed = sealed
        self._events = events
        self._first: Any = _END

    async def _start(self) -> AsyncStream:
        self._first = await anext(self._events, _END)
        return self

    def _on_response(self, response: httpx.Response) -> None:
        self.request_id = response.headers.get("x-request-id")
        self.headers = {k.lower(): v for k, v in response.headers.items()}
        self._billed_id = _billed_request_id(response)

    @property
    def sealed(self) -> Obj | None:
        return wrap(self._sealed.info()) if self._sealed else None

    async def __aiter__(self) -> AsyncIterator[Obj]:
        event = self._first
        while event is not _END:
            item = self._sealed.feed(event.event, event.data, self._billed_id) if self._sealed else _event_obj(event)
            if item is not None:
                yield item
            event = await anext(self._events, _END)
        if self._sealed:
            self._sealed.finish(self._billed_id)

    async def close(self) -> None:
        await self._events.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


# --- the synchronous client ---------------------------------------------------------------------


class _Resource:
    def __init__(self, client: Client):
        self._client = client
        self._t = client._transport


class ChatCompletions(_Resource):
    def create(self, *, model: str, messages: list[dict[str, Any]], stream: bool = False,
               security_tier: str | None = None, extra_headers: dict[str, str] | None = None,
               idempotency_key: str | None = None, **params: Any):
        """POST /v1/chat/completions; ``stream=True`` → a :class:`Stream` of chunks.
        ``security_tier`` ("standard", "high", "maximum") seals the request end to end (SEALED.md)."""
        body = _body({"model": model, "messages": messages, **params})
        if stream:
            body["stream"] = True
        headers = _headers(extra_headers, idempotency_key)
        if security_tier:
            return self._client._sealed(body, security_tier, headers)
        if stream:
            holder: dict[str, Stream] = {}
            events = self._t.events("POST", "/v1/chat/completions", json_body=body, headers=headers,
                                    on_response=lambda r: holder["s"]._on_response(r))
            return _stream(events, holder)
        return self._t.request("POST", "/v1/chat/completions", json_body=body, headers=headers, paid=True)


def _stream(events, holder, sealed=None) -> Stream:
    stream = Stream.__new__(Stream)
    holder["s"] = stream
    Stream.__init__(stream, events, sealed)
    return stream


class Chat:
    def __init__(self, client: Client):
        self.completions = ChatCompletions(client)


class _Streaming(_Resource):
    path = ""

    def create(self, *, stream: bool = False, extra_headers: dict[str, str] | None = None,
               idempotency_key: str | None = None, **params: Any):
        body = _body(params)
        headers = _headers(extra_headers, idempotency_key)
        if stream:
            body["stream"] = True
            holder: dict[str, Stream] = {}
            events = self._t.events("POST", self.path, json_body=body, headers=headers,
                                    on_response=lambda r: holder["s"]._on_response(r))
            return _stream(events, holder)
        return self._t.request("POST", self.path, json_body=body, headers=headers, paid=True)


class Responses(_Streaming):
    """OpenAI Responses: ``create(model=, input=, instructions=, stream=)``, ``retrieve(id)``."""

    path = "/v1/responses"

    def retrieve(self, response_id: str) -> Obj:
        return self._t.request("GET", f"/v1/responses/{response_id}")


class Messages(_Streaming):
    """Anthropic Messages: ``create(model=, max_tokens=, messages=, system=, stream=)``."""

    path = "/v1/messages"

    def count_tokens(self, **params: Any) -> Obj:
        return self._t.request("POST", "/v1/messages/count_tokens", json_body=_body(params))


class Completions(_Streaming):
    path = "/v1/completions"


class Embeddings(_Resource):
    def create(self, *, model: str, input: Any, extra_headers: dict[str, str] | None = None,
               idempotency_key: str | None = None, **params: Any) -> Obj:
        return self._t.request("POST", "/v1/embeddings", json_body=_body({"model": model, "input": input, **params}),
                               headers=_headers(extra_headers, idempotency_key), paid=True)


class Models(_Resource):
    def list(self) -> Obj:
        return self._t.request("GET", "/v1/models")

    def retrieve(self, model: str) -> Obj:
        return self._t.request("GET", f"/v1/models/{model}")


class Nodes(_Resource):
    def list(self) -> Obj:
        return self._t.request("GET", "/v1/nodes")

    def attestation(self, node_id: str) -> Obj:
        return self._t.request("GET", f"/v1/nodes/{node_id}/attestation")

    def verify(self, node_id: str, *, tier: str = "maximum") -> Obj:
        """Check a node's attestation here, against the client's trust roots; SecurityError if it fails."""
        node = next((n for n in self.list().data if n.id == node_id), None)
        if node is None:
            raise NotFoundError(f"No such node: {node_id}.", status_code=404, code="not_found")
        recipient = recipient_from_attestation(node, self.attestation(node_id), self._client.security, tier,
                                               self._client._roots())
        return wrap({"node_id": node_id, "verified": True, "measurement": recipient.measurement,
                     "signing_key": recipient.signing_key, "encryption_key": recipient.encryption_key,
                     "root": recipient.report.root_subject, "issued_at": recipient.report.issued_at})


class Keys(_Resource):
    """The project's API keys (the key in use must be a secret key)."""

    def list(self) -> Obj:
        return self._t.request("GET", "/v1/keys")

    def retrieve(self, key_id: str) -> Obj:
        return self._t.request("GET", f"/v1/keys/{key_id}")

    def create(self, *, kind: str = "secret", name: str = "", scopes: list[str] | None = None, **limits: Any) -> Obj:
        """The new key; its ``key`` (the secret) is shown only in this answer."""
        return self._t.request("POST", "/v1/keys", json_body=_body({"kind": kind, "name": name, "scopes": scopes, **limits}))

    def update(self, key_id: str, **limits: Any) -> Obj:
        return self._t.request("PATCH", f"/v1/keys/{key_id}", json_body=limits)

    def revoke(self, key_id: str) -> Obj:
        return self._t.request("DELETE", f"/v1/keys/{key_id}")

    def rotate(self, key_id: str, *, grace_seconds: int = 3600) -> Obj:
        return self._t.request("POST", f"/v1/keys/{key_id}/rotate", json_body={"grace_seconds": grace_seconds})


class Balance(_Resource):
    def retrieve(self) -> Obj:
        """``balance_micros``, ``reserved_micros``, ``available_micros`` (micro-units of ``currency``)."""
        return self._t.request("GET", "/v1/balance")


class Receipts(_Resource):
    def list(self, *, request_id: str | None = None) -> Obj:
        return self._t.request("GET", "/v1/receipts", params=_body({"request_id": request_id}))


class _Options:
    def __init__(self, *, trust_roots, allowed_measurements, keypair, max_attestation_age):
        self.security = SecurityOptions(
            trust_roots=trust_roots,
            allowed_measurements=set(allowed_measurements) if allowed_measurements else None,
            keypair=keypair or ClientKeyPair.generate(),
            max_age=max_attestation_age,
        )


class Client(_Options):
    """The platform's API. ``api_key`` defaults to $PI_API_KEY, then $OPENAI_API_KEY, then `pi login`'s;
    ``base_url`` to $PI_BASE_URL, then `pi login`'s, then http://127.0.0.1:8000. Plain http is refused
    except to localhost unless ``allow_http=True``."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        allow_http: bool = False,
        max_retries: int = 2,
        timeout: float | httpx.Timeout = 120.0,
        default_headers: dict[str, str] | None = None,
        retry_policy: RetryPolicy | None = None,
        http_client: httpx.Client | None = None,
        trust_roots: Any = None,
        allowed_measurements: list[str] | set[str] | None = None,
        keypair: ClientKeyPair | None = None,
        max_attestation_age: float | None = 24 * 3600,
    ):
        super().__init__(trust_roots=trust_roots, allowed_measurements=allowed_measurements, keypair=keypair,
                         max_attestation_age=max_attestation_age)
        self._transport = SyncTransport(
            api_key=api_key, base_url=base_url, allow_http=allow_http, max_retries=max_retries, timeout=timeout,
            default_headers=default_headers, retry_policy=retry_policy, http_client=http_client,
        )
        self.chat = Chat(self)
        self.completions = Completions(self)
        self.responses = Responses(self)
        self.messages = Messages(self)
        self.embeddings = Embeddings(self)
        self.models = Models(self)
        self.nodes = Nodes(self)
        self.keys = Keys(self)
        self.balance = Balance(self)
        self.receipts = Receipts(self)

    @property
    def base_url(self) -> str:
        return self._transport.base_url

    @property
    def api_key(self) -> str:
        return self._transport.api_key

    def usage(self) -> Obj:
        """What the account may still spend: GET /v1/balance."""
        return self.balance.retrieve()

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # sealed calls

    def _roots(self):
        published = None
        if self.security.trust_roots is None and not os.environ.get("PI_TRUST_ROOTS"):
            try:
                published = self._transport.send("GET", PUBLISHED_ROOTS_PATH).text or None
            except NotFoundError:
                published = None
        return self.security.roots(published)

    def _recipient(self, model: str, tier: str):
        if tier == "standard":
            return gateway_recipient(self._transport.request("GET", "/pki/public_key"))
        nodes = candidates(self.nodes.list().data, model, tier)
        if not nodes:
            raise SecurityError(f"No attested node serves {model} for a {tier}-tier request; nothing was sent.",
                                reason="no_attested_node")
        roots = self._roots()
        failures = []
        for node in nodes:
            try:
                return recipient_from_attestation(node, self.nodes.attestation(node.id), self.security, tier, roots)
            except (SecurityError, NotFoundError) as exc:
                failures.append((node.id, exc))
        raise _unverified(tier, failures)

    def _sealed(self, body: dict[str, Any], tier: str, headers: dict[str, str]):
        for attempt in range(2):
            call = SealedCall(body, tier=tier, recipient=self._recipient(body["model"], tier), keypair=self.security.keypair)
            try:
                if body.get("stream"):
                    holder: dict[str, Stream] = {}
                    events = self._transport.events("POST", SEALED_PATH, json_body=call.envelope, headers=dict(headers),
                                                    on_response=lambda r, h=holder: h["s"]._on_response(r))
                    return _stream(events, holder, sealed=call)
                response = self._transport.send("POST", SEALED_PATH, json_body=call.envelope, headers=dict(headers), paid=True)
                return call.open_response(response.json(), _billed_request_id(response))
            except ConflictError as exc:  # node_key_mismatch: the node re-attested; look again once
                if exc.code != "node_key_mismatch" or attempt:
                    raise
        raise AssertionError("unreachable")


# --- the asynchronous client ----------------------------------------------------------------------


class _AsyncResource:
    def __init__(self, client: AsyncClient):
        self._client = client
        self._t = client._transport


async def _astream(transport, path, body, headers, sealed=None) -> AsyncStream:
    holder: dict[str, AsyncStream] = {}
    events = transport.events("POST", path, json_body=body, headers=headers,
                              on_response=lambda r: holder["s"]._on_response(r))
    stream = AsyncStream(events, sealed)
    holder["s"] = stream
    return await stream._start()


class AsyncChatCompletions(_AsyncResource):
    async def create(self, *, model: str, messages: list[dict[str, Any]], stream: bool = False,
                     security_tier: str | None = None, extra_headers: dict[str, str] | None = None,
                     idempotency_key: str | None = None, **params: Any):
        body = _body({"model": model, "messages": messages, **params})
        if stream:
            body["stream"] = True
        headers = _headers(extra_headers, idempotency_key)
        if security_tier:
            return await self._client._sealed(body, security_tier, headers)
        if stream:
            return await _astream(self._t, "/v1/chat/completions", body, headers)
        return await self._t.request("POST", "/v1/chat/completions", json_body=body, headers=headers, paid=True)


class AsyncChat:
    def __init__(self, client: AsyncClient):
        self.completions = AsyncChatCompletions(client)


class _AsyncStreaming(_AsyncResource):
    path = ""

    async def create(self, *, stream: bool = False, extra_headers: dict[str, str] | None = None,
                     idempotency_key: str | None = None, **params: Any):
        body = _body(params)
        headers = _headers(extra_headers, idempotency_key)
        if stream:
            body["stream"] = True
            return await _astream(self._t, self.path, body, headers)
        return await self._t.request("POST", self.path, json_body=body, headers=headers, paid=True)


class AsyncResponses(_AsyncStreaming):
    path = "/v1/responses"

    async def retrieve(self, response_id: str) -> Obj:
        return await self._t.request("GET", f"/v1/responses/{response_id}")


class AsyncMessages(_AsyncStreaming):
    path = "/v1/messages"

    async def count_tokens(self, **params: Any) -> Obj:
        return await self._t.request("POST", "/v1/messages/count_tokens", json_body=_body(params))


class AsyncCompletions(_AsyncStreaming):
    path = "/v1/completions"


class AsyncEmbeddings(_AsyncResource):
    async def create(self, *, model: str, input: Any, extra_headers: dict[str, str] | None = None,
                     idempotency_key: str | None = None, **params: Any) -> Obj:
        return await self._t.request("POST", "/v1/embeddings", json_body=_body({"model": model, "input": input, **params}),
                                     headers=_headers(extra_headers, idempotency_key), paid=True)


class AsyncModels(_AsyncResource):
    async def list(self) -> Obj:
        return await self._t.request("GET", "/v1/models")

    async def retrieve(self, model: str) -> Obj:
        return await self._t.request("GET", f"/v1/models/{model}")


class AsyncNodes(_AsyncResource):
    async def list(self) -> Obj:
        return await self._t.request("GET", "/v1/nodes")

    async def attestation(self, node_id: str) -> Obj:
        return await self._t.request("GET", f"/v1/nodes/{node_id}/attestation")

    async def verify(self, node_id: str, *, tier: str = "maximum") -> Obj:
        node = next((n for n in (await self.list()).data if n.id == node_id), None)
        if node is None:
            raise NotFoundError(f"No such node: {node_id}.", status_code=404, code="not_found")
        recipient = recipient_from_attestation(node, await self.attestation(node_id), self._client.security, tier,
                                               await self._client._roots())
        return wrap({"node_id": node_id, "verified": True, "measurement": recipient.measurement,
                     "signing_key": recipient.signing_key, "encryption_key": recipient.encryption_key,
                     "root": recipient.report.root_subject, "issued_at": recipient.report.issued_at})


class AsyncKeys(_AsyncResource):
    async def list(self) -> Obj:
        return await self._t.request("GET", "/v1/keys")

    async def retrieve(self, key_id: str) -> Obj:
        return await self._t.request("GET", f"/v1/keys/{key_id}")

    async def create(self, *, kind: str = "secret", name: str = "", scopes: list[str] | None = None, **limits: Any) -> Obj:
        return await self._t.request("POST", "/v1/keys", json_body=_body({"kind": kind, "name": name, "scopes": scopes, **limits}))

    async def update(self, key_id: str, **limits: Any) -> Obj:
        return await self._t.request("PATCH", f"/v1/keys/{key_id}", json_body=limits)

    async def revoke(self, key_id: str) -> Obj:
        return await self._t.request("DELETE", f"/v1/keys/{key_id}")

    async def rotate(self, key_id: str, *, grace_seconds: int = 3600) -> Obj:
        return await self._t.request("POST", f"/v1/keys/{key_id}/rotate", json_body={"grace_seconds": grace_seconds})


class AsyncBalance(_AsyncResource):
    async def retrieve(self) -> Obj:
        return await self._t.request("GET", "/v1/balance")


class AsyncReceipts(_AsyncResource):
    async def list(self, *, request_id: str | None = None) -> Obj:
        return await self._t.request("GET", "/v1/receipts", params=_body({"request_id": request_id}))


class AsyncClient(_Options):
    """As :class:`Client`, with ``await`` (and ``async for`` over streams)."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        allow_http: bool = False,
        max_retries: int = 2,
        timeout: float | httpx.Timeout = 120.0,
        default_headers: dict[str, str] | None = None,
        retry_policy: RetryPolicy | None = None,
        http_client: httpx.AsyncClient | None = None,
        trust_roots: Any = None,
        allowed_measurements: list[str] | set[str] | None = None,
        keypair: ClientKeyPair | None = None,
        max_attestation_age: float | None = 24 * 3600,
    ):
        super().__init__(trust_roots=trust_roots, allowed_measurements=allowed_measurements, keypair=keypair,
                         max_attestation_age=max_attestation_age)
        self._transport = AsyncTransport(
            api_key=api_key, base_url=base_url, allow_http=allow_http, max_retries=max_retries, timeout=timeout,
            default_headers=default_headers, retry_policy=retry_policy, http_client=http_client,
        )
        self.chat = AsyncChat(self)
        self.completions = AsyncCompletions(self)
        self.responses = AsyncResponses(self)
        self.messages = AsyncMessages(self)
        self.embeddings = AsyncEmbeddings(self)
        self.models = AsyncModels(self)
        self.nodes = AsyncNodes(self)
        self.keys = AsyncKeys(self)
        self.balance = AsyncBalance(self)
        self.receipts = AsyncReceipts(self)

    @property
    def base_url(self) -> str:
        return self._transport.base_url

    async def usage(self) -> Obj:
        return await self.balance.retrieve()

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _roots(self):
        published = None
        if self.security.trust_roots is None and not os.environ.get("PI_TRUST_ROOTS"):
            try:
                published = (await self._transport.send("GET", PUBLISHED_ROOTS_PATH)).text or None
            except NotFoundError:
                published = None
        return self.security.roots(published)

    async def _recipient(self, model: str, tier: str):
        if tier == "standard":
            return gateway_recipient(await self._transport.request("GET", "/pki/public_key"))
        nodes = candidates((await self.nodes.list()).data, model, tier)
        if not nodes:
            raise SecurityError(f"No attested node serves {model} for a {tier}-tier request; nothing was sent.",
                                reason="no_attested_node")
        roots = await self._roots()
        failures = []
        for node in nodes:
            try:
                return recipient_from_attestation(node, await self.nodes.attestation(node.id), self.security, tier, roots)
            except (SecurityError, NotFoundError) as exc:
                failures.append((node.id, exc))
        raise _unverified(tier, failures)

    async def _sealed(self, body: dict[str, Any], tier: str, headers: dict[str, str]):
        for attempt in range(2):
            call = SealedCall(body, tier=tier, recipient=await self._recipient(body["model"], tier),
                              keypair=self.security.keypair)
            try:
                if body.get("stream"):
                    return await _astream(self._transport, SEALED_PATH, call.envelope, dict(headers), sealed=call)
                response = await self._transport.send("POST", SEALED_PATH, json_body=call.envelope, headers=dict(headers),
                                                      paid=True)
                return call.open_response(response.json(), _billed_request_id(response))
            except ConflictError as exc:
                if exc.code != "node_key_mismatch" or attempt:
                    raise
        raise AssertionError("unreachable")
