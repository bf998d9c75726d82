"""Property/simulation test of the ledger (hypothesis, stateful), against the real PostgreSQL database.

Random schedules of what happens to one organization's money, each applied through the
real code (the hot-path SQL of billing.ledger, billing.services, the sweeper with an
explicit clock), next to a plain Python model of what the wallet must hold. After
every step: ``check_ledger() == []`` (every transfer balances, stored columns equal
their derivation, promo and meter outbox agree), the wallet equals the model, available
is never negative and promo never exceeds the balance.

Rules: reserve (refused exactly when the model says it cannot be covered), settle
(exact cost ≤ the hold, promo first, overage on a credit line), a second settle or void
of the same hold (a no-op), void, the clock moving on and the timeout sweep
(``reservations_void_expired(now=…)``), promotional and paid grants.

Sizes: the default profile (``ledger-ci``: 12 schedules of up to 25 steps) runs in
``make test``; ``make test-slow`` runs ``test_ledger_long_schedules`` (``ledger-long``:
300 schedules of up to 60 steps; LEDGER_PROPERTY_EXAMPLES overrides the count).
HYPOTHESIS_PROFILE=ledger-long makes the quick test as long.

Replaying a failure: hypothesis prints the failing schedule step by step, a
``@reproduce_failure(...)`` line (put it on ``LedgerMachine``) and the seed; run
``HYPOTHESIS_SEED=<seed> .venv/bin/python -m pytest tests/billing/test_property_ledger.py``
(or pass ``--hypothesis-seed=<seed>``) to replay the same schedules. Failing examples
are also kept in .hypothesis/ and tried first on the next run.
"""
from __future__ import annotations

import datetime as dt
import functools
import itertools
import os
from dataclasses import dataclass

import pytest
from django.db import IntegrityError
from django.utils import timezone
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
)

from billing import ledger
from billing.invariants import check_ledger
from billing.models import Transfer, Wallet
from billing.pricing import Price, Usage, cost_micros
from billing.services import price_publish, reservations_void_expired, wallet_credit
from tests.conftest import make_tenant, run_async

pytestmark = pytest.mark.postgres

settings.register_profile(
    "ledger-ci", max_examples=12, stateful_step_count=25, deadline=None, print_blob=True,
    # No "explain" phase: its line tracing makes each step many times slower on Python 3.11.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "ledger-long", parent=settings.get_profile("ledger-ci"),
    max_examples=int(os.environ.get("LEDGER_PROPERTY_EXAMPLES", "300")), stateful_step_count=60,
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ledger-ci")
_names = itertools.count()


@dataclass
class Hold:
    transfer_id: int
    amount: int
    timeout_at: dt.datetime
    reservation: ledger.Reservation


class LedgerMachine(RuleBasedStateMachine):
    """One organization's wallet under a random schedule; ``price`` is set by the test."""

    price: Price
    holds = Bundle("holds")

    def __init__(self):
        super().__init__()
        self.now = timezone.now()
        self.status: dict[int, str] = {}  # transfer id → pending/posted/voided, as the model says

    @initialize(credit=st.integers(0, 200_000), credit_limit=st.sampled_from([0, 0, 50_000]))
    def open_wallet(self, credit, credit_limit):
        tenant = make_tenant(f"prop{next(_names)}-{os.getpid()}", credit=credit)
        self.wallet = tenant.wallet
        self.project = tenant.project
        self.usage_wallet = Wallet.objects.get(account_id=self.wallet.account_id, kind=Wallet.Kind.USAGE)
        Wallet.objects.filter(id=self.wallet.id).update(credit_limit=credit_limit)  # a subscription's credit line
        self.balance, self.reserved, self.promo, self.credit_limit = credit, 0, 0, credit_limit

    @property
    def available(self) -> int:
        return self.balance + self.credit_limit - self.reserved

    # --- rules -------------------------------------------------------------------------------------------

    @rule(target=holds, amount=st.integers(1, 60_000), ttl=st.sampled_from([30, 300, 900]))
    def reserve(self, amount, ttl):
        timeout_at = self.now + dt.timedelta(seconds=ttl)
        coverable = self.available >= amount
        try:
            reservation = run_async(ledger.reserve(
                wallet_id=self.wallet.id, usage_wallet_id=self.usage_wallet.id, amount=amount, price=self.price,
                request_id=f"req-{next(_names)}", project_id=self.project.id, now=self.now, timeout_at=timeout_at,
            ))
        except ledger.InsufficientBalance:
            assert not coverable, f"refused {amount} with {self.available} available"
            return multiple()
        assert coverable, f"reserved {amount} with only {self.available} available"
        self.reserved += amount
        self.status[reservation.transfer_id] = "pending"
        return Hold(reservation.transfer_id, amount, timeout_at, reservation)

    @rule(hold=holds, input_tokens=st.integers(0, 30_000), output_tokens=st.integers(0, 30_000))
    def settle(self, hold, input_tokens, output_tokens):
        usage = Usage(input_tokens, output_tokens)
        result = run_async(ledger.settle(reservation=hold.reservation, usage=usage, now=self.now))
        if self.status[hold.transfer_id] != "pending":
            assert not result.applied, "a finished hold was settled again"
            return
        amount = min(cost_micros(self.price, usage), hold.amount)
        assert result.applied and result.amount == amount
        promo_part = min(self.promo, amount)
        self.promo -= promo_part
        self.balance -= amount
        self.reserved -= hold.amount
        overage = min(amount, max(0, -self.balance))
        self.status[hold.transfer_id] = "posted"
        t = Transfer.objects.get(id=hold.transfer_id)
        assert (t.status, t.amount, t.promo_amount, t.overage_amount) == ("posted", amount, promo_part, overage)

    @rule(hold=holds)
    def void(self, hold):
        applied = run_async(ledger.void(reservation=hold.reservation, now=self.now))
        assert applied == (self.status[hold.transfer_id] == "pending")
        if applied:
            self.status[hold.transfer_id] = "voided"
            self.reserved -= hold.amount

    @rule(seconds=st.integers(1, 1_200))
    def clock_moves_on(self, seconds):
        self.now += dt.timedelta(seconds=seconds)

    @rule()
    def timeout_sweep(self):
        reservations_void_expired(now=self.now)
        for transfer_id, status in list(self.status.items()):
            if status != "pending":
                continue
            t = Transfer.objects.get(id=transfer_id)
            if t.timeout_at < self.now:
                assert t.status == "voided", f"hold {transfer_id} outlived its timeout"
                self.status[transfer_id] = "voided"
                self.reserved -= t.pending_amount
            else:
                assert t.status == "pending", f"hold {transfer_id} voided before its timeout"

    @rule(amount=st.integers(1, 80_000), days=st.integers(1, 60))
    def promo_grant(self, amount, days):
        grant = functools.partial(
            wallet_credit, wallet=self.wallet, amount=amount, kind=Transfer.Kind.PROMO,
            reference=f"promo-{next(_names)}", expires_at=self.now + dt.timedelta(days=days),
        )
        if self.balance < 0:
            # A wallet in overage owes first: promo credit there would exceed the balance
            # (wallet_promo_within_balance), so the grant is refused and nothing moves.
            with pytest.raises(IntegrityError, match="wallet_promo_within_balance"):
                grant()
            return
        grant()
        self.balance += amount
        self.promo += amount

    @rule(amount=st.integers(1, 100_000))
    def paid_grant(self, amount):
        reference = f"grant-{next(_names)}"
        first = wallet_credit(wallet=self.wallet, amount=amount, reference=reference)
        again = wallet_credit(wallet=self.wallet, amount=amount, reference=reference)  # a retried credit
        assert again.id == first.id
        self.balance += amount

    # --- invariants --------------------------------------------------------------------------------------

    @invariant()
    def ledger_holds(self):
        if not hasattr(self, "wallet"):
            return
        assert check_ledger() == []
        w = Wallet.objects.get(id=self.wallet.id)
        assert (w.balance, w.reserved, w.promo) == (self.balance, self.reserved, self.promo)
        assert w.available >= 0, "available went negative"
        assert w.promo == 0 or w.promo <= w.balance, "promo exceeds the balance"


def _machine():
    machine = LedgerMachine
    if os.environ.get("HYPOTHESIS_SEED"):
        machine = seed(int(os.environ["HYPOTHESIS_SEED"]))(machine)
    return machine


@pytest.fixture
def ledger_price(transactional_db) -> Price:
    p = price_publish(model="prop-model", input_per_mtok=1_000_000, output_per_mtok=2_000_000)
    return Price(p.id, p.model, p.version, p.currency, p.input_per_mtok, p.cached_input_per_mtok,
                 p.output_per_mtok, p.effective_from)


def _run(price: Price, profile: str) -> None:
    from hypothesis.stateful import run_state_machine_as_test

    LedgerMachine.price = price
    run_state_machine_as_test(_machine(), settings=settings.get_profile(profile))


def test_random_ledger_schedules_keep_every_invariant(ledger_price):
    _run(ledger_price, PROFILE)


@pytest.mark.slow
def test_ledger_long_schedules(ledger_price):
    _run(ledger_price, "ledger-long")
