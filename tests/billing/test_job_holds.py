"""Holds of long jobs: extended when the job starts, so the sweeper never voids a running job's money."""
from __future__ import annotations

import datetime as dt

from django.utils import timezone

from billing import ledger
from billing.invariants import check_ledger
from billing.models import Transfer
from billing.pricing import Usage
from billing.services import reservation_extend, reservations_void_expired
from tests.billing.test_ledger import price, reserve  # noqa: F401 - the price fixture
from tests.conftest import run_async


def test_an_extended_hold_outlives_its_first_timeout(alice, price):  # noqa: F811
    held = run_async(reserve(alice, price, 900, request_id="job-hold", timeout=dt.timedelta(seconds=-5)))
    assert reservation_extend(transfer_id=held.transfer_id, until=timezone.now() + dt.timedelta(hours=1))
    assert reservations_void_expired() == 0
    assert Transfer.objects.get(id=held.transfer_id).status == "pending"
    settled = run_async(ledger.settle(reservation=held, usage=Usage(0, 0), now=timezone.now(), amount=300))
    assert settled.applied and settled.amount == 300
    assert alice.wallet.balance == 1_000_000 - 300 and alice.wallet.reserved == 0 and check_ledger() == []


def test_the_sweeper_skips_a_hold_extended_after_it_listed_it(alice, price):  # noqa: F811
    held = run_async(reserve(alice, price, 900, request_id="job-race", timeout=dt.timedelta(seconds=-5)))
    stale_now = timezone.now()
    reservation_extend(transfer_id=held.transfer_id, until=stale_now + dt.timedelta(hours=1))
    # What the sweeper runs for an id it listed before the extension landed.
    from config import asyncdb

    (first, *_) = asyncdb.run_sync(*ledger.void_statements(transfer_id=held.transfer_id, now=stale_now, expired_only=True))
    assert first.rowcount == 0 and Transfer.objects.get(id=held.transfer_id).status == "pending"


def test_a_voided_hold_cannot_be_extended(alice, price):  # noqa: F811
    held = run_async(reserve(alice, price, 900, request_id="job-void", timeout=dt.timedelta(seconds=-5)))
    assert reservations_void_expired() == 1
    assert not reservation_extend(transfer_id=held.transfer_id, until=timezone.now() + dt.timedelta(hours=1))
    assert check_ledger() == []
