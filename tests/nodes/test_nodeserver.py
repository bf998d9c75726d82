"""The node server as the gateway meets it: a real process, spoken to over HTTP.

The simulator comes from the shared ``sim`` fixture (``manage.py
run_node_simulator`` in a subprocess, reset before each test); the llama test
starts ``manage.py run_local_node`` itself. No test touches the database.
"""
from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import sys
import time

import httpx
import pytest

from tests.conftest import Process, free_port
from tests.nodes.conftest import WITH_USAGE, chat, contents, post, sse, wait_idle

WORDS = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit"]
MODEL = "smollm2-135m-instruct"


# --- the OpenAI surface --------------------------------------------------------------


async def test_health_and_models(client):
    health = (await client.get("/health")).json()
    assert health == {"status": "ok", "engine": "simulator", "models": ["sim-small", "sim-large"], "active": 0}
    models = (await client.get("/v1/models")).json()
    assert models["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in models["data"]] == [
        ("sim-small", "model", "node"),
        ("sim-large", "model", "node"),
    ]
    assert all(isinstance(m["created"], int) for m in models["data"])


async def test_chat_answer_and_exact_usage(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "héllo wörld"}]
    response = await client.post("/v1/chat/completions", json={"model": "sim-large", "messages": messages})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "sim-large"
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant"
    words = choice["message"]["content"].split()
    assert len(words) == 16 and words[:8] == WORDS  # --completion-tokens default
    assert choice["message"]["content"].startswith(" lorem")
    assert choice["finish_reason"] == "stop"
    # 9 + 13 UTF-8 bytes -> ceil(22 / 4) = 6, plus 4 per message.
    assert body["usage"] == {
        "prompt_tokens": 14,
        "completion_tokens": 16,
        "total_tokens": 30,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert body["usage"]["prompt_tokens"] <= 22 + 8 * 2 + 64  # the gateway's reservation bound


async def test_max_tokens_echo_and_content_parts(client):
    body = await post(client, "/v1/chat/completions", chat("hi", max_tokens=5))
    assert body["choices"][0]["message"]["content"] == " lorem ipsum dolor sit amet"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5

    body = await post(client, "/v1/chat/completions", chat("hi", max_tokens=9, max_completion_tokens=2))
    assert body["usage"]["completion_tokens"] == 2

    parts = [{"type": "text", "text": "echo: The quick "}, {"type": "text", "text": "brown\tfox"}]
    body = await post(client, "/v1/chat/completions", chat(parts))
    assert body["choices"][0]["message"]["content"] == "The quick brown fox"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 4
    assert body["usage"]["prompt_tokens"] == math.ceil(len("echo: The quick brown\tfox") / 4) + 4

    body = await post(client, "/v1/chat/completions", chat("echo: one two three", max_tokens=2))
    assert body["choices"][0]["message"]["content"] == "one two"
    assert body["choices"][0]["finish_reason"] == "length"

    image = [{"type": "image_url", "image_url": {"url": "data:,"}}]
    response = await client.post("/v1/chat/completions", json=chat(image))
    assert response.status_code == 400


async def test_stream_with_usage(client):
    request = chat("echo: alpha beta gamma delta", stream=True, stream_options=WITH_USAGE)
    events = await sse(client, "/v1/chat/completions", request)
    assert len(events) == 1 + 4 + 1 + 1 + 1  # role, one per token, finish, usage, [DONE]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert contents(events) == ["alpha", " beta", " gamma", " delta"]
    finish, usage, done = events[-3:]
    assert finish["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 4
    assert usage["usage"]["prompt_tokens"] == math.ceil(len("echo: alpha beta gamma delta") / 4) + 4
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 4
    assert done == "[DONE]"
    chunks = events[:-1]
    assert {c["id"] for c in chunks} == {events[0]["id"]} and events[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["usage"] is None for c in chunks[:-1])  # OpenAI: null until the usage chunk


async def test_stream_without_usage(client):
    events = await sse(client, "/v1/chat/completions", chat("hi", stream=True, stream_options={"include_usage": False}))
    assert len(events) == 1 + 16 + 1 + 1
    assert all("usage" not in e for e in events[:-1])
    assert [c.strip() for c in contents(events)][:8] == WORDS
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    events = await sse(client, "/v1/chat/completions", chat("hi", stream=True, max_tokens=3))
    assert len(contents(events)) == 3 and events[-2]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in e for e in events[:-1])


async def test_text_completions(client):
    body = await post(client, "/v1/completions", {"model": "sim-small", "prompt": "abcdefghi", "max_tokens": 3})
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"][0]["text"] == " lorem ipsum dolor"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["prompt_tokens"] == 3 and body["usage"]["completion_tokens"] == 3  # ceil(9 / 4)

    request = {"model": "sim-small", "prompt": "echo: x y", "stream": True, "stream_options": {"include_usage": True}}
    events = await sse(client, "/v1/completions", request)
    assert [e["choices"][0]["text"] for e in events[:3]] == ["x", " y", ""]  # no role chunk here
    assert events[2]["choices"][0]["finish_reason"] == "stop"
    assert all(e["object"] == "text_completion" for e in events[:-1])
    assert events[3]["choices"] == [] and events[3]["usage"]["completion_tokens"] == 2
    assert events[3]["usage"]["prompt_tokens"] == 3  # ceil(9 / 4)
    assert events[4] == "[DONE]"


async def test_stop_strings(client):
    body = await post(client, "/v1/chat/completions", chat("echo: a b STOP c d", stop="STOP"))
    assert body["choices"][0]["message"]["content"] == "a b "
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 3  # the token that completed the stop string counts

    events = await sse(client, "/v1/chat/completions", chat("echo: a b STOP c d", stop=["ST", "zz"], stream=True))
    assert "".join(contents(events)) == "a b "
    assert events[-2]["choices"][0]["finish_reason"] == "stop"

    body = await post(client, "/v1/chat/completions", chat("echo: a bS", stop="S c"))
    assert body["choices"][0]["message"]["content"] == "a bS"  # a held-back partial match is released at the end


async def test_embeddings(client, sim):
    body = await post(client, "/v1/embeddings", {"model": "sim-small", "input": ["hello", "world!", "hello"]})
    assert body["object"] == "list" and body["model"] == "sim-small"
    vectors = [d["embedding"] for d in body["data"]]
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(len(v) == 16 and abs(math.fsum(x * x for x in v) - 1) < 1e-9 for v in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    assert body["usage"] == {"prompt_tokens": 2 + 2 + 2, "total_tokens": 6}  # ceil(5 / 4), ceil(6 / 4), ceil(5 / 4)

    request = {"model": "sim-small", "input": "hello", "encoding_format": "base64"}
    single = await post(client, "/v1/embeddings", request)
    decoded = struct.unpack("<16f", base64.b64decode(single["data"][0]["embedding"]))
    assert all(abs(a - b) < 1e-6 for a, b in zip(decoded, vectors[0]))
    stats = sim.stats()  # embeddings are counted, most recent first
    assert (stats["requests"], stats["completed"], stats["tokens_generated"]) == (2, 2, 0)
    assert [(r["prompt_tokens"], r["completion_tokens"], r["outcome"]) for r in stats["last"]] == [
        (2, 0, "completed"),
        (6, 0, "completed"),
    ]
    assert stats["last"][0]["id"].startswith("emb-") and stats["last"][0]["model"] == "sim-small"


async def test_errors_use_the_openai_envelope(client, sim):
    response = await client.post("/v1/chat/completions", json={**chat("x"), "model": "gpt-9"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert set(response.json()["error"]) == {"message", "type", "code"}

    for bad in (b"{not json", b"[1]"):
        response = await client.post("/v1/chat/completions", content=bad)
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    invalid = (chat("x", max_tokens=0), chat("x", stop=[1]), chat("x", temperature=5), chat("x", messages=[]))
    for body in invalid:
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 400, body
        assert response.json()["error"]["type"] == "invalid_request_error"
    response = await client.post("/v1/completions", json={"model": "sim-small"})
    assert response.status_code == 400
    response = await client.get("/v1/nothing")
    assert response.status_code == 404 and "error" in response.json()
    assert sim.stats()["requests"] == 0  # rejected before reaching the engine


# --- timing and concurrency ----------------------------------------------------------------


async def test_latency_and_pacing(client, sim):
    sim.configure(ttft_ms=300, tokens_per_s=50)
    started = time.monotonic()
    arrivals = []
    async with client.stream("POST", "/v1/chat/completions", json=chat("hi", max_tokens=6, stream=True)) as response:
        async for line in response.aiter_lines():
            if '"content":"' in line and '"content":""' not in line:
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 6
    assert 0.28 <= arrivals[0] < 1.0  # time to first token
    assert arrivals[-1] - arrivals[0] >= 5 / 50 * 0.9  # paced at 50 tokens/s
    assert arrivals[-1] < 1.5

    started = time.monotonic()
    response = await client.post("/v1/chat/completions", json=chat("hi", max_tokens=6))
    assert response.status_code == 200
    assert 0.3 + 5 / 50 * 0.9 <= time.monotonic() - started < 1.5


async def test_requests_run_concurrently(client, sim):
    sim.configure(ttft_ms=400)
    started = time.monotonic()
    tasks = [asyncio.create_task(client.post("/v1/chat/completions", json=chat("hi", max_tokens=2))) for _ in range(20)]
    await asyncio.sleep(0.2)
    assert (await client.get("/health")).json()["active"] == 20
    responses = await asyncio.gather(*tasks)
    assert all(r.status_code == 200 for r in responses)
    assert time.monotonic() - started < 1.5  # one after another would take 8 s
    stats = sim.stats()
    assert stats["completed"] == 20 and stats["tokens_generated"] == 40


# --- failures and cancellation ---------------------------------------------------------------


async def test_injected_http_errors(client, sim):
    sim.configure(fail_rate=1, fail_mode="http500")
    response = await client.post("/v1/chat/completions", json=chat("hi", stream=True))
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"

    sim.configure(fail_mode="http429")
    response = await client.post("/v1/chat/completions", json=chat("hi"))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"

    stats = sim.stats()
    assert stats["failed_injected"] == 2 and stats["completed"] == 0
    assert [r["outcome"] for r in stats["last"]] == ["failed", "failed"]


async def test_injected_disconnect(client, sim):
    sim.configure(fail_rate=1, fail_mode="disconnect")
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post("/v1/chat/completions", json=chat("hi"))
    sim.configure(fail_rate=0)
    assert (await client.post("/v1/chat/completions", json=chat("hi"))).status_code == 200
    stats = sim.stats()
    assert (stats["failed_injected"], stats["completed"]) == (1, 1)


async def test_injected_midstream_drop(client, sim):
    sim.configure(fail_rate=1, fail_mode="midstream", fail_after_tokens=3)
    lines: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        request = chat("hi", stream=True, stream_options=WITH_USAGE)
        async with client.stream("POST", "/v1/chat/completions", json=request) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                lines.append(line)
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert [e["choices"][0]["delta"] for e in events] == [
        {"role": "assistant", "content": ""},
        {"content": " lorem"},
        {"content": " ipsum"},
        {"content": " dolor"},
    ]
    assert "data: [DONE]" not in lines
    stats = await wait_idle(sim)
    assert stats["failed_injected"] == 1
    assert stats["last"][0]["completion_tokens"] == 3 and stats["last"][0]["outcome"] == "failed"


async def test_injected_hang_until_the_client_gives_up(client, sim):
    sim.configure(fail_rate=1, fail_mode="hang")
    with pytest.raises(httpx.ReadTimeout):
        await client.post("/v1/chat/completions", json=chat("hi"), timeout=0.5)
    stats = await wait_idle(sim)
    assert stats["failed_injected"] == 1 and stats["last"][0]["outcome"] == "failed"


async def test_fail_rate_follows_the_seed(client, sim):
    async def pattern() -> list[int]:
        sim.configure(fail_rate=0.5, fail_mode="http500")
        request = chat("hi", max_tokens=1)
        return [(await client.post("/v1/chat/completions", json=request)).status_code for _ in range(30)]

    first = await pattern()
    assert 5 <= first.count(500) <= 25 and first.count(200) == 30 - first.count(500)
    sim.reset()  # re-seeds the draws
    assert await pattern() == first
    assert sim.stats()["failed_injected"] == first.count(500)


async def test_client_disconnect_stops_generation(client, sim):
    sim.configure(tokens_per_s=20)
    async with client.stream("POST", "/v1/chat/completions", json=chat("hi", max_tokens=200, stream=True)) as response:
        seen = 0
        async for line in response.aiter_lines():
            seen += '"content":" ' in line
            if seen == 3:
                break  # leaving the block closes the connection
    stats = await wait_idle(sim)
    assert stats["cancelled"] == 1 and stats["completed"] == 0
    assert stats["last"][0]["outcome"] == "cancelled" and stats["last"][0]["stream"] is True
    generated = stats["tokens_generated"]
    assert 3 <= generated <= 5
    await asyncio.sleep(0.3)  # at 20 tokens/s a runaway generation would add ~6 tokens
    assert sim.stats()["tokens_generated"] == generated


async def test_runtime_config(client, sim):
    response = await client.post("/_sim/config", json={"ttft_ms": 5, "completion_tokens": 2})
    assert response.json() == {
        "ttft_ms": 5, "tokens_per_s": 0.0, "completion_tokens": 2,
        "fail_rate": 0.0, "fail_mode": "http500", "fail_after_tokens": 3, "modalities": ["text"], "pull_hold": False, "image_limit": 0,
        "attestation_mode": "honest", "sealed_mode": "honest",
    }  # fmt: skip
    body = await post(client, "/v1/chat/completions", chat("hi"))
    assert body["usage"]["completion_tokens"] == 2
    invalid = (
        {"fail_rate": 2}, {"fail_mode": "boom"}, {"completion_tokens": -1}, {"colour": "red"}, {"ttft_ms": "5"},
        {"modalities": ["text", "video"]}, {"modalities": ["image"]}, {"modalities": "text"}, {"pull_hold": "yes"},
        {"attestation_mode": "sloppy"},
    )  # fmt: skip
    for bad in invalid:
        response = await client.post("/_sim/config", json=bad)
        assert response.status_code == 400, bad
    assert (await client.post("/_sim/reset")).json()["completion_tokens"] == 16
    stats = (await client.get("/_sim/stats")).json()
    assert (stats["requests"], stats["last"]) == (0, [])


def test_sigterm_exits_cleanly():
    port = free_port()
    node = Process([sys.executable, "manage.py", "run_node_simulator", "--port", str(port)], ready="listening on")
    assert f"node simulator listening on http://127.0.0.1:{port}" in "".join(node.output)
    assert httpx.get(f"http://127.0.0.1:{port}/health").json()["models"] == ["sim-small"]
    node.stop()
    assert node.proc.returncode == 0


# --- the real model -----------------------------------------------------------------------


@pytest.mark.model
async def test_llama_node_reports_exact_usage():
    port = free_port()
    node = Process(
        [sys.executable, "manage.py", "run_local_node", "--port", str(port), "--ctx", "512", "--embeddings", "off"],
        ready="listening on",
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            health = (await client.get("/health")).json()
            assert health["engine"] == "llama" and health["models"] == [MODEL]

            request = {
                "model": MODEL,
                "messages": [{"role": "user", "content": "Say hi in French."}],
                "max_tokens": 8,
                "temperature": 0,
            }
            body = await post(client, "/v1/chat/completions", request)
            # 35 = the SmolLM2 chat template (with its default system prompt) through the model's tokenizer.
            assert body["usage"]["prompt_tokens"] == 35
            assert body["usage"]["completion_tokens"] == 8 and body["choices"][0]["finish_reason"] == "length"
            answer = body["choices"][0]["message"]["content"]
            assert answer.strip()

            streamed = {**request, "stream": True, "stream_options": WITH_USAGE}
            events = await sse(client, "/v1/chat/completions", streamed)
            assert events[0]["choices"][0]["delta"]["role"] == "assistant"
            assert "".join(contents(events)) == answer  # greedy: the same 8 tokens, one chunk each
            assert len(contents(events)) == 8
            assert events[-2]["usage"] == body["usage"] and events[-1] == "[DONE]"

            text = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
            body = await post(client, "/v1/completions", text)
            assert body["usage"]["prompt_tokens"] == 5 and body["usage"]["completion_tokens"] == 4

            long = {**request, "messages": [{"role": "user", "content": "hello " * 600}]}
            response = await client.post("/v1/chat/completions", json=long)
            assert response.status_code == 400
            assert response.json()["error"]["code"] == "context_length_exceeded"
            response = await client.post("/v1/embeddings", json={"model": MODEL, "input": "x"})
            assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported"
            image = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "data:,"}}]
            response = await client.post("/v1/chat/completions", json={**request, "messages": [{"role": "user", "content": image}]})
            assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported_modality"

            stats = (await client.get("/stats")).json()
            assert (stats["completed"], stats["failed"], stats["active"]) == (3, 1, 0)
            assert stats["tokens_generated"] == 8 + 8 + 4
    finally:
        node.stop()
    assert node.proc.returncode == 0
