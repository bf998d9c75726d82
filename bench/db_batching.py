"""How to send one small transaction to PostgreSQL: client CPU and throughput of four ways.

One operation = one transaction of 4 ``UPDATE bench_accounts SET balance =
balance + $d WHERE id = $i`` on 4 distinct random rows (ids sorted, so
concurrent operations cannot deadlock) of a 100k-row table, with every
rowcount checked. psycopg 3 async, an AsyncConnectionPool of 8 autocommit
connections, uvloop, sent as:

  a. pipeline:   ``async with conn.pipeline(): async with conn.transaction():``
                 4 executes (server-side parameters; no wait per statement,
                 results collected at the Sync)
  b. multi-stmt: ``AsyncClientCursor``: ``cur.mogrify`` each statement, join
                 with ";", one ``execute``: PostgreSQL runs a simple-protocol
                 multi-statement query as one implicit transaction
                 (config/asyncdb.py ``_run_pg``)
  c. CTE:        one statement ``WITH a AS (UPDATE ... RETURNING 1), b AS ...
                 SELECT counts`` with server-side parameters
  d. explicit:   ``async with conn.transaction():`` 4 separate awaited
                 executes (BEGIN, 4 statements, COMMIT: 6 round trips)

psycopg's defaults are kept (server-side cursors prepare a statement after 5
executions). Each run does a warm-up, then --ops operations at --concurrency
16 from this process pinned to one core (``os.sched_setaffinity``, core 0;
the PostgreSQL server is not pinned), and reports ops/s and client CPU
(``time.process_time()``) per op; methods are interleaved over --repeat rounds
and the medians are shown. The scratch database ``bench_db_batching`` is
created at the start and dropped at the end.

    python bench/db_batching.py [--dsn postgresql://postgres@127.0.0.1:5432] [--ops 3000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time

import psycopg
import uvloop
from psycopg_pool import AsyncConnectionPool

from common import machine, print_table

DB = "bench_db_batching"
ROWS = 100_000
UPDATE = "UPDATE bench_accounts SET balance = balance + %(d)s WHERE id = %(i)s"


def work() -> list[dict]:
    return [{"d": random.randint(-100, 100), "i": i} for i in sorted(random.sample(range(1, ROWS + 1), 4))]


def check(counts: list[int]) -> None:
    if counts != [1, 1, 1, 1]:
        raise RuntimeError(f"unexpected rowcounts {counts}")


async def pipeline(conn: psycopg.AsyncConnection) -> None:
    async with conn.pipeline():
        async with conn.transaction():
            cursors = [await conn.execute(UPDATE, p) for p in work()]
    check([c.rowcount for c in cursors])


async def multi_statement(conn: psycopg.AsyncConnection) -> None:
    cur = psycopg.AsyncClientCursor(conn)
    await cur.execute(";\n".join(cur.mogrify(UPDATE, p) for p in work()))
    counts = [cur.rowcount]
    while cur.nextset():
        counts.append(cur.rowcount)
    check(counts)


CTE = ("WITH a AS (UPDATE bench_accounts SET balance = balance + %s WHERE id = %s RETURNING 1), "
       "b AS (UPDATE bench_accounts SET balance = balance + %s WHERE id = %s RETURNING 1), "
       "c AS (UPDATE bench_accounts SET balance = balance + %s WHERE id = %s RETURNING 1), "
       "d AS (UPDATE bench_accounts SET balance = balance + %s WHERE id = %s RETURNING 1) "
       "SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM b), (SELECT count(*) FROM c), (SELECT count(*) FROM d)")


async def cte(conn: psycopg.AsyncConnection) -> None:
    cur = await conn.execute(CTE, [v for p in work() for v in (p["d"], p["i"])])
    check(list(await cur.fetchone()))


async def explicit(conn: psycopg.AsyncConnection) -> None:
    async with conn.transaction():
        check([(await conn.execute(UPDATE, p)).rowcount for p in work()])


METHODS = {
    "a. pipeline (4 stmts, 1 sync)": pipeline,
    "b. multi-statement, client-bound": multi_statement,
    "c. one CTE statement": cte,
    "d. BEGIN + 4 awaits + COMMIT": explicit,
}


async def measure(dsn: str, method, ops: int, concurrency: int, pool_size: int) -> dict:
    pool = AsyncConnectionPool(dsn, min_size=pool_size, max_size=pool_size, kwargs={"autocommit": True}, open=False)
    await pool.open(wait=True)
    remaining = 0

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            async with pool.connection() as conn:
                await method(conn)

    try:
        remaining = 300  # warm-up: connections, prepared statements, caches
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        remaining = ops
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await pool.close()
    return {"ops": ops / wall, "cpu_us": cpu / ops * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432", help="server, without a database")
    parser.add_argument("--ops", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--pool", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})
    admin = f"{args.dsn}/postgres"
    dsn = f"{args.dsn}/{DB}"

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB}")
        server_version = conn.execute("SHOW server_version").fetchone()[0]
    results: dict[str, list[dict]] = {name: [] for name in METHODS}
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE bench_accounts (id bigint PRIMARY KEY, balance bigint NOT NULL)")
            conn.execute(f"INSERT INTO bench_accounts SELECT g, 1000000 FROM generate_series(1, {ROWS}) g")
            conn.execute("VACUUM ANALYZE bench_accounts")
        for _ in range(args.repeat):
            for name, method in METHODS.items():
                results[name].append(uvloop.run(measure(dsn, method, args.ops, args.concurrency, args.pool)))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")

    print(f"\nOne 4-UPDATE transaction per op — {machine()}, psycopg {psycopg.__version__} "
          f"({psycopg.pq.__impl__}), PostgreSQL {server_version} on 127.0.0.1")
    print(f"{args.ops} ops per run at concurrency {args.concurrency}, pool of {args.pool} autocommit connections, "
          f"client on core 0 (uvloop); medians of {args.repeat} interleaved runs\n")
    by_cpu = lambda rs: sorted(rs, key=lambda r: r["cpu_us"])[len(rs) // 2]  # noqa: E731
    base = by_cpu(results["b. multi-statement, client-bound"])["cpu_us"]
    table = []
    for name, runs in results.items():
        cpu = by_cpu(runs)["cpu_us"]
        table.append([name, f"{statistics.median(r['ops'] for r in runs):.0f}", f"{cpu:.0f}µs", f"{cpu / base:.2f}×",
                      " ".join(f"{r['ops']:.0f}" for r in runs)])
    print_table(["method", "ops/s", "client CPU/op", "vs multi-stmt", "ops/s of each run"], table)

if __name__ == "__main__":
    main()
