"""The test/admin API under `/_emulator/…` (no API key; the emulator listens on 127.0.0.1 only).

Triggers answer after their webhooks were delivered, with the events and deliveries they made,
so a test needs neither sleeps nor polling. See the package docstring for the list.
"""
from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import localstripe.resources as ls
from aiohttp import web
from dateutil.relativedelta import relativedelta

from billing.stripe_emulator import bridge
from billing.stripe_emulator.api import (
    all_balance_transactions,
    charge_export,
    export_session,
    ls_call,
    make_payout,
    meter_totals,
    new_bt,
    round_cents,
    session_or_404,
    state_of,
    subscription_export,
)
from billing.stripe_emulator.state import State, StripeError, as_int, bad, missing

routes = web.RouteTableDef()


async def body(request: web.Request) -> dict:
    raw = await request.read()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise bad("The admin API takes a JSON body.") from None
    if not isinstance(data, dict):
        raise bad("The admin API takes a JSON object.")
    return data


async def announce(state: State, *events: tuple[str, dict], previous: dict | None = None,
                   wait: bool = True) -> dict:
    """Publish events in order; with ``wait``, return once each was delivered (or dropped/failed)."""
    published, futures = [], []
    for event_type, obj in events:
        event, done = state.hub.publish(event_type, obj, previous_attributes=previous)
        published.append(event)
        futures.append(done)
    deliveries = []
    if wait:
        for done in futures:
            deliveries.extend(d.export() for d in await done)
    return {"events": published, "deliveries": deliveries}


# --- webhooks -------------------------------------------------------------------------------------------


@routes.post("/_emulator/webhook_endpoints")
async def endpoint_register(request):
    state, data = state_of(request), await body(request)
    url = data.get("url")
    secrets_ = data.get("secrets") or ([data["secret"]] if data.get("secret") else [])
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise bad("url must be an http(s) URL.", "url")
    if not secrets_ or not all(isinstance(s, str) and s for s in secrets_):
        raise bad("secret (or secrets, a list) is required.", "secret")
    events = data.get("enabled_events")
    if events is not None and not (isinstance(events, list) and all(isinstance(e, str) for e in events)):
        raise bad("enabled_events must be a list of event types.", "enabled_events")
    endpoint = state.hub.register(url=url, secrets_=secrets_, enabled_events=events, endpoint_id=data.get("id"))
    return web.json_response(endpoint.export())


@routes.get("/_emulator/webhook_endpoints")
async def endpoint_list(request):
    return web.json_response({"data": [e.export() for e in state_of(request).hub.endpoints.values()]})


@routes.delete("/_emulator/webhook_endpoints/{id}")
async def endpoint_delete(request):
    state = state_of(request)
    if state.hub.endpoints.pop(request.match_info["id"], None) is None:
        raise missing("webhook_endpoint", request.match_info["id"])
    return web.json_response({"deleted": True, "id": request.match_info["id"]})


@routes.post("/_emulator/drop")
async def drop(request):
    state, data = state_of(request), await body(request)
    count = as_int(data.get("count", 1), "count", minimum=1)
    event_type = data.get("type")
    state.hub.drop_next(count, event_type)
    return web.json_response({"count": count, "type": event_type})


@routes.get("/_emulator/deliveries")
async def deliveries(request):
    state, query = state_of(request), request.query
    filters = {"event_type": query.get("type"), "event_id": query.get("event_id"), "status": query.get("status")}
    wait_for = as_int(query.get("wait_for", 0), "wait_for", minimum=0)
    if wait_for:
        timeout = min(as_int(query.get("timeout", 10), "timeout", minimum=1), 60)  # whole seconds
        found = await state.hub.wait_for(count=wait_for, timeout=timeout, **filters)
    else:
        found = state.hub.find_deliveries(**filters)
    return web.json_response({"data": [d.export() for d in found]})


@routes.get("/_emulator/events")
async def events(request):
    state = state_of(request)
    found = list(state.hub.events.values())
    if "type" in request.query:
        found = [e for e in found if e["type"] == request.query["type"]]
    return web.json_response({"data": found})


@routes.post("/_emulator/events")
async def event_trigger(request):
    """Send any event: ``{"type": "...", "object": {...}}`` (the object as Stripe would put it)."""
    state, data = state_of(request), await body(request)
    if not isinstance(data.get("type"), str) or not isinstance(data.get("object"), dict):
        raise bad("type (string) and object (JSON object) are required.")
    return web.json_response(await announce(state, (data["type"], data["object"])))


@routes.post("/_emulator/events/{id}/replay")
async def event_replay(request):
    state, data = state_of(request), await body(request)
    if request.match_info["id"] not in state.hub.events:
        raise missing("event", request.match_info["id"])
    made = await state.hub.replay(request.match_info["id"], data.get("endpoint"))
    return web.json_response({"deliveries": [d.export() for d in made]})


@routes.post("/_emulator/reset")
async def reset(request):
    """Forget webhook endpoints, pending drops and deliveries; with ``{"objects": true}`` every
    Stripe object too (customers, payments, prices, sessions, meter events…)."""
    state, data = state_of(request), await body(request)
    state.hub.reset()
    if data.get("objects"):
        ls.store.clear()
        for name in ("prices", "meters", "checkout_sessions", "session_line_items", "portal_sessions",
                     "meter_events", "disputes", "payouts", "balance_transactions", "invoices",
                     "subscription_extras", "subscription_periods", "idempotency"):
            getattr(state, name).clear()
        state.processing_payment_intents.clear()
        state.hub.events.clear()
    return web.json_response({"reset": True})


@routes.get("/_emulator/health")
async def health(request):
    return web.json_response({"ok": True, "api_version": state_of(request).hub.api_version})


# --- checkout: the asynchronous payment's outcome ----------------------------------------------------------


@routes.post("/_emulator/checkout/sessions/{id}/async_payment")
async def async_payment(request):
    state, data = state_of(request), await body(request)
    session = session_or_404(state, request.match_info["id"])
    pi = bridge.get(ls.PaymentIntent, session["payment_intent"] or "")
    if pi is None or pi.id not in state.processing_payment_intents:
        raise StripeError(400, "This session has no processing payment (pay it with ?outcome=async).")
    result = data.get("result", "succeeded")
    if result not in ("succeeded", "failed"):
        raise bad("result must be succeeded or failed.", "result")
    state.processing_payment_intents.discard(pi.id)
    if result == "succeeded":
        ls_call(pi._confirm, on_failure_now=pi._report_failure)
        session["payment_status"] = "paid"
        event_type = "checkout.session.async_payment_succeeded"
    else:
        ls_call(ls.PaymentIntent._api_cancel, pi.id)
        event_type = "checkout.session.async_payment_failed"
    return web.json_response(await announce(state, (event_type, export_session(state, session))))


# --- subscriptions: the next period's invoice ------------------------------------------------------------------


@routes.post("/_emulator/subscriptions/{id}/renew")
async def renew(request):
    """Close the current period: bill the next period's fee plus the metered usage reported so far
    (sum of meter events for the customer, and for the price's meter if it has one, not yet billed),
    charge the default payment method in localstripe, advance the period and send ``invoice.paid``
    (+ ``invoice.payment_succeeded``, ``customer.subscription.updated``). ``{"fail": true}`` makes
    the payment fail instead (``invoice.payment_failed``, subscription ``past_due``)."""
    state, data = state_of(request), await body(request)
    sub = bridge.get(ls.Subscription, request.match_info["id"])
    if sub is None:
        raise missing("subscription", request.match_info["id"])
    if sub.status == "canceled":
        raise bad("This subscription is canceled.")
    before = subscription_export(state, sub)
    start, end = state.subscription_periods.get(sub.id, (sub.current_period_start, sub.current_period_end))
    interval = {"day": relativedelta(days=1), "week": relativedelta(weeks=1), "month": relativedelta(months=1),
                "year": relativedelta(years=1)}[sub.plan.interval] * sub.plan.interval_count
    new_end = int((datetime.fromtimestamp(end, UTC) + interval).timestamp())
    fee_price = state.prices.get(sub.plan.id)
    currency = sub.plan.currency
    lines = []
    item = sub.items._list[0]
    fee_amount = round_cents(Decimal(fee_price["unit_amount_decimal"]) * item.quantity) \
        if fee_price else sub.plan.amount * item.quantity
    lines.append(_line(state, sub, item.id, sub.plan.id, fee_amount, currency, item.quantity, end, new_end))
    billed_events = []
    for extra in state.subscription_extras.get(sub.id, []):
        price = state.prices[extra["price"]]
        meter = state.meters.get(price["recurring"].get("meter") or "")
        usage_events = [e for e in state.meter_events.values()
                        if e["_customer"] == sub.customer and e["_invoice"] is None and e["timestamp"] < end
                        and (meter is None or e["event_name"] == meter["event_name"])]
        usage = sum(e["_value"] for e in usage_events)
        amount = round_cents(Decimal(price["unit_amount_decimal"]) * usage)
        lines.append(_line(state, sub, extra["id"], price["id"], amount, currency, usage, start, end))
        billed_events.extend(usage_events)
    total = sum(line["amount"] for line in lines)
    invoice_id = state.new_id("in_")
    now = state.now()
    invoice = {
        "id": invoice_id, "object": "invoice", "customer": sub.customer, "subscription": sub.id,
        "parent": {"type": "subscription_details",
                   "subscription_details": {"subscription": sub.id, "metadata": dict(sub.metadata)}},
        "billing_reason": "subscription_cycle", "collection_method": "charge_automatically",
        "currency": currency, "created": now, "livemode": False, "metadata": {},
        "period_start": start, "period_end": end, "subtotal": total, "total": total, "amount_due": total,
        "lines": {"object": "list", "data": lines, "has_more": False, "url": f"/v1/invoices/{invoice_id}/lines"},
        "number": f"EMU-{len(state.invoices) + 1:04d}", "attempt_count": 1, "attempted": True,
        "hosted_invoice_url": None, "payment_intent": None, "charge": None,
    }
    if data.get("fail"):
        invoice.update(status="open", paid=False, amount_paid=0, amount_remaining=total,
                       status_transitions={"finalized_at": now, "paid_at": None})
        sub.status = "past_due"
        state.invoices[invoice_id] = invoice
        result = await announce(state, ("invoice.payment_failed", invoice),
                                ("customer.subscription.updated", subscription_export(state, sub)))
        return web.json_response({"invoice": invoice, **result})
    if total > 0:
        customer = bridge.get(ls.Customer, sub.customer)
        pm = customer._get_default_payment_method_or_source() if customer else None
        if pm is None:
            raise StripeError(402, "The customer has no default payment method.", code="resource_missing")
        pi = ls_call(ls.PaymentIntent._api_create, amount=total, currency=currency, customer=sub.customer,
                     payment_method=pm.id, confirm=True, off_session=True,
                     metadata={"invoice": invoice_id, "subscription": sub.id})
        invoice["payment_intent"] = pi.id
        invoice["charge"] = pi.latest_charge.id
    invoice.update(status="paid", paid=True, amount_paid=total, amount_remaining=0,
                   status_transitions={"finalized_at": now, "paid_at": now})
    for event in billed_events:
        event["_invoice"] = invoice_id
    state.invoices[invoice_id] = invoice
    state.subscription_periods[sub.id] = (end, new_end)
    sub.latest_invoice = invoice_id
    result = await announce(
        state, ("invoice.paid", invoice), ("invoice.payment_succeeded", invoice),
        ("customer.subscription.updated", subscription_export(state, sub)),
        previous={"current_period_start": before["current_period_start"],
                  "current_period_end": before["current_period_end"]})
    return web.json_response({"invoice": invoice, **result})


def _line(state: State, sub, item_id: str, price_id: str, amount: int, currency: str, quantity: int,
          start: int, end: int) -> dict:
    price = state.prices.get(price_id)
    return {
        "id": state.new_id("il_"), "object": "line_item", "amount": amount, "currency": currency,
        "description": None, "livemode": False, "metadata": {}, "quantity": quantity,
        "period": {"start": start, "end": end},
        "price": {k: v for k, v in price.items() if not k.startswith("_")} if price else None,
        "pricing": {"type": "price_details", "price_details": {"price": price_id,
                                                              "product": price["product"] if price else None}},
        "parent": {"type": "subscription_item_details", "subscription_item_details": {
            "subscription": sub.id, "subscription_item": item_id, "proration": False}},
        "subscription": sub.id, "subscription_item": item_id, "type": "subscription",
    }


# --- disputes -------------------------------------------------------------------------------------------------


@routes.post("/_emulator/disputes")
async def dispute_open(request):
    """Open a dispute on a charge (``charge`` or ``payment_intent``; ``amount`` defaults to the
    whole charge): the amount and a 15.00 fee leave the balance (a ``dispute`` balance transaction),
    then ``charge.dispute.created`` and ``charge.dispute.funds_withdrawn`` are sent."""
    state, data = state_of(request), await body(request)
    if data.get("payment_intent"):
        pi = bridge.get(ls.PaymentIntent, data["payment_intent"])
        if pi is None or pi.latest_charge is None:
            raise missing("payment_intent", data["payment_intent"])
        charge = pi.latest_charge
    else:
        charge = bridge.get(ls.Charge, data.get("charge") or "")
        if charge is None:
            raise missing("charge", str(data.get("charge")))
    if charge.status != "succeeded":
        raise bad("Only a succeeded charge can be disputed.")
    if any(d["charge"] == charge.id for d in state.disputes.values()):
        raise bad(f"Charge {charge.id} is already disputed.")
    amount = as_int(data.get("amount", charge.amount), "amount", minimum=1)
    if amount > charge.amount:
        raise bad("A dispute cannot exceed the charge.", "amount")
    dispute_id = state.new_id("dp_")
    bt = new_bt(state, amount=-amount, fee=bridge.DISPUTE_FEE, currency=charge.currency, type_="adjustment",
                category="dispute", source=dispute_id, description=f"Chargeback withdrawal for {charge.id}")
    now = state.now()
    dispute = {
        "id": dispute_id, "object": "dispute", "amount": amount, "currency": charge.currency,
        "charge": charge.id, "payment_intent": charge.payment_intent, "created": now, "livemode": False,
        "reason": data.get("reason", "fraudulent"), "status": "needs_response", "is_charge_refundable": False,
        "balance_transactions": [bt], "evidence": {}, "metadata": {},
        "evidence_details": {"due_by": now + 7 * 86400, "has_evidence": False, "past_due": False,
                             "submission_count": 0},
    }
    state.disputes[dispute_id] = dispute
    result = await announce(state, ("charge.dispute.created", dispute), ("charge.dispute.funds_withdrawn", dispute))
    return web.json_response({"dispute": dispute, **result})


async def close_dispute(state: State, dispute: dict, outcome: str, *, wait: bool = True) -> dict:
    if dispute["status"] in ("won", "lost"):
        raise bad(f"This dispute is already closed ({dispute['status']}).")
    events = []
    dispute["status"] = outcome
    if outcome == "won":
        # The disputed amount comes back; the dispute fee does not.
        bt = new_bt(state, amount=dispute["amount"], fee=0, currency=dispute["currency"], type_="adjustment",
                    category="dispute_reversal", source=dispute["id"],
                    description=f"Chargeback reversal for {dispute['charge']}")
        dispute["balance_transactions"].append(bt)
        events.append(("charge.dispute.funds_reinstated", dispute))
    events.append(("charge.dispute.closed", dispute))
    return await announce(state, *events, wait=wait)


@routes.post("/_emulator/disputes/{id}/close")
async def dispute_close(request):
    state, data = state_of(request), await body(request)
    dispute = state.disputes.get(request.match_info["id"])
    if dispute is None:
        raise missing("dispute", request.match_info["id"])
    outcome = data.get("outcome")
    if outcome not in ("won", "lost"):
        raise bad("outcome must be won or lost.", "outcome")
    result = await close_dispute(state, dispute, outcome)
    return web.json_response({"dispute": dispute, **result})


# --- payouts --------------------------------------------------------------------------------------------------


@routes.post("/_emulator/payouts")
async def automatic_payout(request):
    """Pay out (``automatic: true``) every balance transaction of ``currency`` not yet paid out:
    the payout's amount is the sum of their ``net``; each gets ``payout`` set, so
    ``GET /v1/balance_transactions?payout=po_…`` lists them (and the payout's own transaction)."""
    state, data = state_of(request), await body(request)
    currency = str(data.get("currency", "usd")).lower()
    swept = [bt for bt in all_balance_transactions(state)
             if bt["currency"] == currency and bt["type"] != "payout" and not bt.get("payout")]
    amount = sum(bt["net"] for bt in swept)
    if amount <= 0:
        raise bad(f"Nothing to pay out in {currency} (balance {amount}).")
    payout = make_payout(state, amount=amount, currency=currency, automatic=True, metadata={}, description=None)
    for bt in swept:
        if bt["id"] in state.balance_transactions:
            state.balance_transactions[bt["id"]]["payout"] = payout["id"]
        else:
            bridge.get(ls.BalanceTransaction, bt["id"]).payout = payout["id"]
    result = await announce(state, ("payout.created", payout), ("payout.paid", payout))
    return web.json_response({"payout": payout, "balance_transactions": [bt["id"] for bt in swept], **result})


# --- inspection -----------------------------------------------------------------------------------------------


@routes.get("/_emulator/meter_events")
async def meter_events(request):
    state = state_of(request)
    customer = request.query.get("customer")
    found = [{k: v for k, v in e.items() if not k.startswith("_")} | {"value": e["_value"], "invoice": e["_invoice"]}
             for e in state.meter_events.values() if customer is None or e["_customer"] == customer]
    totals = meter_totals(state)
    return web.json_response({"data": found, "totals": totals if customer is None else {
        customer: totals.get(customer, {})}})


@routes.get("/_emulator/charges/{id}")
async def charge_view(request):
    state = state_of(request)
    charge = bridge.get(ls.Charge, request.match_info["id"])
    if charge is None:
        raise missing("charge", request.match_info["id"])
    return web.json_response(charge_export(state, charge))

