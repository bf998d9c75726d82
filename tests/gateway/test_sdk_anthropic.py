"""The anthropic SDK, unchanged, against a live server: messages, streaming, tools, count_tokens,
and Anthropic-shaped errors."""
import anthropic
import httpx
import pytest

from billing.invariants import check_ledger
from billing.models import Transfer
from tests.conftest import SIM_MODEL, sim_cost

TOOLS = [{"name": "lookup", "description": "Find a thing", "input_schema": {"type": "object"}}]


@pytest.fixture
def client(server, alice, sim_node):
    return anthropic.Anthropic(base_url=server.url, api_key=alice.secret_key, max_retries=0)


def test_message_with_system_prompt_is_answered_and_billed(client, alice, sim):
    message = client.messages.create(model=SIM_MODEL, max_tokens=40, system="You are terse.",
                                     messages=[{"role": "user", "content": "echo: bonjour le monde"}])
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].text == "bonjour le monde" and message.stop_reason == "end_turn"
    node = sim.stats()["last"][-1]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (node["prompt_tokens"], 3)
    transfer = Transfer.objects.get(kind="usage")
    assert transfer.amount == sim_cost(node["prompt_tokens"], 3) and check_ledger() == []


def test_max_tokens_stop_reason(client):
    message = client.messages.create(model=SIM_MODEL, max_tokens=2,
                                     messages=[{"role": "user", "content": "echo: one two three four"}])
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 2


def test_stream_events_and_cumulative_usage(client, alice):
    with client.messages.stream(model=SIM_MODEL, max_tokens=40,
                                messages=[{"role": "user", "content": "echo: un deux trois"}]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert {"content_block_start", "content_block_delta", "content_block_stop", "message_delta"} <= set(kinds)
    assert final.content[0].text == "un deux trois" and final.usage.output_tokens == 3
    transfer = Transfer.objects.get(kind="usage")
    assert final.usage.input_tokens == transfer.input_tokens and transfer.output_tokens == 3
    assert alice.wallet.reserved == 0 and check_ledger() == []


def test_raw_stream_has_ping_and_event_ids(server, alice, sim_node):
    body = {"model": SIM_MODEL, "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"x-api-key": alice.secret_key, "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", f"{server.api}/messages", headers=headers, json=body, timeout=30) as response:
        lines = list(response.iter_lines())
    assert "event: ping" in lines
    ids = [int(line[len("id: evt_"):]) for line in lines if line.startswith("id: ")]
    assert ids == list(range(1, len(ids) + 1))


def test_tool_use_round_trip_and_streamed_input_json(client):
    first = client.messages.create(model=SIM_MODEL, max_tokens=50, tools=TOOLS,
                                   messages=[{"role": "user", "content": "call: flights to Rome"}])
    assert first.stop_reason == "tool_use"
    use = next(block for block in first.content if block.type == "tool_use")
    assert use.name == "lookup" and use.input == {"text": "flights to Rome"}
    answer = client.messages.create(model=SIM_MODEL, max_tokens=50, tools=TOOLS, messages=[
        {"role": "user", "content": "call: flights to Rome"},
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "3 flights"},
                                     {"type": "text", "text": "echo: got it"}]},
    ])
    assert answer.content[0].text == "got it"
    with client.messages.stream(model=SIM_MODEL, max_tokens=50, tools=TOOLS,
                                messages=[{"role": "user", "content": "call: trains"}]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[-1].input == {"text": "trains"}


def test_count_tokens_is_free_and_grows_with_the_prompt(client, alice):
    short = client.messages.count_tokens(model=SIM_MODEL, messages=[{"role": "user", "content": "hi"}])
    longer = client.messages.count_tokens(model=SIM_MODEL, system="x" * 400,
                                          messages=[{"role": "user", "content": "hi"}])
    assert 0 < short.input_tokens < longer.input_tokens
    assert not Transfer.objects.filter(kind="usage").exists()


def test_errors_use_anthropics_shape(client, server, alice):
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model=SIM_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=0)
    assert bad.value.body["type"] == "error" and bad.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    stranger = anthropic.Anthropic(base_url=server.url, api_key="sk_live_nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as denied:
        stranger.messages.create(model=SIM_MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert denied.value.body["error"]["type"] == "authentication_error"
    missing = httpx.post(f"{server.api}/messages", headers={"x-api-key": alice.secret_key},
                         json={"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert missing.status_code == 400 and "max_tokens" in missing.json()["error"]["message"]
    assert not Transfer.objects.filter(kind="usage").exists()
