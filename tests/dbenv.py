"""Pick the test environment before Django reads its settings (loaded with ``-p``).

Tests run the production shape: PostgreSQL at 127.0.0.1:5432 and Redis at
127.0.0.1:6379 when they answer. Where no server exists the suite falls back to
SQLite and in-process caches, says so in the header, and skips the tests
marked ``postgres``/``redis`` (concurrency and cross-process behaviour that
SQLite or a single process cannot show).
"""
from __future__ import annotations

import hashlib
import os
import socket
import tempfile
from pathlib import Path

import pytest


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


HAVE_POSTGRES = "DATABASE_URL" in os.environ or _listening(5432)
HAVE_REDIS = "REDIS_URL" in os.environ or _listening(6379)

if HAVE_POSTGRES:
    os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/platform")
if HAVE_REDIS:
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("REDIS_PREFIX", f"pi-test-{os.getpid()}")
# One test database per checkout, so two checkouts on one machine never share it.
_checkout = hashlib.sha1(str(Path(__file__).resolve().parent.parent).encode()).hexdigest()[:8]
os.environ.setdefault("TEST_DATABASE_NAME", f"test_platform_{_checkout}")
os.environ.setdefault("APP_ENV", "test")
os.environ.setdefault("EMBEDDED_BEAT", "0")
os.environ.setdefault("LOCAL_NODE_ENABLED", "0")
os.environ.setdefault("STATE_DIR", tempfile.mkdtemp(prefix="pi-test-state-"))
# The test attestation root (made by tests/conftest.py::attestation_pki with manage.py attestation_ca);
# server processes inherit it, so every process trusts the same root.
os.environ.setdefault("ATTESTATION_TRUST_ROOTS", str(Path(os.environ["STATE_DIR"]) / "attestation" / "root.pem"))
HAVE_POSTGRES = os.environ.get("DATABASE_URL", "").startswith("postgres")
HAVE_REDIS = bool(os.environ.get("REDIS_URL"))


def pytest_configure(config):
    config.addinivalue_line("markers", "postgres: needs a real PostgreSQL server")
    config.addinivalue_line("markers", "redis: needs a real Redis server")


def pytest_report_header(config):
    lines = [
        f"database: {'PostgreSQL' if HAVE_POSTGRES else 'SQLite (NOTICE: no PostgreSQL at 127.0.0.1:5432)'}",
        f"redis: {'Redis' if HAVE_REDIS else 'in-process (NOTICE: no Redis at 127.0.0.1:6379)'}",
    ]
    return lines


def pytest_collection_modifyitems(config, items):
    missing = {"postgres": not HAVE_POSTGRES, "redis": not HAVE_REDIS}
    for item in items:
        for marker, absent in missing.items():
            if absent and item.get_closest_marker(marker):
                item.add_marker(pytest.mark.skip(reason=f"no {marker} server on this machine"))
