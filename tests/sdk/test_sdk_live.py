"""The SDK against a live server and the node simulator: every resource, streams, typed errors."""
import time

import pytest
from private_inference import (
    AuthenticationError,
    Client,
    InsufficientBalanceError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)

from billing.invariants import check_ledger
from billing.models import Transfer
from tests.conftest import SIM_MODEL, make_tenant, sim_cost

HELLO = [{"role": "user", "content": "echo: one two three"}]


def settled(count=1, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        transfers = list(Transfer.objects.filter(kind="usage").order_by("id"))
        if len(transfers) >= count and all(t.status != "pending" for t in transfers):
            return transfers
        time.sleep(0.05)
    raise AssertionError("usage never settled")


def test_chat_completion_is_an_object_with_attributes_and_billed_once(client, alice, sim):
    completion = client.chat.completions.create(model=SIM_MODEL, messages=HELLO, max_tokens=20)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "one two three"
    assert completion.choices[0]["finish_reason"] == "stop"
    usage = completion.usage
    [transfer] = settled()
    assert (transfer.status, transfer.amount) == ("posted", sim_cost(usage.prompt_tokens, usage.completion_tokens))
    assert alice.wallet.balance == 1_000_000 - transfer.amount and check_ledger() == []


def test_chat_stream_yields_chunks_and_names_its_request(client, sim):
    stream = client.chat.completions.create(model=SIM_MODEL, messages=[{"role": "user", "content": "echo: a b c d e"}],
                                            max_tokens=20, stream=True, stream_options={"include_usage": True})
    assert stream.request_id.startswith("req_")
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
    assert text == "a b c d e"
    assert chunks[-1].usage.completion_tokens == 5
    [transfer] = settled()
    assert transfer.output_tokens == 5


def test_responses_and_messages_plain_and_streamed(client, sim):
    response = client.responses.create(model=SIM_MODEL, input="echo: red green", max_output_tokens=20)
    assert response.object == "response" and response.output[0].content[0].text == "red green"
    assert client.responses.retrieve(response.id).id == response.id
    events = list(client.responses.create(model=SIM_MODEL, input="echo: blue", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "blue"

    message = client.messages.create(model=SIM_MODEL, max_tokens=20, messages=[{"role": "user", "content": "echo: x y"}])
    assert message.type == "message" and message.content[0].text == "x y"
    events = list(client.messages.create(model=SIM_MODEL, max_tokens=20, stream=True,
                                         messages=[{"role": "user", "content": "echo: p q"}]))
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == "p q"
    assert len(settled(4)) == 4


def test_embeddings_models_nodes_balance(client, alice, sim_node, sim):
    vectors = client.embeddings.create(model=SIM_MODEL, input=["alpha", "beta"])
    assert [d.index for d in vectors.data] == [0, 1] and len(vectors.data[0].embedding) > 8
    models = client.models.list()
    assert SIM_MODEL in [m.id for m in models.data]
    assert client.models.retrieve(SIM_MODEL).id == SIM_MODEL
    [node] = client.nodes.list().data
    assert node.attestation == "verified" and SIM_MODEL in node.models and node.public_keys.encryption
    attestation = client.nodes.attestation(node.id)
    assert attestation.result == "verified" and attestation.evidence.format == "x509-report-v1"
    balance = client.usage()
    assert balance.object == "balance"
    assert balance.balance_micros == alice.wallet.balance and balance.available_micros <= balance.balance_micros


def test_keys_list_create_revoke(client, server):
    before = {k.id for k in client.keys.list().data}
    created = client.keys.create(name="from the sdk", scopes=["models"])
    assert created.key.startswith("sk_live_") and created.scopes == ["models"]
    assert created.id in {k.id for k in client.keys.list().data} - before
    with Client(api_key=created.key, base_url=server.url, max_retries=0) as scoped:
        assert scoped.models.list().data
        with pytest.raises(PermissionDeniedError) as denied:
            scoped.chat.completions.create(model=SIM_MODEL, messages=HELLO, max_tokens=5)
        assert denied.value.status_code == 403 and denied.value.code == "permission_denied"
        assert denied.value.request_id.startswith("req_")
        revoked = client.keys.revoke(created.id)
        assert revoked.status == "revoked"
        with pytest.raises(AuthenticationError) as refused:
            scoped.models.list()
        assert refused.value.status_code == 401 and refused.value.request_id


def test_errors_are_typed_with_the_servers_request_id(client, server, sim_node, transactional_db):
    with pytest.raises(NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=HELLO, max_tokens=5)
    assert missing.value.code == "model_not_found" and missing.value.request_id.startswith("req_")
    with pytest.raises(InvalidRequestError) as invalid:
        client.chat.completions.create(model=SIM_MODEL, messages="not a list", max_tokens=5)
    assert invalid.value.status_code == 400 and invalid.value.code == "invalid_request"
    with pytest.raises(AuthenticationError):
        Client(api_key="sk_live_wrong", base_url=server.url, max_retries=0).models.list()
    broke = make_tenant("broke", credit=0)
    with (Client(api_key=broke.secret_key, base_url=server.url, max_retries=0) as poor,
          pytest.raises(InsufficientBalanceError) as poor_error):
        poor.chat.completions.create(model=SIM_MODEL, messages=HELLO, max_tokens=5)
    assert poor_error.value.status_code == 402 and poor_error.value.type == "billing_error"


async def test_async_client_chat_stream_and_keys(aclient, sim):
    completion = await aclient.chat.completions.create(model=SIM_MODEL, messages=HELLO, max_tokens=20)
    assert completion.choices[0].message.content == "one two three"
    stream = await aclient.chat.completions.create(model=SIM_MODEL, messages=HELLO, max_tokens=20, stream=True)
    text = ""
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert text == "one two three" and stream.request_id
    assert (await aclient.keys.list()).data
    assert (await aclient.usage()).object == "balance"
