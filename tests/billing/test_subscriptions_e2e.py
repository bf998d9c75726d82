"""Subscriptions end to end: the real stripe library against the Stripe emulator (localstripe
plus our HTTP fake for prices, Checkout, meters and meter events), signed webhooks into a
real server process, usage through the real gateway with the openai SDK.

One subscription period with overage: subscribe on the hosted Checkout page → the plan and
its credit line apply and the first invoice's included credit is granted → usage runs through
included, then prepaid, then the credit line → settlement writes meter outbox rows → the
sender reports them to Stripe's meter, which then holds exactly the ledger's overage (a
resend after a lost answer counts nothing twice) → the renewal invoice charges the metered
overage → invoice.paid brings the balance back up by exactly that and grants the new
period's included credit.
"""
from __future__ import annotations

import datetime as dt
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest
import stripe
from django.conf import settings
from django.db.models import Sum
from django.utils import timezone

from billing import metering, subscriptions
from billing.invariants import check_ledger
from billing.models import CreditLot, MeterOutbox, Subscription, Transfer
from tests.billing.subscription_kit import (
    customer_wallet,
    delivered,
    stripe_subscription,
    subscribe,
    synced_plans,
    webhooks_to,
)
from tests.conftest import SIM_MODEL, cache_settle, make_tenant

PREPAID = 50


@pytest.fixture
def plans(stripe_emu, transactional_db):
    return synced_plans()


@pytest.fixture
def dora(transactional_db):
    """A tenant with a little prepaid credit, so a few requests run into overage."""
    return make_tenant("dora", credit=PREPAID)


def chat(tenant, server, n: int = 1) -> None:
    client = openai.OpenAI(base_url=server.api, api_key=tenant.secret_key, max_retries=0)
    for _ in range(n):
        answer = client.chat.completions.create(
            model=SIM_MODEL, messages=[{"role": "user", "content": "Tell me something."}], max_tokens=64
        )
        assert answer.choices[0].message.content


def ledger_overage(tenant) -> int:
    return Transfer.objects.filter(
        kind=Transfer.Kind.USAGE, debit_wallet=customer_wallet(tenant), status=Transfer.Status.POSTED
    ).aggregate(s=Sum("overage_amount"))["s"] or 0


def meter_total(stripe_emu, customer: str) -> int:
    totals = stripe_emu.meter_events(customer=customer)["totals"]
    return totals.get(customer, {}).get(settings.STRIPE_METER_EVENT_NAME, 0)


class LostAnswers:
    """A proxy in front of the emulator that forwards each request and then hangs up without
    the answer: Stripe did the work, the sender never hears of it (a timeout, a crash)."""

    def __init__(self, upstream: str):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                httpx.post(f"{upstream}{self.path}", content=body, headers=headers, timeout=30)
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_subscription_period_with_overage_is_billed_exactly(server, sim_node, stripe_emu, plans, dora):
    webhooks_to(stripe_emu, server)
    developer = plans["developer"]

    subscription = subscribe(stripe_emu, dora, developer)

    # Stripe sent the first invoice's invoice.paid before customer.subscription.created; both applied.
    account = dora.organization.billing_account
    account.refresh_from_db()
    assert subscription.status == Subscription.Status.ACTIVE and subscription.plan == developer
    assert account.plan == developer and account.stripe_customer_id
    assert subscription.current_period_start <= timezone.now() < subscription.current_period_end
    wallet = customer_wallet(dora)
    assert wallet.credit_limit == developer.overage_limit
    assert (wallet.balance, wallet.promo) == (PREPAID + developer.included_credit, developer.included_credit)
    (lot,) = CreditLot.objects.filter(wallet=wallet)
    assert lot.kind == CreditLot.Kind.INCLUDED and lot.amount == developer.included_credit
    assert lot.expires_at == subscription.current_period_end
    first_invoice = lot.transfer.stripe_object
    assert lot.transfer.reference == f"inv:{first_invoice}:included"
    assert check_ledger() == []

    # Included credit first, then the prepaid balance, then the credit line: overage.
    cache_settle()
    chat(dora, server, n=4)
    wallet.refresh_from_db()
    assert wallet.balance < 0 and wallet.promo == 0
    overage = ledger_overage(dora)
    assert overage == -wallet.balance  # every micro-unit below zero is overage, nothing else
    rows = MeterOutbox.objects.filter(account=account)
    assert rows.aggregate(s=Sum("value"))["s"] == overage
    assert set(rows.values_list("status", flat=True)) == {MeterOutbox.Status.PENDING}
    assert check_ledger() == []

    sent = metering.meter_outbox_send()
    assert (sent.sent, sent.duplicates, sent.failed, sent.flagged) == (rows.count(), 0, 0, 0)
    assert meter_total(stripe_emu, account.stripe_customer_id) == overage
    assert set(rows.values_list("status", flat=True)) == {MeterOutbox.Status.SENT}
    assert metering.meter_outbox_send().sent == 0  # nothing left to send

    # One more request; its meter event reaches Stripe but the answer is lost three times
    # (the library's two retries included): the row stays pending with the error.
    chat(dora, server)
    overage = ledger_overage(dora)
    (late,) = rows.filter(status=MeterOutbox.Status.PENDING)
    lossy = LostAnswers(stripe_emu.api_base)
    try:
        lost = metering.meter_outbox_send(client=stripe.StripeClient(
            stripe_emu.api_key, base_addresses={"api": lossy.url}, max_network_retries=2))
    finally:
        lossy.close()
    late.refresh_from_db()
    assert (lost.sent, lost.failed) == (0, 1)
    assert late.status == MeterOutbox.Status.PENDING and late.attempts == 1 and late.last_error
    assert meter_total(stripe_emu, account.stripe_customer_id) == overage  # Stripe has it already

    # The resend: Stripe refuses the known identifier; the row is sent, nothing counted twice.
    resent = metering.meter_outbox_send()
    late.refresh_from_db()
    assert (resent.sent, resent.duplicates) == (0, 1)
    assert late.status == MeterOutbox.Status.SENT and late.attempts == 2
    assert meter_total(stripe_emu, account.stripe_customer_id) == overage

    # Stripe's meter summary accounts for every event: all acknowledged.
    acked = metering.meter_outbox_acknowledge(now=timezone.now() + dt.timedelta(minutes=1))
    assert (acked.acknowledged, acked.flagged, acked.mismatched) == (rows.count(), 0, [])
    assert set(rows.values_list("status", flat=True)) == {MeterOutbox.Status.ACKNOWLEDGED}

    # The period ends: the renewal invoice charges the fee and the metered overage.
    before = customer_wallet(dora)
    renewal = stripe_emu.renew_subscription(subscription.stripe_subscription_id)["invoice"]
    metered = [line for line in renewal["lines"]["data"] if line["price"]["id"] == developer.stripe_meter_price_id]
    assert [line["quantity"] for line in metered] == [overage]
    assert metered[0]["amount"] == (overage + 5_000) // 10_000  # 0.0001 cent per micro-unit, half up
    delivered(stripe_emu, "invoice.paid", 2)
    payment = Transfer.objects.get(kind=Transfer.Kind.OVERAGE_PAYMENT, reference=f"inv:{renewal['id']}:overage")
    assert payment.amount == overage and payment.stripe_object == renewal["id"]
    after = customer_wallet(dora)
    included = Transfer.objects.get(kind=Transfer.Kind.INCLUDED, reference=f"inv:{renewal['id']}:included")
    assert included.amount == developer.included_credit
    assert after.balance == before.balance + overage + developer.included_credit == developer.included_credit
    assert after.promo == developer.included_credit and after.credit_limit == developer.overage_limit
    assert included.credit_lot.expires_at > subscription.current_period_end  # the new period's
    subscription.refresh_from_db()
    assert subscription.current_period_start == dt.datetime.fromtimestamp(renewal["period_end"], tz=dt.UTC)
    assert check_ledger() == []

    # The same invoice again (a redelivery of the event) changes nothing.
    (event,) = [d for d in stripe_emu.deliveries(type="invoice.paid") if renewal["id"] in d["payload"]]
    replayed = stripe_emu.replay(event["event_id"])
    assert all(d["status"] == "delivered" for d in replayed)
    assert customer_wallet(dora).balance == after.balance
    assert Transfer.objects.filter(stripe_object=renewal["id"]).count() == 2
    assert check_ledger() == []


def test_upgrade_downgrade_and_cancel_follow_stripe(server, sim_node, stripe_emu, plans, dora):
    webhooks_to(stripe_emu, server)
    developer, team, free = plans["developer"], plans["team"], plans["free"]
    subscription = subscribe(stripe_emu, dora, developer)
    account = dora.organization.billing_account
    cache_settle()
    first = httpx.post(f"{server.api}/chat/completions", headers=dora.auth(), timeout=30,
                       json={"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert first.status_code == 200 and first.headers["x-ratelimit-limit-requests"] == str(developer.rpm_limit)

    with pytest.raises(subscriptions.SubscriptionError, match="already has a subscription"):
        subscriptions.subscription_checkout_create(account=account, plan=team, user=dora.user,
                                                   success_url="http://x/ok", cancel_url="http://x/no")

    subscriptions.subscription_change(account=account, plan=team, user=dora.user)
    delivered(stripe_emu, "customer.subscription.updated", 1)
    account.refresh_from_db()
    subscription.refresh_from_db()
    assert account.plan == team and subscription.plan == team
    assert customer_wallet(dora).credit_limit == team.overage_limit
    items = stripe_subscription(subscription)["items"]["data"]
    assert sorted(i["price"]["id"] for i in items) == sorted([team.stripe_price_id, team.stripe_meter_price_id])
    cache_settle()
    upgraded = httpx.post(f"{server.api}/chat/completions", headers=dora.auth(), timeout=30,
                          json={"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert upgraded.headers["x-ratelimit-limit-requests"] == str(min(team.rpm_limit, settings.GATEWAY_DEFAULT_RPM))

    with pytest.raises(subscriptions.SubscriptionError, match="already on the Team plan"):
        subscriptions.subscription_change(account=account, plan=team, user=dora.user)
    with pytest.raises(subscriptions.SubscriptionError, match="needs no subscription"):
        subscriptions.subscription_change(account=account, plan=free, user=dora.user)

    subscriptions.subscription_change(account=account, plan=developer, user=dora.user)
    delivered(stripe_emu, "customer.subscription.updated", 2)
    account.refresh_from_db()
    assert account.plan == developer and customer_wallet(dora).credit_limit == developer.overage_limit

    subscriptions.subscription_cancel(account=account, user=dora.user)  # at the period's end
    delivered(stripe_emu, "customer.subscription.updated", 3)
    subscription.refresh_from_db()
    account.refresh_from_db()
    assert subscription.cancel_at_period_end and subscription.status == Subscription.Status.ACTIVE
    assert account.plan == developer  # until the period ends

    # Keeping the plan withdraws the cancellation.
    subscriptions.subscription_change(account=account, plan=developer, user=dora.user)
    delivered(stripe_emu, "customer.subscription.updated", 4)
    subscription.refresh_from_db()
    assert not subscription.cancel_at_period_end

    # The period ends with the subscription (Stripe deletes it): Free, and no credit line.
    subscriptions.subscription_cancel(account=account, user=dora.user, at_period_end=False)
    delivered(stripe_emu, "customer.subscription.deleted", 1)
    subscription.refresh_from_db()
    account.refresh_from_db()
    assert subscription.status == Subscription.Status.CANCELED
    assert account.plan == free and customer_wallet(dora).credit_limit == 0
    cache_settle()
    refused = httpx.post(f"{server.api}/chat/completions", headers=dora.auth(), timeout=30,
                         json={"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_forbidden"
    with pytest.raises(subscriptions.SubscriptionError, match="no subscription"):
        subscriptions.subscription_cancel(account=account, user=dora.user)
    assert check_ledger() == []
