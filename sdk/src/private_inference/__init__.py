"""Python SDK for the private inference platform (see sdk/README.md)."""
from __future__ import annotations

__version__ = "0.1.0"

from ._client import AsyncClient, AsyncStream, Client, Stream
from ._errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    ConflictError,
    InsufficientBalanceError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    PIError,
    RateLimitError,
    SecurityError,
    ServerError,
)
from ._retry import RetryPolicy
from ._types import Obj
from .crypto import ClientKeyPair

__all__ = [
    "APIConnectionError", "APIError", "APITimeoutError", "AsyncClient", "AsyncStream", "AuthenticationError", "Client",
    "ClientKeyPair", "ConflictError", "InsufficientBalanceError", "InvalidRequestError", "NotFoundError", "Obj",
    "PIError", "PermissionDeniedError", "RateLimitError", "RetryPolicy", "SecurityError", "ServerError", "Stream",
]
