"""Image and audio content parts: refused unless the node is configured to accept them.

The simulator accepts the modalities of ``--modalities`` (default ``text``),
changeable at run time through ``/_sim/config``. An ``echo:`` prompt echoes its
media parts as ``[image]`` / ``[audio]`` after its words; they add no prompt tokens.
"""
from __future__ import annotations

import math

import httpx
import pytest
from django.core.management import CommandError, call_command

from tests.conftest import start_simulator
from tests.nodes.conftest import chat, post

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}


def parts(text: str, *media: dict) -> list[dict]:
    return [{"type": "text", "text": text}, *media]


async def test_media_is_refused_by_a_text_only_node(client, sim):
    for media, kind in ((IMAGE, "image"), (AUDIO, "audio")):
        response = await client.post("/v1/chat/completions", json=chat(parts("echo: look", media)))
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "unsupported_modality" and error["type"] == "invalid_request_error"
        assert f"does not accept {kind} input" in error["message"] and "sim-small" in error["message"]
    streamed = chat(parts("echo: look", IMAGE), stream=True)
    response = await client.post("/v1/chat/completions", json=streamed)
    assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported_modality"
    assert sim.stats()["requests"] == 0  # refused before reaching the engine


async def test_configured_modalities_are_accepted(client, sim):
    assert sim.configure(modalities=["image", "text"])["modalities"] == ["text", "image"]
    body = await post(client, "/v1/chat/completions", chat(parts("echo: what is this", IMAGE)))
    assert body["choices"][0]["message"]["content"] == "what is this [image]"
    assert body["usage"]["completion_tokens"] == 4
    assert body["usage"]["prompt_tokens"] == math.ceil(len("echo: what is this") / 4) + 4  # media adds nothing

    response = await client.post("/v1/chat/completions", json=chat(parts("echo: hear", AUDIO)))
    assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported_modality"
    assert "does not accept audio input (it accepts: image, text)" in response.json()["error"]["message"]

    sim.configure(modalities=["text", "image", "audio"])
    body = await post(client, "/v1/chat/completions", chat(parts("echo: both", IMAGE, AUDIO)))
    assert body["choices"][0]["message"]["content"] == "both [image] [audio]"
    sim.reset()
    response = await client.post("/v1/chat/completions", json=chat(parts("echo: again", IMAGE)))
    assert response.status_code == 400  # reset restores the start-up setting


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": "https://example.com/cat.png"},  # not an object
        {"type": "image_url", "image_url": {}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg=="}},  # no format
        {"type": "text", "text": 7},
        {"type": "video_url", "video_url": {"url": "x"}},
        "just a string",
    ],
)
async def test_malformed_or_unknown_parts_are_refused(client, sim, part):
    sim.configure(modalities=["text", "image", "audio"])
    response = await client.post("/v1/chat/completions", json=chat([{"type": "text", "text": "hi"}, part]))
    assert response.status_code == 400
    assert response.json()["error"]["code"] in ("invalid_value", "unsupported_content")


async def test_prompt_lists_of_one_are_text_completions(client):
    body = await post(client, "/v1/completions", {"model": "sim-small", "prompt": ["echo: a b"]})
    assert body["choices"][0]["text"] == "a b"
    response = await client.post("/v1/completions", json={"model": "sim-small", "prompt": ["a", "b"]})
    assert response.status_code == 400 and "batches are not supported" in response.json()["error"]["message"]


def test_modalities_from_the_command_line():
    node = start_simulator("--modalities", "audio, text")
    try:
        request = chat(parts("echo: hear", AUDIO))
        response = httpx.post(f"{node.url}/v1/chat/completions", json=request)
        assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "hear [audio]"
        response = httpx.post(f"{node.url}/v1/chat/completions", json=chat(parts("echo: see", IMAGE)))
        assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported_modality"
        assert node.configure()["modalities"] == ["text", "audio"]
    finally:
        node.process.stop()
    for bad in ("text,video", "image"):
        with pytest.raises(CommandError, match="modalities"):
            call_command("run_node_simulator", "--modalities", bad)
