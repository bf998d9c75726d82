"""Real-browser tests: Playwright for Python driving Debian's Chromium (`apt-get install -y chromium`;
.ci/run installs it). Without /usr/bin/chromium they are skipped, saying so. Screenshots of the pages
go to $TEST_ARTIFACTS_DIR (default: test-artifacts/) /screenshots."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent.parent
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR", ROOT / "test-artifacts")) / "screenshots"


def pytest_collection_modifyitems(config, items):
    if CHROMIUM.exists():
        return
    skip = pytest.mark.skip(reason="no /usr/bin/chromium on this machine (`apt-get install -y chromium`)")
    for item in items:
        if "tests/browser/" in str(item.fspath):
            item.add_marker(skip)


@contextlib.asynccontextmanager
async def chromium_page(**context_options):
    """A page in a fresh Chromium context. Playwright's async API on the test's own event loop
    (its sync API would run a second loop in this thread, which pytest-asyncio and Django refuse)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            context = await browser.new_context(viewport={"width": 1200, "height": 900}, **context_options)
            yield await context.new_page()
        finally:
            await browser.close()


async def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


def verified(tenant) -> None:
    """Mark the tenant's email verified (sign-in requires it: ACCOUNT_EMAIL_VERIFICATION is mandatory)."""
    from allauth.account.models import EmailAddress

    EmailAddress.objects.update_or_create(
        user=tenant.user, email=tenant.user.email, defaults={"verified": True, "primary": True}
    )


async def sign_in(page, server, tenant) -> None:
    """Sign in through the real form as a fixture tenant (tests.conftest.make_tenant's password)."""
    from asgiref.sync import sync_to_async

    await sync_to_async(verified)(tenant)
    await page.goto(f"{server.url}/accounts/login/")
    await page.fill("input[name=login]", tenant.user.email)
    await page.fill("input[name=password]", "pw-" + tenant.user.username * 2)
    await page.locator("form").filter(has=page.locator("input[name=password]")).locator("button[type=submit]").click()
    await page.wait_for_load_state()
    assert "/accounts/login/" not in page.url, (await page.content())[:2000]
