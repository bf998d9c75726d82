"""Rate limits: requests and tokens per minute, per project and optionally per
key, as token buckets.

A request passes through every bucket that applies to it: the project's
requests and tokens buckets (its limits or the defaults, lowered to its
organization's plan's limits where those are lower) and, if the key has
limits of its own, the key's. Production checks all of them and, only if all
pass, consumes from all of them in one Lua script: one Redis round trip, atomic,
so the limits hold across any number of server processes. The embedded default
runs the same arithmetic in process. Token admission charges the request's
worst case (prompt upper bound + output cap) to every token bucket; ``refund``
gives each of them back the unused part once the real usage is known.
If Redis is unreachable the request is refused (fail closed).
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings

from config import redisconn

from .errors import GatewayError

if TYPE_CHECKING:
    from .auth import KeyRecord

WINDOW_MS = 60_000
REQUESTS, TOKENS = "requests", "tokens"
PROJECT, KEY = "project", "key"
PLAN = "plan"  # the project's bucket, held to the plan's limit (lower than the project's own)

# KEYS: the buckets; ARGV: limit and need per bucket. A bucket's level refills
# continuously at limit per minute up to limit. All levels are read first; they
# are consumed only if every bucket has what it needs (a negative need is a
# refund and always applies). Returns {ok, level...} with levels as strings
# (Redis would truncate Lua numbers to integers).
_LUA = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local levels, ok = {}, 1
for i, key in ipairs(KEYS) do
  local limit, need = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local h = redis.call('HMGET', key, 'v', 't')
  local v, t = tonumber(h[1]), tonumber(h[2])
  local level = limit
  if v ~= nil then level = math.min(limit, v + (now - t) * limit / 60000) end
  levels[i] = level
  if need > 0 and level < need then ok = 0 end
end
if ok == 1 then
  for i, key in ipairs(KEYS) do
    local limit, need = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
    levels[i] = math.min(limit, levels[i] - need)
    redis.call('HSET', key, 'v', tostring(levels[i]), 't', now)
    redis.call('PEXPIRE', key, 120000)
  end
end
local out = {ok}
for i = 1, #levels do out[i + 1] = tostring(levels[i]) end
return out
"""


@dataclass(frozen=True, slots=True)
class Bucket:
    scope: str  # PROJECT or KEY
    kind: str  # REQUESTS or TOKENS
    limit: int  # per minute
    left: float  # after this request if it was admitted, before it if not
    need: int  # what this request asked of the bucket

    @property
    def short(self) -> bool:
        return self.left < self.need

    def ms_until(self, level: float) -> int:
        return 0 if self.left >= level else math.ceil((level - self.left) * WINDOW_MS / self.limit)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    buckets: tuple[Bucket, ...]
    cost: int  # tokens charged to every token bucket (what refund may give back)

    def binding(self, kind: str) -> Bucket:
        """The bucket of ``kind`` with the least left: the one the client runs into first."""
        return min((b for b in self.buckets if b.kind == kind), key=lambda b: (b.left, b.limit))

    @property
    def rpm(self) -> int:
        return self.binding(REQUESTS).limit

    @property
    def tpm(self) -> int:
        return self.binding(TOKENS).limit

    @property
    def requests_left(self) -> float:
        return self.binding(REQUESTS).left

    @property
    def tokens_left(self) -> float:
        return self.binding(TOKENS).left

    @property
    def retry_after_ms(self) -> int:
        return max(b.ms_until(b.need) for b in self.buckets)

    def headers(self) -> dict[str, str]:
        out = {}
        for kind in (REQUESTS, TOKENS):
            bucket = self.binding(kind)
            out[f"x-ratelimit-limit-{kind}"] = str(bucket.limit)
            out[f"x-ratelimit-remaining-{kind}"] = str(max(0, int(bucket.left)))
            out[f"x-ratelimit-reset-{kind}"] = f"{bucket.ms_until(bucket.limit)}ms"
        return out

    def refusal(self) -> GatewayError:
        retry_ms = self.retry_after_ms
        short = [b for b in self.buckets if b.short]
        what = "; ".join(_described(b) for b in short)
        return GatewayError(
            "rate_limited",
            f"Rate limit reached ({what}); retry in {retry_ms} ms.",
            headers={**self.headers(), "retry-after": str(max(1, math.ceil(retry_ms / 1000)))},
        )


def _described(bucket: Bucket) -> str:
    if bucket.scope == PLAN:
        return f"your plan's {bucket.limit} {bucket.kind}/min for each project"
    return f"this {'API key' if bucket.scope == KEY else 'project'}'s {bucket.limit} {bucket.kind}/min"


class _LocalBuckets:
    """The Lua script's arithmetic, for the embedded default (one process)."""

    def __init__(self) -> None:
        self._levels: dict[str, tuple[float, float]] = {}

    def take(self, buckets: Sequence[tuple[str, int, int]]) -> tuple[bool, list[float]]:
        now = time.monotonic() * 1000
        levels = []
        for key, limit, _ in buckets:
            value, at = self._levels.get(key, (limit, now))
            levels.append(min(limit, value + (now - at) * limit / WINDOW_MS))
        ok = all(need <= 0 or level >= need for (_, _, need), level in zip(buckets, levels))
        if ok:
            levels = [min(limit, level - need) for (_, limit, need), level in zip(buckets, levels)]
            for (key, _, _), level in zip(buckets, levels):
                self._levels[key] = (level, now)
        return ok, levels


_local = _LocalBuckets()
_script = None


async def _take(buckets: Sequence[tuple[str, int, int]]) -> tuple[bool, list[float]]:
    """Check and consume (redis key, limit per minute, need) buckets, all or none."""
    client = redisconn.get_async()
    if client is None:
        return _local.take(buckets)
    global _script
    if _script is None:
        _script = client.register_script(_LUA)
    try:
        ok, *levels = await _script(
            keys=[key for key, _, _ in buckets],
            args=[x for _, limit, need in buckets for x in (limit, need)],
            client=client,
        )
    except Exception as exc:  # fail closed: no limit check, no request
        raise GatewayError("service_unavailable", "Rate limiting is unavailable; try again shortly.") from exc
    return bool(ok), [float(level) for level in levels]


def limits_for(rpm_limit: int | None, tpm_limit: int | None) -> tuple[int, int]:
    """A project's limits: its own, or the defaults."""
    return rpm_limit or settings.GATEWAY_DEFAULT_RPM, tpm_limit or settings.GATEWAY_DEFAULT_TPM


def _capped(project_limit: int, plan_limit: int | None) -> tuple[str, int]:
    """The project's limit, or its plan's where that is lower: (scope to name, limit)."""
    if plan_limit and plan_limit < project_limit:
        return PLAN, plan_limit
    return PROJECT, project_limit


def _buckets(key: KeyRecord) -> list[tuple[str, str, str, int]]:
    """(scope, kind, redis key, limit) for every bucket that applies to ``key``'s requests."""
    rpm, tpm = limits_for(key.rpm_limit, key.tpm_limit)
    # getattr: a worker refunding tokens rebuilds the key from refund_scope, maybe an older one.
    rpm_scope, rpm = _capped(rpm, getattr(key, "plan_rpm_limit", None))
    tpm_scope, tpm = _capped(tpm, getattr(key, "plan_tpm_limit", None))
    out = [
        (rpm_scope, REQUESTS, redisconn.key("rl", key.project_id, "r"), rpm),
        (tpm_scope, TOKENS, redisconn.key("rl", key.project_id, "t"), tpm),
    ]
    if key.key_rpm_limit:
        out.append((KEY, REQUESTS, redisconn.key("rl", "key", key.key_id, "r"), key.key_rpm_limit))
    if key.key_tpm_limit:
        out.append((KEY, TOKENS, redisconn.key("rl", "key", key.key_id, "t"), key.key_tpm_limit))
    return out


async def admit(*, key: KeyRecord, tokens: int) -> Decision:
    """Take one request and ``tokens`` from every bucket of ``key``, or raise 429."""
    buckets = _buckets(key)
    # A request larger than a whole minute's budget waits for a full bucket.
    cost = min(tokens, *(limit for _, kind, _, limit in buckets if kind == TOKENS))
    needs = [1 if kind == REQUESTS else cost for _, kind, _, _ in buckets]
    ok, levels = await _take([(rkey, limit, need) for (_, _, rkey, limit), need in zip(buckets, needs)])
    decision = Decision(
        allowed=ok,
        buckets=tuple(
            Bucket(scope=scope, kind=kind, limit=limit, left=left, need=need)
            for (scope, kind, _, limit), left, need in zip(buckets, levels, needs)
        ),
        cost=cost,
    )
    if not ok:
        raise decision.refusal()
    return decision


async def refund(*, key: KeyRecord, tokens: int) -> None:
    """Give admitted tokens the request did not use back to every token bucket it was charged to."""
    if tokens <= 0:
        return
    await _take([(rkey, limit, -tokens) for _, kind, rkey, limit in _buckets(key) if kind == TOKENS])


def refund_scope(key: KeyRecord) -> dict[str, int | None]:
    """What ``refund`` needs of a key, for a worker that gives tokens back after the request."""
    return {"project_id": key.project_id, "rpm_limit": key.rpm_limit, "tpm_limit": key.tpm_limit,
            "key_id": key.key_id, "key_rpm_limit": key.key_rpm_limit, "key_tpm_limit": key.key_tpm_limit,
            "plan_rpm_limit": key.plan_rpm_limit, "plan_tpm_limit": key.plan_tpm_limit}
