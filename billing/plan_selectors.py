"""Reads for the plan & subscription page: the account's plan, subscription, limits,
credit line and what is left of its included credit."""
from __future__ import annotations

from dataclasses import dataclass

from .models import BillingAccount, CreditLot, Plan, Subscription, Wallet
from .plans import plans_offered
from .subscriptions import subscription_current


@dataclass(frozen=True)
class LotLeft:
    lot: CreditLot
    left: int


def credit_lots_left(*, wallet: Wallet) -> list[LotLeft]:
    """Each open promo/included lot with what is left of it, soonest expiry first.

    Spending takes from the lot that expires first, so the wallet's ``promo`` is
    what is left of the lots that expire last: walk from the latest expiry down.
    """
    lots = list(CreditLot.objects.filter(wallet=wallet, closed_at__isnull=True).order_by("-expires_at", "-id"))
    left, out = wallet.promo, []
    for lot in lots:
        part = max(0, min(left, lot.amount - lot.expired_amount))
        left -= part
        out.append(LotLeft(lot=lot, left=part))
    return out[::-1]


@dataclass(frozen=True)
class PlanOverview:
    account: BillingAccount
    plan: Plan | None
    subscription: Subscription | None
    wallet: Wallet
    included_left: int
    included_lots: list[LotLeft]
    overage_unbilled: int  # overage on the credit line not yet paid through an invoice (micro-units)
    plans: list[Plan]


def plan_overview(*, account: BillingAccount, currency: str = "usd") -> PlanOverview:
    wallet = Wallet.objects.get(account=account, kind=Wallet.Kind.CUSTOMER, currency=currency)
    lots = [lot for lot in credit_lots_left(wallet=wallet) if lot.lot.kind == CreditLot.Kind.INCLUDED]
    return PlanOverview(
        account=account,
        plan=account.plan,
        subscription=subscription_current(account=account),
        wallet=wallet,
        included_left=sum(lot.left for lot in lots),
        included_lots=lots,
        overage_unbilled=max(0, -wallet.balance),
        plans=list(plans_offered()),
    )

