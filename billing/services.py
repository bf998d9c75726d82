"""Billing writes outside the hot path: accounts, credits, prices, the sweeper."""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from django.db import IntegrityError, transaction
from django.db.models import F, Max, Sum
from django.utils import timezone

from config import asyncdb, bus

from . import ledger
from .models import BillingAccount, CreditLot, Entry, ImagePrice, ModelPrice, SpendCounter, Transfer, Wallet

PRICES_TOPIC = "prices"


@transaction.atomic
def account_open(*, organization, currency: str = "usd") -> BillingAccount:
    account, _ = BillingAccount.objects.get_or_create(organization=organization)
    for kind in Wallet.Kind.values:
        Wallet.objects.get_or_create(account=account, currency=currency, kind=kind)
    return account


def customer_wallet(*, organization, currency: str = "usd") -> Wallet:
    return Wallet.objects.get(account__organization=organization, currency=currency, kind=Wallet.Kind.CUSTOMER)


def wallet(*, account_id: int, currency: str = "usd", kind: str) -> Wallet:
    return Wallet.objects.get(account_id=account_id, currency=currency, kind=kind)


# Credits whose amount is promotional (spent first, expires): they raise ``promo`` too.
PROMO_KINDS = frozenset({Transfer.Kind.PROMO, Transfer.Kind.INCLUDED})


def transfer_post(
    *,
    kind: str,
    debit_wallet: Wallet,
    credit_wallet: Wallet,
    amount: int,
    reference: str,
    description: str = "",
    stripe_object: str = "",
    promo_delta: int = 0,
    expires_at: dt.datetime | None = None,
) -> tuple[Transfer, bool]:
    """Post ``amount`` from one wallet to another, once per (kind, reference).

    Returns (transfer, created): a second call with the same reference (a
    retried webhook, a racing worker) returns the first transfer and changes
    nothing. ``promo_delta`` moves the customer wallet's promo part with it (a
    promo grant: +amount; an expiry: -amount). ``expires_at`` makes the credit a
    CreditLot. Safe inside a caller's transaction (a savepoint). Raises
    ``IntegrityError`` if a constraint would break (e.g. a debit the wallet
    cannot cover): callers decide what can be taken first.
    """
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise ValueError("a transfer amount is a positive integer of micro-units")
    if debit_wallet.id == credit_wallet.id or debit_wallet.currency != credit_wallet.currency:
        raise ValueError("a transfer moves money between two wallets of one currency")
    try:
        with transaction.atomic():
            now = timezone.now()
            transfer = Transfer.objects.create(
                kind=kind,
                status=Transfer.Status.POSTED,
                debit_wallet=debit_wallet,
                credit_wallet=credit_wallet,
                amount=amount,
                currency=credit_wallet.currency,
                reference=reference,
                description=description[:255],
                stripe_object=stripe_object,
                created_at=now,
                finished_at=now,
            )
            Entry.objects.bulk_create(
                [
                    Entry(transfer=transfer, wallet=debit_wallet, amount=-amount, created_at=now),
                    Entry(transfer=transfer, wallet=credit_wallet, amount=amount, created_at=now),
                ]
            )
            # Customer rows first, like settlement, so the two never deadlock.
            sides = sorted(
                [(credit_wallet, amount), (debit_wallet, -amount)],
                key=lambda side: (side[0].kind != Wallet.Kind.CUSTOMER, side[0].id),
            )
            for w, delta in sides:
                extra = {"promo": F("promo") + promo_delta} if promo_delta and w.kind == Wallet.Kind.CUSTOMER else {}
                Wallet.objects.filter(id=w.id).update(balance=F("balance") + delta, **extra)
            if expires_at is not None:
                CreditLot.objects.create(
                    wallet=credit_wallet, transfer=transfer, kind=kind, amount=amount, expires_at=expires_at
                )
    except IntegrityError:
        existing = Transfer.objects.filter(kind=kind, reference=reference).first()
        if existing is None:
            raise
        return existing, False
    return transfer, True


def wallet_credit(
    *,
    wallet: Wallet,
    amount: int,
    kind: str = Transfer.Kind.GRANT,
    reference: str,
    description: str = "",
    stripe_object: str = "",
    expires_at: dt.datetime | None = None,
) -> Transfer:
    """Credit a customer wallet from its account's funding wallet, once per ``reference``.

    Promo and included credit (``PROMO_KINDS``) need ``expires_at`` and are spent first.
    """
    if wallet.kind != Wallet.Kind.CUSTOMER:
        raise ValueError("only customer wallets are credited")
    promo = kind in PROMO_KINDS
    if promo != (expires_at is not None):
        raise ValueError("promo and included credit (and only they) expire")
    funding = Wallet.objects.get(account_id=wallet.account_id, currency=wallet.currency, kind=Wallet.Kind.FUNDING)
    transfer, _ = transfer_post(
        kind=kind,
        debit_wallet=funding,
        credit_wallet=wallet,
        amount=amount,
        reference=reference,
        description=description,
        stripe_object=stripe_object,
        promo_delta=amount if promo else 0,
        expires_at=expires_at,
    )
    return transfer


def price_publish(
    *,
    model: str,
    input_per_mtok: int,
    output_per_mtok: int,
    cached_input_per_mtok: int | None = None,
    effective_from: dt.datetime | None = None,
    currency: str = "usd",
    per_image: Mapping[str, int] | None = None,
) -> ModelPrice:
    """Add a new price version; requests reserved before it keep their version.

    ``per_image`` ({"1024x1024": micro-units, …}) makes it an image model's
    version: images are billed per image by size, and the model serves only
    /v1/images (its token prices should be 0).
    """
    for size, amount in (per_image or {}).items():
        width, _, height = size.partition("x")
        if not (width.isdigit() and height.isdigit()) or not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
            raise ValueError(f"per_image needs '<width>x<height>' sizes and non-negative integer micro-units, got {size!r}: {amount!r}")
    with transaction.atomic():
        # Lock the model's versions so two publishers cannot take one number.
        list(ModelPrice.objects.select_for_update().filter(model=model).values_list("id", flat=True))
        latest = ModelPrice.objects.filter(model=model).aggregate(v=Max("version"))["v"] or 0
        price = ModelPrice.objects.create(
            model=model,
            version=latest + 1,
            currency=currency,
            input_per_mtok=input_per_mtok,
            cached_input_per_mtok=input_per_mtok if cached_input_per_mtok is None else cached_input_per_mtok,
            output_per_mtok=output_per_mtok,
            effective_from=effective_from or timezone.now(),
        )
        ImagePrice.objects.bulk_create(
            [ImagePrice(price=price, size=size, per_image=amount) for size, amount in sorted((per_image or {}).items())]
        )
        transaction.on_commit(lambda: bus.publish(PRICES_TOPIC, model))
    return price


def reservations_void_expired(*, now: dt.datetime | None = None, limit: int = 1000) -> int:
    """Void reservations whose request died without settling (crash, lost process)."""
    now = now or timezone.now()
    ids = list(
        Transfer.objects.filter(status=Transfer.Status.PENDING, timeout_at__lt=now)
        .order_by("timeout_at")
        .values_list("id", flat=True)[:limit]
    )
    voided = 0
    for transfer_id in ids:
        # expired_only: a job may have extended its hold since the ids were read.
        results = asyncdb.run_sync(*ledger.void_statements(transfer_id=transfer_id, now=now, expired_only=True))
        voided += results[0].rowcount
    return voided


def period_bounds(period: str) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of a "YYYY-MM" period, UTC."""
    year, month = map(int, period.split("-"))
    start = dt.datetime(year, month, 1, tzinfo=dt.timezone.utc)
    end = dt.datetime(year + month // 12, month % 12 + 1, 1, tzinfo=dt.timezone.utc)
    return start, end


def spend_cap_set(*, project, key=None, cap: int | None, now: dt.datetime | None = None) -> SpendCounter | None:
    """Apply a project's (or, with ``key``, that key's) monthly spend cap to this
    month's counter; ``cap=None`` clears it. The caller stores the cap itself
    (console's Project/ApiKey) in the same transaction.

    Setting a cap derives the counter from the ledger: ``spent`` is the month's
    posted usage so far, ``reserved`` its pending holds, which are marked as
    held here so settling or voiding them releases the counter. Clearing keeps
    the row but stops enforcing it; the gateway then stops keeping it up
    (gateway.paid leaves the counter statements out), and a new cap rebuilds it.
    """
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 0):
        raise ValueError("a spend cap is a non-negative integer of micro-units")
    now = now or timezone.now()
    period = ledger.spend_period(now)
    start, end = period_bounds(period)
    if key is not None:
        scope, scope_id, owner, flag = SpendCounter.Scope.KEY, key.id, {"api_key_id": key.id}, "counted_key"
    else:
        scope, scope_id, owner, flag = SpendCounter.Scope.PROJECT, project.id, {"project_id": project.id}, "counted_project"
    month = Transfer.objects.filter(kind=Transfer.Kind.USAGE, created_at__gte=start, created_at__lt=end, **owner)
    with transaction.atomic():
        # Lock order matters (see billing.ledger). First the month's pending
        # holds, to mark them below: a settlement that already claimed one
        # finishes (and shows up as posted) before we go on; one that has not
        # waits for us and then sees the new counter. Then the customer wallet,
        # which every reserve, settle and void of the organization updates
        # before it touches a counter: while we hold it, nothing here moves.
        locked = dict(
            month.filter(status=Transfer.Status.PENDING)
            .order_by("id")  # one lock order, should two cap changes overlap
            .select_for_update()
            .values_list("id", "pending_amount")
        )
        _lock_customer_wallet(organization_id=project.organization_id)
        counter = SpendCounter.objects.filter(scope=scope, scope_id=scope_id, period=period).first()
        if cap is None:
            if counter is not None:
                counter.cap, counter.excess = None, 0
                counter.save(update_fields=["cap", "excess"])
            return counter
        spent = month.filter(status=Transfer.Status.POSTED).aggregate(s=Sum("amount"))["s"] or 0
        # Reserved between the two locks by a process that knew of a cap: already
        # held here, and not ours to mark (its settlement may be waiting for the wallet).
        held_since = (
            month.filter(status=Transfer.Status.PENDING, **{flag: True})
            .exclude(id__in=list(locked))
            .aggregate(s=Sum("pending_amount"))["s"]
            or 0
        )
        reserved = sum(locked.values()) + held_since
        Transfer.objects.filter(id__in=list(locked)).update(spend_period=period, **{flag: True})
        values = {"spent": spent, "reserved": reserved, "cap": cap, "excess": max(0, spent + reserved - cap)}
        counter, _ = SpendCounter.objects.update_or_create(scope=scope, scope_id=scope_id, period=period, defaults=values)
    return counter


def _lock_customer_wallet(*, organization_id: int) -> None:
    list(
        Wallet.objects.select_for_update(of=("self",))
        .filter(account__organization_id=organization_id, kind=Wallet.Kind.CUSTOMER)
        .values_list("id", flat=True)
    )


def reservation_extend(*, transfer_id: int, until: dt.datetime) -> bool:
    """Keep a pending reservation from the sweeper until ``until`` (a job that
    starts running holds its money for as long as it may run). False if the
    reservation is no longer pending (settled, or voided while the job was queued)."""
    (result,) = asyncdb.run_sync(ledger.extend_statement(transfer_id=transfer_id, until=until))
    return result.rowcount == 1
