"""What the front serves itself (localstripe has none of it), plus the helpers its handlers share:
Stripe's error envelope, list pagination, form parsing."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from billing.stripe_emulator import bridge
from billing.stripe_emulator.hub import Hub, new_id


class StripeError(Exception):
    """Answered as Stripe's error envelope; the stripe library maps it to its exception classes."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type_

    def response(self) -> web.Response:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code:
            error["code"] = self.code
        if self.param:
            error["param"] = self.param
        return web.json_response({"error": error}, status=self.status)


def missing(kind: str, object_id: str, param: str = "id") -> StripeError:
    return StripeError(404, f"No such {kind}: '{object_id}'", code="resource_missing", param=param)


def bad(message: str, param: str | None = None) -> StripeError:
    return StripeError(400, message, code="parameter_invalid" if param else None, param=param)


async def params(request: web.Request) -> dict:
    """Form-encoded (what stripe-python sends) or JSON body, merged with the query string."""
    data: dict = {}
    if request.body_exists:
        raw = await request.read()
        if raw:
            if request.content_type == "application/json":
                data = json.loads(raw)
            else:
                data = bridge.unflatten_data(await request.post())
    if request.query:
        data = {**bridge.unflatten_data(request.query), **data}
    return data


def expand_list(data: dict) -> list[str]:
    value = data.pop("expand", None) or []
    return list(value.values()) if isinstance(value, dict) else list(value)


def as_int(value: Any, param: str, *, minimum: int | None = None) -> int:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise bad(f"Invalid integer: {value}", param) from None
    if minimum is not None and number < minimum:
        raise bad(f"{param} must be at least {minimum}", param)
    return number


def as_bool(value: Any) -> bool:
    return str(value).lower() in ("true", "1", "yes", "on")


def created_filter(objs: list[dict], created: Any, key: str = "created") -> list[dict]:
    if created is None:
        return objs
    if not isinstance(created, dict):
        value = as_int(created, "created")
        return [o for o in objs if o[key] == value]
    ops = {"gt": lambda a, b: a > b, "gte": lambda a, b: a >= b, "lt": lambda a, b: a < b,
           "lte": lambda a, b: a <= b}
    for op, bound in created.items():
        if op not in ops:
            raise bad(f"Invalid created filter: {op}", "created")
        objs = [o for o in objs if ops[op](o[key], as_int(bound, f"created[{op}]"))]
    return objs


def page(objs: list[dict], data: dict, url: str) -> dict:
    """A Stripe list, newest first, with limit/starting_after/ending_before."""
    objs = sorted(objs, key=lambda o: o.get("created", 0), reverse=True)
    limit = as_int(data.get("limit", 10), "limit", minimum=1)
    if limit > 100:
        raise bad("limit must be at most 100", "limit")
    ids = [o["id"] for o in objs]
    if data.get("starting_after"):
        start = ids.index(data["starting_after"]) + 1 if data["starting_after"] in ids else len(ids)
        window = objs[start:start + limit]
        more = len(objs) > start + limit
    elif data.get("ending_before"):
        end = ids.index(data["ending_before"]) if data["ending_before"] in ids else 0
        window = objs[max(0, end - limit):end]
        more = end - limit > 0
    else:
        window, more = objs[:limit], len(objs) > limit
    return {"object": "list", "data": window, "has_more": more, "url": url}


@dataclass
class State:
    """The front's own objects, by id (dicts shaped as the API returns them)."""

    hub: Hub
    public_url: str
    api_key: str | None = None
    prices: dict[str, dict] = field(default_factory=dict)
    meters: dict[str, dict] = field(default_factory=dict)
    checkout_sessions: dict[str, dict] = field(default_factory=dict)
    session_line_items: dict[str, list[dict]] = field(default_factory=dict)
    portal_sessions: dict[str, dict] = field(default_factory=dict)
    meter_events: dict[str, dict] = field(default_factory=dict)  # by identifier
    disputes: dict[str, dict] = field(default_factory=dict)
    payouts: dict[str, dict] = field(default_factory=dict)
    balance_transactions: dict[str, dict] = field(default_factory=dict)  # disputes' and payouts'
    invoices: dict[str, dict] = field(default_factory=dict)  # renewals made by /_emulator
    # subscription id -> its metered items (localstripe holds one licensed item per subscription)
    subscription_extras: dict[str, list[dict]] = field(default_factory=dict)
    # subscription id -> (current_period_start, current_period_end) after emulated renewals
    subscription_periods: dict[str, tuple[int, int]] = field(default_factory=dict)
    processing_payment_intents: set[str] = field(default_factory=set)
    idempotency: dict[tuple[str, str], tuple[str, int, bytes, str]] = field(default_factory=dict)

    def now(self) -> int:
        return int(time.time())

    def new_id(self, prefix: str) -> str:
        return new_id(prefix)
