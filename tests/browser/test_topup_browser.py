"""A top-up in a real browser: sign in, the billing page's form, Stripe Checkout's hosted page (the
emulator: Checkout Sessions are its HTTP-level fake, the payment is localstripe's), Pay, back on the
success page with the wallet credited by the signed webhook the emulator delivered to the server."""
from __future__ import annotations

import re

from asgiref.sync import sync_to_async

from billing.models import Transfer, Wallet
from tests.billing.checkout_flow import emulator  # noqa: F401  (fixture)
from tests.browser.conftest import chromium_page, screenshot, sign_in


def balance(tenant) -> int:
    return Wallet.objects.get(id=tenant.wallet.id).balance


def topups(tenant) -> list[int]:
    return list(Transfer.objects.filter(kind=Transfer.Kind.TOPUP, credit_wallet_id=tenant.wallet.id)
                .values_list("amount", flat=True))


async def test_an_owner_tops_up_through_stripe_checkout_in_a_real_browser(server, alice, emulator):  # noqa: F811
    before = await sync_to_async(balance)(alice)
    async with chromium_page() as page:
        await sign_in(page, server, alice)
        await page.goto(f"{server.url}/billing/?org={alice.organization.public_id}")
        await screenshot(page, "billing")

        await page.get_by_label("Amount in dollars").fill("25.00")
        await page.get_by_role("button", name="Continue to payment").click()
        await page.wait_for_url(re.compile(r".*/pay/cs_.*"))
        assert "Total: 25.00 USD" in await page.inner_text("body")
        await screenshot(page, "stripe-checkout")

        await page.get_by_role("button", name="Pay").click()
        await page.wait_for_url(re.compile(r".*/billing/topup/success.*"))
        await page.wait_for_load_state()
        await screenshot(page, "topup-success")
        assert "credited" in (await page.content()).lower()

    assert await sync_to_async(topups)(alice) == [25_000_000]
    assert await sync_to_async(balance)(alice) == before + 25_000_000
