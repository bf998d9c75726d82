"""What the gateway needs to know about nodes, loaded without the sync ORM."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from config import asyncdb, crypto

NODES_TOPIC = "nodes"
# "<node id>:<load>" from a heartbeat: routers update their view of the load without
# reloading the catalog (heartbeats are frequent; NODES_TOPIC reloads everything).
LOAD_TOPIC = "node-load"
CREDENTIALS_PURPOSE = "node-credentials"


def credentials_aad(public_id: str) -> bytes:
    """Binds sealed credentials to their node: moved to another row, they do not open."""
    return f"node:{public_id}".encode()


def open_credentials(public_id: str, sealed: bytes | memoryview | None) -> str | None:
    if not sealed:
        return None
    return crypto.open_sealed(CREDENTIALS_PURPOSE, bytes(sealed), credentials_aad(public_id)).decode()


@dataclass(frozen=True, slots=True)
class NodeTarget:
    id: int
    public_id: str
    base_url: str
    adapter: str
    region: str
    attestation: str
    healthy: bool
    load: float = 0.0  # as last reported by the node's heartbeat, 0..1
    gpus: int = 0
    attested_until: float | None = None  # epoch seconds; a verified attestation is stale after it
    # The keys the node's verified attestation bound (base64 raw): Ed25519 receipts, X25519 sealing.
    signing_key: str | None = None
    encryption_key: str | None = None
    # What the adapter sends upstream as Authorization; in memory only, never in a repr or a log.
    credentials: str | None = field(default=None, repr=False)
    # A Thox cluster's management API (Node.cluster_url); "" = the base URL's host on port 5381.
    # Set where targets are built from Node rows (nodes.tasks); inference never needs it.
    cluster_url: str = ""


@dataclass(frozen=True, slots=True)
class ServedModel:
    model: str
    upstream_model: str
    context_window: int
    max_output_tokens: int
    node: NodeTarget
    # Input kinds the model accepts: "text", "image", "audio" (NodeModel.input_modalities).
    modalities: frozenset[str] = frozenset({"text"})


_SERVED_SQL = """
SELECT n.id, n.public_id, n.base_url, n.adapter, n.region, n.attestation, n.healthy, n.load, n.gpus,
       m.model, m.upstream_model, m.context_window, m.max_output_tokens, m.input_modalities, n.credentials,
       n.attestation_expires_at, n.signing_key, n.encryption_key
FROM nodes_node n JOIN nodes_nodemodel m ON m.node_id = n.id
WHERE n.status = 'active'
ORDER BY m.model, n.id
"""


def _modalities(value: Any) -> frozenset[str]:
    """PostgreSQL hands jsonb over decoded; SQLite hands over the JSON text."""
    if isinstance(value, (str, bytes)):
        value = orjson.loads(value)
    return frozenset(value)


def _epoch(value: Any) -> float | None:
    moment = asyncdb.as_datetime(value)
    return moment.timestamp() if moment else None


async def served_models() -> list[ServedModel]:
    (result,) = await asyncdb.run(asyncdb.Stmt(_SERVED_SQL, fetch=True))
    nodes: dict[int, NodeTarget] = {}  # one target per node, its credentials opened once
    out = []
    for row in result.rows:
        node = nodes.get(row[0])
        if node is None:
            node = nodes[row[0]] = NodeTarget(
                *row[:6], healthy=bool(row[6]), load=float(row[7]), gpus=row[8],
                attested_until=_epoch(row[15]), credentials=open_credentials(row[1], row[14]),
                signing_key=row[16] or None, encryption_key=row[17] or None,
            )
        out.append(ServedModel(
            model=row[9], upstream_model=row[10], context_window=row[11], max_output_tokens=row[12], node=node,
            modalities=_modalities(row[13]),
        ))
    return out


def target_for(node) -> NodeTarget:
    """A :class:`NodeTarget` from a ``nodes.Node`` row, for work off the hot path (probes, cluster
    sync, attestation, model management, jobs on a worker)."""
    return NodeTarget(
        id=node.id,
        public_id=node.public_id,
        base_url=node.base_url,
        adapter=node.adapter,
        region=node.region,
        attestation=node.attestation,
        healthy=node.healthy,
        load=node.load,
        gpus=node.gpus,
        attested_until=node.attestation_expires_at.timestamp() if node.attestation_expires_at else None,
        credentials=open_credentials(node.public_id, node.credentials),
        signing_key=node.signing_key or None,
        encryption_key=node.encryption_key or None,
        cluster_url=node.cluster_url,
    )
