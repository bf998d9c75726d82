"""Retries through a fault-injecting proxy in front of the live server: 429/503 then success,
Retry-After honoured, one Idempotency-Key per call (proved by a single charge after a lost answer),
and a stream cut mid-answer resumed with Last-Event-ID without a second generation or charge."""
import time

import pytest
from asgiref.sync import sync_to_async
from private_inference import (
    APIConnectionError,
    AsyncClient,
    Client,
    RateLimitError,
    ServerError,
)

from billing.invariants import check_ledger
from billing.models import Transfer
from tests.conftest import SIM_MODEL, sim_cost
from tests.sdk.conftest import FAST
from tests.sdk.test_sdk_live import HELLO, settled

WORDS = [f"w{i}" for i in range(30)]


def test_429_with_retry_after_then_success(proxied, proxy, sim):
    proxy.plan("429:1")
    started = time.monotonic()
    completion = proxied.chat.completions.create(model=SIM_MODEL, messages=HELLO, max_tokens=20)
    waited = time.monotonic() - started
    assert completion.choices[0].message.content == "one two three"
    assert waited >= 1.0  # Retry-After: 1, although the policy's own backoff is at most 0.2 s
    first, second = proxy.requests("/v1/chat/completions")
    assert (first.action, second.action) == ("429:1", "forward")
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert len(settled()) == 1


def test_503s_then_success_one_key_one_charge(proxied, proxy, alice, sim):
    proxy.plan("503", "503")
    completion = proxied.chat.completions.create(model=SIM_MODEL, messages=HELLO, max_tokens=20)
    seen = proxy.requests("/v1/chat/completions")
    assert [s.action for s in seen] == ["503", "503", "forward"]
    assert len({s.headers["idempotency-key"] for s in seen}) == 1
    [transfer] = settled()
    assert transfer.amount == sim_cost(completion.usage.prompt_tokens, completion.usage.completion_tokens)


def test_answer_lost_after_the_server_charged_is_retried_with_the_same_key_and_charged_once(proxied, proxy, alice, sim):
    proxy.plan("drop")  # forwarded and answered (and charged), but the client sees a broken connection
    completion = proxied.chat.completions.create(model=SIM_MODEL, messages=HELLO, max_tokens=20)
    assert completion.choices[0].message.content == "one two three"
    first, second = proxy.requests("/v1/chat/completions")
    assert first.action == "drop" and first.headers["idempotency-key"] == second.headers["idempotency-key"]
    [transfer] = settled()
    assert sim.stats()["completed"] == 1  # generated once: the retry was answered from the first
    assert alice.wallet.balance == 1_000_000 - transfer.amount and check_ledger() == []


def test_without_a_shared_key_the_same_loss_would_charge_twice(proxy, server, alice, sim_node, sim):
    """The control: a client that invents a new key per try (the user passes it per attempt) pays twice."""
    with Client(api_key=alice.secret_key, base_url=proxy.url, max_retries=0) as client:
        proxy.plan("drop")
        with pytest.raises(APIConnectionError):
            client.chat.completions.create(model=SIM_MODEL, messages=HELLO, max_tokens=20)
        client.chat.completions.create(model=SIM_MODEL, messages=HELLO, max_tokens=20)
    assert len(settled(2)) == 2 and sim.stats()["completed"] == 2


def test_retries_give_up_with_the_last_error(proxy, alice, sim_node):
    with Client(api_key=alice.secret_key, base_url=proxy.url, retry_policy=FAST.__class__(max_retries=1, initial_delay=0.01)) as c:
        proxy.plan("503", "503", "503")
        with pytest.raises(ServerError) as failed:
            c.models.list()
        assert failed.value.status_code == 503 and failed.value.code == "service_unavailable"
        proxy.plan("429", "429")
        with pytest.raises(RateLimitError):
            c.chat.completions.create(model=SIM_MODEL, messages=HELLO, max_tokens=5)
        proxy.plan("refuse", "refuse")
        with pytest.raises(APIConnectionError):
            c.chat.completions.create(model=SIM_MODEL, messages=HELLO, max_tokens=5)
    assert Transfer.objects.filter(kind="usage").count() == 0


def test_unpaid_post_is_not_repeated_after_the_server_may_have_acted(proxy, alice, sim_node):
    """Creating a key carries no Idempotency-Key: a lost answer is reported, not retried (no second key)."""
    with Client(api_key=alice.secret_key, base_url=proxy.url, retry_policy=FAST) as c:
        before = len(c.keys.list().data)
        proxy.plan("drop")
        with pytest.raises(APIConnectionError):
            c.keys.create(name="once")
        assert len(c.keys.list().data) == before + 1
    assert len(proxy.requests("/v1/keys")) == 3  # list, create (dropped), list


def test_stream_cut_mid_answer_resumes_with_last_event_id_and_is_charged_once(proxied, proxy, alice, sim):
    sim.configure(tokens_per_s=40)
    proxy.plan("cut:5")
    stream = proxied.chat.completions.create(
        model=SIM_MODEL, messages=[{"role": "user", "content": "echo: " + " ".join(WORDS)}], max_tokens=100,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
    assert text == " ".join(WORDS)  # nothing lost, nothing twice
    post, resume = proxy.requests("/v1/")
    assert post.action == "cut:5" and resume.method == "GET"
    assert resume.path == f"/v1/streams/{stream.request_id}" and resume.headers["last-event-id"] == "evt_5"
    [transfer] = settled()
    assert (transfer.status, transfer.output_tokens) == ("posted", 30)
    assert transfer.amount == sim_cost(chunks[-1].usage.prompt_tokens, 30)
    assert sim.stats()["completed"] == 1 and sim.stats()["cancelled"] == 0
    assert alice.wallet.reserved == 0 and check_ledger() == []


async def test_async_retry_and_resume(proxy, alice, sim_node, sim):
    sim.configure(tokens_per_s=40)
    async with AsyncClient(api_key=alice.secret_key, base_url=proxy.url, retry_policy=FAST) as client:
        proxy.plan("503", "cut:3")
        stream = await client.chat.completions.create(
            model=SIM_MODEL, messages=[{"role": "user", "content": "echo: " + " ".join(WORDS[:10])}],
            max_tokens=50, stream=True)
        text = ""
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
    assert text == " ".join(WORDS[:10])
    seen = proxy.requests("/v1/")
    assert [s.action for s in seen] == ["503", "cut:3", "forward"]
    assert seen[0].headers["idempotency-key"] == seen[1].headers["idempotency-key"]
    assert seen[2].headers["last-event-id"] == "evt_3"
    assert len(await sync_to_async(settled)()) == 1 and sim.stats()["completed"] == 1
