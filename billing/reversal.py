"""Taking back credit that Stripe gave back to the payer (refunds, disputes), and returning it.

A reversal of ``amount`` posts two transfers at most, never touching a ledger row
that exists:

* ``<reference>``: customer → funding, of what the wallet can give without
  spending promo credit or money held for requests in flight:
  ``recoverable = max(0, min(balance - promo, balance + credit_limit - reserved))``;
* ``<reference>:owed``: receivable → funding, the rest, which the customer now owes
  (the receivable wallet's negative balance).

Either way funding is credited the whole amount: it mirrors the money Stripe
holds for us, which went down by the whole amount. ``restore`` gives back
exactly the parts a reversal posted (a won dispute).

Callers hold the customer wallet's row lock (``lock_wallet``) from before they
read anything until commit: settlement and reservation update that row, so what
we computed stays true until our transfers land, and two deliveries of one
event run one after the other.
"""
from __future__ import annotations

from dataclasses import dataclass

from .models import Transfer, Wallet
from .services import transfer_post

OWED = ":owed"


@dataclass(frozen=True, slots=True)
class Reversal:
    from_wallet: int  # taken from the customer wallet
    owed: int  # booked on the receivable wallet

    @property
    def total(self) -> int:
        return self.from_wallet + self.owed


def lock_wallet(wallet_id: int) -> Wallet:
    return Wallet.objects.select_for_update().get(id=wallet_id)


def recoverable(wallet: Wallet) -> int:
    return max(0, min(wallet.balance - wallet.promo, wallet.balance + wallet.credit_limit - wallet.reserved))


def posted(*, kind: str, reference: str) -> Reversal | None:
    """What a reversal with this reference posted, or None if it has not been posted."""
    parts = dict(
        Transfer.objects.filter(kind=kind, reference__in=[reference, reference + OWED]).values_list("reference", "amount")
    )
    if not parts:
        return None
    return Reversal(from_wallet=parts.get(reference, 0), owed=parts.get(reference + OWED, 0))


def reverse(
    *, wallet: Wallet, amount: int, kind: str, reference: str, stripe_object: str, description: str
) -> tuple[Reversal, bool]:
    """Post the reversal of ``amount`` once per ``reference``. ``wallet`` is the locked customer wallet."""
    if wallet.kind != Wallet.Kind.CUSTOMER:
        raise ValueError("reversals take from a customer wallet")
    if amount <= 0:
        raise ValueError("a reversal amount is a positive number of micro-units")
    done = posted(kind=kind, reference=reference)
    if done is not None:
        return done, False
    funding = Wallet.objects.get(account_id=wallet.account_id, currency=wallet.currency, kind=Wallet.Kind.FUNDING)
    take = min(amount, recoverable(wallet))
    owed = amount - take
    if take:
        transfer_post(kind=kind, debit_wallet=wallet, credit_wallet=funding, amount=take, reference=reference,
                      description=description, stripe_object=stripe_object)
    if owed:
        receivable = Wallet.objects.get(account_id=wallet.account_id, currency=wallet.currency, kind=Wallet.Kind.RECEIVABLE)
        transfer_post(kind=kind, debit_wallet=receivable, credit_wallet=funding, amount=owed, reference=reference + OWED,
                      description=f"{description} (owed: the wallet could not cover it)", stripe_object=stripe_object)
    return Reversal(from_wallet=take, owed=owed), True


def restore(
    *, wallet: Wallet, reversal: Reversal, kind: str, reference: str, stripe_object: str, description: str
) -> tuple[Reversal, bool]:
    """Give back exactly what ``reversal`` took: to the wallet its part, to the receivable the owed part."""
    done = posted(kind=kind, reference=reference)
    if done is not None:
        return done, False
    funding = Wallet.objects.get(account_id=wallet.account_id, currency=wallet.currency, kind=Wallet.Kind.FUNDING)
    if reversal.from_wallet:
        transfer_post(kind=kind, debit_wallet=funding, credit_wallet=wallet, amount=reversal.from_wallet,
                      reference=reference, description=description, stripe_object=stripe_object)
    if reversal.owed:
        receivable = Wallet.objects.get(account_id=wallet.account_id, currency=wallet.currency, kind=Wallet.Kind.RECEIVABLE)
        transfer_post(kind=kind, debit_wallet=funding, credit_wallet=receivable, amount=reversal.owed,
                      reference=reference + OWED, description=f"{description} (owed part)", stripe_object=stripe_object)
    return reversal, True
