"""Template helpers for the billing page's auto-recharge form and promotional credit lots.

Both take the organization only, so the billing page includes the fragments without
preparing their data: ``{% include "console/_auto_recharge.html" %}`` and
``{% include "console/_credit_lots.html" %}`` (``organization`` in the context).
"""
from __future__ import annotations

from django import template

from billing import promo, recharge
from billing.topups import format_amount

register = template.Library()


def _dollars(micros: int) -> str:
    return format_amount(micros, "usd").removesuffix(" USD")


@register.simple_tag
def auto_recharge_context(organization) -> dict:
    """The auto-recharge form's data for ``organization``: settings, state, recent attempts."""
    state = recharge.auto_recharge_state(account=organization.billing_account)
    state["threshold_dollars"] = _dollars(state["threshold"])
    state["amount_dollars"] = _dollars(state["amount"]) if state["amount"] else ""
    return state


@register.simple_tag
def credit_summary(organization) -> dict:
    """``billing.promo.credit_summary`` for ``organization`` (paid and promo apart, open lots)."""
    return promo.credit_summary(account=organization.billing_account)
