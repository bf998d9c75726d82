"""Agent runs against real processes: a gateway server allowed to fetch from one local
test server (and not from another), the simulator as the model, the tenants."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nodes.models import Job
from tests.conftest import SIM_MODEL, start_server


@dataclass
class WebServer:
    """A local HTTP server that counts the requests it gets."""

    httpd: ThreadingHTTPServer
    hits: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def start_web(routes) -> WebServer:
    web = WebServer(ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            web.hits.append(self.path)
            status, headers, body = routes(self.path)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    web.httpd.RequestHandlerClass = Handler
    threading.Thread(target=web.httpd.serve_forever, daemon=True).start()
    return web


@pytest.fixture(scope="session")
def elsewhere():
    """A host that is not on the fetch allow-list."""
    web = start_web(lambda path: (200, {"content-type": "text/plain"}, b"you should never see this"))
    yield web
    web.httpd.shutdown()


@pytest.fixture(scope="session")
def allowed_site(elsewhere):
    """The one host the agent server may fetch from; /away redirects to ``elsewhere``."""

    def routes(path):
        if path == "/hello":
            return 200, {"content-type": "text/plain; charset=utf-8"}, b"hello from the allowed site"
        if path == "/away":
            return 302, {"location": elsewhere.url("/secret")}, b""
        if path == "/here":
            return 302, {"location": "/hello"}, b""
        if path == "/big":
            return 200, {"content-type": "text/plain"}, b"x" * 5000
        return 404, {"content-type": "text/plain"}, b"no such page"

    web = start_web(routes)
    yield web
    web.httpd.shutdown()


@pytest.fixture(scope="session")
def agent_server_proc(django_db_setup, django_db_blocker, allowed_site):
    server = start_server(
        AGENT_FETCH_ALLOWED_HOSTS=f"127.0.0.1:{allowed_site.port}",
        AGENT_FETCH_ALLOW_PRIVATE="1",  # the test site is on loopback
        AGENT_FETCH_MAX_BYTES="1024",
        AGENT_DEFAULT_MODEL=SIM_MODEL,
    )
    yield server
    server.process.stop()


@pytest.fixture
def agent_server(agent_server_proc, transactional_db, allowed_site, elsewhere):
    allowed_site.hits.clear()
    elsewhere.hits.clear()
    return agent_server_proc


def wait_job(job_id: str, timeout: float = 30) -> Job:
    deadline = time.monotonic() + timeout
    while (job := Job.objects.get(public_id=job_id)).status in ("queued", "running"):
        assert time.monotonic() < deadline, f"job {job_id} still {job.status}"
        time.sleep(0.05)
    return job
