"""The console's plan page (/billing/plan): who may see and use it, and its actions going
through Stripe (the emulator) for real: subscribe on the hosted Checkout page, change plan,
cancel at the period's end, the customer portal. Webhooks reach a real server process."""
from __future__ import annotations

import pytest
from django.test import Client

from billing.models import Subscription
from console import services
from console.models import Role
from tests.billing.subscription_kit import (
    delivered,
    stripe_subscription,
    synced_plans,
    webhooks_to,
)
from tests.conftest import make_tenant

PAGE = "/billing/plan"


@pytest.fixture
def plans(stripe_emu, transactional_db):
    return synced_plans()


def browser(tenant_or_user) -> Client:
    client = Client()
    client.force_login(getattr(tenant_or_user, "user", tenant_or_user))
    return client


def member(alice, name: str, role: str):
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(username=name, email=f"{name}@example.com", password="x" * 12)
    services.membership_add(organization=alice.organization, user=user, role=role)
    return user


def test_owners_admins_and_finance_see_the_page_others_get_404(alice, charlie, plans):
    org = alice.organization.public_id
    for who in (alice, member(alice, "ada", Role.ADMIN), member(alice, "fin", Role.FINANCE)):
        page = browser(who).get(PAGE, {"org": org})
        assert page.status_code == 200 and b"No plan" in page.content and b"Subscribe" in page.content
    developer = member(alice, "dev", Role.DEVELOPER)
    assert browser(developer).get(PAGE, {"org": org}).status_code == 404
    assert browser(charlie).get(PAGE, {"org": org}).status_code == 404
    assert browser(charlie).post(f"{PAGE}/subscribe", {"org": org, "plan": "developer"}).status_code == 404
    assert browser(developer).post(f"{PAGE}/cancel", {"org": org}).status_code == 404
    assert Client().get(PAGE, {"org": org}).status_code == 302  # to the login page


def test_subscribe_change_and_cancel_from_the_page(server, stripe_emu, alice, plans):
    webhooks_to(stripe_emu, server)
    org = alice.organization.public_id
    owner = browser(alice)

    go = owner.post(f"{PAGE}/subscribe", {"org": org, "plan": "developer"})
    assert go.status_code == 302 and go["Location"].startswith(f"{stripe_emu.api_base}/pay/cs_")
    paid = stripe_emu.pay(go["Location"])
    assert paid.status_code == 303
    assert paid.headers["location"] == f"http://testserver{PAGE}?org={org}&checkout=success"
    back = owner.get(PAGE, {"org": org, "checkout": "success"})
    text = back.content.decode()
    assert back.status_code == 200 and "Payment received" in text
    subscription = Subscription.objects.get()
    assert "<h2>Developer</h2>" in text and subscription.stripe_subscription_id in text
    assert 'data-testid="included-left">0.0001 USD<' in text  # the kit's Developer includes 100 micro-units

    assert owner.post(f"{PAGE}/subscribe", {"org": org, "plan": "team"}).status_code == 302
    assert "already has a subscription" in owner.get(PAGE, {"org": org}).content.decode()

    changed = owner.post(f"{PAGE}/change", {"org": org, "plan": "team"}, follow=True)
    assert "Plan change to Team sent to Stripe" in changed.content.decode()
    delivered(stripe_emu, "customer.subscription.updated", 1)
    assert "<h2>Team</h2>" in owner.get(PAGE, {"org": org}).content.decode()

    cancelled = owner.post(f"{PAGE}/cancel", {"org": org}, follow=True)
    assert "ends with the paid period" in cancelled.content.decode()
    delivered(stripe_emu, "customer.subscription.updated", 2)
    assert stripe_subscription(subscription)["cancel_at_period_end"] is True
    assert "<strong>Ends on" in owner.get(PAGE, {"org": org}).content.decode()

    portal = owner.post(f"{PAGE}/portal", {"org": org})
    assert portal.status_code == 302 and portal["Location"].startswith(f"{stripe_emu.api_base}/portal/")

    assert owner.post(f"{PAGE}/change", {"org": org, "plan": "no-such-plan"}).status_code == 404


def test_a_user_of_several_organizations_chooses_one(alice, plans):
    other = make_tenant("alice2").organization
    services.membership_add(organization=other, user=alice.user, role=Role.OWNER)
    page = browser(alice).get(PAGE)
    assert page.status_code == 200 and b"Choose an organization" in page.content
    assert alice.organization.public_id.encode() in page.content and other.public_id.encode() in page.content
