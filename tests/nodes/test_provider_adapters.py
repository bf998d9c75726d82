"""OpenAI-protocol provider adapters (provider-openai, provider-compatible) against a real process:
the simulator behind an API key, serving an OpenAI reasoning model that refuses max_tokens."""
from __future__ import annotations

import pytest

from nodes.adapters import ADAPTERS, NodeError, adapter_for
from nodes.adapters.providers import provider_error
from nodes.models import PROVIDER_ADAPTERS
from nodes.registry import NodeTarget
from tests.conftest import OPENAI_KEY

REASONING = "gpt-5-mini"


def target(sim, kind: str, key: str | None = OPENAI_KEY) -> NodeTarget:
    return NodeTarget(id=1, public_id="node_p", base_url=f"{sim.url}/v1", adapter=kind, region="r",
                      attestation="none", healthy=True, credentials=key)


def chat(model: str = REASONING, **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "echo: one two three"}], "max_tokens": 2, **fields}


def test_the_provider_kinds_are_the_ones_the_database_keeps_unattested():
    assert {kind for kind, cls in ADAPTERS.items() if cls.provider} == set(PROVIDER_ADAPTERS)
    assert not ADAPTERS["openai"].provider and not ADAPTERS["ollama"].provider


async def test_openai_gets_max_completion_tokens_where_a_plain_openai_node_fails(openai_sim):
    with pytest.raises(NodeError) as refused:  # what a self-hosted OpenAI-compatible adapter sends
        await adapter_for(target(openai_sim, "openai")).chat(chat())
    assert refused.value.permanent and refused.value.code == "unsupported_parameter"

    adapter = adapter_for(target(openai_sim, "provider-openai"))
    answer = await adapter.chat(chat())
    assert answer["choices"][0]["message"]["content"] == "one two" and answer["choices"][0]["finish_reason"] == "length"
    chunks = [c async for c in adapter.chat_stream(chat(stream=True))]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "one two"


@pytest.mark.parametrize("kind", ["provider-openai", "provider-compatible"])
async def test_streams_always_ask_for_usage(openai_sim, kind):
    adapter = adapter_for(target(openai_sim, kind))
    body = chat("sim-small", stream=True, max_tokens=5)  # no stream_options: the adapter adds include_usage
    chunks = [c async for c in adapter.chat_stream(body)]
    served = openai_sim.stats()["last"][0]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == served["completion_tokens"] == 3
    assert "stream_options" not in body  # the caller's body is not changed
    text = [c async for c in adapter.completions_stream({"model": "sim-small", "prompt": "echo: a b", "stream": True})]
    assert text[-1]["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("kind", ["provider-openai", "provider-compatible"])
async def test_a_rejected_key_is_a_node_problem_and_never_quoted(openai_sim, kind):
    wrong = adapter_for(target(openai_sim, kind, key="sk-proj-wrong-key-31337"))
    for call in (wrong.chat(chat("sim-small")), anext(wrong.chat_stream(chat("sim-small", stream=True)))):
        with pytest.raises(NodeError) as denied:
            await call
        assert not denied.value.permanent and denied.value.status == 401 and denied.value.code == "provider_auth_failed"
        assert "1337" not in str(denied.value) and "sk-" not in str(denied.value)  # OpenAI's message quotes the key
    assert not await wrong.health() and await adapter_for(target(openai_sim, kind)).health()


@pytest.mark.parametrize("kind", ["provider-openai", "provider-compatible"])
async def test_bad_requests_are_permanent_and_provider_trouble_is_retryable(openai_sim, kind):
    adapter = adapter_for(target(openai_sim, kind))
    with pytest.raises(NodeError) as bad:
        await adapter.chat(chat("sim-small", temperature=3))
    assert bad.value.permanent and bad.value.status == 400
    with pytest.raises(NodeError) as unknown:
        await adapter.chat(chat("gpt-retired"))
    assert not unknown.value.permanent and unknown.value.code == "upstream_model_not_found"
    for mode, status in (("http429", 429), ("http500", 500)):
        openai_sim.configure(fail_rate=1.0, fail_mode=mode)
        with pytest.raises(NodeError) as raised:
            await adapter.chat(chat("sim-small"))
        assert not raised.value.permanent and raised.value.status == status


def test_openai_status_mapping_for_what_the_simulator_cannot_produce():
    quota = provider_error(429, "insufficient_quota", "You exceeded your current quota", "sk-x")
    assert not quota.permanent and quota.code == "provider_quota_exhausted"
    forbidden = provider_error(403, "unsupported_country_region_territory", "Country not supported", "sk-x")
    assert not forbidden.permanent and forbidden.code == "provider_auth_failed"
    echoed = provider_error(400, "invalid_value", "bad value near sk-secret-1", "sk-secret-1")
    assert echoed.permanent and "sk-secret-1" not in str(echoed)
    assert not provider_error(503, None, "busy", None).permanent and provider_error(422, None, "x", None).permanent
