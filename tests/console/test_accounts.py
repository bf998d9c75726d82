"""Accounts (django-allauth): sign up with email verification gives an organization and a default
project; sign-in is rate-limited; two-factor by TOTP with recovery codes; password reset; session and
CSRF cookies carry their flags; allauth's pages render in the console's layout."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client, override_settings

from console.models import Membership, Organization, Role
from tests.conftest import ROOT

PASSWORD = "correct horse battery staple 9"
# Each test counts sign-in failures in a cache of its own (allauth keeps its rate limits in the cache).
FRESH_CACHE = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "accounts-test"}}


@pytest.fixture(autouse=True)
def fresh_cache():
    from django.core.cache import cache

    with override_settings(CACHES=FRESH_CACHE):
        cache.clear()
        yield


def link_in(message, pattern: str) -> str:
    found = re.search(rf"https?://[^\s]+{pattern}[^\s]*", message.body)
    assert found, message.body
    return found.group(0).split("testserver", 1)[1]


def sign_up(client: Client, email: str) -> None:
    response = client.post("/accounts/signup/", {"email": email, "password1": PASSWORD, "password2": PASSWORD})
    assert response.status_code == 302, response.content.decode()[:2000]


def sign_in(client: Client, email: str, password: str = PASSWORD):
    return client.post("/accounts/login/", {"login": email, "password": password})


def verify(client: Client, email: str):
    message = next(m for m in reversed(mail.outbox) if email in m.to and "confirm-email" in m.body)
    url = link_in(message, "/accounts/confirm-email/")
    assert client.get(url).status_code == 200  # a page with a Confirm button (GET changes nothing)
    return client.post(url)


@pytest.mark.django_db
def test_sign_up_needs_the_email_verified_then_lands_in_an_organization_with_a_default_project(client):
    sign_up(client, "Dana.Example@example.com")
    user = get_user_model().objects.get(email__iexact="dana.example@example.com")
    # Not signed in until the address is verified: the console sends to the sign-in page.
    assert client.get("/console/").status_code == 302
    assert not EmailAddress.objects.get(user=user).verified
    assert sign_in(client, "dana.example@example.com")["Location"] == "/accounts/confirm-email/"

    done = verify(client, "dana.example@example.com")
    assert done.status_code == 302 and done["Location"] == "/console/"
    assert EmailAddress.objects.get(user=user).verified

    membership = Membership.objects.select_related("organization").get(user=user)
    assert membership.role == Role.OWNER
    assert membership.organization.name == "dana.example's organization"  # allauth stores addresses lower-cased
    assert [p.name for p in membership.organization.projects.all()] == ["Default project"]
    assert hasattr(membership.organization, "billing_account")
    assert client.get("/console/").status_code == 200
    # Signing up twice with one address does not make a second user or organization.
    Client().post("/accounts/signup/", {"email": "dana.example@example.com", "password1": PASSWORD,
                                        "password2": PASSWORD})
    assert get_user_model().objects.filter(email__iexact="dana.example@example.com").count() == 1
    assert Organization.objects.count() == 1


@pytest.mark.django_db
def test_sign_in_is_rate_limited_after_five_failures_for_one_account(client):
    sign_up(client, "erin@example.com")
    verify(client, "erin@example.com")
    client.post("/accounts/logout/")
    for _ in range(5):
        failed = sign_in(client, "erin@example.com", "wrong password")
        assert failed.status_code == 200 and "not correct" in failed.content.decode()
    # The sixth try is refused without looking at the password, even the right one.
    limited = sign_in(client, "erin@example.com")
    assert limited.status_code == 200 and "Too many failed login attempts" in limited.content.decode()
    assert "_auth_user_id" not in client.session
    # Another account from the same address is not locked by erin's failures.
    sign_up(Client(), "frank@example.com")
    EmailAddress.objects.filter(email="frank@example.com").update(verified=True)
    assert sign_in(Client(), "frank@example.com")["Location"] == "/console/"


@pytest.mark.django_db
def test_session_and_csrf_cookies_are_http_only_same_site_and_forms_need_csrf():
    client = Client(enforce_csrf_checks=True)
    page = client.get("/accounts/signup/")
    token = page.cookies["csrftoken"]
    assert token["samesite"] == "Lax"
    # Without the token the form is refused.
    data = {"email": "gil@example.com", "password1": PASSWORD, "password2": PASSWORD}
    assert client.post("/accounts/signup/", data).status_code == 403
    assert not get_user_model().objects.filter(email="gil@example.com").exists()
    assert client.post("/accounts/signup/", {**data, "csrfmiddlewaretoken": token.value}).status_code == 302
    EmailAddress.objects.filter(email="gil@example.com").update(verified=True)
    signed_in = client.post("/accounts/login/", {"login": "gil@example.com", "password": PASSWORD,
                                                 "csrfmiddlewaretoken": client.cookies["csrftoken"].value})
    assert signed_in.status_code == 302
    session = signed_in.cookies["sessionid"]
    assert session["httponly"] is True and session["samesite"] == "Lax"
    assert not session["secure"]  # development and tests are plain http; production: see below
    # A console form without the token is refused too.
    assert client.post("/console/members/invite", {"email": "x@example.com", "role": "developer"}).status_code == 403


def test_production_cookies_are_secure_and_mail_goes_by_smtp(tmp_path):
    env = {
        **os.environ, "APP_ENV": "production", "DJANGO_SETTINGS_MODULE": "config.settings", "STATE_DIR": str(tmp_path),
        "DJANGO_SECRET_KEY": "s" * 40, "API_KEY_PEPPER": "p" * 40, "DATA_MASTER_KEY": "m" * 40,
        "ALLOWED_HOSTS": "console.example", "STRIPE_SECRET_KEY": "sk_live_x", "STRIPE_PUBLISHABLE_KEY": "pk_live_x",
        "STRIPE_WEBHOOK_SECRETS": "whsec_x", "EMAIL_HOST": "smtp.example", "EMAIL_HOST_USER": "mailer",
        "EMAIL_HOST_PASSWORD": "secret", "DEFAULT_FROM_EMAIL": "Console <no-reply@console.example>",
    }
    env.pop("STRIPE_API_BASE", None)
    env.pop("EMAIL_FILE_PATH", None)
    env.pop("EMAIL_BACKEND", None)
    result = subprocess.run(
        [sys.executable, "-c", (
            "import django; django.setup(); from django.conf import settings as s; "
            "print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SESSION_COOKIE_HTTPONLY, s.SESSION_COOKIE_SAMESITE, "
            "s.EMAIL_BACKEND, s.EMAIL_HOST, s.EMAIL_PORT, s.EMAIL_USE_TLS, s.EMAIL_HOST_USER, s.DEFAULT_FROM_EMAIL)")],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [
        "True", "True", "True", "Lax", "django.core.mail.backends.smtp.EmailBackend", "smtp.example", "587", "True",
        "mailer", "Console", "<no-reply@console.example>",
    ]


@pytest.mark.django_db
def test_password_reset_by_email(client):
    sign_up(client, "hana@example.com")
    verify(client, "hana@example.com")
    client.post("/accounts/logout/")
    assert client.post("/accounts/password/reset/", {"email": "hana@example.com"}).status_code == 302
    message = mail.outbox[-1]
    url = link_in(message, "/accounts/password/reset/key/")
    form = client.get(url, follow=True)  # allauth moves the key into the session, then shows the form
    assert form.status_code == 200 and "password1" in form.content.decode()
    new = "another long passphrase 7"
    assert client.post(form.redirect_chain[-1][0], {"password1": new, "password2": new}).status_code == 302
    assert sign_in(Client(), "hana@example.com", new)["Location"] == "/console/"
    assert sign_in(Client(), "hana@example.com", PASSWORD).status_code == 200  # the old one no longer works


def totp_code(secret: str, offset: int = 0) -> str:
    return format_hotp_value(hotp_value(secret, int(time.time()) // 30 + offset))


@pytest.mark.django_db
def test_two_factor_by_totp_with_recovery_codes(client):
    sign_up(client, "ivan@example.com")
    verify(client, "ivan@example.com")
    user = get_user_model().objects.get(email="ivan@example.com")
    # Turning two-factor on asks for the password again (a recent sign-in by password).
    assert client.get("/accounts/2fa/totp/activate/")["Location"].startswith("/accounts/reauthenticate/")
    assert client.post("/accounts/reauthenticate/", {"password": PASSWORD}).status_code == 302
    page = client.get("/accounts/2fa/totp/activate/")
    assert page.status_code == 200
    secret = client.session["mfa.totp.secret"]
    assert secret in page.content.decode()  # shown for apps that cannot scan the QR code
    assert client.post("/accounts/2fa/totp/activate/", {"code": "000000"}).status_code == 200  # wrong: refused
    assert client.post("/accounts/2fa/totp/activate/", {"code": totp_code(secret)}).status_code == 302
    assert set(Authenticator.objects.filter(user=user).values_list("type", flat=True)) == {"totp", "recovery_codes"}
    codes_page = client.get("/accounts/2fa/recovery-codes/").content.decode()
    codes = Authenticator.objects.get(user=user, type="recovery_codes").wrap().get_unused_codes()
    assert len(codes) == 10 and all(code in codes_page for code in codes)

    # The password alone no longer signs in: a second step asks for a code.
    fresh = Client()
    step = sign_in(fresh, "ivan@example.com")
    assert step["Location"] == "/accounts/2fa/authenticate/"
    assert "_auth_user_id" not in fresh.session
    assert fresh.post("/accounts/2fa/authenticate/", {"code": "123456"}).status_code == 200
    assert "_auth_user_id" not in fresh.session
    assert fresh.post("/accounts/2fa/authenticate/", {"code": codes[0]})["Location"] == "/console/"
    assert fresh.session["_auth_user_id"] == str(user.pk)

    # A recovery code works once.
    again = Client()
    sign_in(again, "ivan@example.com")
    assert again.post("/accounts/2fa/authenticate/", {"code": codes[0]}).status_code == 200
    assert "_auth_user_id" not in again.session
    # The authenticator app's code signs in, once: replaying it in another sign-in is refused.
    code = totp_code(secret)
    assert again.post("/accounts/2fa/authenticate/", {"code": code})["Location"] == "/console/"
    replay = Client()
    sign_in(replay, "ivan@example.com")
    if totp_code(secret) == code:  # still the same 30-second period
        assert replay.post("/accounts/2fa/authenticate/", {"code": code}).status_code == 200
        assert "_auth_user_id" not in replay.session


@pytest.mark.django_db
def test_allauth_pages_render_in_the_console_layout_with_labelled_fields(client):
    for url in ("/accounts/login/", "/accounts/signup/", "/accounts/password/reset/"):
        html = client.get(url).content.decode()
        assert 'href="/static/css/console.css"' in html and 'class="auth"' in html, url
        assert 'class="skip" href="#main"' in html
        for field_id in re.findall(r'<input[^>]+id="(id_[a-z0-9_]+)"', html):
            assert f'for="{field_id}"' in html, (url, field_id)
    sign_up(client, "jo@example.com")
    verify(client, "jo@example.com")
    html = client.get("/accounts/2fa/").content.decode()
    assert 'aria-label="Account"' in html and "Two-factor authentication" in html
