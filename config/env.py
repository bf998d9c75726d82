"""Read settings from the environment through one helper that fails loudly.

Every value is parsed here, so a typo in production (``DEBUG=ture``,
``GATEWAY_MAX_BODY_BYTES=4MB``) stops the process at start-up instead of
silently falling back to a default.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import urlparse

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None, *, required: bool = False) -> str | None:
    value = os.environ.get(name)
    if value is None or value == "":
        if required:
            raise ImproperlyConfigured(f"{name} must be set")
        return default
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip().replace("_", ""))
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise ImproperlyConfigured(f"{name}={value} is above the maximum {maximum}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_url(name: str, default: str | None, *, schemes: tuple[str, ...]) -> str | None:
    value = env_str(name, default)
    if value is None:
        return None
    parsed = urlparse(value)
    if parsed.scheme not in schemes:
        raise ImproperlyConfigured(f"{name}={value!r}: scheme must be one of {', '.join(schemes)}")
    return value


def env_secret(name: str, *, state_dir: Path, production: bool, min_length: int = 32) -> str:
    """A secret from the environment; in development, one generated once and kept on disk.

    Production refuses to start without it rather than run with a guessable default.
    """
    value = env_str(name)
    if value is not None:
        if len(value) < min_length:
            raise ImproperlyConfigured(f"{name} must be at least {min_length} characters")
        return value
    if production:
        raise ImproperlyConfigured(f"{name} must be set in production")
    path = state_dir / f"{name.lower()}.secret"
    if path.exists():
        return path.read_text().strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    path.write_text(value)
    path.chmod(0o600)
    return value
