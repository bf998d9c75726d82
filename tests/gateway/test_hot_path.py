"""The hot path's cost: one Redis call to admit, one database round trip to reserve
and one to settle, and no Django (sync) ORM query at all once caches are warm."""
import httpx
import pytest
from asgiref.sync import sync_to_async

from config import asyncdb
from gateway import limits
from tests.conftest import SIM_MODEL

CHAT = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture
def counters(monkeypatch):
    counts = {"db_round_trips": 0, "limit_calls": 0, "django_queries": 0}
    real_run, real_take = asyncdb.run, limits._take

    async def run(*stmts):
        counts["db_round_trips"] += 1
        return await real_run(*stmts)

    async def take(*args):
        counts["limit_calls"] += 1
        return await real_take(*args)

    monkeypatch.setattr(asyncdb, "run", run)
    monkeypatch.setattr(limits, "_take", take)

    from django.db.backends import utils

    real_execute = utils.CursorWrapper.execute

    def execute(self, *args, **kwargs):
        counts["django_queries"] += 1
        return real_execute(self, *args, **kwargs)

    monkeypatch.setattr(utils.CursorWrapper, "execute", execute)
    return counts


def limit_and_cap_everything(tenant) -> None:
    from console import services
    from console.models import ApiKey
    from tests.conftest import cache_settle

    key = ApiKey.objects.get(project=tenant.project, kind="secret")
    services.api_key_limits_set(key=key, rpm_limit=100, tpm_limit=100_000)
    services.api_key_spend_cap_set(key=key, monthly_spend_cap=500_000)
    services.project_update(project=tenant.project, monthly_spend_cap=900_000)
    cache_settle()


@pytest.mark.postgres
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("capped", [False, True], ids=["plain", "key-limits-and-caps"])
async def test_warm_request_costs_two_round_trips_and_no_orm(alice, sim_node, counters, stream, capped):
    from config.asgi import application
    from gateway import background

    if capped:  # per-key buckets join the one Lua call; spend counters join the two batches
        await sync_to_async(limit_and_cap_everything)(alice)

    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        warm = await client.post("/v1/chat/completions", headers=alice.auth(), json=CHAT)
        assert warm.status_code == 200
        await background.drain()
        for key in counters:
            counters[key] = 0
        response = await client.post("/v1/chat/completions", headers=alice.auth(), json={**CHAT, "stream": stream})
        assert response.status_code == 200 and (b"[DONE]" in response.content if stream else response.json()["usage"])
        await background.drain()
    admitted_and_refunded = 2  # admission on the path; the unused-token refund after the response
    assert counters == {"db_round_trips": 2, "limit_calls": admitted_and_refunded, "django_queries": 0}
    balance = await sync_to_async(lambda: alice.wallet.balance)()
    assert balance < 1_000_000
    if capped:
        from billing.models import SpendCounter

        spent = await sync_to_async(lambda: sorted(SpendCounter.objects.values_list("scope", "spent", "reserved")))()
        assert spent == [("key", 1_000_000 - balance, 0), ("project", 1_000_000 - balance, 0)]


async def test_a_bug_after_reserving_releases_the_hold_at_once(alice, sim_node, monkeypatch):
    from billing.models import Transfer
    from config.asgi import application
    from gateway import pipeline

    async def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(pipeline, "_complete", broken)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://gateway") as client:
        response = await client.post("/v1/chat/completions", headers=alice.auth(), json=CHAT)
    assert response.status_code == 500 and response.json()["error"]["code"] == "internal_error"
    state = await sync_to_async(lambda: (list(Transfer.objects.filter(kind="usage").values_list("status", flat=True)),
                                         alice.wallet.reserved))()
    assert state == (["voided"], 0)
