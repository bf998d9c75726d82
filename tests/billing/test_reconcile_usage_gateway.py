"""Check 2 on what the real gateway writes: requests through the openai SDK against a live
server and the node simulator (chat, a stream, embeddings, an image job), then the day is
reconciled: every charge is what its tokens (or images) cost at the recorded price version."""
from __future__ import annotations

import datetime as dt

import openai
import pytest
from django.db import connection
from django.utils import timezone

from billing.models import Transfer
from billing.reconcile import reconcile_run
from tests.conftest import SIM_MODEL, sim_cost
from tests.gateway.test_images import IMAGE_MODEL, PRICES, image_node  # noqa: F401 - fixture


@pytest.fixture(autouse=True)
def _no_stripe(settings):
    settings.STRIPE_SECRET_KEY = ""


@pytest.fixture
def client(server, alice, sim_node, image_node):  # noqa: F811
    return openai.OpenAI(base_url=server.api, api_key=alice.secret_key, max_retries=0)


def today() -> dt.date:
    return timezone.now().astimezone(dt.UTC).date()


def test_what_the_gateway_charged_reconciles_to_the_micro_unit(client, alice, sim):
    chat = client.chat.completions.create(
        model=SIM_MODEL, messages=[{"role": "user", "content": "echo: one two three"}], max_tokens=20
    )
    stream = client.chat.completions.create(
        model=SIM_MODEL, messages=[{"role": "user", "content": "echo: a b c d"}], max_tokens=20, stream=True,
        stream_options={"include_usage": True},
    )
    streamed = [c.usage for c in stream if c.usage][-1]
    embedded = client.embeddings.create(model=SIM_MODEL, input=["alpha", "beta"])
    client.images.generate(model=IMAGE_MODEL, prompt="a lighthouse", n=2, size="512x512", response_format="b64_json")

    run = reconcile_run(day=today())
    assert (run.status, list(run.discrepancies.values_list("kind", flat=True))) == ("ok", [])
    tokens = (
        sim_cost(chat.usage.prompt_tokens, chat.usage.completion_tokens)
        + sim_cost(streamed.prompt_tokens, streamed.completion_tokens)
        + sim_cost(embedded.usage.prompt_tokens, 0)
    )
    per_model = run.summary["checks"]["usage"]["per_model"]
    assert per_model[SIM_MODEL] == {"requests": 3, "expected": tokens, "charged": tokens, "unverified": 0,
                                    "difference": 0}
    images = 2 * PRICES["512x512"]
    assert per_model[IMAGE_MODEL] == {"requests": 1, "expected": images, "charged": images, "unverified": 0,
                                      "difference": 0}

    # Had the image job's transfer charged for one image of the two the node made, it is found.
    job_transfer = Transfer.objects.get(kind="usage", model=IMAGE_MODEL)
    with connection.cursor() as cur:
        cur.execute("UPDATE billing_transfer SET amount = amount - %s WHERE id = %s", [PRICES["512x512"], job_transfer.id])
    again = reconcile_run(day=today(), rerun_of=run)
    mismatch = again.discrepancies.get(kind="charge_mismatch")
    assert (mismatch.amount, mismatch.references["transfer"], mismatch.references["expected"]) == (
        -PRICES["512x512"], job_transfer.id, images)
