"""The status, nodes, billing and quickstart pages in a real browser: the public status page
signed out, the others signed in, each fitting a phone's width (no horizontal scroll)."""
from __future__ import annotations

from asgiref.sync import sync_to_async

from console import status
from tests.billing.test_ledger import price  # noqa: F401 (fixture)
from tests.billing.test_spend_caps import reserve
from tests.browser.conftest import chromium_page, screenshot, sign_in
from tests.conftest import SIM_MODEL

PHONE = {"width": 390, "height": 844}


async def fits(page) -> bool:
    """Nothing wider than the viewport: the body does not scroll sideways."""
    return await page.evaluate(
        "() => document.documentElement.scrollWidth <= window.innerWidth && document.body.scrollWidth <= window.innerWidth"
    )


async def test_the_status_page_signed_out(server, sim_node):
    await sync_to_async(status.forget)()
    async with chromium_page() as page:
        await page.goto(f"{server.url}/status/")
        assert await page.get_by_role("heading", name="Status", exact=True).is_visible()
        for name in ("gateway", "database", "redis", "workers", "nodes"):
            assert await page.locator(f'tr[data-component="{name}"]').count() == 1
        region = page.locator('tr[data-region="test-1"]')
        assert "1 / 1" in await region.inner_text() and SIM_MODEL in await region.inner_text()
        assert await page.get_by_role("link", name="Sign in").is_visible()  # nobody is signed in
        await screenshot(page, "status")
        await page.set_viewport_size(PHONE)
        assert await fits(page)


def some_movements(tenant) -> None:
    from billing.services import wallet_credit

    for i, amount in enumerate((5_000_000, 2_500_000, 750_000)):
        wallet_credit(wallet=tenant.wallet, amount=amount, reference=f"browser:{i}", description=f"Goodwill credit {i + 1}")


async def test_signed_in_pages_render_and_fit_a_phone(server, alice, sim_node, price):  # noqa: F811
    await sync_to_async(some_movements)(alice)
    await reserve(alice, price, 125_000, request_id="req_browser_in_flight")
    async with chromium_page() as page:
        await sign_in(page, server, alice)

        await page.goto(f"{server.url}/console/nodes/")
        assert await page.locator(f'tr[data-node="{sim_node.public_id}"]').is_visible()
        await screenshot(page, "nodes")

        await page.goto(f"{server.url}/billing/?org={alice.organization.public_id}")
        ledger = page.locator("#ledger")
        await ledger.scroll_into_view_if_needed()
        assert await ledger.locator("tr[data-entry]").count() == 4  # the seed credit and three more
        assert await page.get_by_role("heading", name="Reservations in flight").is_visible()
        assert "req_browser_in_flight" in await page.locator("#in-flight").inner_text()
        await screenshot(page, "billing-ledger")

        await page.goto(f"{server.url}/console/quickstart/")
        code = page.locator("#snippet-python")
        assert f'base_url="{server.url}/v1"' in await code.inner_text()
        copy = page.locator('button[data-copy="snippet-python"]')
        assert await copy.is_visible()  # shown once the script ran
        await screenshot(page, "quickstart")

        await page.set_viewport_size(PHONE)
        for path in ("/console/nodes/", f"/billing/?org={alice.organization.public_id}", "/console/quickstart/"):
            await page.goto(f"{server.url}{path}")
            assert await fits(page), path
