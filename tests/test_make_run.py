"""The README's first command, end to end: `make run` on the embedded default
(SQLite, in-process caches, eager Celery, the real local node: SmolLM2 and
multilingual-e5-small-q4, the Stripe emulator), then the openai SDK with the
printed key; the balance drops by exactly the settled cost; the demo user signs
in and tops up through Checkout, and the signed webhook credits it."""
import os
import re

import httpx
import openai
import pytest

from tests.conftest import Process, free_port

# bootstrap_demo's prices for the local models, in micro-units per 1M tokens.
INPUT, OUTPUT = 100_000, 200_000
EMBEDDING_INPUT = 20_000


@pytest.fixture
def make_run(tmp_path):
    port, node_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "REDIS_PREFIX", "APP_ENV",
                                                          "EMBEDDED_BEAT", "LOCAL_NODE_ENABLED",
                                                          "ATTESTATION_TRUST_ROOTS"}
           and not k.startswith("STRIPE_")}
    # No Stripe key: `serve` starts the Stripe emulator too (on a free port here).
    env.update(STATE_DIR=str(tmp_path / "state"), PORT=str(port), LOCAL_NODE_PORT=str(node_port),
               STRIPE_EMULATOR_PORT=str(free_port()))
    process = Process(["make", "--no-print-directory", "run"], env=env, ready="Application startup complete", timeout=240)
    yield port, "".join(process.output)
    process.stop()


@pytest.mark.model
def test_make_run_serves_the_sdk_and_bills_exactly(make_run):
    port, output = make_run
    key = re.search(r"secret_key: (sk_live_\w+)", output).group(1)
    assert re.search(r"console_url: http://127.0.0.1:\d+/console/", output) and "password: " in output
    base = f"http://127.0.0.1:{port}/v1"
    client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
    balance = lambda: httpx.get(f"{base}/balance", headers={"Authorization": f"Bearer {key}"}).json()["balance_micros"]
    before = balance()

    completion = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )
    assert completion.choices[0].message.content and completion.usage.completion_tokens <= 8
    stream = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Name a color."}], max_tokens=8,
        stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usages = [completion.usage, chunks[-1].usage]
    cost = sum((u.prompt_tokens * INPUT + u.completion_tokens * OUTPUT) // 1_000_000 for u in usages)
    # The local node's embedding model: ▁que ry : + 600 × ▁world, in two windows of <s> … </s> = 607 tokens.
    embeddings = client.embeddings.create(model="multilingual-e5-small-q4", input=" ".join(["world"] * 600))
    assert len(embeddings.data[0].embedding) == 384 and embeddings.usage.prompt_tokens == 607
    cost += 607 * EMBEDDING_INPUT // 1_000_000
    assert before - balance() == cost

    console = httpx.get(f"http://127.0.0.1:{port}/console/", follow_redirects=True)
    assert console.status_code == 200 and "Sign In" in console.text

    # Sign in as the demo user and top up $12.34 through Stripe Checkout (the emulator's hosted page).
    email = re.search(r"email: (\S+)", output).group(1)
    password = re.search(r"password: (\S+)", output).group(1)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", follow_redirects=True, timeout=30) as browser:
        login = browser.get("/accounts/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)
        browser.post("/accounts/login/", data={"login": email, "password": password, "csrfmiddlewaretoken": token})
        page = browser.get("/billing/")
        assert page.status_code == 200, page.text[:500]
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        before = balance()
        checkout = browser.post("/billing/topup", data={"amount": "12.34", "csrfmiddlewaretoken": token},
                                follow_redirects=False)
        assert checkout.status_code == 302 and "/pay/" in checkout.headers["location"]
        hosted = browser.get(checkout.headers["location"])
        form = re.search(r"<form method='post' action='([^']+)'", hosted.text).group(1)
        done = browser.post(httpx.URL(checkout.headers["location"]).join(form), data={"card": "visa"})
        assert done.status_code == 200 and "/billing/topup/success" in str(done.url)
        assert balance() - before == 12_340_000
