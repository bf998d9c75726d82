"""The sealed requests' other endpoints: the gateway's public keys and the receipts export."""
from __future__ import annotations

from typing import Any

import orjson

from config import asyncdb
from config.ids import plausible_id

from ..context import ApiRequest, json_response
from ..errors import GatewayError
from . import format as fmt
from .keys import gateway_keys

MAX_LIMIT = 100

_RECEIPTS_SQL = """
SELECT request_id, node_id, tier, signing_key, receipt, signature, verified, reason, input_tokens, output_tokens,
       cost, created_at
FROM gateway_usagereceipt
WHERE project_id = %(project)s {where}
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s
"""


async def public_key(req: ApiRequest):
    """``GET /pki/public_key``: the gateway's X25519 (standard-tier envelopes) and Ed25519 (its receipts) keys."""
    return json_response(req, orjson.dumps(gateway_keys().public()))


def receipt_object(row: tuple, currency: str) -> dict[str, Any]:
    created = asyncdb.as_datetime(row[11])
    return {
        "object": "usage_receipt",
        "request_id": row[0],
        "node_id": row[1],
        "tier": row[2],
        "signing_key": row[3],
        "receipt": fmt.b64(bytes(row[4])),
        "signature": fmt.b64(bytes(row[5])),
        "verified": bool(row[6]),
        "reason": row[7],
        "input_tokens": row[8],
        "output_tokens": row[9],
        "cost": row[10],
        "currency": currency,
        "created_at": int(created.timestamp()) if created else None,
    }


async def list_receipts(req: ApiRequest):
    """``GET /v1/receipts[?request_id=…][&limit=n]``: the project's sealed requests' usage receipts,
    newest first, each with the exact signed bytes, the signature, the key it was checked with and
    the amount settled from it."""
    key = await req.authenticate(publishable_ok=False, scope=None)
    params: dict[str, Any] = {"project": key.project_id}
    query = req.request.query_params
    where = ""
    if request_id := query.get("request_id"):
        where = "AND request_id = %(request_id)s"
        params["request_id"] = request_id[:128]
    raw_limit = query.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise GatewayError("invalid_request", f"'limit' must be an integer from 1 to {MAX_LIMIT}.", param="limit")
    params["limit"] = int(raw_limit)
    if request_id and not plausible_id(request_id):  # names no receipt
        return json_response(req, orjson.dumps({"object": "list", "data": []}))
    try:
        (result,) = await asyncdb.run(asyncdb.Stmt(_RECEIPTS_SQL.format(where=where), params, fetch=True))
    except asyncdb.DatabaseUnavailable:
        raise GatewayError("service_unavailable", "The receipt store is unreachable; try again shortly.") from None
    data = [receipt_object(row, key.currency) for row in result.rows]
    return json_response(req, orjson.dumps({"object": "list", "data": data}))
