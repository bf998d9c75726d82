"""The /v1 API as a lean ASGI app.

Django's own ASGI handler runs sync signal receivers and middleware through
thread hops on every request; measured on this machine a bare async view
served ~1.7k req/s through it against ~24.5k req/s through Starlette (see
bench/asgi_overhead.py). The paid hot path therefore runs here, on Starlette
routing, using Django only for settings, models' tables and services. The
console, admin, webhooks and the key-management API stay on Django.
"""
from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import endpoints as ep
from .context import ApiRequest, error_response
from .agents import api as agents_api
from .errors import GatewayError
from .images import create_image, get_image
from .model_views import get_model, list_models
from .node_management import get_job, health, load_model, pull_model, topology, unload_model
from .nodes_api import list_nodes, node_attestation, node_heartbeat, register_node
from .openapi import openapi_json
from .protocols import messages
from .sealed import trace
from .sealed.flow import sealed_chat_completions
from .sealed.views import list_receipts, public_key

log = logging.getLogger(__name__)

_ALLOW_HEADERS = "authorization, content-type, x-api-key, idempotency-key, x-idempotency-key, x-request-id, x-session-id, last-event-id, anthropic-version, prefer"


def endpoint(handler, render=error_response):
    """Run ``handler``; every failure leaves in the route's error shape (``render``)."""

    async def run(request: Request) -> Response:
        req = ApiRequest(request)
        try:
            return await handler(req)
        except GatewayError as exc:
            return render(req, exc)
        except Exception:
            log.exception("unhandled error on %s (request %s)", request.url.path, req.request_id)
            return render(req, GatewayError("internal_error", "Internal error; nothing was charged twice."))

    return run


def preflight(request: Request) -> Response:
    """CORS preflight carries no key, so it is answered for any origin; the real
    request is then checked against the key's project's allowed origins."""
    origin = request.headers.get("origin")
    if origin is None or "access-control-request-method" not in request.headers:
        return error_response(ApiRequest(request), GatewayError("method_not_allowed", "OPTIONS is for CORS preflight."))
    return Response(
        status_code=204,
        headers={
            "access-control-allow-origin": origin,
            "access-control-allow-methods": "GET, POST, OPTIONS",
            "access-control-allow-headers": _ALLOW_HEADERS,
            "access-control-max-age": "600",
            "vary": "Origin",
        },
    )


async def _http_error(request: Request, exc: HTTPException) -> Response:
    req = ApiRequest(request)
    render = messages.error_response if request.url.path.startswith("/v1/messages") else error_response
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path}."
        return render(req, GatewayError("method_not_allowed", message, headers={"allow": allow} if allow else None))
    return render(req, GatewayError("not_found", f"No such endpoint: {request.method} {request.url.path}."))


routes = [
    Route("/v1/chat/completions", endpoint(ep.chat_completions), methods=["POST"]),
    Route("/v1/completions", endpoint(ep.completions), methods=["POST"]),
    Route("/v1/embeddings", endpoint(ep.embeddings), methods=["POST"]),
    Route("/v1/responses", endpoint(ep.create_response), methods=["POST"]),
    Route("/v1/responses/{response_id}", endpoint(ep.get_response), methods=["GET"]),
    Route("/v1/messages", endpoint(ep.create_message, messages.error_response), methods=["POST"]),
    Route("/v1/messages/count_tokens", endpoint(ep.count_message_tokens, messages.error_response), methods=["POST"]),
    Route("/v1/streams/{request_id}", endpoint(ep.stream_get), methods=["GET"]),
    Route("/v1/models", endpoint(list_models), methods=["GET"]),
    Route("/v1/models/{model_id:path}", endpoint(get_model), methods=["GET"]),
    Route("/v1/nodes", endpoint(list_nodes), methods=["GET"]),
    Route("/v1/nodes/register", endpoint(register_node), methods=["POST"]),
    Route("/v1/nodes/{node_id}/heartbeat", endpoint(node_heartbeat), methods=["POST"]),
    Route("/v1/nodes/{node_id}/attestation", endpoint(node_attestation), methods=["GET"]),
    Route("/v1/nodes/topology", endpoint(topology), methods=["GET"]),
    Route("/v1/nodes/health", endpoint(health), methods=["GET"]),
    Route("/v1/nodes/{node_id}/models/load", endpoint(load_model), methods=["POST"]),
    Route("/v1/nodes/{node_id}/models/unload", endpoint(unload_model), methods=["POST"]),
    Route("/v1/nodes/{node_id}/models/pull", endpoint(pull_model), methods=["POST"]),
    Route("/v1/jobs/{job_id}", endpoint(get_job), methods=["GET"]),
    Route("/v1/images/generations", endpoint(create_image), methods=["POST"]),
    Route("/v1/images", endpoint(create_image), methods=["POST"]),
    Route("/v1/images/{job_id}/{index}", endpoint(get_image), methods=["GET"]),
    Route("/v1/agents/runs", endpoint(agents_api.create_run), methods=["POST"]),
    Route("/v1/agents/runs/{run_id}/events", endpoint(agents_api.run_events), methods=["GET"]),
    Route("/v1/openapi.json", endpoint(openapi_json), methods=["GET"]),
    Route("/v1/sealed/chat/completions", endpoint(sealed_chat_completions), methods=["POST"]),
    Route("/v1/receipts", endpoint(list_receipts), methods=["GET"]),
    Route("/pki/public_key", endpoint(public_key), methods=["GET"]),
]

_router = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})


async def app(scope, receive, send) -> None:
    if scope["method"] == "OPTIONS":
        return await preflight(Request(scope, receive))(scope, receive, send)
    await _router(scope, receive, send)


app = trace.wrap_asgi(app)  # the test-only trace of every byte (GATEWAY_TRACE_FILE); unchanged when off
