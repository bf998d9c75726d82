"""Ledger invariants, checked by tests and by reconciliation.

Each check yields ``Problem`` records (a kind slug, the signed amount it is off
by in micro-units, references to the rows involved, a sentence); reconciliation
stores them as discrepancies. ``check_ledger()`` and the ``check_*`` helpers keep
the older shape, a list of sentences (empty: the invariant holds), for tests.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, F, Q, QuerySet, Sum

from .models import Entry, MeterOutbox, SpendCounter, Transfer, Wallet


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str
    detail: str
    amount: int = 0  # micro-units: what is stored (or charged) less what it should be
    references: dict[str, Any] = field(default_factory=dict)
    currency: str = "usd"


def _details(problems: Iterable[Problem]) -> list[str]:
    return [p.detail for p in problems]


def check_ledger() -> list[str]:
    return _details(ledger_problems())


def ledger_problems() -> list[Problem]:
    """Every invariant over the whole ledger."""
    return [
        *transfer_problems(),
        *wallet_problems(),
        *promo_problems(),
        *outbox_problems(),
        *spend_counter_problems(),
    ]


def transfer_problems(transfers: QuerySet[Transfer] | None = None) -> list[Problem]:
    """Each posted transfer has two entries summing to zero, its debit -amount;
    a transfer that is not posted has none. ``transfers``: limit to these (a day's)."""
    entries = Entry.objects.all() if transfers is None else Entry.objects.filter(transfer__in=transfers.values("id"))
    transfers = Transfer.objects.all() if transfers is None else transfers
    problems: list[Problem] = []
    posted = transfers.filter(status=Transfer.Status.POSTED).annotate(
        n=Count("entries"),
        total=Sum("entries__amount"),
        debit=Sum("entries__amount", filter=Q(entries__wallet=F("debit_wallet"))),
    )
    for t in posted.iterator(chunk_size=2000):
        if t.n != 2 or t.total != 0 or t.debit != -t.amount:
            problems.append(Problem(
                "transfer_unbalanced",
                f"transfer {t.id} posted {t.amount} but has {t.n} entries summing {t.total}",
                amount=t.total or 0,
                references={"transfer": t.id, "kind": t.kind, "amount": t.amount, "entries": t.n,
                            "entries_sum": t.total, "debit_entry": t.debit},
                currency=t.currency,
            ))
    unposted = (
        entries.exclude(transfer__status=Transfer.Status.POSTED)
        .values_list("transfer_id", "transfer__status")
        .annotate(s=Sum("amount"))
    )
    for transfer_id, status, total in unposted:
        problems.append(Problem(
            "entries_on_unposted_transfer",
            f"transfer {transfer_id} is not posted but has entries",
            amount=total or 0,
            references={"transfer": transfer_id, "status": status},
        ))
    return problems


def wallet_problems() -> list[Problem]:
    """A wallet's balance is the sum of its entries, its reserved the sum of its
    pending transfers; a customer wallet's available is never negative."""
    problems: list[Problem] = []
    entry_sums = dict(Entry.objects.values_list("wallet_id").annotate(s=Sum("amount")).values_list("wallet_id", "s"))
    pending_sums = dict(
        Transfer.objects.filter(status=Transfer.Status.PENDING)
        .values_list("debit_wallet_id")
        .annotate(s=Sum("pending_amount"))
        .values_list("debit_wallet_id", "s")
    )
    for wallet in Wallet.objects.all().iterator(chunk_size=2000):
        refs = {"wallet": wallet.id, "account": wallet.account_id, "wallet_kind": wallet.kind}
        derived = entry_sums.get(wallet.id, 0)
        if wallet.balance != derived:
            problems.append(Problem(
                "wallet_balance_mismatch",
                f"wallet {wallet.id} balance {wallet.balance} != sum of entries {derived}",
                amount=wallet.balance - derived,
                references={**refs, "stored": wallet.balance, "derived": derived},
                currency=wallet.currency,
            ))
        pending = pending_sums.get(wallet.id, 0)
        if wallet.reserved != pending:
            problems.append(Problem(
                "wallet_reserved_mismatch",
                f"wallet {wallet.id} reserved {wallet.reserved} != pending transfers {pending}",
                amount=wallet.reserved - pending,
                references={**refs, "stored": wallet.reserved, "derived": pending},
                currency=wallet.currency,
            ))
        if wallet.kind == Wallet.Kind.CUSTOMER and wallet.available < 0:
            problems.append(Problem(
                "wallet_available_negative",
                f"wallet {wallet.id} available is negative",
                amount=wallet.available,
                references={**refs, "balance": wallet.balance, "reserved": wallet.reserved,
                            "credit_limit": wallet.credit_limit},
                currency=wallet.currency,
            ))
    return problems


def check_promo() -> list[str]:
    return _details(promo_problems())


def promo_problems() -> list[Problem]:
    """A customer wallet's promo part is its promo/included credits, less what
    settlements took from it, less what expired."""
    posted = Transfer.objects.filter(status=Transfer.Status.POSTED)
    granted = dict(
        posted.filter(kind__in=[Transfer.Kind.PROMO, Transfer.Kind.INCLUDED])
        .values_list("credit_wallet_id").annotate(s=Sum("amount")).values_list("credit_wallet_id", "s")
    )
    spent = dict(
        posted.filter(kind=Transfer.Kind.USAGE, promo_amount__gt=0)
        .values_list("debit_wallet_id").annotate(s=Sum("promo_amount")).values_list("debit_wallet_id", "s")
    )
    expired = dict(
        posted.filter(kind=Transfer.Kind.PROMO_EXPIRY)
        .values_list("debit_wallet_id").annotate(s=Sum("amount")).values_list("debit_wallet_id", "s")
    )
    problems = []
    rows = Wallet.objects.filter(kind=Wallet.Kind.CUSTOMER).values_list("id", "account_id", "promo", "currency")
    for wallet_id, account_id, promo, currency in rows:
        derived = granted.get(wallet_id, 0) - spent.get(wallet_id, 0) - expired.get(wallet_id, 0)
        if promo != derived:
            problems.append(Problem(
                "wallet_promo_mismatch",
                f"wallet {wallet_id} promo {promo} != promo credits less spent and expired {derived}",
                amount=promo - derived,
                references={"wallet": wallet_id, "account": account_id, "stored": promo, "derived": derived},
                currency=currency,
            ))
    return problems


def check_overage_outbox() -> list[str]:
    return _details(outbox_problems())


def outbox_problems() -> list[Problem]:
    """Every settlement with overage has exactly one meter outbox row of that value."""
    problems = []
    rows = Transfer.objects.filter(kind=Transfer.Kind.USAGE, overage_amount__gt=0).values_list(
        "id", "overage_amount", "meter_event__value"
    )
    for transfer_id, overage, value in rows:
        if value != overage:
            problems.append(Problem(
                "meter_outbox_mismatch",
                f"transfer {transfer_id} has overage {overage} but its meter outbox row says {value}",
                amount=(value or 0) - overage,
                references={"transfer": transfer_id, "overage": overage, "outbox_value": value},
            ))
    mismatched = MeterOutbox.objects.exclude(transfer__overage_amount=F("value")).values_list(
        "id", "transfer_id", "value", "transfer__overage_amount"
    )
    for outbox_id, transfer_id, value, overage in mismatched:
        problems.append(Problem(
            "meter_outbox_mismatch",
            f"meter outbox {outbox_id} does not match transfer {transfer_id}'s overage",
            amount=value - overage,
            references={"outbox": outbox_id, "transfer": transfer_id, "overage": overage, "outbox_value": value},
        ))
    return problems


def check_spend_counters() -> list[str]:
    return _details(spend_counter_problems())


def spend_counter_problems() -> list[Problem]:
    """Each counter's spent is its scope's posted usage of the month; reserved is
    the pending amount of the month's transfers held there."""
    from .services import period_bounds

    problems: list[Problem] = []
    # A cleared cap's counter is left as it was (a new cap rebuilds it from the ledger).
    for counter in SpendCounter.objects.filter(cap__isnull=False):
        start, end = period_bounds(counter.period)
        owner, flag = (
            ("api_key_id", "counted_key") if counter.scope == SpendCounter.Scope.KEY else ("project_id", "counted_project")
        )
        usage = Transfer.objects.filter(kind=Transfer.Kind.USAGE, **{owner: counter.scope_id})
        spent = usage.filter(status=Transfer.Status.POSTED, created_at__gte=start, created_at__lt=end).aggregate(
            s=Sum("amount")
        )["s"] or 0
        held = usage.filter(status=Transfer.Status.PENDING, spend_period=counter.period, **{flag: True}).aggregate(
            s=Sum("pending_amount")
        )["s"] or 0
        if (counter.spent, counter.reserved) != (spent, held):
            problems.append(Problem(
                "spend_counter_mismatch",
                f"spend counter {counter.scope} {counter.scope_id} {counter.period}: spent {counter.spent} "
                f"reserved {counter.reserved}, ledger says {spent} and {held}",
                amount=(counter.spent - spent) + (counter.reserved - held),
                references={"counter": counter.id, "scope": counter.scope, "scope_id": counter.scope_id,
                            "period": counter.period, "spent": counter.spent, "reserved": counter.reserved,
                            "ledger_spent": spent, "ledger_reserved": held},
            ))
    return problems
