"""The one error envelope: ``{"error": {"type", "code", "message", "request_id"}}``.

Every failure under /v1 is raised as ``GatewayError(code, message)``; the code
fixes the HTTP status and the OpenAI-style ``type``.
"""
from __future__ import annotations

from typing import Any

import orjson

# code -> (status, type)
CODES: dict[str, tuple[int, str]] = {
    "invalid_request": (400, "invalid_request_error"),
    "idempotency_key_required": (400, "invalid_request_error"),
    "unsupported_content": (400, "invalid_request_error"),
    "unsupported_operation": (400, "invalid_request_error"),
    "invalid_api_key": (401, "authentication_error"),
    "unauthenticated": (401, "authentication_error"),
    "insufficient_balance": (402, "billing_error"),
    "wallet_suspended": (402, "billing_error"),
    "spend_cap_reached": (402, "billing_error"),
    "permission_denied": (403, "permission_error"),
    "origin_not_allowed": (403, "permission_error"),
    "model_forbidden": (403, "permission_error"),
    "not_found": (404, "not_found_error"),
    "model_not_found": (404, "not_found_error"),
    "method_not_allowed": (405, "invalid_request_error"),
    "body_timeout": (408, "invalid_request_error"),
    "idempotency_in_progress": (409, "conflict_error"),
    "node_key_mismatch": (409, "conflict_error"),
    "body_too_large": (413, "invalid_request_error"),
    "unsupported_media_type": (415, "invalid_request_error"),
    "idempotency_key_reused": (422, "invalid_request_error"),
    "rate_limited": (429, "rate_limit_error"),
    "stream_cancelled": (499, "api_error"),
    "internal_error": (500, "api_error"),
    "upstream_unavailable": (502, "api_error"),
    "no_nodes_available": (503, "api_error"),
    "service_unavailable": (503, "api_error"),
}


class GatewayError(Exception):
    def __init__(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return CODES[self.code][0]

    @property
    def type(self) -> str:
        return CODES[self.code][1]


def envelope(code: str, message: str, request_id: str, *, param: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": CODES[code][1], "code": code, "message": message, "request_id": request_id}
    if param is not None:
        error["param"] = param
    return {"error": error}


def envelope_bytes(exc: GatewayError, request_id: str) -> bytes:
    return orjson.dumps(envelope(exc.code, exc.message, request_id, param=exc.param))


def status_code_for(code: str) -> int:
    return CODES[code][0]
