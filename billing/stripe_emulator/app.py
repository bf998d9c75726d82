"""Assemble and run the emulator: localstripe on an internal port, the front on the public one.

Both listen on 127.0.0.1 only and share one event loop in one process. The front answers the
routes of `api`, `pages` and `admin`, and proxies every other `/v1/…` request to localstripe,
reshaping its JSON for the current API version (`bridge.compat`).
"""
from __future__ import annotations

import base64
import hashlib
import logging

import aiohttp
from aiohttp import web

from billing.stripe_emulator import admin, api, bridge, pages
from billing.stripe_emulator.hub import Hub
from billing.stripe_emulator.state import State, StripeError, expand_list, params

log = logging.getLogger("stripe_emulator")

HOST = "127.0.0.1"


def _api_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme == "Bearer":
        return value.strip()
    if scheme == "Basic":
        try:
            return base64.b64decode(value).decode().split(":", 1)[0]
        except ValueError:
            return None
    return None


@web.middleware
async def errors(request, handler):
    try:
        return await handler(request)
    except StripeError as exc:
        return exc.response()
    except web.HTTPException:
        raise
    except Exception as exc:
        # An emulator bug: say so in Stripe's envelope (the stripe library shows the message).
        log.exception("emulator error on %s %s", request.method, request.path)
        return StripeError(500, f"Stripe emulator error: {type(exc).__name__}: {exc}", type_="api_error").response()


@web.middleware
async def auth(request, handler):
    if request.path.startswith(("/v1/", "/v2/")):
        key = _api_key(request)
        expected = request.app["state"].api_key
        if not key or not key.startswith(("sk_", "rk_")) or (expected and key != expected):
            raise StripeError(401, f"Invalid API Key provided: {(key or '')[:8]}***", type_="invalid_request_error")
    return await handler(request)


@web.middleware
async def idempotency(request, handler):
    """Stripe's idempotent requests: a POST repeated with the same Idempotency-Key gets the first
    answer again (``Idempotent-Replayed: true``); with other parameters, a 400; while the first is
    still running, a 409."""
    key = request.headers.get("Idempotency-Key")
    if request.method != "POST" or not key or not request.path.startswith("/v1/"):
        return await handler(request)
    state: State = request.app["state"]
    scope = (_api_key(request) or "", key)
    fingerprint = hashlib.sha256(request.path.encode() + b"\0" + await request.read()).hexdigest()
    cached = state.idempotency.get(scope)
    if cached is not None:
        first, status, body, content_type = cached
        if first != fingerprint:
            raise StripeError(400, "Keys for idempotent requests can only be used with the same parameters "
                              "they were first used with.", type_="idempotency_error")
        if status == 0:
            raise StripeError(409, "There is currently another in-progress request using this Stripe token.",
                              code="idempotency_key_in_use", type_="idempotency_error")
        return web.Response(status=status, body=body, content_type=content_type,
                            headers={"Idempotent-Replayed": "true", "Idempotency-Key": key})
    state.idempotency[scope] = (fingerprint, 0, b"", "")
    try:
        response = await handler(request)
    except StripeError as exc:
        response = exc.response()
    except BaseException:
        state.idempotency.pop(scope, None)
        raise
    if response.status >= 500:
        state.idempotency.pop(scope, None)
    else:
        state.idempotency[scope] = (fingerprint, response.status, response.body, response.content_type)
    response.headers["Idempotency-Key"] = key
    return response


async def proxy(request: web.Request) -> web.StreamResponse:
    """Everything the front does not serve goes to localstripe, reshaped on the way back."""
    if not request.path.startswith("/v1/"):
        raise web.HTTPNotFound(text="Not found (the emulator serves /v1/…, /pay/…, /portal/…, /_emulator/…)")
    app = request.app
    body = await request.read()
    data = await params(request)
    expand = expand_list(data)
    headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
    async with app["client"].request(request.method, app["localstripe_url"] + request.path_qs, data=body,
                                     headers=headers) as upstream:
        raw = await upstream.read()
        if upstream.content_type == "application/json":
            payload = await upstream.json()
            if upstream.status < 300:
                payload = bridge.compat(payload, expand)
            elif "error" in payload and upstream.status == 404:
                payload["error"].setdefault("code", "resource_missing")
            return web.json_response(payload, status=upstream.status)
        return web.Response(status=upstream.status, body=raw, content_type=upstream.content_type)


def build(*, public_url: str, api_key: str | None = None) -> web.Application:
    hub = Hub()
    state = State(hub=hub, public_url=public_url.rstrip("/"), api_key=api_key)
    bridge.install(hub)
    api.install_compat(state)
    app = web.Application(middlewares=[errors, auth, idempotency], client_max_size=4 * 1024 * 1024)
    app["state"] = state
    app.add_routes(admin.routes)
    app.add_routes(pages.routes)
    app.add_routes(api.routes)
    app.router.add_route("*", "/{tail:.*}", proxy)

    async def start_localstripe(app: web.Application):
        await hub.start()
        runner = web.AppRunner(bridge.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        app["localstripe_url"] = f"http://{HOST}:{port}"
        app["client"] = aiohttp.ClientSession()
        yield
        await app["client"].close()
        await runner.cleanup()
        await hub.stop()

    app.cleanup_ctx.append(start_localstripe)
    return app


def run(*, port: int, public_url: str | None = None, api_key: str | None = None,
        webhook_url: str | None = None, webhook_secrets: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    public_url = public_url or f"http://{HOST}:{port}"
    app = build(public_url=public_url, api_key=api_key)
    if webhook_url:
        app["state"].hub.register(url=webhook_url, secrets_=webhook_secrets or [], enabled_events=None,
                                  endpoint_id="we_cli")

    async def announce(app):
        # The readiness line the test fixture (and `make stripe-emulator` users) wait for.
        print(f"stripe emulator listening on http://{HOST}:{port}", flush=True)

    app.on_startup.append(announce)
    web.run_app(app, host=HOST, port=port, print=None, access_log=None, handle_signals=True)



