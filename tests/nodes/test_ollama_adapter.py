"""The Ollama adapter against a real process speaking Ollama's dialect: the simulator with --dialect ollama.

This is the simulator emulating Ollama's /api and /v1, not a real Ollama server.
"""
import httpx
import pytest

from nodes.adapters import NodeError, OllamaAdapter, adapter_for
from nodes.registry import NodeTarget


def target(url: str, adapter: str = "ollama") -> NodeTarget:
    return NodeTarget(id=1, public_id="node_o", base_url=url + "/v1", adapter=adapter, region="r",
                      attestation="none", healthy=True)


def loaded(sim) -> list[str]:
    return [m["name"] for m in httpx.get(f"{sim.url}/api/ps").json()["models"]]


async def test_chat_and_stream_go_through_v1(ollama_sim):
    adapter = adapter_for(target(ollama_sim.url))
    assert isinstance(adapter, OllamaAdapter)
    body = {"model": "sim-small", "messages": [{"role": "user", "content": "echo: a b c"}], "max_tokens": 5}
    answer = await adapter.chat(body)
    assert answer["choices"][0]["message"]["content"] == "a b c" and answer["usage"]["completion_tokens"] == 3
    chunks = [c async for c in adapter.chat_stream({**body, "stream": True, "stream_options": {"include_usage": True}})]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "a b c"
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    assert [r["stream"] for r in ollama_sim.stats()["last"]] == [True, False]


async def test_models_are_listed_from_api_tags(ollama_sim):
    adapter = adapter_for(target(ollama_sim.url))
    assert await adapter.list_models() == ["sim-small", "sim-large"]
    httpx.post(f"{ollama_sim.url}/api/pull", json={"model": "extra:1b", "stream": False}).raise_for_status()
    assert await adapter.list_models() == ["sim-small", "sim-large", "extra:1b"]


async def test_pull_streams_progress_then_the_model_is_listed_and_servable(ollama_sim):
    adapter = adapter_for(target(ollama_sim.url))
    events = [e async for e in adapter.pull_model("tiny:1b")]
    assert events[0] == {"status": "pulling manifest"} and events[-1] == {"status": "success"}
    progress = [(e["completed"], e["total"]) for e in events if "completed" in e]
    assert len(progress) >= 2 and progress == sorted(progress) and progress[-1][0] == progress[-1][1]
    assert "tiny:1b" in await adapter.list_models()
    answer = await adapter.chat({"model": "tiny:1b", "messages": [{"role": "user", "content": "echo: pulled"}]})
    assert answer["model"] == "tiny:1b" and answer["choices"][0]["message"]["content"] == "pulled"


async def test_pulling_a_model_the_registry_lacks_is_permanent(ollama_sim):
    adapter = adapter_for(target(ollama_sim.url))
    seen = []
    with pytest.raises(NodeError) as raised:
        async for event in adapter.pull_model("missing-model"):
            seen.append(event)
    assert raised.value.permanent and "file does not exist" in str(raised.value)
    assert seen == [{"status": "pulling manifest"}]
    assert "missing-model" not in await adapter.list_models()


async def test_load_and_unload_show_in_api_ps(ollama_sim):
    adapter = adapter_for(target(ollama_sim.url))
    assert loaded(ollama_sim) == []
    await adapter.load_model("sim-large")
    assert loaded(ollama_sim) == ["sim-large"] and ollama_sim.stats()["loaded"] == ["sim-large"]
    await adapter.load_model("sim-small")
    await adapter.unload_model("sim-large")
    assert loaded(ollama_sim) == ["sim-small"]
    with pytest.raises(NodeError) as raised:
        await adapter.load_model("nope")
    assert (raised.value.permanent, raised.value.status) == (True, 404) and "model 'nope' not found" in str(raised.value)


async def test_health_follows_the_process():
    from tests.conftest import start_simulator

    sim = start_simulator("--dialect", "ollama")
    adapter = adapter_for(target(sim.url))
    try:
        assert await adapter.health()
    finally:
        sim.process.stop()
    assert not await adapter.health()
    with pytest.raises(NodeError) as raised:
        await adapter.load_model("sim-small")
    assert not raised.value.permanent
    with pytest.raises(NodeError) as raised:
        [e async for e in adapter.pull_model("sim-small")]
    assert not raised.value.permanent


async def test_health_needs_the_native_api(sim):
    """An OpenAI-only server is not a healthy Ollama node, though its /v1 answers."""
    assert not await adapter_for(target(sim.url)).health()
    assert await adapter_for(target(sim.url, adapter="openai")).health()


async def test_the_openai_adapter_refuses_model_management_as_permanent(sim):
    adapter = adapter_for(target(sim.url, adapter="openai"))
    # (images it does support: POST {base}/images/generations, tests/nodes/test_openai_adapter.py)
    for call in (adapter.load_model("sim-small"), adapter.unload_model("sim-small"), anext(adapter.pull_model("sim-small"))):
        with pytest.raises(NodeError) as raised:
            await call
        assert raised.value.permanent and "not supported" in str(raised.value) and raised.value.code == "unsupported"
