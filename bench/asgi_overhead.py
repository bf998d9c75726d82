"""What the ASGI stack costs for a trivial JSON endpoint (GET /ok -> {"ok": true}).

Compares, one server process at a time:

  a. Django 5.2's ASGIHandler, async view, MIDDLEWARE = []          (uvicorn)
  b. Django 5.2's ASGIHandler, async view, the project's usual stack:
     Security, Session, Common, Csrf, Auth, Messages, XFrame          (uvicorn)
  c. a Starlette Route returning JSONResponse                        (uvicorn)
  d. a bare ASGI callable                                            (uvicorn)
  e. the same Starlette app                                          (daphne)

uvicorn runs with ``--loop uvloop --http httptools --no-access-log`` and one
worker; daphne with ``-v 0`` (no access log). The apps are tiny modules
written to a temp dir (the Django ones call settings.configure), so nothing
depends on the project's settings. Each server is pinned to core 0 with
``taskset -c 0``; the load comes from ``wrk -t1 -c16 --latency`` pinned to
core 1. After a 1 s warm-up, each case is measured --repeat times and the
median run (by req/s) is reported.

This backs two choices for the /v1 gateway: Starlette rather than Django's
ASGI handler, and uvicorn rather than daphne.

    python bench/asgi_overhead.py [--seconds 5] [--repeat 3] [--connections 16]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

from common import free_port, machine, print_table

DJANGO_APP = '''
from django.conf import settings

settings.configure(
    DEBUG=False, SECRET_KEY="bench", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, USE_TZ=True,
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django.contrib.sessions",
                    "django.contrib.messages"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    MIDDLEWARE=MIDDLEWARE,
)

from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402


async def ok(request):
    return JsonResponse({"ok": True})


urlpatterns = [path("ok", ok)]
app = get_asgi_application()
'''

USUAL_MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

STARLETTE_APP = '''
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route


async def ok(request):
    return JSONResponse({"ok": True})


app = Starlette(routes=[Route("/ok", ok)])
'''

BARE_APP = '''
BODY = b'{"ok":true}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):  # uvicorn runs with --lifespan off; every path answers
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
'''

UVICORN = ["-m", "uvicorn", "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
           "--lifespan", "off"]
CASES = [  # label, module, server
    ("Django ASGI, no middleware", "django_bare", "uvicorn"),
    ("Django ASGI, usual middleware", "django_mw", "uvicorn"),
    ("Starlette", "starlette_app", "uvicorn"),
    ("bare ASGI callable", "bare_app", "uvicorn"),
    ("Starlette", "starlette_app", "daphne"),
]


def write_apps(directory: Path) -> None:
    (directory / "django_bare.py").write_text("MIDDLEWARE = []\n" + DJANGO_APP)
    (directory / "django_mw.py").write_text(f"MIDDLEWARE = {USUAL_MIDDLEWARE!r}\n" + DJANGO_APP)
    (directory / "starlette_app.py").write_text(textwrap.dedent(STARLETTE_APP))
    (directory / "bare_app.py").write_text(textwrap.dedent(BARE_APP))


def start_server(module: str, server: str, port: int, directory: Path) -> tuple[subprocess.Popen, str]:
    if server == "uvicorn":
        args = [sys.executable, *UVICORN, "--port", str(port), f"{module}:app"]
    else:
        args = [sys.executable, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port), f"{module}:app"]
    proc = subprocess.Popen(["taskset", "-c", "0", *args], cwd=directory, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/ok"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{module} under {server} exited:\n{proc.stderr.read()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                body = resp.read()
            if resp.status == 200 and body.replace(b" ", b"") == b'{"ok":true}':
                return proc, url
        except OSError:
            time.sleep(0.1)
    stop(proc)
    raise SystemExit(f"{module} under {server} did not answer {url}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def to_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url: str, seconds: float, connections: int) -> dict:
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": to_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),
        "p99": to_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),
        "errors": errors + (int(non2xx.group(1)) if non2xx else 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if not shutil.which("wrk") or not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
        raise SystemExit("needs wrk, taskset and at least 2 cores")

    directory = Path(tempfile.mkdtemp(prefix="bench-asgi-"))
    rows = []
    try:
        write_apps(directory)
        for label, module, server in CASES:
            proc, url = start_server(module, server, free_port(), directory)
            try:
                run_wrk(url, 1, args.connections)  # warm-up
                runs = sorted((run_wrk(url, args.seconds, args.connections) for _ in range(args.repeat)),
                              key=lambda r: r["rps"])
                rows.append((label, server, runs[len(runs) // 2], [r["rps"] for r in runs]))
            finally:
                stop(proc)
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    import daphne, django, starlette, uvicorn  # noqa: E401  (versions for the header only)

    print(f"\nASGI stack overhead, GET /ok -> {{\"ok\": true}} — {machine()}")
    print(f"Django {django.__version__}, Starlette {starlette.__version__}, uvicorn {uvicorn.__version__} "
          f"(uvloop, httptools), daphne {daphne.__version__}")
    print(f"server on core 0, wrk -t1 -c{args.connections} -d{args.seconds}s on core 1; "
          f"median of {args.repeat} runs\n")
    print_table(
        ["app", "server", "req/s", "p50", "p99", "errors", "req/s of each run"],
        [[label, server, f"{r['rps']:.0f}", f"{r['p50']:.2f}ms", f"{r['p99']:.2f}ms", str(r["errors"]),
          " ".join(f"{x:.0f}" for x in all_rps)] for label, server, r, all_rps in rows],
    )
    base = next(r["rps"] for label, server, r, _ in rows if label == "Starlette" and server == "uvicorn")
    print("\nrelative to Starlette on uvicorn: "
          + ", ".join(f"{label} ({server}) {r['rps'] / base:.2f}×" for label, server, r, _ in rows))


if __name__ == "__main__":
    main()
