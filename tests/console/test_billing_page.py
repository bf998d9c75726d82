"""The billing page's reservations in flight, its ledger a page at a time with the balance after
each line (checked against the ledger itself), the plan link and the organization's Stripe
invoices (a real subscription through the Stripe emulator, its first invoice and a renewal)."""
from __future__ import annotations

import re

from django.db.models import Sum

from billing import invoices, ledger_selectors
from billing.models import Entry, Transfer, Wallet
from billing.pricing import Usage
from billing.services import transfer_post, wallet_credit
from tests.billing.test_ledger import price  # noqa: F401 (fixture)
from tests.billing.test_spend_caps import reserve
from tests.conftest import run_async
from tests.console.test_views import login


def billing_url(tenant, **query) -> str:
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return f"/billing/?org={tenant.organization.public_id}{extra}"


def rows(page: str) -> list[tuple[int, int, int]]:
    """(entry id, amount, balance after) of each ledger line on the page."""
    return [(int(e), int(a), int(b)) for e, a, b in re.findall(
        r'<tr data-entry="(\d+)" data-amount="(-?\d+)" data-balance="(-?\d+)">', page)]


def test_reservations_in_flight_with_request_ids_amounts_and_age(client, alice, price):  # noqa: F811
    from django.utils import timezone

    from billing import ledger

    first = run_async(reserve(alice, price, 1_500, request_id="req_inflight_one"))
    run_async(reserve(alice, price, 2_500, request_id="req_inflight_two"))
    done = run_async(reserve(alice, price, 700, request_id="req_settled"))
    run_async(ledger.settle(reservation=done, usage=Usage(input_tokens=100, output_tokens=50), now=timezone.now()))
    login(client, alice)
    page = client.get(billing_url(alice)).content.decode()
    assert '<strong data-testid="in-flight-count">2</strong>' in page
    assert '<strong data-testid="in-flight-amount">0.004 USD</strong>' in page  # 4,000 micro-units
    assert "req_inflight_one" in page and "req_inflight_two" in page and "req_settled" not in page.split('id="in-flight"')[1].split("</section>")[0]
    row = page.split(f'data-reservation="{first.transfer_id}"')[1].split("</tr>")[0]
    age = int(re.search(r'data-age="(\d+)"', row).group(1))
    assert 0 <= age < 60 and "ledger-model" in row
    # the selector's sum is the wallet's reserved: the invariant the ledger keeps
    wallet = Wallet.objects.get(id=alice.wallet.id)
    held = ledger_selectors.reservations_in_flight(wallet=wallet)
    assert (held.count, held.amount) == (2, 4_000) == (2, wallet.reserved)
    assert [r.request_id for r in held.rows] == ["req_inflight_one", "req_inflight_two"]  # oldest first


def test_the_ledger_pages_and_every_running_balance_matches_the_ledger(client, alice, settings):
    wallet = alice.wallet
    usage = Wallet.objects.get(account_id=wallet.account_id, kind=Wallet.Kind.USAGE)
    for i in range(30):
        wallet_credit(wallet=wallet, amount=10_000 + i, reference=f"grant:{i}")
        if i % 2:
            transfer_post(kind=Transfer.Kind.ADJUSTMENT, debit_wallet=Wallet.objects.get(id=wallet.id), credit_wallet=usage,
                          amount=3_000 + i, reference=f"use:{i}")
    total = Entry.objects.filter(wallet_id=wallet.id).count()
    assert total == 1 + 30 + 15  # the seed credit, the grants, the debits
    login(client, alice)
    seen, url, pages = [], billing_url(alice), 0
    while url:
        page = client.get(url).content.decode()
        lines = rows(page)
        assert 0 < len(lines) <= ledger_selectors.LEDGER_PAGE_SIZE
        seen.extend(lines)
        pages += 1
        older = re.search(r'href="\?org=[^&"]+&amp;before=(\d+)#ledger" rel="next"', page)
        url = billing_url(alice, before=older.group(1)) if older else None
        assert ("Newest</a>" in page) == (pages > 1)
    assert pages == 2 and len(seen) == total
    ids = [e for e, _, _ in seen]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == total
    assert seen[0][2] == Wallet.objects.get(id=wallet.id).balance
    for entry_id, amount, balance in seen:
        # independent of the page's arithmetic: the sum of the wallet's entries up to this one
        assert balance == Entry.objects.filter(wallet_id=wallet.id, id__lte=entry_id).aggregate(s=Sum("amount"))["s"]
        assert amount == Entry.objects.get(id=entry_id).amount


def test_a_page_past_the_end_and_a_bad_cursor(client, alice):
    login(client, alice)
    assert "No movements before these" in client.get(billing_url(alice, before=1)).content.decode()
    page = client.get(billing_url(alice, before="nonsense")).content.decode()
    assert rows(page) and "Newest</a>" not in page  # the first page


def test_no_stripe_customer_means_no_call_and_no_invoices(client, alice, settings):
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # would fail if it were asked
    login(client, alice)
    page = client.get(billing_url(alice)).content.decode()
    assert "No invoices yet" in page and "cannot be read from Stripe" not in page
    assert f'/billing/plan?org={alice.organization.public_id}' in page  # plan and subscription management


def test_stripe_down_says_so_and_the_page_still_works(client, alice, settings, monkeypatch):
    from billing.models import BillingAccount

    BillingAccount.objects.filter(organization=alice.organization).update(stripe_customer_id="cus_unreachable")
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"
    login(client, alice)
    response = client.get(billing_url(alice))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Invoices cannot be read from Stripe right now" in page and 'data-testid="balance"' in page

    def asked(*args, **kwargs):
        raise AssertionError("Stripe asked again")

    monkeypatch.setattr(invoices.stripe_client, "client", asked)  # the failure is remembered a little while
    assert "Invoices cannot be read from Stripe right now" in client.get(billing_url(alice)).content.decode()
    invoices.invoices_forget(BillingAccount.objects.get(organization=alice.organization))


def test_the_subscription_invoices_are_listed(client, server, stripe_emu, transactional_db):
    from tests.billing.subscription_kit import subscribe, synced_plans, webhooks_to
    from tests.conftest import make_tenant

    plans = synced_plans()
    dora = make_tenant("dora", credit=50)
    webhooks_to(stripe_emu, server)
    subscription = subscribe(stripe_emu, dora, plans["developer"])
    renewal = stripe_emu.renew_subscription(subscription.stripe_subscription_id)["invoice"]
    account = dora.organization.billing_account
    account.refresh_from_db()
    invoices.invoices_forget(account)
    listed = invoices.account_invoices(account=account)
    assert listed.error == "" and len(listed.invoices) == 2
    assert renewal["id"] in {i.id for i in listed.invoices}
    assert [i.created for i in listed.invoices] == sorted((i.created for i in listed.invoices), reverse=True)
    for invoice in listed.invoices:
        assert invoice.status == "paid" and invoice.total == invoice.amount_paid > 0
    login(client, dora)
    page = client.get(billing_url(dora)).content.decode()
    section = page.split('id="invoices"')[1].split("</section>")[0]
    for invoice in listed.invoices:
        row = section.split(f'data-invoice="{invoice.id}"')[1].split("</tr>")[0]
        assert invoice.number in row and "paid" in row and invoice.created.strftime("%Y-%m-%d") in row
        assert f"{invoice.total // 1_000_000}." in row  # the amount, in dollars
        if invoice.hosted_url:
            assert f'href="{invoice.hosted_url}"' in row
    assert renewal["number"] in section
