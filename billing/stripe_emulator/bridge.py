"""localstripe, in this process: its state kept in memory only, its events routed to our hub,
Stripe-like fees on its balance transactions, and its objects reshaped for the API version
stripe-python 16 speaks.

localstripe is a module-level singleton (its ``store`` and ``app``), so one emulator runs per
process. Everything here touches its public classes (``localstripe.resources``); the two patches
(``Store.dump_to_disk`` and ``schedule_webhook``) are the documented seams we need: the first stops
it writing ``/tmp/localstripe.pickle`` on every change, the second replaces its webhook sender.
"""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import localstripe.resources as ls
from localstripe import server as ls_server

from billing.stripe_emulator.hub import Hub

# Stripe's standard US card pricing: 2.9% + 30 cents per successful charge, rounded to the cent
# (half up). Refunds return no fee. A dispute costs a flat 15 USD fee that winning does not return.
CARD_FEE_PERMILLE = 29
CARD_FEE_FIXED = 30
DISPUTE_FEE = 1500


def card_fee(amount: int) -> int:
    """Fee of a card charge in the smallest currency unit: integer arithmetic, no float."""
    percent = (Decimal(amount) * CARD_FEE_PERMILLE / 1000).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return int(percent) + CARD_FEE_FIXED


def fee_details(fee: int, currency: str, description: str = "Stripe processing fees") -> list[dict]:
    if not fee:
        return []
    return [{"amount": fee, "application": None, "currency": currency, "description": description,
             "type": "stripe_fee"}]


_installed: dict[str, Any] = {}


def install(hub: Hub) -> None:
    """Patch localstripe for this process (idempotent) and start from an empty store."""
    _installed["hub"] = hub
    if _installed.get("patched"):
        ls.store.clear()
        return
    ls.Store.dump_to_disk = lambda self: None  # state lives in memory; nothing written to /tmp
    ls.store.clear()

    original_bt_init = ls.BalanceTransaction.__init__

    def bt_init(self, *args, **kwargs):
        original_bt_init(self, *args, **kwargs)
        if self.type == "charge":
            self.fee = card_fee(self.amount)
            self.fee_details = fee_details(self.fee, self.currency)
        self.payout = None  # set when an (emulated) payout sweeps it

    ls.BalanceTransaction.__init__ = bt_init

    def schedule_webhook(event: ls.Event) -> None:
        publish_localstripe_event(event)

    ls.schedule_webhook = schedule_webhook
    _installed["patched"] = True


def publish_localstripe_event(event: ls.Event) -> None:
    hub: Hub = _installed["hub"]
    obj = compat(event.data["object"])
    hub.publish(event.type, obj, event_id=event.id, created=event.created)
    if event.type == "invoice.payment_succeeded":
        # Stripe sends invoice.paid with invoice.payment_succeeded; localstripe only the latter.
        hub.publish("invoice.paid", obj, created=event.created)


app = ls_server.app
unflatten_data = ls_server.unflatten_data
UserError = ls.UserError


def get(kind: type, object_id: str):
    """A localstripe object by id, or None."""
    return ls.store.get(f"{kind.object}:{object_id}")


def objects(kind: type) -> list:
    prefix = f"{kind.object}:"
    return [value for key, value in ls.store.items() if key.startswith(prefix)]


# --- shaping localstripe's objects for stripe-python 16 -----------------------------------------
# Filled in by the front (it owns prices, disputes, subscription extras) through these hooks.
compat_hooks: dict[str, list] = {}


def compat(obj: Any, expand: list[str] | None = None) -> Any:
    """Reshape an exported object (recursively) the way the current API returns it."""
    expand = expand or []
    if isinstance(obj, list):
        return [compat(item, expand) for item in obj]
    if not isinstance(obj, dict):
        return obj
    kind = obj.get("object")
    if kind == "list":
        inner = [p[len("data."):] for p in expand if p.startswith("data.")]
        obj["data"] = [compat(item, inner) for item in obj.get("data", [])]
        return obj
    if kind == "payment_intent":
        charge = obj.get("latest_charge")
        if isinstance(charge, dict) and not any(p == "latest_charge" or p.startswith("latest_charge.")
                                                for p in expand):
            obj["latest_charge"] = charge["id"]
        obj.pop("charges", None)  # removed from the API in 2022-11-15
        obj.setdefault("payment_method_types", ["card"])
        obj.setdefault("object", "payment_intent")
    for hook in compat_hooks.get(kind, []):
        hook(obj, expand)
    return obj
