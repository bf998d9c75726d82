"""The README's first command, end to end: `make run` on the embedded default
(SQLite, in-process caches, eager Celery, the real local node: SmolLM2 and
multilingual-e5-small-q4, the Stripe emulator), then the openai SDK with the
printed key; the balance drops by exactly the settled cost; the demo user signs
in and tops up through Checkout, and the signed webhook credits it."""
import asyncio
import os
import re

import httpx
import openai
import pytest

from tests.conftest import Process, free_port

# bootstrap_demo's prices for the local models, in micro-units per 1M tokens.
INPUT, OUTPUT = 100_000, 200_000
EMBEDDING_INPUT = 20_000


@pytest.fixture(scope="module")
def make_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("make-run")
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


CHART = """() => { const c = window.usageCharts && window.usageCharts.days;
  if (!c) return null; const n = c.data.labels.length - 1;
  return {requests: c.data.datasets[1].data[n], spend: c.data.datasets[0].data[n]}; }"""


@pytest.mark.model
async def test_the_demo_user_does_everything_in_a_real_browser(make_run):
    """Issue 6's "done when", as a person would: open `make run`'s URL, sign in as the demo user, chat
    with a streamed answer, create a key and use it, revoke it, see the usage chart move after an
    API call, and top up through Checkout."""
    from tests.browser.conftest import chromium_page, screenshot

    port, output = make_run
    url = f"http://127.0.0.1:{port}"
    email = re.search(r"email: (\S+)", output).group(1)
    password = re.search(r"password: (\S+)", output).group(1)
    demo_key = re.search(r"secret_key: (sk_live_\w+)", output).group(1)

    def call(key: str) -> str:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        answer = client.chat.completions.create(
            model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Say hi."}], max_tokens=4
        )
        return answer.id

    async with chromium_page() as page:
        await page.goto(url)  # the root sends a visitor to sign in
        await page.fill("input[name=login]", email)
        await page.fill("input[name=password]", password)
        await page.locator("form").filter(has=page.locator("input[name=password]")).locator("button[type=submit]").click()
        await page.wait_for_url(re.compile(r".*/console/$"))
        await screenshot(page, "demo-dashboard")

        # Chat: the real model's answer streams in, then its cost.
        await page.get_by_role("link", name="Chat").click()
        await page.get_by_label("Model").select_option("smollm2-135m-instruct")
        await page.get_by_label("Message", exact=True).fill("Write one short sentence about the sea.")
        await page.get_by_role("button", name="Send").click()
        await page.get_by_role("button", name="Stop").wait_for(state="visible", timeout=30_000)
        cost = page.locator(".msg-assistant [data-testid=message-cost]").last
        await cost.wait_for(timeout=90_000)
        assert (await page.locator(".msg-assistant .body").last.inner_text()).strip()
        assert "USD" in await cost.inner_text()
        await screenshot(page, "demo-chat")

        # Keys: create one (shown once), use it, revoke it: refused within a second or two.
        await page.goto(f"{url}/console/")
        await page.get_by_role("link", name="Keys").first.click()
        await page.get_by_label("Name", exact=True).fill("journey key")
        await page.get_by_role("button", name="Create key").click()
        key = (await page.locator("#new-key").inner_text()).strip()
        assert key.startswith("sk_live_")
        assert await asyncio.to_thread(call, key)
        await page.get_by_role("button", name="Revoke journey key").click()
        await page.wait_for_load_state()
        for _ in range(30):
            try:
                await asyncio.to_thread(call, key)
            except openai.AuthenticationError:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the revoked key still works after 3 s")

        # Usage: the chart's today point moves after an API call.
        await page.goto(f"{url}/console/usage/")
        await page.wait_for_function("() => window.usageCharts && window.usageCharts.days")
        before = await page.evaluate(CHART)
        await asyncio.to_thread(call, demo_key)
        await page.reload()
        await page.wait_for_function("() => window.usageCharts && window.usageCharts.days")
        after = await page.evaluate(CHART)
        assert after["requests"] == before["requests"] + 1 and after["spend"] > before["spend"]
        await screenshot(page, "demo-usage")

        # Top up $25 through Checkout (the Stripe emulator's hosted page); the webhook credits it.
        await page.get_by_role("link", name="Billing").click()
        await page.get_by_label("Amount in dollars").fill("25.00")
        await page.get_by_role("button", name="Continue to payment").click()
        await page.wait_for_url(re.compile(r".*/pay/cs_.*"))
        await page.get_by_role("button", name="Pay").click()
        await page.wait_for_url(re.compile(r".*/billing/topup/success.*"))
        await page.get_by_text(re.compile("credited", re.I)).first.wait_for(timeout=30_000)
        await screenshot(page, "demo-topup")
