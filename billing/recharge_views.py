"""Console: saving the auto-recharge settings (``POST /billing/auto-recharge``).

The form is ``templates/console/_auto_recharge.html``, included by the billing page
(``console/billing.html``); GET here shows that page at the form. POST saves through
``billing.recharge.auto_recharge_configure`` and goes back to ``next`` (the page the
form was on). Who: owners, admins and finance members, as for the billing page
(``access.requires("billing.view")``); anyone else gets 404.
"""
from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods

from console import access
from console.models import Organization

from . import recharge
from .topups import TopupError, parse_amount


def _billing_page(organization: Organization) -> str:
    return f"{reverse('console:billing')}?org={organization.public_id}#auto-recharge"


def _back(request: HttpRequest, organization: Organization):
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                                  require_https=request.is_secure()):
        return redirect(target)
    return redirect(_billing_page(organization))


@access.requires("billing.view")
@require_http_methods(["GET", "POST"])
def auto_recharge(request: HttpRequest) -> HttpResponse:
    organization = request.access.organization
    if request.method == "GET":
        return redirect(_billing_page(organization))
    try:
        threshold = parse_amount(request.POST.get("threshold", "") or "0")
        amount = parse_amount(request.POST.get("amount", ""))
    except TopupError as exc:
        messages.error(request, f"Auto-recharge not saved: {exc}")
        return _back(request, organization)
    enabled = request.POST.get("enabled") == "on"
    try:
        recharge.auto_recharge_configure(
            account=organization.billing_account, enabled=enabled, threshold=threshold, amount=amount,
            user=request.user,
        )
    except recharge.RechargeError as exc:
        messages.error(request, f"Auto-recharge not saved: {exc}")
        return _back(request, organization)
    messages.success(request, "Auto-recharge is on." if enabled else "Auto-recharge is off.")
    return _back(request, organization)
