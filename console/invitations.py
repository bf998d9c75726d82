"""Members of an organization: invitations by email, role changes, removal.

Rules (enforced here, whoever calls):
* managing members needs ``members.manage`` (owners and admins);
* only an owner may invite an owner, make someone an owner, or change or remove an owner;
* the last owner can be neither removed nor demoted;
* an invitation is accepted once, by a signed-in user whose *verified* email is the invited
  address, before it expires and unless it was revoked.

The token is random (256 bits) and only its SHA-256 is stored; the email with the accept link
(/invites/<token>) is sent when the transaction commits.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from allauth.account.models import EmailAddress
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from . import access
from .models import Invitation, Membership, Organization, Role

SESSION_KEY = "pending_invitation"


class MemberError(ValueError):
    """A member change the rules refuse; the message is for the person who tried."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def accept_path(token: str) -> str:
    return reverse("console:invite", kwargs={"token": token})


def _manager(organization: Organization, actor) -> str:
    """The actor's role in the organization, if it may manage members."""
    membership = Membership.objects.filter(organization=organization, user=actor).first()
    if membership is None or not access.allowed(membership.role, "members.manage"):
        raise MemberError("Only owners and admins manage members.")
    return membership.role


def _owners(organization: Organization) -> int:
    return Membership.objects.filter(organization=organization, role=Role.OWNER).count()


def invitation_create(*, organization: Organization, email: str, role: str, invited_by, base_url: str) -> Invitation:
    """Invite ``email`` as ``role`` and email them the link (an earlier pending invitation of the
    same address to the same organization is revoked: only the newest link works)."""
    email = (email or "").strip().lower()
    try:
        validate_email(email)
    except ValidationError:
        raise MemberError("Enter a valid email address.") from None
    if role not in Role.values:
        raise MemberError("Choose a role.")
    with transaction.atomic():
        Organization.objects.select_for_update().get(id=organization.id)
        actor_role = _manager(organization, invited_by)
        if role == Role.OWNER and actor_role != Role.OWNER:
            raise MemberError("Only an owner can invite an owner.")
        if Membership.objects.filter(organization=organization, user__email__iexact=email).exists():
            raise MemberError(f"{email} is already a member.")
        now = timezone.now()
        Invitation.objects.filter(
            organization=organization, email=email, accepted_at=None, revoked_at=None
        ).update(revoked_at=now)
        token = secrets.token_urlsafe(32)
        invitation = Invitation.objects.create(
            organization=organization, email=email, role=role, token_hash=token_hash(token), invited_by=invited_by, created_at=now,
            expires_at=now + dt.timedelta(days=settings.INVITATION_TTL_DAYS),
        )
        link = base_url.rstrip("/") + accept_path(token)
        context = {"invitation": invitation, "organization": organization, "link": link, "inviter": invited_by}
        transaction.on_commit(lambda: send_mail(
            subject=f"{settings.ACCOUNT_EMAIL_SUBJECT_PREFIX}Join {organization.name} as {role}",
            message=render_to_string("console/email/invitation.txt", context),
            from_email=None, recipient_list=[email],
        ))
    return invitation


def invitation_for_token(token: str) -> Invitation | None:
    return Invitation.objects.select_related("organization", "invited_by").filter(
        token_hash=token_hash(token or "")
    ).first()


def invitation_state(invitation: Invitation) -> str:
    """"pending", "accepted", "revoked" or "expired"."""
    if invitation.accepted_at:
        return "accepted"
    if invitation.revoked_at:
        return "revoked"
    if invitation.expires_at <= timezone.now():
        return "expired"
    return "pending"


def invitation_accept(*, token: str, user) -> Membership:
    with transaction.atomic():
        invitation = Invitation.objects.select_for_update().filter(token_hash=token_hash(token or "")).first()
        if invitation is None:
            raise MemberError("This invitation does not exist.")
        state = invitation_state(invitation)
        if state != "pending":
            raise MemberError(f"This invitation was already {state}." if state != "expired"
                              else "This invitation has expired: ask for a new one.")
        if not EmailAddress.objects.filter(user=user, email__iexact=invitation.email, verified=True).exists():
            raise MemberError(f"This invitation is for {invitation.email}: sign in with that address (verified).")
        if Membership.objects.filter(organization=invitation.organization, user=user).exists():
            raise MemberError("You are already a member of this organization.")
        membership = Membership.objects.create(organization=invitation.organization, user=user, role=invitation.role)
        invitation.accepted_at = timezone.now()
        invitation.accepted_by = user
        invitation.save(update_fields=["accepted_at", "accepted_by"])
    return membership


def invitation_revoke(*, invitation: Invitation, actor) -> Invitation:
    with transaction.atomic():
        invitation = Invitation.objects.select_for_update().get(id=invitation.id)
        actor_role = _manager(invitation.organization, actor)
        if invitation.role == Role.OWNER and actor_role != Role.OWNER:
            raise MemberError("Only an owner can revoke an owner's invitation.")
        if invitation_state(invitation) != "pending":
            raise MemberError("Only a pending invitation can be revoked.")
        invitation.revoked_at = timezone.now()
        invitation.save(update_fields=["revoked_at"])
    return invitation


def member_role_change(*, membership: Membership, role: str, actor) -> Membership:
    if role not in Role.values:
        raise MemberError("Choose a role.")
    with transaction.atomic():
        Organization.objects.select_for_update().get(id=membership.organization_id)
        membership = Membership.objects.get(id=membership.id)
        actor_role = _manager(membership.organization, actor)
        if Role.OWNER in (membership.role, role) and actor_role != Role.OWNER:
            raise MemberError("Only an owner can make someone an owner or change an owner's role.")
        if membership.role == Role.OWNER and role != Role.OWNER and _owners(membership.organization) == 1:
            raise MemberError("The last owner cannot be demoted: make someone else an owner first.")
        membership.role = role
        membership.save(update_fields=["role"])
    return membership


def member_remove(*, membership: Membership, actor) -> None:
    with transaction.atomic():
        Organization.objects.select_for_update().get(id=membership.organization_id)
        membership = Membership.objects.get(id=membership.id)
        actor_role = _manager(membership.organization, actor)
        if membership.role == Role.OWNER and actor_role != Role.OWNER:
            raise MemberError("Only an owner can remove an owner.")
        if membership.role == Role.OWNER and _owners(membership.organization) == 1:
            raise MemberError("The last owner cannot be removed.")
        membership.delete()


def members(organization: Organization):
    return Membership.objects.filter(organization=organization).select_related("user").order_by("created_at", "id")


def pending_invitations(organization: Organization):
    return Invitation.objects.filter(
        organization=organization, accepted_at=None, revoked_at=None, expires_at__gt=timezone.now()
    ).select_related("invited_by").order_by("-created_at")
