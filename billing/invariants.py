"""Ledger invariants, checked by tests and by reconciliation.

Each returns a list of human-readable problems; an empty list means it holds.
"""
from __future__ import annotations

from django.db.models import Count, F, Q, Sum

from .models import Entry, SpendCounter, Transfer, Wallet


def check_ledger() -> list[str]:
    problems: list[str] = []

    posted = Transfer.objects.filter(status=Transfer.Status.POSTED).annotate(
        n=Count("entries"),
        total=Sum("entries__amount"),
        debit=Sum("entries__amount", filter=Q(entries__wallet=F("debit_wallet"))),
    )
    for t in posted:
        if t.n != 2 or t.total != 0 or t.debit != -t.amount:
            problems.append(f"transfer {t.id} posted {t.amount} but has {t.n} entries summing {t.total}")

    unposted_with_entries = Entry.objects.exclude(transfer__status=Transfer.Status.POSTED).values_list(
        "transfer_id", flat=True
    )
    for transfer_id in set(unposted_with_entries):
        problems.append(f"transfer {transfer_id} is not posted but has entries")

    entry_sums = dict(Entry.objects.values_list("wallet_id").annotate(s=Sum("amount")).values_list("wallet_id", "s"))
    pending_sums = dict(
        Transfer.objects.filter(status=Transfer.Status.PENDING)
        .values_list("debit_wallet_id")
        .annotate(s=Sum("pending_amount"))
        .values_list("debit_wallet_id", "s")
    )
    for wallet in Wallet.objects.all():
        derived = entry_sums.get(wallet.id, 0)
        if wallet.balance != derived:
            problems.append(f"wallet {wallet.id} balance {wallet.balance} != sum of entries {derived}")
        pending = pending_sums.get(wallet.id, 0)
        if wallet.reserved != pending:
            problems.append(f"wallet {wallet.id} reserved {wallet.reserved} != pending transfers {pending}")
        if wallet.kind == Wallet.Kind.CUSTOMER and wallet.available < 0:
            problems.append(f"wallet {wallet.id} available is negative")
    problems += check_promo()
    problems += check_overage_outbox()
    problems += check_spend_counters()
    return problems


def check_promo() -> list[str]:
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
    for wallet_id, promo in Wallet.objects.filter(kind=Wallet.Kind.CUSTOMER).values_list("id", "promo"):
        derived = granted.get(wallet_id, 0) - spent.get(wallet_id, 0) - expired.get(wallet_id, 0)
        if promo != derived:
            problems.append(f"wallet {wallet_id} promo {promo} != promo credits less spent and expired {derived}")
    return problems


def check_overage_outbox() -> list[str]:
    """Every settlement with overage has exactly one meter outbox row of that value."""
    problems = []
    rows = Transfer.objects.filter(kind=Transfer.Kind.USAGE, overage_amount__gt=0).values_list(
        "id", "overage_amount", "meter_event__value"
    )
    for transfer_id, overage, value in rows:
        if value != overage:
            problems.append(f"transfer {transfer_id} has overage {overage} but its meter outbox row says {value}")
    from .models import MeterOutbox

    for outbox_id, transfer_id in MeterOutbox.objects.exclude(
        transfer__overage_amount=F("value")
    ).values_list("id", "transfer_id"):
        problems.append(f"meter outbox {outbox_id} does not match transfer {transfer_id}'s overage")
    return problems


def check_spend_counters() -> list[str]:
    """Each counter's spent is its scope's posted usage of the month; reserved is
    the pending amount of the month's transfers held there."""
    from .services import period_bounds

    problems: list[str] = []
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
            problems.append(
                f"spend counter {counter.scope} {counter.scope_id} {counter.period}: spent {counter.spent} "
                f"reserved {counter.reserved}, ledger says {spent} and {held}"
            )
    return problems

