"""Disputes (chargebacks) of top-up payments: reverse, suspend, and undo if won.

Which events act: ``charge.dispute.created`` and ``charge.dispute.closed``.
``charge.dispute.funds_withdrawn`` and ``funds_reinstated`` describe the same
money moves (Stripe sends withdrawn right after created, reinstated right
before a won close), so they are stored and ignored: acting on both pairs
would post twice. Inquiries (``warning_*`` statuses) withdraw nothing and
change nothing.

* created (or closed as lost, if that comes first): the disputed amount is
  reversed like a refund (``dp:<id>`` from the wallet, ``dp:<id>:owed`` to the
  receivable, see ``billing.reversal``) and the wallet is suspended
  (reason ``dispute``): the gateway's reservation refuses a suspended wallet
  (402 ``wallet_suspended``).
* closed as won: exactly the reversed parts come back (``dpw:<id>``,
  ``dpw:<id>:owed``), and the suspension is lifted if no other dispute of the
  wallet is open or lost and unresolved.
* closed as lost: the reversal stands and the wallet stays suspended until
  ``wallet_reactivate`` (finance or owner, with a note).

Every path locks the customer wallet first, then the dispute row, so
deliveries in any order or at once apply once.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

from django.db import transaction
from django.utils import timezone

from . import webhooks
from .models import Dispute, Transfer, Wallet
from .refunds import NotATopupPayment, topup_for_payment_intent
from .reversal import Reversal, lock_wallet, posted, restore, reverse
from .stripe_client import to_micros

log = logging.getLogger(__name__)

REASON = "dispute"


class ReactivateError(Exception):
    """The wallet cannot be reactivated now; the message says why."""


def _dispute_row(dispute: Mapping, topup: Transfer, wallet: Wallet) -> Dispute:
    row = Dispute.objects.select_for_update().filter(stripe_dispute_id=dispute["id"]).first()
    if row is None:
        row = Dispute.objects.create(
            stripe_dispute_id=dispute["id"], topup=topup, wallet=wallet,
            amount=to_micros(int(dispute["amount"]), str(dispute.get("currency") or wallet.currency)),
            reason=str(dispute.get("reason") or "")[:64],
        )
    return row


def _locked(dispute: Mapping) -> tuple[Wallet, Dispute]:
    payment_intent = dispute.get("payment_intent")
    payment_intent = payment_intent.get("id") if isinstance(payment_intent, Mapping) else payment_intent
    topup = topup_for_payment_intent(str(payment_intent or ""))
    if topup is None:
        raise NotATopupPayment(f"dispute {dispute['id']} is not of a top-up payment")
    wallet = lock_wallet(topup.credit_wallet_id)
    return wallet, _dispute_row(dispute, topup, wallet)


def _reverse(wallet: Wallet, row: Dispute, source: str) -> tuple[Reversal, bool]:
    reversal, created = reverse(
        wallet=wallet, amount=row.amount, kind=Transfer.Kind.DISPUTE, reference=f"dp:{row.stripe_dispute_id}",
        stripe_object=row.stripe_dispute_id,
        description=f"Dispute {row.stripe_dispute_id} of top-up {row.topup.reference} ({source})",
    )
    row.reversed_at = row.reversed_at or timezone.now()
    return reversal, created


def _suspend(wallet: Wallet) -> None:
    if wallet.status == Wallet.Status.ACTIVE:
        Wallet.objects.filter(id=wallet.id).update(status=Wallet.Status.SUSPENDED, suspended_reason=REASON)
        log.warning("wallet %s suspended: dispute", wallet.id)


def _blocking(wallet: Wallet, *, besides: Dispute | None = None):
    """Disputes that keep the wallet suspended: open ones, and lost ones finance has not resolved."""
    rows = Dispute.objects.filter(wallet=wallet).filter(
        status__in=[Dispute.Status.OPEN, Dispute.Status.LOST], resolved_at__isnull=True
    )
    return rows.exclude(id=besides.id) if besides is not None else rows


def dispute_post(*, dispute: Mapping, source: str) -> tuple[Reversal | None, bool]:
    """A dispute was opened: reverse its amount once and suspend the wallet.

    Returns (reversal or None if nothing is reversed, posted now?). Raises
    ``NotATopupPayment`` for disputes of payments that did not credit a wallet.
    """
    if str(dispute.get("status") or "").startswith("warning_"):
        return None, False  # an inquiry: no money moves
    with transaction.atomic():
        wallet, row = _locked(dispute)
        if row.status == Dispute.Status.WON:
            return None, False  # closed as won before we heard it open: nothing to take back
        reversal, created = _reverse(wallet, row, source)
        row.save(update_fields=["reversed_at"])
        _suspend(wallet)
        return reversal, created


def dispute_close(*, dispute: Mapping, source: str) -> tuple[Reversal | None, bool]:
    """A dispute was closed: won gives the reversal back, lost keeps it. (what moved, now?)"""
    outcome = dispute.get("status")
    if outcome not in (Dispute.Status.WON, Dispute.Status.LOST):
        return None, False  # an inquiry closed (warning_closed): nothing was withdrawn
    with transaction.atomic():
        wallet, row = _locked(dispute)
        if row.status != Dispute.Status.OPEN:
            return None, False
        row.status, row.closed_at = outcome, timezone.now()
        moved, created = None, False
        if outcome == Dispute.Status.LOST:
            if row.reversed_at is None:
                moved, created = _reverse(wallet, row, source)
            _suspend(wallet)
        elif row.reversed_at is not None:
            reversal = posted(kind=Transfer.Kind.DISPUTE, reference=f"dp:{row.stripe_dispute_id}")
            moved, created = restore(
                wallet=wallet, reversal=reversal, kind=Transfer.Kind.DISPUTE_WON,
                reference=f"dpw:{row.stripe_dispute_id}", stripe_object=row.stripe_dispute_id,
                description=f"Dispute {row.stripe_dispute_id} won: reversal given back ({source})",
            )
        row.save(update_fields=["status", "closed_at", "reversed_at"])
        if (outcome == Dispute.Status.WON and wallet.status == Wallet.Status.SUSPENDED
                and wallet.suspended_reason == REASON and not _blocking(wallet, besides=row).exists()):
            Wallet.objects.filter(id=wallet.id).update(status=Wallet.Status.ACTIVE, suspended_reason="")
            log.warning("wallet %s active again: dispute %s won", wallet.id, row.stripe_dispute_id)
        return moved, created


def wallet_reactivate(*, wallet: Wallet, user, note: str) -> Wallet:
    """Lift a suspension (finance or owner): lost disputes are marked resolved with the note."""
    note = (note or "").strip()
    if not note:
        raise ReactivateError("Say why the wallet may be used again (the note is kept with the disputes).")
    with transaction.atomic():
        locked = lock_wallet(wallet.id)
        if locked.status == Wallet.Status.ACTIVE:
            raise ReactivateError("The wallet is already active.")
        if Dispute.objects.filter(wallet=locked, status=Dispute.Status.OPEN).exists():
            raise ReactivateError("A dispute on this wallet is still open; it lifts the suspension itself if won.")
        Dispute.objects.filter(wallet=locked, status=Dispute.Status.LOST, resolved_at__isnull=True).update(
            resolved_at=timezone.now(), resolved_by=user, resolution_note=note[:2000]
        )
        Wallet.objects.filter(id=locked.id).update(status=Wallet.Status.ACTIVE, suspended_reason="")
    log.warning("wallet %s reactivated by user %s: %s", wallet.id, getattr(user, "id", None), note)
    wallet.refresh_from_db()
    return wallet


# --- webhooks -----------------------------------------------------------------------------------


def _note(what: str, dispute: Mapping, moved: Reversal | None, created: bool) -> str:
    if moved is None:
        return f"dispute {dispute['id']} ({dispute.get('status')}): {what}, nothing moved"
    if not created:
        return f"dispute {dispute['id']}: {what}, already posted"
    return f"dispute {dispute['id']}: {what}, {moved.from_wallet} wallet / {moved.owed} owed"


@webhooks.handler("charge.dispute.created")
def on_dispute_created(event: dict) -> str:
    dispute = event["data"]["object"]
    try:
        moved, created = dispute_post(dispute=dispute, source=f"event {event['id']}")
    except NotATopupPayment as why:
        raise webhooks.Ignore(str(why)) from None
    return _note("reversed, wallet suspended", dispute, moved, created)


@webhooks.handler("charge.dispute.closed")
def on_dispute_closed(event: dict) -> str:
    dispute = event["data"]["object"]
    try:
        moved, created = dispute_close(dispute=dispute, source=f"event {event['id']}")
    except NotATopupPayment as why:
        raise webhooks.Ignore(str(why)) from None
    return _note(f"closed {dispute.get('status')}", dispute, moved, created)


@webhooks.handler("charge.dispute.funds_withdrawn")
@webhooks.handler("charge.dispute.funds_reinstated")
def on_dispute_funds(event: dict) -> str:
    raise webhooks.Ignore("funds moves are applied from charge.dispute.created / charge.dispute.closed")
