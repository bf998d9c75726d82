"""If Redis or PostgreSQL is unreachable the request is refused (503), never served unbilled."""
import httpx
import pytest

from billing.models import Transfer
from tests.conftest import SIM_MODEL, free_port, start_server

CHAT = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param({"REDIS_URL": "redis://127.0.0.1:{port}/0"}, marks=pytest.mark.redis, id="redis-down"),
        pytest.param({"DATABASE_URL": "postgres://postgres@127.0.0.1:{port}/nowhere"}, marks=pytest.mark.postgres,
                     id="database-down"),
    ],
)
def test_paid_requests_are_refused_when_a_store_is_down(transactional_db, alice, sim_node, sim, broken):
    server = start_server(**{name: url.format(port=free_port()) for name, url in broken.items()})
    try:
        response = httpx.post(f"{server.api}/chat/completions", headers=alice.auth(), json=CHAT, timeout=30)
    finally:
        server.process.stop()
    assert response.status_code == 503 and response.json()["error"]["code"] == "service_unavailable"
    assert sim.stats()["requests"] == 0 and not Transfer.objects.filter(kind="usage").exists()
