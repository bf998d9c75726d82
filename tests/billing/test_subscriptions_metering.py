"""The meter outbox: overage settlements reported to Stripe's billing meter (the emulator's,
through the real stripe library), each once, retried safely, flagged for finance when it
cannot be sent or Stripe's meter summary does not show it.

Rows are written by the real settlement SQL (a wallet with a credit line, usage past its
balance); the sender and the acknowledgement are called as the Celery tasks call them.
"""
from __future__ import annotations

import datetime as dt
import threading

import pytest
import stripe
from django.conf import settings
from django.db import connection
from django.utils import timezone

from billing import metering, plans, tasks
from billing.invariants import check_ledger
from billing.models import MeterOutbox, Wallet
from billing.stripe_client import client, customer_for
from billing.subscriptions import credit_line_set
from tests.billing.test_ledger import price  # noqa: F401  (fixture)
from tests.billing.test_subscriptions_webhooks import spend
from tests.conftest import free_port


@pytest.fixture
def customer(stripe_emu, alice) -> str:
    """alice's Stripe customer, the meter, a credit line, and the prepaid million spent."""
    plans.meter_ensure(client())
    account = alice.organization.billing_account
    credit_line_set(account=account, credit_limit=1_000_000)
    return customer_for(account)


def overage(alice, price_, *amounts: int) -> list[MeterOutbox]:
    """Spend the balance, then each amount as one request wholly on the credit line."""
    balance = Wallet.objects.get(id=alice.wallet.id).balance
    if balance > 0:
        spend(alice, price_, balance, "req_drain")
    for n, amount in enumerate(amounts):
        spend(alice, price_, amount, f"req_over_{n}")
    return list(MeterOutbox.objects.order_by("id"))


def stripe_total(stripe_emu, customer: str) -> int:
    return stripe_emu.meter_events(customer=customer)["totals"].get(customer, {}).get(
        settings.STRIPE_METER_EVENT_NAME, 0)


def statuses() -> list[str]:
    return list(MeterOutbox.objects.order_by("id").values_list("status", flat=True))


def test_each_row_becomes_one_meter_event_with_its_identifier_and_settlement_time(stripe_emu, alice, price,  # noqa: F811
                                                                                  customer):
    rows = overage(alice, price, 700, 1_300)
    assert tasks.meter_outbox_send() == {"sent": 2, "duplicates": 0, "failed": 0, "flagged": 0}
    events = sorted(stripe_emu.meter_events(customer=customer)["data"], key=lambda e: e["identifier"])
    assert [(e["identifier"], e["payload"]["value"], e["timestamp"]) for e in events] == [
        (row.identifier, str(row.value), int(row.created_at.timestamp())) for row in sorted(rows, key=lambda r: r.identifier)
    ]
    assert all(e["event_name"] == settings.STRIPE_METER_EVENT_NAME for e in events)
    assert stripe_total(stripe_emu, customer) == 2_000
    assert statuses() == ["sent", "sent"] and all(r.sent_at for r in MeterOutbox.objects.all())
    assert tasks.meter_outbox_send()["sent"] == 0
    assert check_ledger() == []


@pytest.mark.postgres
def test_concurrent_senders_count_every_row_exactly_once(stripe_emu, alice, price, customer):  # noqa: F811
    overage(alice, price, *range(100, 2_100, 100))  # 20 rows
    results = []

    def sender():
        try:
            results.append(metering.meter_outbox_send())
        finally:
            connection.close()

    threads = [threading.Thread(target=sender) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.sent for r in results) == 20  # one sender sent each; a re-send is refused by Stripe
    assert sum(r.failed + r.flagged for r in results) == 0
    assert stripe_total(stripe_emu, customer) == sum(range(100, 2_100, 100))
    assert set(statuses()) == {"sent"}


def test_a_refused_event_is_flagged_at_once(stripe_emu, alice, price, customer):  # noqa: F811
    overage(alice, price, 500)
    account = alice.organization.billing_account
    account.stripe_customer_id = "cus_not_at_stripe"
    account.save(update_fields=["stripe_customer_id"])
    result = metering.meter_outbox_send()
    (row,) = MeterOutbox.objects.all()
    assert (result.flagged, row.status, row.attempts) == (1, "flagged", 1)
    assert "refused by Stripe" in row.last_error and "cus_not_at_stripe" in row.last_error


def test_an_account_without_a_stripe_customer_is_flagged(alice, price, transactional_db):  # noqa: F811
    credit_line_set(account=alice.organization.billing_account, credit_limit=1_000)
    overage(alice, price, 500)
    assert metering.meter_outbox_send().flagged == 1
    assert MeterOutbox.objects.get().last_error == "the account has no Stripe customer to bill the overage to"


def test_failures_are_retried_then_flagged_after_the_attempt_budget(stripe_emu, alice, price, customer,  # noqa: F811
                                                                     settings):
    settings.METER_OUTBOX_MAX_ATTEMPTS = 3
    overage(alice, price, 400)
    down = stripe.StripeClient(stripe_emu.api_key, base_addresses={"api": f"http://127.0.0.1:{free_port()}"},
                               max_network_retries=0)
    assert metering.meter_outbox_send(client=down).failed == 1
    assert metering.meter_outbox_send(client=down).failed == 1
    row = MeterOutbox.objects.get()
    assert (row.status, row.attempts) == ("pending", 2) and "APIConnectionError" in row.last_error
    assert metering.meter_outbox_send(client=down).flagged == 1
    row.refresh_from_db()
    assert (row.status, row.attempts) == ("flagged", 3) and "not sent after 3 attempts" in row.last_error
    assert stripe_total(stripe_emu, customer) == 0


def test_rows_too_old_to_resend_safely_are_flagged_not_sent(stripe_emu, alice, price, customer):  # noqa: F811
    overage(alice, price, 400)
    later = timezone.now() + dt.timedelta(minutes=settings.METER_OUTBOX_MAX_AGE_MINUTES + 1)
    assert metering.meter_outbox_send(now=later).flagged == 1
    assert statuses() == ["flagged"] and stripe_total(stripe_emu, customer) == 0


def test_acknowledged_when_stripes_summary_matches_flagged_when_it_never_does(stripe_emu, alice, price,  # noqa: F811
                                                                               customer):
    rows = overage(alice, price, 300, 600)
    metering.meter_outbox_send()
    # Stripe's summary covers whole minutes: rows of the current minute wait for the next run.
    soon = timezone.now() + dt.timedelta(minutes=1)
    assert metering.meter_outbox_acknowledge(now=soon).acknowledged == 2
    assert statuses() == ["acknowledged", "acknowledged"]

    # A row we believe sent that Stripe never recorded (lost between its answer and our write).
    spend(alice, price, 900, "req_lost")
    lost = MeterOutbox.objects.exclude(id__in=[r.id for r in rows]).get()
    MeterOutbox.objects.filter(id=lost.id).update(status="sent", sent_at=timezone.now())
    result = metering.meter_outbox_acknowledge(now=soon)
    assert (result.acknowledged, result.mismatched) == (0, [customer])
    window = soon + dt.timedelta(minutes=settings.METER_ACK_WINDOW_MINUTES)
    assert metering.meter_outbox_acknowledge(now=window).flagged == 1
    lost.refresh_from_db()
    assert lost.status == "flagged" and "not in Stripe's meter summary" in lost.last_error
    assert statuses()[:2] == ["acknowledged", "acknowledged"]
