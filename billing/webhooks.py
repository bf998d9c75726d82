"""Stripe webhooks: verify, store once, apply, in one transaction.

``POST /billing/stripe/webhook`` verifies ``Stripe-Signature`` over the raw body
against every configured secret (several while a secret is rotated; Stripe then
signs with each and sends several ``v1=`` values), within ``TOLERANCE`` seconds
either way. Tampered, stale, future-dated or unsigned → 400 and nothing changes.

A verified event is stored by id in the same transaction as its effect: the
handler registered for its type runs inside that transaction, so either both
land or neither does (a handler error rolls back and answers 500, and Stripe
retries). A second delivery of a stored event answers 200 and does nothing.
Events without a handler are stored as ``ignored``.

Handlers do database work only (no Stripe calls: those go in
``transaction.on_commit``) so the answer stays fast. Register with::

    @webhooks.handler("checkout.session.completed")
    def on_checkout_completed(event: dict) -> str | None: ...

The return value, if any, is stored as the event's note (in ``error``, with the
status ``processed``); raise ``webhooks.Ignore("why")`` to store the event as
ignored, or ``webhooks.Refuse("why")`` when the event is genuine but its effect
must not happen (a payment that does not match what we asked for): it is stored
as ``failed`` with the reason, for reconciliation to show, and answered 200
(a retry would be refused the same way). Writes a handler made before raising
either are kept.

Several modules may handle one type (``checkout.session.completed`` is a top-up
in payment mode and a subscription in subscription mode): each handler runs in
registration order and raises ``Ignore`` for events that are not its own. The
event is ``processed`` if any handler acted, else ``failed`` if one refused,
else ``ignored``.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable

import orjson
import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from console import access

from .models import StripeEvent

log = logging.getLogger(__name__)

TOLERANCE = 300  # seconds, as Stripe's own libraries
MAX_BODY = 1024 * 1024

Handler = Callable[[dict], "str | None"]
_HANDLERS: dict[str, list[Handler]] = {}


class Ignore(Exception):
    """Raised by a handler for an event it deliberately does not act on."""


class Refuse(Exception):
    """Raised by a handler for a genuine event whose effect it refuses (stored as failed)."""


class InvalidSignature(Exception):
    pass


def handler(event_type: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        registered = _HANDLERS.setdefault(event_type, [])
        name = f"{fn.__module__}.{fn.__qualname__}"
        # A module imported twice registers its function again: replace, never run it twice.
        registered[:] = [f for f in registered if f"{f.__module__}.{f.__qualname__}" != name] + [fn]
        return fn

    return register


def _load_handlers() -> None:
    # Handlers live beside the services they call; importing registers them.
    from django.utils.module_loading import autodiscover_modules

    autodiscover_modules("stripe_handlers")


def verify(*, payload: bytes, header: str | None, secrets: list[str], now: float | None = None) -> dict:
    """The event, if ``header`` signs ``payload`` with one of ``secrets`` recently enough."""
    if not header:
        raise InvalidSignature("no Stripe-Signature header")
    if not secrets:
        raise InvalidSignature("no webhook secret is configured")
    now = time.time() if now is None else now
    try:
        timestamp, _ = stripe.WebhookSignature._get_timestamp_and_signatures(header, "v1")
    except Exception:
        raise InvalidSignature("malformed Stripe-Signature header") from None
    # The library checks only the past; a timestamp far ahead is as suspect.
    if abs(now - timestamp) > TOLERANCE:
        raise InvalidSignature("the signature's timestamp is outside the 300 s tolerance")
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, tolerance=None)
            break
        except stripe.SignatureVerificationError:
            continue
    else:
        raise InvalidSignature("no signature matches a configured secret")
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise InvalidSignature("the body is not JSON") from None
    if not isinstance(event, dict) or event.get("object") != "event" or not isinstance(event.get("id"), str):
        raise InvalidSignature("the body is not a Stripe event")
    if not isinstance(event.get("type"), str) or not isinstance(event.get("data"), dict):
        raise InvalidSignature("the event has no type or data")
    return event


def event_apply(*, event: dict) -> tuple[StripeEvent, bool]:
    """Store the event and apply its effect in one transaction. (event row, applied now?)"""
    _load_handlers()
    fns = _HANDLERS.get(event["type"], [])
    created = dt.datetime.fromtimestamp(int(event.get("created") or 0), tz=dt.timezone.utc)
    try:
        with transaction.atomic():
            row = StripeEvent.objects.create(
                id=event["id"], type=event["type"], api_created=created, payload=event,
                status=StripeEvent.Status.IGNORED, processed_at=timezone.now(),
            )
            if fns:
                row.status, row.error = _dispatch(fns, event)
                row.save(update_fields=["status", "error"])
    except IntegrityError:
        existing = StripeEvent.objects.filter(id=event["id"]).first()
        if existing is None:
            raise  # a constraint of the effect broke: roll back, 500, Stripe retries
        return existing, False
    return row, True


def _dispatch(fns: list[Handler], event: dict) -> tuple[str, str]:
    """Run every handler of the event's type: (status, note)."""
    acted, refused, ignored = [], [], []
    for fn in fns:
        try:
            note = fn(event)
        except Ignore as why:
            ignored.append(str(why))
        except Refuse as why:
            refused.append(str(why))
        else:
            acted.append(str(note or ""))
    if acted:
        status, notes = StripeEvent.Status.PROCESSED, acted + refused
    elif refused:
        status, notes = StripeEvent.Status.FAILED, refused
    else:
        status, notes = StripeEvent.Status.IGNORED, ignored
    return status, "; ".join(n for n in notes if n)


def error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"type": "invalid_request_error", "code": code, "message": message}}, status=status)


@access.public  # signed by Stripe: the signature is the check
@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    length = request.META.get("CONTENT_LENGTH") or "0"
    if not length.isdigit() or int(length) > MAX_BODY:
        return error(413, "body_too_large", f"webhook bodies are at most {MAX_BODY} bytes")
    payload = request.body
    try:
        event = verify(
            payload=payload, header=request.headers.get("Stripe-Signature"), secrets=settings.STRIPE_WEBHOOK_SECRETS
        )
    except InvalidSignature as exc:
        log.warning("stripe webhook refused: %s", exc)
        return error(400, "invalid_signature", str(exc))
    row, applied = event_apply(event=event)
    return JsonResponse({"received": True, "id": row.id, "status": row.status, "duplicate": not applied})
