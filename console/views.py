"""Console pages (server-rendered). Thin: tenant lookups through selectors,
writes through services; another tenant's ids answer 404."""
from __future__ import annotations

import datetime as dt
import re

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from billing import selectors as billing_selectors

from . import selectors, services
from .models import ApiKey, Project, Role

KEY_MANAGERS = {Role.OWNER, Role.ADMIN, Role.DEVELOPER}
SETTINGS_MANAGERS = {Role.OWNER, Role.ADMIN}
_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


def home(request):
    return redirect("console:dashboard" if request.user.is_authenticated else "account_login")


def healthz(request):
    return JsonResponse({"status": "ok"})


def _project(request, project_id: str, *, roles: set[str] | None = None) -> Project:
    try:
        project = selectors.project_for_user(request.user, project_id)
    except Project.DoesNotExist:
        raise Http404("No such project") from None
    if roles is not None:
        membership = selectors.membership_for(request.user, project.organization)
        if membership is None or membership.role not in roles:
            raise Http404("No such project")
    return project


@login_required
def dashboard(request):
    organizations = []
    for org in selectors.organizations_for_user(request.user):
        organizations.append(
            {
                "org": org,
                "projects": list(org.projects.order_by("created_at")),
                "balance": billing_selectors.balance_for_organization(organization_id=org.id),
            }
        )
    return render(request, "console/dashboard.html", {"organizations": organizations})


@login_required
def project_detail(request, project_id: str):
    project = _project(request, project_id)
    new_key = request.session.pop("new_key", None)
    return render(
        request,
        "console/project.html",
        {"project": project, "keys": selectors.keys_for_project(project), "new_key": new_key},
    )


@login_required
@require_POST
def key_create(request, project_id: str):
    project = _project(request, project_id, roles=KEY_MANAGERS)
    kind = request.POST.get("kind", ApiKey.Kind.SECRET)
    if kind not in ApiKey.Kind.values:
        raise Http404("Unknown key kind")
    _, plaintext = services.api_key_create(
        project=project, kind=kind, name=request.POST.get("name", "")[:200], created_by=request.user
    )
    request.session["new_key"] = plaintext  # shown once on the next page, then gone
    return redirect("console:project", project_id=project.public_id)


@login_required
@require_POST
def key_rotate(request, project_id: str, key_id: str):
    project = _project(request, project_id, roles=KEY_MANAGERS)
    key = _key(project, key_id)
    hours = max(0, min(int(request.POST.get("grace_hours", "24") or 0), 24 * 30))
    _, plaintext = services.api_key_rotate(key=key, grace=dt.timedelta(hours=hours), created_by=request.user)
    request.session["new_key"] = plaintext
    messages.success(request, f"Rotated. The old key keeps working for {hours} h.")
    return redirect("console:project", project_id=project.public_id)


@login_required
@require_POST
def key_revoke(request, project_id: str, key_id: str):
    project = _project(request, project_id, roles=KEY_MANAGERS)
    services.api_key_revoke(key=_key(project, key_id))
    messages.success(request, "Key revoked everywhere.")
    return redirect("console:project", project_id=project.public_id)


@login_required
@require_POST
def project_routing(request, project_id: str):
    """Which nodes may serve the project: non-confidential ones (opt-in) and a preferred region."""
    project = _project(request, project_id, roles=SETTINGS_MANAGERS)
    region = request.POST.get("region_preference", "").strip().lower()
    if region and not _REGION.match(region):
        messages.error(request, "A region is lowercase letters, digits and dashes (e.g. eu-west), up to 64 characters.")
        return redirect("console:project", project_id=project.public_id)
    allow = request.POST.get("allow_non_confidential") == "on"
    services.project_update(project=project, allow_non_confidential=allow, region_preference=region)
    messages.success(request, "Routing settings saved; they apply to new requests within a second.")
    return redirect("console:project", project_id=project.public_id)


def _key(project: Project, key_id: str) -> ApiKey:
    try:
        return selectors.key_in_project(project.id, key_id)
    except ApiKey.DoesNotExist:
        raise Http404("No such key") from None
