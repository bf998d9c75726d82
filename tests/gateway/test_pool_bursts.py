"""A burst of concurrent hot-path calls past the connection pools' sizes waits for a connection
instead of failing closed (bench/run.py opens 1,000 streams at once): 503 is for a Redis or a
PostgreSQL that is down, not for one that is busy."""
import asyncio
import re

import pytest
from django.conf import settings

from config import asyncdb, redisconn
from tests.conftest import run_async


@pytest.mark.redis
def test_more_redis_commands_in_flight_than_the_pool_holds_all_succeed():
    async def burst():
        client = redisconn.get_async()
        return await asyncio.gather(*(client.ping() for _ in range(300)))  # the pool holds 200

    assert run_async(burst()) == [True] * 300


@pytest.mark.postgres
def test_a_busy_postgres_pool_is_waited_on_past_its_timeout(transactional_db):
    size = settings.ASYNC_DB_POOL_SIZE
    # Three waves of statements that each hold a connection for 1.2 s: the last wave waits ~2.4 s,
    # past the pool's 2 s timeout.
    stmt = asyncdb.Stmt("SELECT pg_sleep(1.2)")

    async def burst():
        return await asyncio.gather(*(asyncdb.run(stmt) for _ in range(3 * size)), return_exceptions=True)

    results = run_async(burst())
    assert [r for r in results if isinstance(r, BaseException)] == []


@pytest.mark.postgres
def test_a_database_that_is_down_still_fails_closed_after_the_pool_timeout(transactional_db, monkeypatch):
    real = asyncdb._conninfo
    monkeypatch.setattr(asyncdb, "_conninfo", lambda: re.sub(r"port=\d+", "port=1", real()))  # nothing listens there

    async def one():
        started = asyncio.get_running_loop().time()
        with pytest.raises(asyncdb.DatabaseUnavailable):
            await asyncdb.run(asyncdb.Stmt("SELECT 1"))
        return asyncio.get_running_loop().time() - started

    assert run_async(one()) < asyncdb.BUSY_WAIT_SECONDS
