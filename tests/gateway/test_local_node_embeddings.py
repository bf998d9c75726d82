"""Embeddings from the real local node (multilingual-e5-small-q4) through a live gateway, with the openai SDK.

Real processes: the gateway (uvicorn), ``manage.py run_local_node`` (SmolLM2 and
e5), PostgreSQL and Redis. The local node carries no attestation, so the project
opts in to non-confidential nodes, as ``bootstrap_demo`` does for the demo.
"""
from __future__ import annotations

import math

import httpx
import openai
import pytest

from billing.invariants import check_ledger
from billing.models import Transfer
from tests.conftest import cache_settle, start_local_node

pytestmark = pytest.mark.model

E5 = "multilingual-e5-small-q4"
PRICE = {"input_per_mtok": 1_000_000, "output_per_mtok": 0}  # 1 micro-unit per input token
CREDIT = 1_000_000


@pytest.fixture(scope="module")
def node_process():
    process, url = start_local_node()
    yield url
    process.stop()


@pytest.fixture
def client(server, alice, node_process):
    from billing.services import price_publish
    from console.services import project_update
    from nodes.nodeserver.embedders import MAX_REQUEST_TOKENS
    from nodes.services import node_upsert

    node_upsert(
        name="local node", base_url=f"{node_process}/v1", region="local",
        models=[{"model": E5, "context_window": MAX_REQUEST_TOKENS, "max_output_tokens": 0}],
    )  # fmt: skip
    project_update(project=alice.project, allow_non_confidential=True)
    price_publish(model=E5, **PRICE)
    cache_settle()
    return openai.OpenAI(base_url=server.api, api_key=alice.secret_key, max_retries=0)


def node_last(node_url: str) -> dict:
    return httpx.get(f"{node_url}/stats").json()["last"][0]


def cosine(a: list[float], b: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))


def test_sdk_embeddings_in_float_and_base64_bill_exactly_the_node_tokens(client, alice, node_process):
    texts = ["The cat is sleeping on the sofa.", "A cat naps on the couch.", "Interest rates rose this quarter."]
    raw = client.embeddings.with_raw_response.create(model=E5, input=texts, encoding_format="float")
    floats = raw.parse()
    assert raw.headers["x-node-attestation"] == "none"
    assert floats.model == E5 and [d.index for d in floats.data] == [0, 1, 2]
    assert floats.usage.prompt_tokens == node_last(node_process)["prompt_tokens"] > 3 * 2

    default = client.embeddings.create(model=E5, input=texts)  # the SDK asks for base64 and decodes it
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    assert default.usage.prompt_tokens == floats.usage.prompt_tokens

    cat, paraphrase, unrelated = (d.embedding for d in floats.data)
    assert len(cat) == 384 and abs(math.fsum(x * x for x in cat) - 1) < 1e-5
    assert cosine(cat, paraphrase) > cosine(cat, unrelated)

    single = client.embeddings.create(model=E5, input="passage: Hello world")
    assert single.usage.prompt_tokens == 6  # <s> ▁passage : ▁Hello ▁world </s>

    posted = Transfer.objects.filter(kind="usage", status="posted").order_by("id")
    tokens = [floats.usage.prompt_tokens, default.usage.prompt_tokens, 6]
    assert [(t.input_tokens, t.output_tokens, t.amount) for t in posted] == [(n, 0, n) for n in tokens]
    assert (alice.wallet.balance, alice.wallet.reserved) == (CREDIT - sum(tokens), 0)
    assert check_ledger() == []


def test_the_e5_prefix_convention_holds_through_the_gateway(client):
    typed = client.embeddings.create(model=E5, input="red apples", extra_body={"input_type": "passage"})
    prefixed, plain = client.embeddings.create(model=E5, input=["passage: red apples", "red apples"]).data
    assert typed.data[0].embedding == prefixed.embedding != plain.embedding


def test_bad_embedding_input_is_refused_and_nothing_is_charged(client, alice):
    for bad in ([], ["ok", 3], [""]):
        with pytest.raises(openai.BadRequestError) as caught:
            client.embeddings.create(model=E5, input=bad)
        assert caught.value.body["code"] == "invalid_request" and caught.value.body["param"].startswith("input")
    with pytest.raises(openai.BadRequestError):  # refused by the node, before the model runs
        client.embeddings.create(model=E5, input=["fine", "nul\u0000inside"])
    with pytest.raises(openai.BadRequestError):  # an embedding model writes no chat answer
        client.chat.completions.create(model=E5, messages=[{"role": "user", "content": "hi"}])
    assert not Transfer.objects.filter(kind="usage", status="posted").exists()
    assert (alice.wallet.balance, alice.wallet.reserved) == (CREDIT, 0)
    assert check_ledger() == []
