"""Finance figures (reads only): revenue, usage cost, outstanding reservations, credits by
kind, per UTC day and per organization, from the ledger and the stored Stripe events.

* top-ups, overage paid, refunds, disputes (and those won back) and usage are posted
  transfers by the day they posted (``finished_at``);
* subscription fees are what paid invoices collected beyond their metered overage
  (the fee is Stripe's revenue, not wallet money, so the ledger has no transfer for
  it): from the ``invoice.paid`` events stored by the webhook, by the day Stripe
  created the event;
* revenue = top-ups + subscription fees + overage paid − refunds − disputes + disputes won;
* usage is split into what promo/included credit paid, what went into overage
  (postpaid, billed through the meter) and the paid rest.
Every transfer moves money between two wallets of one billing account, so the
organization of either wallet is the transfer's.
"""
from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field, fields

from django.db.models import Count, F, Sum
from django.db.models.functions import TruncDate

from billing.models import BillingAccount, StripeEvent, Transfer, Wallet

MAX_DAYS = 366

# Ledger kind → Figures field it adds to.
_KIND_FIELD = {
    Transfer.Kind.TOPUP: "topups",
    Transfer.Kind.OVERAGE_PAYMENT: "overage_paid",
    Transfer.Kind.REFUND: "refunds",
    Transfer.Kind.DISPUTE: "disputes",
    Transfer.Kind.DISPUTE_WON: "disputes_won",
}
# Which kinds put money into a customer wallet (credits) and which take it out (debits), for "credits by kind".
CREDIT_KINDS = (
    Transfer.Kind.TOPUP, Transfer.Kind.GRANT, Transfer.Kind.PROMO, Transfer.Kind.INCLUDED,
    Transfer.Kind.OVERAGE_PAYMENT, Transfer.Kind.DISPUTE_WON, Transfer.Kind.ADJUSTMENT,
)
DEBIT_KINDS = (Transfer.Kind.REFUND, Transfer.Kind.DISPUTE, Transfer.Kind.PROMO_EXPIRY)


@dataclass
class Figures:
    topups: int = 0
    subscription_fees: int = 0
    overage_paid: int = 0
    refunds: int = 0
    disputes: int = 0
    disputes_won: int = 0
    usage: int = 0
    usage_promo: int = 0
    usage_overage: int = 0
    requests: int = 0

    @property
    def revenue(self) -> int:
        return (self.topups + self.subscription_fees + self.overage_paid - self.refunds - self.disputes
                + self.disputes_won)

    @property
    def usage_paid(self) -> int:
        return self.usage - self.usage_promo - self.usage_overage

    def add(self, other: Figures) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))


@dataclass
class OrganizationFigures:
    organization_id: int
    name: str
    public_id: str
    figures: Figures
    pending_count: int = 0
    pending_amount: int = 0
    balance: int = 0
    promo: int = 0


@dataclass
class Report:
    start: dt.date
    end: dt.date  # inclusive
    days: list[tuple[dt.date, Figures]]
    totals: Figures
    credits_by_kind: dict[str, dict[str, int]]  # kind -> {"count", "amount"}
    pending_count: int
    pending_amount: int
    organizations: list[OrganizationFigures] = field(default_factory=list)

    def chart(self) -> dict:
        """The figures the page's charts draw (the tables show the same numbers)."""
        return {
            "days": [d.isoformat() for d, _ in self.days],
            "revenue": {
                "topups": [f.topups for _, f in self.days],
                "subscription_fees": [f.subscription_fees for _, f in self.days],
                "overage_paid": [f.overage_paid for _, f in self.days],
                "refunds_disputes": [-(f.refunds + f.disputes - f.disputes_won) for _, f in self.days],
            },
            "usage": [f.usage for _, f in self.days],
            "credits": {kind: row["amount"] for kind, row in self.credits_by_kind.items()},
        }


def bounds(start: dt.date, end: dt.date) -> tuple[dt.datetime, dt.datetime]:
    if end < start:
        raise ValueError("the range ends before it starts")
    if (end - start).days + 1 > MAX_DAYS:
        raise ValueError(f"a report covers at most {MAX_DAYS} days")
    return (dt.datetime.combine(start, dt.time.min, tzinfo=dt.UTC),
            dt.datetime.combine(end + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC))


def finance_report(*, start: dt.date, end: dt.date, organization_id: int | None = None,
                   per_organization: bool = False) -> Report:
    """Figures from ``start`` to ``end`` (UTC days, inclusive), for one organization or all."""
    lo, hi = bounds(start, end)
    by_day: dict[dt.date, Figures] = defaultdict(Figures)
    by_org: dict[int, Figures] = defaultdict(Figures)
    credits: dict[str, dict[str, int]] = {}

    posted = Transfer.objects.filter(status=Transfer.Status.POSTED, finished_at__gte=lo, finished_at__lt=hi)
    if organization_id is not None:
        posted = posted.filter(debit_wallet__account__organization_id=organization_id)
    rows = (
        posted.annotate(day=TruncDate("finished_at", tzinfo=dt.UTC), org=F("debit_wallet__account__organization_id"))
        .values("day", "org", "kind")
        .annotate(n=Count("id"), amount=Sum("amount"), promo=Sum("promo_amount"), overage=Sum("overage_amount"))
        .order_by()
    )
    for row in rows:
        part = Figures()
        kind = row["kind"]
        if kind == Transfer.Kind.USAGE:
            part.usage, part.usage_promo, part.usage_overage = row["amount"], row["promo"], row["overage"]
            part.requests = row["n"]
        elif kind in _KIND_FIELD:
            setattr(part, _KIND_FIELD[kind], row["amount"])
        if kind != Transfer.Kind.USAGE:
            entry = credits.setdefault(kind, {"count": 0, "amount": 0})
            entry["count"] += row["n"]
            entry["amount"] += row["amount"]
        by_day[row["day"]].add(part)
        by_org[row["org"]].add(part)

    for day, org, fee in _subscription_fees(lo=lo, hi=hi, organization_id=organization_id):
        part = Figures(subscription_fees=fee)
        by_day[day].add(part)
        if org is not None:
            by_org[org].add(part)

    days = []
    day = start
    while day <= end:
        days.append((day, by_day.get(day, Figures())))
        day += dt.timedelta(days=1)
    totals = Figures()
    for _, figures in days:
        totals.add(figures)

    pending = Transfer.objects.filter(status=Transfer.Status.PENDING)
    if organization_id is not None:
        pending = pending.filter(debit_wallet__account__organization_id=organization_id)
    held = pending.aggregate(n=Count("id"), s=Sum("pending_amount"))
    order = {kind: i for i, kind in enumerate((*CREDIT_KINDS, *DEBIT_KINDS))}
    report = Report(
        start=start, end=end, days=days, totals=totals,
        credits_by_kind=dict(sorted(credits.items(), key=lambda kv: order.get(kv[0], 99))),
        pending_count=held["n"], pending_amount=held["s"] or 0,
    )
    if per_organization:
        report.organizations = _organizations(by_org, pending)
    return report


def _organizations(by_org: dict[int, Figures], pending) -> list[OrganizationFigures]:
    from console.models import Organization

    held = {
        row["org"]: (row["n"], row["s"])
        for row in pending.annotate(org=F("debit_wallet__account__organization_id"))
        .values("org").annotate(n=Count("id"), s=Sum("pending_amount")).order_by()
    }
    ids = set(by_org) | set(held)
    wallets = {
        org: (balance, promo)
        for org, balance, promo in Wallet.objects.filter(kind=Wallet.Kind.CUSTOMER, account__organization_id__in=ids)
        .values_list("account__organization_id", "balance", "promo")
    }
    out = []
    for org in Organization.objects.filter(id__in=ids).order_by("name", "id"):
        n, amount = held.get(org.id, (0, 0))
        balance, promo = wallets.get(org.id, (0, 0))
        out.append(OrganizationFigures(org.id, org.name, org.public_id, by_org.get(org.id, Figures()),
                                       pending_count=n, pending_amount=amount, balance=balance, promo=promo))
    out.sort(key=lambda o: (-o.figures.revenue, -o.figures.usage, o.name))
    return out


def _subscription_fees(*, lo: dt.datetime, hi: dt.datetime, organization_id: int | None):
    """(day, organization id or None, fee in micro-units) for each paid invoice, once per invoice."""
    from .stripe_side import _id, _metered_amount, micros

    events = StripeEvent.objects.filter(
        type="invoice.paid", status=StripeEvent.Status.PROCESSED, api_created__gte=lo, api_created__lt=hi
    ).order_by("api_created")
    accounts = dict(BillingAccount.objects.exclude(stripe_customer_id=None)
                    .values_list("stripe_customer_id", "organization_id"))
    seen: set[str] = set()
    for event in events.iterator():
        invoice = (event.payload.get("data") or {}).get("object") or {}
        if not invoice.get("id") or invoice["id"] in seen:
            continue
        seen.add(invoice["id"])
        org = accounts.get(_id(invoice.get("customer")) or "")
        if organization_id is not None and org != organization_id:
            continue
        fee = micros(invoice.get("amount_paid", 0), invoice.get("currency", "usd")) - _metered_amount(invoice)
        if fee > 0:
            yield event.api_created.astimezone(dt.UTC).date(), org, fee
