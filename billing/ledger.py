"""Reserve and settle on the request hot path: one round trip each.

Each operation is a short list of statements run in one transaction by
``config.asyncdb`` (one round trip on PostgreSQL). Callers may add their own
statements to the same transaction (the gateway adds its idempotency and
request records) through ``before``/``after``.

Guards live in the database, not in Python:
* reserve: ``reserved = reserved + x`` breaks the ``wallet_available_nonnegative``
  check when the wallet cannot cover x, which aborts the whole transaction;
* settle/void: only the statement that flips ``status`` from ``pending`` writes
  its random ``claim``; every later statement is conditioned on that claim, so
  a second settle (a retry, a race with the sweeper) changes nothing.
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
_RESERVE_TRANSFER = """
INSERT INTO billing_transfer (
    kind, status, debit_wallet_id, credit_wallet_id, pending_amount, amount, currency, price_id,
    request_id, project_id, model, input_tokens, cached_input_tokens, output_tokens, description,
    created_at, timeout_at)
SELECT 'usage', 'pending', %(wallet_id)s, %(usage_wallet_id)s, %(amount)s, 0, currency, %(price_id)s,
    %(request_id)s, %(project_id)s, %(model)s, 0, 0, 0, '', %(now)s, %(timeout_at)s
FROM billing_wallet WHERE id = %(wallet_id)s AND status = 'active'
RETURNING id
"""


def _reserve_statements(**params) -> list[Stmt]:
    return [Stmt(_RESERVE_WALLET, params), Stmt(_RESERVE_TRANSFER, params, fetch=True)]


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
) -> Reservation:
    stmts = _reserve_statements(
        wallet_id=wallet_id,
        usage_wallet_id=usage_wallet_id,
        amount=amount,
        price_id=price.id,
        request_id=request_id,
        project_id=project_id,
        model=price.model,
        now=now,
        timeout_at=timeout_at,
    )
    try:
        results = await asyncdb.run(*before, *stmts)
    except ConstraintViolation as exc:
        if exc.name == "wallet_available_nonnegative":
            raise InsufficientBalance() from None
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
    f"""
    UPDATE billing_wallet SET balance = balance - %(amount)s, reserved = reserved - ({_CLAIMED.format(col="pending_amount")})
    WHERE id = ({_CLAIMED.format(col="debit_wallet_id")})
    """,
    f"""
    UPDATE billing_wallet SET balance = balance + %(amount)s
    WHERE id = ({_CLAIMED.format(col="credit_wallet_id")})
    """,
    """
    INSERT INTO billing_entry (transfer_id, wallet_id, amount, created_at)
    SELECT id, debit_wallet_id, -amount, finished_at FROM billing_transfer WHERE id = %(id)s AND claim = %(claim)s
    UNION ALL
    SELECT id, credit_wallet_id, amount, finished_at FROM billing_transfer WHERE id = %(id)s AND claim = %(claim)s
    """,
]

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


def settle_statements(*, transfer_id: int, amount: int, usage: Usage, now: dt.datetime) -> list[Stmt]:
    params = {
        "id": transfer_id,
        "amount": amount,
        "input_tokens": usage.input_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "output_tokens": usage.output_tokens,
        "now": now,
        "claim": secrets.token_hex(16),
    }
    return [Stmt(sql, params) for sql in _SETTLE]


def void_statements(*, transfer_id: int, now: dt.datetime) -> list[Stmt]:
    params = {"id": transfer_id, "now": now, "claim": secrets.token_hex(16)}
    return [Stmt(sql, params) for sql in _VOID]


def settlement_amount(reservation: Reservation, usage: Usage) -> tuple[int, bool]:
    cost = cost_micros(reservation.price, usage)
    if cost > reservation.amount:
        return reservation.amount, True
    return cost, False


async def settle(
    *, reservation: Reservation, usage: Usage, now: dt.datetime, after: Sequence[Stmt] = ()
) -> Settlement:
    """Post the exact cost (never more than reserved) and release the rest."""
    amount, capped = settlement_amount(reservation, usage)
    results = await asyncdb.run(
        *settle_statements(transfer_id=reservation.transfer_id, amount=amount, usage=usage, now=now), *after
    )
    return Settlement(amount=amount, applied=results[0].rowcount == 1, capped=capped)


async def void(*, reservation: Reservation, now: dt.datetime, after: Sequence[Stmt] = ()) -> bool:
    """Release a reservation that produced nothing billable."""
    results = await asyncdb.run(*void_statements(transfer_id=reservation.transfer_id, now=now), *after)
    return results[0].rowcount == 1
