"""The ``http_fetch`` tool: GET a URL, only on hosts the platform allows.

Refused before any connection is made: a scheme other than http(s), a URL with
credentials, a host (or host:port) not on AGENT_FETCH_ALLOWED_HOSTS, and a host
that resolves to a private, loopback, link-local, multicast, reserved or
unspecified address (unless AGENT_FETCH_ALLOW_PRIVATE, for tests). The
connection goes to the addresses that were checked (a pinned resolver), so a
second DNS answer cannot swap in another address. Redirects are followed by
hand, at most MAX_REDIRECTS, each target checked like the first URL: a
redirect to a host off the list is refused. The body is read up to
AGENT_FETCH_MAX_BYTES (the rest is cut and ``truncated`` says so); the whole
fetch has AGENT_FETCH_TIMEOUT_SECONDS.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from django.conf import settings

MAX_REDIRECTS = 3
REDIRECTS = {301, 302, 303, 307, 308}
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript", "application/x-www-form")


class FetchRefused(Exception):
    """The fetch is not allowed (or failed); the message goes back to the model."""


def _allowed(host: str, port: int) -> bool:
    for entry in settings.AGENT_FETCH_ALLOWED_HOSTS:
        entry = entry.strip().lower()
        name, _, allowed_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if allowed_port and not allowed_port.isdigit():
            name, allowed_port = entry, ""
        if name == host and (not allowed_port or int(allowed_port) == port):
            return True
    return False


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
                or ip.is_unspecified)


class _Pinned(AbstractResolver):
    """Answers only with the addresses that were checked."""

    def __init__(self, answers: list[dict[str, Any]]):
        self.answers = answers

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
        return [{**a, "hostname": host, "port": port} for a in self.answers]

    async def close(self) -> None:
        pass


async def _checked(url: str) -> tuple[str, list[dict[str, Any]]]:
    """The URL's host, and its addresses once every check passed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchRefused(f"only http and https URLs can be fetched, not {url[:200]!r}")
    if parts.username or parts.password:
        raise FetchRefused("URLs with credentials are refused")
    host = parts.hostname.lower()
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise FetchRefused("the URL's port is not valid") from None
    if not _allowed(host, port):
        raise FetchRefused(f"host {host}:{port} is not on the fetch allow-list")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise FetchRefused(f"host {host} does not resolve") from None
    answers = []
    for family, _, proto, _, sockaddr in infos:
        if not settings.AGENT_FETCH_ALLOW_PRIVATE and not _public(sockaddr[0]):
            raise FetchRefused(f"host {host} resolves to a non-public address ({sockaddr[0]})")
        answers.append({"host": sockaddr[0], "family": family, "proto": proto, "flags": socket.AI_NUMERICHOST})
    return host, answers


async def _read(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    body = bytearray()
    while len(body) <= limit:
        chunk = await resp.content.read(limit + 1 - len(body))
        if not chunk:
            return bytes(body), False
        body += chunk
    return bytes(body[:limit]), True


def _text(raw: bytes, charset: str | None) -> str:
    try:
        return raw.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return raw.decode("utf-8", errors="replace")


async def fetch(url: str) -> dict[str, Any]:
    """GET ``url``: ``{"url", "status", "content_type", "body", "truncated"}``; FetchRefused otherwise."""
    timeout = aiohttp.ClientTimeout(total=settings.AGENT_FETCH_TIMEOUT_SECONDS)
    try:
        async with asyncio.timeout(settings.AGENT_FETCH_TIMEOUT_SECONDS):
            for _ in range(MAX_REDIRECTS + 1):
                _, answers = await _checked(url)
                connector = aiohttp.TCPConnector(resolver=_Pinned(answers), use_dns_cache=False, force_close=True)
                async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=True) as session:
                    headers = {"user-agent": "private-inference-agent/1", "accept": "*/*"}
                    async with session.get(url, allow_redirects=False, headers=headers) as resp:
                        if resp.status in REDIRECTS and resp.headers.get("location"):
                            url = urljoin(url, resp.headers["location"])
                            continue
                        content_type = resp.headers.get("content-type", "")
                        if not content_type.lower().startswith(TEXT_TYPES):
                            return {"url": url, "status": resp.status, "content_type": content_type, "body": None,
                                    "truncated": False, "note": "not text: the body is not returned"}
                        raw, truncated = await _read(resp, settings.AGENT_FETCH_MAX_BYTES)
                        return {"url": url, "status": resp.status, "content_type": content_type,
                                "body": _text(raw, resp.charset), "truncated": truncated}
            raise FetchRefused(f"more than {MAX_REDIRECTS} redirects")
    except TimeoutError:
        raise FetchRefused(f"the fetch took longer than {settings.AGENT_FETCH_TIMEOUT_SECONDS} s") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise FetchRefused(f"the fetch failed: {exc.__class__.__name__}") from None
