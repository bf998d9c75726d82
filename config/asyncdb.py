"""Async database access for the request hot path.

Django's async ORM runs every query on one sync thread, which serializes the
whole process. The hot path (key lookup on a cache miss, reserve, settle)
instead sends a few hand-written statements through this module:

* PostgreSQL: a psycopg ``AsyncConnectionPool`` per event loop; a batch of
  statements is bound client-side and sent as one simple-protocol query,
  which PostgreSQL runs as one implicit transaction: one round trip, all or
  nothing. (Measured in bench/db_batching.py: a third of the client CPU of
  psycopg's pipeline mode for the same statements.)
* SQLite (the embedded default only): the same statements run through
  Django's connection in one thread hop.

Statements use ``%(name)s`` parameters, which both backends accept. Each app
writes its own tables' SQL; this module only executes it.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import re
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.apps import apps
from django.db import IntegrityError, connection, transaction


@dataclass(frozen=True, slots=True)
class Stmt:
    sql: str
    params: dict[str, Any] = field(default_factory=dict)
    fetch: bool = False


@dataclass(slots=True)
class Result:
    rowcount: int
    rows: list[tuple]


class ConstraintViolation(Exception):
    """A statement broke a named database constraint; the transaction rolled back."""

    def __init__(self, name: str, message: str = ""):
        super().__init__(message or name)
        self.name = name


class DatabaseUnavailable(Exception):
    """The database could not be reached; callers fail closed (503)."""


@functools.cache
def is_postgres() -> bool:
    # Once per process: reading Django's connection goes through asgiref's context-local storage,
    # ~2 % of the gateway's CPU when asked on every statement batch (py-spy, bench/run.py).
    return connection.vendor == "postgresql"


# --- PostgreSQL ----------------------------------------------------------------

_pools: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]" = weakref.WeakKeyDictionary()
_pool_locks: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]" = weakref.WeakKeyDictionary()


def _conninfo() -> str:
    from psycopg.conninfo import make_conninfo

    s = connection.settings_dict
    return make_conninfo(
        dbname=s["NAME"],
        user=s.get("USER") or None,
        password=s.get("PASSWORD") or None,
        host=s.get("HOST") or None,
        port=str(s["PORT"]) if s.get("PORT") else None,
        connect_timeout=5,
        application_name="gateway-hot-path",
    )


async def _pool():
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is not None:
        return pool
    lock = _pool_locks.setdefault(loop, asyncio.Lock())
    async with lock:
        pool = _pools.get(loop)
        if pool is None:
            import psycopg
            from django.conf import settings
            from psycopg_pool import AsyncConnectionPool

            pool = AsyncConnectionPool(
                _conninfo(),
                min_size=1,
                max_size=settings.ASYNC_DB_POOL_SIZE,
                # Autocommit + client-side binding: a multi-statement query is one implicit transaction.
                kwargs={"autocommit": True, "cursor_factory": psycopg.AsyncClientCursor},
                open=False,
                # Waiting longer for a connection only piles requests up behind a
                # database that is down: answer 503 after this instead.
                timeout=2.0,
                # A failed connect is retried for a few seconds; later requests start new attempts.
                reconnect_timeout=5.0,
                name="hot-path",
            )
            await pool.open(wait=False)
            _pools[loop] = pool
    return pool


async def close_pools() -> None:
    loop = asyncio.get_running_loop()
    pool = _pools.pop(loop, None)
    if pool is not None:
        await pool.close()


# How long a request may wait for a connection while the database is up but every connection is busy
# (a burst, e.g. 1,000 streams opened at once): the pool's own 2 s timeout is for a database that is down.
BUSY_WAIT_SECONDS = 15.0


@contextlib.asynccontextmanager
async def _connection(pool):
    """A connection from the pool. After the pool's timeout, wait on while the pool holds all its
    connections (each one reached the database and is in use: busy, not down), up to BUSY_WAIT_SECONDS;
    a pool that could not open its connections times out as before."""
    from psycopg_pool import PoolTimeout

    waited = 0.0
    while True:
        try:
            conn = await pool.getconn()
            break
        except PoolTimeout:
            waited += pool.timeout
            if waited >= BUSY_WAIT_SECONDS or pool.get_stats().get("pool_size", 0) < pool.max_size:
                raise
    try:
        async with conn:  # as pool.connection() does: end the transaction, keep the connection
            yield conn
    finally:
        await pool.putconn(conn)


async def _run_pg(stmts: tuple[Stmt, ...]) -> list[Result]:
    import psycopg
    from psycopg_pool import PoolTimeout

    try:
        pool = await _pool()
        async with _connection(pool) as conn:
            cur = conn.cursor()
            text = ";\n".join(cur.mogrify(stmt.sql, stmt.params) for stmt in stmts)
            try:
                await cur.execute(text)
            except psycopg.errors.IntegrityError as exc:
                raise ConstraintViolation(exc.diag.constraint_name or "", str(exc)) from None
            results = []
            for i, stmt in enumerate(stmts):
                if i:
                    cur.nextset()
                results.append(Result(cur.rowcount, await cur.fetchall() if stmt.fetch else []))
            return results
    except (psycopg.OperationalError, PoolTimeout, OSError) as exc:
        raise DatabaseUnavailable(str(exc)) from exc


# --- SQLite / Django connection ------------------------------------------------

_UNIQUE = re.compile(r"UNIQUE constraint failed: (.+)$")
_CHECK = re.compile(r"CHECK constraint failed: (\w+)")
_unique_names: dict[tuple[str, frozenset[str]], str] | None = None
_unique_lock = threading.Lock()


def _unique_constraint_name(message: str) -> str:
    """SQLite names the columns of a failed UNIQUE constraint, not the constraint."""
    global _unique_names
    with _unique_lock:
        if _unique_names is None:
            names: dict[tuple[str, frozenset[str]], str] = {}
            for model in apps.get_models():
                meta = model._meta
                for constraint in meta.constraints:
                    fields = getattr(constraint, "fields", ())
                    if fields:
                        cols = frozenset(meta.get_field(f).column for f in fields)
                        names[(meta.db_table, cols)] = constraint.name
            _unique_names = names
    columns = [c.strip() for c in _UNIQUE.search(message).group(1).split(",")]
    table = columns[0].split(".")[0]
    return _unique_names.get((table, frozenset(c.split(".", 1)[1] for c in columns)), "")


def _adapt(params: dict[str, Any]) -> dict[str, Any]:
    if connection.vendor != "sqlite":
        return params
    ops = connection.ops
    return {k: ops.adapt_datetimefield_value(v) if isinstance(v, dt.datetime) else v for k, v in params.items()}


def run_sync(*stmts: Stmt) -> list[Result]:
    """Run statements in one transaction on Django's connection."""
    try:
        with transaction.atomic():
            results = []
            with connection.cursor() as cur:
                for stmt in stmts:
                    cur.execute(stmt.sql, _adapt(stmt.params))
                    rows = [tuple(r) for r in cur.fetchall()] if stmt.fetch else []
                    results.append(Result(cur.rowcount, rows))
            return results
    except IntegrityError as exc:
        message = str(exc)
        if m := _CHECK.search(message):
            raise ConstraintViolation(m.group(1), message) from None
        if _UNIQUE.search(message):
            raise ConstraintViolation(_unique_constraint_name(message), message) from None
        name = getattr(getattr(exc.__cause__, "diag", None), "constraint_name", "") or ""
        raise ConstraintViolation(name, message) from None


_run_sync_async = sync_to_async(run_sync, thread_sensitive=True)


async def run(*stmts: Stmt) -> list[Result]:
    """Run statements in one transaction (each sees the ones before): one round trip on PostgreSQL."""
    if is_postgres():
        return await _run_pg(stmts)
    return await _run_sync_async(*stmts)


async def fetch_one(sql: str, params: dict[str, Any]) -> tuple | None:
    (result,) = await run(Stmt(sql, params, fetch=True))
    return result.rows[0] if result.rows else None


def as_datetime(value: Any) -> dt.datetime | None:
    """A timezone-aware datetime from either backend's raw column value."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value
