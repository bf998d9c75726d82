"""Promotional and included credit: grants with an expiry, spent first, expired FIFO.

A grant (``promo_grant``, or a subscription period's included credit) is a credit
transfer that raises the customer wallet's ``promo`` part and opens a ``CreditLot``.
Settlement spends ``promo`` before paid credit without knowing about lots; which lot
it came from follows from the rule that spending takes from the lot that expires
first. So the part of ``promo`` that lot i still holds is

    clamp(promo - sum over open lots j expiring after i of (amount_j - expired_j),
          0, amount_i - expired_i)

(ties in expiry broken by id, like the order of grants).

``promo_expire_due`` returns each due lot's rest to the funding wallet with a
``promo_expiry`` transfer (promo_delta = -rest), but never more than the wallet can
give without going into debt: at most balance - reserved. Money held by a request in
flight stays (that request settles from promo first); the lot stays open with what
is left and a later run takes it, or closes it once nothing is left. An expiry never
draws on a credit line: that would turn expired credit into overage owed.
"""
from __future__ import annotations

import datetime as dt
import logging

from django.db import IntegrityError, transaction
from django.utils import timezone

from . import services
from .models import BillingAccount, CreditLot, Transfer, Wallet

log = logging.getLogger(__name__)


class PromoError(ValueError):
    """A grant that cannot be made; the message says why."""


def lots_remaining(*, lots: list[CreditLot], promo: int) -> list[tuple[CreditLot, int]]:
    """Each open lot with what it still holds, by the FIFO rule; ``lots`` are one wallet's open lots."""
    ordered = sorted(lots, key=lambda lot: (lot.expires_at, lot.id))
    out: list[tuple[CreditLot, int]] = []
    later = 0  # what the lots after this one still hold at most
    for lot in reversed(ordered):
        left = lot.amount - lot.expired_amount
        out.append((lot, max(0, min(promo - later, left))))
        later += left
    out.reverse()
    return out


def promo_grant(
    *,
    account: BillingAccount,
    amount: int,
    expires_at: dt.datetime,
    reference: str,
    description: str = "",
    user=None,
    currency: str = "usd",
    now: dt.datetime | None = None,
) -> Transfer:
    """Grant ``amount`` micro-units of promotional credit until ``expires_at``, once per
    ``reference``: running it again returns the first grant (with its expiry); the same
    reference for another wallet or amount is refused."""
    now = now or timezone.now()
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise PromoError("A promotional credit is a positive integer number of micro-units.")
    if timezone.is_naive(expires_at):
        raise PromoError("The expiry must be a timezone-aware datetime.")
    if expires_at <= now:
        raise PromoError("The expiry must be in the future.")
    reference = (reference or "").strip()
    if not reference or len(reference) > 255:
        raise PromoError("A grant needs a reference (at most 255 characters): it makes the grant happen once.")
    wallet = services.wallet(account_id=account.id, currency=currency, kind=Wallet.Kind.CUSTOMER)
    existing = Transfer.objects.filter(kind=Transfer.Kind.PROMO, reference=reference).first()
    if existing is not None and not _same_grant(existing, wallet=wallet, amount=amount):
        raise PromoError(f"The reference {reference!r} was already used for another grant.")
    try:
        transfer = services.wallet_credit(
            wallet=wallet, amount=amount, kind=Transfer.Kind.PROMO, reference=reference,
            description=description or "Promotional credit", expires_at=expires_at,
        )
    except IntegrityError:
        # Promo credit is part of a non-negative balance (wallet_promo_within_balance): a wallet
        # in overage owes that first, through its next invoice.
        raise PromoError(
            "This wallet is in overage (its balance is below zero): promotional credit can be granted "
            "once the overage is paid."
        ) from None
    if existing is None and not _same_grant(transfer, wallet=wallet, amount=amount):
        raise PromoError(f"The reference {reference!r} was already used for another grant.")  # a racing grant
    log.info("promo %s: %s micro-units to account %s until %s (by user %s)",
             reference, amount, account.id, expires_at.isoformat(), getattr(user, "pk", None))
    return transfer


def _same_grant(transfer: Transfer, *, wallet: Wallet, amount: int) -> bool:
    # Not the expiry: a command run again later computes a later one for the same grant.
    return transfer.credit_wallet_id == wallet.id and transfer.amount == amount


def promo_expire_due(*, now: dt.datetime | None = None, limit: int = 1000) -> dict[str, int]:
    """Expire every open lot past its expiry: {"lots": closed, "expired": micro-units returned}."""
    now = now or timezone.now()
    wallet_ids = list(
        CreditLot.objects.filter(closed_at__isnull=True, expires_at__lte=now)
        .order_by("wallet_id").values_list("wallet_id", flat=True).distinct()[:limit]
    )
    totals = {"lots": 0, "expired": 0}
    for wallet_id in wallet_ids:
        closed, expired = _expire_wallet(wallet_id=wallet_id, now=now)
        totals["lots"] += closed
        totals["expired"] += expired
    return totals


@transaction.atomic
def _expire_wallet(*, wallet_id: int, now: dt.datetime) -> tuple[int, int]:
    # The wallet first (every writer's first lock), then its lots: a settlement
    # changing promo waits, and two expiry runs take turns.
    wallet = Wallet.objects.select_for_update().get(id=wallet_id)
    lots = list(
        CreditLot.objects.select_for_update().filter(wallet_id=wallet_id, closed_at__isnull=True)
        .order_by("expires_at", "id")
    )
    funding = services.wallet(account_id=wallet.account_id, currency=wallet.currency, kind=Wallet.Kind.FUNDING)
    closed = expired = 0
    for index, lot in enumerate(lots):
        if lot.expires_at > now:
            break
        later = sum(other.amount - other.expired_amount for other in lots[index + 1:])
        rest = max(0, min(wallet.promo - later, lot.amount - lot.expired_amount))
        take = min(rest, max(0, wallet.balance - wallet.reserved))
        if take:
            # The reference names the lot and how much of it had expired before, so a
            # second expiry of a lot kept open gets its own, and a replay of this one collides.
            offset = lot.expired_amount
            _, created = services.transfer_post(
                kind=Transfer.Kind.PROMO_EXPIRY, debit_wallet=wallet, credit_wallet=funding, amount=take,
                reference=f"exp:{lot.id}" if offset == 0 else f"exp:{lot.id}@{offset}",
                description=f"{lot.get_kind_display()} credit of {lot.amount} expired", promo_delta=-take,
            )
            if not created:
                raise RuntimeError(f"credit lot {lot.id} expiry at offset {offset} was already posted")
            wallet.balance -= take
            wallet.promo -= take
            lot.expired_amount += take
            expired += take
        fields = ["expired_amount"]
        if take == rest:
            lot.closed_at = now
            fields.append("closed_at")
            closed += 1
        lot.save(update_fields=fields)
    if expired:
        log.info("expired %s micro-units of promo/included credit of wallet %s", expired, wallet_id)
    return closed, expired


def credit_summary(*, account: BillingAccount, currency: str = "usd", now: dt.datetime | None = None) -> dict:
    """The customer wallet's credit, promo shown apart from paid: balance, paid
    (balance - promo; negative is overage owed), promo, each open promo/included lot
    with what it still holds and when it expires, credit_limit, reserved, available
    (balance + credit_limit - reserved)."""
    now = now or timezone.now()
    wallet = services.wallet(account_id=account.id, currency=currency, kind=Wallet.Kind.CUSTOMER)
    lots = list(wallet.credit_lots.filter(closed_at__isnull=True).select_related("transfer"))
    return {
        "currency": wallet.currency,
        "balance": wallet.balance,
        "paid": wallet.balance - wallet.promo,
        "promo": wallet.promo,
        "promo_lots": [
            {
                "id": lot.id,
                "kind": lot.kind,
                "description": lot.transfer.description,
                "amount": lot.amount,
                "remaining": remaining,
                "expires_at": lot.expires_at,
                "expired": lot.expires_at <= now,
            }
            for lot, remaining in lots_remaining(lots=lots, promo=wallet.promo)
        ],
        "credit_limit": wallet.credit_limit,
        "reserved": wallet.reserved,
        "available": wallet.balance + wallet.credit_limit - wallet.reserved,
        "status": wallet.status,
    }
