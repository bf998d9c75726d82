"""Auto-recharge end to end: the real stripe library against the Stripe emulator (localstripe for
customers, payment methods and payment intents; the emulator's front for Checkout and signed
webhook delivery), spending through the hot-path ledger SQL, the signed webhooks delivered by the
emulator to a real server process. Celery runs eagerly here: the charge task runs when the scan's
claim commits.
"""
import datetime as dt
import threading
import time

import orjson
import pytest
import stripe
from django.db import close_old_connections
from django.test import Client
from django.utils import timezone

from billing import ledger, promo, recharge, stripe_client
from billing.invariants import check_ledger
from billing.models import (
    BillingAccount,
    CreditLot,
    RechargeAttempt,
    StripeEvent,
    Transfer,
    Wallet,
)
from billing.pricing import Usage
from billing.tasks import auto_recharge_charge, auto_recharge_scan
from tests.billing.test_ledger import price, reserve  # noqa: F401  (fixture)
from tests.conftest import run_async

THRESHOLD = 500_000  # 0.50 USD
AMOUNT = 5_000_000  # 5.00 USD, TOPUP_MIN
WEBHOOK = "/billing/stripe/webhook"


@pytest.fixture
def emu(stripe_emu, server):
    """The emulator delivering payment intent events to the server process's webhook view."""
    stripe_emu.register_webhook(f"{server.url}{WEBHOOK}",
                                enabled_events=["payment_intent.succeeded", "payment_intent.payment_failed"])
    return stripe_emu


def account(tenant) -> BillingAccount:
    return BillingAccount.objects.get(organization=tenant.organization)


def save_card(tenant, pm="pm_card_visa") -> str:
    """A customer for the tenant and a card attached to it, as a top-up with setup_future_usage leaves it."""
    customer = stripe_client.customer_for(account(tenant))
    return stripe_client.client().v1.payment_methods.attach(pm, params={"customer": customer}).id


def configure(tenant, **kwargs):
    args = {"enabled": True, "threshold": THRESHOLD, "amount": AMOUNT, "user": tenant.user, **kwargs}
    return recharge.auto_recharge_configure(account=account(tenant), **args)


def spend(tenant, price, amount, request_id):  # noqa: F811
    async def run():
        held = await reserve(tenant, price, amount, request_id=request_id)
        return await ledger.settle(reservation=held, usage=Usage(input_tokens=amount, output_tokens=0),
                                   now=timezone.now())

    return run_async(run())


def available(tenant) -> int:
    return Wallet.objects.get(id=tenant.wallet.id).available


def payment_intents(tenant) -> list:
    customer = account(tenant).stripe_customer_id
    return stripe_client.client().v1.payment_intents.list(params={"customer": customer, "limit": 100}).data


def credits(tenant) -> list[tuple[str, int, str]]:
    return list(Transfer.objects.filter(kind=Transfer.Kind.TOPUP, credit_wallet=tenant.wallet)
                .order_by("id").values_list("reference", "amount", "stripe_object"))


def run_scans_concurrently(n=2) -> list[dict]:
    barrier = threading.Barrier(n)
    results, errors = [], []

    def run():
        try:
            barrier.wait()
            results.append(recharge.auto_recharge_scan())
        except Exception as exc:  # noqa: BLE001  (asserted below)
            errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    return results


def test_one_charge_and_one_credit_per_crossing_then_a_second_crossing_charges_again(emu, alice, price):  # noqa: F811
    card = save_card(alice)
    configure(alice)
    assert account(alice).auto_recharge_payment_method == card  # the saved card, looked up in Stripe
    assert recharge.auto_recharge_scan()["claimed"] == 0  # 1.00 USD available: above the threshold

    spend(alice, price, 600_000, "req_1")
    assert available(alice) == 400_000

    # Two scans at once, then the task again and the scheduled task: one claim, one charge.
    assert sorted(r["claimed"] for r in run_scans_concurrently()) == [0, 1]
    assert auto_recharge_scan.apply().get()["claimed"] == 0
    (attempt,) = RechargeAttempt.objects.all()
    assert (attempt.crossing, attempt.amount, attempt.payment_method) == (1, AMOUNT, card)
    # Disarmed by the claim until the credit lands; the charge runs on commit, so its webhook may
    # already have come back (the credit re-arms in its own transaction): read armed first.
    assert not account(alice).auto_recharge_armed or credits(alice)
    (pi,) = payment_intents(alice)
    assert (pi.amount, pi.currency, pi.status, pi.payment_method) == (500, "usd", "succeeded", card)
    assert pi.metadata.to_dict() == {"account_id": str(account(alice).id), "amount_micros": str(AMOUNT),
                                     "purpose": "auto_recharge", "crossing": "1"}

    # Stripe's webhook, delivered by the emulator to the server, then twice more: one credit.
    first = emu.deliveries(type="payment_intent.succeeded", status="delivered", wait_for=1)
    (event_id,) = {d["event_id"] for d in first}
    emu.replay(event_id)
    emu.replay(event_id)
    assert len(emu.deliveries(event_id=event_id, status="delivered", wait_for=3)) == 3
    assert credits(alice) == [(f"pi:{pi.id}", AMOUNT, pi.id)]
    assert available(alice) == 400_000 + AMOUNT
    attempt.refresh_from_db()
    assert (attempt.status, attempt.payment_intent, attempt.transfer.reference) == ("succeeded", pi.id, f"pi:{pi.id}")
    assert account(alice).auto_recharge_armed  # back above the threshold: re-armed with the credit
    assert StripeEvent.objects.get(id=event_id).status == "processed"
    # Another event about the same payment (signed here with the stripe library's scheme), and
    # reconciliation healing from the payment intent as Stripe returns it: still the one credit.
    fetched = stripe_client.client().v1.payment_intents.retrieve(pi.id).to_dict()
    payload = orjson.dumps({"id": "evt_same_payment_again", "object": "event", "type": "payment_intent.succeeded",
                            "created": int(time.time()), "data": {"object": fetched}})
    header = stripe.WebhookSignature.generate_signature_header(payload.decode(), emu.webhook_secret)
    answer = Client().post(WEBHOOK, data=payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)
    assert answer.status_code == 200 and answer.json()["status"] == "processed"
    assert StripeEvent.objects.get(id="evt_same_payment_again").error.startswith("already credited")
    transfer, created = recharge.credit_payment_intent(payment_intent=fetched, source="reconciliation heal")
    assert not created and transfer.reference == f"pi:{pi.id}"
    assert credits(alice) == [(f"pi:{pi.id}", AMOUNT, pi.id)]
    assert check_ledger() == []

    # A second crossing is a new charge, with a new idempotency key.
    spend(alice, price, AMOUNT, "req_2")
    assert available(alice) == 400_000
    assert recharge.auto_recharge_scan()["claimed"] == 1
    assert recharge.auto_recharge_scan()["claimed"] == 0
    second = RechargeAttempt.objects.get(crossing=2)
    assert second.idempotency_key != attempt.idempotency_key
    assert len(payment_intents(alice)) == 2
    emu.deliveries(type="payment_intent.succeeded", status="delivered", wait_for=4)  # 3 of the first + 1
    second.refresh_from_db()
    assert second.status == "succeeded" and second.payment_intent not in (pi.id, "")
    assert [amount for _, amount, _ in credits(alice)] == [AMOUNT, AMOUNT]
    assert available(alice) == 400_000 + AMOUNT
    assert check_ledger() == []


def test_a_retried_charge_task_reuses_the_payment_intent(emu, alice, price):  # noqa: F811
    save_card(alice)
    configure(alice)
    spend(alice, price, 600_000, "req_1")
    emu.drop_next(type="payment_intent.succeeded")  # held back until the end
    recharge.auto_recharge_scan()
    attempt = RechargeAttempt.objects.get()
    (pi,) = payment_intents(alice)
    # The worker died after Stripe charged and before it wrote the answer down: the task runs again,
    # and the scan later resends what still looks unanswered. Stripe answers both from the idempotency key.
    RechargeAttempt.objects.filter(id=attempt.id).update(status="pending", payment_intent="")
    assert auto_recharge_charge.apply(args=[attempt.id]).get() == "processing"
    RechargeAttempt.objects.filter(id=attempt.id).update(status="pending", payment_intent="")
    later = timezone.now() + recharge.RESEND_AFTER + dt.timedelta(seconds=1)
    assert recharge.auto_recharge_scan(now=later)["resent"] == 1
    assert [p.id for p in payment_intents(alice)] == [pi.id]
    attempt.refresh_from_db()
    assert (attempt.status, attempt.payment_intent) == ("processing", pi.id)
    # Only then is the webhook delivered (it was dropped): the one credit lands.
    (dropped,) = emu.deliveries(type="payment_intent.succeeded", status="dropped", wait_for=1)
    emu.replay(dropped["event_id"])
    emu.deliveries(type="payment_intent.succeeded", status="delivered", wait_for=1)
    assert credits(alice) == [(f"pi:{pi.id}", AMOUNT, pi.id)]
    attempt.refresh_from_db()
    assert attempt.status == "succeeded"
    assert check_ledger() == []


def test_a_declined_card_credits_nothing_pauses_and_is_not_retried(emu, alice, price, client):  # noqa: F811
    good = save_card(alice)
    failing = save_card(alice, "pm_card_chargeCustomerFail")  # attaches, then every charge is declined
    configure(alice, payment_method=failing)
    spend(alice, price, 600_000, "req_1")
    assert recharge.auto_recharge_scan()["claimed"] == 1

    attempt = RechargeAttempt.objects.get()
    assert attempt.status == "failed" and "declined" in attempt.error.lower()
    failed = emu.deliveries(type="payment_intent.payment_failed", status="delivered", wait_for=1)
    (event_id,) = {d["event_id"] for d in failed}
    assert StripeEvent.objects.get(id=event_id).status == "processed"
    attempt.refresh_from_db()
    (pi,) = payment_intents(alice)
    assert (attempt.status, attempt.payment_intent) == ("failed", pi.id)  # named by the webhook
    assert not emu.deliveries(type="payment_intent.succeeded")
    assert credits(alice) == [] and available(alice) == 400_000
    assert not account(alice).auto_recharge_armed
    # No loop: the next scans (and the webhook again) charge nothing more.
    emu.replay(event_id)
    assert recharge.auto_recharge_scan()["claimed"] == 0
    assert recharge.auto_recharge_scan(now=timezone.now() + dt.timedelta(hours=1))["claimed"] == 0
    assert len(payment_intents(alice)) == 1 and RechargeAttempt.objects.count() == 1
    attempt.refresh_from_db()
    assert attempt.status == "failed"

    # Visible on the console: paused, with Stripe's reason.
    client.force_login(alice.user)
    page = client.get(f"/billing/?org={alice.organization.public_id}")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Paused: the last charge failed." in html and 'data-testid="auto-recharge-failure"' in html
    assert "declined" in html.lower()

    # The customer switches back to the good card: saving re-arms, the next scan charges it.
    configure(alice, payment_method=good)
    assert account(alice).auto_recharge_armed
    assert recharge.auto_recharge_scan()["claimed"] == 1
    emu.deliveries(type="payment_intent.succeeded", status="delivered", wait_for=1)
    assert [amount for _, amount, _ in credits(alice)] == [AMOUNT]
    assert RechargeAttempt.objects.get(crossing=2).status == "succeeded"
    assert check_ledger() == []


def test_a_card_saved_by_a_checkout_top_up_is_the_default_and_that_payment_is_not_credited_here(emu, alice):
    customer = stripe_client.customer_for(account(alice))
    session = stripe_client.client().v1.checkout.sessions.create(params={
        "mode": "payment", "customer": customer,
        "line_items": [{"price_data": {"currency": "usd", "unit_amount": 1000, "product_data": {"name": "Top-up"}},
                        "quantity": 1}],
        "success_url": "http://127.0.0.1/ok", "cancel_url": "http://127.0.0.1/no",
        "payment_intent_data": {"setup_future_usage": "off_session", "metadata": {"purpose": "topup"}},
    })
    assert emu.pay(session.url).status_code == 303
    (topup_pi,) = payment_intents(alice)
    configure(alice)
    assert account(alice).auto_recharge_payment_method == topup_pi.payment_method
    # The top-up's own payment_intent.succeeded is not an auto-recharge: stored and ignored by this handler.
    delivered = emu.deliveries(type="payment_intent.succeeded", status="delivered", wait_for=1)
    event = StripeEvent.objects.get(id=delivered[0]["event_id"])
    assert event.status == "ignored" and "not an auto-recharge" in event.error
    assert not Transfer.objects.filter(reference=f"pi:{topup_pi.id}").exists()


def test_settings_are_validated_and_bad_ones_change_nothing(stripe_emu, alice, charlie, settings):
    settings.TOPUP_MIN, settings.TOPUP_MAX = 5_000_000, 100_000_000
    with pytest.raises(recharge.RechargeError, match="No saved card"):
        configure(alice)  # no Stripe customer yet
    save_card(alice)
    charlies_card = save_card(charlie)
    for kwargs, message in [
        ({"amount": 4_990_000}, "between 5.00 USD and 100.00 USD"),
        ({"amount": 100_010_000}, "between"),
        ({"amount": 5_000_001}, "whole cents"),
        ({"threshold": -1}, "negative"),
        ({"threshold": 1.5}, "integer"),
        ({"payment_method": charlies_card}, "not saved for this organization"),
        ({"payment_method": "pm_nope"}, "not known"),
    ]:
        with pytest.raises(recharge.RechargeError, match=message):
            configure(alice, **kwargs)
    a = account(alice)
    assert (a.auto_recharge_enabled, a.auto_recharge_threshold, a.auto_recharge_amount, a.auto_recharge_payment_method) \
        == (False, 0, 0, "")
    # Off needs no card; on with a saved card works.
    configure(charlie, enabled=False)
    assert not account(charlie).auto_recharge_enabled
    configure(alice)
    assert account(alice).auto_recharge_enabled


def test_switched_off_before_the_charge_runs_charges_nothing(stripe_emu, alice, price):  # noqa: F811
    save_card(alice)
    configure(alice)
    spend(alice, price, 600_000, "req_1")
    attempt = RechargeAttempt.objects.create(account=account(alice), crossing=99, amount=AMOUNT,
                                             payment_method=account(alice).auto_recharge_payment_method)
    configure(alice, enabled=False)
    assert auto_recharge_charge.apply(args=[attempt.id]).get() == "canceled"
    assert payment_intents(alice) == []


def test_the_console_form_saves_for_billing_roles_only(stripe_emu, alice, bob, charlie, client):
    save_card(alice)
    org = alice.organization.public_id
    page_url = f"/billing/?org={org}"
    form = {"org": org, "enabled": "on", "threshold": "2.50", "amount": "20", "next": f"{page_url}#auto-recharge"}
    client.force_login(alice.user)
    page = client.get(page_url).content.decode()
    assert 'id="auto-recharge"' in page and 'action="/billing/auto-recharge"' in page
    assert "Off." in page
    response = client.post("/billing/auto-recharge", form)
    assert response.status_code == 302 and response["Location"] == f"{page_url}#auto-recharge"
    a = account(alice)
    assert (a.auto_recharge_enabled, a.auto_recharge_threshold, a.auto_recharge_amount) == (True, 2_500_000, 20_000_000)
    page = client.get(page_url).content.decode()
    assert "On: when available credit falls below 2.50 USD, the saved card is charged 20.00 USD." in page
    # Bad input: a message, nothing changes.
    for bad in ({"amount": "20.001"}, {"amount": "abc"}, {"amount": "1"}, {"threshold": "-3"}, {"amount": ""}):
        response = client.post("/billing/auto-recharge", {**form, **bad}, follow=True)
        assert response.status_code == 200 and "Auto-recharge not saved" in response.content.decode()
    a = account(alice)
    assert (a.auto_recharge_enabled, a.auto_recharge_threshold, a.auto_recharge_amount) == (True, 2_500_000, 20_000_000)
    # An open redirect is refused: back to the billing page.
    response = client.post("/billing/auto-recharge", {**form, "next": "https://evil.example/"})
    assert response["Location"] == f"{page_url}#auto-recharge"
    assert client.get(f"/billing/auto-recharge?org={org}")["Location"] == f"{page_url}#auto-recharge"
    # bob is a developer of alice's org, charlie an outsider: 404 both ways, nothing changes.
    for user in (bob.user, charlie.user):
        client.force_login(user)
        assert client.get(f"/billing/auto-recharge?org={org}").status_code == 404
        assert client.post("/billing/auto-recharge", {**form, "enabled": ""}).status_code == 404
    assert account(alice).auto_recharge_enabled
    client.logout()
    assert client.post("/billing/auto-recharge", {**form, "enabled": ""}).status_code == 302  # to the login page
    assert account(alice).auto_recharge_enabled


def test_the_billing_page_lists_promotional_credit_with_what_is_left(alice, client):
    expires = timezone.now() + dt.timedelta(days=7)
    promo.promo_grant(account=account(alice), amount=2_000_000, expires_at=expires, reference="welcome",
                      description="Welcome credit")
    client.force_login(alice.user)
    page = client.get(f"/billing/?org={alice.organization.public_id}").content.decode()
    lot = CreditLot.objects.get()
    assert 'id="credit-lots"' in page and f'data-testid="lot-{lot.id}"' in page
    row = page[page.index(f'data-testid="lot-{lot.id}"'):].split("</tr>")[0]
    assert "Welcome credit" in row and row.count("2.00 USD") == 2 and expires.strftime("%Y-%m-%d %H:%M") in row


def test_an_auto_recharge_payment_refunded_in_stripe_is_reversed_once(stripe_emu, server, alice, price):  # noqa: F811
    stripe_emu.register_webhook(f"{server.url}{WEBHOOK}")  # every event type
    save_card(alice)
    configure(alice)
    spend(alice, price, 600_000, "req_1")
    recharge.auto_recharge_scan()
    stripe_emu.deliveries(type="payment_intent.succeeded", status="delivered", wait_for=1)
    (pi,) = payment_intents(alice)
    assert available(alice) == 400_000 + AMOUNT
    # Refunded from Stripe's side (the Dashboard): W1's refund handlers find the credit by its payment intent.
    refund = stripe_client.client().v1.refunds.create(params={"payment_intent": pi.id, "amount": 200})
    stripe_emu.deliveries(type="charge.refunded", status="delivered", wait_for=1)
    stripe_emu.deliveries(type="refund.created", status="delivered", wait_for=1)
    reversals = list(Transfer.objects.filter(kind=Transfer.Kind.REFUND).values_list("reference", "amount"))
    assert reversals == [(f"re:{refund.id}", 2_000_000)]
    assert available(alice) == 400_000 + AMOUNT - 2_000_000
    assert check_ledger() == []
