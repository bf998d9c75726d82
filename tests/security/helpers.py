"""What every test here asserts about an answer, and the raw-socket client the body tests need."""
from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path


def assert_envelope(response, status: int | set[int] | None = None) -> dict:
    """An error in the one envelope, with the request id the response header carries; never a 5xx.
    /v1/messages answers in Anthropic's shape (the same code and request id)."""
    statuses = {status} if isinstance(status, int) else status
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if statuses is not None:
        assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    request_id = response.headers["x-request-id"]
    if body.get("type") == "error":  # Anthropic's shape on /v1/messages
        assert body["request_id"] == request_id and body["error"]["code"]
        return body["error"]
    error = body["error"]
    assert {"type", "code", "message", "request_id"} <= set(error), body
    assert error["request_id"] == request_id
    return error


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def open_request(url: str, head: str) -> socket.socket:
    """A connection that has sent ``head`` (request line and headers, no body yet)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(head.encode())
    return sock


@dataclass
class Answer:
    """A raw answer, shaped like an httpx response for assert_envelope."""

    status_code: int
    headers: dict[str, str]
    content: bytes
    closed: bool  # the server closed the connection after answering

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self):
        return json.loads(self.content)


def read_answer(sock: socket.socket, timeout: float = 30) -> Answer:
    """The whole answer, and whether the server then closed the connection."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed before an answer: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    try:
        sock.settimeout(5)
        closed = sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    except TimeoutError:
        closed = False
    return Answer(status, headers, body, closed)
