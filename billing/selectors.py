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


async def price_versions() -> dict[str, list[Price]]:
    """Every price version by model, oldest first (the table is small)."""
    (result,) = await asyncdb.run(asyncdb.Stmt(_PRICES_SQL, fetch=True))
    out: dict[str, list[Price]] = {}
    for row in result.rows:
        price = Price(*row[:7], effective_from=asyncdb.as_datetime(row[7]))
        out.setdefault(price.model, []).append(price)
    return out
