"""Private Redis and PostgreSQL instances the fault tests may stop and restart.

The shared servers (PostgreSQL 5432, Redis 6379) are never touched: a test that
restarts a store starts its own on a free port, points the platform processes
under test at it, and stops it at the end.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _as_postgres(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a PostgreSQL tool; initdb and the server refuse to run as root."""
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs)


def wait_until(check, *, timeout: float, step: float = 0.05, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(step)


@dataclass
class PrivateRedis:
    port: int
    directory: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_until(self.ping, timeout=10, message=f"redis on {self.port}")

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.2).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """A hard stop (SIGKILL): whatever it held is gone, as after a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def client(self):
        import redis

        return redis.Redis(port=self.port)


@pytest.fixture
def private_redis():
    redis = PrivateRedis(port=free_port(), directory=Path(tempfile.mkdtemp(prefix="pi-redis-")))
    redis.start()
    yield redis
    redis.stop()
    shutil.rmtree(redis.directory, ignore_errors=True)


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of its own (initdb in a temp dir), holding a copy of the test database."""

    port: int
    directory: Path
    name: str = "platform"

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{self.name}"

    def init(self) -> None:
        shutil.chown(self.directory, "postgres") if os.geteuid() == 0 else None
        _as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                      "--no-sync"])

    def start(self) -> None:
        _as_postgres([
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.directory / "log"), "-w", "-t", "30",
            # fsync off: the OS keeps what a killed server wrote. synchronous_commit stays on: off, a
            # commit acknowledged just before an immediate stop is lost (a settled request back to pending).
            "-o", (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} -c fsync=off "
                   "-c full_page_writes=off -c max_connections=200"),
            "start",
        ])

    def stop(self, mode: str = "immediate") -> None:
        """``immediate``: the server quits at once, every client connection cut (a crash, as far
        as clients can tell); it recovers from its WAL on the next start."""
        if (self.data / "postmaster.pid").exists():
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def copy_from(self, source_url: str) -> None:
        """Create the database and copy ``source_url``'s schema and rows into it (pg_dump | psql)."""
        _as_postgres([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", self.name])
        dump = subprocess.run([str(PG_BIN / "pg_dump"), "--no-owner", "--no-acl", source_url], check=True,
                              capture_output=True)
        subprocess.run([str(PG_BIN / "psql"), "-q", "-v", "ON_ERROR_STOP=1", self.url], input=dump.stdout,
                       check=True, capture_output=True)

    def query(self, sql: str, *params):
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()


@pytest.fixture
def private_postgres():
    directory = Path(tempfile.mkdtemp(prefix="pi-pg-"))
    pg = PrivatePostgres(port=free_port(), directory=directory)
    pg.init()
    pg.start()
    yield pg
    pg.stop()
    shutil.rmtree(directory, ignore_errors=True)
