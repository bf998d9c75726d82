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
(``reservations_void_expired(now=…)``), promotional grants and their FIFO expiry
(``promo_expire_due(now=…)``), paid grants; and money from Stripe as it arrives: signed
``checkout.session.completed`` / ``checkout.session.async_payment_succeeded`` events
posted to the real webhook view (Django's test client), in any order and any number of
times (a card payment's completed event is paid; an async one's is unpaid until the
async success), and ``refund.created`` events for credited top-ups (what the wallet can
give, the rest owed on the receivable wallet). Each Checkout Session is credited
exactly once, on its first paid event.

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
from django.utils import timezone
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from billing import ledger
from billing.invariants import check_ledger
from billing.models import BillingAccount, Transfer, Wallet
from billing.pricing import Price, Usage, cost_micros
from billing.promo import PromoError, promo_expire_due, promo_grant
from billing.services import price_publish, reservations_void_expired, wallet_credit
from tests.billing import stripe_payloads as sp
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
class Checkout:
    id: str
    cents: int
    payment_intent: str
    async_payment: bool  # a bank debit: completed is unpaid, async_payment_succeeded pays


@dataclass
class Lot:
    """A promo grant as the model sees it (FIFO by expiry, then by grant order)."""

    order: int
    amount: int
    expires_at: dt.datetime
    expired: int = 0
    closed: bool = False


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
    checkouts = Bundle("checkouts")
    deliveries = Bundle("deliveries")

    def __init__(self):
        super().__init__()
        self.now = timezone.now()
        self.status: dict[int, str] = {}  # transfer id → pending/posted/voided, as the model says
        self.credited: dict[str, int] = {}  # checkout session id → micro-units credited
        self.topups: dict[str, list[int]] = {}  # payment intent → [credited, refunded so far]
        self.lots: list[Lot] = []
        self.owed = 0  # on the receivable wallet

    @initialize(credit=st.integers(0, 200_000), credit_limit=st.sampled_from([0, 0, 50_000]))
    def open_wallet(self, credit, credit_limit):
        tenant = make_tenant(f"prop{next(_names)}-{os.getpid()}", credit=credit)
        self.account = BillingAccount.objects.get(organization=tenant.organization)
        self.account.stripe_customer_id = sp.new_id("cus")
        self.account.save(update_fields=["stripe_customer_id"])
        self.wallet = tenant.wallet
        self.project = tenant.project
        self.usage_wallet = Wallet.objects.get(account_id=self.wallet.account_id, kind=Wallet.Kind.USAGE)
        self.receivable = Wallet.objects.get(account_id=self.wallet.account_id, kind=Wallet.Kind.RECEIVABLE)
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

    @rule(amount=st.integers(1, 80_000), minutes=st.integers(1, 120))
    def promo_grant(self, amount, minutes):
        expires_at = self.now + dt.timedelta(minutes=minutes)
        grant = functools.partial(promo_grant, account=self.account, amount=amount, expires_at=expires_at,
                                  reference=f"promo-{next(_names)}", now=self.now)
        if self.balance < 0:
            # A wallet in overage owes first: promo credit there would exceed the balance
            # (wallet_promo_within_balance), so the grant is refused and nothing moves.
            with pytest.raises(PromoError, match="overage"):
                grant()
            return
        grant()
        self.balance += amount
        self.promo += amount
        self.lots.append(Lot(len(self.lots), amount, expires_at))

    @rule()
    def promo_expiry(self):
        promo_expire_due(now=self.now)
        # The model of the rule: due lots in (expiry, grant) order give back what they still
        # hold by FIFO, but never more than balance - reserved (no debt, holds stay).
        open_lots = sorted((lot for lot in self.lots if not lot.closed), key=lambda lot: (lot.expires_at, lot.order))
        for index, lot in enumerate(open_lots):
            if lot.expires_at > self.now:
                break
            later = sum(other.amount - other.expired for other in open_lots[index + 1:])
            rest = max(0, min(self.promo - later, lot.amount - lot.expired))
            take = min(rest, max(0, self.balance - self.reserved))
            self.balance -= take
            self.promo -= take
            lot.expired += take
            lot.closed = take == rest

    @rule(amount=st.integers(1, 100_000))
    def paid_grant(self, amount):
        reference = f"grant-{next(_names)}"
        first = wallet_credit(wallet=self.wallet, amount=amount, reference=reference)
        again = wallet_credit(wallet=self.wallet, amount=amount, reference=reference)  # a retried credit
        assert again.id == first.id
        self.balance += amount

    # --- money from Stripe, through the webhook view -------------------------------------------------

    def _post(self, event: dict) -> dict:
        response = sp.post(event)
        assert response.status_code == 200, response.content
        return event

    def _session(self, checkout: Checkout, *, paid: bool) -> dict:
        amount = checkout.cents * 10_000
        return {
            "id": checkout.id, "object": "checkout.session", "mode": "payment", "status": "complete",
            "payment_status": "paid" if paid else "unpaid", "amount_total": checkout.cents,
            "amount_subtotal": checkout.cents, "currency": "usd", "customer": self.account.stripe_customer_id,
            "metadata": {"purpose": "topup", "account_id": str(self.account.id), "amount_micros": str(amount)},
            "payment_intent": checkout.payment_intent, "livemode": False,
        }

    def _paid(self, checkout: Checkout) -> None:
        """The model of a paid event: the first one credits, any later one changes nothing."""
        if checkout.id not in self.credited:
            self.credited[checkout.id] = checkout.cents * 10_000
            self.topups[checkout.payment_intent] = [checkout.cents * 10_000, 0]
            self.balance += checkout.cents * 10_000

    @rule(target=checkouts, cents=st.integers(500, 50_000), async_payment=st.booleans())
    def checkout_opened(self, cents, async_payment):
        return Checkout(sp.new_id("cs"), cents, sp.new_id("pi"), async_payment)

    @rule(target=deliveries, checkout=checkouts)
    def checkout_completed(self, checkout):
        event = self._post(sp.event("checkout.session.completed",
                                    self._session(checkout, paid=not checkout.async_payment)))
        if not checkout.async_payment:
            self._paid(checkout)
        return event

    @rule(target=deliveries, checkout=checkouts)
    def async_payment_succeeded(self, checkout):
        if not checkout.async_payment:
            return multiple()
        event = self._post(sp.event("checkout.session.async_payment_succeeded", self._session(checkout, paid=True)))
        self._paid(checkout)  # whether or not completed came first
        return event

    @rule(delivery=deliveries)
    def same_event_again(self, delivery):
        answer = sp.post(delivery).json()
        assert answer["duplicate"] is True  # stored once; its effect is not applied again

    @precondition(lambda self: any(credited > refunded for credited, refunded in self.topups.values()))
    @rule(target=deliveries, data=st.data())
    def refunded(self, data):
        refundable = sorted(pi for pi, (credited, refunded) in self.topups.items() if credited > refunded)
        pi = data.draw(st.sampled_from(refundable))
        credited, refunded = self.topups[pi]
        cents = data.draw(st.integers(1, (credited - refunded) // 10_000))
        amount = cents * 10_000
        w = Wallet.objects.get(id=self.wallet.id)
        recoverable = max(0, min(self.balance - self.promo, self.balance + self.credit_limit - self.reserved))
        assert (w.balance, w.promo, w.reserved) == (self.balance, self.promo, self.reserved)
        event = self._post(sp.event("refund.created", sp.refund(pi, cents)))
        take = min(amount, recoverable)
        self.balance -= take
        self.owed += amount - take
        self.topups[pi][1] += amount
        return event

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
        assert Wallet.objects.get(id=self.receivable.id).balance == -self.owed

    @invariant()
    def each_checkout_credited_once(self):
        if not hasattr(self, "wallet"):
            return
        credited = dict(
            Transfer.objects.filter(kind=Transfer.Kind.TOPUP, credit_wallet_id=self.wallet.id)
            .values_list("reference", "amount")
        )
        assert credited == {f"cs:{session}": amount for session, amount in self.credited.items()}


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


@pytest.fixture(autouse=True)
def _webhook_secret(settings):
    settings.STRIPE_WEBHOOK_SECRETS = [sp.SECRET]


# Passing takes ~25 s; a failure's shrinking may take minutes, and should finish to print its steps.
@pytest.mark.timeout(600)
def test_random_ledger_schedules_keep_every_invariant(ledger_price):
    _run(ledger_price, PROFILE)


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_ledger_long_schedules(ledger_price):
    _run(ledger_price, "ledger-long")
