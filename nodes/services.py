"""Registry writes: nodes, the models they serve, health, operators' node tokens, credentials."""
from __future__ import annotations

import re

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from config import bus, crypto
from config.ids import new_id
from console import keys

from . import clusters, registry
from .models import PROVIDER_ADAPTERS, Modality, Node, NodeHealthEvent, NodeModel, NodeToken
from .registry import NODES_TOPIC

_GPU_COUNT = re.compile(r"^\s*(\d+)\s*[x×]", re.IGNORECASE)


class NodeConfigError(ValueError):
    """A node that cannot be saved as asked; ``param`` names the field."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def is_provider(adapter: str) -> bool:
    """A hosted model API (OpenAI, Anthropic, an OpenAI-compatible provider): never confidential."""
    return adapter in PROVIDER_ADAPTERS


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
    gpus: int | None = None,
    public_id: str | None = None,
    operator=None,
    status: str = Node.Status.ACTIVE,
    cluster_url: str = "",
) -> Node:
    """Create or update a node and replace the list of models it serves.

    ``attestation`` says whether the node is confidential: ``unverified`` (it must attest
    before it serves; nodes.attestation.services) or ``none``. ``verified`` is refused: it
    is earned by attesting, never set. Updating a confidential node keeps the state it earned,
    unless its address or adapter changes: the machine there has proved nothing, so it is
    unverified until it attests again (callers queue that: node_register, the admin, the beat).

    ``models``: ``[{"model", "upstream_model"?, "context_window"?, "max_output_tokens"?,
    "input_modalities"?}]``; ``input_modalities`` is a list of :class:`Modality` values
    (default ``["text"]``). ``gpus`` defaults to the count in ``hardware`` ("8x H100" → 8).
    A provider node (:data:`PROVIDER_ADAPTERS`) is never attested: asking for another
    attestation than "none" raises NodeConfigError.
    """
    if is_provider(adapter) and attestation != Node.Attestation.NONE:
        raise NodeConfigError(
            "attestation", f"a {adapter} node is a hosted provider: it cannot be attested, its attestation is 'none'"
        )
    if attestation not in (Node.Attestation.NONE, Node.Attestation.UNVERIFIED):
        raise ValueError("attestation must be 'none' or 'unverified'; a node is verified only by attesting")
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
    fields = {
        "name": name,
        "base_url": base_url,
        "adapter": adapter,
        "region": region,
        "hardware": hardware,
        "gpus": gpus if gpus is not None else gpus_from_hardware(hardware),
        "operator": operator,
        "status": status,
        "cluster_url": cluster_url,
    }
    before = Node.objects.select_for_update().filter(**lookup).values("base_url", "adapter", "attestation").first()
    defaults = dict(fields)
    if before is not None:
        confidential = attestation != Node.Attestation.NONE
        moved = (before["base_url"], before["adapter"]) != (base_url, adapter)
        if confidential != (before["attestation"] != Node.Attestation.NONE) or (confidential and moved):
            # In the same write as the new address or adapter (a provider may never be attested, even for a moment).
            defaults.update(attestation=attestation, attestation_expires_at=None, signing_key="", encryption_key="")
    node, _ = Node.objects.update_or_create(**lookup, defaults=defaults, create_defaults={**fields, "attestation": attestation})
    node.models.all().delete()
    for row in rows:
        row.node = node
    NodeModel.objects.bulk_create(rows)
    _changed()
    return node


@transaction.atomic
def node_model_add(
    *,
    node: Node,
    model: str,
    upstream_model: str,
    context_window: int = 4096,
    max_output_tokens: int = 1024,
    input_modalities: list[str] | None = None,
) -> tuple[NodeModel, bool]:
    """Serve one more model on a node (a pulled one); a name the node already serves is left as it is.
    Returns the row and whether it was added."""
    row, created = NodeModel.objects.get_or_create(
        node=node,
        model=model,
        defaults={
            "upstream_model": upstream_model,
            "context_window": context_window,
            "max_output_tokens": max_output_tokens,
            "input_modalities": _input_modalities(input_modalities),
        },
    )
    if created:
        _changed()
    return row, created


@transaction.atomic
def node_set_status(*, node: Node, status: str) -> Node:
    node.status = status
    node.save(update_fields=["status"])
    _changed()
    return node


def node_record_health(*, node: Node, healthy: bool, now=None) -> bool:
    """Record one probe. A failure counts; NODE_UNHEALTHY_AFTER in a row mark the node
    unhealthy; one success marks it healthy again. A node that sent heartbeats and
    then fell silent for NODE_HEARTBEAT_STALE_SECONDS is unhealthy whatever its probe says.
    Returns the node's health now; routers everywhere hear of a change."""
    now = now or timezone.now()
    stale = node.last_heartbeat_at is not None and (
        (now - node.last_heartbeat_at).total_seconds() > settings.NODE_HEARTBEAT_STALE_SECONDS
    )
    with transaction.atomic():
        locked = Node.objects.select_for_update().only("healthy", "consecutive_failures").get(id=node.id)
        failures = 0 if healthy else locked.consecutive_failures + 1
        now_healthy = not stale and (healthy or (locked.healthy and failures < settings.NODE_UNHEALTHY_AFTER))
        Node.objects.filter(id=node.id).update(healthy=now_healthy, consecutive_failures=failures, last_health_at=now)
        if now_healthy != locked.healthy:
            if now_healthy:
                reason = "probe succeeded"
            elif stale:
                reason = "heartbeats stopped"
            else:
                reason = f"{failures} probes failed in a row"
            node_health_changed(node_id=node.id, healthy=now_healthy, reason=reason, at=now)
            transaction.on_commit(lambda: bus.publish(NODES_TOPIC, node.public_id))
    return now_healthy


def node_health_changed(*, node_id: int, healthy: bool, reason: str, at=None) -> NodeHealthEvent:
    """Record that a node's health flipped (the status page's incidents are built from these).
    Called by whatever flips it: the probe (``node_record_health``) and a heartbeat that brings
    an unhealthy node back (``nodes.heartbeat``)."""
    return NodeHealthEvent.objects.create(node_id=node_id, healthy=healthy, reason=reason[:200], at=at or timezone.now())


def gpus_from_hardware(hardware: str) -> int:
    match = _GPU_COUNT.match(hardware or "")
    return int(match.group(1)) if match else 0


@transaction.atomic
def node_register(
    *,
    operator,
    name: str,
    base_url: str,
    models: list[dict],
    adapter: str = "openai",
    region: str = "local",
    hardware: str = "",
    gpus: int | None = None,
    credentials: str | None = None,
    cluster_url: str = "",
) -> Node:
    """An operator registers (or re-registers) a node; idempotent by (operator, name).

    A new node starts active and unverified, and its first attestation is queued for
    after commit. Re-registering keeps what admins and the attestation task decided
    (status, attestation): an operator cannot re-enable a node an admin disabled by
    registering it again, nor set its attestation. It is attested again, and if its
    address or adapter changed it serves nobody until it passes: the attested machine
    is not known to be the one at the new address. A provider node (a hosted API) has
    attestation "none" whatever it was, and needs credentials (its API key). A cluster
    (adapter "thox") is read once the registration is committed (nodes.clusters): its
    members, gpus, load and models.
    """
    from .attestation.services import attestation_enqueue

    existing = (
        Node.objects.select_for_update().filter(operator=operator, name=name)
        .only("public_id", "status", "attestation", "adapter", "credentials").first()
    )
    if is_provider(adapter):
        attestation = Node.Attestation.NONE
        if not credentials and not (existing and existing.credentials):
            raise NodeConfigError("credentials", f"a {adapter} node needs credentials: the provider API key")
    elif existing and not is_provider(existing.adapter) and existing.attestation == Node.Attestation.NONE:
        attestation = Node.Attestation.NONE  # an admin made it non-confidential; it stays so
    else:  # new, or a provider becoming a self-hosted node: it must prove itself first
        attestation = Node.Attestation.UNVERIFIED
    if adapter == clusters.KIND and not models and existing:  # a cluster's models come from the cluster: keep them
        models = list(existing.models.values("model", "upstream_model", "context_window", "max_output_tokens", "input_modalities"))
    node = node_upsert(
        name=name,
        base_url=base_url,
        models=models,
        adapter=adapter,
        region=region,
        hardware=hardware,
        gpus=gpus,
        operator=operator,
        # Never looked up by base_url: that could adopt a node someone else added.
        public_id=existing.public_id if existing else new_id("node"),
        attestation=attestation,
        status=existing.status if existing else Node.Status.ACTIVE,
        cluster_url=cluster_url,
    )
    if credentials is not None:
        node_credentials_set(node=node, credentials=credentials)
    if adapter == clusters.KIND:
        clusters.cluster_sync_enqueue(node=node)
    if node.attestation != Node.Attestation.NONE:
        attestation_enqueue(node=node)
    return node


def node_credentials_set(*, node: Node, credentials: str | None) -> None:
    """Store the secret the adapter sends upstream (as Authorization), sealed; None or "" clears it."""
    sealed = (
        crypto.seal(registry.CREDENTIALS_PURPOSE, credentials.encode(), registry.credentials_aad(node.public_id))
        if credentials else None
    )
    Node.objects.filter(id=node.id).update(credentials=sealed)
    node.credentials = sealed
    _changed()


def node_credentials(*, node: Node) -> str | None:
    """The node's upstream credentials in clear, or None."""
    sealed = Node.objects.filter(id=node.id).values_list("credentials", flat=True).first()
    return registry.open_credentials(node.public_id, sealed)


@transaction.atomic
def node_token_create(*, organization, name: str = "", created_by=None) -> tuple[NodeToken, str]:
    """A node token for an operator organization; the plaintext is returned once and never stored."""
    new = keys.generate(keys.NODE_TOKEN)
    token = NodeToken.objects.create(
        organization=organization, name=name, lookup=new.lookup, hash=new.hash, last4=new.last4, created_by=created_by
    )
    return token, new.plaintext


@transaction.atomic
def node_token_revoke(*, token: NodeToken) -> NodeToken:
    # Tokens are looked up on every node call (no cache), so a revocation holds at once.
    if NodeToken.objects.filter(id=token.id, status=NodeToken.Status.ACTIVE).update(
        status=NodeToken.Status.REVOKED, revoked_at=timezone.now()
    ):
        token.refresh_from_db(fields=["status", "revoked_at"])
    return token
