"""Refunds of top-ups: asked for in the console, posted from Stripe's webhook.

``topup_refund`` (owner/finance) checks the amount against what is left of the
top-up (its amount less every refund asked or seen, under a lock on the top-up
so two at once cannot overshoot), writes a ``TopupRefund`` row, then asks Stripe
to refund the payment intent with the idempotency key ``topup-refund:<public id>``.
It changes no money: the ledger moves when Stripe says the refund succeeded.

``refund_post`` applies a refund object from ``refund.created``,
``refund.updated``, ``refund.failed`` or ``charge.refunded`` (whose charge lists
its refunds; from API 2022-11-15 on it may not, and then the ``refund.*`` events
carry them). A succeeded refund is reversed once per refund id (transfers
``re:<id>`` from the wallet, ``re:<id>:owed`` to the receivable: see
``billing.reversal``). Refunds are matched to top-ups by payment intent: the
``topup`` transfer whose ``stripe_object`` is that intent (Checkout top-ups and
auto-recharge alike). Refunds of other payments (subscription invoices) are
not wallet money and are ignored here.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

import stripe
from django.db import transaction
from django.db.models import Q, Sum

from . import webhooks
from .models import TopupRefund, Transfer
from .reversal import Reversal, lock_wallet, reverse
from .stripe_client import client, to_micros, to_minor
from .topups import format_amount

log = logging.getLogger(__name__)


class RefundError(Exception):
    """A refund that cannot be made; the message is for the person who asked."""


class NotATopupPayment(Exception):
    """A refund or dispute of a payment that did not credit a wallet."""


class RefundRefused(Exception):
    """A refund of a top-up that cannot be posted as it is (e.g. in another currency)."""


def topup_for_payment_intent(payment_intent: str) -> Transfer | None:
    if not payment_intent:
        return None
    return Transfer.objects.filter(
        kind=Transfer.Kind.TOPUP, status=Transfer.Status.POSTED, stripe_object=payment_intent
    ).first()


def refunded_so_far(topup: Transfer) -> int:
    """Refunds asked for or made on a top-up (all but the failed ones), in micro-units."""
    return (
        TopupRefund.objects.filter(topup=topup).exclude(status=TopupRefund.Status.FAILED).aggregate(s=Sum("amount"))["s"]
        or 0
    )


def refundable(topup: Transfer) -> int:
    return max(0, topup.amount - refunded_so_far(topup))


def topup_refund(*, transfer: Transfer, amount: int, user) -> TopupRefund:
    """Refund ``amount`` micro-units of a top-up through Stripe. Raises ``RefundError``."""
    if transfer.kind != Transfer.Kind.TOPUP or transfer.status != Transfer.Status.POSTED:
        raise RefundError("Only a top-up can be refunded.")
    if not transfer.stripe_object.startswith("pi_"):
        raise RefundError("This top-up has no Stripe payment to refund.")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise RefundError("Enter a positive amount to refund.")
    currency = transfer.currency
    try:
        cents = to_minor(amount, currency)
    except ValueError:
        raise RefundError("A refund is a whole number of cents.") from None
    with transaction.atomic():
        # One refund of a top-up at a time: the sum below stays true until our row lands.
        Transfer.objects.select_for_update().filter(id=transfer.id).values_list("id", flat=True).get()
        left = refundable(transfer)
        if amount > left:
            raise RefundError(
                f"At most {format_amount(left, currency)} of this top-up can still be refunded "
                f"(it was {format_amount(transfer.amount, currency)})."
            )
        row = TopupRefund.objects.create(topup=transfer, amount=amount, requested_by=user)
    try:
        refund = client().v1.refunds.create(
            params={
                "payment_intent": transfer.stripe_object,
                "amount": cents,
                "reason": "requested_by_customer",
                "metadata": {"topup_refund": row.public_id, "topup_transfer": str(transfer.id)},
            },
            options={"idempotency_key": f"topup-refund:{row.public_id}"},
        )
    except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
        # Outcome unknown: the row keeps counting against the top-up until the webhook tells.
        TopupRefund.objects.filter(id=row.id).update(error=f"stripe did not answer: {exc}")
        raise RefundError("Stripe did not answer; the refund may still go through. Check this page again shortly.") from exc
    except stripe.StripeError as exc:
        message = exc.user_message or str(exc)
        TopupRefund.objects.filter(id=row.id, status=TopupRefund.Status.REQUESTED).update(
            status=TopupRefund.Status.FAILED, error=f"stripe: {message}"
        )
        raise RefundError(f"Stripe refused the refund: {message}") from exc
    # The webhook may have been faster (it finds the row by the metadata): only fill what it left.
    TopupRefund.objects.filter(id=row.id, stripe_refund_id__isnull=True).update(stripe_refund_id=refund.id)
    TopupRefund.objects.filter(id=row.id, status=TopupRefund.Status.REQUESTED).update(status=TopupRefund.Status.PENDING)
    row.refresh_from_db()
    return row


def _refund_row(refund: Mapping, topup: Transfer, amount: int) -> TopupRefund:
    refund_id = str(refund["id"])
    ours = (refund.get("metadata") or {}).get("topup_refund")
    match = Q(stripe_refund_id=refund_id)
    if ours:
        match |= Q(public_id=ours, topup=topup)
    row = TopupRefund.objects.select_for_update().filter(match).order_by("id").first()
    if row is None:  # made outside the console (Stripe dashboard)
        return TopupRefund.objects.create(topup=topup, amount=amount, stripe_refund_id=refund_id,
                                          status=TopupRefund.Status.PENDING)
    if row.stripe_refund_id != refund_id:
        row.stripe_refund_id = refund_id
        row.save(update_fields=["stripe_refund_id", "updated_at"])
    return row


def refund_post(*, refund: Mapping, source: str) -> tuple[Reversal | None, bool]:
    """Apply a Stripe refund object: reverse a succeeded refund once. (reversal or None, posted now?)

    Raises ``NotATopupPayment`` for refunds of payments that did not credit a wallet,
    ``RefundRefused`` for one that cannot be posted.
    """
    refund_id = str(refund["id"])
    payment_intent = refund.get("payment_intent")
    payment_intent = payment_intent.get("id") if isinstance(payment_intent, Mapping) else payment_intent
    topup = topup_for_payment_intent(str(payment_intent or ""))
    if topup is None:
        raise NotATopupPayment(f"refund {refund_id} is not of a top-up payment")
    currency = str(refund.get("currency") or topup.currency).lower()
    if currency != topup.currency:
        raise RefundRefused(f"refund {refund_id} is in {currency}, the top-up in {topup.currency}")
    amount = to_micros(int(refund["amount"]), currency)
    status = refund.get("status")
    with transaction.atomic():
        wallet = lock_wallet(topup.credit_wallet_id)
        row = _refund_row(refund, topup, amount)
        if status != "succeeded":
            if status in ("failed", "canceled"):
                if row.status == TopupRefund.Status.SUCCEEDED:
                    # Stripe gave the money back to us after we reversed: a person decides.
                    row.error = f"refund {status} after its reversal was posted ({source}): review"
                    log.error("refund %s %s after its reversal was posted", refund_id, status)
                else:
                    row.status, row.error = TopupRefund.Status.FAILED, str(refund.get("failure_reason") or status)
            elif row.status == TopupRefund.Status.REQUESTED:
                row.status = TopupRefund.Status.PENDING
            row.save(update_fields=["status", "error", "updated_at"])
            return None, False
        reversal, created = reverse(
            wallet=wallet, amount=amount, kind=Transfer.Kind.REFUND, reference=f"re:{refund_id}",
            stripe_object=refund_id, description=f"Refund {refund_id} of top-up {topup.reference} ({source})",
        )
        row.status, row.amount = TopupRefund.Status.SUCCEEDED, amount
        row.save(update_fields=["status", "amount", "updated_at"])
        return reversal, created


# --- webhooks -----------------------------------------------------------------------------------


def _post(refund: Mapping, event: dict) -> str:
    try:
        reversal, created = refund_post(refund=refund, source=f"event {event['id']}")
    except NotATopupPayment as why:
        raise webhooks.Ignore(str(why)) from None
    except RefundRefused as why:
        raise webhooks.Refuse(str(why)) from None
    if reversal is None:
        return f"refund {refund['id']} is {refund.get('status')}: nothing posted"
    if not created:
        return f"refund {refund['id']} already posted"
    return f"refund {refund['id']}: {reversal.from_wallet} from the wallet, {reversal.owed} owed"


@webhooks.handler("refund.created")
def on_refund_created(event: dict) -> str:
    return _post(event["data"]["object"], event)


@webhooks.handler("refund.updated")
def on_refund_updated(event: dict) -> str:
    return _post(event["data"]["object"], event)


@webhooks.handler("refund.failed")
def on_refund_failed(event: dict) -> str:
    return _post(event["data"]["object"], event)


@webhooks.handler("charge.refunded")
def on_charge_refunded(event: dict) -> str:
    charge = event["data"]["object"]
    listed = charge.get("refunds")
    if not isinstance(listed, Mapping) or not isinstance(listed.get("data"), list):
        raise webhooks.Ignore("the charge does not list its refunds: they are posted from refund.* events")
    if not topup_for_payment_intent(str(charge.get("payment_intent") or "")):
        raise webhooks.Ignore(f"charge {charge.get('id')} is not a top-up payment")
    notes = []
    for refund in listed["data"]:
        if not refund.get("payment_intent"):
            refund = {**refund, "payment_intent": charge.get("payment_intent")}
        try:
            notes.append(_post(refund, event))
        except (webhooks.Ignore, webhooks.Refuse) as why:
            notes.append(str(why))
    return "; ".join(notes) or "no refunds listed"
