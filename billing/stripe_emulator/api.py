"""The `/v1` routes the front serves itself: what localstripe lacks (prices, meters, checkout and
billing portal sessions, meter events, disputes, payouts), what it gets wrong for a finance
reconciliation (balance transactions without fees or filters, refunds above the charge), and
what must be translated for stripe-python 16 (subscription items by ``price``, events)."""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import localstripe.resources as ls
from aiohttp import web

from billing.stripe_emulator import bridge
from billing.stripe_emulator.state import (
    State,
    StripeError,
    as_bool,
    as_int,
    bad,
    created_filter,
    expand_list,
    missing,
    page,
    params,
)

routes = web.RouteTableDef()


def state_of(request: web.Request) -> State:
    return request.app["state"]


def ok(obj: Any) -> web.Response:
    return web.json_response(obj)


def ls_call(fn, *args, **kwargs):
    """Call localstripe, turning its errors into ours."""
    try:
        return fn(*args, **kwargs)
    except ls.UserError as exc:
        body = exc.body.get("error", {})
        raise StripeError(exc.code, body.get("message", "Bad request"), code=body.get("code")) from None


def money(value: Any, param: str) -> Decimal:
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise bad(f"Invalid decimal: {value}", param) from None
    if not amount.is_finite() or amount < 0:
        raise bad(f"{param} must be a non-negative number", param)
    return amount


def round_cents(amount: Decimal) -> int:
    return int(amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def unknown(data: dict, allowed: set[str]) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise bad(f"Received unknown parameter: {extra[0]}", extra[0])


# --- products through localstripe, for price_data.product_data -------------------------------------


def product_for(state: State, data: dict, param: str) -> str:
    if data.get("product"):
        if bridge.get(ls.Product, data["product"]) is None:
            raise missing("product", data["product"], param=f"{param}[product]")
        return data["product"]
    product_data = data.get("product_data")
    if not isinstance(product_data, dict) or not product_data.get("name"):
        raise bad(f"Missing required param: {param}[product].", f"{param}[product]")
    return ls_call(ls.Product, name=product_data["name"], metadata=product_data.get("metadata") or {},
                   description=product_data.get("description")).id


# --- prices ------------------------------------------------------------------------------------------

PRICE_PARAMS = {"currency", "product", "product_data", "unit_amount", "unit_amount_decimal", "recurring",
                "lookup_key", "transfer_lookup_key", "metadata", "nickname", "active", "billing_scheme",
                "tax_behavior", "expand"}


def make_price(state: State, data: dict, *, param: str = "", inline: bool = False) -> dict:
    prefix = f"{param}[" if param else ""

    def p(name: str) -> str:
        return f"{prefix}{name}]" if param else name

    if not data.get("currency"):
        raise bad(f"Missing required param: {p('currency')}.", p("currency"))
    if data.get("billing_scheme", "per_unit") != "per_unit":
        raise bad("The emulator supports billing_scheme=per_unit only.", p("billing_scheme"))
    if "unit_amount" in data and "unit_amount_decimal" in data:
        raise bad("You may only specify one of unit_amount and unit_amount_decimal.", p("unit_amount"))
    if "unit_amount" in data:
        amount = Decimal(as_int(data["unit_amount"], p("unit_amount"), minimum=0))
    elif "unit_amount_decimal" in data:
        amount = money(data["unit_amount_decimal"], p("unit_amount_decimal"))
        if amount.as_tuple().exponent < -12:
            raise bad("unit_amount_decimal has at most 12 decimal places.", p("unit_amount_decimal"))
    else:
        raise bad(f"Missing required param: {p('unit_amount')}.", p("unit_amount"))
    recurring = data.get("recurring")
    if recurring is not None:
        if not isinstance(recurring, dict) or recurring.get("interval") not in ("day", "week", "month", "year"):
            raise bad("recurring[interval] must be one of day, week, month, year.", p("recurring[interval]"))
        usage_type = recurring.get("usage_type", "licensed")
        if usage_type not in ("licensed", "metered"):
            raise bad("recurring[usage_type] must be licensed or metered.", p("recurring[usage_type]"))
        meter = recurring.get("meter")
        if meter is not None and meter not in state.meters:
            raise missing("billing.meter", meter, param=p("recurring[meter]"))
        recurring = {"interval": recurring["interval"],
                     "interval_count": as_int(recurring.get("interval_count", 1), p("recurring[interval_count]"),
                                              minimum=1),
                     "usage_type": usage_type, "meter": meter, "aggregate_usage": None, "trial_period_days": None}
    lookup_key = data.get("lookup_key")
    if lookup_key:
        holder = next((pr for pr in state.prices.values() if pr["lookup_key"] == lookup_key), None)
        if holder is not None:
            if not as_bool(data.get("transfer_lookup_key", False)):
                raise StripeError(400, f"A price ({holder['id']}) already uses that lookup key.",
                                  code="lookup_key_exists", param="lookup_key")
            holder["lookup_key"] = None
    product = product_for(state, data, param or "price_data") if not inline or data.get("product_data") \
        or data.get("product") else None
    price_id = state.new_id("price_")
    normal = amount.normalize()
    price = {
        "id": price_id, "object": "price", "active": as_bool(data.get("active", True)) and not inline,
        "billing_scheme": "per_unit", "created": state.now(), "currency": data["currency"].lower(),
        "custom_unit_amount": None, "livemode": False, "lookup_key": lookup_key or None,
        "metadata": data.get("metadata") or {}, "nickname": data.get("nickname"), "product": product,
        "recurring": recurring, "tax_behavior": data.get("tax_behavior", "unspecified"), "tiers_mode": None,
        "transform_quantity": None, "type": "recurring" if recurring else "one_time",
        "unit_amount": int(amount) if amount == amount.to_integral_value() else None,
        "unit_amount_decimal": format(normal, "f"),
    }
    if recurring:
        # A localstripe Plan under the same id, so its subscriptions and invoices can use the price.
        ls_call(ls.Plan, id=price_id, product=product, currency=price["currency"], interval=recurring["interval"],
                interval_count=recurring["interval_count"], usage_type=recurring["usage_type"],
                amount=price["unit_amount"] or 0)
    price["_inline"] = inline
    state.prices[price_id] = price
    return price


def export_price(state: State, price: dict, expand: list[str] = ()) -> dict:
    out = {k: v for k, v in price.items() if not k.startswith("_")}
    if "product" in expand and out["product"]:
        product = bridge.get(ls.Product, out["product"])
        out["product"] = product._export() if product else out["product"]
    return out


def price_or_404(state: State, price_id: str, param: str = "price") -> dict:
    price = state.prices.get(price_id)
    if price is None:
        raise missing("price", price_id, param=param)
    return price


@routes.post("/v1/prices")
async def price_create(request):
    state, data = state_of(request), await params(request)
    unknown(data, PRICE_PARAMS)
    expand = expand_list(data)
    return ok(export_price(state, make_price(state, data), expand))


@routes.get("/v1/prices/{id}")
async def price_retrieve(request):
    state, data = state_of(request), await params(request)
    return ok(export_price(state, price_or_404(state, request.match_info["id"], "id"), expand_list(data)))


@routes.post("/v1/prices/{id}")
async def price_update(request):
    state, data = state_of(request), await params(request)
    price = price_or_404(state, request.match_info["id"], "id")
    expand = expand_list(data)
    unknown(data, {"active", "metadata", "nickname", "lookup_key", "transfer_lookup_key", "tax_behavior"})
    if data.get("lookup_key"):
        holder = next((pr for pr in state.prices.values() if pr["lookup_key"] == data["lookup_key"]), None)
        if holder is not None and holder is not price:
            if not as_bool(data.get("transfer_lookup_key", False)):
                raise StripeError(400, f"A price ({holder['id']}) already uses that lookup key.",
                                  code="lookup_key_exists", param="lookup_key")
            holder["lookup_key"] = None
        price["lookup_key"] = data["lookup_key"]
    if "active" in data:
        price["active"] = as_bool(data["active"])
    if "nickname" in data:
        price["nickname"] = data["nickname"] or None
    if isinstance(data.get("metadata"), dict):
        price["metadata"] = {k: v for k, v in {**price["metadata"], **data["metadata"]}.items() if v != ""}
    return ok(export_price(state, price, expand))


@routes.get("/v1/prices")
async def price_list(request):
    state, data = state_of(request), await params(request)
    expand = [e[len("data."):] for e in expand_list(data) if e.startswith("data.")]
    prices = [pr for pr in state.prices.values() if not pr["_inline"]]
    if "active" in data:
        prices = [pr for pr in prices if pr["active"] == as_bool(data["active"])]
    for key in ("product", "currency", "type"):
        if key in data:
            prices = [pr for pr in prices if pr[key] == data[key]]
    if "lookup_keys" in data:
        keys = data["lookup_keys"]
        keys = list(keys.values()) if isinstance(keys, dict) else keys if isinstance(keys, list) else [keys]
        prices = [pr for pr in prices if pr["lookup_key"] in keys]
    if isinstance(data.get("recurring"), dict):
        for key, value in data["recurring"].items():
            prices = [pr for pr in prices if pr["recurring"] and pr["recurring"].get(key) == value]
    prices = created_filter(prices, data.get("created"))
    result = page(prices, data, "/v1/prices")
    result["data"] = [export_price(state, pr, expand) for pr in result["data"]]
    return ok(result)


# --- meters and meter events ------------------------------------------------------------------------


@routes.post("/v1/billing/meters")
async def meter_create(request):
    state, data = state_of(request), await params(request)
    expand_list(data)
    unknown(data, {"display_name", "event_name", "default_aggregation", "customer_mapping", "value_settings",
                   "event_time_window"})
    for key in ("display_name", "event_name"):
        if not data.get(key):
            raise bad(f"Missing required param: {key}.", key)
    formula = (data.get("default_aggregation") or {}).get("formula")
    if formula not in ("sum", "count", "last"):
        raise bad("default_aggregation[formula] must be sum, count or last.", "default_aggregation[formula]")
    if any(m["event_name"] == data["event_name"] and m["status"] == "active" for m in state.meters.values()):
        raise StripeError(400, f"An active meter with event_name {data['event_name']} already exists.",
                          code="resource_already_exists", param="event_name")
    meter = {
        "id": state.new_id("mtr_"), "object": "billing.meter", "created": state.now(), "livemode": False,
        "display_name": data["display_name"], "event_name": data["event_name"], "status": "active",
        "default_aggregation": {"formula": formula},
        "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
        "value_settings": {"event_payload_key": "value"}, "event_time_window": None,
        "status_transitions": {"deactivated_at": None}, "updated": state.now(),
    }
    state.meters[meter["id"]] = meter
    return ok(meter)


@routes.get("/v1/billing/meters/{id}")
async def meter_retrieve(request):
    state = state_of(request)
    meter = state.meters.get(request.match_info["id"])
    if meter is None:
        raise missing("billing.meter", request.match_info["id"])
    return ok(meter)


@routes.get("/v1/billing/meters")
async def meter_list(request):
    state, data = state_of(request), await params(request)
    meters = list(state.meters.values())
    if "status" in data:
        meters = [m for m in meters if m["status"] == data["status"]]
    return ok(page(meters, data, "/v1/billing/meters"))


@routes.post("/v1/billing/meter_events")
async def meter_event_create(request):
    """Stripe enforces ``identifier`` uniqueness (a rolling 24 h at least): a second event with the
    same identifier is refused. Real Stripe's answer to a duplicate is not documented precisely; the
    emulator answers 400 ``resource_already_exists`` and records nothing, so a sender must treat that
    error on its own identifier as "already acknowledged"."""
    state, data = state_of(request), await params(request)
    expand_list(data)
    unknown(data, {"event_name", "payload", "identifier", "timestamp"})
    if not data.get("event_name"):
        raise bad("Missing required param: event_name.", "event_name")
    payload = data.get("payload")
    if not isinstance(payload, dict):
        raise bad("Missing required param: payload.", "payload")
    customer = payload.get("stripe_customer_id")
    if not customer:
        raise StripeError(400, "Meter event payload must contain stripe_customer_id.",
                          code="meter_event_no_customer_defined", param="payload[stripe_customer_id]")
    if bridge.get(ls.Customer, customer) is None:
        raise StripeError(400, f"No such customer: '{customer}'", code="meter_event_customer_not_found",
                          param="payload[stripe_customer_id]")
    raw_value = payload.get("value")
    try:
        value = int(str(raw_value))
    except (TypeError, ValueError):
        raise StripeError(400, f"Meter event value must be an integer: {raw_value!r}",
                          code="meter_event_invalid_value", param="payload[value]") from None
    identifier = data.get("identifier") or state.new_id("mev_")
    if len(identifier) > 100:
        raise bad("identifier is longer than 100 characters.", "identifier")
    if identifier in state.meter_events:
        raise StripeError(400, f"An event already exists with identifier {identifier}.",
                          code="resource_already_exists", param="identifier")
    now = state.now()
    timestamp = as_int(data.get("timestamp", now), "timestamp")
    if timestamp > now + 300 or timestamp < now - 35 * 86400:
        raise StripeError(400, "timestamp must be within the past 35 days and at most 5 minutes ahead.",
                          code="timestamp_too_far_in_past" if timestamp < now else "timestamp_in_future",
                          param="timestamp")
    event = {"object": "billing.meter_event", "created": now, "event_name": data["event_name"],
             "identifier": identifier, "livemode": False, "payload": {k: str(v) for k, v in payload.items()},
             "timestamp": timestamp}
    state.meter_events[identifier] = {**event, "_customer": customer, "_value": value, "_invoice": None}
    return ok(event)


@routes.get("/v1/billing/meters/{id}/event_summaries")
async def meter_event_summaries(request):
    """The meter's aggregated value for one customer over [start_time, end_time) (event
    timestamps; both aligned to minutes, as Stripe requires): one summary, or one per hour or
    day with ``value_grouping_window``. Stripe aggregates asynchronously, usually within
    minutes; the emulator's summary counts every accepted event at once."""
    state, data = state_of(request), await params(request)
    expand_list(data)
    unknown(data, {"customer", "start_time", "end_time", "value_grouping_window", "limit", "starting_after",
                   "ending_before"})
    meter = state.meters.get(request.match_info["id"])
    if meter is None:
        raise missing("billing.meter", request.match_info["id"])
    for key in ("customer", "start_time", "end_time"):
        if not data.get(key):
            raise bad(f"Missing required param: {key}.", key)
    start, end = as_int(data["start_time"], "start_time"), as_int(data["end_time"], "end_time")
    window = data.get("value_grouping_window")
    step = {None: None, "hour": 3600, "day": 86400}.get(window, 0)
    if step == 0:
        raise bad("value_grouping_window must be hour or day.", "value_grouping_window")
    for key, value in (("start_time", start), ("end_time", end)):
        if value % (step or 60):
            raise bad(f"{key} must be aligned with {window or 'minute'} boundaries.", key)
    if end <= start:
        raise bad("end_time must be after start_time.", "end_time")
    bounds = [(start, end)] if step is None else [(t, min(t + step, end)) for t in range(start, end, step)]
    events = [e for e in state.meter_events.values()
              if e["_customer"] == data["customer"] and e["event_name"] == meter["event_name"]]
    summaries = [{
        "id": f"mtrusg_{meter['id']}_{data['customer']}_{lo}", "object": "billing.meter_event_summary",
        # Stripe sends a JSON number; every value is a whole micro-unit, so an integer says it exactly.
        "aggregated_value": sum(e["_value"] for e in events if lo <= e["timestamp"] < hi),
        "start_time": lo, "end_time": hi, "livemode": False, "meter": meter["id"], "created": lo,
    } for lo, hi in bounds]
    return ok(page(summaries, data, f"/v1/billing/meters/{meter['id']}/event_summaries"))


def meter_totals(state: State) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = {}
    for event in state.meter_events.values():
        per = totals.setdefault(event["_customer"], {})
        per[event["event_name"]] = per.get(event["event_name"], 0) + event["_value"]
    return totals


# --- checkout sessions ---------------------------------------------------------------------------------

SESSION_PARAMS = {
    "mode", "line_items", "success_url", "cancel_url", "return_url", "customer", "customer_email",
    "customer_creation", "client_reference_id", "metadata", "payment_intent_data", "subscription_data",
    "payment_method_types", "currency", "expires_at", "allow_promotion_codes", "billing_address_collection",
    "locale", "submit_type", "ui_mode", "saved_payment_method_options", "invoice_creation", "consent_collection",
    "automatic_tax", "tax_id_collection", "customer_update", "payment_method_collection", "expand",
}


def session_items(state: State, data: dict, mode: str) -> list[dict]:
    raw = data.get("line_items")
    if not isinstance(raw, list) or not raw:
        raise bad("line_items is required in payment and subscription mode.", "line_items")
    items = []
    for index, entry in enumerate(raw):
        param = f"line_items[{index}]"
        if not isinstance(entry, dict):
            raise bad(f"Invalid {param}.", param)
        if entry.get("price"):
            price = price_or_404(state, entry["price"], f"{param}[price]")
            if not price["active"]:
                raise bad(f"The price {price['id']} is not active.", f"{param}[price]")
        elif isinstance(entry.get("price_data"), dict):
            price_data = dict(entry["price_data"])
            if mode == "payment" and price_data.get("recurring"):
                raise bad("You specified payment mode but passed a recurring price.", f"{param}[price_data]")
            price = make_price(state, price_data, param=f"{param}[price_data]", inline=True)
        else:
            raise bad(f"Missing required param: {param}[price].", f"{param}[price]")
        metered = bool(price["recurring"] and price["recurring"]["usage_type"] == "metered")
        if metered:
            if "quantity" in entry:
                raise bad("Quantity should not be specified where usage_type is `metered`.", f"{param}[quantity]")
            quantity = None
        else:
            quantity = as_int(entry.get("quantity", 1), f"{param}[quantity]", minimum=1)
        if mode == "payment" and price["recurring"]:
            raise bad("You specified `payment` mode but passed a recurring price.", f"{param}[price]")
        amount = 0 if metered else round_cents(Decimal(price["unit_amount_decimal"]) * quantity)
        items.append({
            "id": state.new_id("li_"), "object": "item", "amount_discount": 0, "amount_subtotal": amount,
            "amount_tax": 0, "amount_total": amount, "currency": price["currency"],
            "description": _product_name(price), "price": price["id"], "quantity": quantity,
        })
    currencies = {item["currency"] for item in items}
    if len(currencies) > 1:
        raise bad("All line_items must share one currency.", "line_items")
    if mode == "subscription":
        recurring = [state.prices[item["price"]] for item in items if state.prices[item["price"]]["recurring"]]
        if not recurring:
            raise bad("You must provide at least one recurring price in `subscription` mode.", "line_items")
        licensed = [pr for pr in recurring if pr["recurring"]["usage_type"] == "licensed"]
        if len(licensed) != 1 or len(recurring) != len(items):
            raise StripeError(400, "The emulator supports subscriptions of exactly one licensed recurring price "
                              "plus any metered prices (localstripe holds one item per subscription).",
                              param="line_items")
    return items


def _product_name(price: dict) -> str | None:
    product = bridge.get(ls.Product, price["product"]) if price["product"] else None
    return product.name if product else None


@routes.post("/v1/checkout/sessions")
async def session_create(request):
    state, data = state_of(request), await params(request)
    expand = expand_list(data)
    unknown(data, SESSION_PARAMS)
    mode = data.get("mode")
    if mode not in ("payment", "subscription"):
        raise bad("mode must be payment or subscription (the emulator has no setup mode).", "mode")
    if not data.get("success_url"):
        raise bad("Missing required param: success_url.", "success_url")
    for key in ("success_url", "cancel_url"):
        if data.get(key) and not str(data[key]).startswith(("http://", "https://")):
            raise bad(f"Not a valid URL: {key}", key)
    customer = data.get("customer")
    if customer and bridge.get(ls.Customer, customer) is None:
        raise missing("customer", customer, param="customer")
    if customer and data.get("customer_email"):
        raise bad("You may only specify one of these parameters: customer, customer_email.", "customer_email")
    pi_data = data.get("payment_intent_data") or {}
    if mode == "subscription" and pi_data:
        raise bad("You can not pass `payment_intent_data` in `subscription` mode.", "payment_intent_data")
    sfu = pi_data.get("setup_future_usage")
    if sfu not in (None, "on_session", "off_session"):
        raise bad("payment_intent_data[setup_future_usage] must be on_session or off_session.",
                  "payment_intent_data[setup_future_usage]")
    items = session_items(state, data, mode)
    total = sum(item["amount_total"] for item in items)
    if mode == "payment" and total <= 0:
        raise bad("The Checkout Session's total amount due must be greater than 0.", "line_items")
    now = state.now()
    expires_at = as_int(data.get("expires_at", now + 86400), "expires_at")
    if not now + 1800 <= expires_at <= now + 86400:
        raise bad("expires_at must be between 30 minutes and 24 hours from now.", "expires_at")
    session_id = state.new_id("cs_test_")
    session = {
        "id": session_id, "object": "checkout.session", "mode": mode, "status": "open",
        "payment_status": "unpaid", "amount_subtotal": total, "amount_total": total,
        "currency": items[0]["currency"], "created": now, "expires_at": expires_at, "livemode": False,
        "customer": customer, "customer_email": data.get("customer_email"),
        "customer_details": None, "customer_creation": data.get("customer_creation"),
        "client_reference_id": data.get("client_reference_id"), "metadata": data.get("metadata") or {},
        "success_url": data["success_url"], "cancel_url": data.get("cancel_url"),
        "url": f"{state.public_url}/pay/{session_id}", "payment_intent": None, "subscription": None,
        "invoice": None, "setup_intent": None, "payment_method_types": ["card"], "ui_mode": "hosted",
        "_payment_intent_data": pi_data, "_subscription_data": data.get("subscription_data") or {},
    }
    state.checkout_sessions[session_id] = session
    state.session_line_items[session_id] = items
    return ok(export_session(state, session, expand))


def export_session(state: State, session: dict, expand: list[str] = ()) -> dict:
    out = {k: v for k, v in session.items() if not k.startswith("_")}
    if "line_items" in expand:
        out["line_items"] = session_line_items_list(state, session["id"], {})
    for key, kind in (("payment_intent", ls.PaymentIntent), ("subscription", ls.Subscription),
                      ("customer", ls.Customer)):
        if key in expand and out[key]:
            obj = bridge.get(kind, out[key])
            out[key] = bridge.compat(obj._export(), [e[len(key) + 1:] for e in expand if e.startswith(key + ".")])
    return out


def session_line_items_list(state: State, session_id: str, data: dict) -> dict:
    items = [{**item, "price": export_price(state, state.prices[item["price"]])}
             for item in state.session_line_items[session_id]]
    result = page([{**i, "created": 0} for i in items], data, f"/v1/checkout/sessions/{session_id}/line_items")
    result["data"] = [{k: v for k, v in i.items() if k != "created"} for i in result["data"]]
    return result


def session_or_404(state: State, session_id: str) -> dict:
    session = state.checkout_sessions.get(session_id)
    if session is None:
        raise missing("checkout.session", session_id, param="session")
    if session["status"] == "open" and session["expires_at"] <= state.now():
        expire_session(state, session)
    return session


def expire_session(state: State, session: dict) -> None:
    session["status"] = "expired"
    state.hub.publish("checkout.session.expired", export_session(state, session))


@routes.get("/v1/checkout/sessions/{id}")
async def session_retrieve(request):
    state, data = state_of(request), await params(request)
    return ok(export_session(state, session_or_404(state, request.match_info["id"]), expand_list(data)))


@routes.get("/v1/checkout/sessions/{id}/line_items")
async def session_line_items(request):
    state, data = state_of(request), await params(request)
    session = session_or_404(state, request.match_info["id"])
    return ok(session_line_items_list(state, session["id"], data))


@routes.post("/v1/checkout/sessions/{id}/expire")
async def session_expire(request):
    state, data = state_of(request), await params(request)
    session = session_or_404(state, request.match_info["id"])
    if session["status"] != "open":
        raise StripeError(400, f"Only Checkout Sessions with a status in [\"open\"] can be expired. This "
                          f"Checkout Session has a status of \"{session['status']}\".", code="session_not_open")
    expire_session(state, session)
    return ok(export_session(state, session, expand_list(data)))


@routes.get("/v1/checkout/sessions")
async def session_list(request):
    state, data = state_of(request), await params(request)
    expand = [e[len("data."):] for e in expand_list(data) if e.startswith("data.")]
    sessions = [session_or_404(state, sid) for sid in list(state.checkout_sessions)]
    for key in ("status", "customer", "payment_intent", "subscription", "client_reference_id"):
        if key in data:
            sessions = [s for s in sessions if s[key] == data[key]]
    sessions = created_filter(sessions, data.get("created"))
    result = page(sessions, data, "/v1/checkout/sessions")
    result["data"] = [export_session(state, s, expand) for s in result["data"]]
    return ok(result)


# --- billing portal sessions ----------------------------------------------------------------------------


@routes.post("/v1/billing_portal/sessions")
async def portal_create(request):
    state, data = state_of(request), await params(request)
    expand_list(data)
    unknown(data, {"customer", "return_url", "configuration", "flow_data", "locale", "on_behalf_of"})
    customer = data.get("customer")
    if not customer:
        raise bad("Missing required param: customer.", "customer")
    if bridge.get(ls.Customer, customer) is None:
        raise missing("customer", customer, param="customer")
    session_id = state.new_id("bps_")
    session = {"id": session_id, "object": "billing_portal.session", "configuration": "bpc_emulator",
               "created": state.now(), "customer": customer, "flow": None, "livemode": False,
               "locale": data.get("locale"), "on_behalf_of": None, "return_url": data.get("return_url"),
               "url": f"{state.public_url}/portal/{session_id}"}
    state.portal_sessions[session_id] = session
    return ok(session)


# --- refunds (localstripe's, checked and announced) ----------------------------------------------------------


def charge_of(data: dict) -> ls.Charge:
    if data.get("charge"):
        charge = bridge.get(ls.Charge, data["charge"])
        if charge is None:
            raise missing("charge", data["charge"], param="charge")
        return charge
    if data.get("payment_intent"):
        pi = bridge.get(ls.PaymentIntent, data["payment_intent"])
        if pi is None:
            raise missing("payment_intent", data["payment_intent"], param="payment_intent")
        if pi.latest_charge is None or pi.status != "succeeded":
            raise StripeError(400, f"This PaymentIntent ({pi.id}) does not have a successful charge to refund.",
                              code="charge_not_refundable")
        return pi.latest_charge
    raise bad("One of the following params should be provided for this request: payment_intent or charge.")


def charge_export(state: State, charge: ls.Charge) -> dict:
    return bridge.compat(charge._export())


@routes.post("/v1/refunds")
async def refund_create(request):
    state, data = state_of(request), await params(request)
    expand = expand_list(data)
    unknown(data, {"charge", "payment_intent", "amount", "metadata", "reason", "instructions_email"})
    charge = charge_of(data)
    if charge.status != "succeeded":
        raise StripeError(400, "Cannot refund a failed payment.", code="charge_not_refundable")
    if any(d["charge"] == charge.id and d["status"] != "won" for d in state.disputes.values()):
        raise StripeError(400, f"Charge {charge.id} has been charged back; cannot issue a refund.",
                          code="charge_disputed")
    remaining = charge.amount - charge.amount_refunded
    if remaining <= 0:
        raise StripeError(400, f"Charge {charge.id} has already been refunded.", code="charge_already_refunded")
    amount = as_int(data.get("amount", remaining), "amount", minimum=1)
    if amount > remaining:
        raise StripeError(400, f"Refund amount ({amount}) is greater than unrefunded amount on charge "
                          f"({remaining})", code="amount_too_large", param="amount")
    reason = data.get("reason")
    if reason not in (None, "duplicate", "fraudulent", "requested_by_customer"):
        raise bad("reason must be duplicate, fraudulent or requested_by_customer.", "reason")
    refund = ls_call(ls.Refund, charge=charge.id, amount=amount, metadata=data.get("metadata") or {})
    refund.payment_intent = charge.payment_intent
    refund.reason = reason
    exported = bridge.compat(refund._export(expand=expand))
    state.hub.publish("refund.created", exported)
    state.hub.publish("charge.refunded", charge_export(state, charge))
    return ok(exported)


# --- subscriptions: items by price ------------------------------------------------------------------------


def split_items(state: State, items: Any) -> tuple[list[dict], list[dict]]:
    if isinstance(items, dict):
        items = list(items.values())
    if not isinstance(items, list) or not items:
        raise bad("Missing required param: items.", "items")
    licensed, metered = [], []
    for index, item in enumerate(items):
        item = dict(item)
        price_id = item.pop("price", None) or item.get("plan")
        if not price_id:
            raise bad(f"Missing required param: items[{index}][price].", f"items[{index}][price]")
        price = price_or_404(state, price_id, f"items[{index}][price]")
        if not price["recurring"]:
            raise bad("The price specified is set to `type=one_time` but this field only accepts prices with "
                      "`type=recurring`.", f"items[{index}][price]")
        item["plan"] = price_id
        (metered if price["recurring"]["usage_type"] == "metered" else licensed).append(item)
    if len(licensed) != 1:
        raise StripeError(400, "The emulator supports subscriptions of exactly one licensed price plus any "
                          "metered prices.", param="items")
    return licensed, metered


def metered_items(state: State, subscription_id: str, metered: list[dict]) -> list[dict]:
    return [{"id": state.new_id("si_"), "object": "subscription_item", "price": item["plan"],
             "subscription": subscription_id, "metadata": item.get("metadata") or {}, "created": state.now()}
            for item in metered]


def subscription_export(state: State, sub: ls.Subscription, expand: list[str] = ()) -> dict:
    return bridge.compat(sub._export(expand=list(expand) or None), list(expand))


SUBSCRIPTION_CREATE_IGNORED = {"payment_settings", "collection_method", "off_session", "automatic_tax",
                               "description", "default_payment_method"}


@routes.post("/v1/subscriptions")
async def subscription_create(request):
    state, data = state_of(request), await params(request)
    expand = expand_list(data)
    licensed, metered = split_items(state, data.pop("items", None))
    default_pm = data.pop("default_payment_method", None)
    for key in SUBSCRIPTION_CREATE_IGNORED:
        data.pop(key, None)
    if default_pm and data.get("customer"):
        ls_call(ls.Customer._api_update, data["customer"], invoice_settings={"default_payment_method": default_pm})
    sub = ls_call(ls.Subscription._api_create, items=licensed, **data)
    state.subscription_extras[sub.id] = metered_items(state, sub.id, metered)
    return ok(subscription_export(state, sub, expand))


@routes.post("/v1/subscriptions/{id}")
async def subscription_update(request):
    state, data = state_of(request), await params(request)
    expand = expand_list(data)
    sub_id = request.match_info["id"]
    if bridge.get(ls.Subscription, sub_id) is None:
        raise missing("subscription", sub_id)
    previous = subscription_export(state, bridge.get(ls.Subscription, sub_id))
    if "items" in data:
        items = data.pop("items")
        items = list(items.values()) if isinstance(items, dict) else items
        extras = {e["id"]: e for e in state.subscription_extras.get(sub_id, [])}
        new_licensed, new_metered = None, []
        for index, item in enumerate(items):
            param = f"items[{index}][price]"
            if as_bool(item.get("deleted", False)):
                if item.get("id") not in extras:
                    raise bad("The emulator cannot delete a subscription's licensed item.", param)
                extras.pop(item["id"])
                continue
            price_id = item.get("price")
            if item.get("id") in extras:
                if price_id:
                    price = price_or_404(state, price_id, param)
                    if not price["recurring"] or price["recurring"]["usage_type"] != "metered":
                        raise bad("A metered item can only change to another metered price.", param)
                    extras[item["id"]]["price"] = price_id
                continue
            price = price_or_404(state, price_id or bridge.get(ls.Subscription, sub_id).plan.id, param)
            if not price["recurring"]:
                raise bad("This field only accepts prices with `type=recurring`.", param)
            if price["recurring"]["usage_type"] == "metered":
                new_metered.append({"plan": price["id"], "metadata": item.get("metadata")})
            elif new_licensed is not None:
                raise bad("The emulator supports one licensed item per subscription.", param)
            else:
                new_licensed = {"plan": price["id"], "quantity": item.get("quantity", 1)}
        if new_licensed:
            ls_call(ls.Subscription._api_update, sub_id, items=[new_licensed])
        state.subscription_extras[sub_id] = list(extras.values()) + metered_items(state, sub_id, new_metered)
    if data:
        for key in ("proration_behavior", "payment_behavior", "collection_method"):
            data.pop(key, None)
        if data:
            ls_call(ls.Subscription._api_update, sub_id, **data)
    sub = bridge.get(ls.Subscription, sub_id)
    exported = subscription_export(state, sub, expand)
    changed = {k: previous[k] for k in ("cancel_at_period_end", "status", "items", "metadata")
               if previous.get(k) != exported.get(k)}
    state.hub.publish("customer.subscription.updated", exported, previous_attributes=changed)
    return ok(exported)


def subscription_compat(state: State):
    def hook(obj: dict, expand: list[str]) -> None:
        period = state.subscription_periods.get(obj["id"])
        if period:
            obj["current_period_start"], obj["current_period_end"] = period
        items = obj.get("items")
        if isinstance(items, dict):
            for item in items.get("data", []):
                plan = item.get("plan")
                plan_id = plan["id"] if isinstance(plan, dict) else plan
                if plan_id in state.prices:
                    item["price"] = export_price(state, state.prices[plan_id])
                item["current_period_start"] = obj.get("current_period_start")
                item["current_period_end"] = obj.get("current_period_end")
                item["subscription"] = obj["id"]
            known = {i["id"] for i in items.get("data", [])}
            for extra in state.subscription_extras.get(obj["id"], []):
                if extra["id"] not in known:
                    items.setdefault("data", []).append({
                        **extra, "price": export_price(state, state.prices[extra["price"]]),
                        "plan": None, "current_period_start": obj.get("current_period_start"),
                        "current_period_end": obj.get("current_period_end")})
            items["total_count"] = len(items.get("data", []))
    return hook


def invoice_compat(state: State):
    def hook(obj: dict, expand: list[str]) -> None:
        lines = obj.get("lines")
        if isinstance(lines, dict):
            for line in lines.get("data", []):
                plan = line.get("plan")
                plan_id = plan["id"] if isinstance(plan, dict) else plan
                if plan_id in state.prices:
                    line["price"] = export_price(state, state.prices[plan_id])
                    line["pricing"] = {"type": "price_details", "price_details": {
                        "price": plan_id, "product": state.prices[plan_id]["product"]}}
        if obj.get("subscription") and not obj.get("parent"):
            obj["parent"] = {"type": "subscription_details",
                             "subscription_details": {"subscription": obj["subscription"]}}
        obj.setdefault("paid", obj.get("status") == "paid")
        if obj.get("billing_reason") is None and obj.get("subscription"):
            # localstripe invoices a subscription only when it starts (or changes plan).
            obj["billing_reason"] = "subscription_create"
    return hook


def charge_compat(state: State):
    def hook(obj: dict, expand: list[str]) -> None:
        disputes = [d for d in state.disputes.values() if d["charge"] == obj.get("id")]
        obj["disputed"] = bool(disputes)
        obj["dispute"] = disputes[-1]["id"] if disputes else None
    return hook


def payment_intent_compat(state: State):
    def hook(obj: dict, expand: list[str]) -> None:
        if obj.get("id") in state.processing_payment_intents:
            obj["status"] = "processing"
    return hook


def install_compat(state: State) -> None:
    bridge.compat_hooks.clear()
    bridge.compat_hooks.update({
        "subscription": [subscription_compat(state)],
        "invoice": [invoice_compat(state)],
        "charge": [charge_compat(state)],
        "payment_intent": [payment_intent_compat(state)],
    })


@routes.get("/v1/payment_intents")
async def payment_intent_list(request):
    """localstripe lists payment intents without filters; Stripe filters by customer and created."""
    data = await params(request)
    expand = [e[len("data."):] for e in expand_list(data) if e.startswith("data.")]
    intents = [pi._export() for pi in bridge.objects(ls.PaymentIntent)]
    if "customer" in data:
        intents = [pi for pi in intents if pi["customer"] == data["customer"]]
    result = page(created_filter(intents, data.get("created")), data, "/v1/payment_intents")
    result["data"] = [bridge.compat(pi, expand) for pi in result["data"]]
    return ok(result)


# --- invoices: localstripe's and the emulator's renewals -------------------------------------------------------


@routes.get("/v1/invoices/{id}")
async def invoice_retrieve(request):
    state, data = state_of(request), await params(request)
    invoice_id = request.match_info["id"]
    if invoice_id in state.invoices:
        return ok(state.invoices[invoice_id])
    invoice = bridge.get(ls.Invoice, invoice_id)
    if invoice is None:
        raise missing("invoice", invoice_id)
    expand = expand_list(data)
    return ok(bridge.compat(ls_call(invoice._export, expand=expand or None), expand))


@routes.get("/v1/invoices")
async def invoice_list(request):
    state, data = state_of(request), await params(request)
    expand_list(data)
    invoices = [bridge.compat(i._export()) for i in bridge.objects(ls.Invoice)] + list(state.invoices.values())
    for key in ("customer", "subscription", "status"):
        if key in data:
            invoices = [i for i in invoices if i.get(key) == data[key]]
    invoices = created_filter(invoices, data.get("created"))
    return ok(page(invoices, data, "/v1/invoices"))


# --- disputes ----------------------------------------------------------------------------------------------------


def dispute_or_404(state: State, dispute_id: str) -> dict:
    dispute = state.disputes.get(dispute_id)
    if dispute is None:
        raise missing("dispute", dispute_id)
    return dispute


@routes.get("/v1/disputes/{id}")
async def dispute_retrieve(request):
    return ok(dispute_or_404(state_of(request), request.match_info["id"]))


@routes.get("/v1/disputes")
async def dispute_list(request):
    state, data = state_of(request), await params(request)
    disputes = list(state.disputes.values())
    for key in ("charge", "payment_intent"):
        if key in data:
            disputes = [d for d in disputes if d[key] == data[key]]
    return ok(page(created_filter(disputes, data.get("created")), data, "/v1/disputes"))


@routes.post("/v1/disputes/{id}")
async def dispute_update(request):
    state, data = state_of(request), await params(request)
    dispute = dispute_or_404(state, request.match_info["id"])
    if isinstance(data.get("metadata"), dict):
        dispute["metadata"].update(data["metadata"])
    if isinstance(data.get("evidence"), dict):
        dispute["evidence"].update(data["evidence"])
    state.hub.publish("charge.dispute.updated", dispute)
    return ok(dispute)


@routes.post("/v1/disputes/{id}/close")
async def dispute_accept(request):
    """The merchant accepts the dispute: it is lost."""
    from billing.stripe_emulator.admin import close_dispute

    state = state_of(request)
    dispute = dispute_or_404(state, request.match_info["id"])
    await close_dispute(state, dispute, "lost", wait=False)
    return ok(dispute)


# --- balance transactions, balance, payouts ----------------------------------------------------------------------------


def all_balance_transactions(state: State) -> list[dict]:
    found = [bt._export() for bt in bridge.objects(ls.BalanceTransaction)]
    return found + list(state.balance_transactions.values())


def source_object(state: State, source_id: str) -> dict | str:
    for prefix, kind in (("ch_", ls.Charge), ("re_", ls.Refund)):
        if source_id.startswith(prefix) and (obj := bridge.get(kind, source_id)):
            return bridge.compat(obj._export())
    if source_id in state.disputes:
        return state.disputes[source_id]
    if source_id in state.payouts:
        return state.payouts[source_id]
    return source_id


def export_bt(state: State, bt: dict, expand: list[str]) -> dict:
    bt = dict(bt)
    if "source" in expand and bt.get("source"):
        bt["source"] = source_object(state, bt["source"])
    return bt


@routes.get("/v1/balance_transactions/{id}")
async def bt_retrieve(request):
    state, data = state_of(request), await params(request)
    bt = next((b for b in all_balance_transactions(state) if b["id"] == request.match_info["id"]), None)
    if bt is None:
        raise missing("balance_transaction", request.match_info["id"])
    return ok(export_bt(state, bt, expand_list(data)))


@routes.get("/v1/balance_transactions")
async def bt_list(request):
    state, data = state_of(request), await params(request)
    expand = [e[len("data."):] for e in expand_list(data) if e.startswith("data.")]
    bts = all_balance_transactions(state)
    for key in ("type", "source", "currency", "payout"):
        if key in data:
            bts = [b for b in bts if b.get(key) == data[key]]
    bts = created_filter(bts, data.get("created"))
    result = page(bts, data, "/v1/balance_transactions")
    result["data"] = [export_bt(state, b, expand) for b in result["data"]]
    return ok(result)


@routes.get("/v1/balance")
async def balance(request):
    state = state_of(request)
    totals: dict[str, int] = {}
    for bt in all_balance_transactions(state):
        totals[bt["currency"]] = totals.get(bt["currency"], 0) + bt["net"]
    return ok({"object": "balance", "livemode": False,
               "available": [{"amount": v, "currency": c, "source_types": {"card": v}} for c, v in totals.items()],
               "pending": [{"amount": 0, "currency": c, "source_types": {"card": 0}} for c in totals]})


def new_bt(state: State, *, amount: int, fee: int, currency: str, type_: str, category: str, source: str,
           description: str, payout: str | None = None) -> dict:
    now = state.now()
    bt = {"id": state.new_id("txn_"), "object": "balance_transaction", "amount": amount, "available_on": now,
          "created": now, "currency": currency, "description": description, "exchange_rate": None, "fee": fee,
          "fee_details": bridge.fee_details(fee, currency, "Dispute fee" if category == "dispute" else
                                            "Stripe processing fees"),
          "livemode": False, "net": amount - fee, "reporting_category": category, "source": source,
          "status": "available", "type": type_, "payout": payout}
    state.balance_transactions[bt["id"]] = bt
    return bt


def make_payout(state: State, *, amount: int, currency: str, automatic: bool, metadata: dict,
                description: str | None) -> dict:
    now = state.now()
    payout_id = state.new_id("po_")
    bt = new_bt(state, amount=-amount, fee=0, currency=currency, type_="payout", category="payout",
                source=payout_id, description=description or "STRIPE PAYOUT", payout=payout_id)
    payout = {"id": payout_id, "object": "payout", "amount": amount, "arrival_date": now, "automatic": automatic,
              "balance_transaction": bt["id"], "created": now, "currency": currency, "description": description,
              "destination": "ba_emulator", "failure_balance_transaction": None, "failure_code": None,
              "failure_message": None, "livemode": False, "metadata": metadata, "method": "standard",
              "original_payout": None, "reversed_by": None, "source_type": "card", "statement_descriptor": None,
              "status": "paid", "type": "bank_account"}
    state.payouts[payout_id] = payout
    return payout


@routes.post("/v1/payouts")
async def payout_create(request):
    state, data = state_of(request), await params(request)
    expand_list(data)
    unknown(data, {"amount", "currency", "metadata", "description", "method", "statement_descriptor",
                   "source_type", "destination"})
    amount = as_int(data.get("amount"), "amount", minimum=1)
    currency = str(data.get("currency") or "").lower()
    if not currency:
        raise bad("Missing required param: currency.", "currency")
    available = sum(b["net"] for b in all_balance_transactions(state) if b["currency"] == currency)
    if amount > available:
        raise StripeError(400, "You have insufficient funds in your Stripe account for this transfer.",
                          code="balance_insufficient")
    payout = make_payout(state, amount=amount, currency=currency, automatic=False,
                         metadata=data.get("metadata") or {}, description=data.get("description"))
    state.hub.publish("payout.created", payout)
    state.hub.publish("payout.paid", payout)
    return ok(payout)


@routes.get("/v1/payouts/{id}")
async def payout_retrieve(request):
    state = state_of(request)
    payout = state.payouts.get(request.match_info["id"])
    if payout is None:
        raise missing("payout", request.match_info["id"])
    return ok(payout)


@routes.get("/v1/payouts")
async def payout_list(request):
    state, data = state_of(request), await params(request)
    payouts = list(state.payouts.values())
    if "status" in data:
        payouts = [p for p in payouts if p["status"] == data["status"]]
    return ok(page(created_filter(payouts, data.get("created")), data, "/v1/payouts"))


# --- events (the hub's) -------------------------------------------------------------------------------------------


@routes.get("/v1/events/{id}")
async def event_retrieve(request):
    state = state_of(request)
    event = state.hub.events.get(request.match_info["id"])
    if event is None:
        raise missing("event", request.match_info["id"])
    return ok(event)


@routes.get("/v1/events")
async def event_list(request):
    state, data = state_of(request), await params(request)
    events = list(state.hub.events.values())
    if "type" in data:
        wanted = data["type"]
        if wanted.endswith(".*"):
            events = [e for e in events if e["type"].startswith(wanted[:-1])]
        else:
            events = [e for e in events if e["type"] == wanted]
    if "types" in data:
        types = data["types"]
        types = list(types.values()) if isinstance(types, dict) else types
        events = [e for e in events if e["type"] in types]
    return ok(page(created_filter(events, data.get("created")), data, "/v1/events"))
