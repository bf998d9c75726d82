"""The finance console (server-rendered; the charts are an enhancement over tables with the same figures).

Who sees what:
* Platform finance: staff users (``is_staff``) holding the ``billing.view_reconciliationrun``
  permission (give it through a "Finance" group in the admin; superusers have it) see the
  platform-wide report (every organization) and the reconciliation runs, whose
  discrepancies name any tenant's rows. Acting on runs (new run, re-run, heal, closing a
  discrepancy) also needs ``billing.change_discrepancy``.
* Organization finance: a member with the role finance or owner sees the report of that
  organization only (its own revenue, usage, reservations and credits), never the runs.
* Anyone else signed in gets 403; an organization the user is not a member of is 404 (as
  for every tenant object); signed-out users are sent to the login page.

Actions are POST with CSRF and go through billing.reconcile's services.
"""
from __future__ import annotations

import csv
import datetime as dt

import orjson
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Case, Value, When
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from billing.models import Discrepancy, ReconciliationRun
from billing.reconcile import discrepancy_close, reconcile_run, run_heal
from billing.reconcile.reports import finance_report

from . import selectors
from .models import Membership, Organization, Role

ORG_FINANCE_ROLES = {Role.FINANCE, Role.OWNER}
VIEW_PERM = "billing.view_reconciliationrun"
ACT_PERM = "billing.change_discrepancy"
RUNS_SHOWN = 100
DEFAULT_DAYS = 30


def _checks_own_access(permission: str):
    """Mark a finance view with the permission it checks itself (tests/console/test_role_matrix.py
    reads ``view.permission``): platform views ("finance.platform") need staff with VIEW_PERM and
    answer 403 otherwise; organization views ("billing.money": owners and finance) answer 403 to
    other members, 404 to outsiders. Signed-out callers go to the sign-in page."""
    def decorate(view):
        guarded = login_required(view)
        guarded.permission = permission
        return guarded
    return decorate


def platform_finance(user) -> bool:
    return user.is_authenticated and user.is_active and user.is_staff and user.has_perm(VIEW_PERM)


def _platform(request, *, act: bool = False) -> None:
    if not platform_finance(request.user) or (act and not request.user.has_perm(ACT_PERM)):
        raise PermissionDenied("Platform finance only: staff with the finance permission.")


def _finance_organizations(user):
    return Organization.objects.filter(
        memberships__user=user, memberships__role__in=ORG_FINANCE_ROLES
    ).order_by("name", "id")


def _organization(request, org_id: str) -> Organization:
    organization = selectors.organizations_for_user(request.user).filter(public_id=org_id).first()
    if organization is None:
        raise Http404("No such organization")
    membership = Membership.objects.filter(user=request.user, organization=organization).first()
    if membership is None or membership.role not in ORG_FINANCE_ROLES:
        raise PermissionDenied("Finance figures are for the organization's finance members and owners.")
    return organization


def _today() -> dt.date:
    return timezone.now().astimezone(dt.UTC).date()


def _range(request) -> tuple[dt.date, dt.date]:
    """?from=YYYY-MM-DD&to=YYYY-MM-DD (UTC days, inclusive); the last 30 days by default."""
    end = _today()
    start = end - dt.timedelta(days=DEFAULT_DAYS - 1)
    try:
        if request.GET.get("to"):
            end = dt.date.fromisoformat(request.GET["to"])
        if request.GET.get("from"):
            start = dt.date.fromisoformat(request.GET["from"])
    except ValueError:
        raise ValueError("Dates are YYYY-MM-DD.") from None
    return start, end


def _report_page(request, template: str, *, organization: Organization | None = None):
    context = {"organization": organization, "platform": platform_finance(request.user)}
    try:
        start, end = _range(request)
        report = finance_report(start=start, end=end, organization_id=organization.id if organization else None,
                                per_organization=organization is None)
    except ValueError as exc:
        context.update(error=str(exc), start=request.GET.get("from", ""), end=request.GET.get("to", ""))
        return render(request, template, context, status=400)
    context.update(report=report, start=start, end=end,
                   chart=orjson.dumps(report.chart()).decode())
    if request.GET.get("format") == "csv":
        return _report_csv(report, organization)
    return render(request, template, context)


def _report_csv(report, organization) -> HttpResponse:
    name = organization.public_id if organization else "platform"
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="finance-{name}-{report.start}-{report.end}.csv"'
    writer = csv.writer(response)
    writer.writerow(["day", "topups", "subscription_fees", "overage_paid", "refunds", "disputes", "disputes_won",
                     "revenue", "usage", "usage_promo", "usage_overage", "usage_paid", "requests"])
    for day, f in report.days:
        writer.writerow([day.isoformat(), f.topups, f.subscription_fees, f.overage_paid, f.refunds, f.disputes,
                         f.disputes_won, f.revenue, f.usage, f.usage_promo, f.usage_overage, f.usage_paid, f.requests])
    return response


@_checks_own_access("billing.money")
def finance_home(request):
    organizations = list(_finance_organizations(request.user))
    platform = platform_finance(request.user)
    if not platform and not organizations:
        raise PermissionDenied("The finance console is for finance members and owners.")
    runs = list(ReconciliationRun.objects.order_by("-started_at", "-id")[:5]) if platform else []
    return render(request, "console/finance/home.html",
                  {"organizations": organizations, "platform": platform, "runs": runs})


@_checks_own_access("finance.platform")
def platform_report(request):
    _platform(request)
    return _report_page(request, "console/finance/report.html")


@_checks_own_access("billing.money")
def organization_report(request, org_id: str):
    return _report_page(request, "console/finance/report.html", organization=_organization(request, org_id))


@_checks_own_access("finance.platform")
def runs(request):
    _platform(request)
    if request.method == "POST":
        return _run_create(request)
    shown = ReconciliationRun.objects.select_related("created_by", "rerun_of").order_by("-started_at", "-id")
    day = request.GET.get("day")
    if day:
        try:
            shown = shown.filter(day=dt.date.fromisoformat(day))
        except ValueError:
            return render(request, "console/finance/runs.html", {"error": "Dates are YYYY-MM-DD.", "runs": []},
                          status=400)
    return render(request, "console/finance/runs.html", {
        "runs": shown[:RUNS_SHOWN], "day": day or "", "yesterday": _today() - dt.timedelta(days=1),
        "can_act": request.user.has_perm(ACT_PERM),
    })


def _run_create(request):
    _platform(request, act=True)
    try:
        day = dt.date.fromisoformat(request.POST.get("day", ""))
        run = reconcile_run(day=day, user=request.user, heal=request.POST.get("heal") == "on")
    except ValueError as exc:
        messages.error(request, f"Not run: {exc}")
        return redirect("console:finance_runs")
    return redirect("console:finance_run", run_id=run.id)


def _run(run_id: int) -> ReconciliationRun:
    return get_object_or_404(ReconciliationRun.objects.select_related("created_by", "rerun_of"), id=run_id)


@_checks_own_access("finance.platform")
def run_detail(request, run_id: int):
    _platform(request)
    run = _run(run_id)
    open_first = Case(When(status=Discrepancy.Status.OPEN, then=Value(0)), default=Value(1))
    discrepancies = run.discrepancies.select_related("resolved_by").order_by(open_first, "kind", "id")
    status = request.GET.get("status")
    if status in Discrepancy.Status.values:
        discrepancies = discrepancies.filter(status=status)
    return render(request, "console/finance/run.html", {
        "run": run, "discrepancies": discrepancies, "status": status or "",
        "reruns": run.reruns.order_by("-started_at"), "can_act": request.user.has_perm(ACT_PERM),
        "checks": orjson.dumps(run.summary.get("checks", {}), option=orjson.OPT_INDENT_2).decode(),
    })


@_checks_own_access("finance.platform")
def run_csv(request, run_id: int):
    _platform(request)
    run = _run(run_id)
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="reconciliation-{run.day}-run-{run.id}.csv"'
    writer = csv.writer(response)
    writer.writerow(["run", "day", "discrepancy", "kind", "amount_micros", "currency", "status", "references",
                     "detail", "note", "resolved_at"])
    for d in run.discrepancies.order_by("id"):
        writer.writerow([
            run.id, run.day.isoformat(), d.id, d.kind, d.amount, d.currency, d.status,
            orjson.dumps(d.references, option=orjson.OPT_SORT_KEYS).decode(), _cell(d.detail), _cell(d.note),
            d.resolved_at.isoformat() if d.resolved_at else "",
        ])
    return response


def _cell(text: str) -> str:
    """Keep a spreadsheet from reading a text cell as a formula (CSV injection)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@_checks_own_access("finance.platform")
@require_POST
def run_rerun(request, run_id: int):
    _platform(request, act=True)
    parent = _run(run_id)
    run = reconcile_run(day=parent.day, user=request.user, rerun_of=parent, heal=request.POST.get("heal") == "on")
    messages.success(request, f"Run {run.id} re-executes run {parent.id}: {run.status}.")
    return redirect("console:finance_run", run_id=run.id)


@_checks_own_access("finance.platform")
@require_POST
def run_heal_view(request, run_id: int):
    _platform(request, act=True)
    run = _run(run_id)
    outcomes = run_heal(run=run, user=request.user)
    if not outcomes:
        messages.info(request, "Nothing to heal: no open discrepancy of a kind reconciliation heals.")
    for discrepancy, outcome in outcomes:
        messages.info(request, f"Discrepancy {discrepancy.id} ({discrepancy.kind}): {outcome}")
    return redirect("console:finance_run", run_id=run.id)


@_checks_own_access("finance.platform")
@require_POST
def discrepancy_close_view(request, discrepancy_id: int):
    _platform(request, act=True)
    discrepancy = get_object_or_404(Discrepancy.objects.select_related("run"), id=discrepancy_id)
    try:
        discrepancy_close(discrepancy=discrepancy, user=request.user, note=request.POST.get("note", ""))
    except ValueError as exc:
        messages.error(request, f"Not closed: {exc}.")
    else:
        messages.success(request, f"Discrepancy {discrepancy.id} closed.")
    return redirect("console:finance_run", run_id=discrepancy.run_id)

