"""Tool calls from the simulator, shaped exactly as OpenAI sends them, over HTTP to a real process.

The simulator calls a function when the request has ``tools`` and ``tool_choice``
is not "none", and either ``tool_choice`` forces one ("required", or a named
function) or the last user message starts with ``call:``. The arguments are
``{"text": <the rest of that message>}``, streamed as one token per piece cut
before each space.
"""
from __future__ import annotations

import json
import math

import orjson
import pytest

from tests.nodes.conftest import WITH_USAGE, chat, post, sse

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    },
}
SEARCH = {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {}}}}
TOOLS = [WEATHER, SEARCH]
PIECES = ['{"text":', ' "weather', " in", ' Paris"}']  # the arguments, one token each


def tool_bytes(tools=TOOLS) -> int:
    return len(orjson.dumps(tools))


async def test_a_call_prefix_makes_a_tool_call(client):
    body = await post(client, "/v1/chat/completions", chat("call: weather in Paris", tools=TOOLS))
    [choice] = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["role"] == "assistant" and message["content"] is None
    [call] = message["tool_calls"]
    assert call["id"].startswith("call_") and len(call["id"]) > 10 and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"text": "weather in Paris"}'}
    assert json.loads(call["function"]["arguments"]) == {"text": "weather in Paris"}
    assert body["usage"]["completion_tokens"] == len(PIECES)
    # The tools count as prompt text, like a real chat template that renders them.
    assert body["usage"]["prompt_tokens"] == math.ceil((len("call: weather in Paris") + tool_bytes()) / 4) + 4


@pytest.mark.parametrize(
    ("text", "fields", "name", "arguments"),
    [
        ("hello there", {"tool_choice": {"type": "function", "function": {"name": "search"}}}, "search", "hello there"),
        ("call: x", {"tool_choice": {"type": "function", "function": {"name": "search"}}}, "search", "x"),
        ("hello there", {"tool_choice": "required"}, "get_weather", "hello there"),
        ("call:", {"tool_choice": "auto"}, "get_weather", ""),
    ],
)
async def test_tool_choice_picks_the_function(client, text, fields, name, arguments):
    body = await post(client, "/v1/chat/completions", chat(text, tools=TOOLS, **fields))
    [call] = body["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == name and json.loads(call["function"]["arguments"]) == {"text": arguments}
    assert body["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("call: x", {"tools": TOOLS, "tool_choice": "none"}),
        ("hello", {"tools": TOOLS}),  # "auto" without the prefix
        ("call: x", {}),  # no tools
    ],
)
async def test_otherwise_the_answer_is_text(client, text, fields):
    body = await post(client, "/v1/chat/completions", chat(text, max_tokens=3, **fields))
    message = body["choices"][0]["message"]
    assert message == {"role": "assistant", "content": " lorem ipsum dolor"}
    assert body["choices"][0]["finish_reason"] == "length"


async def test_max_tokens_cuts_the_arguments(client):
    body = await post(client, "/v1/chat/completions", chat("call: weather in Paris", tools=TOOLS, max_tokens=2))
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == "".join(PIECES[:2])
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 2


async def test_a_streamed_tool_call_follows_openai(client):
    request = chat("call: weather in Paris", tools=TOOLS, stream=True, stream_options=WITH_USAGE)
    events = await sse(client, "/v1/chat/completions", request)
    assert len(events) == 1 + len(PIECES) + 1 + 1 + 1  # header, one per piece, finish, usage, [DONE]
    opening = events[0]["choices"][0]
    [head] = opening["delta"]["tool_calls"]
    assert head["id"].startswith("call_")
    assert opening == {
        "index": 0,
        "delta": {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"index": 0, "id": head["id"], "type": "function", "function": {"name": "get_weather", "arguments": ""}}
            ],
        },
        "logprobs": None,
        "finish_reason": None,
    }
    deltas = [e["choices"][0]["delta"] for e in events[1 : 1 + len(PIECES)]]
    assert deltas == [{"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in PIECES]
    finish, usage, done = events[-3:]
    assert finish["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(PIECES)
    assert done == "[DONE]"
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == events[0]["id"] for e in events[:-1])


async def test_tool_results_and_earlier_calls_are_input_and_counted(client):
    arguments = '{"text": "Paris"}'
    messages = [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "call: Paris"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "(cached)"}]},
        {"role": "user", "content": "echo: thanks a lot"},
    ]
    body = await post(client, "/v1/chat/completions", {"model": "sim-small", "messages": messages, "tools": TOOLS})
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "thanks a lot"}
    text = "Use tools." + "call: Paris" + "get_weather" + arguments + "sunny, 21 C" + "(cached)" + "echo: thanks a lot"
    assert body["usage"]["prompt_tokens"] == math.ceil((len(text) + tool_bytes()) / 4) + 4 * len(messages)


@pytest.mark.parametrize(
    "fields",
    [
        {"tools": {"name": "x"}},
        {"tools": [{"type": "function", "function": {"description": "no name"}}]},
        {"tools": [{"type": "retrieval"}]},
        {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "missing"}}},
        {"tools": TOOLS, "tool_choice": "sometimes"},
        {"tool_choice": "required"},
        {"messages": [{"role": "tool", "content": "no id"}]},
        {"messages": [{"role": "user", "content": "x", "tool_calls": []}]},
        {"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function"}]}]},
    ],
)
async def test_malformed_tool_requests_are_refused(client, sim, fields):
    response = await client.post("/v1/chat/completions", json=chat("call: x", **fields))
    assert response.status_code == 400, fields
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert sim.stats()["requests"] == 0


async def test_a_call_message_can_name_the_tool_and_give_json_arguments(client):
    body = await post(client, "/v1/chat/completions", chat('call: search {"q": "tides", "n": 2}', tools=TOOLS))
    [call] = body["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "search"
    assert json.loads(call["function"]["arguments"]) == {"q": "tides", "n": 2}
    # A first word that names no tool is plain text for the first tool.
    body = await post(client, "/v1/chat/completions", chat("call: lookup tides", tools=TOOLS))
    [call] = body["choices"][0]["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"text": "lookup tides"}'}


async def test_after_a_tool_result_the_model_answers_with_it(client):
    messages = [
        {"role": "user", "content": "call: weather in Paris"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny and 21 C today"},
    ]
    body = await post(client, "/v1/chat/completions", {"model": "sim-small", "messages": messages, "tools": TOOLS})
    [choice] = body["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == "result: sunny and 21 C today"
    limited = await post(client, "/v1/chat/completions",
                         {"model": "sim-small", "messages": messages, "tools": TOOLS, "max_tokens": 3})
    assert limited["choices"][0]["message"]["content"] == "result: sunny and"
