"""Disputes end to end: a chargeback opened in the emulator on a top-up paid through Checkout →
signed webhooks to the live server → reversal and suspension → the gateway refuses the
organization's requests (402 wallet_suspended) → won: everything back and served again; lost:
suspended until finance reactivates in the console.
"""
from billing.invariants import check_ledger
from billing.models import Dispute, Transfer, Wallet
from console import services
from console.models import Role
from tests.billing.checkout_flow import credits, emulator, login, start_topup  # noqa: F401  (fixture)
from tests.gateway.test_errors import assert_envelope, post_chat


def customer(tenant) -> Wallet:
    return Wallet.objects.get(id=tenant.wallet.id)


def paid_topup(client, tenant, emu, dollars: str) -> Transfer:
    row = start_topup(client, tenant, dollars)
    emu.pay(row.checkout_url)
    (credit,) = credits(row)
    return credit


def test_a_dispute_suspends_the_wallet_the_gateway_refuses_and_a_win_restores_everything(
    client, alice, emulator, server, sim_node  # noqa: F811
):
    login(client, alice)
    topup = paid_topup(client, alice, emulator, "10")
    assert post_chat(server, alice.auth()).status_code == 200
    before = customer(alice).balance

    opened = emulator.open_dispute(payment_intent=topup.stripe_object)  # returns once its webhooks landed
    assert {d["http_status"] for d in opened["deliveries"]} == {200}

    w = customer(alice)
    assert (w.status, w.suspended_reason, w.balance) == ("suspended", "dispute", before - 10_000_000)
    error = assert_envelope(post_chat(server, alice.auth()), 402, "wallet_suspended")
    assert "suspended" in error["message"]
    assert customer(alice).reserved == 0  # nothing was held for the refused request
    page = client.get(f"/billing/?org={alice.organization.public_id}").content.decode()
    assert 'data-testid="suspended"' in page and opened["dispute"]["id"] in page

    closed = emulator.close_dispute(opened["dispute"]["id"], "won")
    assert {d["http_status"] for d in closed["deliveries"]} == {200}

    w = customer(alice)
    assert (w.status, w.suspended_reason, w.balance) == ("active", "", before)
    assert Dispute.objects.get().status == "won"
    assert sum(Transfer.objects.filter(kind="dispute_won").values_list("amount", flat=True)) == 10_000_000
    assert post_chat(server, alice.auth()).status_code == 200
    assert check_ledger() == []


def test_a_lost_dispute_keeps_the_wallet_suspended_until_finance_reactivates_it(client, alice, emulator, server, sim_node):  # noqa: F811
    login(client, alice)
    topup = paid_topup(client, alice, emulator, "10")
    opened = emulator.open_dispute(payment_intent=topup.stripe_object, amount=400)
    emulator.close_dispute(opened["dispute"]["id"], "lost")
    w = customer(alice)
    assert (w.status, w.balance) == ("suspended", 1_000_000 + 10_000_000 - 4_000_000)
    assert_envelope(post_chat(server, alice.auth()), 402, "wallet_suspended")

    client.logout()
    from django.contrib.auth import get_user_model

    finance = get_user_model().objects.create_user(username="fin", password="pw-finfin")
    services.membership_add(organization=alice.organization, user=finance, role=Role.FINANCE)
    assert client.login(username="fin", password="pw-finfin")
    org = alice.organization.public_id
    refused = client.post("/billing/reactivate", {"org": org, "note": ""}, follow=True).content.decode()
    assert "Not reactivated: Say why" in refused and customer(alice).status == "suspended"
    done = client.post("/billing/reactivate", {"org": org, "note": "chargeback fee settled"}, follow=True)
    assert "The wallet is active again" in done.content.decode()
    assert customer(alice).status == "active" and Dispute.objects.get().resolved_by_id == finance.id
    assert post_chat(server, alice.auth()).status_code == 200
    assert not Transfer.objects.filter(kind="dispute_won").exists()
    assert check_ledger() == []
