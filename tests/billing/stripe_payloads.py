"""Stripe objects and events as Stripe sends them, signed with the stripe library's own scheme,
posted to our webhook view through Django's test client (webhook-level tests).

The objects carry the fields our handlers read, shaped as in Stripe's API reference
(checkout.session, refund, charge, dispute); the end-to-end tests get real ones from
the emulator instead.
"""
from __future__ import annotations

import itertools
import time

import orjson
import stripe
from django.test import Client

from billing.models import TopupSession

SECRET = "whsec_test_w1_0123456789abcdef"
URL = "/billing/stripe/webhook"
_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}_test{next(_ids):06d}{int(time.time() * 1000) % 100000:05d}"


def event(type_: str, obj: dict, *, event_id: str | None = None) -> dict:
    return {
        "id": event_id or new_id("evt"), "object": "event", "type": type_, "created": int(time.time()),
        "livemode": False, "api_version": "2025-01-27.acacia", "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None}, "data": {"object": obj},
    }


def sign(payload: bytes, secret: str = SECRET) -> str:
    return stripe.WebhookSignature.generate_signature_header(payload.decode(), secret)


def post(evt: dict, *, client: Client | None = None, secret: str = SECRET):
    payload = orjson.dumps(evt)
    return (client or Client()).post(URL, data=payload, content_type="application/json",
                                     HTTP_STRIPE_SIGNATURE=sign(payload, secret))


def topup_row(tenant, amount: int, *, customer: str | None = None) -> TopupSession:
    """What the console writes before sending the customer to Checkout (Stripe's side is faked here)."""
    account = tenant.organization.billing_account
    if customer is not None and account.stripe_customer_id != customer:
        account.stripe_customer_id = customer
        account.save(update_fields=["stripe_customer_id"])
    row = TopupSession.objects.create(account=account, amount=amount, created_by=tenant.user)
    row.stripe_session_id = new_id("cs")
    row.status = TopupSession.Status.OPEN
    row.save(update_fields=["stripe_session_id", "status"])
    return row


def session(row: TopupSession, *, paid: bool = True, amount_total: int | None = None, customer: str | None = None,
            **overrides) -> dict:
    """The checkout.session object of a top-up row, as completed on Stripe."""
    account = row.account
    obj = {
        "id": row.stripe_session_id, "object": "checkout.session", "mode": "payment", "status": "complete",
        "payment_status": "paid" if paid else "unpaid",
        "amount_subtotal": row.amount // 10_000 if amount_total is None else amount_total,
        "amount_total": row.amount // 10_000 if amount_total is None else amount_total,
        "currency": row.currency, "customer": customer or account.stripe_customer_id,
        "client_reference_id": row.public_id,
        "metadata": {"purpose": "topup", "account_id": str(account.id), "amount_micros": str(row.amount),
                     "topup_session": row.public_id},
        "payment_intent": overrides.pop("payment_intent", None) or f"pi_for_{row.stripe_session_id}",
        "livemode": False, "created": int(time.time()),
    }
    obj.update(overrides)
    return obj


def refund(payment_intent: str, amount_cents: int, *, status: str = "succeeded", refund_id: str | None = None,
           metadata: dict | None = None) -> dict:
    return {"id": refund_id or new_id("re"), "object": "refund", "amount": amount_cents, "currency": "usd",
            "payment_intent": payment_intent, "charge": f"ch_for_{payment_intent}", "status": status,
            "metadata": metadata or {}, "created": int(time.time()), "reason": "requested_by_customer"}


def charge_refunded(payment_intent: str, amount_cents: int, refunds: list[dict] | None) -> dict:
    """A charge.refunded object; ``refunds=None``: the shape of API versions that no longer list them."""
    charge = {"id": f"ch_for_{payment_intent}", "object": "charge", "amount": amount_cents, "currency": "usd",
              "payment_intent": payment_intent, "refunded": True, "status": "succeeded",
              "amount_refunded": sum(r["amount"] for r in refunds or [])}
    if refunds is not None:
        charge["refunds"] = {"object": "list", "data": refunds, "has_more": False}
    return charge


def dispute(payment_intent: str, amount_cents: int, *, status: str = "needs_response",
            dispute_id: str | None = None) -> dict:
    return {"id": dispute_id or new_id("dp"), "object": "dispute", "amount": amount_cents, "currency": "usd",
            "charge": f"ch_for_{payment_intent}", "payment_intent": payment_intent, "status": status,
            "reason": "fraudulent", "created": int(time.time()), "livemode": False}
