"""Typed exceptions, mapped from the server's envelope ``{"error": {"type", "code", "message", "request_id"}}``."""
from __future__ import annotations

from typing import Any


class PIError(Exception):
    """Base class of every exception this SDK raises."""


class APIError(PIError):
    """The server answered with an error (or an error event inside a stream)."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        type: str | None = None,
        request_id: str | None = None,
        param: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.type = type
        self.request_id = request_id
        self.param = param
        self.body = body
        self.headers = headers or {}

    def __str__(self) -> str:
        parts = [self.message]
        if self.status_code is not None:
            parts.append(f"(status {self.status_code}, code {self.code})")
        elif self.code:
            parts.append(f"({self.code})")
        if self.request_id:
            parts.append(f"[request {self.request_id}]")
        return " ".join(parts)


class AuthenticationError(APIError):
    """401: no key, a wrong, revoked or expired key."""


class PermissionDeniedError(APIError):
    """403: the key may not do this (scope, origin, model)."""


class NotFoundError(APIError):
    """404: no such model, node, key or stream."""


class InvalidRequestError(APIError):
    """400/405/413/415/422: the request itself is wrong."""


class ConflictError(APIError):
    """409: e.g. the same Idempotency-Key still in progress, a node's key changed."""


class InsufficientBalanceError(APIError):
    """402: not enough credit, a suspended wallet or a spend cap reached."""


class RateLimitError(APIError):
    """429: too many requests or tokens; ``retry_after`` in seconds when the server said."""

    @property
    def retry_after(self) -> float | None:
        from ._retry import parse_retry_after

        return parse_retry_after(self.headers.get("retry-after"))


class ServerError(APIError):
    """5xx: the platform or its nodes failed; retried automatically."""


class APIConnectionError(PIError):
    """The server could not be reached, or the connection broke and could not be resumed."""

    def __init__(self, message: str, *, request_id: str | None = None):
        super().__init__(message)
        self.message = message
        self.request_id = request_id


class APITimeoutError(APIConnectionError):
    """The request timed out."""


class SecurityError(PIError):
    """A sealed request cannot be trusted: unverified node, bad attestation, bad signature,
    decryption failure, a receipt that does not match the request."""

    def __init__(self, message: str, *, reason: str = "security", request_id: str | None = None):
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.request_id = request_id


_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    402: InsufficientBalanceError,
    403: PermissionDeniedError,
    404: NotFoundError,
    405: InvalidRequestError,
    409: ConflictError,
    413: InvalidRequestError,
    415: InvalidRequestError,
    422: InvalidRequestError,
    429: RateLimitError,
}

_BY_TYPE: dict[str, type[APIError]] = {
    "invalid_request_error": InvalidRequestError,
    "authentication_error": AuthenticationError,
    "billing_error": InsufficientBalanceError,
    "permission_error": PermissionDeniedError,
    "not_found_error": NotFoundError,
    "conflict_error": ConflictError,
    "rate_limit_error": RateLimitError,
}


def error_class(status: int | None, type_: str | None = None) -> type[APIError]:
    if status is not None and status in _BY_STATUS:
        return _BY_STATUS[status]
    if status is not None and status >= 500:
        return ServerError
    if type_ in _BY_TYPE:
        return _BY_TYPE[type_]
    if type_ in ("api_error", "server_error", "overloaded_error") and status is None:
        return ServerError  # an error event inside a stream
    return APIError


def from_body(status: int | None, body: Any, *, headers: dict[str, str] | None = None, request_id: str | None = None) -> APIError:
    """The exception for an error response (OpenAI/our envelope, or Anthropic's ``{"type": "error", "error": {...}}``)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or "error")
        code = error.get("code")
        type_ = error.get("type")
        request_id = error.get("request_id") or (body.get("request_id") if isinstance(body, dict) else None) or request_id
        param = error.get("param")
    else:
        message = body if isinstance(body, str) and body else f"HTTP {status}"
        code = type_ = param = None
    cls = error_class(status, type_)
    return cls(message, status_code=status, code=code, type=type_, request_id=request_id, param=param,
               body=body, headers=headers)
