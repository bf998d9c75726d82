"""Authenticate an API key at the edge and resolve its tenant once.

Key records live in an in-process cache keyed by the key's lookup prefix.
``config.bus`` drops entries on revoke/rotate/settings change in every process;
when no invalidation listener is connected an entry is trusted for at most
1 s, which bounds how long a revoked key can still be used.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import orjson

from config import asyncdb, bus
from console import keys
from console.services import KEY_TOPIC, PROJECT_TOPIC

from .errors import GatewayError

MAX_ENTRIES = 100_000


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: int
    key_public_id: str
    kind: str
    hash: str
    active: bool
    expires_at: float | None
    project_id: int
    project_public_id: str
    organization_id: int
    allowed_origins: frozenset[str]
    idempotency_required: bool
    rpm_limit: int | None  # the project's limits (None: the defaults)
    tpm_limit: int | None
    wallet_id: int
    usage_wallet_id: int
    currency: str
    stream_resume_seconds: int
    key_rpm_limit: int | None = None  # the key's own limits, on top of the project's (None: none)
    key_tpm_limit: int | None = None
    project_spend_cap: int | None = None  # monthly, micro-units (None: uncapped)
    key_spend_cap: int | None = None
    allow_non_confidential: bool = False  # the project's: may nodes without attestation serve it?
    region_preference: str = ""  # the project's preferred node region ("" = none)
    # The organization's plan (billing.Plan; all None/"" without one: no plan limits). Its
    # limits cap every project's own; plan_models, when set, are the only models it may use.
    plan_name: str = ""
    plan_rpm_limit: int | None = None
    plan_tpm_limit: int | None = None
    plan_models: frozenset[str] | None = None
    # The most one request may reserve, micro-units (None: no per-request cap). Set only on
    # records built in-process (a Web Chat turn's relay: console.relay), never from the table.
    request_spend_cap: int | None = None
    scopes: frozenset[str] | None = None  # what the key may call (console.keys.SCOPES); None: everything
    # The project's body retention (console.Project.store_bodies): "never", "days" or "forever".
    store_bodies: str = "never"
    body_retention_days: int = 30

    @property
    def publishable(self) -> bool:
        return self.kind == keys.PUBLISHABLE

    def may_use(self, model: str) -> bool:
        return self.plan_models is None or model in self.plan_models


_KEY_SQL = """
SELECT k.id, k.public_id, k.kind, k.hash, k.status, k.expires_at,
       p.id, p.public_id, p.organization_id, p.allowed_origins, p.idempotency_required, p.rpm_limit, p.tpm_limit,
       cw.id, uw.id, cw.currency, p.stream_resume_seconds,
       k.rpm_limit, k.tpm_limit, p.monthly_spend_cap, k.monthly_spend_cap,
       p.allow_non_confidential, p.region_preference,
       pl.name, pl.rpm_limit, pl.tpm_limit, pl.allowed_models, k.scopes,
       p.store_bodies, p.body_retention_days
FROM console_apikey k
JOIN console_project p ON p.id = k.project_id
JOIN billing_billingaccount a ON a.organization_id = p.organization_id
JOIN billing_wallet cw ON cw.account_id = a.id AND cw.kind = 'customer' AND cw.currency = 'usd'
JOIN billing_wallet uw ON uw.account_id = a.id AND uw.kind = 'usage' AND uw.currency = cw.currency
LEFT JOIN billing_plan pl ON pl.id = a.plan_id
WHERE k.lookup = %(lookup)s
"""


def _json_list(value) -> list:
    if isinstance(value, (str, bytes)):
        value = orjson.loads(value)
    return list(value or ())


def _record(row: tuple) -> KeyRecord:
    expires_at = asyncdb.as_datetime(row[5])
    origins = _json_list(row[9])
    plan_models = _json_list(row[26])  # [] (or no plan): every model
    scopes = _json_list(row[27])  # []: every scope
    return KeyRecord(
        key_id=row[0],
        key_public_id=row[1],
        kind=row[2],
        hash=row[3],
        active=row[4] == "active",
        expires_at=expires_at.timestamp() if expires_at else None,
        project_id=row[6],
        project_public_id=row[7],
        organization_id=row[8],
        allowed_origins=frozenset(origins),
        idempotency_required=bool(row[10]),
        rpm_limit=row[11],
        tpm_limit=row[12],
        wallet_id=row[13],
        usage_wallet_id=row[14],
        currency=row[15],
        stream_resume_seconds=row[16],
        key_rpm_limit=row[17],
        key_tpm_limit=row[18],
        project_spend_cap=row[19],
        key_spend_cap=row[20],
        allow_non_confidential=bool(row[21]),
        region_preference=row[22] or "",
        plan_name=row[23] or "",
        plan_rpm_limit=row[24],
        plan_tpm_limit=row[25],
        plan_models=frozenset(plan_models) if plan_models else None,
        scopes=frozenset(scopes) if scopes else None,
        store_bodies=row[28],
        body_retention_days=row[29],
    )


class KeyCache:
    def __init__(self) -> None:
        self._entries: dict[str, tuple[KeyRecord | None, float]] = {}
        self._loading: dict[str, asyncio.Future] = {}
        self.generation = 0  # bumped by every invalidation: "did anything change since?"

    def drop(self, lookup: str | None) -> None:
        self.generation += 1
        if lookup is None:
            self._entries.clear()
        else:
            self._entries.pop(lookup, None)

    def drop_project(self, project_id: str | None) -> None:
        self.generation += 1
        if project_id is None:
            self._entries.clear()
            return
        pid = int(project_id)
        for lookup, (record, _) in list(self._entries.items()):
            if record is not None and record.project_id == pid:
                self._entries.pop(lookup, None)

    async def get(self, lookup: str) -> KeyRecord | None:
        entry = self._entries.get(lookup)
        if entry is not None and time.monotonic() - entry[1] < bus.max_age():
            return entry[0]
        # One load per prefix at a time; concurrent requests share it.
        pending = self._loading.get(lookup)
        if pending is not None:
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._loading[lookup] = future
        try:
            loaded_at = time.monotonic()
            row = await asyncdb.fetch_one(_KEY_SQL, {"lookup": lookup})
            record = _record(row) if row else None
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[lookup] = (record, loaded_at)
            future.set_result(record)
            return record
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._loading[lookup]


cache = KeyCache()
bus.on(KEY_TOPIC, cache.drop)
bus.on(PROJECT_TOPIC, cache.drop_project)


def presented_key(headers) -> str | None:
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return auth.strip()  # reported as invalid below
    return headers.get("x-api-key") or None


async def authenticate(headers) -> KeyRecord:
    raw = presented_key(headers)
    if raw is None:
        raise GatewayError(
            "unauthenticated",
            "No API key provided. Send it as 'Authorization: Bearer sk_live_…' (or the 'x-api-key' header).",
        )
    parsed = keys.parse(raw)
    if parsed is None:
        raise GatewayError("invalid_api_key", "The API key is malformed.")
    try:
        record = await cache.get(parsed.lookup)
    except asyncdb.DatabaseUnavailable:
        raise GatewayError("service_unavailable", "The key store is unreachable; try again shortly.") from None
    if record is None or record.kind not in keys.PREFIXES or not keys.matches(raw, record.hash):
        # (a system key, such as a project's Web Chat key, never authenticates over HTTP)
        raise GatewayError("invalid_api_key", "The API key is not valid.")
    if not record.active:
        raise GatewayError("invalid_api_key", "The API key has been revoked.")
    if record.expires_at is not None and time.time() >= record.expires_at:
        raise GatewayError("invalid_api_key", "The API key has expired.")
    return record


def check_origin(record: KeyRecord, headers) -> None:
    """A publishable key works only from the project's allowed browser origins."""
    if not record.publishable:
        return
    origin = headers.get("origin")
    if origin is None or origin not in record.allowed_origins:
        raise GatewayError(
            "origin_not_allowed",
            f"Origin {origin or '(none)'} is not allowed for this publishable key; "
            "add it to the project's allowed origins.",
        )
