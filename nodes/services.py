"""Registry writes: nodes, the models they serve, health."""
from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from config import bus

from .models import Modality, Node, NodeModel
from .registry import NODES_TOPIC


def _changed() -> None:
    transaction.on_commit(lambda: bus.publish(NODES_TOPIC, "*"))


def _input_modalities(value: list[str] | None) -> list[str]:
    """A checked, de-duplicated list in a stable order; ValueError names what is wrong."""
    if value is None:
        return [Modality.TEXT.value]
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ValueError("input_modalities must be a list of strings")
    if unknown := set(value) - set(Modality.values):
        raise ValueError(f"unknown input modality {', '.join(sorted(unknown))}; use {', '.join(Modality.values)}")
    if not value:
        raise ValueError("input_modalities must not be empty")
    return [m for m in Modality.values if m in value]


@transaction.atomic
def node_upsert(
    *,
    name: str,
    base_url: str,
    models: list[dict],
    adapter: str = "openai",
    region: str = "local",
    attestation: str = Node.Attestation.NONE,
    hardware: str = "",
    public_id: str | None = None,
    operator=None,
) -> Node:
    """Create or update a node and replace the list of models it serves.

    ``models``: ``[{"model", "upstream_model"?, "context_window"?, "max_output_tokens"?,
    "input_modalities"?}]``; ``input_modalities`` is a list of :class:`Modality` values
    (default ``["text"]``).
    """
    rows = [
        NodeModel(
            model=m["model"],
            upstream_model=m.get("upstream_model", m["model"]),
            context_window=m.get("context_window", 4096),
            max_output_tokens=m.get("max_output_tokens", 1024),
            input_modalities=_input_modalities(m.get("input_modalities")),
        )
        for m in models
    ]
    lookup = {"public_id": public_id} if public_id else {"base_url": base_url, "name": name}
    node, _ = Node.objects.update_or_create(
        **lookup,
        defaults={
            "name": name,
            "base_url": base_url,
            "adapter": adapter,
            "region": region,
            "attestation": attestation,
            "hardware": hardware,
            "operator": operator,
            "status": Node.Status.ACTIVE,
        },
    )
    node.models.all().delete()
    for row in rows:
        row.node = node
    NodeModel.objects.bulk_create(rows)
    _changed()
    return node


@transaction.atomic
def node_set_status(*, node: Node, status: str) -> Node:
    node.status = status
    node.save(update_fields=["status"])
    _changed()
    return node


def node_record_health(*, node: Node, healthy: bool) -> None:
    changed = Node.objects.filter(id=node.id).exclude(healthy=healthy).update(healthy=healthy)
    Node.objects.filter(id=node.id).update(last_health_at=timezone.now())
    if changed:
        bus.publish(NODES_TOPIC, node.public_id)
