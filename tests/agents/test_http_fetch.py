"""http_fetch's refusals that need no server: they happen before any connection."""
from __future__ import annotations

import pytest

from gateway.agents.fetch import FetchRefused, fetch


@pytest.fixture
def allow(settings):
    def set_hosts(*hosts: str, private: bool = False):
        settings.AGENT_FETCH_ALLOWED_HOSTS = list(hosts)
        settings.AGENT_FETCH_ALLOW_PRIVATE = private

    return set_hosts


@pytest.mark.parametrize(
    ("url", "hosts", "message"),
    [
        ("http://127.0.0.1:9/", ["127.0.0.1"], "non-public address (127.0.0.1)"),
        ("http://localhost:9/", ["localhost"], "non-public address"),
        ("http://169.254.169.254/latest/meta-data/", ["169.254.169.254"], "non-public address (169.254.169.254)"),
        ("http://10.1.2.3/", ["10.1.2.3"], "non-public address (10.1.2.3)"),
        ("http://[::1]:9/", ["::1"], "non-public address (::1)"),
        ("http://0.0.0.0/", ["0.0.0.0"], "non-public address"),
        ("http://example.org/", [], "example.org:80 is not on the fetch allow-list"),
        ("http://example.org:8080/", ["example.org:80"], "example.org:8080 is not on the fetch allow-list"),
        ("http://user:pw@example.org/", ["example.org"], "credentials"),
        ("file:///etc/passwd", ["localhost"], "only http and https"),
        ("gopher://example.org/", ["example.org"], "only http and https"),
    ],
)
async def test_refused_before_connecting(allow, url, hosts, message):
    allow(*hosts)
    with pytest.raises(FetchRefused) as refused:
        await fetch(url)
    assert message in str(refused.value)


async def test_loopback_is_allowed_only_when_the_setting_says_so(allow):
    allow("127.0.0.1:9", private=True)
    with pytest.raises(FetchRefused) as refused:  # allowed now: it gets as far as connecting (nothing listens on 9)
        await fetch("http://127.0.0.1:9/")
    assert "the fetch failed" in str(refused.value)
