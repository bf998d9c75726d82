"""Billing writes outside the hot path: accounts, credits, prices, the sweeper."""
from __future__ import annotations

import datetime as dt

from django.db import IntegrityError, transaction
from django.db.models import F, Max
from django.utils import timezone

from config import asyncdb, bus

from . import ledger
from .models import BillingAccount, Entry, ModelPrice, Transfer, Wallet

PRICES_TOPIC = "prices"


@transaction.atomic
def account_open(*, organization, currency: str = "usd") -> BillingAccount:
    account, _ = BillingAccount.objects.get_or_create(organization=organization)
    for kind in Wallet.Kind.values:
        Wallet.objects.get_or_create(account=account, currency=currency, kind=kind)
    return account


def customer_wallet(*, organization, currency: str = "usd") -> Wallet:
    return Wallet.objects.get(account__organization=organization, currency=currency, kind=Wallet.Kind.CUSTOMER)


def wallet_credit(
    *, wallet: Wallet, amount: int, kind: str = Transfer.Kind.GRANT, reference: str, description: str = ""
) -> Transfer:
    """Credit a customer wallet from its account's funding wallet, once per ``reference``."""
    if not isinstance(amount, int) or amount <= 0:
        raise ValueError("credit amount must be a positive integer of micro-units")
    if wallet.kind != Wallet.Kind.CUSTOMER:
        raise ValueError("only customer wallets are credited")
    try:
        with transaction.atomic():
            funding = Wallet.objects.get(account_id=wallet.account_id, currency=wallet.currency, kind=Wallet.Kind.FUNDING)
            now = timezone.now()
            transfer = Transfer.objects.create(
                kind=kind,
                status=Transfer.Status.POSTED,
                debit_wallet=funding,
                credit_wallet=wallet,
                amount=amount,
                currency=wallet.currency,
                reference=reference,
                description=description,
                created_at=now,
                finished_at=now,
            )
            Entry.objects.bulk_create(
                [
                    Entry(transfer=transfer, wallet=funding, amount=-amount, created_at=now),
                    Entry(transfer=transfer, wallet=wallet, amount=amount, created_at=now),
                ]
            )
            # Customer row first, like settlement, so the two never deadlock.
            Wallet.objects.filter(id=wallet.id).update(balance=F("balance") + amount)
            Wallet.objects.filter(id=funding.id).update(balance=F("balance") - amount)
    except IntegrityError:
        existing = Transfer.objects.filter(kind=kind, reference=reference).first()
        if existing is None:
            raise
        return existing
    return transfer


def price_publish(
    *,
    model: str,
    input_per_mtok: int,
    output_per_mtok: int,
    cached_input_per_mtok: int | None = None,
    effective_from: dt.datetime | None = None,
    currency: str = "usd",
) -> ModelPrice:
    """Add a new price version; requests reserved before it keep their version."""
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
        results = asyncdb.run_sync(*ledger.void_statements(transfer_id=transfer_id, now=now))
        voided += results[0].rowcount
    return voided
