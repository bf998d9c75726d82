"""Encrypted bodies in a real browser: the owner turns body storage on in the project settings
(no JavaScript needed: a plain form), an API request goes through the live server, and the request
log shows its decrypted bodies — on a phone-sized screen, without the page scrolling sideways."""
from __future__ import annotations

import asyncio
import secrets

import httpx
from asgiref.sync import sync_to_async

from gateway.models import BodyBlob
from tests.browser.conftest import chromium_page, screenshot
from tests.browser.test_topup_browser import sign_in
from tests.conftest import SIM_MODEL


async def test_owner_keeps_bodies_and_reads_them_in_the_request_log(server, alice, sim_node):
    word = "marker" + secrets.token_hex(4)
    async with chromium_page() as page:
        await page.set_viewport_size({"width": 390, "height": 844})
        await sign_in(page, server, alice)
        await page.goto(f"{server.url}/console/projects/{alice.project.public_id}/")
        await page.get_by_label("For a number of days").check()
        await page.get_by_label("Days to keep them").fill("3")
        await page.get_by_role("button", name="Save body storage").click()
        await page.wait_for_load_state()
        assert "Body storage saved" in await page.content()
        await asyncio.sleep(1.2)  # the gateway sees the change within a second

        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(f"{server.api}/chat/completions", headers=alice.auth(), json={
                "model": SIM_MODEL, "messages": [{"role": "user", "content": f"echo: {word} please"}], "max_tokens": 20})
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        for _ in range(100):
            if await sync_to_async(BodyBlob.objects.filter(ref=request_id).count)() == 2:
                break
            await asyncio.sleep(0.1)

        await page.goto(f"{server.url}/console/projects/{alice.project.public_id}/requests/")
        assert "kept encrypted for 3 days" in await page.content()
        await page.get_by_text("Request and response bodies").first.click()
        request_body = page.locator('pre.body[data-kind="request"]').first
        response_body = page.locator('pre.body[data-kind="response"]').first
        assert word in await request_body.inner_text() and word in await response_body.inner_text()
        assert await response_body.is_visible()
        width = await page.evaluate("document.documentElement.scrollWidth")
        await screenshot(page, "request-log-bodies-phone")
        assert width <= 390 + 1, f"the page scrolls sideways: {width}px"
