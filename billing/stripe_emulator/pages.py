"""The hosted pages: Checkout (`/pay/<session id>`) and the billing portal (`/portal/<session id>`).

Plain HTML forms, no JavaScript, so a test drives them with any HTTP client and a developer with
a browser. Paying really creates and confirms a PaymentIntent in localstripe (with the test card
``pm_card_visa``; ``card=declined`` uses ``pm_card_chargeCustomerFail``), or creates the
subscription there, then marks the session complete, delivers the signed
``checkout.session.completed`` webhook (and waits for that delivery) and redirects (303) to
``success_url`` with ``{CHECKOUT_SESSION_ID}`` filled in. ``?outcome=async`` leaves the payment
``processing``: the session completes with ``payment_status=unpaid`` and
``POST /_emulator/checkout/sessions/<id>/async_payment`` settles it later.
"""
from __future__ import annotations

import html

import localstripe.resources as ls
from aiohttp import web

from billing.stripe_emulator import bridge
from billing.stripe_emulator.api import (
    export_session,
    ls_call,
    session_or_404,
    state_of,
)
from billing.stripe_emulator.state import State, StripeError

routes = web.RouteTableDef()

CARDS = {"visa": "pm_card_visa", "declined": "pm_card_chargeCustomerFail"}


def _page(title: str, body: str, status: int = 200) -> web.Response:
    return web.Response(status=status, content_type="text/html", text=(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body style='font-family:sans-serif;max-width:40em;margin:2em auto'><h1>{html.escape(title)}</h1>"
        f"<p><em>Stripe emulator (test mode)</em></p>{body}</body></html>"))


def _amount(amount: int, currency: str) -> str:
    return f"{amount // 100}.{amount % 100:02d} {currency.upper()}"


@routes.get("/pay/{id}")
async def pay_page(request):
    state = state_of(request)
    try:
        session = session_or_404(state, request.match_info["id"])
    except StripeError as exc:
        return _page("Checkout session not found", f"<p>{html.escape(exc.message)}</p>", 404)
    if session["status"] != "open":
        return _page("This checkout session is no longer active", f"<p>Status: {session['status']}</p>", 410)
    outcome = request.query.get("outcome", "")
    rows = "".join(
        f"<li>{html.escape(item['description'] or item['price'])} × {item['quantity'] or 'metered'}: "
        f"{_amount(item['amount_total'], item['currency'])}</li>"
        for item in state.session_line_items[session["id"]])
    cancel = (f"<p><a href='{html.escape(session['cancel_url'])}'>Cancel</a></p>" if session["cancel_url"] else "")
    return _page("Pay", (
        f"<ul>{rows}</ul><p>Total: <strong>{_amount(session['amount_total'], session['currency'])}</strong></p>"
        f"<form method='post' action='/pay/{session['id']}'>"
        f"<input type='hidden' name='outcome' value='{html.escape(outcome)}'>"
        "<label>Card <select name='card'><option value='visa'>Visa 4242 (succeeds)</option>"
        "<option value='declined'>4000 0000 0000 0341 (declined)</option></select></label> "
        f"<button type='submit'>Pay</button></form>{cancel}"))


@routes.post("/pay/{id}")
async def pay_submit(request):
    state = state_of(request)
    form = await request.post()
    try:
        session = session_or_404(state, request.match_info["id"])
    except StripeError as exc:
        return _page("Checkout session not found", f"<p>{html.escape(exc.message)}</p>", 404)
    if session["status"] != "open":
        return _page("This checkout session is no longer active", f"<p>Status: {session['status']}</p>", 410)
    card = CARDS.get(str(form.get("card", "visa")))
    if card is None:
        return _page("Unknown card", "<p>Choose visa or declined.</p>", 400)
    asynchronous = form.get("outcome") == "async"
    try:
        if session["mode"] == "payment":
            pay_payment(state, session, card, asynchronous=asynchronous)
        else:
            pay_subscription(state, session, card)
    except StripeError as exc:
        return _page("Payment failed", f"<p>{html.escape(exc.message)}</p>"
                     f"<p><a href='/pay/{session['id']}'>Try again</a></p>", 402)
    session["status"] = "complete"
    _, delivered = state.hub.publish("checkout.session.completed", export_session(state, session))
    await delivered
    location = session["success_url"].replace("{CHECKOUT_SESSION_ID}", session["id"])
    raise web.HTTPSeeOther(location)


def _customer_for(state: State, session: dict, *, needed: bool) -> str | None:
    if session["customer"]:
        return session["customer"]
    if not needed:
        return None
    customer = ls_call(ls.Customer, email=session["customer_email"],
                       metadata={"checkout_session": session["id"]})
    return customer.id


def pay_payment(state: State, session: dict, card: str, *, asynchronous: bool) -> None:
    pi_data = session["_payment_intent_data"]
    sfu = pi_data.get("setup_future_usage")
    customer = _customer_for(state, session, needed=bool(sfu) or session["customer_creation"] == "always")
    pm = ls_call(ls.PaymentMethod._api_retrieve, card)
    if customer and sfu:
        ls_call(ls.PaymentMethod._api_attach, pm.id, customer=customer)
    pi = ls_call(ls.PaymentIntent._api_create, amount=session["amount_total"], currency=session["currency"],
                 customer=customer, payment_method=pm.id, metadata=dict(pi_data.get("metadata") or {}))
    pi.setup_future_usage = sfu
    pi.description = pi_data.get("description")
    if asynchronous:
        state.processing_payment_intents.add(pi.id)
    else:
        # Raises (402) on a declined card; the session stays open, as on Stripe's page.
        ls_call(pi._confirm, on_failure_now=pi._report_failure)
    session["payment_intent"] = pi.id
    session["customer"] = customer
    session["payment_status"] = "unpaid" if asynchronous else "paid"
    session["customer_details"] = {"email": session["customer_email"], "name": None, "address": None,
                                   "phone": None, "tax_exempt": "none", "tax_ids": []}


def pay_subscription(state: State, session: dict, card: str) -> None:
    from billing.stripe_emulator.api import metered_items

    customer = _customer_for(state, session, needed=True)
    pm = ls_call(ls.PaymentMethod._api_retrieve, card)
    ls_call(ls.PaymentMethod._api_attach, pm.id, customer=customer)
    ls_call(ls.Customer._api_update, customer, invoice_settings={"default_payment_method": pm.id})
    items = state.session_line_items[session["id"]]
    licensed = [i for i in items if i["quantity"] is not None]
    metered = [{"plan": i["price"]} for i in items if i["quantity"] is None]
    sub_data = session["_subscription_data"]
    sub = ls_call(ls.Subscription._api_create, customer=customer,
                  items=[{"plan": licensed[0]["price"], "quantity": licensed[0]["quantity"]}],
                  metadata=dict(sub_data.get("metadata") or {}))
    state.subscription_extras[sub.id] = metered_items(state, sub.id, metered)
    if sub.status != "active":
        raise StripeError(402, "Your card was declined.", code="card_declined")
    session["subscription"] = sub.id
    session["invoice"] = sub.latest_invoice
    session["customer"] = customer
    session["payment_status"] = "paid"
    session["customer_details"] = {"email": session["customer_email"], "name": None, "address": None,
                                   "phone": None, "tax_exempt": "none", "tax_ids": []}


@routes.get("/portal/{id}")
async def portal_page(request):
    state = state_of(request)
    portal = state.portal_sessions.get(request.match_info["id"])
    if portal is None:
        return _page("Portal session not found", "", 404)
    customer = bridge.get(ls.Customer, portal["customer"])
    subs = [s for s in bridge.objects(ls.Subscription) if s.customer == customer.id and s.status != "canceled"]
    rows = "".join(
        f"<li>{html.escape(s.id)} ({s.status}{', cancels at period end' if s.cancel_at_period_end else ''}) "
        f"<form style='display:inline' method='post' action='/portal/{portal['id']}/cancel/{s.id}'>"
        f"<button type='submit'>Cancel at period end</button></form></li>" for s in subs)
    back = f"<p><a href='{html.escape(portal['return_url'])}'>Return</a></p>" if portal["return_url"] else ""
    return _page("Billing portal", f"<p>Customer {html.escape(customer.email or customer.id)}</p>"
                 f"<ul>{rows or '<li>No subscription</li>'}</ul>{back}")


@routes.post("/portal/{id}/cancel/{sub}")
async def portal_cancel(request):
    from billing.stripe_emulator.api import subscription_export

    state = state_of(request)
    portal = state.portal_sessions.get(request.match_info["id"])
    sub = bridge.get(ls.Subscription, request.match_info["sub"])
    if portal is None or sub is None or sub.customer != portal["customer"]:
        return _page("Not found", "", 404)
    ls_call(ls.Subscription._api_update, sub.id, cancel_at_period_end=True)
    _, delivered = state.hub.publish("customer.subscription.updated", subscription_export(state, sub),
                                     previous_attributes={"cancel_at_period_end": False})
    await delivered
    raise web.HTTPSeeOther(f"/portal/{portal['id']}")
