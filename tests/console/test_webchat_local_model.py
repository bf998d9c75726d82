"""Web Chat with the real local model (SmolLM2-135M through llama.cpp), as `make run`'s demo serves it:
the answer streams through the relay in several pieces and is stored at the cost the gateway settled."""
from __future__ import annotations

import pytest
from django.conf import settings

from billing.models import Transfer
from console.models import Message
from gateway.models import RequestRecord
from tests.conftest import cache_settle, start_local_node
from tests.console.test_webchat import answer_text, new_turn, read_stream, signed_in

pytestmark = [pytest.mark.model, pytest.mark.postgres, pytest.mark.redis]

# bootstrap_demo's price for the local chat model, micro-units per 1M tokens.
PRICE = {"input_per_mtok": 100_000, "cached_input_per_mtok": 50_000, "output_per_mtok": 200_000}


@pytest.fixture(scope="module")
def node_process():
    process, url = start_local_node()
    yield url
    process.stop()


def test_a_chat_turn_streams_a_real_answer(server, alice, node_process):
    from billing.services import price_publish
    from console.services import project_update
    from nodes.services import node_upsert

    model = settings.LOCAL_NODE_MODEL
    node_upsert(name="local node", base_url=f"{node_process}/v1", region="local",
                models=[{"model": model, "context_window": 512, "max_output_tokens": 64}])
    project_update(project=alice.project, allow_non_confidential=True)
    price_publish(model=model, **PRICE)
    cache_settle()

    client = signed_in(server, alice.user)
    turn = new_turn(client, "Name three colors.", model=model)
    response, events = read_stream(client, turn)
    assert response.status_code == 200
    deltas = [e for e in events if e["id"] and e["data"] != "[DONE]" and '"content"' in e["data"]]
    assert len(deltas) > 3  # streamed, not one block
    text = answer_text(events)
    assert text.strip()

    reply = Message.objects.get(turn_id=turn["turn_id"])
    record = RequestRecord.objects.get(request_id=reply.request_id)
    assert reply.status == "ok" and 0 < reply.output_tokens <= 64
    assert (reply.input_tokens, reply.output_tokens, reply.cost) == (record.input_tokens, record.output_tokens, record.cost)
    assert reply.cost == (record.input_tokens * 100_000 + record.output_tokens * 200_000) // 1_000_000
    assert Transfer.objects.get(id=record.transfer_id).amount == reply.cost
