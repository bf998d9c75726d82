"""End-to-end top-ups: the console (Django test client) → a Checkout Session in the Stripe emulator
(real ``stripe`` library; Checkout Sessions and Prices are the emulator's HTTP-level fake, the
payment itself is localstripe's) → the hosted page paid over HTTP → the signed webhook delivered by
the emulator to a live server process (uvicorn) → the wallet, read back from the database.
"""
from __future__ import annotations

import threading
from urllib.parse import urlparse

import httpx
import pytest

from billing.models import TopupSession, Transfer

WEBHOOK_PATH = "/billing/stripe/webhook"


@pytest.fixture
def emulator(stripe_emu, server):
    """The emulator delivering every event to the live server's webhook view."""
    stripe_emu.register_webhook(server.url + WEBHOOK_PATH)
    return stripe_emu


def login(client, tenant) -> None:
    assert client.login(username=tenant.user.username, password="pw-" + tenant.user.username * 2)


def start_topup(client, tenant, dollars: str) -> TopupSession:
    """Submit the console's top-up form; it answers with a redirect to the hosted Checkout page."""
    response = client.post("/billing/topup", {"org": tenant.organization.public_id, "amount": dollars})
    assert response.status_code == 302, response.content.decode()[:2000]
    row = TopupSession.objects.get(checkout_url=response["Location"])
    assert response["Location"].startswith("http://127.0.0.1:") and "/pay/" in response["Location"]
    return row


def local_path(url: str) -> str:
    """The path and query of a console URL Stripe redirected to (the test client has no host)."""
    parsed = urlparse(url)
    return f"{parsed.path}?{parsed.query}" if parsed.query else parsed.path


def credits(row: TopupSession) -> list[Transfer]:
    return list(Transfer.objects.filter(kind=Transfer.Kind.TOPUP, reference=f"cs:{row.stripe_session_id}"))


def post_concurrently(urls: list[str], delivery: dict, copies: int) -> list[int]:
    """POST one recorded delivery (payload and signature exactly as the emulator sent them) ``copies``
    times to each URL at the same moment, as Stripe's retries can reach several app servers."""
    targets = [url for url in urls for _ in range(copies)]
    barrier = threading.Barrier(len(targets))
    statuses: list[int] = []

    def send(url: str) -> None:
        barrier.wait(timeout=30)
        response = httpx.post(url, content=delivery["payload"].encode(), timeout=60, headers={
            "Content-Type": "application/json; charset=utf-8", "Stripe-Signature": delivery["signature"]})
        statuses.append(response.status_code)

    threads = [threading.Thread(target=send, args=(url,)) for url in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    return statuses
