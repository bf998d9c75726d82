"""Reserve/settle/void against the real database, through the hot-path SQL."""
import asyncio
import datetime as dt

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from billing import ledger
from billing.invariants import check_ledger
from billing.models import Entry, Transfer, Wallet
from billing.pricing import Price, Usage
from billing.services import price_publish, reservations_void_expired
from billing.tasks import void_expired_reservations
from tests.conftest import run_async


@pytest.fixture
def price(transactional_db) -> Price:
    p = price_publish(model="ledger-model", input_per_mtok=1_000_000, output_per_mtok=2_000_000)
    return Price(p.id, p.model, p.version, p.currency, p.input_per_mtok, p.cached_input_per_mtok, p.output_per_mtok,
                 p.effective_from)


def wallets(tenant):
    customer = tenant.wallet
    usage = Wallet.objects.get(account_id=customer.account_id, kind=Wallet.Kind.USAGE)
    return customer, usage


async def reserve(tenant, price, amount, *, request_id="req_test", timeout=dt.timedelta(minutes=15)):
    customer, usage = await sync_to_async(wallets)(tenant)
    now = timezone.now()
    return await ledger.reserve(
        wallet_id=customer.id, usage_wallet_id=usage.id, amount=amount, price=price, request_id=request_id,
        project_id=tenant.project.id, now=now, timeout_at=now + timeout,
    )


async def state(tenant):
    def read():
        w = tenant.wallet
        return w.balance, w.reserved, check_ledger()

    return await sync_to_async(read)()


async def test_settle_posts_exact_cost_and_releases_the_rest(alice, price):
    reservation = await reserve(alice, price, 5_000)
    assert await state(alice) == (1_000_000, 5_000, [])
    settlement = await ledger.settle(reservation=reservation, usage=Usage(input_tokens=100, output_tokens=40), now=timezone.now())
    assert settlement.amount == 100 + 80 and settlement.applied and not settlement.capped
    assert await state(alice) == (1_000_000 - 180, 0, [])
    entries = await sync_to_async(lambda: sorted(Entry.objects.filter(transfer_id=reservation.transfer_id).values_list("amount", flat=True)))()
    assert entries == [-180, 180]


async def test_second_settlement_changes_nothing(alice, price):
    reservation = await reserve(alice, price, 5_000)
    usage = Usage(input_tokens=10, output_tokens=10)
    first, second = await asyncio.gather(
        ledger.settle(reservation=reservation, usage=usage, now=timezone.now()),
        ledger.settle(reservation=reservation, usage=usage, now=timezone.now()),
    )
    assert sorted([first.applied, second.applied]) == [False, True]
    assert await state(alice) == (1_000_000 - 30, 0, [])


async def test_usage_above_reservation_is_capped_at_the_reservation(alice, price):
    reservation = await reserve(alice, price, 50)
    settlement = await ledger.settle(reservation=reservation, usage=Usage(input_tokens=100, output_tokens=100), now=timezone.now())
    assert settlement.capped and settlement.amount == 50
    assert await state(alice) == (1_000_000 - 50, 0, [])


async def test_void_releases_and_a_late_settle_is_a_no_op(alice, price):
    reservation = await reserve(alice, price, 5_000)
    assert await ledger.void(reservation=reservation, now=timezone.now())
    late = await ledger.settle(reservation=reservation, usage=Usage(input_tokens=1, output_tokens=1), now=timezone.now())
    assert not late.applied
    assert await state(alice) == (1_000_000, 0, [])
    status = await sync_to_async(lambda: Transfer.objects.get(id=reservation.transfer_id).status)()
    assert status == Transfer.Status.VOIDED


async def test_insufficient_balance_reserves_nothing(alice, price):
    with pytest.raises(ledger.InsufficientBalance):
        await reserve(alice, price, 1_000_001)
    assert await state(alice) == (1_000_000, 0, [])
    assert await sync_to_async(Transfer.objects.filter(kind="usage").count)() == 0


async def test_suspended_wallet_refuses_reservations(alice, price):
    await sync_to_async(lambda: Wallet.objects.filter(id=alice.wallet.id).update(status=Wallet.Status.SUSPENDED))()
    with pytest.raises(ledger.WalletUnavailable):
        await reserve(alice, price, 10)
    assert await state(alice) == (1_000_000, 0, [])


@pytest.mark.postgres
async def test_concurrent_reservations_never_overspend(alice, price):
    """50 concurrent reservations of 100_000 on a wallet of 1_000_000: exactly 10 win."""
    results = await asyncio.gather(
        *(reserve(alice, price, 100_000, request_id=f"req_{i}") for i in range(50)), return_exceptions=True
    )
    won = [r for r in results if isinstance(r, ledger.Reservation)]
    lost = [r for r in results if isinstance(r, ledger.InsufficientBalance)]
    assert len(won) == 10 and len(lost) == 40
    assert await state(alice) == (1_000_000, 1_000_000, [])
    await asyncio.gather(
        *(ledger.settle(reservation=r, usage=Usage(input_tokens=1000, output_tokens=i), now=timezone.now())
          for i, r in enumerate(won))
    )
    spent = sum(1000 + 2 * i for i in range(10))
    assert await state(alice) == (1_000_000 - spent, 0, [])


def test_sweeper_voids_only_expired_reservations(alice, price):
    expired = run_async(reserve(alice, price, 300, request_id="old", timeout=dt.timedelta(seconds=-1)))
    live = run_async(reserve(alice, price, 200, request_id="new"))
    assert void_expired_reservations.delay().get() == 1
    assert Transfer.objects.get(id=expired.transfer_id).status == Transfer.Status.VOIDED
    assert Transfer.objects.get(id=live.transfer_id).status == Transfer.Status.PENDING
    assert alice.wallet.reserved == 200 and check_ledger() == []
    assert reservations_void_expired() == 0
