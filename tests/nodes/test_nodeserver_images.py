"""The simulator's /v1/images/generations over HTTP: real PNGs, deterministic, failures as for chat."""
from __future__ import annotations

import base64

import httpx
import pytest

from nodes.nodeserver.png import png, read_png
from tests.nodes.conftest import post


def image(prompt: str = "a red fox", **fields):
    return {"model": "sim-small", "prompt": prompt, **fields}


def decoded(body: dict) -> list[tuple[int, int, bytes]]:
    return [read_png(base64.b64decode(d["b64_json"])) for d in body["data"]]


@pytest.mark.parametrize("size", ["512x512", "1024x1024", "1024x1792"])
async def test_images_are_valid_pngs_of_the_requested_size(client, size):
    body = await post(client, "/v1/images/generations", image(size=size, n=2))
    width, height = map(int, size.split("x"))
    images = decoded(body)
    assert [(w, h) for w, h, _ in images] == [(width, height)] * 2
    assert images[0][2] != images[1][2]  # each image of a request differs
    assert body["data"][0]["revised_prompt"] == "a red fox" and body["created"] > 0


async def test_the_same_prompt_gives_the_same_pixels(client):
    first = await post(client, "/v1/images/generations", image("a lighthouse", size="512x512"))
    again = await post(client, "/v1/images/generations", image("a lighthouse", size="512x512"))
    other = await post(client, "/v1/images/generations", image("a harbour", size="512x512"))
    assert first["data"][0]["b64_json"] == again["data"][0]["b64_json"] != other["data"][0]["b64_json"]
    assert base64.b64decode(first["data"][0]["b64_json"]) == png(512, 512, b"a lighthouse\x000")


async def test_image_limit_makes_fewer_images_than_asked(client, sim):
    sim.configure(image_limit=2)
    body = await post(client, "/v1/images/generations", image(n=4, size="512x512"))
    assert len(body["data"]) == 2
    assert sim.stats()["images_generated"] == 2


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"n": 0}, 400),
        ({"n": 11}, 400),
        ({"size": "big"}, 400),
        ({"size": "0x512"}, 400),
        ({"response_format": "url"}, 400),
        ({"prompt": ""}, 400),
        ({"model": "nope"}, 404),
    ],
)
async def test_bad_image_requests_are_refused(client, fields, status):
    response = await client.post("/v1/images/generations", json=image(**fields))
    assert response.status_code == status
    assert response.json()["error"]["message"]


@pytest.mark.parametrize(("mode", "status"), [("http500", 500), ("http429", 429)])
async def test_injected_failures_reach_image_requests(client, sim, mode, status):
    sim.configure(fail_rate=1.0, fail_mode=mode)
    response = await client.post("/v1/images/generations", json=image(size="512x512"))
    assert response.status_code == status
    stats = sim.stats()
    assert stats["failed_injected"] == 1 and stats["images_generated"] == 0


@pytest.mark.parametrize("mode", ["disconnect", "midstream"])
async def test_injected_drops_cut_image_requests(client, sim, mode):
    sim.configure(fail_rate=1.0, fail_mode=mode)
    with pytest.raises(httpx.HTTPError):
        await client.post("/v1/images/generations", json=image(size="512x512"))
    assert sim.stats()["failed_injected"] == 1
