"""Reconciliation runs: execute the three checks for a day, store what they found, resolve it.

A run is never changed after the fact except for its discrepancies' resolution
(healed by the system, or closed by a person with a note) and the status that
follows from it: ``ok`` when nothing is left open, ``discrepancies`` otherwise,
``failed`` when a check could not run (e.g. Stripe unreachable) — what the other
checks found is still stored. Re-executing a run creates a new run
(``rerun_of``); a discrepancy a person closed in an earlier run of the same day
comes back closed with that note, so a known and accepted difference is not
flagged again and again.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from typing import Any

from django.db import transaction
from django.utils import timezone

from billing.invariants import Problem
from billing.models import Discrepancy, ReconciliationRun

from . import heal as healing
from .ledger import ledger_findings
from .stripe_side import StripeUnavailable, stripe_findings
from .usage import usage_findings

log = logging.getLogger(__name__)

CHECKS = (("ledger", ledger_findings), ("usage", usage_findings), ("stripe", stripe_findings))
# The references that say which rows a finding is about (the rest are figures that may move).
IDENTITY_KEYS = (
    "transfer", "transfers", "wallet", "request_id", "request_record", "counter", "outbox", "balance_transaction",
    "charge", "payment_intent", "refund", "dispute", "invoice", "payout", "stripe_object", "checkout_session",
)
MAX_NOTE = 2000


def day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)
    return start, start + dt.timedelta(days=1)


def fingerprint(kind: str, references: dict[str, Any]) -> str:
    keys = sorted(k for k in IDENTITY_KEYS if references.get(k) not in (None, "", []))
    return kind + "|" + "|".join(f"{k}={references[k]}" for k in keys)


def reconcile_run(
    *, day: dt.date, user=None, rerun_of: ReconciliationRun | None = None, heal: bool = False,
    now: dt.datetime | None = None,
) -> ReconciliationRun:
    """Run checks 1–3 for the UTC ``day`` and store the run (a new one each time)."""
    if not isinstance(day, dt.date) or isinstance(day, dt.datetime):
        raise TypeError("day is a date")
    now = now or timezone.now()
    if day > now.astimezone(dt.UTC).date():
        raise ValueError(f"{day} has not begun yet (UTC): there is nothing to reconcile")
    if rerun_of is not None and rerun_of.day != day:
        raise ValueError(f"run {rerun_of.id} reconciled {rerun_of.day}, not {day}")
    run = ReconciliationRun.objects.create(
        day=day, status=ReconciliationRun.Status.RUNNING, started_at=now, created_by=user, rerun_of=rerun_of,
    )
    start, end = day_bounds(day)
    findings: list[Problem] = []
    checks: dict[str, Any] = {}
    errors: list[str] = []
    for name, check in CHECKS:
        try:
            found, summary = check(start=start, end=end, now=now)
        except StripeUnavailable as exc:
            errors.append(f"{name}: {exc}")
            checks[name] = {"error": str(exc)}
            continue
        except Exception as exc:
            log.exception("reconciliation run %s: check %s failed", run.id, name)
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            checks[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        findings += found
        checks[name] = summary
    _store(run, findings, checks=checks, errors=errors)
    if heal:
        run_heal(run=run, user=user)
    return run


def _store(run: ReconciliationRun, findings: list[Problem], *, checks: dict, errors: list[str]) -> None:
    closed_before = {
        fingerprint(d.kind, d.references): d
        for d in Discrepancy.objects.filter(run__day=run.day, status=Discrepancy.Status.CLOSED)
        .exclude(run=run).select_related("run").order_by("resolved_at")
    }
    now = timezone.now()
    rows = []
    for problem in findings:
        row = Discrepancy(
            run=run, kind=problem.kind, amount=problem.amount, currency=problem.currency,
            references=problem.references, detail=problem.detail,
        )
        earlier = closed_before.get(fingerprint(problem.kind, problem.references))
        if earlier is not None:
            row.status = Discrepancy.Status.CLOSED
            row.note = f"closed in run {earlier.run_id}: {earlier.note}"[:MAX_NOTE]
            row.resolved_at, row.resolved_by_id = now, earlier.resolved_by_id
        rows.append(row)
    with transaction.atomic():
        Discrepancy.objects.bulk_create(rows)
        run.summary = {"checks": checks, "found": dict(sorted(Counter(p.kind for p in findings).items()))}
        run.error = "\n".join(errors)
        run.finished_at = timezone.now()
        run.save(update_fields=["summary", "error", "finished_at"])
        run_refresh(run=run)


@transaction.atomic
def run_refresh(*, run: ReconciliationRun) -> ReconciliationRun:
    """Recount the run's discrepancies by status and set its status from them."""
    # The run's row lock orders concurrent resolutions: each recounts after the last one committed.
    locked = ReconciliationRun.objects.select_for_update().get(id=run.id)
    run.summary, run.error = locked.summary, locked.error
    counts = Counter(run.discrepancies.values_list("status", flat=True))
    run.summary = {**run.summary, "discrepancies": {s: counts.get(s, 0) for s in Discrepancy.Status.values}}
    if run.error:
        run.status = ReconciliationRun.Status.FAILED
    elif counts.get(Discrepancy.Status.OPEN):
        run.status = ReconciliationRun.Status.DISCREPANCIES
    else:
        run.status = ReconciliationRun.Status.OK
    run.save(update_fields=["summary", "status"])
    return run


def day_reconciled(*, day: dt.date) -> bool:
    """Whether a run that completed its checks started after the day was over."""
    _, end = day_bounds(day)
    return ReconciliationRun.objects.filter(
        day=day, started_at__gte=end, status__in=[ReconciliationRun.Status.OK, ReconciliationRun.Status.DISCREPANCIES]
    ).exists()


def open_count(run: ReconciliationRun) -> int:
    return run.discrepancies.filter(status=Discrepancy.Status.OPEN).count()


def run_heal(*, run: ReconciliationRun, user=None) -> list[tuple[Discrepancy, str]]:
    """Heal every open healable discrepancy of the run; (discrepancy, what happened) for each."""
    outcomes = []
    for discrepancy in run.discrepancies.filter(status=Discrepancy.Status.OPEN, kind__in=healing.HEALABLE).order_by("id"):
        try:
            healed = healing.discrepancy_heal(discrepancy=discrepancy, run=run, user=user)
            outcomes.append((healed.discrepancy, healed.discrepancy.note))
        except healing.CannotHeal as exc:
            outcomes.append((discrepancy, f"not healed: {exc}"))
        except Exception as exc:  # Stripe down, a handler's error: the discrepancy stays open
            log.exception("healing discrepancy %s failed", discrepancy.id)
            outcomes.append((discrepancy, f"not healed: {type(exc).__name__}: {exc}"))
    run_refresh(run=run)
    return outcomes


def discrepancy_close(*, discrepancy: Discrepancy, user, note: str) -> Discrepancy:
    """A person resolves an open discrepancy; the note (required) says how."""
    note = (note or "").strip()
    if not note:
        raise ValueError("closing a discrepancy needs a note saying how it was resolved")
    if len(note) > MAX_NOTE:
        raise ValueError(f"the note is longer than {MAX_NOTE} characters")
    with transaction.atomic():
        changed = Discrepancy.objects.filter(id=discrepancy.id, status=Discrepancy.Status.OPEN).update(
            status=Discrepancy.Status.CLOSED, note=note, resolved_at=timezone.now(), resolved_by=user,
        )
        if not changed:
            raise ValueError("the discrepancy is no longer open")
        discrepancy.refresh_from_db()
        run_refresh(run=discrepancy.run)
    return discrepancy


def discrepancy_export(d: Discrepancy) -> dict[str, Any]:
    return {
        "id": d.id, "kind": d.kind, "amount": d.amount, "currency": d.currency, "status": d.status,
        "references": d.references, "detail": d.detail, "note": d.note,
        "resolved_at": d.resolved_at.isoformat() if d.resolved_at else None,
    }


def run_export(run: ReconciliationRun) -> dict[str, Any]:
    return {
        "id": run.id, "day": run.day.isoformat(), "status": run.status, "rerun_of": run.rerun_of_id,
        "started_at": run.started_at.isoformat(), "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "error": run.error, "summary": run.summary,
        "discrepancies": [discrepancy_export(d) for d in run.discrepancies.order_by("id")],
    }
