"""The OpenAI-compatible adapter against a real node process (the simulator)."""
import pytest

from nodes.adapters import NodeError, adapter_for
from nodes.registry import NodeTarget


def target(sim, path="/v1"):
    return NodeTarget(id=1, public_id="node_t", base_url=sim.url + path, adapter="openai", region="r",
                      attestation="none", healthy=True)


async def test_chat_and_stream_and_models(sim):
    adapter = adapter_for(target(sim))
    body = {"model": "sim-small", "messages": [{"role": "user", "content": "echo: a b c"}], "max_tokens": 5}
    answer = await adapter.chat(body)
    assert answer["choices"][0]["message"]["content"] == "a b c" and answer["usage"]["completion_tokens"] == 3
    chunks = [c async for c in adapter.chat_stream({**body, "stream": True, "stream_options": {"include_usage": True}})]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "a b c"
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    assert set(await adapter.list_models()) == {"sim-small", "sim-large"} and await adapter.health()


async def test_text_completions_and_stream(sim):
    adapter = adapter_for(target(sim))
    body = {"model": "sim-small", "prompt": "echo: one two three", "max_tokens": 2}
    answer = await adapter.completions(body)
    assert answer["object"] == "text_completion" and answer["id"].startswith("cmpl-")
    assert answer["choices"][0]["text"] == "one two" and answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["prompt_tokens"] == 5 and answer["usage"]["completion_tokens"] == 2  # ceil(19 / 4)

    request = {**body, "max_tokens": 9, "stream": True, "stream_options": {"include_usage": True}}
    chunks = [c async for c in adapter.completions_stream(request)]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert [c["choices"][0]["text"] for c in chunks if c["choices"]] == ["one", " two", " three", ""]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


async def test_embeddings(sim):
    adapter = adapter_for(target(sim))
    answer = await adapter.embeddings({"model": "sim-small", "input": ["hello", "hello", "other text"]})
    vectors = [d["embedding"] for d in answer["data"]]
    assert [d["index"] for d in answer["data"]] == [0, 1, 2] and len(vectors[0]) == 16
    assert vectors[0] == vectors[1] != vectors[2]
    assert answer["usage"] == {"prompt_tokens": 2 + 2 + 3, "total_tokens": 7}
    single = await adapter.embeddings({"model": "sim-small", "input": "hello"})
    assert single["data"][0]["embedding"] == vectors[0]
    with pytest.raises(NodeError) as raised:
        await adapter.embeddings({"model": "sim-small", "input": []})
    assert raised.value.permanent and raised.value.status == 400


async def test_a_cut_text_completion_stream_is_a_retryable_error(sim):
    sim.configure(fail_rate=1.0, fail_mode="midstream", fail_after_tokens=2)
    got = []
    with pytest.raises(NodeError) as raised:
        async for chunk in adapter_for(target(sim)).completions_stream(
            {"model": "sim-small", "prompt": "x", "max_tokens": 9, "stream": True}
        ):
            got.append(chunk["choices"][0]["text"])
    assert got == [" lorem", " ipsum"] and not raised.value.permanent


TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]


async def test_tool_calls_whole_and_streamed(sim):
    adapter = adapter_for(target(sim))
    body = {"model": "sim-small", "messages": [{"role": "user", "content": "call: the answer"}], "tools": TOOLS}
    answer = await adapter.chat(body)
    [call] = answer["choices"][0]["message"]["tool_calls"]
    assert call["function"] == {"name": "lookup", "arguments": '{"text": "the answer"}'}
    assert answer["choices"][0]["finish_reason"] == "tool_calls" and answer["usage"]["completion_tokens"] == 3

    chunks = [c async for c in adapter.chat_stream({**body, "stream": True, "stream_options": {"include_usage": True}})]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    [head] = deltas[0]["tool_calls"]
    assert (head["index"], head["type"], head["function"]) == (0, "function", {"name": "lookup", "arguments": ""})
    assert head["id"].startswith("call_") and head["id"] != call["id"]
    fragments = [d["tool_calls"][0]["function"]["arguments"] for d in deltas[1:] if "tool_calls" in d]
    assert fragments == ['{"text":', ' "the', ' answer"}']
    assert all("id" not in d["tool_calls"][0] for d in deltas[1:] if "tool_calls" in d)
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] == 3


async def test_an_unsupported_modality_is_a_permanent_error(sim):
    adapter = adapter_for(target(sim))
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    body = {"model": "sim-small", "messages": [{"role": "user", "content": [{"type": "text", "text": "echo: a"}, image]}]}
    for call in (adapter.chat(body), anext(adapter.chat_stream({**body, "stream": True}))):
        with pytest.raises(NodeError) as raised:
            await call
        assert (raised.value.permanent, raised.value.status) == (True, 400)
        assert raised.value.code == "unsupported_modality" and "image" in str(raised.value)
    sim.configure(modalities=["text", "image"])
    answer = await adapter.chat(body)
    assert answer["choices"][0]["message"]["content"] == "a [image]"
    chunks = [c async for c in adapter.chat_stream({**body, "stream": True})]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "a [image]"


@pytest.mark.parametrize("mode", ["http500", "http429", "disconnect"])
async def test_node_failures_are_retryable(sim, mode):
    sim.configure(fail_rate=1.0, fail_mode=mode)
    adapter = adapter_for(target(sim))
    with pytest.raises(NodeError) as raised:
        await adapter.chat({"model": "sim-small", "messages": [{"role": "user", "content": "x"}]})
    assert raised.value.permanent is False


async def test_a_bad_request_is_permanent_and_a_cut_stream_is_an_error(sim):
    adapter = adapter_for(target(sim))
    with pytest.raises(NodeError) as raised:
        await adapter.chat({"model": "sim-small", "messages": [{"role": "user", "content": "x"}], "n": 3})
    assert raised.value.permanent and raised.value.status == 400
    sim.configure(fail_rate=1.0, fail_mode="midstream", fail_after_tokens=2)
    got = []
    with pytest.raises(NodeError):
        async for chunk in adapter.chat_stream({"model": "sim-small", "messages": [{"role": "user", "content": "x"}],
                                                "max_tokens": 9, "stream": True}):
            got.append(chunk)
    assert sum(1 for c in got if c["choices"] and c["choices"][0]["delta"].get("content")) == 2


async def test_unreachable_node_is_retryable():
    from tests.conftest import free_port

    dead = NodeTarget(id=2, public_id="node_dead", base_url=f"http://127.0.0.1:{free_port()}/v1", adapter="openai",
                      region="r", attestation="none", healthy=True)
    with pytest.raises(NodeError) as raised:
        await adapter_for(dead).chat({"model": "m", "messages": []})
    assert not raised.value.permanent
    assert not await adapter_for(dead).health()


async def test_images_through_the_adapter(sim):
    import base64

    from nodes.nodeserver.png import read_png

    adapter = adapter_for(target(sim))
    answer = await adapter.images({"model": "sim-small", "prompt": "a kite", "n": 2, "size": "512x512",
                                   "response_format": "b64_json"})
    assert [read_png(base64.b64decode(d["b64_json"]))[:2] for d in answer["data"]] == [(512, 512)] * 2
    with pytest.raises(NodeError) as raised:
        await adapter.images({"model": "sim-small", "prompt": "a kite", "size": "huge"})
    assert raised.value.permanent and raised.value.status == 400
    sim.configure(fail_rate=1.0, fail_mode="http500")
    with pytest.raises(NodeError) as raised:
        await adapter.images({"model": "sim-small", "prompt": "a kite"})
    assert not raised.value.permanent and raised.value.status == 500
