"""HTTP under the resources: auth, retries, error mapping, SSE streams that resume after a cut."""
from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from . import __version__
from ._errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    InvalidRequestError,
    from_body,
)
from ._retry import RetryPolicy, method_retryable, parse_retry_after, status_retryable
from ._types import wrap

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
TERMINAL_TYPES = frozenset({"response.completed", "response.failed", "response.incomplete", "message_stop"})


def resolve_api_key(api_key: str | None) -> str:
    key = api_key or os.environ.get("PI_API_KEY") or os.environ.get("OPENAI_API_KEY")
    if not key:
        from .config import load_config

        key = load_config().get("api_key")
    if not key:
        raise AuthenticationError(
            "No API key: pass api_key=, set PI_API_KEY (or OPENAI_API_KEY), or run `pi login`.",
            status_code=None, code="missing_api_key",
        )
    return key


def resolve_base_url(base_url: str | None, *, allow_http: bool) -> str:
    url = base_url or os.environ.get("PI_BASE_URL")
    if not url:
        from .config import load_config

        url = load_config().get("base_url") or DEFAULT_BASE_URL
    url = url.rstrip("/")
    url = url.removesuffix("/v1")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequestError(f"base_url must be an http(s) URL, got {url!r}")
    if parts.scheme == "http" and not allow_http and not is_local(parts.hostname):
        raise InvalidRequestError(
            f"Refusing plain http to {parts.hostname}: keys and prompts would cross the network unencrypted. "
            "Use https, or pass allow_http=True if you really mean it.", code="insecure_transport",
        )
    return url


def is_local(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _headers_of(response: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in response.headers.items()}


def _error_for(response: httpx.Response, body: Any = None) -> APIError:
    if body is None:
        try:
            body = response.json()
        except (ValueError, json.JSONDecodeError):
            body = response.text
    return from_body(response.status_code, body, headers=_headers_of(response),
                     request_id=response.headers.get("x-request-id"))


def _decode(response: httpx.Response) -> Any:
    if not response.content:
        return None
    ctype = response.headers.get("content-type", "")
    if "json" in ctype:
        return wrap(response.json())
    return response.text


def _error_code(response: httpx.Response) -> str | None:
    try:
        return response.json().get("error", {}).get("code")
    except Exception:  # noqa: BLE001 - not JSON: no code
        return None


# --- server-sent events -----------------------------------------------------------


@dataclass
class SSEEvent:
    data: str
    event: str | None = None
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class _SSEParser:
    lines: list[str] = field(default_factory=list)
    event: str | None = None
    id: str | None = None

    def feed(self, line: str) -> SSEEvent | None:
        """One line (without its newline); an event when a blank line ends one."""
        if line == "":
            if not self.lines and self.event is None:
                self.id = None
                return None
            event = SSEEvent("\n".join(self.lines), self.event, self.id)
            self.lines, self.event, self.id = [], None, None
            return event
        if line.startswith(":"):
            return None  # a comment: heartbeat
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self.lines.append(value)
        elif name == "event":
            self.event = value
        elif name == "id":
            self.id = value
        return None


def _terminal(event: SSEEvent) -> tuple[bool, APIError | None]:
    """Does the stream end with this event, and with which error?"""
    if event.data.strip() == "[DONE]":
        return True, None
    try:
        data = json.loads(event.data)
    except ValueError:
        return False, None
    if not isinstance(data, dict):
        return False, None
    if "error" in data and (event.event in (None, "error") or data.get("type") == "error"):
        return True, from_body(None, data)
    kind = data.get("type") or event.event
    return kind in TERMINAL_TYPES, None


class _Cut(Exception):
    """The stream's connection ended before its last event."""


# --- the clients' common core --------------------------------------------------------


class _Core:
    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None,
        allow_http: bool,
        max_retries: int,
        timeout: float | httpx.Timeout,
        default_headers: dict[str, str] | None,
        retry_policy: RetryPolicy | None,
    ):
        self.api_key = resolve_api_key(api_key)
        self.base_url = resolve_base_url(base_url, allow_http=allow_http)
        self.allow_http = allow_http
        self.retry = retry_policy or RetryPolicy(max_retries=max_retries)
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout, connect=10.0)
        self.default_headers = dict(default_headers or {})

    def url(self, path: str) -> str:
        return self.base_url + path

    def headers(self, extra: dict[str, str] | None, *, idempotency_key: str | None) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self.api_key}",
            "User-Agent": f"private-inference-python/{__version__}",
            "Accept": "application/json",
            **self.default_headers,
        }
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        headers.update({k: v for k, v in (extra or {}).items() if v is not None})
        return headers

    @staticmethod
    def idempotency_key(extra: dict[str, str] | None, paid: bool) -> str | None:
        for name, value in (extra or {}).items():
            if name.lower() == "idempotency-key":
                return value
        return f"pi-{uuid.uuid4().hex}" if paid else None

    def _retry_after(self, response: httpx.Response | None) -> float | None:
        return parse_retry_after(response.headers.get("retry-after")) if response is not None else None


def _connection_error(exc: Exception, request_id: str | None = None) -> APIConnectionError:
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"Request timed out: {exc}", request_id=request_id)
    return APIConnectionError(f"Connection error: {exc!r}", request_id=request_id)


def _may_retry_transport(exc: Exception, method: str, paid: bool) -> bool:
    # A refused connection never reached the server: always safe. Otherwise only idempotent calls.
    return isinstance(exc, httpx.ConnectError) or method_retryable(method, paid)


class SyncTransport(_Core):
    def __init__(self, *, http_client: httpx.Client | None = None, **kwargs):
        super().__init__(**kwargs)
        self.http = http_client or httpx.Client(timeout=self.timeout)
        self.sleep = time.sleep

    def close(self) -> None:
        self.http.close()

    def send(self, method: str, path: str, *, json_body: Any = None, params: dict | None = None,
             headers: dict[str, str] | None = None, paid: bool = False, stream: bool = False) -> httpx.Response:
        """The response of the first try that is not worth retrying; raises the mapped error for >= 400."""
        idem = self.idempotency_key(headers, paid)
        all_headers = self.headers(headers, idempotency_key=idem)
        attempt = 0
        while True:
            request = self.http.build_request(method, self.url(path), json=json_body, params=params, headers=all_headers)
            try:
                response = self.http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if attempt < self.retry.max_retries and _may_retry_transport(exc, method, paid):
                    self.sleep(self.retry.delay(attempt))
                    attempt += 1
                    continue
                raise _connection_error(exc) from exc
            if response.status_code < 400:
                return response
            if stream:
                response.read()
                response.close()
            if (attempt < self.retry.max_retries and status_retryable(response.status_code, _error_code(response))
                    and (method_retryable(method, paid) or response.status_code == 429)):
                self.sleep(self.retry.delay(attempt, self._retry_after(response)))
                attempt += 1
                continue
            raise _error_for(response)

    def request(self, method: str, path: str, **kwargs) -> Any:
        return _decode(self.send(method, path, **kwargs))

    def events(self, method: str, path: str, *, json_body: Any = None, headers: dict[str, str] | None = None,
               paid: bool = True, on_response=None) -> Iterator[SSEEvent]:
        """SSE events of a stream; a cut connection is resumed with Last-Event-ID at
        GET /v1/streams/{request_id} (nothing generated or billed twice)."""
        headers = {**(headers or {}), "Accept": "text/event-stream"}
        idem = self.idempotency_key(headers, paid)
        if idem:
            headers["Idempotency-Key"] = idem
        response = self.send(method, path, json_body=json_body, headers=headers, paid=paid, stream=True)
        request_id = response.headers.get("x-request-id")
        if on_response:
            on_response(response)
        last_id: str | None = None
        resumes = 0
        while True:
            fresh = 0
            try:
                try:
                    parser = _SSEParser()
                    for line in response.iter_lines():
                        event = parser.feed(line)
                        if event is None:
                            continue
                        if event.id:
                            last_id = event.id
                        fresh += 1
                        done, error = _terminal(event)
                        if error is not None:
                            error.request_id = error.request_id or request_id
                            raise error
                        yield event
                        if done:
                            return
                except (httpx.TransportError, httpx.StreamError) as exc:
                    raise _Cut(repr(exc)) from exc
                if resumes and fresh == 0:
                    return  # resumed, and the stream had already ended
                raise _Cut("the stream ended before its last event")
            except _Cut as cut:
                if not request_id:
                    raise APIConnectionError(f"Stream broken ({cut}) and the server named no request id to resume.") from cut
                if resumes >= max(self.retry.max_retries, 1):
                    raise APIConnectionError(f"Stream broken ({cut}); gave up resuming.", request_id=request_id) from cut
                self.sleep(self.retry.delay(resumes))
                resumes += 1
            finally:
                response.close()
            resume_headers = {"Accept": "text/event-stream", "Last-Event-ID": last_id or "evt_0"}
            response = self.send("GET", f"/v1/streams/{request_id}", headers=resume_headers, stream=True)


class AsyncTransport(_Core):
    def __init__(self, *, http_client: httpx.AsyncClient | None = None, **kwargs):
        super().__init__(**kwargs)
        self.http = http_client or httpx.AsyncClient(timeout=self.timeout)
        self.sleep = asyncio.sleep

    async def close(self) -> None:
        await self.http.aclose()

    async def send(self, method: str, path: str, *, json_body: Any = None, params: dict | None = None,
                   headers: dict[str, str] | None = None, paid: bool = False, stream: bool = False) -> httpx.Response:
        idem = self.idempotency_key(headers, paid)
        all_headers = self.headers(headers, idempotency_key=idem)
        attempt = 0
        while True:
            request = self.http.build_request(method, self.url(path), json=json_body, params=params, headers=all_headers)
            try:
                response = await self.http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if attempt < self.retry.max_retries and _may_retry_transport(exc, method, paid):
                    await self.sleep(self.retry.delay(attempt))
                    attempt += 1
                    continue
                raise _connection_error(exc) from exc
            if response.status_code < 400:
                return response
            if stream:
                await response.aread()
                await response.aclose()
            if (attempt < self.retry.max_retries and status_retryable(response.status_code, _error_code(response))
                    and (method_retryable(method, paid) or response.status_code == 429)):
                await self.sleep(self.retry.delay(attempt, self._retry_after(response)))
                attempt += 1
                continue
            raise _error_for(response)

    async def request(self, method: str, path: str, **kwargs) -> Any:
        return _decode(await self.send(method, path, **kwargs))

    async def events(self, method: str, path: str, *, json_body: Any = None, headers: dict[str, str] | None = None,
                     paid: bool = True, on_response=None) -> AsyncIterator[SSEEvent]:
        headers = {**(headers or {}), "Accept": "text/event-stream"}
        idem = self.idempotency_key(headers, paid)
        if idem:
            headers["Idempotency-Key"] = idem
        response = await self.send(method, path, json_body=json_body, headers=headers, paid=paid, stream=True)
        request_id = response.headers.get("x-request-id")
        if on_response:
            on_response(response)
        last_id: str | None = None
        resumes = 0
        while True:
            fresh = 0
            try:
                try:
                    parser = _SSEParser()
                    async for line in response.aiter_lines():
                        event = parser.feed(line)
                        if event is None:
                            continue
                        if event.id:
                            last_id = event.id
                        fresh += 1
                        done, error = _terminal(event)
                        if error is not None:
                            error.request_id = error.request_id or request_id
                            raise error
                        yield event
                        if done:
                            return
                except (httpx.TransportError, httpx.StreamError) as exc:
                    raise _Cut(repr(exc)) from exc
                if resumes and fresh == 0:
                    return
                raise _Cut("the stream ended before its last event")
            except _Cut as cut:
                if not request_id:
                    raise APIConnectionError(f"Stream broken ({cut}) and the server named no request id to resume.") from cut
                if resumes >= max(self.retry.max_retries, 1):
                    raise APIConnectionError(f"Stream broken ({cut}); gave up resuming.", request_id=request_id) from cut
                await self.sleep(self.retry.delay(resumes))
                resumes += 1
            finally:
                await response.aclose()
            resume_headers = {"Accept": "text/event-stream", "Last-Event-ID": last_id or "evt_0"}
            response = await self.send("GET", f"/v1/streams/{request_id}", headers=resume_headers, stream=True)
