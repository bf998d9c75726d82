"""Small helpers the benchmark scripts share (run them as `python bench/<name>.py`)."""
from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def machine_details() -> str:
    """machine() plus the CPU model, memory and OS (Linux /proc and /etc/os-release)."""
    parts = [machine()]
    try:
        with open("/proc/cpuinfo") as f:
            parts.insert(0, next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name")))
        with open("/proc/meminfo") as f:
            parts.append(f"{int(f.readline().split()[1]) / 2**20:.0f} GiB")
        with open("/etc/os-release") as f:
            parts.append(next(line.split("=", 1)[1].strip().strip('"') for line in f if line.startswith("PRETTY_NAME")))
    except (OSError, StopIteration):
        pass
    return ", ".join(parts)


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-quantile of values already sorted ascending (nearest rank)."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """First column left-aligned, the rest right-aligned, each as wide as its widest cell."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first, *rest = (str(c) for c in cells)
        return "  ".join([first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:]))])

    print(line(header))
    print("-" * len(line(header)))
    for row in rows:
        print(line(row))


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def pinned(core: int, args: list[str]) -> list[str]:
    return (["taskset", "-c", str(core)] if shutil.which("taskset") else []) + args


def start(args: list[str], env: dict, ready: str | Callable[[], bool], timeout: float = 60,
          cwd: Path = ROOT) -> subprocess.Popen:
    """Start a process and wait until it is ready: a line of its output contains ``ready`` (a string), or
    ``ready()`` returns true (polled). Its output is drained by a thread, so a chatty process never
    blocks on a full pipe; the last lines are shown if it does not start in ``timeout`` seconds."""
    import threading

    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    found = threading.Event()

    def drain() -> None:
        for line in proc.stdout:
            if len(seen) < 200:
                seen.append(line)
            if isinstance(ready, str) and ready in line:
                found.set()

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if found.wait(0.2) or (callable(ready) and ready()):
            return proc
    proc.kill()
    proc.wait()
    raise SystemExit(f"{args} did not start:\n{''.join(seen[-30:])}")


def environment(state: str, database: str = "bench_platform") -> tuple[dict, str]:
    """The gateway's environment: PostgreSQL + Redis (a scratch ``database``, created afresh) when they
    are on this machine, else the embedded default; and a description of which."""
    env = {**os.environ, "STATE_DIR": state, "EMBEDDED_BEAT": "0", "LOCAL_NODE_ENABLED": "0", "APP_ENV": "test",
           "LOG_LEVEL": "WARNING"}
    if listening(5432) and listening(6379):
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {database}")
        env.update(DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{database}",
                   REDIS_URL="redis://127.0.0.1:6379/14", REDIS_PREFIX=f"bench-{os.getpid()}")
        return env, "PostgreSQL + Redis (production shape)"
    return env, "SQLite + in-process (embedded default)"


def migrate_and_seed(env: dict, nodes: dict[str, str], tenants: int, plan: bool = False) -> list[str]:
    """Migrate the scratch database, register ``nodes`` ({model: node base URL without /v1}) and seed
    ``tenants`` funded organizations; their secret keys."""
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    seed = [sys.executable, "bench/seed.py", ",".join(nodes.values()), ",".join(nodes), str(tenants),
            *(["plan"] if plan else [])]
    out = subprocess.run(seed, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out)["keys"]


def start_gateway(env: dict, port: int, core: int = 0) -> subprocess.Popen:
    """One gateway process as production runs it (uvicorn, uvloop, httptools, no access log), pinned to ``core``."""
    return start(pinned(core, [sys.executable, "-m", "uvicorn", "config.asgi:application", "--port", str(port),
                               "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "info",
                               "--lifespan", "on"]),
                 {**env, "LOG_LEVEL": "INFO"}, "Uvicorn running on")  # bound (startup completes before the bind)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU a process used so far (Linux /proc); 0 without a pid."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux /proc)."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return tree


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants (VmRSS from /proc)."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total


def drop_database(env: dict) -> None:
    """Drop the scratch database ``environment`` created (nothing on the embedded default)."""
    if "DATABASE_URL" not in env:
        return
    import psycopg

    name = env["DATABASE_URL"].rsplit("/", 1)[1]
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
