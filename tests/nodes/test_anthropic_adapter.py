"""The Anthropic adapter (Messages API natively) against a real process: the simulator's Anthropic dialect."""
from __future__ import annotations

import base64

import pytest

from nodes.adapters import NodeError, adapter_for
from nodes.anthropic_messages import FormatError, to_messages_request
from nodes.registry import NodeTarget
from tests.conftest import ANTHROPIC_KEY, free_port

TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Find", "parameters": {"type": "object"}}}]
PIXEL = base64.b64encode(b"\x89PNG fake").decode()


def target(url: str, key: str | None = ANTHROPIC_KEY) -> NodeTarget:
    return NodeTarget(id=1, public_id="node_anthropic", base_url=url, adapter="provider-anthropic", region="r",
                      attestation="none", healthy=True, credentials=key)


def chat(content, **fields):
    return {"model": "sim-small", "messages": [{"role": "user", "content": content}], "max_tokens": 20, **fields}


async def collect(stream) -> list[dict]:
    return [chunk async for chunk in stream]


def text_of(chunks) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def test_chat_becomes_a_messages_request_and_the_answer_a_chat_completion(anthropic_sim):
    adapter = adapter_for(target(anthropic_sim.url))
    body = {"model": "sim-small", "max_tokens": 20, "messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "user", "content": [{"type": "text", "text": "echo: voici"},
                                     {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}]},
    ]}
    answer = await adapter.chat(body)
    assert answer["object"] == "chat.completion" and answer["id"].startswith("msg_")
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "voici [image]"}  # the image arrived
    assert answer["choices"][0]["finish_reason"] == "stop"
    served = anthropic_sim.stats()["last"][0]
    assert answer["usage"]["prompt_tokens"] == served["prompt_tokens"] and answer["usage"]["completion_tokens"] == 2
    assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] == 0

    capped = await adapter.chat(chat("echo: a b c d", max_tokens=2))
    assert capped["choices"][0]["finish_reason"] == "length" and capped["choices"][0]["message"]["content"] == "a b"
    stopped = await adapter.chat(chat("echo: a b c d", stop="c", temperature=1.7, top_p=0.9))  # temperature capped at 1
    assert stopped["choices"][0]["message"]["content"] == "a b " and stopped["choices"][0]["finish_reason"] == "stop"


async def test_a_stream_becomes_chat_chunks_with_usage_last(anthropic_sim):
    chunks = await collect(adapter_for(target(anthropic_sim.url)).chat_stream(chat("echo: un deux trois", stream=True)))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[0]["usage"]["prompt_tokens"] > 0  # message_start's input count, before any output
    assert text_of(chunks) == "un deux trois"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    served = anthropic_sim.stats()["last"][0]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert chunks[-1]["usage"]["prompt_tokens"] == served["prompt_tokens"]


async def test_tool_calls_whole_streamed_and_answered(anthropic_sim):
    adapter = adapter_for(target(anthropic_sim.url))
    answer = await adapter.chat(chat("call: flights to Rome", tools=TOOLS, tool_choice="required",
                                     parallel_tool_calls=False))
    [call] = answer["choices"][0]["message"]["tool_calls"]
    assert answer["choices"][0]["finish_reason"] == "tool_calls" and answer["choices"][0]["message"]["content"] is None
    assert call["id"].startswith("toolu_") and call["function"]["name"] == "lookup"
    assert call["function"]["arguments"] == '{"text":"flights to Rome"}'

    chunks = await collect(adapter.chat_stream(chat("call: trains", tools=TOOLS, stream=True)))
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    [head] = deltas[1]["tool_calls"]
    assert (head["index"], head["type"], head["function"]) == (0, "function", {"name": "lookup", "arguments": ""})
    arguments = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas[2:] if d.get("tool_calls"))
    assert arguments == '{"text": "trains"}' and chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"

    follow_up = await adapter.chat({"model": "sim-small", "max_tokens": 20, "tools": TOOLS, "messages": [
        {"role": "user", "content": "call: flights to Rome"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "3 flights"},
        {"role": "user", "content": "echo: thanks"},  # merged into the tool result's user turn
    ]})
    assert follow_up["choices"][0]["message"]["content"] == "thanks"


async def test_cache_breakpoints_pass_through_and_cache_reads_are_cached_tokens(anthropic_sim):
    adapter = adapter_for(target(anthropic_sim.url))
    system = {"role": "system", "content": [{"type": "text", "text": "rules " * 800, "cache_control": {"type": "ephemeral"}}]}
    body = {"model": "sim-small", "max_tokens": 5, "messages": [system, {"role": "user", "content": "echo: ok"}]}
    written, read = await adapter.chat(body), await adapter.chat(body)
    total = anthropic_sim.stats()["last"][0]["prompt_tokens"]
    assert written["usage"]["prompt_tokens"] == read["usage"]["prompt_tokens"] == total  # every input token counted
    assert written["usage"]["prompt_tokens_details"] == {"cached_tokens": 0, "cache_creation_tokens": 1200}
    assert read["usage"]["prompt_tokens_details"] == {"cached_tokens": 1200, "cache_creation_tokens": 0}
    streamed = await collect(adapter.chat_stream({**body, "stream": True}))
    assert streamed[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 1200


@pytest.mark.parametrize("mode, status", [("http529", 529), ("http429", 429), ("http500", 500)])
async def test_overloaded_rate_limited_and_server_errors_are_retryable(anthropic_sim, mode, status):
    anthropic_sim.configure(fail_rate=1.0, fail_mode=mode)
    adapter = adapter_for(target(anthropic_sim.url))
    for call in (adapter.chat(chat("x")), collect(adapter.chat_stream(chat("x", stream=True)))):
        with pytest.raises(NodeError) as raised:
            await call
        assert not raised.value.permanent and raised.value.status == status


async def test_bad_requests_are_permanent_and_node_problems_are_not(anthropic_sim):
    adapter = adapter_for(target(anthropic_sim.url))
    with pytest.raises(NodeError) as bad:
        await adapter.chat(chat("x", stop=[" "]))  # Anthropic refuses whitespace-only stop sequences
    assert bad.value.permanent and bad.value.status == 400 and "stop_sequences" in str(bad.value)

    with pytest.raises(NodeError) as wide:
        await adapter.chat(chat("x", top_p=1.5))  # passed on as is: Anthropic checks it
    assert wide.value.permanent and "top_p" in str(wide.value)
    with pytest.raises(NodeError) as unknown:
        await adapter.chat({**chat("x"), "model": "claude-gone"})
    assert not unknown.value.permanent and unknown.value.code == "upstream_model_not_found"

    wrong = adapter_for(target(anthropic_sim.url, key="sk-ant-wrong-key-4242"))
    for call in (wrong.chat(chat("x")), collect(wrong.chat_stream(chat("x", stream=True)))):
        with pytest.raises(NodeError) as denied:
            await call
        assert not denied.value.permanent and denied.value.code == "provider_auth_failed"
        assert "4242" not in str(denied.value)
    assert not await wrong.health() and await adapter.health()
    assert await adapter.list_models() == ["sim-small", "sim-large"]

    unreachable = adapter_for(target(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(NodeError) as down:
        await unreachable.chat(chat("x"))
    assert not down.value.permanent


async def test_an_error_event_mid_stream_is_a_retryable_failure_after_the_delivered_chunks(anthropic_sim):
    anthropic_sim.configure(fail_rate=1.0, fail_mode="midstream", fail_after_tokens=2)
    got = []
    with pytest.raises(NodeError) as raised:
        async for chunk in adapter_for(target(anthropic_sim.url)).chat_stream(chat("echo: a b c d", stream=True)):
            got.append(chunk)
    assert text_of(got) == "a b" and not raised.value.permanent and raised.value.code == "overloaded_error"


async def test_completions_and_embeddings_are_refused_as_unsupported(anthropic_sim):
    adapter = adapter_for(target(anthropic_sim.url))
    for call in (adapter.completions({"model": "sim-small", "prompt": "x"}),
                 adapter.embeddings({"model": "sim-small", "input": "x"})):
        with pytest.raises(NodeError) as raised:
            await call
        assert raised.value.permanent and raised.value.code == "unsupported"
    with pytest.raises(NodeError) as streamed:
        adapter.completions_stream({"model": "sim-small", "prompt": "x", "stream": True})
    assert streamed.value.permanent
    assert anthropic_sim.stats()["requests"] == 0


def test_what_has_no_messages_equivalent_is_refused_and_turns_are_merged():
    for field in ({"logprobs": True}, {"n": 2}, {"response_format": {"type": "json_object"}}, {"logit_bias": {"1": 5}}):
        with pytest.raises(FormatError) as raised:
            to_messages_request(chat("x", **field))
        assert raised.value.param == next(iter(field))
    with pytest.raises(FormatError):
        to_messages_request(chat([{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]))

    request = to_messages_request({
        "model": "m", "max_completion_tokens": 7, "max_tokens": 99, "user": "u-1", "seed": 3, "messages": [
            {"role": "user", "content": "a"}, {"role": "user", "content": "b"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"q": 1}'}},
                {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "one"},
            {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "two"}]},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.example/a.png"}}]},
        ],
        "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "lookup"}}, "parallel_tool_calls": False,
    })
    assert request["max_tokens"] == 7 and request["metadata"] == {"user_id": "u-1"} and "seed" not in request
    assert [t["role"] for t in request["messages"]] == ["user", "assistant", "user"]
    assert request["messages"][1]["content"] == [
        {"type": "tool_use", "id": "c1", "name": "f", "input": {"q": 1}},
        {"type": "tool_use", "id": "c2", "name": "f", "input": {}}]
    assert request["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "c1", "content": "one"},
        {"type": "tool_result", "tool_use_id": "c2", "content": "two"},
        {"type": "image", "source": {"type": "url", "url": "https://x.example/a.png"}}]
    assert request["tools"] == [{"name": "lookup", "input_schema": {"type": "object"}, "description": "Find"}]
    assert request["tool_choice"] == {"type": "tool", "name": "lookup", "disable_parallel_tool_use": True}
