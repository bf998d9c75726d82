"""Usage in a real browser: sign in, open the usage page, make a real API call with the openai SDK
against the live server (the simulator node serves sim-small), reload: the chart's data and the
table moved by exactly that call. Screenshots of the usage, keys and project settings pages."""
from __future__ import annotations

import datetime as dt

import openai
from asgiref.sync import sync_to_async
from django.utils import timezone

from billing.topups import format_amount
from gateway.models import RequestRecord
from tests.browser.conftest import chromium_page, screenshot, sign_in
from tests.conftest import SIM_MODEL, sim_cost

CHART = """() => {
  const c = window.usageCharts && window.usageCharts.days;
  if (!c) return null;
  const last = c.data.labels.length - 1;
  return {day: c.data.labels[last], spend: c.data.datasets[0].data[last], requests: c.data.datasets[1].data[last],
          input: c.data.datasets[2].data[last], output: c.data.datasets[3].data[last],
          models: window.usageCharts.models ? window.usageCharts.models.data.labels : []};
}"""


async def today_row(page) -> list[str]:
    today = timezone.now().astimezone(dt.UTC).date().isoformat()
    cells = page.locator(f'#usage-days-table tr[data-day="{today}"] td')
    return [t.strip() for t in await cells.all_text_contents()]


def settled(request_id: str) -> RequestRecord | None:
    return RequestRecord.objects.filter(request_id=request_id).first()


async def test_usage_chart_and_table_move_after_a_real_api_call(server, alice, sim_node):
    import asyncio

    async with chromium_page() as page:
        await sign_in(page, server, alice)
        await page.goto(f"{server.url}/console/usage/?org={alice.organization.public_id}")
        await page.wait_for_function("() => window.usageCharts && window.usageCharts.days")
        before = await page.evaluate(CHART)
        assert before["requests"] == 0 and before["spend"] == 0 and before["models"] == []
        assert (await today_row(page))[1:] == ["0", "0", "0", "0.00 USD"]
        # The chart drew, so the table folded away (it is one click away, and the page without JS).
        assert await page.locator("details.table-fallback").get_attribute("open") is None

        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=alice.secret_key, max_retries=0)
        raw = await client.chat.completions.with_raw_response.create(
            model=SIM_MODEL, messages=[{"role": "user", "content": "Hello there"}], max_tokens=16)
        answer = raw.parse()
        usage = answer.usage
        cost = sim_cost(usage.prompt_tokens, usage.completion_tokens)
        request_id = raw.headers["x-request-id"]
        for _ in range(100):  # the request record is written once the answer settled
            if await sync_to_async(settled)(request_id):
                break
            await asyncio.sleep(0.05)
        assert (await sync_to_async(settled)(request_id)).cost == cost

        await page.reload()
        await page.wait_for_function("() => window.usageCharts && window.usageCharts.days")
        after = await page.evaluate(CHART)
        assert after["day"] == before["day"]
        assert after["requests"] == 1 and after["input"] == usage.prompt_tokens
        assert after["output"] == usage.completion_tokens
        assert after["spend"] == cost / 1e6 and after["models"] == [SIM_MODEL]
        row = await today_row(page)
        assert row[1:4] == ["1", str(usage.prompt_tokens), str(usage.completion_tokens)]
        assert await page.locator('[data-testid="total-cost"]').get_attribute("data-micros") == str(cost)
        assert await page.locator('[data-testid="total-requests"]').inner_text() == "1"
        await screenshot(page, "usage")

        # The keys page shows that key's last use and its spend this month.
        await page.goto(f"{server.url}/console/projects/{alice.project.public_id}/keys/")
        key_public_id = await sync_to_async(lambda: RequestRecord.objects.get(request_id=request_id).api_key.public_id)()
        row = page.locator(f'tr[data-key="{key_public_id}"]')
        assert await row.locator('[data-testid="month-spend"]').get_attribute("data-micros") == str(cost)
        assert "never" not in await row.locator('[data-testid="last-used"]').inner_text()
        await screenshot(page, "keys")

        # The request log has the call, with its metadata.
        await page.goto(f"{server.url}/console/projects/{alice.project.public_id}/requests/")
        logged = page.locator(f'tr[data-request="{request_id}"]')
        assert SIM_MODEL in await logged.inner_text() and "200" in await logged.inner_text()
        await screenshot(page, "request-log")

        await page.goto(f"{server.url}/console/projects/{alice.project.public_id}/")
        await page.get_by_label("Stream resume window (seconds)").fill("90")
        await page.get_by_role("button", name="Save settings").click()
        await page.wait_for_load_state()
        assert "Settings saved" in await page.inner_text("main")
        await screenshot(page, "project-settings")

        await page.goto(f"{server.url}/console/")
        assert await page.locator('[data-testid="month-cost"]').inner_text() == format_amount(cost)
        await screenshot(page, "dashboard")

        # On a phone the pages fit the width (wide tables scroll inside their card).
        await page.set_viewport_size({"width": 390, "height": 844})
        for path, name in [("/console/usage/", "usage-phone"),
                           (f"/console/projects/{alice.project.public_id}/keys/", "keys-phone"),
                           (f"/console/projects/{alice.project.public_id}/requests/", None)]:
            await page.goto(server.url + path)
            assert await page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"), path
            if name:
                await screenshot(page, name)


async def test_a_new_key_is_created_copied_and_shown_once_in_a_browser(server, alice):
    async with chromium_page(permissions=["clipboard-read", "clipboard-write"]) as page:
        await sign_in(page, server, alice)
        await page.goto(f"{server.url}/console/projects/{alice.project.public_id}/keys/")
        await page.get_by_label("Name", exact=True).fill("browser key")
        await page.get_by_label("Chat, completions, responses, messages").check()
        await page.get_by_role("button", name="Create key").click()
        await page.wait_for_load_state()
        shown = (await page.locator("#new-key").inner_text()).strip()
        assert shown.startswith("sk_live_")
        await page.get_by_role("button", name="Copy", exact=True).click()
        assert await page.evaluate("() => navigator.clipboard.readText()") == shown
        await screenshot(page, "key-created")
        await page.reload()
        assert shown not in await page.content()
        assert await page.locator("#new-key").count() == 0


def cap_spend_at_zero(tenant) -> None:
    from console import services

    services.project_spend_cap_set(project=tenant.project, monthly_spend_cap=0)


async def test_a_refused_request_has_a_one_click_troubleshooting_bundle(server, alice, sim_node):
    import asyncio

    import pytest

    await sync_to_async(cap_spend_at_zero)(alice)
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=alice.secret_key, max_retries=0)
    for _ in range(30):  # the cap reaches the gateway within a second
        try:
            await client.chat.completions.create(model=SIM_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8)
        except openai.APIStatusError as exc:
            refused = exc
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the spend cap was never applied")
    assert refused.status_code == 402 and refused.body["code"] == "spend_cap_reached"
    request_id = refused.response.headers["x-request-id"]
    for _ in range(100):
        if await sync_to_async(settled)(request_id):
            break
        await asyncio.sleep(0.05)

    async with chromium_page(permissions=["clipboard-read", "clipboard-write"]) as page:
        await sign_in(page, server, alice)
        await page.goto(f"{server.url}/console/projects/{alice.project.public_id}/requests/?status=failed")
        row = page.locator(f'tr[data-request="{request_id}"]')
        assert "402" in await row.inner_text() and "spend_cap_reached" in await row.inner_text()
        await page.get_by_text("Troubleshooting bundle", exact=True).first.click()
        bundle = page.locator('[data-testid="bundle"]').first
        text = await bundle.inner_text()
        assert f"request_id: {request_id}" in text and "error_code: spend_cap_reached" in text
        assert f"project: {alice.project.public_id}" in text and "sk_live" not in text
        await page.get_by_role("button", name="Copy bundle").first.click()
        assert (await page.evaluate("() => navigator.clipboard.readText()")).strip() == text.strip()
        await screenshot(page, "troubleshooting-bundle")
