"""Monthly spend caps through /v1/chat/completions: the request whose
reservation would cross a project's or key's cap gets 402 spend_cap_reached
and nothing is held; the counter's spent is exactly the settled cost."""
import asyncio

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from billing.invariants import check_ledger
from billing.ledger import spend_period
from billing.models import SpendCounter, Transfer
from billing.pricing import Price, reservation_micros
from console import services
from console.models import ApiKey
from gateway.tokens import chat_prompt_bound
from tests.conftest import SIM_MODEL, SIM_PRICE, cache_settle, sim_cost

BODY = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "What is the answer?"}], "max_tokens": 20}
_PRICE = Price(0, SIM_MODEL, 1, "usd", SIM_PRICE["input_per_mtok"], SIM_PRICE["cached_input_per_mtok"],
               SIM_PRICE["output_per_mtok"], None)
ONE = reservation_micros(_PRICE, max_input_tokens=chat_prompt_bound(BODY), max_output_tokens=BODY["max_tokens"])


def post_chat(server, auth, body=BODY):
    return httpx.post(f"{server.api}/chat/completions", headers=auth, json=body, timeout=30)


def cost(response) -> int:
    usage = response.json()["usage"]
    return sim_cost(usage["prompt_tokens"], usage["completion_tokens"])


def secret_key(tenant) -> ApiKey:
    return ApiKey.objects.filter(project=tenant.project, kind="secret").earliest("created_at")


def set_cap(tenant, scope, cap):
    if scope == "project":
        services.project_spend_cap_set(project=tenant.project, monthly_spend_cap=cap)
    else:
        services.api_key_spend_cap_set(key=secret_key(tenant), monthly_spend_cap=cap)
    cache_settle()


def counter(tenant, scope) -> tuple[int, int]:
    scope_id = tenant.project.id if scope == "project" else secret_key(tenant).id
    c = SpendCounter.objects.get(scope=scope, scope_id=scope_id, period=spend_period(timezone.now()))
    return c.spent, c.reserved


def nothing_held(tenant) -> tuple[int, int, list[str]]:
    return tenant.wallet.reserved, Transfer.objects.filter(status="pending").count(), check_ledger()


def assert_cap_reached(response, owner):
    assert response.status_code == 402, response.text
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("spend_cap_reached", "billing_error")
    assert error["request_id"] == response.headers["x-request-id"] and f"{owner}'s monthly spend cap" in error["message"]


@pytest.mark.parametrize("scope", ["project", "key"])
def test_the_request_that_would_cross_the_cap_gets_402_and_holds_nothing(server, alice, sim_node, scope):
    set_cap(alice, scope, ONE)  # room for exactly one reservation
    first = post_chat(server, alice.auth())
    assert first.status_code == 200
    refused = post_chat(server, alice.auth())
    assert_cap_reached(refused, "API key" if scope == "key" else "project")
    assert nothing_held(alice) == (0, 0, [])
    assert counter(alice, scope) == (cost(first), 0)
    assert alice.wallet.balance == 1_000_000 - cost(first)


def test_a_key_cap_binds_that_key_only(server, alice, sim_node):
    set_cap(alice, "key", ONE)
    _, other = services.api_key_create(project=alice.project, kind=ApiKey.Kind.SECRET, name="uncapped")
    responses = [post_chat(server, alice.auth()) for _ in range(2)]
    assert [r.status_code for r in responses] == [200, 402]
    assert post_chat(server, {"Authorization": f"Bearer {other}"}).status_code == 200
    assert counter(alice, "key") == (cost(responses[0]), 0)


def test_a_cap_set_mid_month_counts_the_spend_so_far(server, alice, sim_node):
    before = post_chat(server, alice.auth())
    spent = cost(before)
    set_cap(alice, "project", spent + ONE - 1)
    assert_cap_reached(post_chat(server, alice.auth()), "project")
    assert counter(alice, "project") == (spent, 0)
    set_cap(alice, "project", spent + ONE)
    after = post_chat(server, alice.auth())
    assert after.status_code == 200
    assert counter(alice, "project") == (spent + cost(after), 0) and nothing_held(alice) == (0, 0, [])


def test_a_cap_below_the_spend_refuses_and_clearing_it_serves_again(server, alice, sim_node):
    spent = cost(post_chat(server, alice.auth()))
    set_cap(alice, "project", 0)
    assert_cap_reached(post_chat(server, alice.auth()), "project")
    set_cap(alice, "project", None)
    again = post_chat(server, alice.auth())
    assert again.status_code == 200
    # an uncapped scope's counter is not kept up; setting a cap again rebuilds it from the ledger
    set_cap(alice, "project", 100 * ONE)
    assert counter(alice, "project") == (spent + cost(again), 0)
    assert nothing_held(alice) == (0, 0, [])


def test_a_failed_node_releases_the_counter(server, alice, sim, sim_node):
    set_cap(alice, "key", 10 * ONE)
    sim.configure(fail_rate=1.0, fail_mode="http500")
    assert post_chat(server, alice.auth()).status_code == 502
    assert counter(alice, "key") == (0, 0) and nothing_held(alice) == (0, 0, [])


@pytest.mark.postgres
async def test_concurrent_requests_never_overspend_a_cap(
    live_server_proc, second_server_proc, transactional_db, sim, sim_node, alice
):
    fits = 4
    await sync_to_async(set_cap)(alice, "project", fits * ONE + ONE // 2)
    await sync_to_async(set_cap)(alice, "key", 100 * ONE)
    sim.configure(ttft_ms=1500)  # every reservation is taken before any settles
    servers = [live_server_proc, second_server_proc]
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=30)) as client:
        responses = await asyncio.gather(
            *(client.post(f"{servers[i % 2].api}/chat/completions", headers=alice.auth(), json=BODY) for i in range(20))
        )
    codes = [r.status_code for r in responses]
    assert codes.count(200) == fits and codes.count(402) == 20 - fits, codes
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 402} == {"spend_cap_reached"}
    spent = sum(cost(r) for r in responses if r.status_code == 200)

    def state():
        return counter(alice, "project"), counter(alice, "key"), nothing_held(alice), alice.wallet.balance

    assert await sync_to_async(state)() == ((spent, 0), (spent, 0), (0, 0, []), 1_000_000 - spent)
