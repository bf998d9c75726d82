"""Authenticated encryption of small blobs at rest (AES-256-GCM).

Keys are derived per purpose from ``DATA_MASTER_KEY`` with HKDF; associated data
binds a blob to its tenant and row, so a blob copied elsewhere fails to open.
"""
from __future__ import annotations

import os
from functools import lru_cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

VERSION = b"\x01"


@lru_cache(maxsize=16)
def _aead(purpose: str) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"blob:{purpose}".encode()).derive(
        settings.DATA_MASTER_KEY.encode()
    )
    return AESGCM(key)


def seal(purpose: str, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(12)
    return VERSION + nonce + _aead(purpose).encrypt(nonce, plaintext, aad)


def open_sealed(purpose: str, blob: bytes, aad: bytes) -> bytes:
    if blob[:1] != VERSION:
        raise ValueError("unknown blob version")
    return _aead(purpose).decrypt(blob[1:13], blob[13:], aad)
