"""Heal what reconciliation can fix by itself: a Stripe payment whose credit never
reached the ledger (a dropped or failed webhook, ``missing_credit``).

The heal fetches the object from Stripe again (the Checkout Session, the
auto-recharge payment intent, or the paid invoice) and applies it through the
very function the webhook handler uses, which is idempotent per Stripe object
(reference ``cs:<id>``, ``pi:<id>``, the invoice's): whatever runs first (the
heal, the webhook's late retry, a second heal) credits, the rest change nothing.
The discrepancy is claimed in the same transaction (``open`` → ``healed``, row
locked), so two heals of one discrepancy apply it once.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from billing.models import Discrepancy, ReconciliationRun, Transfer
from billing.recharge import NotARecharge, RechargeRefused, credit_payment_intent
from billing.topups import NotATopup, TopupRefused, credit_checkout_session

from . import stripe_side

HEALABLE = frozenset({"missing_credit"})

# What the credit functions raise for a payment that is not ours to credit, or not as asked.
_REFUSALS: tuple[type[Exception], ...] = (NotATopup, TopupRefused, NotARecharge, RechargeRefused)


class CannotHeal(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Healed:
    discrepancy: Discrepancy
    transfers: list[Transfer]
    applied: bool  # False: the credit was already there (the webhook came late)


def _applier(refs: Mapping, api: stripe_side._Stripe) -> tuple[str, Callable[[str], object]]:
    """What to apply for a missing credit: (description, fn(source) -> the credit function's result)."""
    purpose = refs.get("purpose")
    if purpose == "checkout" and refs.get("checkout_session"):
        session = api.checkout_session(refs["checkout_session"])
        return f"Checkout Session {session['id']}", lambda source: credit_checkout_session(session=session, source=source)
    if purpose == "invoice" and refs.get("invoice"):
        from billing.subscriptions import invoice_paid_apply

        invoice = api.invoice(refs["invoice"])
        return f"invoice {invoice['id']}", lambda source: invoice_paid_apply(invoice=invoice, source=source)
    if purpose == "payment_intent" and refs.get("payment_intent"):
        pi = api.payment_intent(refs["payment_intent"])
        return f"payment intent {pi['id']}", lambda source: credit_payment_intent(payment_intent=pi, source=source)
    raise CannotHeal("the discrepancy names no Checkout Session, payment intent or invoice to apply")


def _transfers(result, existed: set[int]) -> tuple[list[Transfer], bool]:
    """What the credit function credited, and whether anything of it is new.

    Top-ups and auto-recharge answer (transfer | None, created); an invoice answers
    ``InvoiceApplied`` (its overage, included and included-owed transfers) or None.
    """
    if result is None:
        return [], False
    if isinstance(result, tuple):
        transfer, created = result
        return ([transfer] if transfer is not None else []), bool(created)
    transfers = [t for t in (result.overage, result.included, result.included_owed) if t is not None]
    return transfers, any(t.id not in existed for t in transfers)


def discrepancy_heal(*, discrepancy: Discrepancy, run: ReconciliationRun, user=None) -> Healed:
    """Apply a missing credit once and mark the discrepancy healed; raises CannotHeal if it cannot be."""
    if discrepancy.kind not in HEALABLE:
        raise CannotHeal(f"a {discrepancy.kind} discrepancy is not healed automatically; close it with a note")
    if discrepancy.status != Discrepancy.Status.OPEN:
        raise CannotHeal(f"the discrepancy is already {discrepancy.status}")
    api = stripe_side._Stripe(stripe_side.client())
    what, apply = _applier(discrepancy.references, api)  # Stripe reads, before any lock is taken
    with transaction.atomic():
        claimed = Discrepancy.objects.select_for_update().filter(id=discrepancy.id, status=Discrepancy.Status.OPEN).first()
        if claimed is None:
            raise CannotHeal("the discrepancy was resolved meanwhile")
        existed = set(Transfer.objects.filter(stripe_object=discrepancy.references.get("invoice") or "-")
                      .values_list("id", flat=True))
        try:
            result = apply(f"reconciliation run {run.id}")
        except _REFUSALS as exc:  # not ours, or not what we asked for: a person must look
            raise CannotHeal(f"{what} was not credited: {exc}") from exc
        transfers, applied = _transfers(result, existed)
        if not transfers:
            why = getattr(result, "note", "") or "Stripe says it is not paid"
            raise CannotHeal(f"{what} credited nothing ({why})")
        ids = ", ".join(str(t.id) for t in transfers)
        claimed.status = Discrepancy.Status.HEALED
        claimed.note = (
            f"credit applied by reconciliation run {run.id} from {what} (transfer {ids})" if applied
            else f"credit already in the ledger (transfer {ids}): the webhook arrived late; "
                 f"nothing applied by reconciliation run {run.id}"
        )
        claimed.resolved_at = timezone.now()
        claimed.resolved_by = user
        claimed.references = {**claimed.references, "healed_transfers": [t.id for t in transfers]}
        claimed.save(update_fields=["status", "note", "resolved_at", "resolved_by", "references"])
    return Healed(claimed, transfers, applied)
