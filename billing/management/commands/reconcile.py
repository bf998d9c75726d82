"""python manage.py reconcile --date YYYY-MM-DD [--heal] [--json] [--rerun RUN_ID]

Runs reconciliation for one UTC day (default: yesterday) and stores the run.
Exit status: 0 when nothing is left open, 1 when discrepancies remain open,
2 when a check could not run (e.g. Stripe unreachable).
"""
from __future__ import annotations

import datetime as dt

import orjson
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing.models import ReconciliationRun
from billing.reconcile import open_count, reconcile_run
from billing.reconcile.runs import run_export


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"--date wants YYYY-MM-DD, got {value!r}") from None


class Command(BaseCommand):
    help = "Reconcile one UTC day: ledger invariants, usage against the ledger, the ledger against Stripe."

    def add_arguments(self, parser):
        parser.add_argument("--date", type=_date, help="the UTC day, YYYY-MM-DD (default: yesterday)")
        parser.add_argument("--heal", action="store_true", help="apply the credit of dropped webhooks (once)")
        parser.add_argument("--json", action="store_true", help="print the run and its discrepancies as JSON")
        parser.add_argument("--rerun", type=int, metavar="RUN_ID", help="re-execute this run (its day)")

    def handle(self, *args, date=None, heal=False, json=False, rerun=None, **options):
        parent = None
        if rerun is not None:
            parent = ReconciliationRun.objects.filter(id=rerun).first()
            if parent is None:
                raise CommandError(f"no reconciliation run {rerun}")
            if date is not None and date != parent.day:
                raise CommandError(f"run {rerun} reconciled {parent.day}, not {date}")
            date = parent.day
        if date is None:
            date = timezone.now().astimezone(dt.UTC).date() - dt.timedelta(days=1)
        try:
            run = reconcile_run(day=date, rerun_of=parent, heal=heal)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        left = open_count(run)
        if json:
            self.stdout.write(orjson.dumps(run_export(run), option=orjson.OPT_INDENT_2).decode())
        else:
            self._describe(run, left)
        if run.status == ReconciliationRun.Status.FAILED:
            raise CommandError(f"run {run.id} failed: {run.error}", returncode=2)
        if left:
            raise CommandError(f"run {run.id}: {left} discrepancies open", returncode=1)

    def _describe(self, run: ReconciliationRun, left: int) -> None:
        counts = run.summary.get("discrepancies", {})
        self.stdout.write(
            f"run {run.id} for {run.day}: {run.status}; {sum(counts.values())} discrepancies "
            f"({left} open, {counts.get('healed', 0)} healed, {counts.get('closed', 0)} closed)"
        )
        for d in run.discrepancies.order_by("id"):
            line = f"  [{d.status}] {d.kind} {d.amount:+d} {d.currency}: {d.detail}"
            if d.note:
                line += f" — {d.note}"
            self.stdout.write(line)
