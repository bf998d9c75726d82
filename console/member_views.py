"""Members of an organization (console/members/) and the invitation link (/invites/<token>).

Every member sees who belongs to the organization; owners and admins invite, change roles and
remove (console/invitations.py holds the rules: only owners touch owners, the last owner stays).
"""
from __future__ import annotations

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from . import access, invitations
from .invitations import MemberError
from .models import Invitation, Membership, Role


def _back(request):
    return redirect(f"{reverse('console:members')}?org={request.access.organization.public_id}")


@access.requires("members.view")
def members(request):
    organization = request.access.organization
    return render(request, "console/members.html", {
        "organization": organization,
        "members": invitations.members(organization),
        "invitations": invitations.pending_invitations(organization) if request.access.can("members.manage") else [],
        "can_manage": request.access.can("members.manage"),
        "is_owner": request.access.role == Role.OWNER,
        "roles": Role.choices,
    })


@access.requires("members.manage")
@require_POST
def member_invite(request):
    email = request.POST.get("email", "")
    try:
        invitations.invitation_create(
            organization=request.access.organization, email=email, role=request.POST.get("role", ""),
            invited_by=request.user, base_url=request.build_absolute_uri("/"),
        )
    except MemberError as exc:
        messages.error(request, f"Not invited: {exc}")
    else:
        messages.success(request, f"Invitation sent to {email.strip().lower()}.")
    return _back(request)


def _membership(request, membership_id: int) -> Membership:
    membership = Membership.objects.filter(id=membership_id, organization=request.access.organization).first()
    if membership is None:
        raise Http404("No such member")
    return membership


@access.requires("members.manage")
@require_POST
def member_role(request, membership_id: int):
    membership = _membership(request, membership_id)
    try:
        invitations.member_role_change(membership=membership, role=request.POST.get("role", ""), actor=request.user)
    except MemberError as exc:
        messages.error(request, f"Role not changed: {exc}")
    else:
        messages.success(request, f"{membership.user.email} is now {request.POST['role']}.")
    return _back(request)


@access.requires("members.manage")
@require_POST
def member_remove(request, membership_id: int):
    membership = _membership(request, membership_id)
    try:
        invitations.member_remove(membership=membership, actor=request.user)
    except MemberError as exc:
        messages.error(request, f"Not removed: {exc}")
    else:
        messages.success(request, f"{membership.user.email} was removed.")
    return _back(request)


@access.requires("members.manage")
@require_POST
def invitation_revoke(request, invitation_id: int):
    invitation = Invitation.objects.filter(id=invitation_id, organization=request.access.organization).first()
    if invitation is None:
        raise Http404("No such invitation")
    try:
        invitations.invitation_revoke(invitation=invitation, actor=request.user)
    except MemberError as exc:
        messages.error(request, f"Not revoked: {exc}")
    else:
        messages.success(request, f"The invitation of {invitation.email} was revoked.")
    return _back(request)


@access.public
@require_http_methods(["GET", "POST"])
def invite(request, token: str):
    """The link in an invitation email. Signed out: sign up or sign in first (the token waits in
    the session and the adapter brings the visitor back). Signed in: accept with a POST."""
    invitation = invitations.invitation_for_token(token)
    if invitation is None:
        raise Http404("No such invitation")
    state = invitations.invitation_state(invitation)
    context = {"invitation": invitation, "state": state, "token": token}
    if not request.user.is_authenticated:
        if state == "pending":
            request.session[invitations.SESSION_KEY] = token
        return render(request, "console/invite.html", context)
    if request.method == "POST" and state == "pending":
        try:
            membership = invitations.invitation_accept(token=token, user=request.user)
        except MemberError as exc:
            context["error"] = str(exc)
            return render(request, "console/invite.html", context, status=400)
        request.session.pop(invitations.SESSION_KEY, None)
        request.session[access.SESSION_ORG] = membership.organization.public_id
        messages.success(request, f"You joined {membership.organization.name} as {membership.role}.")
        return redirect("console:dashboard")
    request.session.pop(invitations.SESSION_KEY, None)  # brought back once; the link itself still works
    context["email_matches"] = request.user.emailaddress_set.filter(
        email__iexact=invitation.email, verified=True
    ).exists()
    return render(request, "console/invite.html", context)
