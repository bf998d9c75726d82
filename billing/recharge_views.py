"""Console: the auto-recharge settings form (``/billing/auto-recharge``).

The form itself is ``templates/console/_auto_recharge.html``, included by the billing
page (``{% include "console/_auto_recharge.html" with organization=… %}``); GET here
shows it on a page of its own with the credit summary. POST saves through
``billing.recharge.auto_recharge_configure`` and goes back to ``next`` (the page the
form was on). Members with a billing role (owner, admin, finance) only; anyone else,
and any other organization's id, gets 404.
"""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods

from console import selectors as console_selectors
from console.models import Organization, Role

from . import promo, recharge
from .money import micros_from_usd

BILLING_ROLES = {Role.OWNER, Role.ADMIN, Role.FINANCE}


def _organization(request: HttpRequest, org_id: str) -> Organization:
    organization = console_selectors.organizations_for_user(request.user).filter(public_id=org_id).first()
    if organization is None:
        raise Http404("No such organization")
    membership = console_selectors.membership_for(request.user, organization)
    if membership is None or membership.role not in BILLING_ROLES:
        raise Http404("No such organization")
    return organization


def _back(request: HttpRequest, organization: Organization):
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                                  require_https=request.is_secure()):
        return redirect(target)
    return redirect(f"{reverse('billing:auto-recharge')}?org={organization.public_id}")


@login_required
@require_http_methods(["GET", "POST"])
def auto_recharge(request: HttpRequest) -> HttpResponse:
    organization = _organization(request, request.POST.get("org") or request.GET.get("org") or "")
    account = organization.billing_account
    if request.method == "GET":
        context = {"organization": organization, "credit": promo.credit_summary(account=account)}
        return render(request, "console/auto_recharge.html", context)
    try:
        threshold = micros_from_usd(request.POST.get("threshold_usd", "") or "0")
        amount = micros_from_usd(request.POST.get("amount_usd", "") or "0")
    except ValueError as exc:
        messages.error(request, f"Auto-recharge not saved: {exc}; use USD with at most 2 decimals, e.g. 10.00.")
        return _back(request, organization)
    enabled = request.POST.get("enabled") == "on"
    try:
        recharge.auto_recharge_configure(
            account=account, enabled=enabled, threshold=threshold, amount=amount, user=request.user
        )
    except recharge.RechargeError as exc:
        messages.error(request, f"Auto-recharge not saved: {exc}")
        return _back(request, organization)
    messages.success(request, "Auto-recharge is on." if enabled else "Auto-recharge is off.")
    return _back(request, organization)
