"""If Redis or PostgreSQL is unreachable the request is refused (503), never served unbilled."""
import httpx
import pytest

from billing.models import Transfer
from tests.conftest import SIM_MODEL, free_port, start_server

CHAT = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.redis
def test_redis_down_refuses_paid_requests(transactional_db, alice, sim_node, sim):
    server = start_server(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    try:
        response = httpx.post(f"{server.api}/chat/completions", headers=alice.auth(), json=CHAT, timeout=30)
    finally:
        server.process.stop()
    assert response.status_code == 503 and response.json()["error"]["code"] == "service_unavailable"
    assert sim.stats()["requests"] == 0 and not Transfer.objects.filter(kind="usage").exists()


@pytest.mark.postgres
def test_database_down_refuses_paid_requests(transactional_db, alice, sim_node, sim):
    server = start_server(DATABASE_URL=f"postgres://postgres@127.0.0.1:{free_port()}/nowhere")
    try:
        response = httpx.post(f"{server.api}/chat/completions", headers=alice.auth(), json=CHAT, timeout=30)
    finally:
        server.process.stop()
    assert response.status_code == 503 and response.json()["error"]["code"] == "service_unavailable"
    assert sim.stats()["requests"] == 0
