from __future__ import annotations

from dataclasses import dataclass

from config import asyncdb

from .pricing import Price


@dataclass(frozen=True, slots=True)
class Balance:
    currency: str
    balance: int
    reserved: int

    @property
    def available(self) -> int:
        return self.balance - self.reserved


def balance_for_organization(*, organization_id: int, currency: str = "usd") -> Balance:
    from .models import Wallet

    wallet = Wallet.objects.get(account__organization_id=organization_id, currency=currency, kind=Wallet.Kind.CUSTOMER)
    return Balance(currency=wallet.currency, balance=wallet.balance, reserved=wallet.reserved)


_PRICES_SQL = """
SELECT id, model, version, currency, input_per_mtok, cached_input_per_mtok, output_per_mtok, effective_from
FROM billing_modelprice ORDER BY model, effective_from, version
"""


_IMAGE_PRICES_SQL = "SELECT price_id, size, per_image FROM billing_imageprice ORDER BY price_id, size"


async def price_versions() -> dict[str, list[Price]]:
    """Every price version by model, oldest first, with its per-image prices (the tables are small)."""
    prices, images = await asyncdb.run(
        asyncdb.Stmt(_PRICES_SQL, fetch=True), asyncdb.Stmt(_IMAGE_PRICES_SQL, fetch=True)
    )
    per_image: dict[int, list[tuple[str, int]]] = {}
    for price_id, size, amount in images.rows:
        per_image.setdefault(price_id, []).append((size, amount))
    out: dict[str, list[Price]] = {}
    for row in prices.rows:
        price = Price(
            *row[:7], effective_from=asyncdb.as_datetime(row[7]), per_image=tuple(per_image.get(row[0], ()))
        )
        out.setdefault(price.model, []).append(price)
    return out


def price_version(price_id: int) -> Price:
    """One price version, for a worker settling a job reserved at it (sync ORM)."""
    from .models import ModelPrice

    p = ModelPrice.objects.get(id=price_id)
    per_image = tuple(p.image_prices.order_by("size").values_list("size", "per_image"))
    return Price(p.id, p.model, p.version, p.currency, p.input_per_mtok, p.cached_input_per_mtok,
                 p.output_per_mtok, p.effective_from, per_image=per_image)


def pending_reservation(*, request_id: str, project_id: int):
    """The pending hold of a job's request, for the worker that settles it:
    (ledger.Reservation, api key id), or None if it is no longer pending."""
    from .ledger import Reservation
    from .models import Transfer

    t = (
        Transfer.objects.filter(
            request_id=request_id, project_id=project_id, kind=Transfer.Kind.USAGE, status=Transfer.Status.PENDING
        )
        .only("id", "pending_amount", "debit_wallet_id", "price_id", "api_key_id")
        .first()
    )
    if t is None:
        return None
    return Reservation(transfer_id=t.id, amount=t.pending_amount, wallet_id=t.debit_wallet_id,
                       price=price_version(t.price_id)), t.api_key_id


def priced_models(*, now=None) -> set[str]:
    """The models with a price in effect now (the catalog lists no other), for sync readers
    (console pages); the gateway's catalog reads ``price_versions`` instead."""
    from django.utils import timezone

    from .models import ModelPrice

    return set(ModelPrice.objects.filter(effective_from__lte=now or timezone.now()).values_list("model", flat=True).distinct())
