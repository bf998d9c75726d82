"""The registry as the gateway reads it: served models loaded through the async raw-SQL path."""
import pytest

from nodes.registry import served_models
from nodes.services import node_upsert
from tests.conftest import run_async


def test_served_models_carry_their_input_modalities(transactional_db):
    node = node_upsert(
        name="vision",
        base_url="http://10.0.0.9:8000/v1",
        models=[
            {"model": "plain"},
            {"model": "seeing", "input_modalities": ["image", "text", "image"]},
            {"model": "omni", "upstream_model": "omni-7b", "input_modalities": ["audio", "image", "text"]},
        ],
    )
    assert list(node.models.order_by("model").values_list("model", "input_modalities")) == [
        ("omni", ["text", "image", "audio"]),
        ("plain", ["text"]),
        ("seeing", ["text", "image"]),
    ]
    served = {s.model: s for s in run_async(served_models())}
    assert served["plain"].modalities == frozenset({"text"})
    assert served["seeing"].modalities == frozenset({"text", "image"})
    assert served["omni"].modalities == frozenset({"text", "image", "audio"})
    assert served["omni"].upstream_model == "omni-7b" and served["omni"].node.public_id == node.public_id

    node_upsert(name="vision", base_url="http://10.0.0.9:8000/v1", models=[{"model": "plain", "input_modalities": ["audio"]}])
    assert [(s.model, s.modalities) for s in run_async(served_models())] == [("plain", frozenset({"audio"}))]


@pytest.mark.parametrize("bad", [["text", "video"], [], "text", [1]])
def test_unknown_or_malformed_modalities_are_refused(transactional_db, bad):
    with pytest.raises(ValueError):
        node_upsert(name="n", base_url="http://10.0.0.9:8000/v1", models=[{"model": "m", "input_modalities": bad}])
    from nodes.models import Node

    assert not Node.objects.exists()
