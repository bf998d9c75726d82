"""Backoff with full jitter, Retry-After, and which failures are worth another try."""
from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
MAX_RETRY_AFTER = 60.0  # never sleep longer than this on a server's say-so


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, min(seconds, MAX_RETRY_AFTER))


@dataclass
class RetryPolicy:
    """``max_retries`` retries after the first try; the n-th waits a uniform random time in
    ``[0, min(max_delay, initial_delay * 2**n)]`` (full jitter), or what Retry-After says."""

    max_retries: int = 2
    initial_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return retry_after
        return random.uniform(0, min(self.max_delay, self.initial_delay * (2 ** attempt)))


def status_retryable(status: int, code: str | None = None) -> bool:
    if status == 409:  # only "the same Idempotency-Key is still in progress", not a node-key mismatch
        return code == "idempotency_in_progress"
    return status in RETRY_STATUSES


def method_retryable(method: str, paid: bool) -> bool:
    """Safe to send again after the server may have acted: reads, deletes, and paid calls (they carry
    an Idempotency-Key, so the server answers a repeat from the first one's outcome)."""
    return paid or method.upper() in ("GET", "HEAD", "OPTIONS", "DELETE")
