"""The gateway's own sealed-request key pair: X25519 (standard-tier envelopes are addressed to
it) and Ed25519 (it signs standard-tier receipts).

From ``GATEWAY_SEALED_KEY_FILE`` (64 hex characters: a 32-byte seed) when set, else derived
deterministically from ``DATA_MASTER_KEY`` with HKDF, so every process of a deployment has the
same pair without another secret to distribute.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

from . import format as fmt


@dataclass(frozen=True)
class GatewayKeys:
    encryption: x25519.X25519PrivateKey
    signing: ed25519.Ed25519PrivateKey

    @property
    def encryption_key(self) -> str:
        return fmt.public_b64(self.encryption)

    @property
    def signing_key(self) -> str:
        return fmt.public_b64(self.signing)

    @property
    def key_id(self) -> str:
        digest = hashlib.sha256(fmt.raw_public(self.encryption) + fmt.raw_public(self.signing)).hexdigest()
        return f"gwkey_{digest[:16]}"

    def public(self) -> dict[str, str]:
        return {"key_id": self.key_id, "encryption_key": self.encryption_key, "signing_key": self.signing_key}


def _seed() -> bytes:
    path = getattr(settings, "GATEWAY_SEALED_KEY_FILE", "") or os.environ.get("GATEWAY_SEALED_KEY_FILE", "")
    if path:
        seed = bytes.fromhex(Path(path).read_text().strip())
        if len(seed) != 32:
            raise ValueError("GATEWAY_SEALED_KEY_FILE must hold 64 hex characters (a 32-byte seed)")
        return seed
    return settings.DATA_MASTER_KEY.encode()


def _derive(seed: bytes, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"pi-sealed/gateway/{purpose}".encode()).derive(seed)


@lru_cache(maxsize=1)
def gateway_keys() -> GatewayKeys:
    seed = _seed()
    return GatewayKeys(
        encryption=x25519.X25519PrivateKey.from_private_bytes(_derive(seed, "x25519")),
        signing=ed25519.Ed25519PrivateKey.from_private_bytes(_derive(seed, "ed25519")),
    )
