"""Developer console pages (server-rendered): dashboard, project settings, keys, usage and
the request log. Thin: the tenant comes from ``console.access`` (another tenant's ids and a
role without the permission answer 404), reads from selectors (``console.usage``), writes
through ``console.services``."""
from __future__ import annotations

import csv
import datetime as dt
import re
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from billing import selectors as billing_selectors

from . import access, keys, selectors, services
from . import usage as usage_selectors
from .forms import BodyStorageForm, KeyCreateForm, KeyRotateForm, ProjectSettingsForm
from .models import ApiKey, Project

_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
NEW_KEY = "new_key"  # session: the plaintext of a key just made, shown once on the keys page
LOG_PAGE_SIZE = 50
DEFAULT_RANGE_DAYS = 30
MODEL_PICKER_WINDOW = dt.timedelta(days=90)  # the request log's model filter offers models seen since


def _with(choices: list[str], chosen: str) -> list[str]:
    """The choices, with the current one kept even if the range has none of it."""
    return choices if not chosen or chosen in choices else sorted([*choices, chosen])


@access.public
def home(request):
    return redirect("console:dashboard" if request.user.is_authenticated else "account_login")


@access.public
def healthz(request):
    return JsonResponse({"status": "ok"})


# --- dashboard and projects -----------------------------------------------------------------


@login_required
def dashboard(request):
    """The current organization's dashboard; someone in no organization (removed from their
    last one) gets a page that says so rather than a 404."""
    if not access.memberships(request.user).exists():
        return render(request, "console/no_organization.html")
    return _dashboard(request)


dashboard.permission = "project.view"


@access.requires("project.view")
def _dashboard(request):
    org = request.access.organization
    totals = usage_selectors.project_month_totals(org)
    projects = [
        {"project": p, "requests": totals.get(p.id, {}).get("requests", 0), "cost": totals.get(p.id, {}).get("cost", 0)}
        for p in org.projects.order_by("created_at", "id")
    ]
    return render(request, "console/dashboard.html", {
        "org": org,
        "access": request.access,
        "can": request.access.permissions,
        "projects": projects,
        "month_cost": sum(p["cost"] for p in projects),
        "month_requests": sum(p["requests"] for p in projects),
        "month": usage_selectors.month_start(),
        "balance": billing_selectors.balance_for_organization(organization_id=org.id),
        "nodes_url": _nodes_url(org) if request.access.can("nodes.view") else None,
    })


def _nodes_url(org) -> str | None:
    """The organization's nodes page (its URL name belongs to the node views)."""
    for name, args in (("console:org_nodes", [org.public_id]), ("console:nodes", [])):
        try:
            return reverse(name, args=args) + ("" if args else f"?org={org.public_id}")
        except NoReverseMatch:
            continue
    return None


@require_POST
@access.requires("project.create")
def project_create(request):
    name = request.POST.get("name", "").strip()[:200]
    if not name:
        messages.error(request, "A project needs a name.")
        return redirect("console:dashboard")
    project = services.project_create(organization=request.access.organization, name=name)
    messages.success(request, f"Project “{project.name}” created.")
    return redirect("console:project", project_id=project.public_id)


def _plan(project: Project):
    account = getattr(project.organization, "billing_account", None)
    return account.plan if account is not None else None


def _settings_page(request, form: ProjectSettingsForm, *, status: int = 200, bodies_form=None):
    project = request.project
    return render(request, "console/project.html", {
        "project": project,
        "access": request.access,
        "can": request.access.permissions,
        "form": form,
        "can_edit": request.access.can("project.settings"),
        "plan": form.plan,
        "bodies_form": bodies_form or BodyStorageForm(project=project),
    }, status=status)


@access.requires("project.view")
def project_detail(request, project_id: str):
    """The project's settings (everyone in the organization sees them; owners and admins edit)."""
    project = request.project
    return _settings_page(request, ProjectSettingsForm(project=project, plan=_plan(project)))


@require_POST
@access.requires("project.settings")
def project_settings(request, project_id: str):
    project = request.project
    form = ProjectSettingsForm(request.POST, project=project, plan=_plan(project))
    if not form.is_valid():
        return _settings_page(request, form, status=400)
    data = form.cleaned_data
    services.project_settings_save(
        project=project, name=data["name"], allowed_origins=data["allowed_origins"],
        idempotency_required=data["idempotency_required"], stream_resume_seconds=data["stream_resume_seconds"],
        rpm_limit=data["rpm_limit"], tpm_limit=data["tpm_limit"], monthly_spend_cap=data["monthly_spend_cap"],
    )
    messages.success(request, "Settings saved; they apply to new requests within a second.")
    return redirect("console:project", project_id=project.public_id)


@require_POST
@access.requires("project.settings")
def project_routing(request, project_id: str):
    """Which nodes may serve the project: non-confidential ones (opt-in) and a preferred region."""
    project = request.project
    region = request.POST.get("region_preference", "").strip().lower()
    if region and not _REGION.match(region):
        messages.error(request, "A region is lowercase letters, digits and dashes (e.g. eu-west), up to 64 characters.")
        return redirect("console:project", project_id=project.public_id)
    allow = request.POST.get("allow_non_confidential") == "on"
    services.project_update(project=project, allow_non_confidential=allow, region_preference=region)
    messages.success(request, "Routing settings saved; they apply to new requests within a second.")
    return redirect("console:project", project_id=project.public_id)


@require_POST
@access.requires("project.settings")
def project_bodies(request, project_id: str):
    """Whether API request/response bodies are kept (encrypted), and for how long."""
    project = request.project
    form = BodyStorageForm(request.POST, project=project)
    if not form.is_valid():
        return _settings_page(request, ProjectSettingsForm(project=project, plan=_plan(project)), status=400, bodies_form=form)
    services.project_body_storage_set(
        project=project, store_bodies=form.cleaned_data["store_bodies"], body_retention_days=form.cleaned_data["body_retention_days"]
    )
    messages.success(request, "Body storage saved; it applies to new requests within a second.")
    return redirect("console:project", project_id=project.public_id)


# --- keys -------------------------------------------------------------------------------------


def _keys_page(request, form: KeyCreateForm | None = None, *, status: int = 200):
    project = request.project
    stats = usage_selectors.key_stats(project)
    rows = []
    now = timezone.now()
    for key in selectors.keys_for_project(project):
        stat = stats.get(key.id, {})
        expired = key.expires_at is not None and key.expires_at <= now
        rows.append({
            "key": key,
            "last_used": stat.get("last_used"),
            "month_spend": stat.get("month_spend", 0),
            "month_requests": stat.get("month_requests", 0),
            "scopes": [keys.SCOPES.get(s, s) for s in key.scopes] if key.scopes else [],
            "state": "revoked" if key.status == ApiKey.Status.REVOKED else ("expired" if expired else "active"),
        })
    return render(request, "console/keys.html", {
        "project": project,
        "access": request.access,
        "can": request.access.permissions,
        "rows": rows,
        "form": form or KeyCreateForm(),
        "new_key": request.session.pop(NEW_KEY, None),
        "can_manage": request.access.can("keys.manage"),
    }, status=status)


@access.requires("keys.view")
def project_keys(request, project_id: str):
    return _keys_page(request)


@require_POST
@access.requires("keys.manage")
def key_create(request, project_id: str):
    form = KeyCreateForm(request.POST)
    if not form.is_valid():
        return _keys_page(request, form, status=400)
    _, plaintext = services.api_key_create(
        project=request.project, kind=form.cleaned_data["kind"], name=form.cleaned_data["name"].strip(),
        created_by=request.user, scopes=form.cleaned_data["scopes"], expires_at=form.expires_at,
    )
    request.session[NEW_KEY] = plaintext  # shown once on the next page, then gone
    return redirect("console:keys", project_id=request.project.public_id)


def _key(request, key_id: str) -> ApiKey:
    try:
        return selectors.key_in_project(request.project.id, key_id)
    except ApiKey.DoesNotExist:
        raise Http404("No such key") from None


@require_POST
@access.requires("keys.manage")
def key_rotate(request, project_id: str, key_id: str):
    key = _key(request, key_id)
    form = KeyRotateForm(request.POST)
    if not form.is_valid():
        messages.error(request, "The grace period is a whole number of hours from 0 to 720.")
        return redirect("console:keys", project_id=request.project.public_id)
    hours = form.cleaned_data["grace_hours"]
    try:
        _, plaintext = services.api_key_rotate(key=key, grace=dt.timedelta(hours=hours), created_by=request.user)
    except ValueError as exc:
        messages.error(request, f"Not rotated: {exc}.")
        return redirect("console:keys", project_id=request.project.public_id)
    request.session[NEW_KEY] = plaintext
    messages.success(request, f"Rotated. The old key keeps working for {hours} h, then stops.")
    return redirect("console:keys", project_id=request.project.public_id)


@require_POST
@access.requires("keys.manage")
def key_revoke(request, project_id: str, key_id: str):
    services.api_key_revoke(key=_key(request, key_id))
    messages.success(request, "Key revoked everywhere: the API refuses it within a second.")
    return redirect("console:keys", project_id=request.project.public_id)


# --- usage ------------------------------------------------------------------------------------


def _date(text: str | None, default: dt.date) -> dt.date:
    if not text:
        return default
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        return default
    return day if 2000 <= day.year <= 2999 else default  # nothing to show outside; no date overflow


def _usage_filter(request) -> tuple[usage_selectors.UsageFilter, list[str]]:
    """The filter from the query string, every id checked against the caller's organization (404 otherwise)."""
    org = request.access.organization
    notes = []
    today = timezone.now().astimezone(dt.UTC).date()
    end = _date(request.GET.get("to"), today)
    start = _date(request.GET.get("from"), end - dt.timedelta(days=DEFAULT_RANGE_DAYS - 1))
    if start > end:
        start, end = end, start
    if (end - start).days >= usage_selectors.MAX_RANGE_DAYS:
        start = end - dt.timedelta(days=usage_selectors.MAX_RANGE_DAYS - 1)
        notes.append(f"The range is limited to {usage_selectors.MAX_RANGE_DAYS} days.")
    project = None
    if request.GET.get("project"):
        project = Project.objects.filter(organization=org, public_id=request.GET["project"]).first()
        if project is None:
            raise Http404("No such project")
    key = None
    if request.GET.get("key"):
        scope = {"project": project} if project is not None else {"project__organization": org}
        key = ApiKey.objects.filter(public_id=request.GET["key"], **scope).first()
        if key is None:
            raise Http404("No such key")
    model = request.GET.get("model", "").strip()[:200]
    return usage_selectors.UsageFilter(org, start, end, project=project, key=key, model=model), notes


@access.requires("usage.view")
def usage(request):
    flt, notes = _usage_filter(request)
    org = flt.organization
    data = usage_selectors.usage(flt)
    key_choices = ApiKey.objects.filter(project__organization=org).select_related("project").order_by("project_id", "-created_at")
    if flt.project is not None:
        key_choices = key_choices.filter(project=flt.project)
    return render(request, "console/usage.html", {
        "org": org,
        "access": request.access,
        "can": request.access.permissions,
        "flt": flt,
        "notes": notes,
        "usage": data,
        "projects": org.projects.order_by("created_at", "id"),
        "key_choices": [(k, usage_selectors.key_label(k)) for k in key_choices],
        "model_choices": _with(usage_selectors.models_used(org, project=flt.project, since=flt.since, until=flt.until),
                               flt.model),
        "csv_query": urlencode(flt.query()),
        "can_view_requests": request.access.can("requests.view"),
    })


CSV_HEADER = ["date", "project", "model", "key", "key_name", "requests", "input_tokens", "output_tokens",
              "cost_micros", "cost_usd"]


def _cell(text: str) -> str:
    """A text cell a spreadsheet will not run as a formula (key names are the user's own text)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@access.requires("usage.view")
def usage_csv(request):
    flt, _ = _usage_filter(request)
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="usage-{flt.organization.public_id}-{flt.start.isoformat()}-{flt.end.isoformat()}.csv"'
    )
    writer = csv.writer(response)
    writer.writerow(CSV_HEADER)
    for row in usage_selectors.csv_rows(flt):
        key = row["key"]
        writer.writerow([
            row["day"].isoformat(), row["project__public_id"], _cell(row["model"]), key.public_id if key else "",
            _cell(row["label"]), row["requests"], row["input_tokens"], row["output_tokens"], row["cost"],
            usage_selectors.dollars(row["cost"]),
        ])
    return response


# --- request log ------------------------------------------------------------------------------


@access.requires("requests.view")
def request_log(request, project_id: str):
    project = request.project
    status = request.GET.get("status", "")
    model = request.GET.get("model", "").strip()[:200]
    key = None
    if request.GET.get("key"):
        key = ApiKey.objects.filter(project=project, public_id=request.GET["key"]).first()
        if key is None:
            raise Http404("No such key")
    rows = usage_selectors.request_log(project, status=status, model=model, key=key)
    page = Paginator(rows, LOG_PAGE_SIZE).get_page(request.GET.get("page"))
    entries = []
    from gateway import vault

    bodies = vault.request_bodies(project=project, records=page.object_list)
    for record in page.object_list:
        failed = usage_selectors.failed(record)
        entries.append({
            "bodies": bodies.get(record.request_id, {}),
            "record": record,
            "failed": failed,
            "key_label": usage_selectors.key_label(record.api_key) if record.api_key_id else "—",
            "bundle": usage_selectors.troubleshooting_bundle(record, project) if failed else "",
        })
    query = {k: v for k, v in {"status": status, "model": model, "key": key.public_id if key else ""}.items() if v}
    return render(request, "console/requests.html", {
        "project": project,
        "access": request.access,
        "can": request.access.permissions,
        "page": page,
        "entries": entries,
        "status": status,
        "model": model,
        "key": key,
        "query": urlencode(query),
        "key_choices": [(k, usage_selectors.key_label(k)) for k in ApiKey.objects.filter(project=project).order_by("-created_at")],
        "model_choices": _with(usage_selectors.models_used(
            project.organization, project=project, since=timezone.now() - MODEL_PICKER_WINDOW), model),
        "usage_url": reverse("console:usage") + f"?project={project.public_id}&org={project.organization.public_id}",
    })

