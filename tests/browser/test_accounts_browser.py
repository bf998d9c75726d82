"""Accounts in a real browser: sign up → the verification email → verify → the console with an
organization and a default project → a secret key shown once; and an owner inviting a finance member
who signs up from the email, accepts, sees billing but no keys."""
from __future__ import annotations

import re
import secrets
import time

from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value
from asgiref.sync import sync_to_async

from console.models import ApiKey, Membership, Project, Role
from tests.browser.conftest import chromium_page, screenshot, sign_in
from tests.browser.mailbox import link_in_mail

PASSWORD = "a long enough passphrase 42"


def fresh(name: str) -> str:
    """A new address each run: allauth sends one verification mail per address every 3 minutes
    (its rate limit lives in the server's cache, Redis, which outlives the test database)."""
    return f"{name}-{secrets.token_hex(3)}@example.com"


async def fits_a_phone(page, name: str) -> None:
    """The page at a phone's width (390 px): nothing wider than the screen, a screenshot."""
    size = page.viewport_size
    await page.set_viewport_size({"width": 390, "height": 844})
    await screenshot(page, name)
    overflow = await page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    wide = await page.evaluate("""[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > innerWidth + 1)
        .slice(0, 5).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))""")
    assert overflow <= 0, f"{page.url} is {overflow}px wider than a phone: {wide}"
    await page.set_viewport_size(size)


async def sign_up(page, server, email: str) -> None:
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await page.get_by_label("Password (again)").fill(PASSWORD)


async def verify(page, email: str, *, shot: str | None = None) -> None:
    link = await link_in_mail(email, "/accounts/confirm-email/")
    await page.goto(link)
    assert email in await page.inner_text("main")
    if shot:
        await screenshot(page, shot)
    await page.get_by_role("button", name="Confirm").click()
    await page.wait_for_load_state()


def owned_project(email: str) -> Project:
    membership = Membership.objects.select_related("organization").get(user__email=email, role=Role.OWNER)
    return membership.organization.projects.get()


async def keys_page(page, server, project_id: str) -> None:
    """The page with the project's "Create key" form (a keys page of its own when the console has one)."""
    response = await page.goto(f"{server.url}/console/projects/{project_id}/keys/")
    if response.status == 404:
        await page.goto(f"{server.url}/console/projects/{project_id}/")


async def test_sign_up_verify_land_in_the_console_and_see_a_new_key_once(server):
    email = fresh("newcomer")
    async with chromium_page() as page:
        await page.goto(f"{server.url}/accounts/signup/")
        await fits_a_phone(page, "signup-phone")
        await sign_up(page, server, email)
        await screenshot(page, "signup")
        await page.get_by_role("button", name="Sign Up").click()
        await page.wait_for_url(re.compile(r".*/accounts/confirm-email/$"))
        assert "verify" in (await page.inner_text("main")).lower()

        await verify(page, email, shot="verify")
        await page.wait_for_url(f"{server.url}/console/")
        assert f"{email.split('@')[0]}'s organization" in await page.inner_text("header")

        project = await sync_to_async(owned_project)(email)
        assert project.name == "Default project"
        await keys_page(page, server, project.public_id)
        name = page.locator("form:has(button:text-is('Create key')) input[name=name]")
        if await name.count():
            await name.fill("browser key")
        await page.get_by_role("button", name="Create key").click()
        await page.wait_for_load_state()
        secret = (await page.inner_text("#new-key")).strip()
        assert secret.startswith("sk_live_")
        await screenshot(page, "key-created")
        key = await sync_to_async(ApiKey.objects.get)(project=project, kind="secret")
        assert secret.endswith(key.last4) and key.hash not in secret

        await page.reload()
        assert secret not in await page.content()
        assert await page.locator("#new-key").count() == 0

        # Two-factor: the password again, then the authenticator app's code turns TOTP on.
        await page.goto(f"{server.url}/accounts/2fa/totp/activate/")
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Confirm").click()
        await page.wait_for_url(re.compile(r".*/accounts/2fa/totp/activate/$"))
        totp_secret = await page.get_by_label("Authenticator secret").input_value()
        assert await page.locator("main img[src^='data:image/svg+xml']").count() == 1  # the QR code
        await screenshot(page, "two-factor")
        await page.get_by_label("Authenticator code").fill(format_hotp_value(hotp_value(totp_secret, int(time.time()) // 30)))
        await page.get_by_role("button", name="Activate").click()
        await page.wait_for_load_state()
        kinds = await sync_to_async(lambda: sorted(Authenticator.objects.filter(user__email=email)
                                                   .values_list("type", flat=True)))()
        assert kinds == ["recovery_codes", "totp"]


async def test_an_owner_invites_a_finance_member_who_sees_billing_but_no_keys(server, alice):
    email = fresh("finn")
    async with chromium_page() as page:
        await sign_in(page, server, alice)
        await page.goto(f"{server.url}/console/members/")
        await page.get_by_label("Email").fill(email)
        await page.get_by_label("Role").select_option("finance")
        await page.get_by_role("button", name="Send invitation").click()
        await page.wait_for_load_state()
        assert f"Invitation sent to {email}" in await page.inner_text("main")
        assert email in await page.inner_text("[data-testid=invitations]")
        await screenshot(page, "members")
        await fits_a_phone(page, "members-phone")
        await page.get_by_role("button", name="Sign out").click()
        await page.wait_for_load_state()

        # The invitee opens the link, signs up with the invited address, verifies, comes back, accepts.
        link = await link_in_mail(email, "/invites/")
        await page.goto(link)
        assert "Join alice's org" in await page.inner_text("main")
        await page.locator("main").get_by_role("link", name="Sign up").click()
        await sign_up(page, server, email)
        await page.get_by_role("button", name="Sign Up").click()
        await page.wait_for_url(re.compile(r".*/accounts/confirm-email/$"))
        await verify(page, email)
        await page.wait_for_url(link)
        await page.get_by_role("button", name="Accept invitation").click()
        await page.wait_for_url(f"{server.url}/console/")
        assert "You joined alice's org as finance" in await page.inner_text("main")

        role = await sync_to_async(
            lambda: Membership.objects.get(organization=alice.organization, user__email=email).role)()
        assert role == Role.FINANCE
        assert (await page.inner_text("[data-testid=role]")).strip() == "finance"
        nav = await page.inner_text("nav[aria-label=Main]")
        assert "Billing" in nav and "Quickstart" not in nav and "Keys" not in nav

        response = await page.goto(f"{server.url}/billing/")
        assert response.status == 200
        assert "alice's org" in await page.inner_text("main h1")
        await screenshot(page, "billing-as-finance")
        await fits_a_phone(page, "billing-as-finance-phone")
        assert "/keys/" not in await page.content()

        response = await page.goto(f"{server.url}/console/projects/{alice.project.public_id}/keys/")
        assert response.status == 404


async def test_a_passkey_added_in_the_browser_signs_in_without_a_password(server, charlie):
    """WebAuthn with Chromium's virtual authenticator (DevTools protocol). On localhost: browsers
    refuse an IP address as relying party, and http is allowed for localhost only."""
    from tests.browser.conftest import verified

    await sync_to_async(verified)(charlie)
    base = server.url.replace("127.0.0.1", "localhost")
    async with chromium_page() as page:
        cdp = await page.context.new_cdp_session(page)
        await cdp.send("WebAuthn.enable")
        await cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
            "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
            "hasUserVerification": True, "isUserVerified": True, "automaticPresenceSimulation": True,
        }})
        await page.goto(f"{base}/accounts/login/")
        await page.get_by_label("Email").fill(charlie.user.email)
        await page.get_by_label("Password").fill("pw-" + charlie.user.username * 2)
        await page.get_by_role("button", name="Sign In", exact=True).click()
        await page.wait_for_url(f"{base}/console/")

        await page.goto(f"{base}/accounts/2fa/webauthn/add/")
        if "/reauthenticate/" in page.url:
            await page.get_by_label("Password").fill("pw-" + charlie.user.username * 2)
            await page.get_by_role("button", name="Confirm").click()
            await page.wait_for_url(re.compile(r".*/accounts/2fa/webauthn/add/"))
        await page.get_by_label("Name").fill("laptop")
        await page.get_by_label("Passwordless").check()
        await screenshot(page, "passkey-add")
        await page.get_by_role("button", name="Add", exact=True).click()
        await page.wait_for_load_state()
        await page.wait_for_function("!location.pathname.endsWith('/webauthn/add/')")
        kinds = await sync_to_async(lambda: sorted(Authenticator.objects.filter(user=charlie.user)
                                                   .values_list("type", flat=True)))()
        assert "webauthn" in kinds

        await page.get_by_role("button", name="Sign out").click()
        await page.wait_for_load_state()
        await page.goto(f"{base}/accounts/login/")
        await page.get_by_role("button", name="Sign in with a passkey").click()
        await page.wait_for_url(f"{base}/console/")
        assert "charlie's org" in await page.inner_text("header")
