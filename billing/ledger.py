"""Reserve and settle on the request hot path: one round trip each.

Each operation is a short list of statements run in one transaction by
``config.asyncdb`` (one round trip on PostgreSQL). Callers may add their own
statements to the same transaction (the gateway adds its idempotency and
request records) through ``before``/``after``.

Guards live in the database, not in Python:
* reserve: ``reserved = reserved + x`` breaks the ``wallet_available_nonnegative``
  check when the wallet cannot cover x, which aborts the whole transaction; for a
  project or key with a monthly spend cap the same transaction adds x to its
  ``SpendCounter``, where crossing the cap breaks ``spend_within_cap``;
* settle/void: only the statement that flips ``status`` from ``pending`` writes
  its random ``claim``; every later statement is conditioned on that claim, so
  a second settle (a retry, a race with the sweeper) changes nothing.

Lock order, everywhere: the transfer (settle, void; a reservation inserts a new
one last), the customer wallet, the project's spend counter, the key's.
``services.spend_cap_set`` follows it: the month's pending transfers, the wallet,
then the counter.
"""
from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from config import asyncdb
from config.asyncdb import ConstraintViolation, Stmt

from .pricing import Price, Usage, cost_micros


class InsufficientBalance(Exception):
    pass


class WalletUnavailable(Exception):
    """The wallet is suspended (or gone): nothing may be reserved on it."""


class SpendCapReached(Exception):
    """The reservation would take a project's or key's month over its spend cap."""

    def __init__(self, *, scope: str, cap: int, room: int):
        super().__init__(f"{scope} spend cap {cap} reached ({room} left)")
        self.scope = scope  # "project" or "key"
        self.cap = cap
        self.room = room  # what could still be reserved this month (>= 0)


def spend_period(when: dt.datetime) -> str:
    """The calendar month (UTC) a reservation at ``when`` counts against."""
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m")


@dataclass(frozen=True, slots=True)
class Reservation:
    transfer_id: int
    amount: int
    wallet_id: int
    price: Price


@dataclass(frozen=True, slots=True)
class Settlement:
    amount: int
    applied: bool  # False if the reservation was already settled or voided
    capped: bool  # the node reported more than was reserved; billed the reservation


_RESERVE_WALLET = """
UPDATE billing_wallet SET reserved = reserved + %(amount)s
WHERE id = %(wallet_id)s AND status = 'active'
"""
# Only for a capped scope. The cap is written when the month's row is created;
# afterwards only spend_cap_set changes it (a process's cached cap may be stale).
_RESERVE_COUNTER = """
INSERT INTO billing_spendcounter (scope, scope_id, period, spent, reserved, excess, cap)
VALUES (%(scope)s, %(scope_id)s, %(period)s, 0, %(amount)s, 0, %(cap)s)
ON CONFLICT (scope, scope_id, period) DO UPDATE SET reserved = billing_spendcounter.reserved + excluded.reserved
"""
_RESERVE_TRANSFER = """
INSERT INTO billing_transfer (
    kind, status, debit_wallet_id, credit_wallet_id, pending_amount, amount, currency, price_id,
    request_id, project_id, api_key_id, model, input_tokens, cached_input_tokens, output_tokens, description,
    created_at, timeout_at, spend_period, counted_project, counted_key)
SELECT 'usage', 'pending', %(wallet_id)s, %(usage_wallet_id)s, %(amount)s, 0, currency, %(price_id)s,
    %(request_id)s, %(project_id)s, %(api_key_id)s, %(model)s, 0, 0, 0, '', %(now)s, %(timeout_at)s,
    %(period)s, %(counted_project)s, %(counted_key)s
FROM billing_wallet WHERE id = %(wallet_id)s AND status = 'active'
RETURNING id
"""
_COUNTER_ROOM = """
SELECT scope, cap + excess - spent - reserved FROM billing_spendcounter
WHERE period = %(period)s AND cap IS NOT NULL
  AND ((scope = 'project' AND scope_id = %(project_id)s) OR (scope = 'key' AND scope_id = %(api_key_id)s))
"""


def _reserve_statements(*, caps: dict[str, tuple[int, int]], **params) -> list[Stmt]:
    """``caps``: scope -> (scope id, cap), project first (the lock order)."""
    counters = [
        Stmt(_RESERVE_COUNTER, {"scope": scope, "scope_id": scope_id, "period": params["period"],
                                "amount": params["amount"], "cap": cap})
        for scope, (scope_id, cap) in caps.items()
    ]
    return [Stmt(_RESERVE_WALLET, params), *counters, Stmt(_RESERVE_TRANSFER, params, fetch=True)]


async def _cap_reached(*, amount: int, period: str, project_id: int, api_key_id: int | None,
                       caps: dict[str, tuple[int, int]]) -> SpendCapReached:
    """Which cap refused the reservation, for the message (a read on the refusal path only)."""
    try:
        (result,) = await asyncdb.run(Stmt(
            _COUNTER_ROOM, {"period": period, "project_id": project_id, "api_key_id": api_key_id}, fetch=True
        ))
        rooms = {scope: max(0, room) for scope, room in result.rows}
    except asyncdb.DatabaseUnavailable:
        rooms = {}
    for scope, (_, cap) in caps.items():
        room = rooms.get(scope, cap)  # no row yet: this request would have opened the month
        if amount > room:
            return SpendCapReached(scope=scope, cap=cap, room=room)
    scope, (_, cap) = next(iter(caps.items()))  # raced with a settlement: name the first
    return SpendCapReached(scope=scope, cap=cap, room=rooms.get(scope, 0))


async def reserve(
    *,
    wallet_id: int,
    usage_wallet_id: int,
    amount: int,
    price: Price,
    request_id: str,
    project_id: int,
    now: dt.datetime,
    timeout_at: dt.datetime,
    before: Sequence[Stmt] = (),
    api_key_id: int | None = None,
    project_spend_cap: int | None = None,
    key_spend_cap: int | None = None,
) -> Reservation:
    """Hold ``amount`` on the wallet, and on the month's spend counter of each
    capped scope, or nothing at all (one transaction, one round trip)."""
    period = spend_period(now)
    caps: dict[str, tuple[int, int]] = {}
    if project_spend_cap is not None:
        caps["project"] = (project_id, project_spend_cap)
    if key_spend_cap is not None and api_key_id is not None:
        caps["key"] = (api_key_id, key_spend_cap)
    stmts = _reserve_statements(
        caps=caps,
        wallet_id=wallet_id,
        usage_wallet_id=usage_wallet_id,
        amount=amount,
        price_id=price.id,
        request_id=request_id,
        project_id=project_id,
        api_key_id=api_key_id,
        model=price.model,
        now=now,
        timeout_at=timeout_at,
        period=period,
        counted_project="project" in caps,
        counted_key="key" in caps,
    )
    try:
        results = await asyncdb.run(*before, *stmts)
    except ConstraintViolation as exc:
        if exc.name == "wallet_available_nonnegative":
            raise InsufficientBalance() from None
        if exc.name == "spend_within_cap":
            raise await _cap_reached(
                amount=amount, period=period, project_id=project_id, api_key_id=api_key_id, caps=caps
            ) from None
        raise
    rows = results[-1].rows
    if not rows:
        raise WalletUnavailable()
    return Reservation(transfer_id=rows[0][0], amount=amount, wallet_id=wallet_id, price=price)


_CLAIMED = "SELECT {col} FROM billing_transfer WHERE id = %(id)s AND claim = %(claim)s"

_SETTLE = [
    """
    UPDATE billing_transfer SET status = 'posted', amount = %(amount)s, input_tokens = %(input_tokens)s,
        cached_input_tokens = %(cached_input_tokens)s, output_tokens = %(output_tokens)s,
        finished_at = %(now)s, claim = %(claim)s
    WHERE id = %(id)s AND status = 'pending'
    """,
    # Promo credit is spent first: promo_last keeps what this settlement took
    # from it for the next statement (we hold the row lock until commit).
    f"""
    UPDATE billing_wallet SET balance = balance - %(amount)s, reserved = reserved - ({_CLAIMED.format(col="pending_amount")}),
        promo_last = CASE WHEN promo < %(amount)s THEN promo ELSE %(amount)s END,
        promo = promo - CASE WHEN promo < %(amount)s THEN promo ELSE %(amount)s END
    WHERE id = ({_CLAIMED.format(col="debit_wallet_id")})
    """,
    f"""
    UPDATE billing_wallet SET balance = balance + %(amount)s
    WHERE id = ({_CLAIMED.format(col="credit_wallet_id")})
    """,
    # Record the promo part and the overage part (what went below a zero
    # balance, on a subscription's credit line). Most settlements have neither
    # and write nothing here.
    """
    UPDATE billing_transfer SET promo_amount = w.promo_last,
        overage_amount = CASE WHEN w.balance >= 0 THEN 0
                              WHEN -w.balance < billing_transfer.amount THEN -w.balance
                              ELSE billing_transfer.amount END
    FROM billing_wallet w
    WHERE billing_transfer.id = %(id)s AND billing_transfer.claim = %(claim)s
      AND w.id = billing_transfer.debit_wallet_id AND (w.promo_last > 0 OR w.balance < 0)
    """,
    # Overage goes to Stripe as a meter event, from this outbox row written with
    # the settlement (billing.metering sends it; "ovr_<id>" is Stripe's dedupe key).
    """
    INSERT INTO billing_meteroutbox (identifier, account_id, transfer_id, value, status, attempts, last_error, created_at)
    SELECT 'ovr_' || t.id, w.account_id, t.id, t.overage_amount, 'pending', 0, '', t.finished_at
    FROM billing_transfer t JOIN billing_wallet w ON w.id = t.debit_wallet_id
    WHERE t.id = %(id)s AND t.claim = %(claim)s AND t.overage_amount > 0
    """,
    """
    INSERT INTO billing_entry (transfer_id, wallet_id, amount, created_at)
    SELECT id, debit_wallet_id, -amount, finished_at FROM billing_transfer WHERE id = %(id)s AND claim = %(claim)s
    UNION ALL
    SELECT id, credit_wallet_id, amount, finished_at FROM billing_transfer WHERE id = %(id)s AND claim = %(claim)s
    """,
]

# Settle and void end by updating the spend counters of the transfer's month, if
# its project or key has one: spent grows by the posted amount (even for a
# reservation made before the cap was known, so spent stays the month's real
# spend) and reserved drops by what this transfer held there. excess is reset
# to what stands over the cap, so finishing work never breaks the cap check
# and never leaves room for a new hold above it. No row: nothing to do.
_COUNTER_SETTLE = """
UPDATE billing_spendcounter SET
    spent = spent + t.amount,
    reserved = reserved - t.held,
    excess = CASE WHEN cap IS NOT NULL AND spent + t.amount + reserved - t.held > cap
                  THEN spent + t.amount + reserved - t.held - cap ELSE 0 END
FROM (SELECT {id_col} AS owner_id, spend_period, amount,
             CASE WHEN {counted_col} THEN pending_amount ELSE 0 END AS held
      FROM billing_transfer WHERE id = %(id)s AND claim = %(claim)s) AS t
WHERE billing_spendcounter.scope = '{scope}' AND billing_spendcounter.scope_id = t.owner_id
  AND billing_spendcounter.period = t.spend_period AND (t.amount > 0 OR t.held > 0)
"""
_COUNTERS = [
    _COUNTER_SETTLE.format(scope="project", id_col="project_id", counted_col="counted_project"),
    _COUNTER_SETTLE.format(scope="key", id_col="api_key_id", counted_col="counted_key"),
]

_VOID_EXPIRED = " AND timeout_at < %(now)s"
_VOID = [
    """
    UPDATE billing_transfer SET status = 'voided', finished_at = %(now)s, claim = %(claim)s
    WHERE id = %(id)s AND status = 'pending'
    """,
    f"""
    UPDATE billing_wallet SET reserved = reserved - ({_CLAIMED.format(col="pending_amount")})
    WHERE id = ({_CLAIMED.format(col="debit_wallet_id")})
    """,
]
# A voided transfer's amount is 0: there the counter statements only release its hold.


def settle_statements(
    *, transfer_id: int, amount: int, usage: Usage, now: dt.datetime, counters: bool = True
) -> list[Stmt]:
    params = {
        "id": transfer_id,
        "amount": amount,
        "input_tokens": usage.input_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "output_tokens": usage.output_tokens,
        "now": now,
        "claim": secrets.token_hex(16),
    }
    return [Stmt(sql, params) for sql in (*_SETTLE, *(_COUNTERS if counters else ()))]


def void_statements(
    *, transfer_id: int, now: dt.datetime, counters: bool = True, expired_only: bool = False
) -> list[Stmt]:
    """``expired_only``: void only if the hold's timeout has passed (the sweeper)."""
    params = {"id": transfer_id, "now": now, "claim": secrets.token_hex(16)}
    first = _VOID[0].rstrip() + _VOID_EXPIRED if expired_only else _VOID[0]
    return [Stmt(sql, params) for sql in (first, *_VOID[1:], *(_COUNTERS if counters else ()))]


def extend_statement(*, transfer_id: int, until: dt.datetime) -> Stmt:
    """Move a pending reservation's sweeper timeout to ``until`` (rowcount 0: no longer pending)."""
    return Stmt(
        "UPDATE billing_transfer SET timeout_at = %(until)s WHERE id = %(id)s AND status = 'pending'",
        {"id": transfer_id, "until": until},
    )


def expire_statement(*, request_id: str, project_id: int, now: dt.datetime) -> Stmt:
    """Let the sweeper void a request's pending hold at its next run: the process that would have
    settled it is gone (a stream whose producer died). Rowcount 0: nothing pending."""
    return Stmt(
        "UPDATE billing_transfer SET timeout_at = LEAST(timeout_at, %(now)s) WHERE request_id = %(request_id)s "
        "AND project_id = %(project_id)s AND kind = 'usage' AND status = 'pending'",
        {"request_id": request_id, "project_id": project_id, "now": now},
    )


def fixed_amount(reservation: Reservation, amount: int) -> tuple[int, bool]:
    """A cost computed by the caller, capped at the reservation."""
    if amount < 0:
        raise ValueError("a settlement amount cannot be negative")
    return (reservation.amount, True) if amount > reservation.amount else (amount, False)


def settlement_amount(reservation: Reservation, usage: Usage) -> tuple[int, bool]:
    cost = cost_micros(reservation.price, usage)
    if cost > reservation.amount:
        return reservation.amount, True
    return cost, False


async def settle(
    *, reservation: Reservation, usage: Usage, now: dt.datetime, after: Sequence[Stmt] = (), counters: bool = True,
    amount: int | None = None,
) -> Settlement:
    """Post the exact cost (never more than reserved) and release the rest.

    ``counters=False`` skips the spend-counter statements, for a caller that knows
    no counter can exist for this transfer's project or key: planning those joins
    costs PostgreSQL more than the rest of the settlement (measured: ~1.5 ms a request).
    ``amount`` is the cost when it is not priced by tokens (images: per image).
    """
    amount, capped = settlement_amount(reservation, usage) if amount is None else fixed_amount(reservation, amount)
    stmts = settle_statements(transfer_id=reservation.transfer_id, amount=amount, usage=usage, now=now, counters=counters)
    results = await asyncdb.run(*stmts, *after)
    return Settlement(amount=amount, applied=results[0].rowcount == 1, capped=capped)


async def void(
    *, reservation: Reservation, now: dt.datetime, after: Sequence[Stmt] = (), counters: bool = True
) -> bool:
    """Release a reservation that produced nothing billable."""
    stmts = void_statements(transfer_id=reservation.transfer_id, now=now, counters=counters)
    results = await asyncdb.run(*stmts, *after)
    return results[0].rowcount == 1
