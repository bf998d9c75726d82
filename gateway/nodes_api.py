"""/v1/nodes: operators register nodes and push heartbeats; projects see the nodes that may serve them,
and the attestation evidence of each (``GET /v1/nodes/{id}/attestation``).

Operators authenticate with a node token (``nt_live_…``), never an API key; an API
key on an operator route is refused (403), and a node token is no API key anywhere
else (401). What a project sees of a node never includes its base URL, credentials,
operator or token, nor, for a cluster, its members: a cluster is one node to projects.
"""
from __future__ import annotations

import hmac
from typing import Annotated, Any
from urllib.parse import urlsplit

import orjson
from asgiref.sync import sync_to_async
from django.utils import timezone
from pydantic import BaseModel, ConfigDict, Field, field_validator

from config import asyncdb
from console import keys
from nodes import router
from nodes.adapters import ADAPTERS
from nodes.adapters.thox import ThoxAdapter, cluster_root
from nodes.heartbeat import node_heartbeat_record
from nodes.registry import NodeTarget

from .auth import presented_key
from .catalog import catalog
from .context import ApiRequest, json_response
from .errors import GatewayError
from .schemas import parse_json, validate

CLUSTER_ADAPTER = ThoxAdapter.kind

# --- input ---------------------------------------------------------------------------


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


Name = Annotated[str, Field(min_length=1, max_length=200)]


class NodeServedModel(_Closed):
    model: Name
    upstream_model: Name | None = None
    context_window: Annotated[int, Field(ge=1, le=100_000_000)] = 4096
    max_output_tokens: Annotated[int, Field(ge=1, le=100_000_000)] = 1024
    input_modalities: list[str] | None = None


class NodeRegisterRequest(_Closed):
    name: Name
    base_url: Annotated[str, Field(min_length=1, max_length=500)]
    adapter: str = "openai"
    region: Annotated[str, Field(min_length=1, max_length=64)] = "local"
    hardware: Annotated[str, Field(max_length=200)] = ""
    gpus: Annotated[int, Field(ge=0, le=100_000)] | None = None
    # At least one, except for a cluster (adapter "thox"), whose models are read from the cluster.
    models: Annotated[list[NodeServedModel], Field(max_length=1000)] = []
    credentials: Annotated[str, Field(max_length=8192)] | None = None
    # A Thox cluster's management API; default: the base URL's host on port 5381.
    cluster_url: Annotated[str, Field(min_length=1, max_length=500)] | None = None

    @field_validator("base_url", "cluster_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL with a host")
        return value.rstrip("/")

    @field_validator("adapter")
    @classmethod
    def _known_adapter(cls, value: str) -> str:
        if value not in ADAPTERS:
            raise ValueError(f"unknown adapter; use one of {', '.join(sorted(ADAPTERS))}")
        return value


class NodeHeartbeatRequest(_Closed):
    load: Annotated[float, Field(ge=0.0, le=1.0)]
    queue_depth: Annotated[int, Field(ge=0, le=2_147_483_647)] = 0
    models_loaded: Annotated[list[Annotated[str, Field(max_length=200)]], Field(max_length=1000)] = []


# --- node token --------------------------------------------------------------------------

_TOKEN_SQL = "SELECT organization_id, hash, status FROM nodes_nodetoken WHERE lookup = %(lookup)s"


async def authenticate_operator(req: ApiRequest) -> int:
    """The operator organization's id for the request's node token."""
    raw = presented_key(req.headers)
    if raw is None:
        raise GatewayError("unauthenticated", "No node token provided. Send it as 'Authorization: Bearer nt_live_…'.")
    if keys.parse(raw) is not None:
        raise GatewayError("permission_denied", "API keys cannot manage nodes; use a node token (nt_live_…).")
    parsed = keys.parse_node_token(raw)
    if parsed is None:
        raise GatewayError("invalid_api_key", "The node token is malformed.")
    try:
        row = await asyncdb.fetch_one(_TOKEN_SQL, {"lookup": parsed.lookup})
    except asyncdb.DatabaseUnavailable:
        raise GatewayError("service_unavailable", "The token store is unreachable; try again shortly.") from None
    if row is None or not hmac.compare_digest(keys.hash_key(raw), row[1]):
        raise GatewayError("invalid_api_key", "The node token is not valid.")
    if row[2] != "active":
        raise GatewayError("invalid_api_key", "The node token has been revoked.")
    return row[0]


# --- output ------------------------------------------------------------------------------


def operator_node_object(node) -> dict[str, Any]:
    """A node as its own operator sees it: everything but the credentials."""
    return {
        "id": node.public_id,
        "object": "node",
        "name": node.name,
        "base_url": node.base_url,
        "adapter": node.adapter,
        "region": node.region,
        "hardware": node.hardware,
        "gpus": node.gpus,
        "status": node.status,
        "attestation": node.attestation,
        "healthy": node.healthy,
        "load": node.load,
        "has_credentials": bool(node.credentials),
        "models": [
            {
                "model": m.model,
                "upstream_model": m.upstream_model,
                "context_window": m.context_window,
                "max_output_tokens": m.max_output_tokens,
                "input_modalities": m.input_modalities,
            }
            for m in sorted(node.models.all(), key=lambda m: m.model)
        ],
        "created_at": int(node.created_at.timestamp()),
        **(_cluster_fields(node) if node.adapter == CLUSTER_ADAPTER else {}),
    }


def _cluster_fields(node) -> dict[str, Any]:
    from nodes.selectors import node_members

    """A cluster's own API and its members: for its operator only, never in what projects see."""
    return {
        "cluster_url": node.cluster_url or cluster_root(node.base_url),
        "members": node_members(node),
    }


# --- handlers ------------------------------------------------------------------------------


def _register_sync(operator_id: int, data: NodeRegisterRequest) -> dict[str, Any]:
    from django.db import transaction

    from console.models import Organization
    from nodes.models import Node
    from nodes.services import node_register

    try:
        # The answer is read before commit: the attestation queued on commit cannot change it under us.
        with transaction.atomic():
            node = node_register(
            operator=Organization.objects.get(id=operator_id),
            name=data.name,
            base_url=data.base_url,
            adapter=data.adapter,
            region=data.region,
            hardware=data.hardware,
            gpus=data.gpus,
            models=[m.model_dump(exclude_none=True) for m in data.models],
            credentials=data.credentials,
            cluster_url=data.cluster_url or "",
            )
            return operator_node_object(Node.objects.prefetch_related("models", "members").get(id=node.id))
    except ValueError as exc:  # NodeConfigError names its field; the others are about models
        param = getattr(exc, "param", "models")
        raise GatewayError("invalid_request", f"Invalid value for '{param}': {exc}.", param=param) from None


async def register_node(req: ApiRequest):
    operator_id = await authenticate_operator(req)
    data = validate(NodeRegisterRequest, parse_json(await req.body()))
    names = [m.model for m in data.models]
    if not names and data.adapter != CLUSTER_ADAPTER:
        raise GatewayError("invalid_request", "Invalid value for 'models': list at least one model.", param="models")
    if data.adapter != CLUSTER_ADAPTER and data.cluster_url:
        raise GatewayError("invalid_request", "'cluster_url' is only for clusters (adapter 'thox').", param="cluster_url")
    if len(set(names)) != len(names):
        raise GatewayError("invalid_request", "Invalid value for 'models': a model is listed twice.", param="models")
    obj = await sync_to_async(_register_sync, thread_sensitive=True)(operator_id, data)
    return json_response(req, orjson.dumps(obj))


async def node_heartbeat(req: ApiRequest):
    operator_id = await authenticate_operator(req)
    node_id = req.request.path_params["node_id"]
    data = validate(NodeHeartbeatRequest, parse_json(await req.body()))
    now = timezone.now()
    try:
        status = await node_heartbeat_record(
            node_public_id=node_id, operator_id=operator_id, load=data.load, queue_depth=data.queue_depth,
            models_loaded=data.models_loaded, now=now,
        )
    except asyncdb.DatabaseUnavailable:
        raise GatewayError("service_unavailable", "The node registry is unreachable; try again shortly.") from None
    if status is None:  # another operator's node is as absent as a missing one
        raise GatewayError("not_found", f"No such node: {node_id}.")
    payload = {"id": node_id, "object": "node.heartbeat", "status": status, "healthy": True, "received_at": int(now.timestamp())}
    return json_response(req, orjson.dumps(payload))


def public_keys(target) -> dict[str, str] | None:
    """The keys a node's verified attestation bound (base64 raw): Ed25519 receipts, X25519 sealing."""
    if target.attestation != router.VERIFIED or not target.signing_key:
        return None
    return {"signing": target.signing_key, "encryption": target.encryption_key}


async def _visible_nodes(key) -> dict[str, tuple[NodeTarget, dict[str, Any]]]:
    """The nodes that may serve the caller's project now: active, healthy, eligible (attested,
    or non-confidential where the project allows it), serving a priced model; by public id,
    each with what the project is shown of it."""
    now = timezone.now()
    epoch = now.timestamp()
    nodes: dict[str, tuple[NodeTarget, dict[str, Any]]] = {}
    for entry in (await catalog.models()).values():
        if entry.price_at(now) is None:
            continue
        for served in entry.served_by:
            target = served.node
            if not target.healthy or not router.eligible(
                served, allow_non_confidential=key.allow_non_confidential, now=epoch
            ):
                continue
            if target.public_id not in nodes:
                nodes[target.public_id] = (target, {
                    "id": target.public_id,
                    "region": target.region,
                    "attestation": target.attestation,
                    "gpus": target.gpus,
                    "load": router.load_of(served),
                    "models": [],
                    "public_keys": public_keys(target),
                })
            nodes[target.public_id][1]["models"].append(entry.name)
    return nodes


async def list_nodes(req: ApiRequest):
    key = await req.authenticate(publishable_ok=False, scope="models")
    data = sorted((obj for _, obj in (await _visible_nodes(key)).values()), key=lambda o: o["id"])
    for obj in data:
        obj["models"].sort()
    return json_response(req, orjson.dumps({"object": "list", "data": data}))


_ATTESTATION_SQL = """
SELECT public_id, format, measurement, signing_key, encryption_key, root_fingerprint, nonce, evidence,
       issued_at, verified_at, expires_at
FROM nodes_attestation
WHERE node_id = %(node)s AND result = 'verified' AND expires_at > %(now)s
ORDER BY verified_at DESC, id DESC
LIMIT 1
"""


def _epoch(value: Any) -> int | None:
    moment = asyncdb.as_datetime(value)
    return int(moment.timestamp()) if moment else None


async def node_attestation(req: ApiRequest):
    """The latest verified evidence of a node the caller's project may use (GET /v1/nodes lists it),
    exactly as the node sent it, so anyone can check it again; any other node is not found."""
    key = await req.authenticate(publishable_ok=False, scope="models")
    node_id = req.request.path_params["node_id"]
    target, _ = (await _visible_nodes(key)).get(node_id, (None, None))
    if target is None:
        raise GatewayError("not_found", f"No such node: {node_id}.")
    if target.attestation != router.VERIFIED:
        raise GatewayError("not_found", f"Node {node_id} is not confidential: it has no attestation.")
    try:
        row = await asyncdb.fetch_one(_ATTESTATION_SQL, {"node": target.id, "now": timezone.now()})
    except asyncdb.DatabaseUnavailable:
        raise GatewayError("service_unavailable", "The node registry is unreachable; try again shortly.") from None
    if row is None:  # the catalog is a moment ahead of a reset
        raise GatewayError("not_found", f"Node {node_id} has no verified attestation right now.")
    evidence = row[7]
    if isinstance(evidence, (str, bytes)):  # SQLite hands JSON over as text
        evidence = orjson.loads(evidence)
    payload = {
        "object": "node.attestation",
        "id": row[0],
        "node": node_id,
        "result": "verified",
        "format": row[1],
        "measurement": row[2],
        "public_keys": {"signing": row[3], "encryption": row[4]},
        "root_fingerprint": row[5],
        "nonce": row[6],
        "issued_at": _epoch(row[8]),
        "verified_at": _epoch(row[9]),
        "expires_at": _epoch(row[10]),
        "evidence": evidence,
    }
    return json_response(req, orjson.dumps(payload))
