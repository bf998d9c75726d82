"""A revoked key stops working on every server process within a second."""
import time

import httpx
import pytest

from console import services
from console.models import ApiKey
from tests.conftest import SIM_MODEL

CHAT = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.redis
def test_revocation_reaches_every_process_within_one_second(live_server_proc, second_server_proc, alice, sim_node):
    servers = [live_server_proc, second_server_proc]
    for server in servers:  # both processes now hold the key in their caches
        assert httpx.post(f"{server.api}/chat/completions", headers=alice.auth(), json=CHAT).status_code == 200

    services.api_key_revoke(key=ApiKey.objects.get(project=alice.project, kind="secret"))
    revoked_at = time.monotonic()
    pending = set(range(len(servers)))
    while pending and time.monotonic() - revoked_at < 1.0:
        for i in list(pending):
            if httpx.get(f"{servers[i].api}/models", headers=alice.auth()).status_code == 401:
                pending.discard(i)
    assert not pending, f"processes {pending} still accepted the key after 1 s"
    for server in servers:
        response = httpx.post(f"{server.api}/chat/completions", headers=alice.auth(), json=CHAT)
        assert response.status_code == 401 and "revoked" in response.json()["error"]["message"]
