"""Promotional and included credit: grants, FIFO expiry to the micro-unit, the summary the console shows.

Spending goes through the hot-path ledger SQL (and once through the gateway with the node
simulator); expiry through billing.promo with an explicit ``now`` instead of waiting.
"""
import datetime as dt
import io
import threading

import httpx
import pytest
from django.core.management import CommandError, call_command
from django.db import close_old_connections
from django.utils import timezone

from billing import ledger, promo
from billing.invariants import check_ledger
from billing.models import CreditLot, Transfer, Wallet
from billing.pricing import Usage
from billing.services import wallet_credit
from billing.tasks import promo_expire_due
from tests.billing.test_ledger import price, reserve  # noqa: F401  (fixture)
from tests.conftest import SIM_MODEL, make_tenant, run_async, sim_cost

# A fixed instant a year ahead: tests pass it as ``now``; the real clock never reaches it.
T0 = (timezone.now() + dt.timedelta(days=365)).replace(microsecond=0)


def account(tenant):
    return tenant.organization.billing_account


def grant(tenant, amount, *, days, reference, now=T0):
    return promo.promo_grant(account=account(tenant), amount=amount, expires_at=now + dt.timedelta(days=days),
                             reference=reference, description=f"promo {reference}", now=now)


def spend(tenant, price, amount, request_id):  # noqa: F811
    """Reserve and settle ``amount`` micro-units (1 per input token) through the ledger SQL."""
    async def run():
        reservation = await reserve(tenant, price, amount, request_id=request_id)
        return await ledger.settle(reservation=reservation, usage=Usage(input_tokens=amount, output_tokens=0), now=timezone.now())

    return run_async(run())


def wallet_state(tenant):
    w = Wallet.objects.get(id=tenant.wallet.id)
    return {"balance": w.balance, "promo": w.promo, "reserved": w.reserved}


def lots(tenant):
    summary = promo.credit_summary(account=account(tenant), now=T0)
    return [(lot["description"], lot["remaining"]) for lot in summary["promo_lots"]]


def expiries():
    return list(Transfer.objects.filter(kind=Transfer.Kind.PROMO_EXPIRY).order_by("id").values_list("reference", "amount"))


def test_two_lots_expire_first_in_first_out_after_partial_spending(alice, price):  # noqa: F811
    # Granted in the other order than they expire: FIFO follows the expiry.
    late = grant(alice, 500, days=20, reference="late")
    early = grant(alice, 300, days=10, reference="early")
    assert lots(alice) == [("promo early", 300), ("promo late", 500)]
    spend(alice, price, 100, "req_1")  # taken from the lot that expires first
    assert wallet_state(alice) == {"balance": 1_000_700, "promo": 700, "reserved": 0}
    assert lots(alice) == [("promo early", 200), ("promo late", 500)]

    assert promo.promo_expire_due(now=T0 + dt.timedelta(days=9)) == {"lots": 0, "expired": 0}
    assert promo.promo_expire_due(now=T0 + dt.timedelta(days=10)) == {"lots": 1, "expired": 200}
    assert wallet_state(alice) == {"balance": 1_000_500, "promo": 500, "reserved": 0}
    assert lots(alice) == [("promo late", 500)]
    spend(alice, price, 150, "req_2")
    assert lots(alice) == [("promo late", 350)]
    assert promo.promo_expire_due(now=T0 + dt.timedelta(days=21)) == {"lots": 1, "expired": 350}

    assert wallet_state(alice) == {"balance": 1_000_000, "promo": 0, "reserved": 0}  # the paid million is untouched
    early_lot, late_lot = CreditLot.objects.get(transfer=early), CreditLot.objects.get(transfer=late)
    assert expiries() == [(f"exp:{early_lot.id}", 200), (f"exp:{late_lot.id}", 350)]
    assert (early_lot.expired_amount, late_lot.expired_amount) == (200, 350)
    assert early_lot.closed_at == T0 + dt.timedelta(days=10) and late_lot.closed_at is not None
    parts = list(Transfer.objects.filter(kind="usage").order_by("id").values_list("amount", "promo_amount"))
    assert parts == [(100, 100), (150, 150)]
    assert check_ledger() == []
    # Nothing left to do: running again changes nothing.
    assert promo.promo_expire_due(now=T0 + dt.timedelta(days=40)) == {"lots": 0, "expired": 0}
    assert len(expiries()) == 2


def test_spending_beyond_the_first_lot_leaves_it_nothing_to_expire(alice, price):  # noqa: F811
    grant(alice, 300, days=10, reference="a")
    grant(alice, 500, days=20, reference="b")
    spend(alice, price, 450, "req_1")  # 300 from a, 150 from b
    assert lots(alice) == [("promo a", 0), ("promo b", 350)]
    assert promo.promo_expire_due(now=T0 + dt.timedelta(days=15)) == {"lots": 1, "expired": 0}
    assert expiries() == []
    assert promo.promo_expire_due(now=T0 + dt.timedelta(days=25)) == {"lots": 1, "expired": 350}
    assert wallet_state(alice) == {"balance": 1_000_000 - 450 + 800 - 350, "promo": 0, "reserved": 0}
    assert check_ledger() == []


@pytest.fixture
def dora(transactional_db):
    """A tenant with no paid credit, so promo is all it has."""
    return make_tenant("dora", credit=0)


def test_expiry_never_takes_money_held_by_a_request_in_flight(dora, price):  # noqa: F811
    lot_transfer = grant(dora, 1_000, days=1, reference="welcome")
    held = run_async(reserve(dora, price, 800, request_id="req_in_flight"))
    due = T0 + dt.timedelta(days=2)
    assert promo.promo_expire_due(now=due) == {"lots": 0, "expired": 200}  # all but what is held
    assert wallet_state(dora) == {"balance": 800, "promo": 800, "reserved": 800}
    lot = CreditLot.objects.get(transfer=lot_transfer)
    assert (lot.expired_amount, lot.closed_at) == (200, None)
    assert check_ledger() == []

    # The request settles 300 from promo; the next run takes the 500 left and closes the lot.
    run_async(ledger.settle(reservation=held, usage=Usage(input_tokens=300, output_tokens=0), now=timezone.now()))
    assert wallet_state(dora) == {"balance": 500, "promo": 500, "reserved": 0}
    assert promo.promo_expire_due(now=due) == {"lots": 1, "expired": 500}
    lot.refresh_from_db()
    assert (lot.expired_amount, lot.closed_at) == (700, due)
    assert expiries() == [(f"exp:{lot.id}", 200), (f"exp:{lot.id}@200", 500)]
    assert wallet_state(dora) == {"balance": 0, "promo": 0, "reserved": 0}
    assert check_ledger() == []


def test_expiry_with_paid_credit_and_a_hold_keeps_the_wallet_whole(dora, price):  # noqa: F811
    wallet_credit(wallet=dora.wallet, amount=100, kind=Transfer.Kind.TOPUP, reference="paid")
    grant(dora, 1_000, days=1, reference="welcome")
    run_async(reserve(dora, price, 1_050, request_id="req_big"))
    # balance 1,100 - held 1,050: only 50 can go now, the rest waits for the hold.
    assert promo.promo_expire_due(now=T0 + dt.timedelta(days=2)) == {"lots": 0, "expired": 50}
    assert wallet_state(dora) == {"balance": 1_050, "promo": 950, "reserved": 1_050}
    assert check_ledger() == []


def test_two_expiry_runs_racing_expire_once(alice, price):  # noqa: F811
    grant(alice, 300, days=1, reference="a")
    grant(alice, 200, days=2, reference="b")
    barrier = threading.Barrier(2)
    results, errors = [], []

    def run():
        try:
            barrier.wait()
            results.append(promo.promo_expire_due(now=T0 + dt.timedelta(days=3)))
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(r["expired"] for r in results) == [0, 500]
    assert sorted(amount for _, amount in expiries()) == [200, 300]
    assert wallet_state(alice) == {"balance": 1_000_000, "promo": 0, "reserved": 0}
    assert check_ledger() == []


def test_included_subscription_credit_expires_the_same_way(alice, price):  # noqa: F811
    included = wallet_credit(wallet=alice.wallet, amount=2_000, kind=Transfer.Kind.INCLUDED, reference="in_period_1",
                             description="Included credit", expires_at=T0 + dt.timedelta(days=30))
    grant(alice, 500, days=10, reference="promo")
    spend(alice, price, 700, "req_1")  # 500 promo (expires first) + 200 included
    summary = promo.credit_summary(account=account(alice), now=T0)
    assert [(lot["kind"], lot["remaining"]) for lot in summary["promo_lots"]] == [("promo", 0), ("included", 1_800)]
    assert promo_expire_due.apply(kwargs={}).get() == {"lots": 0, "expired": 0}  # the task, now: nothing due yet
    assert promo.promo_expire_due(now=T0 + dt.timedelta(days=31)) == {"lots": 2, "expired": 1_800}
    lot = CreditLot.objects.get(transfer=included)
    assert expiries() == [(f"exp:{lot.id}", 1_800)]
    assert check_ledger() == []


def test_credit_summary_shows_paid_and_promo_apart(alice, price):  # noqa: F811
    grant(alice, 250, days=5, reference="a")
    wallet = Wallet.objects.get(id=alice.wallet.id)
    Wallet.objects.filter(id=wallet.id).update(credit_limit=5_000)
    run_async(reserve(alice, price, 1_000, request_id="req_hold"))
    summary = promo.credit_summary(account=account(alice), now=T0)
    assert {k: summary[k] for k in ("balance", "paid", "promo", "credit_limit", "reserved", "available")} == {
        "balance": 1_000_250, "paid": 1_000_000, "promo": 250, "credit_limit": 5_000, "reserved": 1_000,
        "available": 1_000_250 + 5_000 - 1_000,
    }
    (lot,) = summary["promo_lots"]
    assert (lot["amount"], lot["remaining"], lot["expires_at"], lot["expired"]) == (250, 250, T0 + dt.timedelta(days=5), False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"amount": 0}, "positive"),
        ({"amount": -5}, "positive"),
        ({"amount": 1.5}, "positive"),
        ({"expires_at": T0 - dt.timedelta(seconds=1)}, "future"),
        ({"expires_at": dt.datetime(2030, 4, 1)}, "timezone-aware"),
        ({"reference": "  "}, "reference"),
    ],
)
def test_bad_grants_are_refused_and_change_nothing(alice, kwargs, message):
    args = {"account": account(alice), "amount": 100, "expires_at": T0 + dt.timedelta(days=1), "reference": "r",
            "now": T0, **kwargs}
    with pytest.raises(promo.PromoError, match=message):
        promo.promo_grant(**args)
    assert wallet_state(alice)["promo"] == 0 and not CreditLot.objects.exists()


def test_a_grant_happens_once_per_reference(alice, charlie):
    first = grant(alice, 100, days=3, reference="launch")
    assert grant(alice, 100, days=9, reference="launch").id == first.id  # a re-run: the first grant stands
    with pytest.raises(promo.PromoError, match="already used"):
        grant(alice, 999, days=3, reference="launch")
    with pytest.raises(promo.PromoError, match="already used"):
        grant(charlie, 100, days=3, reference="launch")
    assert wallet_state(alice)["promo"] == 100 and wallet_state(charlie)["promo"] == 0
    assert CreditLot.objects.count() == 1


def test_grant_promo_command(alice):
    org = alice.organization.public_id
    out = io.StringIO()
    call_command("grant_promo", "--org", org, "--amount-usd", "10", "--days", "30", "--reference", "X", stdout=out)
    assert "granted 10.00 USD" in out.getvalue() and "already" not in out.getvalue()
    again = io.StringIO()
    call_command("grant_promo", "--org", org, "--amount-usd", "10", "--days", "30", "--reference", "X", stdout=again)
    assert "already granted" in again.getvalue()
    summary = promo.credit_summary(account=account(alice))
    assert summary["promo"] == 10_000_000 and summary["paid"] == 1_000_000
    (lot,) = summary["promo_lots"]
    assert dt.timedelta(days=29, hours=23) < lot["expires_at"] - timezone.now() <= dt.timedelta(days=30)
    for bad in (["--org", "org_nope"], ["--org", org, "--amount-usd", "0.001"], ["--org", org, "--days", "0"]):
        args = {"--org": org, "--amount-usd": "1", "--days": "1", "--reference": "Y"}
        args.update(dict(zip(bad[::2], bad[1::2], strict=True)))
        with pytest.raises(CommandError):
            call_command("grant_promo", *[x for pair in args.items() for x in pair], stdout=io.StringIO())
    assert wallet_state(alice)["promo"] == 10_000_000
    assert check_ledger() == []


def test_the_gateway_spends_promo_before_paid_credit(server, alice, sim_node):
    grant(alice, 40, days=30, reference="gateway", now=timezone.now())
    body = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "What is the answer?"}], "max_tokens": 20}
    response = httpx.post(f"{server.api}/chat/completions", headers=alice.auth(), json=body, timeout=30)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    cost = sim_cost(usage["prompt_tokens"], usage["completion_tokens"])
    assert cost > 40  # so the request used all the promo and some paid credit
    (transfer,) = Transfer.objects.filter(kind="usage")
    assert (transfer.amount, transfer.promo_amount) == (cost, 40)
    summary = promo.credit_summary(account=account(alice))
    assert (summary["promo"], summary["paid"]) == (0, 1_000_000 - (cost - 40))
    assert [lot["remaining"] for lot in summary["promo_lots"]] == [0]
    assert check_ledger() == []


def test_the_billing_beat_tasks_are_scheduled_and_registered():
    from django.conf import settings

    from config.celery import app

    app.loader.import_default_modules()
    scheduled = {entry["task"]: entry["schedule"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert scheduled["billing.tasks.auto_recharge_scan"] == 30.0
    assert scheduled["billing.tasks.promo_expire_due"] == 300.0
    assert {"billing.tasks.auto_recharge_scan", "billing.tasks.promo_expire_due",
            "billing.tasks.auto_recharge_charge"} <= set(app.tasks)
