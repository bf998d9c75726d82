"""Monthly spend counters through the hot-path SQL: the reservation's own
transaction refuses to cross a cap; settle, void and the sweeper release it;
setting a cap counts the month so far."""
import asyncio
import datetime as dt

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from billing import ledger
from billing.invariants import check_ledger
from billing.models import SpendCounter, Transfer
from billing.pricing import Usage
from billing.services import reservations_void_expired, spend_cap_set
from console.models import ApiKey
from tests.billing.test_ledger import price, wallets  # noqa: F401 (fixture)
from tests.conftest import run_async

USAGE_80 = Usage(input_tokens=40, output_tokens=20)  # 40 + 2 * 20 = 80 micro-units at the test price


def secret_key(tenant) -> ApiKey:
    return ApiKey.objects.filter(project=tenant.project, kind="secret").earliest("created_at")


async def reserve(tenant, price, amount, *, project_cap=None, key_cap=None, request_id="req_cap",
                  timeout=dt.timedelta(minutes=15)):
    def ids():
        customer, usage = wallets(tenant)
        return customer.id, usage.id, secret_key(tenant).id

    wallet_id, usage_wallet_id, key_id = await sync_to_async(ids)()
    now = timezone.now()
    return await ledger.reserve(
        wallet_id=wallet_id, usage_wallet_id=usage_wallet_id, amount=amount, price=price, request_id=request_id,
        project_id=tenant.project.id, now=now, timeout_at=now + timeout, api_key_id=key_id,
        project_spend_cap=project_cap, key_spend_cap=key_cap,
    )


def counter(scope, scope_id) -> tuple[int, int, int, int | None]:
    c = SpendCounter.objects.get(scope=scope, scope_id=scope_id, period=ledger.spend_period(timezone.now()))
    return c.spent, c.reserved, c.excess, c.cap


async def snapshot(tenant, scope="project"):
    def read():
        scope_id = tenant.project.id if scope == "project" else secret_key(tenant).id
        pending = Transfer.objects.filter(status=Transfer.Status.PENDING).count()
        return counter(scope, scope_id), tenant.wallet.reserved, pending, check_ledger()

    return await sync_to_async(read)()


@pytest.mark.parametrize("scope", ["project", "key"])
async def test_a_reservation_that_would_cross_the_cap_reserves_nothing(alice, price, scope):
    caps = {"project_cap": 300} if scope == "project" else {"key_cap": 300}
    first = await reserve(alice, price, 200, **caps)
    with pytest.raises(ledger.SpendCapReached) as refused:
        await reserve(alice, price, 101, request_id="req_cap_2", **caps)
    assert (refused.value.scope, refused.value.cap, refused.value.room) == (scope, 300, 100)
    assert await snapshot(alice, scope) == ((0, 200, 0, 300), 200, 1, [])
    await ledger.settle(reservation=first, usage=USAGE_80, now=timezone.now())
    assert await snapshot(alice, scope) == ((80, 0, 0, 300), 0, 0, [])
    await reserve(alice, price, 220, request_id="req_cap_3", **caps)  # exactly fills the cap
    assert (await snapshot(alice, scope))[0] == (80, 220, 0, 300)


async def test_the_key_cap_and_the_project_cap_both_apply(alice, price):
    await reserve(alice, price, 100, project_cap=1_000, key_cap=150)
    with pytest.raises(ledger.SpendCapReached) as by_key:
        await reserve(alice, price, 100, project_cap=1_000, key_cap=150, request_id="r2")
    assert by_key.value.scope == "key"

    def swap():
        spend_cap_set(project=alice.project, key=secret_key(alice), cap=1_000)
        spend_cap_set(project=alice.project, cap=150)

    await sync_to_async(swap)()
    with pytest.raises(ledger.SpendCapReached) as by_project:
        await reserve(alice, price, 100, project_cap=150, key_cap=1_000, request_id="r3")
    assert by_project.value.scope == "project"
    assert await snapshot(alice, "project") == ((0, 100, 0, 150), 100, 1, [])
    assert (await snapshot(alice, "key"))[0] == (0, 100, 0, 1_000)


async def test_void_and_the_sweeper_release_the_counter(alice, price):
    voided = await reserve(alice, price, 200, project_cap=1_000)
    await reserve(alice, price, 300, project_cap=1_000, key_cap=1_000, request_id="r2", timeout=dt.timedelta(seconds=1))
    assert await ledger.void(reservation=voided, now=timezone.now())
    assert (await snapshot(alice))[0] == (0, 300, 0, 1_000)
    swept = await sync_to_async(reservations_void_expired)(now=timezone.now() + dt.timedelta(minutes=1))
    assert swept == 1
    assert await snapshot(alice, "project") == ((0, 0, 0, 1_000), 0, 0, [])
    assert (await snapshot(alice, "key"))[0] == (0, 0, 0, 1_000)


@pytest.mark.postgres
async def test_concurrent_reservations_never_cross_the_cap(alice, price):
    # 20 holds of 100 race for a cap that fits 7 of them; the wallet could cover all.
    results = await asyncio.gather(
        *(reserve(alice, price, 100, project_cap=750, key_cap=10_000, request_id=f"r{i}") for i in range(20)),
        return_exceptions=True,
    )
    held = [r for r in results if isinstance(r, ledger.Reservation)]
    assert len(held) == 7 and all(isinstance(r, ledger.SpendCapReached) for r in results if r not in held)
    assert await snapshot(alice) == ((0, 700, 0, 750), 700, 7, [])
    await asyncio.gather(*(ledger.settle(reservation=r, usage=USAGE_80, now=timezone.now()) for r in held))
    assert await snapshot(alice) == ((560, 0, 0, 750), 0, 0, [])
    assert (await snapshot(alice, "key"))[0] == (560, 0, 0, 10_000)


async def test_setting_a_cap_counts_the_month_so_far_and_holds_pending_reservations(alice, price):
    done = await reserve(alice, price, 200)
    await ledger.settle(reservation=done, usage=USAGE_80, now=timezone.now())
    pending = await reserve(alice, price, 150, request_id="r2")  # reserved before there was a cap
    await sync_to_async(spend_cap_set)(project=alice.project, cap=300)
    assert await snapshot(alice) == ((80, 150, 0, 300), 150, 1, [])
    with pytest.raises(ledger.SpendCapReached):
        await reserve(alice, price, 71, project_cap=300, request_id="r3")
    await ledger.settle(reservation=pending, usage=USAGE_80, now=timezone.now())
    assert await snapshot(alice) == ((160, 0, 0, 300), 0, 0, [])


async def test_a_reservation_made_before_a_process_saw_the_cap_still_counts_as_spent(alice, price):
    await sync_to_async(spend_cap_set)(project=alice.project, cap=1_000)
    stale = await reserve(alice, price, 200)  # a process whose cached key record has no cap yet
    assert (await snapshot(alice))[0] == (0, 0, 0, 1_000)
    await ledger.settle(reservation=stale, usage=USAGE_80, now=timezone.now())
    assert await snapshot(alice) == ((80, 0, 0, 1_000), 0, 0, [])


async def test_a_cap_lowered_below_the_spend_lets_holds_finish_but_admits_nothing_new(alice, price):
    first = await reserve(alice, price, 200, project_cap=1_000)
    second = await reserve(alice, price, 200, project_cap=1_000, request_id="r2")
    await sync_to_async(spend_cap_set)(project=alice.project, cap=50)
    assert (await snapshot(alice))[0] == (0, 400, 350, 50)
    await ledger.settle(reservation=first, usage=USAGE_80, now=timezone.now())
    assert (await snapshot(alice))[0] == (80, 200, 230, 50)
    with pytest.raises(ledger.SpendCapReached) as refused:
        await reserve(alice, price, 1, project_cap=50, request_id="r3")
    assert refused.value.room == 0
    await ledger.void(reservation=second, now=timezone.now())
    assert await snapshot(alice) == ((80, 0, 30, 50), 0, 0, [])
    with pytest.raises(ledger.SpendCapReached):
        await reserve(alice, price, 1, project_cap=50, request_id="r4")
    # Raised again above the spend: the room is the difference.
    await sync_to_async(spend_cap_set)(project=alice.project, cap=100)
    assert (await snapshot(alice))[0] == (80, 0, 0, 100)
    await reserve(alice, price, 20, project_cap=100, request_id="r5")
    with pytest.raises(ledger.SpendCapReached):
        await reserve(alice, price, 1, project_cap=100, request_id="r6")


async def test_clearing_a_cap_stops_enforcing_it_but_keeps_counting(alice, price):
    await sync_to_async(spend_cap_set)(project=alice.project, cap=100)
    held = await reserve(alice, price, 100, project_cap=100)
    await sync_to_async(spend_cap_set)(project=alice.project, cap=None)
    assert (await snapshot(alice))[0] == (0, 100, 0, None)
    unlimited = await reserve(alice, price, 500, request_id="r2")
    for reservation in (held, unlimited):
        await ledger.settle(reservation=reservation, usage=USAGE_80, now=timezone.now())
    assert await snapshot(alice) == ((160, 0, 0, None), 0, 0, [])


@pytest.mark.postgres
def test_a_hold_taken_while_a_cap_is_being_set_stays_counted(alice, price, monkeypatch):
    """A process that already knew of a cap reserves between the service's two
    locks: the re-derived counter must still hold it, or its settlement would
    take reserved below zero."""
    from billing import services

    real_lock = services._lock_customer_wallet
    raced = {}

    def lock_after_a_reservation(**kwargs):
        raced["reservation"] = run_async(reserve(alice, price, 120, project_cap=1_000, request_id="r_race"))
        real_lock(**kwargs)

    spend_cap_set(project=alice.project, cap=1_000)
    monkeypatch.setattr(services, "_lock_customer_wallet", lock_after_a_reservation)
    spend_cap_set(project=alice.project, cap=900)
    assert counter("project", alice.project.id) == (0, 120, 0, 900)
    run_async(ledger.settle(reservation=raced["reservation"], usage=USAGE_80, now=timezone.now()))
    assert counter("project", alice.project.id) == (80, 0, 0, 900) and check_ledger() == []
