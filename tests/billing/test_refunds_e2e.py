"""Refunds end to end: a console refund creates a real refund in the emulator (localstripe's refund,
announced by the emulator), whose signed webhooks reach the live server, which posts the reversal:
from the wallet what it can give, the rest owed on the receivable wallet.
"""
import pytest
from django.utils import timezone

from billing import ledger
from billing.invariants import check_ledger
from billing.models import TopupRefund, Transfer, Wallet
from billing.pricing import Usage
from console import services
from console.models import Role
from tests.billing.checkout_flow import credits, emulator, login, start_topup  # noqa: F401  (fixture)
from tests.billing.test_ledger import price, reserve  # noqa: F401  (fixture)
from tests.conftest import run_async


def wallets(tenant) -> dict[str, Wallet]:
    return {w.kind: w for w in Wallet.objects.filter(account__organization=tenant.organization)}


def paid_topup(client, tenant, emu, dollars: str) -> Transfer:
    row = start_topup(client, tenant, dollars)
    emu.pay(row.checkout_url)
    (credit,) = credits(row)
    return credit


def spend(tenant, price, amount):  # noqa: F811
    async def go():
        r = await reserve(tenant, price, amount, request_id=f"req_spend_{amount}")
        await ledger.settle(reservation=r, usage=Usage(input_tokens=1, output_tokens=0), now=timezone.now(),
                            amount=amount)

    run_async(go())


def refund_from_console(client, tenant, topup: Transfer, dollars: str):
    return client.post(f"/billing/topups/{topup.id}/refund", {"org": tenant.organization.public_id, "amount": dollars},
                       follow=True)


def test_partial_then_full_refund_with_spent_money_books_what_the_wallet_cannot_cover_as_owed(client, alice, emulator, price):  # noqa: F811
    login(client, alice)
    topup = paid_topup(client, alice, emulator, "20")  # balance 21.00
    stripe = emulator.client()

    page = refund_from_console(client, alice, topup, "5").content.decode()
    assert "Refund of 5.00 USD sent to Stripe" in page
    emulator.deliveries(type="charge.refunded", wait_for=1)  # the webhooks of that refund have landed
    first = TopupRefund.objects.get()
    assert first.status == TopupRefund.Status.SUCCEEDED and first.stripe_refund_id.startswith("re_")
    refund = stripe.v1.refunds.retrieve(first.stripe_refund_id)
    assert (refund.amount, refund.payment_intent, refund.metadata["topup_refund"]) == (500, topup.stripe_object, first.public_id)
    assert wallets(alice)["customer"].balance == 16_000_000

    spend(alice, price, 14_000_000)  # balance 2.00

    page = refund_from_console(client, alice, topup, "15.00").content.decode()
    assert "Refund of 15.00 USD sent to Stripe" in page
    emulator.deliveries(type="charge.refunded", wait_for=2)
    w = wallets(alice)
    assert w["customer"].balance == 0 and w["receivable"].balance == -13_000_000
    second = TopupRefund.objects.exclude(id=first.id).get()
    parts = dict(Transfer.objects.filter(kind="refund", stripe_object=second.stripe_refund_id).values_list("reference", "amount"))
    assert parts == {f"re:{second.stripe_refund_id}": 2_000_000, f"re:{second.stripe_refund_id}:owed": 13_000_000}
    assert stripe.v1.charges.retrieve(stripe.v1.payment_intents.retrieve(topup.stripe_object).latest_charge).amount_refunded == 2000

    # Nothing is left to refund: refused before Stripe is asked.
    page = refund_from_console(client, alice, topup, "0.01").content.decode()
    assert "At most 0.00 USD of this top-up can still be refunded" in page
    assert TopupRefund.objects.count() == 2
    billing = client.get(f"/billing/?org={alice.organization.public_id}").content.decode()
    assert 'data-testid="owed">13.00 USD' in billing
    assert {(d["status"], d["http_status"]) for d in emulator.deliveries()} == {("delivered", 200)}
    assert check_ledger() == []


def test_a_refund_made_in_the_stripe_dashboard_is_posted_from_its_webhook(client, alice, emulator):  # noqa: F811
    login(client, alice)
    topup = paid_topup(client, alice, emulator, "10")
    emulator.client().v1.refunds.create(params={"payment_intent": topup.stripe_object, "amount": 300})
    emulator.deliveries(type="charge.refunded", wait_for=1)
    row = TopupRefund.objects.get()
    assert (row.amount, row.status, row.requested_by) == (3_000_000, "succeeded", None)
    assert wallets(alice)["customer"].balance == 8_000_000
    assert Transfer.objects.filter(kind="refund").count() == 1  # refund.created and charge.refunded: once
    assert check_ledger() == []


def test_finance_may_refund_and_bad_amounts_are_refused(client, alice, emulator):  # noqa: F811
    login(client, alice)
    topup = paid_topup(client, alice, emulator, "10")
    client.logout()
    from django.contrib.auth import get_user_model

    finance = get_user_model().objects.create_user(username="fin", password="pw-finfin")
    services.membership_add(organization=alice.organization, user=finance, role=Role.FINANCE)
    assert client.login(username="fin", password="pw-finfin")
    for typed, message in [("abc", "Enter an amount in dollars"), ("0", "Enter a positive amount"),
                           ("10.01", "At most 10.00 USD")]:
        page = refund_from_console(client, alice, topup, typed).content.decode()
        assert f"Refund not made: {message}" in page
    assert not TopupRefund.objects.exists()
    assert "Refund of 1.00 USD sent to Stripe" in refund_from_console(client, alice, topup, "1").content.decode()
    emulator.deliveries(type="charge.refunded", wait_for=1)
    assert TopupRefund.objects.get().requested_by_id == finance.id
    assert wallets(alice)["customer"].balance == 10_000_000


@pytest.mark.parametrize("role", [Role.ADMIN, Role.DEVELOPER])
def test_other_roles_cannot_refund(client, alice, emulator, role):  # noqa: F811
    login(client, alice)
    topup = paid_topup(client, alice, emulator, "10")
    client.logout()
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(username="someone", password="pw-someonesomeone")
    services.membership_add(organization=alice.organization, user=user, role=role)
    assert client.login(username="someone", password="pw-someonesomeone")
    assert refund_from_console(client, alice, topup, "1").status_code == 404
    assert not TopupRefund.objects.exists() and wallets(alice)["customer"].balance == 11_000_000
