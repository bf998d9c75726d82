"""The role matrix, generated from the URL conf so a new page cannot be missed.

Every URL under console/, billing/, finance/ and invites/ (and any other whose view declares a
``permission``) must declare one: ``access.requires(permission)`` or ``access.public`` (finance views
mark the permission they check themselves). For each URL, its kwargs are filled with real ids of a
fixture tenant, and each of owner, admin, developer, finance member and an outsider (a user with an
organization of their own) asks for it:

* permitted (console/access.py PERMISSIONS) → a GET is answered, not 404 (200, a redirect, or 405 for
  a form's POST-only URL);
* not permitted → 404 for GET and POST alike (a page never confirms that something exists; a GET
  of a URL that takes only POST may answer 405, to everyone alike); the
  finance console keeps its documented contract: 403 for members without the finance role or
  staff, 404 for outsiders naming an organization.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

import pytest
from allauth.account.models import EmailAddress
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from billing.models import Discrepancy, ReconciliationRun, Transfer
from billing.services import wallet_credit
from console import access, invitations, services, webchat
from console.models import ApiKey, Conversation, Invitation, Membership, RelayCredential, Role
from tests.billing import stripe_payloads as sp
from tests.conftest import make_tenant

GUARDED_PREFIXES = ("console/", "billing/", "finance/", "invites/")
ROLES = (Role.OWNER, Role.ADMIN, Role.DEVELOPER, Role.FINANCE)
OUTSIDER = "outsider"


@dataclass
class Route:
    route: str
    name: str
    view: object
    kwargs: list[str] = field(default_factory=list)

    @property
    def permission(self):
        return getattr(self.view, "permission", "missing")


def _walk(patterns, prefix: str = "", namespace: str = ""):
    for p in patterns:
        if isinstance(p, URLResolver):
            ns = f"{namespace}{p.namespace}:" if p.namespace else namespace
            yield from _walk(p.url_patterns, prefix + str(p.pattern), ns)
        elif isinstance(p, URLPattern):
            route = prefix + str(p.pattern)
            yield Route(route, f"{namespace}{p.name}" if p.name else route, p.callback,
                        list(p.pattern.converters) if hasattr(p.pattern, "converters") else [])


def console_routes() -> list[Route]:
    routes = []
    for r in _walk(get_resolver().url_patterns):
        if r.route.startswith(("admin/", "accounts/", "v1/")):
            continue
        if r.route.startswith(GUARDED_PREFIXES) or hasattr(r.view, "permission"):
            routes.append(r)
    return routes


ROUTES = console_routes()


def test_every_console_url_declares_its_permission():
    missing = [f"{r.name} ({r.route})" for r in ROUTES if r.permission == "missing"]
    assert not missing, (
        "Views without access.requires(...) / access.public: " + ", ".join(missing)
    )
    unknown = [r.name for r in ROUTES
               if r.permission not in (None, "public") and r.permission not in access.PERMISSIONS]
    assert not unknown, f"permissions not in console/access.py PERMISSIONS: {unknown}"


# --- the fixture tenant and its people ---------------------------------------------------


@pytest.fixture
def world(transactional_db):
    tenant = make_tenant("acme")
    people = {Role.OWNER: tenant.user}
    for role in (Role.ADMIN, Role.DEVELOPER, Role.FINANCE):
        user = get_user_model().objects.create_user(username=f"acme-{role}", email=f"{role}@acme.example",
                                                    password="pw")
        services.membership_add(organization=tenant.organization, user=user, role=role)
        people[role] = user
    people[OUTSIDER] = make_tenant("outsider").user
    staff = get_user_model().objects.create_superuser(username="staff", email="staff@platform.example", password="pw")
    for user in [*people.values(), staff]:
        EmailAddress.objects.get_or_create(user=user, email=user.email, defaults={"verified": True, "primary": True})
    return {"tenant": tenant, "people": people, "staff": staff}


def _transfer(world):
    tenant = world["tenant"]
    return wallet_credit(wallet=tenant.wallet, amount=5_000_000, kind=Transfer.Kind.TOPUP, reference="matrix:topup",
                         stripe_object="pi_matrix").id


def _run(world):
    run = ReconciliationRun.objects.create(day=timezone.now().date() - dt.timedelta(days=1),
                                           status=ReconciliationRun.Status.RUNNING, started_at=timezone.now())
    world["discrepancy"] = Discrepancy.objects.create(run=run, kind="missing_credit", amount=1)
    return run.id


def _token(world):
    if "token" not in world:
        invitations.invitation_create(organization=world["tenant"].organization, email="new@acme.example",
                                      role=Role.DEVELOPER, invited_by=world["tenant"].user, base_url="http://t")
        # The link's token is only in the email: make one whose hash we know.
        world["token"] = "matrix-token"
        Invitation.objects.filter(email="new@acme.example").update(token_hash=invitations.token_hash("matrix-token"))
    return world["token"]


def _conversation(world):
    """The owner's own conversation: Web Chat pages are personal, so every other member gets 404."""
    if "conversation" not in world:
        world["conversation"] = Conversation.objects.create(
            project=world["tenant"].project, user=world["people"][Role.OWNER], model="sim-small", title="matrix"
        )
    return world["conversation"].public_id


def _turn(world):
    _conversation(world)
    credential = RelayCredential.objects.create(
        token_hash=webchat.hash_token("matrix-relay"), user=world["people"][Role.OWNER],
        conversation=world["conversation"], turn_id="turn_matrix", model="sim-small", spend_cap=0,
        expires_at=timezone.now() + dt.timedelta(seconds=60),
    )
    return credential.turn_id


# kwarg name → its value for the fixture tenant. An unknown kwarg fails the test: add it here.
KWARGS = {
    "project_id": lambda w: w["tenant"].project.public_id,
    "key_id": lambda w: ApiKey.objects.filter(project=w["tenant"].project, kind="secret").first().public_id,
    "org_id": lambda w: w["tenant"].organization.public_id,
    "transfer_id": _transfer,
    "run_id": _run,
    "discrepancy_id": lambda w: (w.get("discrepancy") or ReconciliationRun.objects.get(id=_run(w)).discrepancies.get()).id,
    "membership_id": lambda w: Membership.objects.get(organization=w["tenant"].organization,
                                                      user=w["people"][Role.DEVELOPER]).id,
    "invitation_id": lambda w: (_token(w), Invitation.objects.get(email="new@acme.example").id)[1],
    "token": _token,
    "conversation_id": _conversation,
    "turn_id": _turn,
}

# kwargs naming a personal object (the owner's): only its user is answered, every other role gets 404.
PERSONAL = {"conversation_id"}

# Query strings some pages need to find their object (else they answer 404 to everyone).
QUERY = {
    "console:billing_topup_success": lambda w: {"session_id": sp.topup_row(w["tenant"], 10_000_000).stripe_session_id},
}


def fill(route: Route, world) -> str:
    def value(match):
        name = match.group(2)
        if name not in KWARGS:
            pytest.fail(f"{route.name}: no factory for URL kwarg {name!r}: add it to KWARGS in {__file__}")
        return str(KWARGS[name](world))

    return "/" + re.sub(r"<(?:(\w+):)?(\w+)>", value, route.route)


def allowed(permission, role, route: Route | None = None) -> bool:
    if role == OUTSIDER:
        return False
    if route is not None and PERSONAL & set(route.kwargs) and role != Role.OWNER:
        return False
    return permission is None or access.allowed(role, permission)


ANSWERED = {200, 302, 405}


@pytest.mark.parametrize("route", [r for r in ROUTES if r.permission != "missing"], ids=lambda r: r.name)
def test_role_matrix(route, world):
    path = fill(route, world)
    query = {"org": world["tenant"].organization.public_id, **QUERY.get(route.name, lambda w: {})(world)}
    permission = route.permission
    finance_console = route.route.startswith("finance/")

    if permission == "public":
        status = Client().get(path, query).status_code
        assert status != 404 and status < 500, (route.name, status)
        return

    # Signed out: sent to sign in (a GET of a POST-only URL may answer 405 first: it says nothing
    # about any tenant); a POST never gets through.
    anonymous = Client().get(path, query)
    assert anonymous.status_code == 405 or "/accounts/login/" in anonymous.get("Location", ""), route.name
    # A URL that takes only GET answers any POST with 405, to everyone alike (no tenant is revealed).
    owner = Client()
    owner.force_login(world["people"][Role.OWNER])
    get_only = owner.post(path, {"org": query["org"]}).status_code == 405
    anonymous = Client().post(path, {"org": query["org"]})
    assert (anonymous.status_code == 405 and get_only) or (
        anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]
    ), route.name
    post_only = None

    if permission == "finance.platform":
        staff = Client()
        staff.force_login(world["staff"])
        assert staff.get(path, query).status_code in ANSWERED, route.name

    for role, user in world["people"].items():
        client = Client()
        client.force_login(user)
        got = client.get(path, query).status_code
        if permission != "finance.platform" and allowed(permission, role, route):
            assert got in ANSWERED, (route.name, role, got)
            continue
        posted = client.post(path, {"org": query["org"]}).status_code
        if finance_console:
            if role == OUTSIDER and "org_id" not in route.kwargs:
                continue  # not about the tenant: the outsider sees their own organizations' figures
            denied = 404 if role == OUTSIDER and "org_id" in route.kwargs else 403
            assert got in {denied, 405} and posted in {denied, 405}, (route.name, role, got, posted)
            assert 403 in (got, posted) or denied == 404, (route.name, role, got, posted)
        else:
            # 405 to a GET is the same for everyone (the URL takes only POST): no tenant is revealed.
            if post_only is None:
                owner = Client()
                owner.force_login(world["people"][Role.OWNER])
                post_only = owner.get(path, query).status_code == 405
            assert (posted == 404 or (posted == 405 and get_only)) and (got == 404 or (got == 405 and post_only)), (
                route.name, role, got, posted)


# --- the two cases the issue names --------------------------------------------------------


def test_a_developer_cannot_see_invoices_or_billing(world):
    developer = Client()
    developer.force_login(world["people"][Role.DEVELOPER])
    org = world["tenant"].organization.public_id
    for url in ("/billing/", "/billing/plan", "/billing/topup/cancel", f"/finance/orgs/{org}/"):
        assert developer.get(url, {"org": org}).status_code in {403, 404}, url
    assert developer.get("/billing/", {"org": org}).status_code == 404
    assert "/billing/" not in developer.get("/console/members/", {"org": org}).content.decode()  # no nav link


def test_finance_cannot_create_keys(world):
    finance = Client()
    finance.force_login(world["people"][Role.FINANCE])
    project = world["tenant"].project
    before = ApiKey.objects.filter(project=project).count()
    response = finance.post(f"/console/projects/{project.public_id}/keys/new", {"name": "nope", "kind": "secret"})
    assert response.status_code == 404
    assert ApiKey.objects.filter(project=project).count() == before
    assert not ApiKey.objects.filter(name="nope").exists()
    # ...and sees billing, but no key page.
    assert finance.get("/billing/", {"org": world["tenant"].organization.public_id}).status_code == 200
