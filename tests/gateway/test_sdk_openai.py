"""The openai SDK, unchanged, against a live server: completions, embeddings, the Responses API
and tool calls, each billed exactly once at the node's usage."""
import json

import openai
import pytest

from billing.invariants import check_ledger
from billing.models import Transfer
from gateway.models import RequestRecord
from tests.conftest import SIM_MODEL, sim_cost

TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Find a thing",
                                           "parameters": {"type": "object", "properties": {"text": {"type": "string"}}}}}]


@pytest.fixture
def client(server, alice, sim_node):
    return openai.OpenAI(base_url=server.api, api_key=alice.secret_key, max_retries=0)


def billed_once(alice, prompt_tokens, completion_tokens):
    transfer = Transfer.objects.get(kind="usage")
    cost = sim_cost(prompt_tokens, completion_tokens)
    assert (transfer.status, transfer.amount, transfer.input_tokens, transfer.output_tokens) == (
        "posted", cost, prompt_tokens, completion_tokens)
    assert (alice.wallet.balance, alice.wallet.reserved) == (1_000_000 - cost, 0)
    assert check_ledger() == []
    return transfer


def test_legacy_completion(client, alice, sim):
    completion = client.completions.create(model=SIM_MODEL, prompt="echo: one two three", max_tokens=20)
    assert completion.object == "text_completion" and completion.choices[0].text == "one two three"
    node = sim.stats()["last"][-1]
    assert completion.usage.prompt_tokens == node["prompt_tokens"] and completion.usage.completion_tokens == 3
    billed_once(alice, node["prompt_tokens"], 3)
    assert RequestRecord.objects.get().endpoint == "completions"


def test_legacy_completion_stream_with_usage(client, alice, sim):
    stream = client.completions.create(model=SIM_MODEL, prompt="echo: a b c d", max_tokens=20, stream=True,
                                       stream_options={"include_usage": True})
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].text
        if chunk.usage:
            usage = chunk.usage
    assert text == "a b c d" and usage.completion_tokens == 4
    billed_once(alice, usage.prompt_tokens, 4)


def test_embeddings_of_a_string_and_of_an_array_bill_their_input_tokens(client, alice, sim):
    one = client.embeddings.create(model=SIM_MODEL, input="hello")
    assert len(one.data) == 1 and len(one.data[0].embedding) > 8
    many = client.embeddings.create(model=SIM_MODEL, input=["alpha", "beta", "gamma"])
    assert [d.index for d in many.data] == [0, 1, 2]
    assert many.usage.prompt_tokens == sim.stats()["last"][0]["prompt_tokens"] > 0
    posted = Transfer.objects.filter(kind="usage", status="posted").order_by("id")
    assert [t.input_tokens for t in posted] == [one.usage.prompt_tokens, many.usage.prompt_tokens]
    assert [t.amount for t in posted] == [one.usage.prompt_tokens, many.usage.prompt_tokens]  # 1 micro per input token
    assert check_ledger() == []


def test_embeddings_refuse_a_publishable_key(server, alice, sim_node):
    browser = openai.OpenAI(base_url=server.api, api_key=alice.publishable_key, max_retries=0,
                            default_headers={"Origin": "https://app.alice.example"})
    with pytest.raises(openai.PermissionDeniedError):
        browser.embeddings.create(model=SIM_MODEL, input="hello")
    assert not Transfer.objects.filter(kind="usage").exists()


def test_responses_create_retrieve_and_isolation(client, alice, charlie, server, sim):
    response = client.responses.create(model=SIM_MODEL, input="echo: kept for later", instructions="Be brief.",
                                       max_output_tokens=30)
    assert response.status == "completed" and response.output_text == "kept for later"
    assert response.usage.output_tokens == 3 and response.id.startswith("resp_")
    billed_once(alice, response.usage.input_tokens, 3)
    again = client.responses.retrieve(response.id)
    assert again.id == response.id and again.output_text == "kept for later"
    outsider = openai.OpenAI(base_url=server.api, api_key=charlie.secret_key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        outsider.responses.retrieve(response.id)
    browser = openai.OpenAI(base_url=server.api, api_key=alice.publishable_key, max_retries=0,
                            default_headers={"Origin": "https://app.alice.example"})
    with pytest.raises(openai.PermissionDeniedError):  # stored answers are for server-side keys
        browser.responses.retrieve(response.id)


def test_responses_stream_typed_events_end_with_usage(client, alice):
    with client.responses.stream(model=SIM_MODEL, input=[{"role": "user", "content": "echo: x y z"}],
                                 max_output_tokens=30) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds.count("response.output_text.delta") == 3 and kinds[-1] == "response.completed"
    assert final.output_text == "x y z" and final.usage.output_tokens == 3
    billed_once(alice, final.usage.input_tokens, 3)
    assert client.responses.retrieve(final.id).output_text == "x y z"


def test_responses_truncated_answer_is_incomplete(client):
    response = client.responses.create(model=SIM_MODEL, input="echo: one two three four five", max_output_tokens=2)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"


def test_chat_tool_call_streams_as_openai_deltas(client, alice):
    stream = client.chat.completions.create(
        model=SIM_MODEL, messages=[{"role": "user", "content": "call: weather in Oslo"}], tools=TOOLS,
        max_tokens=50, stream=True, stream_options={"include_usage": True})
    name, arguments, finish, usage = None, "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or ():
                name = name or call.function.name
                arguments += call.function.arguments or ""
            finish = choice.finish_reason or finish
    assert name == "lookup" and finish == "tool_calls"
    assert json.loads(arguments) == {"text": "weather in Oslo"}
    billed_once(alice, usage.prompt_tokens, usage.completion_tokens)


def test_responses_function_call_round_trip(client):
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    first = client.responses.create(model=SIM_MODEL, input="call: capital of Peru", tools=tools, max_output_tokens=50)
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "lookup" and json.loads(call.arguments) == {"text": "capital of Peru"}
    follow = client.responses.create(
        model=SIM_MODEL, tools=tools, max_output_tokens=50,
        input=[{"role": "user", "content": "call: capital of Peru"},
               {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
               {"type": "function_call_output", "call_id": call.call_id, "output": "Lima"},
               {"role": "user", "content": "echo: thanks"}])
    assert follow.output_text == "thanks"


def test_responses_stream_of_a_function_call(client):
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    with client.responses.stream(model=SIM_MODEL, input="call: tides", tools=tools, max_output_tokens=50) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    call = final.output[0]
    assert call.type == "function_call" and json.loads(call.arguments) == {"text": "tides"}


def test_image_parts_reach_a_node_that_accepts_images(client, alice, sim, sim_node):
    from nodes.services import node_upsert
    from tests.conftest import cache_settle

    sim.configure(modalities=["text", "image"])
    node_upsert(name="simulator", base_url=f"{sim.url}/v1", region="test-1", attestation="unverified", models=[
        {"model": SIM_MODEL, "context_window": 8192, "max_output_tokens": 256, "input_modalities": ["text", "image"]}])
    cache_settle()
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    completion = client.chat.completions.create(model=SIM_MODEL, max_tokens=10, messages=[
        {"role": "user", "content": [{"type": "text", "text": "echo: look"}, image]}])
    assert completion.choices[0].message.content == "look [image]"
    transfer = billed_once(alice, completion.usage.prompt_tokens, completion.usage.completion_tokens)
    # an image has no byte bound: the hold covered a whole context window of input
    assert transfer.pending_amount == 8192 * 1 + 10 * 2
