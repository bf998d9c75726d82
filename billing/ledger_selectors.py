"""Reads for the billing page beyond the wallet overview: the reservations in flight and the
ledger, a page at a time, with the balance after each line."""
from __future__ import annotations

from dataclasses import dataclass

from django.db import connection, transaction
from django.db.models import Count, Sum
from django.utils import timezone

from .models import Entry, Transfer, Wallet

LEDGER_PAGE_SIZE = 25


@dataclass(frozen=True, slots=True)
class LedgerLine:
    entry_id: int
    created_at: object
    kind: str
    description: str
    reference: str
    amount: int  # signed, as it moved this wallet
    balance_after: int


@dataclass(frozen=True, slots=True)
class Reservation:
    transfer_id: int
    request_id: str
    kind: str
    model: str
    amount: int  # what is held now (pending_amount)
    created_at: object
    age_seconds: int
    timeout_at: object


@dataclass(frozen=True, slots=True)
class InFlight:
    count: int
    amount: int  # the sum held: the wallet's ``reserved``
    rows: list[Reservation]  # the oldest first, at most ``limit``


def reservations_in_flight(*, wallet: Wallet, limit: int = 20, now=None) -> InFlight:
    """The wallet's pending transfers (requests and jobs holding money until they settle)."""
    now = now or timezone.now()
    pending = Transfer.objects.filter(debit_wallet=wallet, status=Transfer.Status.PENDING)
    totals = pending.aggregate(n=Count("id"), held=Sum("pending_amount"))
    rows = [
        Reservation(t.id, t.request_id or t.reference or "", t.kind, t.model, t.pending_amount, t.created_at,
                    max(0, int((now - t.created_at).total_seconds())), t.timeout_at)
        for t in pending.order_by("created_at", "id")[:limit]
    ]
    return InFlight(count=totals["n"] or 0, amount=totals["held"] or 0, rows=rows)


@dataclass(frozen=True, slots=True)
class LedgerPage:
    lines: list[LedgerLine]
    balance: int  # the wallet's balance when the page was read
    older: int | None  # ``before`` for the next (older) page, None on the last
    first_page: bool


def _snapshot() -> None:
    """Make the open transaction one consistent snapshot (PostgreSQL), like ``wallet_overview``."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")


def ledger_page(*, wallet: Wallet, before: int | None = None, size: int = LEDGER_PAGE_SIZE) -> LedgerPage:
    """The wallet's entries older than entry ``before`` (the newest when None), newest first,
    each with the balance right after it: the balance now less every newer entry, read in one
    snapshot, so the lines of every page add up to the balance shown."""
    fresh = not connection.in_atomic_block
    with transaction.atomic():
        if fresh:
            _snapshot()
        balance = Wallet.objects.values_list("balance", flat=True).get(id=wallet.id)
        entries = Entry.objects.filter(wallet_id=wallet.id)
        if before is not None:
            entries = entries.filter(id__lt=before)
        rows = list(entries.select_related("transfer").order_by("-id")[: size + 1])
        more = len(rows) > size
        rows = rows[:size]
        running = balance
        if rows and before is not None:
            newer = Entry.objects.filter(wallet_id=wallet.id, id__gt=rows[0].id).aggregate(s=Sum("amount"))["s"] or 0
            running = balance - newer
        lines = []
        for entry in rows:
            t = entry.transfer
            lines.append(LedgerLine(entry.id, entry.created_at, t.kind, t.description or t.model, t.reference or "",
                                    entry.amount, running))
            running -= entry.amount
    return LedgerPage(lines=lines, balance=balance, older=rows[-1].id if more else None, first_page=before is None)


def parse_before(value: str | None) -> int | None:
    """The ``before`` query parameter: a positive entry id, else None (the first page)."""
    try:
        number = int(value or "")
    except ValueError:
        return None
    return number if number > 0 else None
