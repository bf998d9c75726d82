"""Who may do what in the console: one table of permissions by role, one way to
resolve the organization a page is about.

Every console page resolves its tenant here (or through ``selectors.project_for_user``)
and asks ``require(...)``; a caller without the permission gets 404, exactly as for
another tenant's object, so a page never confirms that something exists.

The organization a page shows is ``?org=`` (or a form's ``org``) when given, else
the one the caller last picked (kept in the session), else their first.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.http import Http404

from .models import Membership, Organization, Project, Role

OWNER, ADMIN, DEVELOPER, FINANCE = Role.OWNER, Role.ADMIN, Role.DEVELOPER, Role.FINANCE
EVERYONE = frozenset(Role.values)

# permission → the roles that hold it. Tests walk this table (tests/console/test_role_matrix.py).
PERMISSIONS: dict[str, frozenset[str]] = {
    "project.view": EVERYONE,
    "project.create": frozenset({OWNER, ADMIN}),
    "project.settings": frozenset({OWNER, ADMIN}),
    "keys.view": frozenset({OWNER, ADMIN, DEVELOPER}),
    "keys.manage": frozenset({OWNER, ADMIN, DEVELOPER}),
    "usage.view": EVERYONE,  # requests, tokens, spend
    "requests.view": frozenset({OWNER, ADMIN, DEVELOPER}),  # the request log (and bodies, when kept)
    "billing.view": frozenset({OWNER, ADMIN, FINANCE}),  # balance, ledger, invoices
    "billing.money": frozenset({OWNER, FINANCE}),  # refunds, lifting a suspension
    "members.view": EVERYONE,
    "members.manage": frozenset({OWNER, ADMIN}),  # invite, change roles, remove (only owners touch owners)
    "nodes.view": frozenset({OWNER, ADMIN, DEVELOPER}),
    "chat.use": EVERYONE,
    "finance.platform": frozenset(),  # staff only (is_staff), never a tenant role
}


def allowed(role: str | None, permission: str) -> bool:
    return role is not None and role in PERMISSIONS[permission]


@dataclass(frozen=True)
class OrgAccess:
    organization: Organization
    role: str

    def can(self, permission: str) -> bool:
        return allowed(self.role, permission)

    def require(self, permission: str) -> "OrgAccess":
        if not self.can(permission):
            raise Http404("No such page")
        return self

    @property
    def permissions(self) -> frozenset[str]:
        return frozenset(p for p, roles in PERMISSIONS.items() if self.role in roles)


SESSION_ORG = "console_org"


def memberships(user):
    return Membership.objects.filter(user=user).select_related("organization").order_by(
        "organization__created_at", "organization_id"
    )


def current(request, permission: str | None = None) -> OrgAccess:
    """The organization this request is about and the caller's role there; 404 if none
    (or if ``permission`` is given and the role lacks it)."""
    if not request.user.is_authenticated:
        raise Http404("No such organization")
    wanted = request.POST.get("org") or request.GET.get("org") or request.session.get(SESSION_ORG)
    rows = memberships(request.user)
    membership = None
    if wanted:
        membership = rows.filter(organization__public_id=wanted).first()
        if membership is None and (request.POST.get("org") or request.GET.get("org")):
            raise Http404("No such organization")
    if membership is None:
        membership = rows.first()
    if membership is None:
        raise Http404("No such organization")
    if request.session.get(SESSION_ORG) != membership.organization.public_id:
        request.session[SESSION_ORG] = membership.organization.public_id
    access = OrgAccess(membership.organization, membership.role)
    return access.require(permission) if permission else access


def for_organization(user, organization: Organization, permission: str | None = None) -> OrgAccess:
    membership = Membership.objects.filter(user=user, organization=organization).first()
    if membership is None:
        raise Http404("No such organization")
    access = OrgAccess(organization, membership.role)
    return access.require(permission) if permission else access


def project(request, project_id: str, permission: str = "project.view") -> tuple[Project, OrgAccess]:
    """The caller's project by public id and their access to its organization; 404 otherwise."""
    found = (
        Project.objects.select_related("organization")
        .filter(public_id=project_id, organization__memberships__user=request.user)
        .first()
        if request.user.is_authenticated
        else None
    )
    if found is None:
        raise Http404("No such project")
    access = for_organization(request.user, found.organization, permission)
    if request.session.get(SESSION_ORG) != found.organization.public_id:
        request.session[SESSION_ORG] = found.organization.public_id
    return found, access


def requires(permission: str | None):
    """Decorate a console view with the permission it needs (None: any signed-in member).

    The tenant comes from the URL: ``project_id`` → the caller's project (``request.project``),
    ``org_id`` → that organization, else ``current(request)``. ``request.access`` is the
    caller's :class:`OrgAccess`. The permission is kept on the view (``view.permission``):
    tests/console/test_role_matrix.py walks the URL conf and checks every view against every role.
    """
    from functools import wraps

    from django.contrib.auth.decorators import login_required

    def decorate(view):
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            if "project_id" in kwargs:
                request.project, request.access = project(request, kwargs["project_id"], permission or "project.view")
            elif "org_id" in kwargs:
                organization = Organization.objects.filter(
                    public_id=kwargs["org_id"], memberships__user=request.user
                ).first()
                if organization is None:
                    raise Http404("No such organization")
                request.access = for_organization(request.user, organization, permission)
            else:
                request.access = current(request, permission)
            return view(request, *args, **kwargs)

        guarded = login_required(wrapped)
        guarded.permission = permission
        return guarded

    return decorate


def public(view):
    """Mark a view as open to anyone (a status page, a webhook, an invitation link)."""
    view.permission = "public"
    return view
