"""Envelope encryption of bodies at rest: master key → project key (KEK) → data key per blob.

* A **data key** (DEK) is 32 fresh random bytes per blob; the blob is AES-256-GCM
  with a 96-bit random nonce under it. The DEK is stored only wrapped (AES-GCM)
  by the project's KEK.
* A project's **KEK** (gateway.ProjectKey, versioned) is stored only wrapped by a
  **master key** version, through a :class:`MasterKeyProvider` (the environment,
  a file, or a KMS behind the same four methods).
* Associated data binds every layer to where it belongs: a KEK to its
  organization, project and versions; a DEK and its blob to organization,
  project, owner row and kind (plus the KEK version for the DEK). A blob copied to
  another row or tenant fails to open.

Providers (``settings.MASTER_KEY_PROVIDER``):

* ``env`` (default): ``MASTER_KEYS="2:<base64 32 bytes>,1:<base64>"``; the highest
  version is current, older ones keep opening until ``rotate_keys --master``
  re-wrapped everything. Unset (development, tests): one version, derived from
  ``DATA_MASTER_KEY``.
* ``file``: ``MASTER_KEY_FILE``, one ``version:base64`` per line (same rule).
* a dotted path to a :class:`MasterKeyProvider` subclass, e.g. one calling a KMS
  (see :class:`KmsMasterKeyProvider`).
"""
from __future__ import annotations

import base64
import importlib
import os
from abc import ABC, abstractmethod
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

NONCE = 12
KEY = 32


class DecryptionError(Exception):
    """A blob, key or wrapped key failed to open (wrong row, tenant, key, or tampering)."""


class KeyUnavailable(DecryptionError):
    """The key a blob needs is gone: a destroyed (crypto-shredded) project key, or a
    master key version no longer configured."""


def _hkdf(material: bytes, info: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY, salt=None, info=info.encode()).derive(material)


def aead_seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """nonce ‖ ciphertext+tag."""
    nonce = os.urandom(NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def aead_open(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(sealed[:NONCE], sealed[NONCE:], aad)
    except (InvalidTag, ValueError) as exc:
        raise DecryptionError("authentication failed") from exc


# --- master keys ------------------------------------------------------------------


class MasterKeyProvider(ABC):
    """Wraps and unwraps project keys under versioned master keys."""

    @property
    @abstractmethod
    def current_version(self) -> int: ...

    @abstractmethod
    def versions(self) -> list[int]:
        """Every version that can still unwrap, newest first."""

    @abstractmethod
    def wrap(self, version: int, plaintext: bytes, aad: bytes) -> bytes: ...

    @abstractmethod
    def unwrap(self, version: int, wrapped: bytes, aad: bytes) -> bytes:
        """Raises KeyUnavailable for an unknown version, DecryptionError on a bad blob."""

    @abstractmethod
    def derive(self, version: int, info: str) -> bytes:
        """A 32-byte key for ``info`` (e.g. sealing one stream's frames in Redis)."""


class LocalKeyring(MasterKeyProvider):
    """Master keys held in this process (from the environment or a file)."""

    def __init__(self, keys: dict[int, bytes]):
        if not keys:
            raise ImproperlyConfigured("no master key configured")
        for version, key in keys.items():
            if version < 1 or len(key) != KEY:
                raise ImproperlyConfigured(f"master key version {version} must be ≥ 1 and {KEY} bytes")
        self._keys = dict(keys)

    @property
    def current_version(self) -> int:
        return max(self._keys)

    def versions(self) -> list[int]:
        return sorted(self._keys, reverse=True)

    def _key(self, version: int) -> bytes:
        try:
            return self._keys[version]
        except KeyError:
            raise KeyUnavailable(f"master key version {version} is not configured") from None

    def wrap(self, version: int, plaintext: bytes, aad: bytes) -> bytes:
        return aead_seal(self._key(version), plaintext, aad)

    def unwrap(self, version: int, wrapped: bytes, aad: bytes) -> bytes:
        return aead_open(self._key(version), wrapped, aad)

    def derive(self, version: int, info: str) -> bytes:
        return _hkdf(self._key(version), f"derive:{info}")


class KmsMasterKeyProvider(MasterKeyProvider):
    """The shape of a KMS-backed provider: the master keys never leave the KMS.

    Subclass it with a client that has ``encrypt(key_id, plaintext, aad) -> bytes``
    and ``decrypt(key_id, ciphertext, aad) -> bytes`` (AWS KMS, GCP KMS and Vault
    transit all do, with encryption context / AAD), and name the subclass in
    ``MASTER_KEY_PROVIDER``. ``key_ids`` maps our versions to the KMS's key ids.
    ``derive`` (used for short-lived stream sealing keys) unwraps, once per
    process, a derivation secret the KMS wrapped for each version.
    """

    def __init__(self, client, key_ids: dict[int, str], wrapped_derivation_secrets: dict[int, bytes]):
        self.client, self.key_ids, self._wrapped_secrets = client, dict(key_ids), dict(wrapped_derivation_secrets)
        self._secrets: dict[int, bytes] = {}

    @property
    def current_version(self) -> int:
        return max(self.key_ids)

    def versions(self) -> list[int]:
        return sorted(self.key_ids, reverse=True)

    def _key_id(self, version: int) -> str:
        try:
            return self.key_ids[version]
        except KeyError:
            raise KeyUnavailable(f"master key version {version} is not configured") from None

    def wrap(self, version: int, plaintext: bytes, aad: bytes) -> bytes:
        return self.client.encrypt(self._key_id(version), plaintext, aad)

    def unwrap(self, version: int, wrapped: bytes, aad: bytes) -> bytes:
        try:
            return self.client.decrypt(self._key_id(version), wrapped, aad)
        except KeyUnavailable:
            raise
        except Exception as exc:
            raise DecryptionError(f"KMS refused to unwrap: {exc}") from exc

    def derive(self, version: int, info: str) -> bytes:
        secret = self._secrets.get(version)
        if secret is None:
            secret = self.unwrap(version, self._wrapped_secrets[version], b"derivation-secret")
            self._secrets[version] = secret
        return _hkdf(secret, f"derive:{info}")


def parse_keyring(text: str) -> dict[int, bytes]:
    """``"2:<b64>,1:<b64>"`` (commas or newlines) → {2: key, 1: key}."""
    keys: dict[int, bytes] = {}
    for item in text.replace("\n", ",").split(","):
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        version, sep, encoded = item.partition(":")
        if not sep or not version.strip().isdigit():
            raise ImproperlyConfigured("master keys are 'version:base64', e.g. MASTER_KEYS='2:…,1:…'")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except ValueError:
            raise ImproperlyConfigured(f"master key version {version} is not valid base64") from None
        keys[int(version)] = key
    return keys


def dev_master_key() -> bytes:
    """The development/test master key (version 1): derived from DATA_MASTER_KEY."""
    return _hkdf(settings.DATA_MASTER_KEY.encode(), "envelope-master:v1")


@lru_cache(maxsize=8)
def _provider(kind: str, keys: str, path: str, data_master_key: str) -> MasterKeyProvider:
    if kind in ("", "env"):
        return LocalKeyring(parse_keyring(keys) if keys.strip() else {1: dev_master_key()})
    if kind == "file":
        if not path:
            raise ImproperlyConfigured("MASTER_KEY_PROVIDER=file needs MASTER_KEY_FILE")
        with open(path) as fh:
            return LocalKeyring(parse_keyring(fh.read()))
    module, _, name = kind.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return cls()


def master() -> MasterKeyProvider:
    """The configured provider (re-read when the settings change, e.g. in tests)."""
    return _provider(
        getattr(settings, "MASTER_KEY_PROVIDER", "env") or "env",
        getattr(settings, "MASTER_KEYS", "") or "",
        getattr(settings, "MASTER_KEY_FILE", "") or "",
        settings.DATA_MASTER_KEY,
    )


def reset() -> None:
    _provider.cache_clear()


# --- associated data ---------------------------------------------------------------


def kek_aad(*, organization_id: int, project_id: int, version: int, master_version: int) -> bytes:
    return f"kek|org={organization_id}|project={project_id}|v={version}|master={master_version}".encode()


def blob_aad(*, organization_id: int, project_id: int, owner: str, ref: str, kind: str) -> bytes:
    return f"blob|org={organization_id}|project={project_id}|{owner}={ref}|kind={kind}".encode()


def dek_aad(blob: bytes, kek_version: int) -> bytes:
    return blob + f"|kek={kek_version}".encode()


# --- one blob ------------------------------------------------------------------------


def encrypt(kek: bytes, kek_version: int, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes, bytes]:
    """(wrapped data key, nonce, ciphertext) of ``plaintext`` under a fresh data key."""
    dek = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(NONCE)
    ciphertext = AESGCM(dek).encrypt(nonce, plaintext, aad)
    return aead_seal(kek, dek, dek_aad(aad, kek_version)), nonce, ciphertext


def decrypt(kek: bytes, kek_version: int, wrapped_dek: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    dek = aead_open(kek, wrapped_dek, dek_aad(aad, kek_version))
    try:
        return AESGCM(dek).decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError) as exc:
        raise DecryptionError("authentication failed") from exc


def rewrap_dek(old_kek: bytes, old_version: int, new_kek: bytes, new_version: int, wrapped_dek: bytes, aad: bytes) -> bytes:
    dek = aead_open(old_kek, wrapped_dek, dek_aad(aad, old_version))
    return aead_seal(new_kek, dek, dek_aad(aad, new_version))


# --- compact form for a single text column (Web Chat) -----------------------------

_PREFIX = "env1:"


def pack(kek_version: int, wrapped_dek: bytes, nonce: bytes, ciphertext: bytes) -> str:
    raw = kek_version.to_bytes(4, "big") + len(wrapped_dek).to_bytes(2, "big") + wrapped_dek + nonce + ciphertext
    return _PREFIX + base64.b64encode(raw).decode()


def is_packed(stored: str) -> bool:
    return stored.startswith(_PREFIX)


def unpack(stored: str) -> tuple[int, bytes, bytes, bytes]:
    raw = base64.b64decode(stored[len(_PREFIX):])
    version = int.from_bytes(raw[:4], "big")
    n = int.from_bytes(raw[4:6], "big")
    wrapped = raw[6 : 6 + n]
    nonce = raw[6 + n : 6 + n + NONCE]
    return version, wrapped, nonce, raw[6 + n + NONCE :]
