"""Hosted providers end to end: one key, the gateway (a uvicorn process), and two provider stand-ins
(simulator processes speaking Anthropic's Messages API and OpenAI's API, each behind its own key),
reached through the unchanged openai and anthropic SDKs; billed at the provider's reported usage."""
from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from billing.invariants import check_ledger
from billing.models import Transfer
from tests.conftest import ANTHROPIC_KEY, OPENAI_KEY, SIM_PRICE, cache_settle, sim_cost

CLAUDE, GPT = "claude-sim", "gpt-sim"
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Find a thing",
                                           "parameters": {"type": "object", "properties": {"text": {"type": "string"}}}}}]
START = 1_000_000  # each tenant's credit


def served(model: str, upstream: str, **extra) -> list[dict]:
    return [{"model": model, "upstream_model": upstream, "context_window": 8192, "max_output_tokens": 256, **extra}]


def provider_node(name: str, url: str, adapter: str, models: list[dict], key: str, *, load: float = 0.0):
    from nodes.models import Node
    from nodes.services import node_credentials_set, node_upsert

    node = node_upsert(name=name, base_url=url, adapter=adapter, region="us-east", models=models)
    node_credentials_set(node=node, credentials=key)
    Node.objects.filter(id=node.id).update(load=load)  # the router tries the least loaded first
    return node


@pytest.fixture
def providers(server, alice, anthropic_sim, openai_sim):
    """claude-sim on an Anthropic-dialect simulator, gpt-sim on an OpenAI-provider simulator (a reasoning
    model upstream), both priced; alice's project allows non-confidential nodes."""
    from billing.services import price_publish
    from console.services import project_update

    project_update(project=alice.project, allow_non_confidential=True)
    nodes = {
        CLAUDE: provider_node("anthropic", anthropic_sim.url, "provider-anthropic",
                              served(CLAUDE, "sim-small", input_modalities=["text", "image"]), ANTHROPIC_KEY),
        GPT: provider_node("openai", f"{openai_sim.url}/v1", "provider-openai", served(GPT, "gpt-5-mini"), OPENAI_KEY),
    }
    for model in nodes:
        price_publish(model=model, **SIM_PRICE)
    cache_settle()
    return nodes


def backup_for_claude(openai_sim):
    """A second, more loaded node serving claude-sim: an OpenAI-compatible provider, tried second."""
    node = provider_node("backup", f"{openai_sim.url}/v1", "provider-compatible", served(CLAUDE, "sim-small"),
                         OPENAI_KEY, load=0.9)
    cache_settle()
    return node


@pytest.fixture
def oa(server, alice):
    return openai.OpenAI(base_url=server.api, api_key=alice.secret_key, max_retries=0)


def usage_transfers() -> list[Transfer]:
    return list(Transfer.objects.filter(kind="usage").order_by("id"))


def assert_billed(alice, expected: list[tuple[str, int, int, int]]) -> None:
    """(model, input tokens, cached input tokens, output tokens) per request, each posted once at its exact cost."""
    transfers = usage_transfers()
    got = [(t.model, t.input_tokens, t.cached_input_tokens, t.output_tokens) for t in transfers]
    assert got == expected
    costs = [(i - c) * 1 + c // 2 + o * 2 for _, i, c, o in expected]  # SIM_PRICE: 1, cached 0.5, 2 per token
    assert [(t.status, t.amount) for t in transfers] == [("posted", cost) for cost in costs]
    assert (alice.wallet.balance, alice.wallet.reserved) == (START - sum(costs), 0)
    assert check_ledger() == []


def test_one_key_reaches_both_providers_through_the_openai_sdk(oa, alice, providers, anthropic_sim, openai_sim):
    expected = []
    for model, sim in ((CLAUDE, anthropic_sim), (GPT, openai_sim)):
        raw = oa.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "echo: hello from afar"}], max_tokens=20)
        reply = raw.parse()
        assert reply.choices[0].message.content == "hello from afar" and reply.model == model
        assert raw.headers["x-node-attestation"] == "none" and raw.headers["x-node-id"] == providers[model].public_id
        assert reply.model_extra["node"] == {"id": providers[model].public_id, "attestation": "none",
                                             "confidential": False, "region": "us-east"}
        upstream = sim.stats()["last"][0]
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (upstream["prompt_tokens"], 3)
        expected.append((model, upstream["prompt_tokens"], 0, 3))
    assert_billed(alice, expected)


def test_streams_carry_the_providers_usage_and_are_billed_by_it(oa, alice, providers, anthropic_sim, openai_sim):
    expected = []
    for model, sim in ((CLAUDE, anthropic_sim), (GPT, openai_sim)):
        stream = oa.chat.completions.create(model=model, messages=[{"role": "user", "content": "echo: un deux trois quatre"}],
                                            max_tokens=20, stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "un deux trois quatre"
        assert chunks[0].model_extra["node"]["attestation"] == "none"
        upstream = sim.stats()["last"][0]
        assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (upstream["prompt_tokens"], 4)
        expected.append((model, upstream["prompt_tokens"], 0, 4))
    assert_billed(alice, expected)


def test_tool_calls_through_the_anthropic_provider(oa, alice, providers, anthropic_sim):
    first = oa.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "call: flights to Rome"}],
                                       tools=TOOLS, max_tokens=50)
    [call] = first.choices[0].message.tool_calls
    assert first.choices[0].finish_reason == "tool_calls" and call.function.name == "lookup"
    assert json.loads(call.function.arguments) == {"text": "flights to Rome"}

    stream = oa.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "call: trains"}],
                                        tools=TOOLS, max_tokens=50, stream=True)
    arguments = "".join(c.choices[0].delta.tool_calls[0].function.arguments or ""
                        for c in stream if c.choices and c.choices[0].delta.tool_calls)
    assert json.loads(arguments) == {"text": "trains"}

    answer = oa.chat.completions.create(model=CLAUDE, tools=TOOLS, max_tokens=50, messages=[
        {"role": "user", "content": "call: flights to Rome"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "3 flights"},
        {"role": "user", "content": "echo: booked"},
    ])
    assert answer.choices[0].message.content == "booked"
    assert len(usage_transfers()) == 3 and check_ledger() == []


def test_the_anthropic_sdk_reaches_both_providers(server, alice, providers, anthropic_sim, openai_sim):
    client = anthropic.Anthropic(base_url=server.url, api_key=alice.secret_key, max_retries=0)
    expected = []
    for model, sim in ((CLAUDE, anthropic_sim), (GPT, openai_sim)):
        message = client.messages.create(model=model, max_tokens=20, system="Be brief.",
                                         messages=[{"role": "user", "content": "echo: bonjour le monde"}])
        assert message.content[0].text == "bonjour le monde" and message.stop_reason == "end_turn"
        assert message.model_extra["node"]["confidential"] is False
        upstream = sim.stats()["last"][0]
        assert (message.usage.input_tokens, message.usage.output_tokens) == (upstream["prompt_tokens"], 3)
        expected.append((model, upstream["prompt_tokens"], 0, 3))

        with client.messages.stream(model=model, max_tokens=20,
                                    messages=[{"role": "user", "content": "echo: a b"}]) as stream:
            final = stream.get_final_message()
        upstream = sim.stats()["last"][0]
        assert final.content[0].text == "a b" and final.usage.output_tokens == 2
        assert final.usage.input_tokens == upstream["prompt_tokens"]
        expected.append((model, upstream["prompt_tokens"], 0, 2))
    assert_billed(alice, expected)


def test_prompt_cache_reads_are_billed_at_the_cached_price(oa, alice, providers, anthropic_sim):
    system = {"role": "system", "content": [{"type": "text", "text": "rules " * 800, "cache_control": {"type": "ephemeral"}}]}
    ask = dict(model=CLAUDE, max_tokens=5, messages=[system, {"role": "user", "content": "echo: ok"}])
    written, read = oa.chat.completions.create(**ask), oa.chat.completions.create(**ask)
    total = anthropic_sim.stats()["last"][0]["prompt_tokens"]
    assert written.usage.prompt_tokens == read.usage.prompt_tokens == total
    assert (written.usage.prompt_tokens_details.cached_tokens, read.usage.prompt_tokens_details.cached_tokens) == (0, 1200)
    assert_billed(alice, [(CLAUDE, total, 0, 1), (CLAUDE, total, 1200, 1)])


def test_cache_breakpoints_from_the_anthropic_sdk_reach_the_anthropic_provider(server, alice, providers, anthropic_sim):
    client = anthropic.Anthropic(base_url=server.url, api_key=alice.secret_key, max_retries=0)
    system = [{"type": "text", "text": "rules " * 800, "cache_control": {"type": "ephemeral"}}]
    ask = dict(model=CLAUDE, max_tokens=5, system=system, messages=[{"role": "user", "content": "echo: ok"}])
    written, read = client.messages.create(**ask), client.messages.create(**ask)
    total = anthropic_sim.stats()["last"][0]["prompt_tokens"]
    assert (written.usage.input_tokens, written.usage.cache_read_input_tokens) == (total, 0)
    assert (read.usage.input_tokens, read.usage.cache_read_input_tokens) == (total - 1200, 1200)
    assert_billed(alice, [(CLAUDE, total, 0, 1), (CLAUDE, total, 1200, 1)])


def test_a_project_that_does_not_allow_non_confidential_nodes_gets_503_and_reserves_nothing(
    server, charlie, providers, anthropic_sim, openai_sim
):
    client = openai.OpenAI(base_url=server.api, api_key=charlie.secret_key, max_retries=0)
    for model in (CLAUDE, GPT):
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5)
        assert refused.value.status_code == 503 and refused.value.body["code"] == "no_nodes_available"
        assert "non-confidential" in refused.value.body["message"] and refused.value.response.headers["retry-after"]
    assert not Transfer.objects.filter(project=charlie.project).exists()  # no reservation, not even a voided one
    assert (charlie.wallet.balance, charlie.wallet.reserved) == (START, 0)
    assert anthropic_sim.stats()["requests"] == openai_sim.stats()["requests"] == 0
    listed = httpx.get(f"{server.api}/nodes", headers=charlie.auth()).json()
    assert listed == {"object": "list", "data": []}


def test_retryable_provider_errors_fail_over_to_the_next_node(oa, alice, providers, anthropic_sim, openai_sim):
    backup = backup_for_claude(openai_sim)
    anthropic_sim.configure(fail_rate=1.0, fail_mode="http529")  # Anthropic is overloaded
    raw = oa.chat.completions.with_raw_response.create(
        model=CLAUDE, messages=[{"role": "user", "content": "echo: still served"}], max_tokens=20)
    assert raw.parse().choices[0].message.content == "still served" and raw.headers["x-node-id"] == backup.public_id
    assert anthropic_sim.stats()["failed_injected"] == 1
    assert_billed(alice, [(CLAUDE, openai_sim.stats()["last"][0]["prompt_tokens"], 0, 2)])


def test_a_rejected_provider_key_fails_over_a_stream_and_is_never_shown(server, oa, alice, providers, anthropic_sim,
                                                                        openai_sim):
    from nodes.services import node_credentials_set

    backup = backup_for_claude(openai_sim)
    node_credentials_set(node=providers[CLAUDE], credentials="sk-ant-revoked-key-8086")
    cache_settle()
    with httpx.stream("POST", f"{server.api}/chat/completions", headers=alice.auth(), timeout=30, json={
        "model": CLAUDE, "messages": [{"role": "user", "content": "echo: via the backup"}], "max_tokens": 20,
        "stream": True, "stream_options": {"include_usage": True},
    }) as response:
        body = response.read().decode()
    assert response.status_code == 200 and response.headers["x-node-id"] == backup.public_id
    chunks = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "via the backup"
    assert anthropic_sim.stats()["requests"] == 0  # refused at the door: 401 before any generation
    assert_billed(alice, [(CLAUDE, openai_sim.stats()["last"][0]["prompt_tokens"], 0, 3)])

    for key in ("sk-ant-revoked-key-8086", ANTHROPIC_KEY, OPENAI_KEY):
        assert key not in body
    server_log = "".join(server.process.output)
    assert "8086" not in server_log and ANTHROPIC_KEY not in server_log and OPENAI_KEY not in server_log
    listed = httpx.get(f"{server.api}/nodes", headers=alice.auth())
    ids = {n["id"]: n["attestation"] for n in listed.json()["data"]}
    assert ids == {providers[CLAUDE].public_id: "none", providers[GPT].public_id: "none", backup.public_id: "none"}
    for key in ("8086", ANTHROPIC_KEY, OPENAI_KEY):
        assert key not in listed.text


def test_when_every_provider_fails_the_client_gets_502_and_pays_nothing(oa, alice, providers, anthropic_sim):
    anthropic_sim.configure(fail_rate=1.0, fail_mode="http500")
    with pytest.raises(openai.APIStatusError) as failed:
        oa.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert failed.value.status_code == 502 and failed.value.body["code"] == "upstream_unavailable"
    assert not Transfer.objects.filter(kind="usage", status="posted").exists()
    assert (alice.wallet.balance, alice.wallet.reserved) == (START, 0) and check_ledger() == []


def test_permanent_provider_errors_are_400_without_failover_or_charge(oa, alice, providers, anthropic_sim, openai_sim):
    backup_for_claude(openai_sim)
    with pytest.raises(openai.BadRequestError) as whitespace:  # Anthropic refuses a whitespace-only stop sequence
        oa.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "hi"}], max_tokens=5, stop=[" "])
    assert whitespace.value.body["code"] == "invalid_request" and "stop_sequences" in whitespace.value.body["message"]
    with pytest.raises(openai.BadRequestError) as hot:  # OpenAI refuses temperature above 2
        oa.chat.completions.create(model=GPT, messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=3)
    assert hot.value.body["code"] == "invalid_request"
    with pytest.raises(openai.BadRequestError) as legacy:  # Anthropic has no legacy completions
        oa.completions.create(model=CLAUDE, prompt="hi", max_tokens=5)
    assert "not supported" in legacy.value.body["message"]
    assert openai_sim.stats()["requests"] == 0  # no failover: the backup would have answered the stop request
    assert not Transfer.objects.filter(kind="usage", status="posted").exists()
    assert (alice.wallet.balance, alice.wallet.reserved) == (START, 0) and check_ledger() == []


def test_a_provider_failing_mid_answer_ends_the_stream_with_an_error_and_bills_what_was_delivered(
    oa, alice, providers, anthropic_sim
):
    anthropic_sim.configure(fail_rate=1.0, fail_mode="midstream", fail_after_tokens=2)
    text, error = "", None
    try:
        for chunk in oa.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "echo: a b c d e"}],
                                                max_tokens=20, stream=True):
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
    except openai.APIError as exc:
        error = exc
    assert text == "a b" and error is not None and "mid-answer" in str(error)
    upstream = anthropic_sim.stats()["last"][0]
    [transfer] = usage_transfers()
    assert (transfer.status, transfer.input_tokens, transfer.output_tokens) == ("posted", upstream["prompt_tokens"], 2)
    assert transfer.amount == sim_cost(upstream["prompt_tokens"], 2) and check_ledger() == []


def test_a_failover_log_line_never_quotes_a_rejected_key(server, oa, alice, providers, openai_sim):
    """Failures before the first token are logged with the node's error, and OpenAI's 401 message quotes
    part of the key it was sent: neither a provider node nor a plain OpenAI-compatible one passes it on."""
    from nodes.models import Node
    from nodes.services import node_credentials_set, node_upsert

    leaky = "sk-proj-leaky-key-5150"
    provider_node("hosted", f"{openai_sim.url}/v1", "provider-openai", served(CLAUDE, "sim-small"), leaky)
    plain = node_upsert(name="plain", base_url=f"{openai_sim.url}/v1", models=served(CLAUDE, "sim-small"))
    node_credentials_set(node=plain, credentials=leaky)
    Node.objects.filter(id=providers[CLAUDE].id).update(load=0.9)  # the good node is tried last
    cache_settle()
    before = len(server.process.output)
    reply = oa.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "echo: fine"}], max_tokens=5)
    assert reply.choices[0].message.content == "fine"
    logged = "".join(server.process.output[before:])
    assert logged.count("failed before the first token") == 2 and "refused" in logged
    assert "5150" not in logged and "sk-" not in logged
