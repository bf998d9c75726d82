"""Settlement spends promo credit first and books overage on a credit line, in the hot-path SQL."""
import asyncio
import datetime as dt

import pytest
from asgiref.sync import sync_to_async
from django.db import IntegrityError
from django.utils import timezone

from billing import ledger
from billing.invariants import check_ledger
from billing.models import MeterOutbox, Transfer, Wallet
from billing.pricing import Usage
from billing.services import wallet_credit
from tests.billing.test_ledger import price, reserve  # noqa: F401  (fixture)


def read(tenant):
    w = Wallet.objects.get(id=tenant.wallet.id)
    return w.balance, w.promo, w.reserved


def grant_promo(tenant, amount, reference="promo-1", days=30):
    return wallet_credit(
        wallet=tenant.wallet, amount=amount, kind=Transfer.Kind.PROMO, reference=reference,
        expires_at=timezone.now() + dt.timedelta(days=days),
    )


async def settle(reservation, input_tokens, output_tokens=0):
    return await ledger.settle(
        reservation=reservation, usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens), now=timezone.now()
    )


async def test_promo_is_spent_before_paid_credit(alice, price):  # noqa: F811
    await sync_to_async(grant_promo)(alice, 300)
    assert await sync_to_async(read)(alice) == (1_000_300, 300, 0)
    first = await reserve(alice, price, 5_000, request_id="req_a")
    await settle(first, 200)  # 200 micro-units, all promo
    assert await sync_to_async(read)(alice) == (1_000_100, 100, 0)
    second = await reserve(alice, price, 5_000, request_id="req_b")
    await settle(second, 250)  # 100 promo + 150 paid
    assert await sync_to_async(read)(alice) == (999_850, 0, 0)
    parts = await sync_to_async(lambda: list(Transfer.objects.filter(kind="usage").order_by("id").values_list("amount", "promo_amount", "overage_amount")))()
    assert parts == [(200, 200, 0), (250, 100, 0)]
    assert await sync_to_async(check_ledger)() == []


async def test_concurrent_settlements_split_promo_exactly(alice, price):  # noqa: F811
    await sync_to_async(grant_promo)(alice, 1_000)
    reservations = [await reserve(alice, price, 5_000, request_id=f"req_{i}") for i in range(8)]
    await asyncio.gather(*(settle(r, 300) for r in reservations))
    promo_parts = await sync_to_async(lambda: sum(Transfer.objects.filter(kind="usage").values_list("promo_amount", flat=True)))()
    assert promo_parts == 1_000
    assert await sync_to_async(read)(alice) == (1_001_000 - 8 * 300, 0, 0)
    assert await sync_to_async(check_ledger)() == []


async def test_a_credit_line_lets_usage_go_below_zero_as_metered_overage(alice, price):  # noqa: F811
    def drain_and_open_line():
        Wallet.objects.filter(id=alice.wallet.id).update(credit_limit=2_000)
    await sync_to_async(drain_and_open_line)()
    # Spend the whole prepaid million, then 1,500 more on the line.
    big = await reserve(alice, price, 1_000_000, request_id="req_big")
    await settle(big, 999_000)
    over = await reserve(alice, price, 2_500, request_id="req_over")  # 1,000 paid left + 1,500 of the line
    await settle(over, 2_500)
    assert await sync_to_async(read)(alice) == (-1_500, 0, 0)
    rows = await sync_to_async(lambda: list(MeterOutbox.objects.values_list("identifier", "value", "transfer_id")))()
    assert rows == [(f"ovr_{over.transfer_id}", 1_500, over.transfer_id)]
    # The line is a hard limit: 500 left, a hold of 501 fails.
    with pytest.raises(ledger.InsufficientBalance):
        await reserve(alice, price, 501, request_id="req_too_much")
    again = await reserve(alice, price, 500, request_id="req_last")
    await settle(again, 100)
    assert await sync_to_async(lambda: sorted(MeterOutbox.objects.values_list("value", flat=True)))() == [100, 1_500]
    assert await sync_to_async(check_ledger)() == []


def test_promo_credit_must_expire_and_paid_credit_must_not(alice):
    with pytest.raises(ValueError):
        wallet_credit(wallet=alice.wallet, amount=5, kind=Transfer.Kind.PROMO, reference="p")
    with pytest.raises(ValueError):
        wallet_credit(wallet=alice.wallet, amount=5, kind=Transfer.Kind.TOPUP, reference="t",
                      expires_at=timezone.now())


def test_the_database_refuses_promo_above_the_balance(alice):
    with pytest.raises(IntegrityError):
        Wallet.objects.filter(id=alice.wallet.id).update(promo=2_000_000)
