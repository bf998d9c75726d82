"""/v1/images through the openai SDK against a live server: a Celery job on a simulator node,
real PNGs, reserved n × the per-image price and settled for the images produced."""
from __future__ import annotations

import base64
import time

import httpx
import openai
import pytest

from billing.invariants import check_ledger
from billing.models import Transfer
from gateway.models import RequestRecord
from nodes.jobs import job_object
from nodes.models import Job
from nodes.nodeserver.png import read_png
from tests.conftest import attest, cache_settle, start_simulator

IMAGE_MODEL = "sim-image"
PRICES = {"512x512": 10_000, "1024x1024": 40_000, "1024x1792": 70_000}
START = 1_000_000


@pytest.fixture
def image_node(transactional_db, sim, allowed_measurement):
    """The simulator registered as a node serving the image model ``sim-image``, priced per image."""
    from billing.services import price_publish
    from nodes.services import node_upsert

    node = node_upsert(name="simulator-images", base_url=f"{sim.url}/v1", region="test-1", attestation="unverified",
                       models=[{"model": IMAGE_MODEL, "upstream_model": "sim-small"}])
    attest(node)
    price_publish(model=IMAGE_MODEL, input_per_mtok=0, output_per_mtok=0, per_image=PRICES)
    cache_settle()
    return node


@pytest.fixture
def client(server, alice, image_node):
    return openai.OpenAI(base_url=server.api, api_key=alice.secret_key, max_retries=0)


def the_job() -> Job:
    return Job.objects.get(kind=Job.Kind.IMAGE)


def test_the_sdk_gets_pngs_of_the_size_and_pays_per_image(client, alice, sim, image_node):
    raw = client.images.with_raw_response.generate(
        model=IMAGE_MODEL, prompt="a lighthouse at dusk", n=3, size="1024x1792", response_format="b64_json"
    )
    images = raw.parse()
    assert len(images.data) == 3
    pngs = [read_png(base64.b64decode(d.b64_json)) for d in images.data]
    assert [(w, h) for w, h, _ in pngs] == [(1024, 1792)] * 3
    assert len({raw_rows for _, _, raw_rows in pngs}) == 3  # three different images
    job = the_job()
    assert raw.headers["x-job-id"] == job.public_id and job.status == "succeeded"
    obj = job_object(job)
    assert obj["kind"] == "image.generation" and obj["params"] == {
        "model": IMAGE_MODEL, "size": "1024x1792", "n": 3, "response_format": "b64_json"}
    assert obj["node"] is not None and len(obj["result"]["images"]) == 3
    transfer = Transfer.objects.get(kind="usage")
    assert (transfer.status, transfer.pending_amount, transfer.amount) == ("posted", 3 * 70_000, 3 * 70_000)
    assert (alice.wallet.balance, alice.wallet.reserved) == (START - 3 * 70_000, 0)
    record = RequestRecord.objects.get()
    assert (record.endpoint, record.status_code, record.cost, record.request_id) == (
        "images.generations", 200, 3 * 70_000, job.request_id)
    assert record.attempts == 1 and record.node_id == image_node.public_id
    assert sim.stats()["images_generated"] == 3
    assert check_ledger() == []


def test_the_issue_path_and_the_default_size(server, alice, image_node):
    response = httpx.post(f"{server.api}/images", headers=alice.auth(), json={"model": IMAGE_MODEL, "prompt": "a cat"},
                          timeout=30)
    assert response.status_code == 200, response.text
    [item] = response.json()["data"]
    assert read_png(base64.b64decode(item["b64_json"]))[:2] == (1024, 1024)
    assert alice.wallet.balance == START - 40_000 and check_ledger() == []


def test_url_images_are_served_only_to_their_project(client, server, alice, charlie):
    images = client.images.generate(model=IMAGE_MODEL, prompt="a kite", n=2, size="512x512", response_format="url")
    urls = [d.url for d in images.data]
    job = the_job()
    assert urls == [f"{server.url}/v1/images/{job.public_id}/{i}" for i in range(2)]
    stored = job_object(job)["result"]["images"]
    for i, url in enumerate(urls):
        mine = httpx.get(url, headers=alice.auth())
        assert mine.status_code == 200 and mine.headers["content-type"] == "image/png"
        assert mine.content == base64.b64decode(stored[i]) and read_png(mine.content)[:2] == (512, 512)
        theirs = httpx.get(url, headers=charlie.auth())
        assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "not_found"
        assert httpx.get(url).status_code == 401
    assert httpx.get(f"{server.url}/v1/images/{job.public_id}/2", headers=alice.auth()).status_code == 404
    assert alice.wallet.balance == START - 2 * 10_000


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"size": "256x256"}, "size"), ({"size": "1792x1024"}, "size"), ({"n": 0}, "n"), ({"n": 5}, "n"),
     ({"response_format": "png"}, "response_format"), ({"prompt": ""}, "prompt"), ({"quality": "hd"}, "quality")],
)
def test_bad_requests_are_refused_before_anything_is_held(server, alice, image_node, fields, param):
    body = {"model": IMAGE_MODEL, "prompt": "a boat", **fields}
    response = httpx.post(f"{server.api}/images/generations", headers=alice.auth(), json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["param"] == param
    assert not Job.objects.exists() and not Transfer.objects.filter(kind="usage").exists()


def test_the_sdk_sees_a_bad_size_as_a_400(client, alice):
    with pytest.raises(openai.BadRequestError):
        client.images.generate(model=IMAGE_MODEL, prompt="a boat", size="256x256")
    assert alice.wallet.reserved == 0 and not Job.objects.exists()


def test_a_failing_node_voids_the_hold_and_charges_nothing(client, alice, sim):
    sim.configure(fail_rate=1.0, fail_mode="http500")
    with pytest.raises(openai.APIStatusError) as raised:
        client.images.generate(model=IMAGE_MODEL, prompt="a storm", n=2, size="512x512")
    assert raised.value.status_code == 502
    assert raised.value.body["code"] == "upstream_unavailable"
    job = the_job()
    assert raised.value.response.headers["x-job-id"] == job.public_id
    assert (job.status, job.error_code) == ("failed", "upstream_unavailable")
    transfer = Transfer.objects.get(kind="usage")
    assert (transfer.status, transfer.amount) == ("voided", 0)
    assert (alice.wallet.balance, alice.wallet.reserved) == (START, 0)
    assert RequestRecord.objects.get().status_code == 502
    assert check_ledger() == []


def test_fewer_images_than_asked_are_billed_as_fewer(client, alice, sim):
    sim.configure(image_limit=2)
    images = client.images.generate(model=IMAGE_MODEL, prompt="a forest", n=4, size="512x512")
    assert len(images.data) == 2
    transfer = Transfer.objects.get(kind="usage")
    assert (transfer.pending_amount, transfer.amount) == (4 * 10_000, 2 * 10_000)
    assert (alice.wallet.balance, alice.wallet.reserved) == (START - 2 * 10_000, 0)
    assert check_ledger() == []


def test_prefer_respond_async_answers_202_with_the_job_followed_at_v1_jobs(server, alice, charlie, image_node):
    response = httpx.post(f"{server.api}/images/generations", json={"model": IMAGE_MODEL, "prompt": "a fox", "n": 2,
                          "size": "512x512", "response_format": "url"}, headers={**alice.auth(), "Prefer": "respond-async"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["object"] == "job" and job["kind"] == "image.generation" and job["status"] in ("queued", "running")
    assert response.headers["x-job-id"] == job["id"] and response.headers["location"] == f"/v1/jobs/{job['id']}"
    deadline = time.monotonic() + 30
    while (polled := httpx.get(f"{server.api}/jobs/{job['id']}", headers=alice.auth()).json())["status"] != "succeeded":
        assert polled["status"] in ("queued", "running") and time.monotonic() < deadline, polled
        time.sleep(0.05)
    assert [item["url"] for item in polled["result"]["data"]] == [f"{server.url}/v1/images/{job['id']}/{i}" for i in (0, 1)]
    assert polled["result"]["billing"] == {"images": 2, "cost_micros": 2 * 10_000}
    assert polled["node"] == image_node.public_id and polled["error"] is None
    assert httpx.get(f"{server.api}/jobs/{job['id']}", headers=charlie.auth()).status_code == 404
    assert httpx.get(f"{server.api}/jobs/{job['id']}", headers=alice.auth(alice.publishable_key)).status_code in (401, 403)
    image = httpx.get(f"{server.api}/images/{job['id']}/1", headers=alice.auth())
    assert image.status_code == 200 and read_png(image.content)[:2] == (512, 512)
    assert alice.wallet.balance == START - 2 * 10_000 and check_ledger() == []


def test_an_image_model_is_not_a_chat_model_and_back(client, alice, sim_node):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=IMAGE_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert "images" in raised.value.body["message"]
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(model="sim-small", prompt="a boat")
    assert raised.value.body["param"] == "model"
    assert not Transfer.objects.filter(kind="usage").exists()


def test_a_wallet_that_cannot_cover_n_images_gets_402_and_no_job(server, image_node, transactional_db):
    from tests.conftest import make_tenant

    poor = make_tenant("dora", credit=15_000)
    response = httpx.post(f"{server.api}/images/generations", headers=poor.auth(),
                          json={"model": IMAGE_MODEL, "prompt": "a ship", "n": 2, "size": "512x512"})
    assert response.status_code == 402 and response.json()["error"]["code"] == "insufficient_balance"
    assert "ask for fewer or smaller images" in response.json()["error"]["message"]
    assert not Job.objects.exists() and poor.wallet.reserved == 0 and check_ledger() == []


def test_an_image_job_fails_over_from_a_dead_node_before_any_image(client, alice, image_node, sim):
    from nodes.services import node_upsert

    doomed = start_simulator()
    dead = node_upsert(name="dead-images", base_url=f"{doomed.url}/v1", region="test-1", attestation="unverified",
                       models=[{"model": IMAGE_MODEL, "upstream_model": "sim-small"}])
    attest(dead)  # attested, then gone: the router still thinks it can serve
    doomed.process.stop()
    cache_settle()
    for i in range(3):
        assert len(client.images.generate(model=IMAGE_MODEL, prompt=f"a bridge {i}", size="512x512").data) == 1
    assert set(Job.objects.values_list("status", flat=True)) == {"succeeded"}
    assert set(Job.objects.values_list("node__public_id", flat=True)) == {image_node.public_id}
    assert sorted(RequestRecord.objects.values_list("attempts", flat=True))[0] == 1
    assert Transfer.objects.filter(kind="usage", status="posted", amount=10_000).count() == 3
    assert alice.wallet.balance == START - 3 * 10_000 and check_ledger() == []
