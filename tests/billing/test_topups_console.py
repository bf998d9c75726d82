"""The console billing page: who sees it, what it shows, how the top-up form refuses bad input.

Server-rendered and usable without JavaScript; forms carry CSRF tokens. Input errors answer 400
with the message next to the field and create nothing (no row, no Stripe call).
"""
import datetime as dt
import re

import pytest
from django.test import Client
from django.utils import timezone

from billing import ledger
from billing.models import TopupRefund, TopupSession, Transfer, Wallet
from billing.services import wallet_credit
from console import services
from console.models import Role
from tests.billing import stripe_payloads as sp
from tests.billing.checkout_flow import login
from tests.billing.test_ledger import price, reserve  # noqa: F401  (fixture)
from tests.conftest import run_async


def member(tenant, name: str, role: str):
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(username=name, password="pw-" + name * 2)
    services.membership_add(organization=tenant.organization, user=user, role=role)
    return type("Member", (), {"user": user})()


def page(client, tenant) -> str:
    response = client.get(f"/billing/?org={tenant.organization.public_id}")
    assert response.status_code == 200
    return response.content.decode()


def figure(html: str, testid: str) -> str:
    return re.search(rf'data-testid="{testid}">([^<]*)<', html).group(1).strip()


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN, Role.FINANCE])
def test_billing_roles_see_the_page(client, alice, role):
    someone = member(alice, f"u{role}", role) if role != Role.OWNER else alice
    login(client, someone)
    assert "Top up" in page(client, alice)


def test_developers_and_outsiders_get_404_everywhere(client, alice, bob, charlie):
    row = sp.topup_row(alice, 10_000_000, customer="cus_alice")
    topup = wallet_credit(wallet=alice.wallet, amount=5_000_000, kind=Transfer.Kind.TOPUP, reference="t:1",
                          stripe_object="pi_x")
    for intruder in (bob, charlie):  # bob is a developer of alice's organization
        client.logout()
        login(client, intruder)
        org = alice.organization.public_id
        assert client.get(f"/billing/?org={org}").status_code == 404
        assert client.post("/billing/topup", {"org": org, "amount": "10"}).status_code == 404
        assert client.get(f"/billing/topup/success?session_id={row.stripe_session_id}").status_code == 404
        assert client.post(f"/billing/topups/{topup.id}/refund", {"org": org, "amount": "1"}).status_code == 404
        assert client.post("/billing/reactivate", {"org": org, "note": "x"}).status_code == 404
    # charlie, naming his own organization, cannot reach alice's top-up through it
    assert client.post(f"/billing/topups/{topup.id}/refund",
                       {"org": charlie.organization.public_id, "amount": "1"}).status_code == 404
    assert not TopupSession.objects.exclude(id=row.id).exists() and not TopupRefund.objects.exists()


def test_admins_cannot_refund_or_reactivate_only_owners_and_finance(client, alice):
    admin = member(alice, "admin1", Role.ADMIN)
    topup = wallet_credit(wallet=alice.wallet, amount=5_000_000, kind=Transfer.Kind.TOPUP, reference="t:2",
                          stripe_object="pi_y")
    login(client, admin)
    html = page(client, alice)
    assert f"/billing/topups/{topup.id}/refund" not in html
    assert client.post(f"/billing/topups/{topup.id}/refund",
                       {"org": alice.organization.public_id, "amount": "1"}).status_code == 404
    client.logout()
    login(client, member(alice, "fin1", Role.FINANCE))
    assert f"/billing/topups/{topup.id}/refund" in page(client, alice)


def test_login_is_required(client, alice):
    response = client.get("/billing/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("", "Enter an amount in dollars"),
        ("ten", "Enter an amount in dollars"),
        ("10.001", "at most two decimals"),
        ("-5", "Enter an amount in dollars"),
        ("4.99", "is outside that range"),
        ("10000.01", "is outside that range"),
        ("1e3", "Enter an amount in dollars"),
    ],
)
def test_bad_amounts_are_refused_with_a_clear_message_and_create_nothing(client, alice, typed, message):
    login(client, alice)
    response = client.post("/billing/topup", {"org": alice.organization.public_id, "amount": typed})
    html = response.content.decode()
    assert response.status_code == 400 and message in html and 'role="alert"' in html
    assert 'aria-invalid="true"' in html
    assert not TopupSession.objects.exists()


def test_bounds_come_from_settings(client, alice, settings):
    settings.TOPUP_MIN, settings.TOPUP_MAX = 20_000_000, 50_000_000
    login(client, alice)
    html = page(client, alice)
    assert "Between 20.00 USD and 50.00 USD" in html
    response = client.post("/billing/topup", {"org": alice.organization.public_id, "amount": "19.99"})
    assert response.status_code == 400 and "20.00 USD" in response.content.decode()


def test_a_suspended_wallet_cannot_top_up(client, alice):
    Wallet.objects.filter(id=alice.wallet.id).update(status="suspended", suspended_reason="dispute")
    login(client, alice)
    response = client.post("/billing/topup", {"org": alice.organization.public_id, "amount": "10"})
    assert response.status_code == 400 and "suspended" in response.content.decode()
    assert not TopupSession.objects.exists()


def test_forms_need_csrf(alice):
    client = Client(enforce_csrf_checks=True)
    login(client, alice)
    html = page(client, alice)
    assert html.count("csrfmiddlewaretoken") >= 1
    assert client.post("/billing/topup", {"org": alice.organization.public_id, "amount": "10"}).status_code == 403
    assert client.post("/billing/reactivate", {"org": alice.organization.public_id, "note": "x"}).status_code == 403
    assert not TopupSession.objects.exists()


def test_the_page_shows_paid_and_promo_apart_holds_credit_line_and_a_running_balance(client, alice, price):  # noqa: F811
    wallet_credit(wallet=alice.wallet, amount=2_000_000, kind=Transfer.Kind.PROMO, reference="promo:page",
                  expires_at=timezone.now() + dt.timedelta(days=10), description="Welcome credit")
    Wallet.objects.filter(id=alice.wallet.id).update(credit_limit=5_000_000)
    run_async(reserve(alice, price, 250_000, request_id="req_page"))
    login(client, alice)
    html = page(client, alice)
    assert figure(html, "balance") == "3.00 USD"
    assert figure(html, "paid") == "1.00 USD" and figure(html, "promo") == "2.00 USD"
    assert figure(html, "credit-line").startswith("5.00 USD")
    assert "0.25 USD" in figure(html, "reserved")
    assert figure(html, "available") == "7.75 USD"
    ledger_rows = re.findall(r"<td>([-\d.,]+ USD)</td><td>([-\d.,]+ USD)</td></tr>", html)
    assert ledger_rows == [("2.00 USD", "3.00 USD"), ("1.00 USD", "1.00 USD")]  # newest first, running balance
    assert "Welcome credit" in html


def test_overage_and_what_is_owed_are_shown(client, alice, price):  # noqa: F811
    Wallet.objects.filter(id=alice.wallet.id).update(credit_limit=5_000_000)

    async def overspend():
        r = await reserve(alice, price, 3_000_000, request_id="req_over")
        from billing.pricing import Usage

        await ledger.settle(reservation=r, usage=Usage(input_tokens=1, output_tokens=0), now=timezone.now(),
                            amount=3_000_000)

    run_async(overspend())
    receivable = Wallet.objects.get(account_id=alice.wallet.account_id, kind="receivable")
    funding = Wallet.objects.get(account_id=alice.wallet.account_id, kind="funding")
    from billing.services import transfer_post

    transfer_post(kind=Transfer.Kind.REFUND, debit_wallet=receivable, credit_wallet=funding, amount=1_500_000,
                  reference="re:test:owed")
    login(client, alice)
    html = page(client, alice)
    assert figure(html, "balance") == "-2.00 USD"
    assert "2.00 USD used" in figure(html, "credit-line") and figure(html, "owed") == "1.50 USD"


def test_the_success_page_of_a_pending_top_up_refreshes_and_the_cancel_page_says_nothing_was_charged(client, alice):
    row = sp.topup_row(alice, 10_000_000, customer="cus_alice")
    login(client, alice)
    html = client.get(f"/billing/topup/success?session_id={row.stripe_session_id}").content.decode()
    assert "Payment received, credit pending" in html and '<meta http-equiv="refresh" content="3">' in html
    TopupSession.objects.filter(id=row.id).update(status=TopupSession.Status.REFUSED, error="amount mismatch")
    html = client.get(f"/billing/topup/success?session_id={row.stripe_session_id}").content.decode()
    assert "could not be credited automatically" in html and "refresh" not in html
    assert client.get("/billing/topup/success?session_id=cs_unknown").status_code == 404
    cancel = client.get(f"/billing/topup/cancel?org={alice.organization.public_id}").content.decode()
    assert "nothing was charged" in cancel
