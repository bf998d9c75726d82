"""Members and invitations: the members page, the rules (only owners touch owners, the last owner
stays, admins manage the other roles), and an invitation accepted once, by the verified invitee,
before it expires — a visitor not signed in signs up and comes back to it."""
from __future__ import annotations

import datetime as dt
import re

import pytest
from allauth.account.models import EmailAddress
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client, override_settings
from django.utils import timezone

from console import invitations, services
from console.invitations import MemberError
from console.models import Invitation, Membership, Role

PASSWORD = "correct horse battery staple 9"
FRESH_CACHE = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "members-test"}}


@pytest.fixture(autouse=True)
def fresh_cache():
    with override_settings(CACHES=FRESH_CACHE):
        yield


def person(email: str, *, verified: bool = True):
    user = get_user_model().objects.create_user(username=email.split("@")[0], email=email, password=PASSWORD)
    EmailAddress.objects.create(user=user, email=email, verified=verified, primary=True)
    return user


def add(tenant, email: str, role: str):
    user = person(email)
    services.membership_add(organization=tenant.organization, user=user, role=role)
    return user


def browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def invite_token(email: str) -> str:
    message = next(m for m in reversed(mail.outbox) if m.to == [email])
    return re.search(r"/invites/([A-Za-z0-9_-]+)", message.body).group(1)


def members_url(tenant) -> str:
    return f"/console/members/?org={tenant.organization.public_id}"


def test_every_member_sees_the_members_only_managers_see_the_forms(alice):
    dev = add(alice, "dev@example.com", Role.DEVELOPER)
    html = browser(dev).get(members_url(alice)).content.decode()
    assert "alice@example.com" in html and "dev@example.com" in html
    assert "Invite someone" not in html and "/console/members/invite" not in html
    owner_html = browser(alice.user).get(members_url(alice)).content.decode()
    assert "Invite someone" in owner_html and 'value="owner"' in owner_html
    admin_html = browser(add(alice, "adm@example.com", Role.ADMIN)).get(members_url(alice)).content.decode()
    assert "Invite someone" in admin_html and 'value="owner"' not in admin_html  # admins cannot make owners


def test_an_owner_invites_by_email_and_the_invitee_accepts_once(alice, django_capture_on_commit_callbacks):
    client = browser(alice.user)
    org = alice.organization.public_id
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/console/members/invite", {"org": org, "email": "Fin@Example.com", "role": "finance"})
    assert response.status_code == 302
    invitation = Invitation.objects.get()
    assert (invitation.email, invitation.role, invitation.invited_by) == ("fin@example.com", "finance", alice.user)
    assert invitation.expires_at - invitation.created_at == dt.timedelta(days=7)
    token = invite_token("fin@example.com")
    assert invitation.token_hash == invitations.token_hash(token) and token not in invitation.token_hash
    assert f"http://testserver/invites/{token}" in mail.outbox[-1].body
    assert "fin@example.com" in client.get(members_url(alice)).content.decode()  # pending, revocable

    fin = person("fin@example.com")
    invitee = browser(fin)
    page = invitee.get(f"/invites/{token}")
    assert page.status_code == 200 and "Accept invitation" in page.content.decode()
    assert invitee.post(f"/invites/{token}")["Location"] == "/console/"
    assert Membership.objects.get(organization=alice.organization, user=fin).role == Role.FINANCE
    assert invitee.session["console_org"] == org
    # Once: the link is spent.
    assert "already accepted" in invitee.get(f"/invites/{token}").content.decode()
    with pytest.raises(MemberError, match="already accepted"):
        invitations.invitation_accept(token=token, user=fin)


def test_only_the_invited_verified_address_can_accept_before_expiry(alice, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        invitations.invitation_create(organization=alice.organization, email="gus@example.com", role="developer",
                                      invited_by=alice.user, base_url="http://testserver/")
    token = invite_token("gus@example.com")
    other = person("mallory@example.com")
    refused = browser(other).post(f"/invites/{token}")
    assert refused.status_code == 400 and "for gus@example.com" in refused.content.decode()
    unverified = person("gus@example.com", verified=False)
    assert browser(unverified).post(f"/invites/{token}").status_code == 400
    assert not Membership.objects.filter(organization=alice.organization, user__in=[other, unverified]).exists()
    assert browser(other).get("/invites/not-a-token").status_code == 404

    Invitation.objects.update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    EmailAddress.objects.filter(user=unverified).update(verified=True)
    expired = browser(unverified).post(f"/invites/{token}")
    assert "expired" in expired.content.decode()
    assert not Membership.objects.filter(organization=alice.organization, user=unverified).exists()


def test_a_revoked_or_replaced_invitation_no_longer_works(alice, django_capture_on_commit_callbacks):
    admin = add(alice, "adm@example.com", Role.ADMIN)
    with django_capture_on_commit_callbacks(execute=True):
        first = invitations.invitation_create(organization=alice.organization, email="hal@example.com",
                                              role="developer", invited_by=admin, base_url="http://testserver")
        old = invite_token("hal@example.com")
        invitations.invitation_create(organization=alice.organization, email="hal@example.com", role="finance",
                                      invited_by=admin, base_url="http://testserver")
    new = invite_token("hal@example.com")
    first.refresh_from_db()
    assert first.revoked_at is not None  # only the newest link works
    hal = person("hal@example.com")
    assert "revoked" in browser(hal).get(f"/invites/{old}").content.decode()
    second = Invitation.objects.get(accepted_at=None, revoked_at=None)
    response = browser(admin).post(f"/console/members/invitations/{second.id}/revoke",
                                   {"org": alice.organization.public_id})
    assert response.status_code == 302
    assert browser(hal).post(f"/invites/{new}").status_code == 200  # the page says revoked, nothing happens
    assert not Membership.objects.filter(user=hal).exists()
    # Another organization's owner cannot revoke (or even see) alice's invitations.
    assert browser(admin).post(f"/console/members/invitations/{second.id}/revoke",
                               {"org": "org_nope"}).status_code == 404


def test_only_owners_touch_owners_and_the_last_owner_stays(alice, django_capture_on_commit_callbacks):
    admin = add(alice, "adm@example.com", Role.ADMIN)
    dev = add(alice, "dev@example.com", Role.DEVELOPER)
    org = alice.organization
    owner_membership = Membership.objects.get(organization=org, user=alice.user)
    dev_membership = Membership.objects.get(organization=org, user=dev)

    # Admins manage non-owner roles...
    assert browser(admin).post(f"/console/members/{dev_membership.id}/role",
                               {"org": org.public_id, "role": "finance"}).status_code == 302
    dev_membership.refresh_from_db()
    assert dev_membership.role == Role.FINANCE
    # ...but cannot make an owner, invite an owner, or change or remove an owner.
    for attempt in (
        lambda: invitations.member_role_change(membership=dev_membership, role=Role.OWNER, actor=admin),
        lambda: invitations.invitation_create(organization=org, email="x@example.com", role=Role.OWNER,
                                              invited_by=admin, base_url="http://t"),
        lambda: invitations.member_role_change(membership=owner_membership, role=Role.ADMIN, actor=admin),
        lambda: invitations.member_remove(membership=owner_membership, actor=admin),
    ):
        with pytest.raises(MemberError, match="[Oo]nly an owner"):
            attempt()
    browser(admin).post(f"/console/members/{owner_membership.id}/remove", {"org": org.public_id})
    assert Membership.objects.filter(id=owner_membership.id, role=Role.OWNER).exists()
    # Developers and finance cannot manage members at all: 404, nothing changes.
    assert browser(dev).post(f"/console/members/{owner_membership.id}/remove",
                             {"org": org.public_id}).status_code == 404
    assert browser(dev).post("/console/members/invite", {"org": org.public_id, "email": "y@example.com",
                                                         "role": "developer"}).status_code == 404
    assert not Invitation.objects.exists()

    # The last owner can be neither demoted nor removed, even by themselves.
    with pytest.raises(MemberError, match="last owner"):
        invitations.member_role_change(membership=owner_membership, role=Role.ADMIN, actor=alice.user)
    with pytest.raises(MemberError, match="last owner"):
        invitations.member_remove(membership=owner_membership, actor=alice.user)
    # With a second owner, the first may step down.
    admin_membership = Membership.objects.get(organization=org, user=admin)
    invitations.member_role_change(membership=admin_membership, role=Role.OWNER, actor=alice.user)
    invitations.member_role_change(membership=owner_membership, role=Role.DEVELOPER, actor=alice.user)
    assert set(Membership.objects.filter(organization=org).values_list("role", flat=True)) == {
        Role.OWNER, Role.DEVELOPER, Role.FINANCE}
    # An owner removes a member through the page.
    assert browser(admin).post(f"/console/members/{dev_membership.id}/remove",
                               {"org": org.public_id}).status_code == 302
    assert not Membership.objects.filter(id=dev_membership.id).exists()


def test_a_visitor_signs_up_from_the_link_verifies_and_comes_back_to_accept(alice, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        invitations.invitation_create(organization=alice.organization, email="ivy@example.com", role="finance",
                                      invited_by=alice.user, base_url="http://testserver")
    token = invite_token("ivy@example.com")
    visitor = Client()
    landing = visitor.get(f"/invites/{token}").content.decode()
    assert "Sign up" in landing and f"next=/invites/{token}" in landing.replace("%2F", "/")
    signup = visitor.post(f"/accounts/signup/?next=/invites/{token}",
                          {"email": "ivy@example.com", "password1": PASSWORD, "password2": PASSWORD})
    assert signup.status_code == 302
    confirm = re.search(r"/accounts/confirm-email/[^\s]+", mail.outbox[-1].body).group(0)
    back = visitor.post(confirm)
    assert back["Location"] == f"/invites/{token}"
    assert "Accept invitation" in visitor.get(back["Location"]).content.decode()
    assert visitor.post(f"/invites/{token}")["Location"] == "/console/"
    ivy = get_user_model().objects.get(email="ivy@example.com")
    assert Membership.objects.get(organization=alice.organization, user=ivy).role == Role.FINANCE
    # Sign-up also gave ivy an organization of her own; the console opens on the one she joined.
    assert Membership.objects.filter(user=ivy).count() == 2
    assert visitor.session["console_org"] == alice.organization.public_id
    assert "pending_invitation" not in visitor.session
