"""Template helpers for the auto-recharge form and credit shown in USD."""
from __future__ import annotations

from django import template

from billing import recharge
from billing.money import usd_from_micros

register = template.Library()


@register.filter
def usd(micros: int | None) -> str:
    """Micro-units as USD text, exact: 1_234_560 → "1.23456"."""
    return "" if micros is None else usd_from_micros(int(micros))


@register.simple_tag
def auto_recharge_context(organization) -> dict:
    """The auto-recharge form's data for ``organization`` (console/_auto_recharge.html)."""
    account = organization.billing_account
    state = recharge.auto_recharge_state(account=account)
    state["threshold_usd"] = usd_from_micros(state["threshold"])
    state["amount_usd"] = usd_from_micros(state["amount"]) if state["amount"] else ""
    return state
