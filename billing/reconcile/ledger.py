"""Check 1, ledger invariants, for one UTC day.

* every transfer finished (posted or voided) on the day balances: a posted one
  has two entries summing to zero with the debit at -amount, a voided one none;
* every wallet's stored balance, reserved and promo part equals what its
  entries and transfers derive (as of the run: stored columns have no history),
  and the meter outbox and spend counters agree with the ledger;
* no reservation made on the day is still pending past its timeout plus a
  grace (``RECONCILE_RESERVATION_GRACE_SECONDS``: the sweeper runs every 30 s).

Reuses ``billing.invariants``; the summary carries the day's totals per kind.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.db.models import Count, Sum

from billing import invariants
from billing.invariants import Problem
from billing.models import Transfer


def ledger_findings(*, start: dt.datetime, end: dt.datetime, now: dt.datetime) -> tuple[list[Problem], dict[str, Any]]:
    day = Transfer.objects.filter(finished_at__gte=start, finished_at__lt=end)
    findings = [
        *invariants.transfer_problems(day),
        *invariants.wallet_problems(),
        *invariants.promo_problems(),
        *invariants.outbox_problems(),
        *invariants.spend_counter_problems(),
        *stale_reservations(start=start, end=end, now=now),
    ]
    by_kind = {
        row["kind"]: {"count": row["n"], "amount": row["s"] or 0}
        for row in day.filter(status=Transfer.Status.POSTED).values("kind").annotate(n=Count("id"), s=Sum("amount"))
        .order_by("kind")
    }
    pending = Transfer.objects.filter(status=Transfer.Status.PENDING).aggregate(n=Count("id"), s=Sum("pending_amount"))
    summary = {
        "posted": by_kind,
        "voided": day.filter(status=Transfer.Status.VOIDED).count(),
        "pending_now": {"count": pending["n"], "amount": pending["s"] or 0},
    }
    return findings, summary


def stale_reservations(*, start: dt.datetime, end: dt.datetime, now: dt.datetime) -> list[Problem]:
    grace = dt.timedelta(seconds=settings.RECONCILE_RESERVATION_GRACE_SECONDS)
    stale = Transfer.objects.filter(
        status=Transfer.Status.PENDING, created_at__gte=start, created_at__lt=end, timeout_at__lt=now - grace
    ).order_by("id")
    return [
        Problem(
            "stale_reservation",
            f"reservation {t.id} ({t.pending_amount} held for request {t.request_id}) is still pending "
            f"{int((now - t.timeout_at).total_seconds())} s after its timeout",
            amount=t.pending_amount,
            references={"transfer": t.id, "request_id": t.request_id, "project": t.project_id,
                        "wallet": t.debit_wallet_id, "timeout_at": t.timeout_at.isoformat()},
            currency=t.currency,
        )
        for t in stale
    ]
