"""Rate limits per project and per key: the binding one answers, and the limit
holds exactly across server processes (one Lua call checks every bucket)."""
import asyncio
import secrets

import httpx
import pytest
from asgiref.sync import sync_to_async

from console import services
from console.models import ApiKey
from gateway import limits
from gateway.auth import KeyRecord
from gateway.errors import GatewayError
from gateway.tokens import chat_prompt_bound
from tests.conftest import SIM_MODEL, cache_settle

CHAT = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
CHAT_TOKENS = chat_prompt_bound(CHAT) + CHAT["max_tokens"]  # what one request is admitted for


def post_chat(server, auth, body=CHAT):
    return httpx.post(f"{server.api}/chat/completions", headers=auth, json=body, timeout=30)


def assert_rate_limited(response, owner: str):
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "rate_limited" and error["type"] == "rate_limit_error"
    assert error["request_id"] == response.headers["x-request-id"] and owner in error["message"]
    assert int(response.headers["retry-after"]) >= 1
    return error


def the_key(tenant) -> ApiKey:
    return ApiKey.objects.filter(project=tenant.project, kind="secret").earliest("created_at")


def second_key(tenant) -> dict[str, str]:
    _, plaintext = services.api_key_create(project=tenant.project, kind=ApiKey.Kind.SECRET, name="other")
    return {"Authorization": f"Bearer {plaintext}"}


def test_a_key_limit_below_the_projects_binds_that_key_only(server, alice, sim_node):
    services.project_update(project=alice.project, rpm_limit=10)
    services.api_key_limits_set(key=the_key(alice), rpm_limit=2, tpm_limit=None)
    other = second_key(alice)
    cache_settle()
    first = post_chat(server, alice.auth())
    assert first.status_code == 200
    assert (first.headers["x-ratelimit-limit-requests"], first.headers["x-ratelimit-remaining-requests"]) == ("2", "1")
    assert post_chat(server, alice.auth()).headers["x-ratelimit-remaining-requests"] == "0"
    limited = post_chat(server, alice.auth())
    assert_rate_limited(limited, "API key")
    assert (limited.headers["x-ratelimit-limit-requests"], limited.headers["x-ratelimit-remaining-requests"]) == ("2", "0")
    # The project's bucket still has room: another key of the project is served, and shows the project's limit.
    served = post_chat(server, other)
    assert served.status_code == 200 and served.headers["x-ratelimit-limit-requests"] == "10"
    assert int(served.headers["x-ratelimit-remaining-requests"]) in (7, 8)  # 10 - 3 (+ refill)


def test_a_project_limit_below_the_keys_binds_every_key(server, alice, sim_node):
    services.project_update(project=alice.project, rpm_limit=2)
    services.api_key_limits_set(key=the_key(alice), rpm_limit=10, tpm_limit=None)
    other = second_key(alice)
    cache_settle()
    first = post_chat(server, alice.auth())
    assert (first.headers["x-ratelimit-limit-requests"], first.headers["x-ratelimit-remaining-requests"]) == ("2", "1")
    assert post_chat(server, other).status_code == 200
    for auth in (alice.auth(), other):
        limited = post_chat(server, auth)
        assert_rate_limited(limited, "project")
        assert limited.headers["x-ratelimit-limit-requests"] == "2"


@pytest.mark.parametrize("binding", ["key", "project"])
def test_the_binding_token_limit_answers_and_refuses(server, alice, sim_node, binding):
    small, large = CHAT_TOKENS + 20, 100_000
    project_tpm, key_tpm = (large, small) if binding == "key" else (small, large)
    services.project_update(project=alice.project, tpm_limit=project_tpm)
    services.api_key_limits_set(key=the_key(alice), rpm_limit=None, tpm_limit=key_tpm)
    cache_settle()
    first = post_chat(server, alice.auth())
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-tokens"] == str(small)
    assert first.headers["x-ratelimit-remaining-tokens"] == "20"  # charged the worst case; the refund comes after
    # A request above a whole minute's budget needs a full bucket: the used tokens take seconds to come back.
    limited = post_chat(server, alice.auth(), {**CHAT, "max_tokens": 200})
    assert_rate_limited(limited, "API key" if binding == "key" else "project")
    assert limited.headers["x-ratelimit-limit-tokens"] == str(small)
    assert int(limited.headers["x-ratelimit-remaining-tokens"]) < small


def record(*, project_id, key_id, rpm=None, tpm=None, key_rpm=None, key_tpm=None) -> KeyRecord:
    return KeyRecord(
        key_id=key_id, key_public_id="key_x", kind="secret", hash="", active=True, expires_at=None,
        project_id=project_id, project_public_id="proj_x", organization_id=1, allowed_origins=frozenset(),
        idempotency_required=False, rpm_limit=rpm, tpm_limit=tpm, wallet_id=1, usage_wallet_id=2, currency="usd",
        stream_resume_seconds=30, key_rpm_limit=key_rpm, key_tpm_limit=key_tpm,
    )


def fresh_ids() -> tuple[int, int]:
    return secrets.randbelow(10**12) + 10**12, secrets.randbelow(10**12) + 10**12


def levels(decision) -> dict[tuple[str, str], float]:
    return {(b.scope, b.kind): b.left for b in decision.buckets}


async def test_a_refused_request_consumes_no_bucket():
    project_id, key_id = fresh_ids()
    tight_project = record(project_id=project_id, key_id=key_id, rpm=1, key_rpm=5)
    assert (await limits.admit(key=tight_project, tokens=10)).allowed
    with pytest.raises(GatewayError) as refused:
        await limits.admit(key=tight_project, tokens=10)
    assert refused.value.code == "rate_limited" and "project" in refused.value.message
    # Same key under a fresh project bucket: the key was charged once, not twice.
    other_project = record(project_id=project_id + 1, key_id=key_id, rpm=100, key_rpm=5)
    after = await limits.admit(key=other_project, tokens=10)
    assert int(levels(after)[("key", "requests")]) == 3


async def test_unused_tokens_go_back_to_every_token_bucket_charged():
    project_id, key_id = fresh_ids()
    key = record(project_id=project_id, key_id=key_id, tpm=1_000, key_tpm=500)
    admitted = await limits.admit(key=key, tokens=100)
    assert admitted.cost == 100
    assert {k: int(v) for k, v in levels(admitted).items() if k[1] == "tokens"} == {
        ("project", "tokens"): 900, ("key", "tokens"): 400}
    await limits.refund(key=key, tokens=60)  # 40 were used
    after = await limits.admit(key=key, tokens=0)
    # Plus what refilled meanwhile: 1_000 tokens/min is 10 in 600 ms.
    assert 960 <= levels(after)[("project", "tokens")] < 970
    assert 460 <= levels(after)[("key", "tokens")] < 470
    assert after.headers()["x-ratelimit-limit-tokens"] == "500"  # the key's bucket has the least left


async def fire(servers, auth, body, n):
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=n + 5)) as client:
        return await asyncio.gather(
            *(client.post(f"{servers[i % len(servers)].api}/chat/completions", headers=auth, json=body) for i in range(n))
        )


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.parametrize("scope", ["key", "project"])
async def test_requests_per_minute_hold_exactly_across_two_server_processes(
    live_server_proc, second_server_proc, transactional_db, sim, sim_node, alice, scope
):
    limit = 5

    def configure():
        if scope == "key":
            services.api_key_limits_set(key=the_key(alice), rpm_limit=limit, tpm_limit=None)
        else:
            services.project_update(project=alice.project, rpm_limit=limit)
        cache_settle()

    await sync_to_async(configure)()
    responses = await fire([live_server_proc, second_server_proc], alice.auth(), CHAT, 3 * limit)
    codes = [r.status_code for r in responses]
    assert codes.count(200) == limit and codes.count(429) == 2 * limit, codes
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 429} == {"rate_limited"}
    assert all(r.headers["x-ratelimit-limit-requests"] == str(limit) for r in responses)


@pytest.mark.redis
@pytest.mark.postgres
async def test_tokens_per_minute_hold_exactly_across_two_server_processes(
    live_server_proc, second_server_proc, transactional_db, sim, sim_node, alice
):
    fits = 4
    await sync_to_async(services.api_key_limits_set)(key=await sync_to_async(the_key)(alice), rpm_limit=None,
                                                     tpm_limit=fits * CHAT_TOKENS)
    await sync_to_async(cache_settle)()
    sim.configure(ttft_ms=1500)  # every admission happens before any refund of unused tokens
    responses = await fire([live_server_proc, second_server_proc], alice.auth(), CHAT, 3 * fits)
    codes = [r.status_code for r in responses]
    assert codes.count(200) == fits and codes.count(429) == 2 * fits, codes
    assert all(r.headers["x-ratelimit-limit-tokens"] == str(fits * CHAT_TOKENS) for r in responses)


def test_an_idempotent_replay_counts_as_a_request_but_gives_its_tokens_back(server, alice, sim_node):
    import time

    services.project_update(project=alice.project, tpm_limit=600)  # refills 10 tokens a second
    cache_settle()
    headers = {**alice.auth(), "Idempotency-Key": "replay-tokens"}
    assert post_chat(server, headers).status_code == 200
    time.sleep(0.3)  # the unused part of the first request goes back after it settles
    replay = post_chat(server, headers)
    assert replay.headers["idempotent-replayed"] == "true"
    time.sleep(0.3)
    after = post_chat(server, alice.auth())
    left_at_replay = int(replay.headers["x-ratelimit-remaining-tokens"])
    left_after = int(after.headers["x-ratelimit-remaining-tokens"])
    # The next request is charged CHAT_TOKENS from where the replay left off plus its refund;
    # without the refund it would start CHAT_TOKENS lower.
    assert left_after >= left_at_replay - 10, (left_at_replay, left_after, CHAT_TOKENS)
