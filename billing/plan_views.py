"""The console's plan & subscription page: /billing/plan?org=<organization id>.

Owners, admins and finance members of the organization see its plan, limits,
period, included credit left, and subscribe (Stripe Checkout), change plan,
cancel at the period's end, or manage payment methods (Stripe's portal). Other
members and outsiders get 404, as for any tenant object. Every action is a
Stripe call; the page shows the result once Stripe's webhook has arrived.
"""
from __future__ import annotations

import logging
from urllib.parse import urlencode

import stripe
from django.contrib import messages
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_POST

from console import access
from console import selectors as console_selectors
from console.models import Organization, Role

from . import plan_selectors, subscriptions
from .models import BillingAccount, Plan

log = logging.getLogger(__name__)
BILLING_ROLES = {Role.OWNER, Role.ADMIN, Role.FINANCE}


def _organizations(request) -> list[Organization]:
    return [
        org for org in console_selectors.organizations_for_user(request.user)
        if (m := console_selectors.membership_for(request.user, org)) is not None and m.role in BILLING_ROLES
    ]


def _account(request, org_id: str | None) -> BillingAccount:
    orgs = _organizations(request)
    if org_id is None and len(orgs) == 1:
        org_id = orgs[0].public_id
    organization = next((o for o in orgs if o.public_id == org_id), None)
    if organization is None:
        raise Http404("No such organization")
    return BillingAccount.objects.select_related("plan", "organization").get(organization=organization)


def _page_url(request, account: BillingAccount, **extra: str) -> str:
    query = urlencode({"org": account.organization.public_id, **extra})
    return request.build_absolute_uri(f"{reverse('billing:plan')}?{query}")


def _plan(request) -> Plan:
    plan = Plan.objects.filter(code=request.POST.get("plan", ""), active=True).first()
    if plan is None:
        raise Http404("No such plan")
    return plan


@access.requires("billing.view")
def plan_page(request):
    org_id = request.GET.get("org")
    if org_id is None and len(_organizations(request)) > 1:
        return render(request, "console/plan.html", {"choose": _organizations(request)})
    account = _account(request, org_id)
    if request.GET.get("checkout") == "success":
        messages.success(request, "Payment received. Your plan changes as soon as Stripe confirms the subscription.")
    context = {"overview": plan_selectors.plan_overview(account=account), "org": account.organization}
    return render(request, "console/plan.html", context)


def _act(request, action, done: str):
    """Run a Stripe action for the page's organization: a URL it returns is a Stripe page
    to go to; errors become a message on the page, not a 500."""
    account = _account(request, request.POST.get("org"))
    try:
        result = action(account)
    except subscriptions.SubscriptionError as exc:
        messages.error(request, str(exc))
    except stripe.StripeError as exc:
        log.warning("plan page: Stripe refused %s for account %s: %s", request.path, account.id, exc)
        messages.error(request, f"Stripe could not do that: {getattr(exc, 'user_message', None) or exc}")
    else:
        if isinstance(result, str):  # a Stripe page to go to
            return HttpResponseRedirect(result)
        messages.success(request, done)
    return HttpResponseRedirect(_page_url(request, account))


@access.requires("billing.view")
@require_POST
def plan_subscribe(request):
    plan = _plan(request)
    return _act(request, lambda account: subscriptions.subscription_checkout_create(
        account=account, plan=plan, user=request.user,
        success_url=_page_url(request, account, checkout="success"), cancel_url=_page_url(request, account),
    ), "")


@access.requires("billing.view")
@require_POST
def plan_change(request):
    plan = _plan(request)

    def change(account: BillingAccount) -> None:
        subscriptions.subscription_change(account=account, plan=plan, user=request.user)

    return _act(request, change, f"Plan change to {plan.name} sent to Stripe; it applies when Stripe confirms it.")


@access.requires("billing.view")
@require_POST
def plan_cancel(request):
    def cancel(account: BillingAccount) -> None:
        subscriptions.subscription_cancel(account=account, user=request.user, at_period_end=True)

    return _act(request, cancel, "Cancellation sent to Stripe: the subscription ends with the paid period.")


@access.requires("billing.view")
@require_POST
def plan_portal(request):
    return _act(request, lambda account: subscriptions.billing_portal_url(
        account=account, return_url=_page_url(request, account)), "")
