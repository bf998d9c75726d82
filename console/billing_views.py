"""The console's billing page: the wallet, its ledger, top-ups through Stripe Checkout, refunds.

Who: owners, admins and finance members of the organization see the page and
start top-ups; refunds and lifting a suspension are money decisions, for owners
and finance only. Anyone else gets 404, as for any tenant object.

Which organization: ``org`` (query string or form field) names it; without it, the one the
caller is working in (``console.access.current``). Access: ``access.requires("billing.view")``
and, to move money, ``"billing.money"``.

The success page never credits: the webhook does. It shows what our database
says, refreshing itself (no JavaScript) while the credit is pending.
"""
from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from billing import disputes, invoices, ledger_selectors, refunds, topups, wallet_selectors
from billing.models import TopupSession, Transfer, Wallet

from . import access
from .models import Organization

# The roles (console/access.py) of "billing.view" and "billing.money".
BILLING_ROLES = access.PERMISSIONS["billing.view"]
MONEY_ROLES = access.PERMISSIONS["billing.money"]
PENDING = frozenset({TopupSession.Status.CREATED, TopupSession.Status.OPEN, TopupSession.Status.PROCESSING})
REFRESH_SECONDS = 3


def _page_url(organization: Organization) -> str:
    return f"{reverse('console:billing')}?org={organization.public_id}"


def _render_page(request, organization: Organization, role: str, *, amount: str = "", error: str = "", status: int = 200):
    account = organization.billing_account
    context = {
        "organization": organization,
        "role": role,
        "can_move_money": role in MONEY_ROLES,
        "overview": wallet_selectors.wallet_overview(account=account),
        "others": Organization.objects.filter(
            memberships__user=request.user, memberships__role__in=BILLING_ROLES
        ).exclude(id=organization.id).order_by("created_at"),
        "topup_min": settings.TOPUP_MIN,
        "topup_max": settings.TOPUP_MAX,
        "amount": amount,
        "amount_error": error,
    }
    wallet = context["overview"].wallet
    context.update(
        in_flight=ledger_selectors.reservations_in_flight(wallet=wallet),
        ledger=ledger_selectors.ledger_page(wallet=wallet, before=ledger_selectors.parse_before(request.GET.get("before"))),
        invoices=invoices.account_invoices(account=account),
    )
    return render(request, "console/billing.html", context, status=status)


@access.requires("billing.view")
@require_GET
def billing_page(request):
    organization, role = request.access.organization, request.access.role
    return _render_page(request, organization, role)


@access.requires("billing.view")
@require_POST
def topup_start(request):
    organization, role = request.access.organization, request.access.role
    typed = request.POST.get("amount", "")
    try:
        amount = topups.parse_amount(typed)
        session = topups.topup_checkout_create(
            account=organization.billing_account,
            amount=amount,
            user=request.user,
            # Stripe fills in {CHECKOUT_SESSION_ID}; the braces must reach it unescaped.
            success_url=request.build_absolute_uri(reverse("console:billing_topup_success"))
            + "?session_id={CHECKOUT_SESSION_ID}",
            cancel_url=request.build_absolute_uri(reverse("console:billing_topup_cancel"))
            + f"?org={organization.public_id}",
        )
    except topups.TopupError as exc:
        return _render_page(request, organization, role, amount=typed[:32], error=str(exc), status=400)
    return redirect(session.checkout_url)


@access.requires("billing.view")
@require_GET
def topup_success(request):
    organizations = Organization.objects.filter(memberships__user=request.user, memberships__role__in=BILLING_ROLES)
    session = wallet_selectors.topup_session_for(
        stripe_session_id=request.GET.get("session_id", "")[:255], organizations=organizations
    )
    if session is None:
        raise Http404("No such top-up")
    pending = session.status in PENDING
    return render(
        request,
        "console/billing_topup_status.html",
        {"session": session, "organization": session.account.organization, "pending": pending,
         "refresh": REFRESH_SECONDS if pending else None},
    )


@access.requires("billing.view")
@require_GET
def topup_cancel(request):
    organization = request.access.organization
    return render(request, "console/billing_topup_cancel.html", {"organization": organization})


@access.requires("billing.money")
@require_POST
def topup_refund(request, transfer_id: int):
    organization = request.access.organization
    transfer = Transfer.objects.filter(
        id=transfer_id, kind=Transfer.Kind.TOPUP, credit_wallet__account__organization=organization
    ).first()
    if transfer is None:
        raise Http404("No such top-up")
    try:
        amount = topups.parse_amount(request.POST.get("amount", ""))
        refund = refunds.topup_refund(transfer=transfer, amount=amount, user=request.user)
    except (topups.TopupError, refunds.RefundError) as exc:
        messages.error(request, f"Refund not made: {exc}")
    else:
        messages.success(
            request,
            f"Refund of {topups.format_amount(refund.amount, transfer.currency)} sent to Stripe; "
            "the wallet is debited when Stripe confirms it.",
        )
    return redirect(_page_url(organization))


@access.requires("billing.money")
@require_POST
def wallet_reactivate(request):
    organization = request.access.organization
    wallet = Wallet.objects.get(account__organization=organization, currency="usd", kind=Wallet.Kind.CUSTOMER)
    try:
        disputes.wallet_reactivate(wallet=wallet, user=request.user, note=request.POST.get("note", ""))
    except disputes.ReactivateError as exc:
        messages.error(request, f"Not reactivated: {exc}")
    else:
        messages.success(request, "The wallet is active again; requests are served.")
    return redirect(_page_url(organization))
