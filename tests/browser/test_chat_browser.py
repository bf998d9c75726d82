"""Web Chat in a real browser: sign in, open the chat, pick the model, send a message, watch the
answer stream in (rendered as sanitized Markdown), with its tokens and cost once it is stored."""
from __future__ import annotations

import re

import pytest
from asgiref.sync import sync_to_async

from console.chat_store import message_text
from console.models import Message
from tests.browser.conftest import chromium_page, screenshot, sign_in
from tests.conftest import SIM_MODEL

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

PROMPT = "echo: Here is **bold** and `code` <img src=x onerror=window.__xss=1>"


def replies() -> list[Message]:
    return list(Message.objects.filter(role="assistant").order_by("id"))


async def test_a_user_chats_and_sees_the_streamed_answer_and_its_cost(server, alice, sim_node, sim):
    sim.configure(tokens_per_s=4)  # slow enough to see the answer arrive in pieces
    async with chromium_page() as page:
        await sign_in(page, server, alice)
        await page.goto(f"{server.url}/console/")
        await page.get_by_role("link", name="Chat").click()
        await page.wait_for_url(re.compile(r".*/console/chat/$"))
        await page.get_by_label("Model").select_option(SIM_MODEL)
        await page.get_by_label("Message", exact=True).fill(PROMPT)
        await page.get_by_role("button", name="Send").click()

        answer = page.locator(".msg-assistant .body").last
        await answer.locator("strong").wait_for(timeout=15_000)  # streamed: the first words are there…
        assert await page.get_by_role("button", name="Stop").is_visible()
        cost = page.locator(".msg-assistant [data-testid=message-cost]").last
        await cost.wait_for(timeout=20_000)  # …and the cost once the turn is stored
        # then the conversation's own page (rename, regenerate), the answer rendered the same way
        await page.wait_for_url(re.compile(r".*/console/chat/conv_[A-Za-z0-9]+/$"))
        await page.locator(".chat-head").wait_for()
        answer = page.locator(".msg-assistant .body").last
        await answer.locator("strong").wait_for()
        await screenshot(page, "chat")

        assert await answer.locator("strong").inner_text() == "bold"
        assert await answer.locator("code").inner_text() == "code"
        assert await page.locator(".messages img").count() == 0  # raw HTML is text, never markup
        assert await page.evaluate("window.__xss") is None
        assert not await page.get_by_role("button", name="Stop").is_visible()
        assert await page.locator(".chat-list a[aria-current=page]").count() == 1

        reply = (await sync_to_async(replies)())[0]
        assert reply.cost > 0 and reply.status == "ok"
        meta = await page.locator(".msg-assistant [data-testid=message-meta]").last.inner_text()
        assert f"{reply.input_tokens} in" in meta and f"{reply.output_tokens} out" in meta
        assert await cost.inner_text() == f"0.{reply.cost:06d}".rstrip("0").ljust(4, "0") + " USD"

        # A second message in the same conversation streams into the page.
        await page.get_by_label("Message", exact=True).fill("echo: and _more_")
        await page.get_by_label("Message", exact=True).press("Enter")
        await page.locator(".msg-assistant .body em").wait_for(timeout=15_000)
        await page.locator(".msg-assistant [data-testid=message-cost]").nth(1).wait_for(timeout=20_000)
        assert await page.locator(".msg-assistant").count() == 2
        assert await page.locator(".msg-assistant .body").last.get_attribute("aria-busy") == "false"

        # On a phone the page still fits: no horizontal scrolling.
        await page.set_viewport_size({"width": 380, "height": 800})
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        await screenshot(page, "chat-phone")


def stopped_reply() -> tuple[Message, str]:
    reply = Message.objects.select_related("conversation").get(role="assistant")
    return reply, message_text(reply)


async def test_stop_ends_the_answer_and_shows_what_it_cost(server, alice, sim_node, sim):
    sim.configure(tokens_per_s=5)  # 256 tokens would take most of a minute
    async with chromium_page() as page:
        await sign_in(page, server, alice)
        await page.goto(f"{server.url}/console/chat/")
        await page.get_by_label("Message", exact=True).fill("Tell me a long story.")
        await page.get_by_role("button", name="Send").click()
        answer = page.locator(".msg-assistant .body").last
        await page.wait_for_function(
            "(document.querySelector('.msg-assistant .body') || {textContent: ''}).textContent.split(' ').length > 3"
        )
        await page.get_by_role("button", name="Stop").click()
        await page.locator(".msg-assistant .badge").wait_for(timeout=15_000)
        assert await page.locator(".msg-assistant .badge").inner_text() == "stopped"
        shown = await answer.inner_text()
        await screenshot(page, "chat-stopped")

    reply, text = await sync_to_async(stopped_reply)()
    assert reply.status == "stopped" and 0 < reply.output_tokens < 100 and reply.cost > 0
    assert shown.strip() == text.strip()
