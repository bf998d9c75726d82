"""Public identifiers: a type prefix and 128 random bits in base62 (``org_…``, ``req_…``)."""
from __future__ import annotations

import re
import secrets
import string

ALPHABET = string.digits + string.ascii_letters
_PLAUSIBLE = re.compile(r"[A-Za-z0-9_]{1,128}")


def b62(n: int, width: int) -> str:
    out = []
    while n:
        n, r = divmod(n, 62)
        out.append(ALPHABET[r])
    return "".join(reversed(out)).rjust(width, "0")


def random_b62(bits: int) -> str:
    width = -(-bits * 1000 // 5954)  # ceil(bits / log2(62))
    return b62(secrets.randbits(bits), width)


def new_id(prefix: str) -> str:
    return f"{prefix}_{random_b62(128)}"


def plausible_id(value: str) -> bool:
    """Could ``value`` be one of our ids? Anything else names nothing, and must not reach a query:
    a NUL byte makes PostgreSQL refuse it (a 500 instead of a 404)."""
    return _PLAUSIBLE.fullmatch(value) is not None
