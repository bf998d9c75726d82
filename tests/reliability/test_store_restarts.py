"""Redis and PostgreSQL restarted under load: paid requests fail closed (503) while a store is down,
no reservation is lost, and the platform recovers by itself (its processes are never restarted).

Each test runs its own store (tests/reliability/conftest.py) and its own two server processes
pointed at it; the shared servers are never touched."""
from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import httpx
import pytest
from asgiref.sync import sync_to_async

from billing.invariants import check_ledger
from billing.models import Transfer
from gateway.models import RequestRecord
from tests.conftest import SIM_MODEL, start_server
from tests.reliability.conftest import wait_until

CHAT = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "long answer please"}], "max_tokens": 8}
LONG_STREAM = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "long answer please"}],
               "max_tokens": 60, "stream": True, "stream_options": {"include_usage": True}}
LOADERS = 6


class Load:
    """Clients sending paid requests to both processes until told to stop; every outcome kept."""

    def __init__(self, servers, tenant):
        self.servers, self.tenant = servers, tenant
        self.results: list[tuple[float, int, str, str, float]] = []  # (at, status, error code, request id, latency)
        self.running = True

    async def _loop(self, client: httpx.AsyncClient, n: int) -> None:
        i = n
        while self.running:
            server = self.servers[i % len(self.servers)]
            i += 1
            started = time.monotonic()
            try:
                r = await client.post(f"{server.api}/chat/completions", headers=self.tenant.auth(), json=CHAT)
            except httpx.HTTPError as exc:  # a hung or dropped request is a failure of the test
                self.results.append((started, 0, type(exc).__name__, "", time.monotonic() - started))
                continue
            code = r.json()["error"]["code"] if r.status_code != 200 else ""
            self.results.append((started, r.status_code, code, r.headers.get("x-request-id", ""),
                                 time.monotonic() - started))
            await asyncio.sleep(0.02)

    async def run(self):
        async with httpx.AsyncClient(timeout=30) as client:
            await asyncio.gather(*(self._loop(client, n) for n in range(LOADERS)))

    def between(self, start: float, end: float) -> list:
        return [r for r in self.results if start <= r[0] < end]


async def long_stream(server, tenant) -> tuple[list[str], str]:
    async with httpx.AsyncClient(timeout=60) as client:
        async with client.stream("POST", f"{server.api}/chat/completions", headers=tenant.auth(),
                                 json=LONG_STREAM) as r:
            assert r.status_code == 200
            return [line async for line in r.aiter_lines() if line.startswith("data: ")], r.headers["x-request-id"]


def money_checks(load: Load, stream_request_id: str) -> dict:
    """Every 200 was charged once, every refusal nothing; no reservation is left open."""
    answered = {r[3] for r in load.results if r[1] == 200} | {stream_request_id}
    usage = Transfer.objects.filter(kind="usage")
    wait_until(lambda: not usage.filter(status="pending").exists(), timeout=15, message="no open reservation")
    posted = dict(usage.filter(status="posted").values_list("request_id", "amount"))
    assert set(posted) == answered, (len(posted), len(answered))
    records = dict(RequestRecord.objects.exclude(transfer_id=None).values_list("request_id", "cost"))
    assert {rid: records.get(rid) for rid in posted} == posted
    refused = {r[3] for r in load.results if r[1] == 503}
    assert not usage.filter(request_id__in=refused).exclude(status="voided").exists()
    assert check_ledger() == []
    return {"charged": len(posted), "micro": sum(posted.values())}


def summarize(load: Load, down_at: float, up_at: float) -> dict:
    during = load.between(down_at, up_at)
    after = load.between(up_at, float("inf"))
    first_ok = next((r for r in after if r[1] == 200), None)
    return {
        "statuses": Counter(r[1] for r in load.results),
        "codes": Counter(r[2] for r in load.results if r[1] != 200),
        "during": Counter(r[1] for r in during),
        "worst_503_ms": max((r[4] for r in load.results if r[1] == 503), default=0) * 1000,
        "recovered_s": (first_ok[0] + first_ok[4] - up_at) if first_ok else None,
    }


async def outage(alice, env: dict, *, stop, start, after_seconds: float):
    """Two server processes on ``env`` under load, with a long stream open: ``stop`` the store for 4 s,
    ``start`` it again, keep the load on ``after_seconds`` more. Both processes must live through it (same
    pids, never restarted). Returns (load, down_at, up_at, the stream's lines, its request id)."""
    servers = [await asyncio.to_thread(start_server, **env) for _ in range(2)]
    pids = [server.process.proc.pid for server in servers]
    try:
        load = Load(servers, alice)
        loader = asyncio.ensure_future(load.run())
        await asyncio.sleep(2)
        stream = asyncio.ensure_future(long_stream(servers[0], alice))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(stop)
        down_at = time.monotonic()
        await asyncio.sleep(4)
        await asyncio.to_thread(start)
        up_at = time.monotonic()
        await asyncio.sleep(after_seconds)
        load.running = False
        await loader
        lines, stream_id = await stream
    finally:
        for server in servers:
            alive = server.process.proc.poll() is None
            server.process.stop()
            assert alive, "".join(server.process.output[-40:])  # never restarted, never crashed
    assert [server.process.proc.pid for server in servers] == pids
    return load, down_at, up_at, lines, stream_id


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
async def test_redis_restarted_under_load(transactional_db, alice, sim_node, sim, private_redis):
    sim.configure(tokens_per_s=40)  # the long stream spans the outage
    load, down_at, up_at, lines, stream_id = await outage(
        alice, {"REDIS_URL": private_redis.url},
        stop=private_redis.stop,  # SIGKILL: every key (rate limits, stream mirrors, liveness) is gone
        start=private_redis.start,  # empty, on the same port
        after_seconds=4,
    )

    s = summarize(load, down_at, up_at)
    assert set(s["statuses"]) <= {200, 503}, s  # no 500, no hung or dropped request
    assert set(s["codes"]) <= {"service_unavailable"}, s
    assert s["during"][503] >= 5 and s["statuses"][200] >= 20, s
    assert s["recovered_s"] is not None and s["recovered_s"] < 3, s
    assert load.between(up_at + 3, float("inf")) and all(r[1] == 200 for r in load.between(up_at + 3, float("inf")))
    # The stream that was open through the outage ran to its end for its client and was billed.
    assert lines[-1] == "data: [DONE]" and json.loads(lines[-2][6:])["usage"]["completion_tokens"] == 60
    money = await sync_to_async(money_checks)(load, stream_id)
    print(f"\nRedis SIGKILLed for 4 s under load ({LOADERS} clients, 2 processes): {dict(s['statuses'])} "
          f"(during the outage {dict(s['during'])}), every refusal 503 service_unavailable, slowest "
          f"{s['worst_503_ms']:.0f} ms; first 200 {s['recovered_s']:.2f} s after Redis was back, no restart; "
          f"{money['charged']} answers charged once ({money['micro']} micro-units), every refusal uncharged, "
          f"no reservation open; the stream open across the outage finished and was billed")


def private_money_checks(pg, load: Load, stream_request_id: str) -> dict:
    """money_checks, read from the private database with SQL (the ORM here uses the shared one)."""
    wait_until(lambda: not pg.query("SELECT 1 FROM billing_transfer WHERE kind = 'usage' AND status = 'pending'"),
               timeout=20, message="no open reservation")  # deferred settlements retry in the background
    answered = {r[3] for r in load.results if r[1] == 200} | {stream_request_id}
    posted = dict(pg.query("SELECT request_id, amount FROM billing_transfer WHERE kind = 'usage' AND status = 'posted'"))
    assert set(posted) == answered, (len(posted), len(answered), answered - set(posted), set(posted) - answered)
    records = dict(pg.query("SELECT request_id, cost FROM gateway_requestrecord WHERE transfer_id IS NOT NULL"))
    assert {rid: records.get(rid) for rid in posted} == posted
    refused = [r[3] for r in load.results if r[1] == 503]
    assert not pg.query("SELECT 1 FROM billing_transfer WHERE request_id = ANY(%s) AND status <> 'voided'", refused)
    # The ledger sums: balances are their entries, reserved their pending transfers, all entries zero.
    assert pg.query("""
        SELECT w.id FROM billing_wallet w
        WHERE w.balance <> COALESCE((SELECT SUM(amount) FROM billing_entry e WHERE e.wallet_id = w.id), 0)
           OR w.reserved <> COALESCE((SELECT SUM(pending_amount) FROM billing_transfer t
                                      WHERE t.debit_wallet_id = w.id AND t.status = 'pending'), 0)
           OR (w.kind = 'customer' AND w.balance + w.credit_limit - w.reserved < 0)""") == []
    assert pg.query("SELECT COALESCE(SUM(amount), 0) FROM billing_entry") == [(0,)]
    assert pg.query("""SELECT t.id FROM billing_transfer t LEFT JOIN billing_entry e ON e.transfer_id = t.id
                       WHERE t.status = 'posted' GROUP BY t.id HAVING COUNT(e.id) <> 2 OR SUM(e.amount) <> 0""") == []
    return {"charged": len(posted), "micro": sum(posted.values())}


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
async def test_postgres_restarted_under_load(transactional_db, alice, sim_node, sim, private_postgres):
    from django.db import connection

    sim.configure(tokens_per_s=40)
    s = connection.settings_dict
    source = f"postgres://{s['USER'] or 'postgres'}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"
    await asyncio.to_thread(private_postgres.copy_from, source)  # alice, her keys, the node, its price
    load, down_at, up_at, lines, stream_id = await outage(
        alice, {"DATABASE_URL": private_postgres.url},
        stop=lambda: private_postgres.stop("immediate"),  # every connection cut, as in a crash
        start=private_postgres.start,  # crash recovery from the WAL
        after_seconds=6,
    )

    summary = summarize(load, down_at, up_at)
    assert set(summary["statuses"]) <= {200, 503}, summary
    assert set(summary["codes"]) <= {"service_unavailable"}, summary
    assert summary["during"][503] >= 5 and summary["statuses"][200] >= 20, summary
    assert summary["recovered_s"] is not None and summary["recovered_s"] < 6, summary
    tail = load.between(up_at + 6 - 1.5, float("inf"))
    assert tail and all(r[1] == 200 for r in tail), Counter(r[1] for r in tail)
    # The stream open through the outage ran to its end; its settlement waited for the database.
    assert lines[-1] == "data: [DONE]" and json.loads(lines[-2][6:])["usage"]["completion_tokens"] == 60
    money = await asyncio.to_thread(private_money_checks, private_postgres, load, stream_id)
    print(f"\nPostgreSQL stopped (immediate) for 4 s under load ({LOADERS} clients, 2 processes): "
          f"{dict(summary['statuses'])} (during the outage {dict(summary['during'])}), every refusal 503 "
          f"service_unavailable, slowest {summary['worst_503_ms']:.0f} ms; first 200 {summary['recovered_s']:.2f} s "
          f"after PostgreSQL was back, no restart; {money['charged']} answers charged once "
          f"({money['micro']} micro-units), every refusal uncharged, no reservation open")
