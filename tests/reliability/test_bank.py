"""The bank test: a seeded random mix of paid requests, top-ups and wallet-to-wallet transfers on a
few wallets, run concurrently against two server processes (real PostgreSQL and Redis), while a
reader checks every snapshot of the ledger. Money is never made or lost: every read sums, no
balance goes negative, an idempotent retry never charges twice, no reservation is left open."""
from __future__ import annotations

import asyncio
import datetime as dt
import random
import threading
import time
import uuid
from collections import Counter, defaultdict

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.db import IntegrityError, close_old_connections, connection, transaction
from django.db.models import Sum

from billing.invariants import ledger_problems
from billing.models import Entry, Transfer, Wallet
from billing.services import reservations_void_expired, transfer_post, wallet_credit
from console.services import project_update
from gateway.models import RequestRecord
from tests.conftest import SIM_MODEL, make_tenant, sim_cost

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

SEED = 8_2026
OPERATIONS = 300
CONCURRENCY = 16
CREDIT = 600  # a few dozen requests per wallet: some are refused (402), some transfers bounce
DAY = dt.timedelta(days=1)  # a few hundred requests' worth over three wallets: some are refused (402) on the way


def chat(n_tokens: int, *, stream: bool) -> dict:
    body = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "long answer please"}],
            "max_tokens": n_tokens, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


class Snapshots:
    """Reads the whole ledger in one REPEATABLE READ snapshot, over and over, from its own thread
    and connection, and keeps what each read found wrong."""

    def __init__(self, wallet_ids: list[int]):
        self.wallet_ids = wallet_ids
        self.reads = 0
        self.problems: list[str] = []
        self.lowest_available: dict[int, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def read_once(self) -> None:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            found = [p.detail for p in ledger_problems()]
            total = Entry.objects.aggregate(s=Sum("amount"))["s"] or 0
            if total != 0:  # double entry: all entries of all wallets sum to zero, to the micro-unit
                found.append(f"entries sum to {total}, not 0")
            for wallet in Wallet.objects.filter(id__in=self.wallet_ids):
                low = self.lowest_available.get(wallet.id, wallet.available)
                self.lowest_available[wallet.id] = min(low, wallet.available)
                if wallet.balance < 0 or wallet.available < 0:
                    found.append(f"wallet {wallet.id}: balance {wallet.balance}, available {wallet.available}")
        self.reads += 1
        self.problems += found

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                self.read_once()
                time.sleep(0.02)
        finally:
            connection.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)


async def test_bank_random_concurrent_money_movements_across_two_processes_always_sum(
    server, second_server_proc, sim_node, sim
):
    rng = random.Random(SEED)
    sim.configure(tokens_per_s=150)
    tenants = [await sync_to_async(make_tenant)(name, credit=CREDIT) for name in ("ann", "ben", "cat")]
    for tenant in tenants:  # a dropped stream is cancelled at once (no resume window), then billed
        await sync_to_async(project_update)(project=tenant.project, stream_resume_seconds=0)
    wallets = [await sync_to_async(lambda t=t: t.wallet)() for t in tenants]
    urls = [server.api, second_server_proc.api]

    outcome: Counter[str] = Counter()
    credited: dict[int, int] = defaultdict(int)  # wallet id -> net of top-ups and transfers that happened
    charged: dict[str, int] = {}  # request id -> what the client was told it used (complete answers)

    def top_up(wallet, amount, reference):
        try:
            wallet_credit(wallet=wallet, amount=amount, reference=reference)
        finally:
            close_old_connections()

    def move(source, target, amount, reference):
        try:
            transfer_post(kind=Transfer.Kind.GRANT, debit_wallet=source, credit_wallet=target, amount=amount,
                          reference=reference, description="bank test transfer")
            return True
        except IntegrityError:  # the source cannot cover it: refused by the wallet constraint
            return False
        finally:
            close_old_connections()

    async def op(client: httpx.AsyncClient, i: int, kind: str, tenant_i: int, r: random.Random) -> None:
        tenant = tenants[tenant_i]
        url = r.choice(urls)
        if kind == "topup":
            amount, reference = r.randint(50, 300), f"bank-topup-{i}"
            # The same top-up delivered twice at once (a retried webhook): credited once.
            await asyncio.gather(*(asyncio.to_thread(top_up, wallets[tenant_i], amount, reference) for _ in range(2)))
            credited[wallets[tenant_i].id] += amount
            outcome["topup"] += 1
        elif kind == "transfer":
            other = r.choice([j for j in range(len(tenants)) if j != tenant_i])
            amount = r.randint(50, 800)
            if await asyncio.to_thread(move, wallets[tenant_i], wallets[other], amount, f"bank-move-{i}"):
                credited[wallets[tenant_i].id] -= amount
                credited[wallets[other].id] += amount
                outcome["transfer"] += 1
            else:
                outcome["transfer refused"] += 1
        elif kind == "chat":
            response = await client.post(f"{url}/chat/completions", headers=tenant.auth(),
                                         json=chat(r.randint(1, 40), stream=False))
            if response.status_code == 200:
                usage = response.json()["usage"]
                charged[response.headers["x-request-id"]] = sim_cost(usage["prompt_tokens"], usage["completion_tokens"])
            outcome[f"chat {response.status_code}"] += 1
            assert response.status_code in (200, 402), response.text
        elif kind == "stream":
            async with client.stream("POST", f"{url}/chat/completions", headers=tenant.auth(),
                                     json=chat(r.randint(1, 40), stream=True)) as response:
                assert response.status_code in (200, 402), await response.aread()
                if response.status_code == 402:
                    outcome["stream 402"] += 1
                    return
                request_id = response.headers["x-request-id"]
                usage = None
                async for line in response.aiter_lines():
                    if line.startswith("data: {") and '"usage":{' in line:
                        usage = httpx.Response(200, content=line[6:]).json()["usage"]
            charged[request_id] = sim_cost(usage["prompt_tokens"], usage["completion_tokens"])
            outcome["stream 200"] += 1
        elif kind == "dropped":  # the client goes away after a few events
            keep = r.randint(1, 6)
            async with client.stream("POST", f"{url}/chat/completions", headers=tenant.auth(),
                                     json=chat(40, stream=True)) as response:
                if response.status_code == 402:
                    outcome["dropped 402"] += 1
                    return
                assert response.status_code == 200
                seen = 0
                async for line in response.aiter_lines():
                    seen += line.startswith("data: ")
                    if seen >= keep:
                        break
            outcome["dropped"] += 1
        elif kind == "idempotent":  # one Idempotency-Key sent 3 times at once, to both processes, retried on 409
            key = f"bank-{uuid.UUID(int=r.getrandbits(128))}"
            body = chat(r.randint(1, 30), stream=False)

            async def attempt(target: str) -> httpx.Response:
                for _ in range(200):
                    response = await client.post(f"{target}/chat/completions", json=body,
                                                 headers={**tenant.auth(), "Idempotency-Key": key})
                    if response.status_code != 409:
                        return response
                    await asyncio.sleep(0.02)
                raise AssertionError(f"{key} stayed in progress")

            responses = await asyncio.gather(*(attempt(urls[j % 2]) for j in range(3)))
            codes = {resp.status_code for resp in responses}
            assert codes <= {200, 402}, [(x.status_code, x.text) for x in responses]
            # A 402 stores nothing (nothing ran): a retry after a top-up may then run. Every 200 is one answer.
            answered = [resp for resp in responses if resp.status_code == 200]
            if answered:
                assert len({resp.json()["id"] for resp in answered}) == 1  # one answer, replayed
                ran = [resp for resp in answered if resp.headers.get("idempotent-replayed") != "true"]
                assert len(ran) == 1, [resp.headers for resp in answered]  # the others are replays of it
                usage = ran[0].json()["usage"]
                charged[ran[0].headers["x-request-id"]] = sim_cost(usage["prompt_tokens"], usage["completion_tokens"])
            codes = {200} if answered else codes
            outcome[f"idempotent {codes.pop()}"] += 1

    kinds = ["chat"] * 5 + ["stream"] * 4 + ["dropped"] * 2 + ["idempotent"] * 2 + ["topup"] * 2 + ["transfer"] * 2
    plan = [(i, rng.choice(kinds), rng.randrange(len(tenants)), random.Random(rng.getrandbits(64)))
            for i in range(OPERATIONS)]
    gate = asyncio.Semaphore(CONCURRENCY)

    async def bounded(client, *args):
        async with gate:
            await op(client, *args)

    started = time.monotonic()
    reader = Snapshots([w.id for w in wallets])
    with reader:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
            await asyncio.gather(*(bounded(client, *step) for step in plan))

        def settled() -> bool:
            return not Transfer.objects.filter(kind="usage", status="pending").exists()

        deadline = time.monotonic() + 20  # a dropped stream settles once its node request is cancelled
        while not await sync_to_async(settled)():
            assert time.monotonic() < deadline, "reservations still open 20 s after the last request"
            await asyncio.sleep(0.1)
    elapsed = time.monotonic() - started

    def final_state():
        reader.read_once()  # one more, after everything
        swept = reservations_void_expired(now=Transfer.objects.latest("created_at").created_at + DAY)
        usage = Transfer.objects.filter(kind="usage")
        posted = usage.filter(status="posted")
        per_wallet = dict(posted.values_list("debit_wallet_id").annotate(s=Sum("amount")))
        records = dict(RequestRecord.objects.exclude(transfer_id=None).values_list("transfer_id", "cost"))
        return {
            "swept": swept,
            "pending": usage.filter(status="pending").count(),
            "balances": {w.id: Wallet.objects.get(id=w.id).balance for w in wallets},
            "reserved": sorted(Wallet.objects.filter(id__in=[w.id for w in wallets]).values_list("reserved", flat=True)),
            "per_wallet": per_wallet,
            "posted": {t.request_id: t.amount for t in posted},
            "transfer_ids": dict(posted.values_list("id", "amount")),
            "records": records,
            "by_request": Counter(usage.values_list("request_id", flat=True)),
        }

    state = await sync_to_async(final_state)()
    print(f"\nbank test: {OPERATIONS} operations ({dict(sorted(outcome.items()))}) in {elapsed:.1f} s; "
          f"{reader.reads} consistent snapshot reads; posted usage {sum(state['posted'].values())} micro-units in "
          f"{len(state['posted'])} settlements; lowest available seen "
          f"{min(reader.lowest_available.values())}")

    assert reader.problems == [] and reader.reads >= 10
    assert min(reader.lowest_available.values()) >= 0
    # Nothing left for the sweeper: every reservation was settled or voided by its request.
    assert (state["swept"], state["pending"], state["reserved"]) == (0, 0, [0, 0, 0])
    # Each wallet ends at its credit, plus what the test moved in, less its posted usage.
    for wallet in wallets:
        expected = CREDIT + credited[wallet.id] - state["per_wallet"].get(wallet.id, 0)
        assert state["balances"][wallet.id] == expected, (wallet.id, state["balances"][wallet.id], expected)
    # Usage records = settled charges: each posted transfer has its record with the same cost.
    assert {tid: state["records"].get(tid) for tid in state["transfer_ids"]} == state["transfer_ids"]
    # What clients were told they used is what was charged, once per request.
    assert {rid: state["posted"].get(rid) for rid in charged} == charged
    assert all(n == 1 for n in state["by_request"].values())
    for seen in ("dropped", "idempotent 200", "transfer", "transfer refused", "topup", "chat 402"):
        assert outcome[seen], (seen, outcome)  # the mix did exercise it

