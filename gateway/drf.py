"""Django REST framework glue for the /v1 management API: API-key authentication,
secret-key-only permission and the one error envelope.

Kept apart from the views because DRF imports these classes from settings while
``rest_framework.views`` itself is being imported.
"""
from __future__ import annotations

import logging
import re

from asgiref.sync import iscoroutinefunction
from django.http import Http404, JsonResponse
from django.utils import timezone
from django.utils.decorators import sync_and_async_middleware
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.response import Response

from config.ids import new_id
from console import keys
from console.models import ApiKey

from .auth import presented_key
from .errors import GatewayError, envelope

log = logging.getLogger(__name__)


class _Failed(exceptions.APIException):
    def __init__(self, code: str, message: str):
        self.gateway_error = GatewayError(code, message)
        self.status_code = self.gateway_error.status
        super().__init__(message)


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request):
        raw = presented_key(request.headers)
        if raw is None:
            return None
        parsed = keys.parse(raw)
        key = None
        if parsed is not None:
            key = ApiKey.objects.select_related("project__organization").filter(lookup=parsed.lookup).first()
        if key is None or not keys.matches(raw, key.hash):
            raise _Failed("invalid_api_key", "The API key is not valid.")
        if key.status != ApiKey.Status.ACTIVE:
            raise _Failed("invalid_api_key", "The API key has been revoked.")
        if key.expires_at is not None and key.expires_at <= timezone.now():
            raise _Failed("invalid_api_key", "The API key has expired.")
        return (None, key)

    def authenticate_header(self, request):
        return "Bearer"


class SecretKeyOnly(BasePermission):
    def has_permission(self, request, view):
        if request.auth is None:
            raise _Failed("unauthenticated", "No API key provided. Send 'Authorization: Bearer sk_live_…'.")
        if request.auth.kind != ApiKey.Kind.SECRET:
            raise _Failed("permission_denied", "This endpoint needs a secret key; publishable keys cannot manage keys.")
        if request.auth.scopes:  # a scoped key must not mint itself an unscoped one
            raise _Failed("permission_denied", "This endpoint needs a key without scopes; this key's scopes exclude it.")
        return True


def _request_id(request) -> str:
    return getattr(request, "request_id", None) or new_id("req")


def envelope_exception_handler(exc, context):
    request = context["request"]
    if isinstance(exc, _Failed):
        error = exc.gateway_error
    elif isinstance(exc, (Http404, ApiKey.DoesNotExist)):
        error = GatewayError("not_found", "No such object in this project.")
    elif isinstance(exc, exceptions.ValidationError):
        field, messages = next(iter(exc.detail.items())) if isinstance(exc.detail, dict) else (None, exc.detail)
        message = messages[0] if isinstance(messages, list) else str(messages)
        error = GatewayError("invalid_request", f"Invalid value for '{field}': {message}", param=field)
    elif isinstance(exc, exceptions.MethodNotAllowed):
        error = GatewayError("method_not_allowed", str(exc.detail))
    elif isinstance(exc, exceptions.ParseError):
        error = GatewayError("invalid_request", f"The request body is not valid JSON: {exc.detail}")
    elif isinstance(exc, exceptions.UnsupportedMediaType):
        error = GatewayError("unsupported_media_type", str(exc.detail))
    elif isinstance(exc, ValueError):
        error = GatewayError("invalid_request", str(exc))
    elif isinstance(exc, exceptions.APIException):
        error = GatewayError("invalid_request", str(exc.detail))
    else:  # never Django's HTML error page under /v1
        log.exception("unhandled error on %s", request.path)
        error = GatewayError("internal_error", "Internal error.")
    return Response(envelope(error.code, error.message, _request_id(request), param=error.param), status=error.status)


@csrf_exempt  # an API path (keys, not cookies): an unknown one is 404 in the envelope, never CSRF's HTML 403
def not_found(request, *args, **kwargs):
    return JsonResponse(
        envelope("not_found", f"No such endpoint: {request.method} {request.path}.", _request_id(request)), status=404
    )


_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")


def request_id_middleware(get_response):
    """Give every Django response our own X-Request-ID (a valid client id is echoed beside it)."""

    def assign(request) -> str:
        request.request_id = new_id("req")
        return request.request_id

    def label(request, response) -> None:
        response["X-Request-ID"] = request.request_id
        given = request.headers.get("x-client-request-id") or request.headers.get("x-request-id")
        if given and _CLIENT_ID.match(given):
            response["X-Client-Request-ID"] = given

    if iscoroutinefunction(get_response):

        async def middleware(request):
            assign(request)
            response = await get_response(request)
            label(request, response)
            return response

    else:

        def middleware(request):
            assign(request)
            response = get_response(request)
            label(request, response)
            return response

    return middleware


request_id_middleware = sync_and_async_middleware(request_id_middleware)
