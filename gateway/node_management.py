"""Cluster and model management under /v1: topology, health, load/unload/pull, jobs.

Who sees what:

- An operator (node token, ``nt_live_…``) sees and manages its own nodes only: the
  topology and health of every node it registered, whatever their status (base URL
  included, credentials never), and it loads, unloads and pulls models on them.
  Another operator's node is as absent as a missing one (404).
- A project (secret key) sees the network that may serve it, as ``GET /v1/nodes`` does:
  the active nodes eligible for it (verified attestation, or none where the project
  allows non-confidential nodes) that serve a priced model, healthy or not, grouped by
  region; never a base URL, credentials, name, hardware text or operator. It manages
  nothing: an API key on the load/unload/pull routes is refused (403).
- Publishable keys get none of it (403). Platform staff use Django admin (nodes/admin.py),
  whose actions call the same services.
- ``GET /v1/jobs/{id}``: the job's owner only: a secret key of the job's project, or a
  node token of the job's operator organization; any other caller gets 404.

None of this is on the paid path: the sync ORM runs through sync_to_async, off the loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from asgiref.sync import sync_to_async
from django.utils import timezone
from pydantic import BaseModel, ConfigDict, Field

from console import keys
from nodes import router
from nodes.adapters import NodeError

from .auth import KeyRecord, presented_key
from .catalog import catalog
from .context import ApiRequest, json_response
from .errors import GatewayError
from .nodes_api import authenticate_operator
from .schemas import parse_json, validate

# --- input -------------------------------------------------------------------------------


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


ModelName = Annotated[str, Field(min_length=1, max_length=200)]
Size = Annotated[int, Field(ge=1, le=100_000_000)]


class NodeModelRequest(_Closed):
    model: ModelName = Field(description="A model the node serves (its public name) or the backend's own name.")


class NodeModelServe(_Closed):
    """How to serve a pulled model: it is added to the node's served models under ``model``."""

    model: ModelName | None = Field(None, description="The public name clients use; default: the pulled name.")
    context_window: Size = 4096
    max_output_tokens: Size = 1024
    input_modalities: list[Annotated[str, Field(max_length=16)]] | None = Field(
        None, max_length=3, description="Any of `text`, `image`, `audio`; default `[\"text\"]`."
    )


class NodeModelPullRequest(_Closed):
    model: ModelName = Field(description="The backend's name for the model, e.g. `llama3.2:1b` on Ollama.")
    serve: NodeModelServe | None = Field(
        None,
        description="Serve the model once pulled, as described (`{}`: under the pulled name, with defaults); "
        "absent or null: only download it.",
    )


# --- who is calling ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Caller:
    operator_id: int | None = None
    key: KeyRecord | None = None


async def authenticate_caller(req: ApiRequest, *, scope: str | None) -> Caller:
    """A node token (an operator) or a secret API key (a project); publishable keys are refused."""
    raw = presented_key(req.headers)
    if raw is not None and keys.parse_node_token(raw) is not None:
        return Caller(operator_id=await authenticate_operator(req))
    return Caller(key=await req.authenticate(publishable_ok=False, scope=scope))


def _ts(moment) -> int | None:
    return int(moment.timestamp()) if moment else None


def _node_error(exc: NodeError, node_id: str, model: str) -> GatewayError:
    if exc.code == "unsupported":
        return GatewayError("unsupported_operation", f"Node {node_id}: {exc}.")
    if exc.permanent and exc.status == 404:
        return GatewayError("model_not_found", f"Node {node_id} has no model {model!r}: {exc}.", param="model")
    if exc.permanent:
        return GatewayError("invalid_request", f"Node {node_id} refused: {exc}.", param="model")
    return GatewayError("upstream_unavailable", f"Node {node_id} could not be reached or failed: {exc}.")


# --- jobs ----------------------------------------------------------------------------------


def _job_sync(caller: Caller, job_id: str, base_url: str) -> dict[str, Any]:
    from nodes.jobs import job_object
    from nodes.models import Job
    from nodes.selectors import job_for_owner

    from .images import images_body

    owner = {"operator_id": caller.operator_id} if caller.key is None else {"project_id": caller.key.project_id}
    try:
        job = job_for_owner(public_id=job_id, **owner)
    except Job.DoesNotExist:
        raise GatewayError("not_found", f"No such job: {job_id}.") from None
    if job.kind == Job.Kind.IMAGE and job.status == Job.Status.SUCCEEDED:
        return {**job_object(job, include_result=False), "result": images_body(job, base_url)}
    return job_object(job)


async def get_job(req: ApiRequest):
    caller = await authenticate_caller(req, scope=None)  # the project's own job, whatever made it
    base_url = str(req.request.base_url).rstrip("/")
    obj = await sync_to_async(_job_sync, thread_sensitive=True)(caller, req.request.path_params["job_id"], base_url)
    return json_response(req, orjson.dumps(obj))


# --- load, unload, pull ----------------------------------------------------------------------


def _operator_node(operator_id: int, node_id: str):
    from nodes.models import Node
    from nodes.selectors import operator_node

    try:
        return operator_node(operator_id=operator_id, public_id=node_id)
    except Node.DoesNotExist:
        raise GatewayError("not_found", f"No such node: {node_id}.") from None


async def _model_change(req: ApiRequest, action: str):
    from nodes import model_management

    operator_id = await authenticate_operator(req)
    node_id = req.request.path_params["node_id"]
    data = validate(NodeModelRequest, parse_json(await req.body()))
    node = await sync_to_async(_operator_node, thread_sensitive=True)(operator_id, node_id)
    call = model_management.model_load if action == "load" else model_management.model_unload
    try:
        loaded = await call(node=node, model=data.model)
    except NodeError as exc:
        raise _node_error(exc, node_id, data.model) from None
    payload = {"object": "node.model", "node": node_id, "model": data.model, "action": action, "models_loaded": loaded}
    return json_response(req, orjson.dumps(payload))


async def load_model(req: ApiRequest):
    return await _model_change(req, "load")


async def unload_model(req: ApiRequest):
    return await _model_change(req, "unload")


def _pull_sync(operator_id: int, node_id: str, data: NodeModelPullRequest) -> dict[str, Any]:
    from nodes.jobs import job_object
    from nodes.model_management import model_pull_create, supports

    node = _operator_node(operator_id, node_id)
    if not supports(node, "pull_model"):
        raise GatewayError(
            "unsupported_operation", f"Node {node_id} ({node.adapter}) cannot pull models; pull them on the backend itself."
        )
    serve = data.serve.model_dump() if data.serve is not None else None
    try:
        job = model_pull_create(node=node, model=data.model, serve=serve)
    except ValueError as exc:  # the node's operator owns the job, so only the modalities can be wrong
        raise GatewayError("invalid_request", f"Invalid value for 'serve.input_modalities': {exc}.",
                           param="serve.input_modalities") from None
    job.node = node
    return job_object(job)


async def pull_model(req: ApiRequest):
    operator_id = await authenticate_operator(req)
    node_id = req.request.path_params["node_id"]
    data = validate(NodeModelPullRequest, parse_json(await req.body()))
    obj = await sync_to_async(_pull_sync, thread_sensitive=True)(operator_id, node_id, data)
    return json_response(req, orjson.dumps(obj), status=202, headers={"location": f"/v1/jobs/{obj['id']}"})


# --- topology and health -------------------------------------------------------------------


def _operator_node_view(node, *, health_only: bool) -> dict[str, Any]:
    from nodes.selectors import node_members

    obj: dict[str, Any] = {
        "id": node.public_id,
        "name": node.name,
        "status": node.status,
        "healthy": node.healthy,
        "attestation": node.attestation,
        "attestation_expires_at": _ts(node.attestation_expires_at),
        "load": node.load,
        "queue_depth": node.queue_depth,
        "last_heartbeat_at": _ts(node.last_heartbeat_at),
        "last_probe_at": _ts(node.last_health_at),
        "consecutive_failures": node.consecutive_failures,
    }
    if not health_only:
        obj.update(
            base_url=node.base_url,
            adapter=node.adapter,
            hardware=node.hardware,
            gpus=node.gpus,
            models={"served": sorted(m.model for m in node.models.all()), "loaded": list(node.models_loaded or [])},
        )
    obj["members"] = node_members(node)
    return obj


def _operator_view_sync(operator_id: int, *, health_only: bool) -> list[dict[str, Any]]:
    from nodes.selectors import operator_nodes

    return [
        {**_operator_node_view(n, health_only=health_only), "region": n.region} for n in operator_nodes(operator_id=operator_id)
    ]


async def _project_view(key: KeyRecord, *, health_only: bool) -> list[dict[str, Any]]:
    """The active nodes eligible for the project that serve a priced model, healthy or not."""
    now = timezone.now()
    epoch = now.timestamp()
    nodes: dict[str, dict[str, Any]] = {}
    for entry in (await catalog.models()).values():
        if entry.price_at(now) is None:
            continue
        for served in entry.served_by:
            target = served.node
            if not router.eligible(served, allow_non_confidential=key.allow_non_confidential, now=epoch):
                continue
            obj = nodes.get(target.public_id)
            if obj is None:
                obj = nodes[target.public_id] = {
                    "id": target.public_id,
                    "region": target.region,
                    "healthy": target.healthy,
                    "attestation": target.attestation,
                    "load": router.load_of(served),
                }
                if not health_only:
                    obj.update(gpus=target.gpus, models=[])
            if not health_only:
                obj["models"].append(entry.name)
    for obj in nodes.values():
        if not health_only:
            obj["models"].sort()
    return sorted(nodes.values(), key=lambda o: (o["region"], o["id"]))


def _by_region(nodes: list[dict[str, Any]], *, counts: bool) -> list[dict[str, Any]]:
    regions: dict[str, dict[str, Any]] = {}
    for node in nodes:
        region = node.pop("region")
        group = regions.setdefault(region, {"region": region, "nodes": []})
        group["nodes"].append(node)
    if counts:
        for group in regions.values():
            healthy = sum(1 for n in group["nodes"] if n["healthy"])
            group.update(healthy=healthy, unhealthy=len(group["nodes"]) - healthy)
    return [regions[r] for r in sorted(regions)]


async def _view(req: ApiRequest, *, health_only: bool) -> tuple[str, list[dict[str, Any]]]:
    caller = await authenticate_caller(req, scope="models")
    if caller.key is not None:
        return "project", await _project_view(caller.key, health_only=health_only)
    nodes = await sync_to_async(_operator_view_sync, thread_sensitive=True)(caller.operator_id, health_only=health_only)
    return "operator", nodes


async def topology(req: ApiRequest):
    scope, nodes = await _view(req, health_only=False)
    payload = {"object": "node.topology", "scope": scope, "regions": _by_region(nodes, counts=False)}
    return json_response(req, orjson.dumps(payload))


async def health(req: ApiRequest):
    scope, nodes = await _view(req, health_only=True)
    healthy = sum(1 for n in nodes if n["healthy"])
    payload = {
        "object": "node.health",
        "scope": scope,
        "checked_at": int(timezone.now().timestamp()),
        "nodes": len(nodes),
        "healthy": healthy,
        "unhealthy": len(nodes) - healthy,
        "regions": _by_region(nodes, counts=True),
    }
    return json_response(req, orjson.dumps(payload))
