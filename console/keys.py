"""API key format, checksum and keyed hash.

``sk_live_<body>`` / ``pk_live_<body>`` (and node operators' tokens, ``nt_live_<body>``,
which are never API keys: :func:`parse` refuses them, :func:`parse_node_token` reads them); body = 32 base62 characters of
randomness (190 bits) followed by a 6-character base62 CRC32 of everything
before it, so typos and truncated keys are refused without a database lookup.
The first 12 body characters are the lookup prefix stored in clear; the whole
key is stored only as HMAC-SHA256 under ``settings.API_KEY_PEPPER``.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings

from config.ids import ALPHABET, b62

SECRET = "secret"
PUBLISHABLE = "publishable"
NODE_TOKEN = "node_token"
PREFIXES = {SECRET: "sk_live_", PUBLISHABLE: "pk_live_"}
# What a key may call (ApiKey.scopes; an empty list: everything). The gateway names one
# scope per endpoint (gateway.context.ApiRequest.authenticate).
CHAT, EMBEDDINGS, IMAGES, AGENTS, MODELS = "chat", "embeddings", "images", "agents", "models"
SCOPES: dict[str, str] = {
    CHAT: "Chat, completions, responses, messages",
    EMBEDDINGS: "Embeddings",
    IMAGES: "Image generation",
    AGENTS: "Agent runs",
    MODELS: "Read models and nodes",
}
NODE_TOKEN_PREFIX = "nt_live_"
_KIND_BY_PREFIX = {v: k for k, v in PREFIXES.items()}
RANDOM_CHARS = 32
CHECKSUM_CHARS = 6
LOOKUP_CHARS = 12
KEY_LENGTH = len("sk_live_") + RANDOM_CHARS + CHECKSUM_CHARS


@dataclass(frozen=True, slots=True)
class NewKey:
    plaintext: str
    lookup: str
    hash: str
    last4: str


@dataclass(frozen=True, slots=True)
class ParsedKey:
    kind: str
    lookup: str


def _checksum(text: str) -> str:
    return b62(zlib.crc32(text.encode()), CHECKSUM_CHARS)


@lru_cache(maxsize=1)
def _pepper() -> bytes:
    return settings.API_KEY_PEPPER.encode()


def hash_key(plaintext: str) -> str:
    return hmac.new(_pepper(), plaintext.encode(), hashlib.sha256).hexdigest()


def generate(kind: str) -> NewKey:
    prefix = NODE_TOKEN_PREFIX if kind == NODE_TOKEN else PREFIXES[kind]
    body = "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_CHARS))
    plaintext = f"{prefix}{body}{_checksum(prefix + body)}"
    return NewKey(plaintext=plaintext, lookup=body[:LOOKUP_CHARS], hash=hash_key(plaintext), last4=plaintext[-4:])


def parse(raw: str) -> ParsedKey | None:
    """The key's kind and lookup prefix, or None if it cannot be one of our API keys."""
    return _parse(raw, _KIND_BY_PREFIX)


def parse_node_token(raw: str) -> ParsedKey | None:
    """A node token's lookup prefix, or None if it cannot be one of ours."""
    return _parse(raw, {NODE_TOKEN_PREFIX: NODE_TOKEN})


def _parse(raw: str, kinds: dict[str, str]) -> ParsedKey | None:
    if len(raw) != KEY_LENGTH:
        return None
    kind = kinds.get(raw[:8])
    if kind is None:
        return None
    body, checksum = raw[8:-CHECKSUM_CHARS], raw[-CHECKSUM_CHARS:]
    if not hmac.compare_digest(checksum, _checksum(raw[:-CHECKSUM_CHARS])):
        return None
    if any(c not in ALPHABET for c in body):
        return None
    return ParsedKey(kind=kind, lookup=body[:LOOKUP_CHARS])


def matches(plaintext: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(plaintext), stored_hash)
