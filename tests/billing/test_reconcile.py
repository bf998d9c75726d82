"""Reconciliation checks 1 (ledger invariants) and 2 (usage against the ledger), runs,
re-runs, closing with a note, and the ``reconcile`` command.

Requests are made the way the gateway makes them: reserve, then settle with the
request record in the same round trip (``gateway.records.insert_statement``).
A discrepancy is produced by doing what a bug would do (a settlement without its
record, a wallet column written behind the ledger's back) and must be found.
The Stripe check is off here (no STRIPE_SECRET_KEY); tests/billing/test_reconcile_stripe.py
and test_reconcile_e2e.py run it against the emulator.
"""
from __future__ import annotations

import datetime as dt
import io

import orjson
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from billing import ledger
from billing.invariants import check_ledger
from billing.models import ReconciliationRun, Transfer
from billing.pricing import Price, Usage
from billing.reconcile import discrepancy_close, reconcile_run
from billing.services import price_publish, reservations_void_expired
from gateway.records import RequestMeta, insert_statement
from tests.billing.test_ledger import price, reserve  # noqa: F401 - the price fixture
from tests.conftest import run_async


@pytest.fixture(autouse=True)
def _no_stripe(settings):
    settings.STRIPE_SECRET_KEY = ""


def today() -> dt.date:
    return timezone.now().astimezone(dt.UTC).date()


def request(tenant, at: Price, *, request_id: str, usage: Usage, hold: int = 5_000, record: bool = True,
            **record_changes) -> Transfer:
    """One metered request: reserve ``hold``, settle ``usage`` with its record (or without, like a bug)."""
    reservation = run_async(reserve(tenant, at, hold, request_id=request_id))
    amount, _ = ledger.settlement_amount(reservation, usage)
    meta = RequestMeta(
        request_id=request_id, organization_id=tenant.organization.id, project_id=tenant.project.id, api_key_id=None,
        endpoint="chat.completions", created_at=timezone.now(), model=at.model, price_version=at.version,
        transfer_id=reservation.transfer_id, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
        cached_input_tokens=usage.cached_input_tokens, cost=amount,
    )
    for name, value in record_changes.items():
        setattr(meta, name, value)
    run_async(ledger.settle(reservation=reservation, usage=usage, now=timezone.now(),
                            after=[insert_statement(meta)] if record else []))
    return Transfer.objects.get(id=reservation.transfer_id)


def found(run: ReconciliationRun) -> list[tuple[str, int]]:
    return sorted(run.discrepancies.values_list("kind", "amount"))


def test_a_clean_day_reconciles_with_no_discrepancy_and_its_totals(alice, price):  # noqa: F811
    request(alice, price, request_id="req-1", usage=Usage(100, 40))  # 100 + 80
    request(alice, price, request_id="req-2", usage=Usage(1_000, 0, cached_input_tokens=400))  # 600 + 400 * 1
    request(alice, price, request_id="req-capped", usage=Usage(10_000, 10_000), hold=50)  # billed the hold: 50
    run_async(ledger.void(reservation=run_async(reserve(alice, price, 700, request_id="req-void")), now=timezone.now()))
    run = reconcile_run(day=today())
    assert (run.status, found(run), run.error) == ("ok", [], "")
    usage = run.summary["checks"]["usage"]
    assert usage["per_model"]["ledger-model"] == {
        "requests": 3, "expected": 180 + 1_000 + 50, "charged": 180 + 1_000 + 50, "unverified": 0, "difference": 0,
    }
    assert (usage["transfers_posted"], usage["transfers_voided"]) == (3, 1)
    ledger_summary = run.summary["checks"]["ledger"]
    assert ledger_summary["posted"]["usage"] == {"count": 3, "amount": 1_230}
    assert run.summary["checks"]["stripe"]["skipped"] == "STRIPE_SECRET_KEY is not set"
    assert run.summary["discrepancies"] == {"open": 0, "healed": 0, "closed": 0}
    assert run.finished_at is not None


def test_a_day_without_activity_is_ok_and_a_future_day_is_refused(transactional_db):
    assert reconcile_run(day=today() - dt.timedelta(days=3)).status == "ok"
    with pytest.raises(ValueError, match="has not begun"):
        reconcile_run(day=today() + dt.timedelta(days=1))
    assert ReconciliationRun.objects.count() == 1


def test_usage_on_another_day_is_not_this_days(alice, price):  # noqa: F811
    request(alice, price, request_id="req-1", usage=Usage(100, 40))
    run = reconcile_run(day=today() - dt.timedelta(days=1))
    assert run.summary["checks"]["usage"]["transfers_posted"] == 0 and found(run) == []


def test_a_settlement_without_its_request_record_is_a_transfer_without_request(alice, price):  # noqa: F811
    t = request(alice, price, request_id="req-lost", usage=Usage(100, 40), record=False)
    run = reconcile_run(day=today())
    assert run.status == "discrepancies" and found(run) == [("transfer_without_request", 180)]
    d = run.discrepancies.get()
    assert d.references["transfer"] == t.id and d.references["request_id"] == "req-lost" and d.status == "open"
    assert run.summary["checks"]["usage"]["per_model"]["ledger-model"]["difference"] == 180


def test_a_charge_that_is_not_what_the_tokens_cost_is_found(alice, price):  # noqa: F811
    # The record says the node reported 100/40 (180), the ledger charged for 100/50 (200).
    t = request(alice, price, request_id="req-over", usage=Usage(100, 50), output_tokens=40)
    run = reconcile_run(day=today())
    assert found(run) == [("charge_mismatch", 20)]
    refs = run.discrepancies.get().references
    assert (refs["expected"], refs["charged"], refs["transfer"]) == (180, 200, t.id)
    assert refs["record_tokens"] == [100, 0, 40] and refs["transfer_tokens"] == [100, 0, 50]


def test_a_request_recorded_at_another_price_version_is_found(alice, price):  # noqa: F811
    newer = price_publish(model="ledger-model", input_per_mtok=3_000_000, output_per_mtok=4_000_000)
    request(alice, price, request_id="req-v", usage=Usage(10, 10), price_version=newer.version)
    run = reconcile_run(day=today())
    assert [k for k, _ in found(run)] == ["price_version_mismatch"]
    assert run.discrepancies.get().references["transfer_price_version"] == price.version


def test_a_request_charged_twice_is_a_duplicate_charge(alice, price):  # noqa: F811
    request(alice, price, request_id="req-twice", usage=Usage(100, 40))
    request(alice, price, request_id="req-twice", usage=Usage(100, 40), record=False)
    run = reconcile_run(day=today())
    assert found(run) == [("duplicate_charge", 180), ("transfer_without_request", 180)]


def test_a_request_recorded_with_a_cost_whose_transfer_was_voided_is_found(alice, price):  # noqa: F811
    reservation = run_async(reserve(alice, price, 5_000, request_id="req-unpaid"))
    meta = RequestMeta(
        request_id="req-unpaid", organization_id=alice.organization.id, project_id=alice.project.id, api_key_id=None,
        endpoint="chat.completions", created_at=timezone.now(), model=price.model, price_version=price.version,
        transfer_id=reservation.transfer_id, input_tokens=100, output_tokens=40, cost=180,
    )
    # What a job's settlement does when the sweeper voided its hold first: the record lands, the charge does not.
    run_async(ledger.void(reservation=reservation, now=timezone.now(), after=[insert_statement(meta)]))
    run = reconcile_run(day=today())
    assert found(run) == [("request_without_transfer", -180)]
    assert run.discrepancies.get().references["transfer_status"] == "voided"


def test_a_record_naming_a_pending_transfer_is_a_request_without_transfer(alice, price):  # noqa: F811
    reservation = run_async(reserve(alice, price, 5_000, request_id="req-pending"))
    meta = RequestMeta(
        request_id="req-pending", organization_id=alice.organization.id, project_id=alice.project.id,
        api_key_id=None, endpoint="chat.completions", created_at=timezone.now(), model=price.model,
        price_version=price.version, transfer_id=reservation.transfer_id, input_tokens=1, output_tokens=1, cost=3,
    )
    from config import asyncdb

    asyncdb.run_sync(insert_statement(meta))
    run = reconcile_run(day=today())
    assert found(run) == [("request_without_transfer", -3)]


def test_a_wallet_column_written_behind_the_ledgers_back_is_found(alice):
    wallet = alice.wallet
    with connection.cursor() as cur:  # what a buggy UPDATE would do
        cur.execute("UPDATE billing_wallet SET balance = balance + 5 WHERE id = %s", [wallet.id])
    run = reconcile_run(day=today())
    assert found(run) == [("wallet_balance_mismatch", 5)]
    refs = run.discrepancies.get().references
    assert (refs["wallet"], refs["stored"], refs["derived"]) == (wallet.id, 1_000_005, 1_000_000)
    assert check_ledger() == [f"wallet {wallet.id} balance 1000005 != sum of entries 1000000"]


def test_an_unbalanced_transfer_of_the_day_is_found(alice):
    seed = Transfer.objects.get(reference="seed:alice")
    with connection.cursor() as cur:
        cur.execute("UPDATE billing_entry SET amount = amount - 1 WHERE transfer_id = %s AND amount > 0", [seed.id])
    run = reconcile_run(day=today())
    kinds = dict(found(run))
    assert kinds["transfer_unbalanced"] == -1 and kinds["wallet_balance_mismatch"] == 1
    assert run.discrepancies.get(kind="transfer_unbalanced").references["transfer"] == seed.id


def test_a_reservation_left_pending_past_its_timeout_is_found_until_swept(alice, price, settings):  # noqa: F811
    settings.RECONCILE_RESERVATION_GRACE_SECONDS = 60
    stale = run_async(reserve(alice, price, 900, request_id="req-stale", timeout=dt.timedelta(minutes=-5)))
    run_async(reserve(alice, price, 800, request_id="req-young", timeout=dt.timedelta(seconds=-10)))  # within grace
    first = reconcile_run(day=today())
    assert found(first) == [("stale_reservation", 900)]
    assert first.discrepancies.get().references["transfer"] == stale.transfer_id
    assert first.summary["checks"]["ledger"]["pending_now"] == {"count": 2, "amount": 1_700}
    assert reservations_void_expired() == 2
    again = reconcile_run(day=today(), rerun_of=first)
    assert (again.status, found(again), again.rerun_of_id) == ("ok", [], first.id)
    first.refresh_from_db()
    assert first.status == "discrepancies"  # a re-run is a new run; the first one keeps what it found


def test_a_closed_discrepancy_needs_a_note_and_stays_closed_in_a_rerun(alice, price, django_user_model):  # noqa: F811
    finance = django_user_model.objects.create_user(username="fin", password="x")
    request(alice, price, request_id="req-lost", usage=Usage(100, 40), record=False)
    run = reconcile_run(day=today())
    d = run.discrepancies.get()
    with pytest.raises(ValueError, match="needs a note"):
        discrepancy_close(discrepancy=d, user=finance, note="   ")
    d.refresh_from_db()
    assert d.status == "open"
    discrepancy_close(discrepancy=d, user=finance, note="record lost in incident 42; charge is right")
    d.refresh_from_db()
    run.refresh_from_db()
    assert (d.status, d.resolved_by, run.status) == ("closed", finance, "ok")
    assert run.summary["discrepancies"] == {"open": 0, "healed": 0, "closed": 1}
    with pytest.raises(ValueError, match="no longer open"):
        discrepancy_close(discrepancy=d, user=finance, note="again")
    rerun = reconcile_run(day=today(), rerun_of=run)
    carried = rerun.discrepancies.get()
    assert (rerun.status, carried.status, carried.kind) == ("ok", "closed", "transfer_without_request")
    assert carried.note == f"closed in run {run.id}: record lost in incident 42; charge is right"
    # A new problem of the same kind about another transfer is open again.
    request(alice, price, request_id="req-lost-2", usage=Usage(1, 1), record=False)
    third = reconcile_run(day=today(), rerun_of=rerun)
    assert sorted(third.discrepancies.values_list("status", flat=True)) == ["closed", "open"]


def test_a_rerun_must_be_of_the_same_day(transactional_db):
    run = reconcile_run(day=today())
    with pytest.raises(ValueError, match="not"):
        reconcile_run(day=today() - dt.timedelta(days=1), rerun_of=run)


def test_the_command_prints_json_and_exits_non_zero_while_discrepancies_are_open(alice, price):  # noqa: F811
    out = io.StringIO()
    call_command("reconcile", "--date", today().isoformat(), "--json", stdout=out)
    clean = orjson.loads(out.getvalue())
    assert clean["status"] == "ok" and clean["discrepancies"] == [] and clean["day"] == today().isoformat()

    request(alice, price, request_id="req-lost", usage=Usage(100, 40), record=False)
    out = io.StringIO()
    with pytest.raises(CommandError, match="1 discrepancies open") as exc:
        call_command("reconcile", "--date", today().isoformat(), "--json", stdout=out)
    assert exc.value.returncode == 1
    printed = orjson.loads(out.getvalue())
    assert [(d["kind"], d["amount"], d["status"]) for d in printed["discrepancies"]] == [
        ("transfer_without_request", 180, "open")
    ]
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command("reconcile", "--rerun", str(printed["id"]), stdout=out)
    assert "transfer_without_request +180 usd" in out.getvalue()
    assert ReconciliationRun.objects.filter(rerun_of_id=printed["id"]).count() == 1


def test_the_command_refuses_a_bad_date_and_changes_nothing(transactional_db):
    with pytest.raises(CommandError, match="YYYY-MM-DD"):
        call_command("reconcile", "--date", "2025-13-01")
    with pytest.raises(CommandError, match="has not begun"):
        call_command("reconcile", "--date", (today() + dt.timedelta(days=2)).isoformat())
    assert ReconciliationRun.objects.count() == 0


def test_the_beat_tasks_run_yesterday_once_and_today_each_time(transactional_db):
    from billing import tasks

    first = tasks.reconcile_yesterday.apply().get()
    assert ReconciliationRun.objects.get(id=first).day == today() - dt.timedelta(days=1)
    assert tasks.reconcile_yesterday.apply().get() is None  # done: the hourly tick skips it
    a, b = tasks.reconcile_today.apply().get(), tasks.reconcile_today.apply().get()
    assert a != b and {r.day for r in ReconciliationRun.objects.filter(id__in=[a, b])} == {today()}


def test_beat_schedule_names_registered_tasks():
    from django.conf import settings

    from config.celery import app

    app.loader.import_default_modules()
    for name in ("reconcile-yesterday", "reconcile-today"):
        entry = settings.CELERY_BEAT_SCHEDULE[name]
        assert entry["task"] in app.tasks and float(entry["schedule"]) > 0

