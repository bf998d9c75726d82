"""The openai SDK, unchanged, against a live server process and a simulator node."""
import openai
import pytest

from billing.invariants import check_ledger
from billing.models import Transfer
from gateway.models import RequestRecord
from tests.conftest import SIM_MODEL, sim_cost


@pytest.fixture
def client(server, alice, sim_node):
    return openai.OpenAI(base_url=server.api, api_key=alice.secret_key, max_retries=0)


def last_sim_request(sim):
    return sim.stats()["last"][-1]


def test_chat_completion_returns_answer_usage_node_and_bills_exact_cost(client, alice, sim):
    raw = client.chat.completions.with_raw_response.create(
        model=SIM_MODEL, messages=[{"role": "user", "content": "echo: hello private world"}], max_tokens=50
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "hello private world"
    assert completion.model == SIM_MODEL
    node = sim.stats()["last"][-1]
    assert completion.usage.prompt_tokens == node["prompt_tokens"]
    assert completion.usage.completion_tokens == node["completion_tokens"] == 3
    assert raw.headers["x-node-id"].startswith("node_") and raw.headers["x-request-id"].startswith("req_")
    assert completion.model_extra["node"]["attestation"] == "verified"
    assert completion.model_extra["node"]["confidential"] is True

    cost = sim_cost(completion.usage.prompt_tokens, 3)
    wallet = alice.wallet
    assert (wallet.balance, wallet.reserved) == (1_000_000 - cost, 0)
    transfer = Transfer.objects.get(kind="usage")
    assert (transfer.status, transfer.amount, transfer.price.version) == ("posted", cost, 1)
    record = RequestRecord.objects.get(request_id=raw.headers["x-request-id"])
    assert (record.cost, record.output_tokens, record.status_code, record.node_id) == (cost, 3, 200, raw.headers["x-node-id"])
    assert check_ledger() == []


def test_streaming_with_usage_chunk_and_event_ids(client, alice, server, sim):
    stream = client.chat.completions.create(
        model=SIM_MODEL,
        messages=[{"role": "user", "content": "Tell me something"}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == 12
    assert len(text.split()) == 12
    assert {c.id for c in chunks} == {chunks[0].id}
    assert alice.wallet.balance == 1_000_000 - sim_cost(usage.prompt_tokens, 12)
    assert check_ledger() == []


def test_stream_without_include_usage_has_no_usage_chunk_and_raw_sse_has_ids(server, alice, sim_node):
    import httpx

    with httpx.stream(
        "POST",
        f"{server.api}/chat/completions",
        headers={**alice.auth(), "X-Request-ID": "client-chosen-id-1"},
        json={"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True},
    ) as response:
        # the client's id is echoed beside ours; ours alone names the stream and its bill
        assert response.headers["x-client-request-id"] == "client-chosen-id-1"
        assert response.headers["x-request-id"].startswith("req_")
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    ids = [int(line[len("id: evt_"):]) for line in lines if line.startswith("id: ")]
    data = [line[len("data: "):] for line in lines if line.startswith("data: ")]
    assert ids == list(range(1, len(ids) + 1)) and len(ids) == len(data)
    assert data[-1] == "[DONE]" and not any('"usage"' in d for d in data)


def test_models_list_and_detail(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [SIM_MODEL]
    detail = client.models.retrieve(SIM_MODEL)
    assert detail.model_extra["pricing"]["output"] == 2_000_000
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
