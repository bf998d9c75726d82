"""Money under concurrency, through the real HTTP path and real PostgreSQL."""
import asyncio

import httpx
import pytest

from billing.invariants import check_ledger
from billing.models import Transfer
from billing.pricing import reservation_micros
from gateway.tokens import chat_prompt_bound
from tests.conftest import SIM_MODEL, SIM_PRICE, make_tenant, sim_cost

BODY = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "What is the answer?"}], "max_tokens": 20}


@pytest.mark.postgres
async def test_fifty_concurrent_requests_on_a_wallet_funding_exactly_ten(live_server_proc, transactional_db, sim, sim_node):
    from asgiref.sync import sync_to_async

    from billing.pricing import Price

    price = Price(0, SIM_MODEL, 1, "usd", SIM_PRICE["input_per_mtok"], SIM_PRICE["cached_input_per_mtok"],
                  SIM_PRICE["output_per_mtok"], None)
    one = reservation_micros(price, max_input_tokens=chat_prompt_bound(BODY), max_output_tokens=20)
    tenant = await sync_to_async(make_tenant)("tenfold", credit=10 * one)
    sim.configure(ttft_ms=1500)  # every reservation is taken before any settles

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=60)) as client:
        responses = await asyncio.gather(
            *(client.post(f"{live_server_proc.api}/chat/completions", headers=tenant.auth(), json=BODY) for _ in range(50))
        )
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) == 10 and codes.count(402) == 40, codes
    assert all(r.json()["error"]["code"] == "insufficient_balance" for r in responses if r.status_code == 402)

    spent = sum(sim_cost(r.json()["usage"]["prompt_tokens"], r.json()["usage"]["completion_tokens"])
                for r in responses if r.status_code == 200)

    def ledger_state():
        wallet = tenant.wallet
        posted = sum(t.amount for t in Transfer.objects.filter(kind="usage", status="posted"))
        return wallet.balance, wallet.reserved, posted, check_ledger()

    assert await sync_to_async(ledger_state)() == (10 * one - spent, 0, spent, [])
