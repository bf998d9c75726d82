import pytest
from private_inference import AsyncClient, Client, RetryPolicy

from tests.sdk.proxy import FaultProxy

# Quick backoff in tests (the policy itself is unit-tested); Retry-After still rules when sent.
FAST = RetryPolicy(max_retries=3, initial_delay=0.05, max_delay=0.2)


@pytest.fixture
def client(server, alice, sim_node):
    with Client(api_key=alice.secret_key, base_url=server.url, retry_policy=FAST) as c:
        yield c


@pytest.fixture
async def aclient(server, alice, sim_node):
    async with AsyncClient(api_key=alice.secret_key, base_url=server.url, retry_policy=FAST) as c:
        yield c


@pytest.fixture
def proxy(server):
    p = FaultProxy(upstream=server.url).start()
    yield p
    p.stop()


@pytest.fixture
def proxied(proxy, alice, sim_node):
    with Client(api_key=alice.secret_key, base_url=proxy.url, retry_policy=FAST) as c:
        yield c
