"""Per-project rate limits: requests and tokens per minute, as token buckets.

Production checks and consumes both buckets in one Lua script (one Redis
round trip); the embedded default runs the same arithmetic in process. Token
admission charges the request's worst case (prompt upper bound + output cap);
``refund`` returns the unused part once the real usage is known.
If Redis is unreachable the request is refused (fail closed).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from django.conf import settings

from config import redisconn

from .errors import GatewayError

WINDOW_MS = 60_000

_LUA = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local function level(key, limit)
  local h = redis.call('HMGET', key, 'v', 't')
  local v, t = tonumber(h[1]), tonumber(h[2])
  if v == nil then return limit end
  return math.min(limit, v + (now - t) * limit / 60000)
end
local rpm, tpm, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local r, k = level(KEYS[1], rpm), level(KEYS[2], tpm)
local ok = 0
if cost < 0 then
  k = math.min(tpm, k - cost)
  redis.call('HSET', KEYS[2], 'v', tostring(k), 't', now)
  redis.call('PEXPIRE', KEYS[2], 120000)
  return {1, 0, 0}
end
if r >= 1 and k >= cost then
  ok = 1
  r = r - 1
  k = k - cost
  redis.call('HSET', KEYS[1], 'v', tostring(r), 't', now)
  redis.call('HSET', KEYS[2], 'v', tostring(k), 't', now)
  redis.call('PEXPIRE', KEYS[1], 120000)
  redis.call('PEXPIRE', KEYS[2], 120000)
end
return {ok, tostring(r), tostring(k)}
"""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rpm: int
    tpm: int
    requests_left: float
    tokens_left: float
    cost: int

    def _ms_until(self, have: float, need: float, limit: int) -> int:
        return 0 if have >= need else math.ceil((need - have) * WINDOW_MS / limit)

    @property
    def retry_after_ms(self) -> int:
        return max(self._ms_until(self.requests_left, 1, self.rpm), self._ms_until(self.tokens_left, self.cost, self.tpm))

    def headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.rpm),
            "x-ratelimit-remaining-requests": str(int(self.requests_left)),
            "x-ratelimit-reset-requests": f"{self._ms_until(self.requests_left, self.rpm, self.rpm)}ms",
            "x-ratelimit-limit-tokens": str(self.tpm),
            "x-ratelimit-remaining-tokens": str(int(self.tokens_left)),
            "x-ratelimit-reset-tokens": f"{self._ms_until(self.tokens_left, self.tpm, self.tpm)}ms",
        }


class _LocalBuckets:
    def __init__(self) -> None:
        self._levels: dict[str, tuple[float, float]] = {}

    def _level(self, key: str, limit: int, now: float) -> float:
        value, at = self._levels.get(key, (limit, now))
        return min(limit, value + (now - at) * limit / WINDOW_MS)

    def take(self, project_id: int, rpm: int, tpm: int, cost: int) -> tuple[bool, float, float]:
        now = time.monotonic() * 1000
        rk, tk = f"r{project_id}", f"t{project_id}"
        r, k = self._level(rk, rpm, now), self._level(tk, tpm, now)
        if cost < 0:
            self._levels[tk] = (min(tpm, k - cost), now)
            return True, r, k
        if r >= 1 and k >= cost:
            r, k = r - 1, k - cost
            self._levels[rk], self._levels[tk] = (r, now), (k, now)
            return True, r, k
        return False, r, k


_local = _LocalBuckets()
_script = None


async def _take(project_id: int, rpm: int, tpm: int, cost: int) -> tuple[bool, float, float]:
    client = redisconn.get_async()
    if client is None:
        return _local.take(project_id, rpm, tpm, cost)
    global _script
    if _script is None:
        _script = client.register_script(_LUA)
    try:
        ok, r, k = await _script(
            keys=[redisconn.key("rl", project_id, "r"), redisconn.key("rl", project_id, "t")],
            args=[rpm, tpm, cost],
            client=client,
        )
    except Exception as exc:  # fail closed: no limit check, no request
        raise GatewayError("service_unavailable", "Rate limiting is unavailable; try again shortly.") from exc
    return bool(ok), float(r), float(k)


def limits_for(rpm_limit: int | None, tpm_limit: int | None) -> tuple[int, int]:
    return rpm_limit or settings.GATEWAY_DEFAULT_RPM, tpm_limit or settings.GATEWAY_DEFAULT_TPM


async def admit(*, project_id: int, rpm_limit: int | None, tpm_limit: int | None, tokens: int) -> Decision:
    rpm, tpm = limits_for(rpm_limit, tpm_limit)
    cost = min(tokens, tpm)  # a request larger than a whole minute's budget waits for a full bucket
    ok, r, k = await _take(project_id, rpm, tpm, cost)
    decision = Decision(allowed=ok, rpm=rpm, tpm=tpm, requests_left=r, tokens_left=k, cost=cost)
    if not ok:
        retry_ms = decision.retry_after_ms
        raise GatewayError(
            "rate_limited",
            f"Rate limit reached for this project ({rpm} requests/min, {tpm} tokens/min); retry in {retry_ms} ms.",
            headers={**decision.headers(), "retry-after": str(max(1, math.ceil(retry_ms / 1000)))},
        )
    return decision


async def refund(*, project_id: int, rpm_limit: int | None, tpm_limit: int | None, tokens: int) -> None:
    """Give back admitted tokens the request did not use."""
    if tokens <= 0:
        return
    rpm, tpm = limits_for(rpm_limit, tpm_limit)
    await _take(project_id, rpm, tpm, -tokens)
