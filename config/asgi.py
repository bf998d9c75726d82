"""The ASGI entry point: one process serves the API, the console and websockets.

* ``/v1/*`` (but the key-management API) → the gateway's lean ASGI app;
* ``/chat/relay/*`` → Web Chat's answer streams (console.relay), a Channels consumer with the
  session user in its scope;
* everything else over HTTP → Django (console, admin, allauth, webhooks);
* websockets → Channels;
* lifespan → start/stop the gateway's background machinery.

In front of all of them (config/ops.py): /healthz, /readyz and /metrics, and per request the
metrics, the access log line and X-Served-By.
"""
from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from django.conf import settings  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402

django_app = get_asgi_application()

from channels.routing import URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from channels.sessions import CookieMiddleware, SessionMiddleware  # noqa: E402
from channels.auth import AuthMiddleware  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from config import ops  # noqa: E402
from config.bodyguard import guard  # noqa: E402
from gateway import lifecycle  # noqa: E402
from gateway.app import app as gateway_app  # noqa: E402
from django.urls import re_path  # noqa: E402
from console.relay import RelayConsumer, RelayNotFound  # noqa: E402

# Served by Django + DRF although under /v1: not hot, and they need the ORM.
MANAGEMENT_PREFIXES = ("/v1/keys", "/v1/balance")
RELAY_PREFIX = "/chat/relay/"
PKI_PATH = "/pki/public_key"  # the gateway's sealed-request keys (gateway/SEALED.md)

# Django reads a whole body before any view runs: bound its size (the API's paths) and its time.
http_app = guard(django_app if settings.PRODUCTION else ASGIStaticFilesHandler(django_app),
                 api_prefixes=MANAGEMENT_PREFIXES)
websocket_app = AllowedHostsOriginValidator(CookieMiddleware(SessionMiddleware(AuthMiddleware(URLRouter([])))))
relay_app = guard(CookieMiddleware(SessionMiddleware(AuthMiddleware(URLRouter([
    re_path(r"^chat/relay/(?P<conversation_id>conv_[A-Za-z0-9]{1,40})/$", RelayConsumer.as_asgi()),
    re_path(r"", RelayNotFound.as_asgi()),
])))), api_prefixes=(RELAY_PREFIX,))


async def route_http(scope, receive, send):
    path = scope["path"]
    if (path.startswith("/v1/") and not path.startswith(MANAGEMENT_PREFIXES)) or path == PKI_PATH:
        return await gateway_app(scope, receive, send)
    if path.startswith(RELAY_PREFIX):
        return await relay_app(scope, receive, send)
    return await http_app(scope, receive, send)


async def application(scope, receive, send):
    kind = scope["type"]
    if kind == "http":
        if scope["path"] in ops.PATHS:
            return await ops.serve(scope, receive, send)
        return await ops.observe(route_http, scope, receive, send)
    if kind == "websocket":
        return await websocket_app(scope, receive, send)
    if kind == "lifespan":
        return await lifecycle.lifespan(scope, receive, send)
    raise ValueError(f"unsupported ASGI scope type {kind!r}")
