"""Public identifiers: a type prefix and 128 random bits in base62 (``org_…``, ``req_…``)."""
from __future__ import annotations

import secrets
import string

ALPHABET = string.digits + string.ascii_letters


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
