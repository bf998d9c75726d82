"""Top-ups through Stripe Checkout: the console starts one, only a verified webhook credits it.

1. ``topup_checkout_create`` writes a ``TopupSession`` row, then (outside any
   transaction) asks Stripe for a payment-mode Checkout Session with an
   idempotency key from that row. The session carries what we asked for in its
   metadata (account, amount in micro-units, purpose) and saves the card for
   auto-recharge (``setup_future_usage=off_session``).
2. ``credit_checkout_session`` credits a paid session once: the ``topup``
   transfer with reference ``cs:<session id>``. Webhooks call it
   (``checkout.session.completed`` when ``payment_status`` is ``paid``,
   ``checkout.session.async_payment_succeeded``), and so does reconciliation to
   heal a dropped webhook. The success page never credits: it reads our rows.

Exactly once, whatever arrives: every credit of an account first locks its
customer wallet row, then looks for the transfer; the unique (kind, reference)
is the backstop. So duplicate deliveries, both events of an async payment in
either order, concurrent deliveries and a heal racing a late webhook all end
with one transfer.

A paid session is refused (``TopupRefused``, no credit, the row keeps the
reason) when it is not what we asked for: Stripe's ``amount_total`` (cents)
differs from ``metadata.amount_micros`` or from our row, or the session's
customer is not the Stripe customer of the account its metadata names.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation

import stripe
from django.conf import settings
from django.db import transaction

from . import webhooks
from .models import BillingAccount, TopupSession, Transfer, Wallet
from .services import transfer_post
from .stripe_client import client, customer_for, to_micros, to_minor

log = logging.getLogger(__name__)

PURPOSE = "topup"
PAYMENT_INTENT_PURPOSE = "topup_checkout"
_DOLLARS = re.compile(r"^\$?\s*(\d{1,3}(,\d{3})+|\d+)(\.\d{1,2})?$")


class TopupError(Exception):
    """A top-up that cannot start; the message is for the person who asked."""


class NotATopup(Exception):
    """A Checkout Session that is not one of our top-ups (a subscription, another integration)."""


class TopupRefused(Exception):
    """A paid top-up session that does not match what we asked for: not credited."""


def format_amount(micros: int, currency: str = "usd") -> str:
    """``12_500_000`` → ``"12.50 USD"``; micro-unit digits are kept when there are any."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), 1_000_000)
    digits = f"{frac:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}{whole:,}.{digits} {currency.upper()}"


def parse_amount(text: str) -> int:
    """Dollars typed in the console ("25", "25.50", "$1,000") → micro-units, without floats."""
    cleaned = (text or "").strip()
    if not _DOLLARS.match(cleaned):
        raise TopupError("Enter an amount in dollars, like 25 or 25.50 (at most two decimals).")
    try:
        dollars = Decimal(cleaned.lstrip("$").strip().replace(",", ""))
    except InvalidOperation:
        raise TopupError("Enter an amount in dollars, like 25 or 25.50.") from None
    return int(dollars * 1_000_000)


def check_amount(amount: int, currency: str = "usd") -> None:
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise TopupError("The amount must be a whole number of micro-units.")
    low, high = settings.TOPUP_MIN, settings.TOPUP_MAX
    if not low <= amount <= high:
        raise TopupError(
            f"A top-up is between {format_amount(low, currency)} and {format_amount(high, currency)}; "
            f"{format_amount(amount, currency)} is outside that range."
        )
    try:
        to_minor(amount, currency)
    except ValueError:
        raise TopupError("A top-up is a whole number of cents.") from None


def topup_checkout_create(
    *, account: BillingAccount, amount: int, user, success_url: str, cancel_url: str, currency: str = "usd"
) -> TopupSession:
    """Open a Stripe Checkout Session for ``amount`` micro-units; the caller redirects to ``checkout_url``.

    ``success_url`` should carry ``{CHECKOUT_SESSION_ID}``, which Stripe fills in.
    Raises ``TopupError`` (nothing to pay) with a message for the console.
    """
    check_amount(amount, currency)
    wallet = Wallet.objects.filter(account=account, currency=currency, kind=Wallet.Kind.CUSTOMER).first()
    if wallet is None:
        raise TopupError(f"This organization has no {currency.upper()} wallet.")
    if wallet.status != Wallet.Status.ACTIVE:
        raise TopupError("The wallet is suspended (a payment is disputed); contact billing support before topping up.")
    row = TopupSession.objects.create(account=account, currency=currency, amount=amount, created_by=user)
    metadata = {
        "purpose": PURPOSE,
        "account_id": str(account.id),
        "amount_micros": str(amount),
        "topup_session": row.public_id,
    }
    try:
        customer = customer_for(account)
        session = client().v1.checkout.sessions.create(
            params={
                "mode": "payment",
                "customer": customer,
                "client_reference_id": row.public_id,
                "line_items": [{
                    "quantity": 1,
                    "price_data": {
                        "currency": currency,
                        "unit_amount": to_minor(amount, currency),
                        "product_data": {"name": "Prepaid inference credit"},
                    },
                }],
                "metadata": metadata,
                # The card is kept for auto-recharge. The payment intent says whose it is, under its
                # own purpose: it is credited through its session, never as a payment intent.
                "payment_intent_data": {
                    "setup_future_usage": "off_session",
                    "metadata": {**metadata, "purpose": PAYMENT_INTENT_PURPOSE},
                },
                "success_url": success_url,
                "cancel_url": cancel_url,
            },
            options={"idempotency_key": f"topup-session:{row.public_id}"},
        )
    except stripe.StripeError as exc:
        message = exc.user_message or str(exc) or exc.__class__.__name__
        TopupSession.objects.filter(id=row.id).update(status=TopupSession.Status.FAILED, error=f"stripe: {message}")
        log.warning("top-up %s: Stripe refused the checkout session: %s", row.public_id, message)
        raise TopupError("Stripe could not start the payment; nothing was charged. Try again in a moment.") from exc
    TopupSession.objects.filter(id=row.id, status=TopupSession.Status.CREATED).update(
        status=TopupSession.Status.OPEN, stripe_session_id=session.id, checkout_url=session.url or ""
    )
    row.refresh_from_db()
    return row


def _id(value) -> str:
    """A Stripe reference that may be expanded into its object."""
    if isinstance(value, Mapping):
        return str(value.get("id") or "")
    return str(value or "")


def _metadata(session: Mapping) -> dict:
    meta = session.get("metadata") or {}
    if session.get("mode") != "payment" or meta.get("purpose") != PURPOSE:
        raise NotATopup(f"checkout session {session.get('id')} is not a top-up")
    return dict(meta)


def _row_for(session: Mapping, meta: Mapping, account_id: int) -> TopupSession | None:
    rows = TopupSession.objects.select_for_update()
    row = rows.filter(stripe_session_id=session["id"]).first()
    if row is None and meta.get("topup_session"):
        # The webhook may come before we stored the session id (a retried create).
        row = rows.filter(public_id=meta["topup_session"], account_id=account_id, stripe_session_id__isnull=True).first()
    return row


def _mismatch(*, session: Mapping, meta: Mapping, account: BillingAccount, row: TopupSession | None) -> str:
    """Why this paid session must not be credited ('' if it may)."""
    currency = str(session.get("currency") or "").lower()
    try:
        asked = int(meta.get("amount_micros", ""))
        paid = to_micros(int(session.get("amount_total")), currency)
    except (TypeError, ValueError):
        return "the session's amount_total or metadata.amount_micros is missing or not an integer"
    customer = _id(session.get("customer"))
    if not account.stripe_customer_id or customer != account.stripe_customer_id:
        return (f"the session's customer {customer or '(none)'} is not account {account.id}'s Stripe customer "
                f"{account.stripe_customer_id or '(none)'}")
    if paid != asked:
        return f"amount_total {session.get('amount_total')} {currency} is {paid} micro-units, metadata says {asked}"
    if row is not None and (row.amount, row.currency) != (asked, currency):
        return f"our top-up {row.public_id} asked for {row.amount} {row.currency}, the session is for {asked} {currency}"
    return ""


def credit_checkout_session(*, session: Mapping, source: str) -> tuple[Transfer | None, bool]:
    """Credit a paid payment-mode top-up session once. (transfer or None if not paid yet, created now?)

    ``source`` says who is asking (``"event evt_…"``, ``"heal run 12"``), for the
    transfer's description. Raises ``NotATopup`` for other sessions and
    ``TopupRefused`` (after recording why on our row) for a mismatch.
    """
    meta = _metadata(session)
    session_id = str(session["id"])
    reference = f"cs:{session_id}"
    try:
        account_id = int(meta.get("account_id", ""))
    except ValueError:
        raise TopupRefused(f"checkout session {session_id} names no account") from None
    currency = str(session.get("currency") or "").lower()
    payment_intent = _id(session.get("payment_intent"))
    problem = ""
    with transaction.atomic():
        # The account's lock for credits and reversals: every path takes it first.
        wallet = (
            Wallet.objects.select_for_update()
            .filter(account_id=account_id, currency=currency, kind=Wallet.Kind.CUSTOMER)
            .first()
        )
        if wallet is None:
            raise TopupRefused(f"checkout session {session_id}: account {account_id} has no {currency} wallet")
        row = _row_for(session, meta, account_id)
        existing = Transfer.objects.filter(kind=Transfer.Kind.TOPUP, reference=reference).first()
        if existing is not None:
            _mark(row, TopupSession.Status.CREDITED, transfer=existing, payment_intent=payment_intent)
            return existing, False
        if session.get("payment_status") != "paid":
            if row is not None and row.status in (TopupSession.Status.CREATED, TopupSession.Status.OPEN):
                _mark(row, TopupSession.Status.PROCESSING, payment_intent=payment_intent)
            return None, False
        account = BillingAccount.objects.get(id=account_id)
        problem = _mismatch(session=session, meta=meta, account=account, row=row)
        if problem:
            _mark(row, TopupSession.Status.REFUSED, payment_intent=payment_intent, error=problem)
        else:
            funding = Wallet.objects.get(account_id=account_id, currency=currency, kind=Wallet.Kind.FUNDING)
            transfer, created = transfer_post(
                kind=Transfer.Kind.TOPUP,
                debit_wallet=funding,
                credit_wallet=wallet,
                amount=int(meta["amount_micros"]),
                reference=reference,
                description=f"Top-up via Stripe Checkout {session_id} ({source})",
                stripe_object=payment_intent or session_id,
            )
            _mark(row, TopupSession.Status.CREDITED, transfer=transfer, payment_intent=payment_intent)
            return transfer, created
    log.error("top-up session %s refused: %s", session_id, problem)
    raise TopupRefused(f"checkout session {session_id} not credited: {problem}")


def _mark(row: TopupSession | None, status: str, *, transfer: Transfer | None = None, payment_intent: str = "",
          error: str | None = None) -> None:
    if row is None:
        return
    fields = {"status"}
    row.status = status
    if transfer is not None and row.transfer_id != transfer.id:
        row.transfer, fields = transfer, fields | {"transfer"}
    if payment_intent and row.stripe_payment_intent != payment_intent:
        row.stripe_payment_intent, fields = payment_intent, fields | {"stripe_payment_intent"}
    if error is not None:
        row.error, fields = error, fields | {"error"}
    row.save(update_fields=[*sorted(fields), "updated_at"])


def topup_payment_failed(*, session: Mapping) -> TopupSession | None:
    """An async payment failed: nothing to credit; the row says so (unless it was credited)."""
    _metadata(session)
    with transaction.atomic():
        row = TopupSession.objects.select_for_update().filter(stripe_session_id=session["id"]).first()
        if row is not None and row.status != TopupSession.Status.CREDITED:
            _mark(row, TopupSession.Status.FAILED, payment_intent=_id(session.get("payment_intent")),
                  error="the payment failed after checkout (async payment method)")
    return row


def topup_session_expired(*, session: Mapping) -> TopupSession | None:
    _metadata(session)
    with transaction.atomic():
        row = TopupSession.objects.select_for_update().filter(stripe_session_id=session["id"]).first()
        if row is not None and row.status in (TopupSession.Status.CREATED, TopupSession.Status.OPEN):
            _mark(row, TopupSession.Status.EXPIRED)
    return row


# --- webhooks -----------------------------------------------------------------------------------


def _credit_from(event: dict) -> str:
    session = event["data"]["object"]
    try:
        transfer, created = credit_checkout_session(session=session, source=f"event {event['id']}")
    except NotATopup as why:
        raise webhooks.Ignore(str(why)) from None
    except TopupRefused as why:
        raise webhooks.Refuse(str(why)) from None
    if transfer is None:
        return "payment not cleared yet: the credit waits for checkout.session.async_payment_succeeded"
    return f"credited {transfer.amount} ({transfer.reference})" if created else f"already credited ({transfer.reference})"


@webhooks.handler("checkout.session.completed")
def on_checkout_completed(event: dict) -> str:
    return _credit_from(event)


@webhooks.handler("checkout.session.async_payment_succeeded")
def on_async_payment_succeeded(event: dict) -> str:
    return _credit_from(event)


@webhooks.handler("checkout.session.async_payment_failed")
def on_async_payment_failed(event: dict) -> str:
    try:
        row = topup_payment_failed(session=event["data"]["object"])
    except NotATopup as why:
        raise webhooks.Ignore(str(why)) from None
    return "payment failed: nothing credited" + ("" if row else " (no top-up row for this session)")


@webhooks.handler("checkout.session.expired")
def on_checkout_expired(event: dict) -> str:
    try:
        topup_session_expired(session=event["data"]["object"])
    except NotATopup as why:
        raise webhooks.Ignore(str(why)) from None
    return "expired unpaid"
