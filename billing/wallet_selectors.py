"""Reads for the console's billing page: one wallet's money and its top-ups (the ledger itself, a page
at a time with running balances: billing.ledger_selectors)."""
from __future__ import annotations

from dataclasses import dataclass, field

from django.db import connection, transaction
from django.db.models import Count, Q, Sum

from .models import (
    BillingAccount,
    Dispute,
    TopupRefund,
    TopupSession,
    Transfer,
    Wallet,
)


@dataclass(frozen=True, slots=True)
class TopupLine:
    transfer: Transfer
    refunded: int  # asked or made, failed ones excepted
    refunds: list[TopupRefund]

    @property
    def refundable(self) -> int:
        return max(0, self.transfer.amount - self.refunded)


@dataclass(frozen=True, slots=True)
class WalletOverview:
    wallet: Wallet
    owed: int  # what the customer owes after refunds/disputes the wallet could not cover
    in_flight: int  # pending reservations (requests and jobs running now)
    topups: list[TopupLine]
    sessions: list[TopupSession]
    disputes: list[Dispute] = field(default_factory=list)

    @property
    def overage(self) -> int:
        return max(0, -self.wallet.balance)


def wallet_overview(*, account: BillingAccount, currency: str = "usd") -> WalletOverview:
    """One consistent snapshot of the wallet, its holds, top-ups and disputes."""
    fresh = not connection.in_atomic_block
    with transaction.atomic():
        if connection.vendor == "postgresql" and fresh:
            with connection.cursor() as cursor:  # the first statement of the transaction
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        wallets = {w.kind: w for w in Wallet.objects.filter(account=account, currency=currency)}
        wallet = wallets[Wallet.Kind.CUSTOMER]
        receivable = wallets.get(Wallet.Kind.RECEIVABLE)
        in_flight = Transfer.objects.filter(debit_wallet=wallet, status=Transfer.Status.PENDING).aggregate(
            n=Count("id")
        )["n"]
        credits = list(
            Transfer.objects.filter(credit_wallet=wallet, kind=Transfer.Kind.TOPUP, status=Transfer.Status.POSTED)
            .order_by("-id")[:20]
        )
        refunds: dict[int, list[TopupRefund]] = {}
        for refund in TopupRefund.objects.filter(topup__in=credits).order_by("id"):
            refunds.setdefault(refund.topup_id, []).append(refund)
        refunded = dict(
            TopupRefund.objects.filter(topup__in=credits)
            .exclude(status=TopupRefund.Status.FAILED)
            .values_list("topup_id")
            .annotate(s=Sum("amount"))
            .values_list("topup_id", "s")
        )
        topups = [TopupLine(t, refunded.get(t.id, 0), refunds.get(t.id, [])) for t in credits]
        sessions = list(TopupSession.objects.filter(account=account, currency=currency).order_by("-id")[:10])
        disputes = list(
            Dispute.objects.filter(wallet=wallet)
            .filter(Q(status=Dispute.Status.OPEN) | Q(status=Dispute.Status.LOST, resolved_at__isnull=True))
            .order_by("-id")
        )
    return WalletOverview(
        wallet=wallet,
        owed=max(0, -(receivable.balance if receivable else 0)),
        in_flight=in_flight,
        topups=topups,
        sessions=sessions,
        disputes=disputes,
    )


def topup_session_for(*, stripe_session_id: str, organizations) -> TopupSession | None:
    """A top-up of one of ``organizations`` (the caller's), by its Checkout Session id."""
    return (
        TopupSession.objects.select_related("account__organization", "transfer")
        .filter(stripe_session_id=stripe_session_id, account__organization__in=organizations)
        .first()
    )
