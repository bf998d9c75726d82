"""The simulator's Anthropic dialect, driven by the official anthropic SDK and by raw HTTP."""
from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from tests.conftest import ANTHROPIC_KEY as KEY

HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
TOOLS = [{"name": "lookup", "description": "Find a thing", "input_schema": {"type": "object", "properties": {}}}]


@pytest.fixture
def client(anthropic_sim):
    return anthropic.Anthropic(base_url=anthropic_sim.url, api_key=KEY, max_retries=0)


def raw_stream(sim, body: dict) -> list[tuple[str, dict]]:
    """(event name, data) of every SSE event; asserts each event's name is its data's type."""
    events = []
    with httpx.stream("POST", f"{sim.url}/v1/messages", headers=HEADERS, json={**body, "stream": True}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                assert data["type"] == name
                events.append((name, data))
    return events


def test_the_sdk_gets_an_answer_with_exact_usage(client, anthropic_sim):
    message = client.messages.create(model="sim-small", max_tokens=20, system="Be terse.",
                                     messages=[{"role": "user", "content": "echo: hello there"}])
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert [(b.type, b.text) for b in message.content] == [("text", "hello there")]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    last = anthropic_sim.stats()["last"][0]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (last["prompt_tokens"], 2)
    assert message.usage.cache_read_input_tokens == message.usage.cache_creation_input_tokens == 0

    capped = client.messages.create(model="sim-small", max_tokens=2, messages=[{"role": "user", "content": "echo: a b c d"}])
    assert capped.stop_reason == "max_tokens" and capped.content[0].text == "a b"
    stopped = client.messages.create(model="sim-small", max_tokens=20, stop_sequences=["c"],
                                     messages=[{"role": "user", "content": "echo: a b c d"}])
    assert (stopped.stop_reason, stopped.stop_sequence, stopped.content[0].text) == ("stop_sequence", "c", "a b ")


def test_a_stream_has_anthropics_events_in_order(client, anthropic_sim):
    events = raw_stream(anthropic_sim, {"model": "sim-small", "max_tokens": 20,
                                        "messages": [{"role": "user", "content": "echo: un deux trois"}]})
    names = [name for name, _ in events]
    assert names == ["message_start", "content_block_start", "ping"] + ["content_block_delta"] * 3 + [
        "content_block_stop", "message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["input_tokens"] > 0
    assert "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta") == "un deux trois"
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "end_turn" and delta["usage"] == {"output_tokens": 3}

    with client.messages.stream(model="sim-small", max_tokens=20,
                                messages=[{"role": "user", "content": "echo: un deux trois"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "un deux trois" and final.usage.output_tokens == 3
    assert final.usage.input_tokens == start["usage"]["input_tokens"]


def test_tool_use_whole_streamed_and_answered(client, anthropic_sim):
    first = client.messages.create(model="sim-small", max_tokens=50, tools=TOOLS,
                                   messages=[{"role": "user", "content": "call: flights to Rome"}])
    [use] = first.content
    assert first.stop_reason == "tool_use" and use.type == "tool_use" and use.id.startswith("toolu_")
    assert (use.name, use.input) == ("lookup", {"text": "flights to Rome"})

    events = raw_stream(anthropic_sim, {"model": "sim-small", "max_tokens": 50, "tools": TOOLS,
                                        "messages": [{"role": "user", "content": "call: trains"}]})
    block = events[1][1]["content_block"]
    assert block["type"] == "tool_use" and block["input"] == {} and block["name"] == "lookup"
    partial = [d["delta"]["partial_json"] for n, d in events if n == "content_block_delta"]
    assert partial[0] == "" and json.loads("".join(partial)) == {"text": "trains"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"

    answer = client.messages.create(model="sim-small", max_tokens=50, tools=TOOLS, messages=[
        {"role": "user", "content": "call: flights to Rome"},
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "3 flights"},
                                     {"type": "text", "text": "echo: got it"}]},
    ])
    assert answer.content[0].text == "got it" and answer.stop_reason == "end_turn"
    forced = client.messages.create(model="sim-small", max_tokens=50, tools=TOOLS,
                                    tool_choice={"type": "tool", "name": "lookup"},
                                    messages=[{"role": "user", "content": "no call asked"}])
    assert forced.content[0].type == "tool_use"


def test_the_key_and_the_version_header_are_required(anthropic_sim):
    body = {"model": "sim-small", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    url = f"{anthropic_sim.url}/v1/messages"
    for headers, status, kind in [
        ({"anthropic-version": "2023-06-01"}, 401, "authentication_error"),
        ({"x-api-key": "wrong", "anthropic-version": "2023-06-01"}, 401, "authentication_error"),
        ({"x-api-key": KEY}, 400, "invalid_request_error"),
    ]:
        response = httpx.post(url, headers=headers, json=body)
        assert response.status_code == status and response.json()["error"]["type"] == kind
        assert response.json()["type"] == "error" and response.headers["request-id"].startswith("req_")
    assert httpx.post(url, headers=HEADERS, json=body).status_code == 200
    bearer = {"authorization": f"Bearer {KEY}", "anthropic-version": "2023-06-01"}  # what the SDK 2.x sends
    assert httpx.post(url, headers=bearer, json=body).status_code == 200
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=anthropic_sim.url, api_key="nope", max_retries=0).models.list()


def test_errors_have_anthropics_types_and_statuses(client, anthropic_sim):
    url = f"{anthropic_sim.url}/v1/messages"
    missing = httpx.post(url, headers=HEADERS, json={"model": "sim-small", "messages": [{"role": "user", "content": "x"}]})
    assert missing.status_code == 400 and missing.json()["error"]["message"] == "max_tokens: Field required"
    with pytest.raises(anthropic.NotFoundError) as unknown:
        client.messages.create(model="claude-nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert unknown.value.body["error"] == {"type": "not_found_error", "message": "model: claude-nope"}
    for bad in ({"temperature": 1.5}, {"stop_sequences": [" "]}, {"messages": [{"role": "system", "content": "x"}]}):
        body = {"model": "sim-small", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], **bad}
        response = httpx.post(url, headers=HEADERS, json=body)
        assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error", bad

    for mode, error in [("http529", anthropic.OverloadedError), ("http429", anthropic.RateLimitError),
                        ("http500", anthropic.InternalServerError)]:
        anthropic_sim.configure(fail_rate=1.0, fail_mode=mode)
        with pytest.raises(error) as raised:
            client.messages.create(model="sim-small", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        assert raised.value.body["type"] == "error"
    assert httpx.post(f"{anthropic_sim.url}/v1/chat/completions", headers=HEADERS, json={}).status_code == 404


def test_a_failure_after_output_is_an_error_event_without_message_stop(anthropic_sim):
    anthropic_sim.configure(fail_rate=1.0, fail_mode="midstream", fail_after_tokens=2)
    events = raw_stream(anthropic_sim, {"model": "sim-small", "max_tokens": 20,
                                        "messages": [{"role": "user", "content": "echo: a b c d"}]})
    names = [name for name, _ in events]
    assert names[-1] == "error" and "message_stop" not in names and names.count("content_block_delta") == 2
    assert events[-1][1]["error"]["type"] == "overloaded_error"


def test_prompt_caching_writes_a_prefix_once_then_reads_it(client, anthropic_sim):
    system = [{"type": "text", "text": "policy " * 700, "cache_control": {"type": "ephemeral"}}]  # 4,900 bytes
    ask = dict(model="sim-small", max_tokens=5, system=system, messages=[{"role": "user", "content": "echo: ok"}])
    first, second = client.messages.create(**ask), client.messages.create(**ask)
    assert first.usage.cache_creation_input_tokens == 1225 and first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == 1225 and second.usage.cache_creation_input_tokens == 0
    total = anthropic_sim.stats()["last"][0]["prompt_tokens"]
    assert first.usage.input_tokens == second.usage.input_tokens == total - 1225

    short = [{"type": "text", "text": "tiny", "cache_control": {"type": "ephemeral"}}]  # under the 1,024-token minimum
    small = client.messages.create(**{**ask, "system": short})
    assert small.usage.cache_creation_input_tokens == small.usage.cache_read_input_tokens == 0


def test_models_are_listed_in_anthropics_shape(client):
    models = list(client.models.list())
    assert [(m.type, m.id) for m in models] == [("model", "sim-small"), ("model", "sim-large")]
