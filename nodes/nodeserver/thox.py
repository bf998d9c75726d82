"""The Thox dialect: a MagStack-style edge cluster over any :class:`Engine`.

With ``--dialect thox`` the simulator serves the OpenAI inference API on its
port (a device's :8080) and a cluster API on a second port (``--cluster-port``,
a device's :5381), both over the same engine, so the Thox adapter and the
registry's cluster mapping are tested against real processes.

What is public and what is ours. Thox.ai documents the two ports and the
cluster routes ``GET /v1/topology``, ``/v1/cluster``, ``/v1/nodes``,
``/v1/health`` (www.thox.ai/docs/api, github.com/Thox-ai/magstack-sdk), and
only the start of one example (``/v1/topology``: ``cluster_id``,
``node_count``, ``leader``, ``nodes: [{"id", "role", "ram_gb", …}]``).
``/v1/models/load|unload|pull`` and every other field below are our reading,
not a verified spec:

* ``GET /v1/health``: ``{"status": "healthy"|"degraded"|"unhealthy", "cluster_id",
  "leader", "nodes_total", "nodes_online"}``; 503 when no member is online.
* ``GET /v1/topology``: ``{"cluster_id", "node_count", "leader", "nodes": [{"id",
  "role", "ram_gb", "tops", "status", "position"}], "links": [{"from", "to", "bus", "up"}]}``
  (a stack is a chain: each member is linked to the next over MS-Link).
* ``GET /v1/cluster``: ``{"cluster_id", "name", "status", "leader", "node_count",
  "nodes_online", "gpus", "total_tops", "total_ram_gb", "models": [{"id",
  "context_length", "nodes": [member ids holding it]}]}``.
* ``GET /v1/nodes``: ``{"object": "list", "nodes": [{"id", "hostname", "role",
  "status": "online"|"offline", "hardware", "gpus", "ram_gb", "tops", "load",
  "models_loaded", "last_seen"}]}``.
* ``POST /v1/models/load`` / ``unload`` ``{"model", "node"?}``: ``{"model",
  "status": "loaded"|"unloaded", "nodes": [member ids]}`` (every online member
  unless ``node`` names one).
* ``POST /v1/models/pull`` ``{"model"}``: NDJSON progress ``{"status":
  "pulling manifest"}``, ``{"status": "downloading", "completed", "total"}``…,
  ``{"status": "distributing", "node"}`` per online member, ``{"status":
  "success"}``; a download that breaks ends with ``{"status": "error", "error"}``.
  A name containing "missing" is a model the registry lacks: 404 before any progress.

Errors use the OpenAI envelope, like the inference API. Every member holds every
model (a pull is distributed to the online members). The leader is the first
online member in stack order, so it moves when the leader goes down. With no
member online the cluster is "unhealthy" and the inference API answers 503.

Test controls (``/_sim/config``, next to the engine's own settings):
``members_down`` (member ids), ``member_load`` (``{id: 0..1}``),
``pull_fail_after`` (download events before a pull breaks; null = never).
``/_sim/reset`` brings every member back; ``/_sim/stats`` adds ``cluster``.
"""
from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from .engines import ApiError, Control, Engine

DEFAULT_CLUSTER_PORT = 5381
DEFAULT_HARDWARE = "Thox Nova (Jetson Orin NX 16GB)"
MODEL_SIZE = 4_700_000_000  # bytes each simulated model "weighs"
PULL_STEPS = 4
CONTEXT_LENGTH = 8192  # what the cluster reports for every model
SETTINGS = ("members_down", "member_load", "pull_fail_after")


@dataclass
class Member:
    id: str
    hostname: str
    position: int
    hardware: str
    gpus: int
    ram_gb: int
    tops: int
    models_loaded: set[str] = field(default_factory=set)
    last_seen: datetime = field(default_factory=lambda: datetime.now(UTC))


def _cycle(values: Sequence[Any], count: int) -> list[Any]:
    return list(itertools.islice(itertools.cycle(values), count))


class Cluster:
    """The simulated stack: its members, which are down, their load, and pull failures."""

    def __init__(
        self,
        engine: Engine,
        *,
        members: int = 3,
        gpus: Sequence[int] = (1,),
        hardware: Sequence[str] = (DEFAULT_HARDWARE,),
        cluster_id: str = "ms-cluster-sim",
    ) -> None:
        if members < 1:
            raise ValueError("a cluster needs at least one member")
        if not gpus or any(g < 0 for g in gpus) or not hardware or not all(hardware):
            raise ValueError("member gpus must be >= 0 and hardware non-empty")
        self.engine = engine
        self.cluster_id = cluster_id
        self.count, self.gpus, self.hardware = members, list(gpus), list(hardware)
        self.reset()

    def reset(self) -> None:
        self.members = [
            Member(
                id=f"node-{i + 1:03d}", hostname=f"thox-{i + 1:03d}.local", position=i, hardware=hw, gpus=g,
                ram_gb=64 if "64GB" in hw else 16, tops=275 if "AGX" in hw else 100,
            )
            for i, (hw, g) in enumerate(zip(_cycle(self.hardware, self.count), _cycle(self.gpus, self.count)))
        ]
        self.down: set[str] = set()
        self.load: dict[str, float] = {}
        self.pull_fail_after: int | None = None

    # --- state -------------------------------------------------------------------

    def online(self) -> list[Member]:
        return [m for m in self.members if m.id not in self.down]

    def leader(self) -> str | None:
        online = self.online()
        return online[0].id if online else None

    def status(self) -> str:
        online = len(self.online())
        return "unhealthy" if not online else "healthy" if online == len(self.members) else "degraded"

    def member(self, member_id: str) -> Member:
        for m in self.members:
            if m.id == member_id:
                return m
        raise ApiError(404, f"No cluster node '{member_id}'.", code="node_not_found")

    def configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        known = {m.id for m in self.members}
        if "members_down" in changes:
            down = changes["members_down"]
            if not isinstance(down, list) or not set(down) <= known:
                raise ApiError(400, f"members_down must be a list of member ids from {sorted(known)}")
            self.down = set(down)
        if "member_load" in changes:
            load = changes["member_load"]
            if not isinstance(load, dict) or not set(load) <= known or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in load.values()
            ):
                raise ApiError(400, "member_load must map member ids to numbers in [0, 1]")
            self.load = {k: float(v) for k, v in load.items()}
        if "pull_fail_after" in changes:
            after = changes["pull_fail_after"]
            if after is not None and (isinstance(after, bool) or not isinstance(after, int) or after < 0):
                raise ApiError(400, "pull_fail_after must be an integer >= 0 or null")
            self.pull_fail_after = after
        now = datetime.now(UTC)
        for m in self.online():
            m.last_seen = now
        return self.settings()

    def settings(self) -> dict[str, Any]:
        return {"members_down": sorted(self.down), "member_load": self.load, "pull_fail_after": self.pull_fail_after}

    def role(self, member: Member) -> str:
        return "leader" if member.id == self.leader() else "worker"

    def _member_object(self, m: Member) -> dict[str, Any]:
        online = m.id not in self.down
        if online:
            m.last_seen = datetime.now(UTC)
        return {
            "id": m.id,
            "hostname": m.hostname,
            "role": self.role(m),
            "status": "online" if online else "offline",
            "hardware": m.hardware,
            "gpus": m.gpus,
            "ram_gb": m.ram_gb,
            "tops": m.tops,
            "load": self.load.get(m.id, 0.0) if online else 0.0,
            "models_loaded": sorted(m.models_loaded & set(self.engine.models)) if online else [],
            "last_seen": m.last_seen.isoformat(),
        }

    def snapshot(self) -> dict[str, Any]:
        return {"status": self.status(), "leader": self.leader(), "nodes": [self._member_object(m) for m in self.members]}

    # --- the control endpoints -------------------------------------------------------

    def wrap_controls(self, controls: dict[tuple[str, str], Control]) -> dict[tuple[str, str], Control]:
        """The engine's ``/_sim/*`` endpoints, taught the cluster's settings."""
        configure, reset, stats = controls[("POST", "/_sim/config")], controls[("POST", "/_sim/reset")], controls[("GET", "/_sim/stats")]

        def _configure(body: dict[str, Any]) -> dict[str, Any]:
            mine = {k: v for k, v in body.items() if k in SETTINGS}
            rest = {k: v for k, v in body.items() if k not in SETTINGS}
            engine_settings = configure(rest)
            return {**engine_settings, **self.configure(mine)}

        def _reset(body: dict[str, Any]) -> dict[str, Any]:
            self.reset()
            return {**reset(body), **self.settings()}

        return {
            **controls,
            ("POST", "/_sim/config"): _configure,
            ("POST", "/_sim/reset"): _reset,
            ("GET", "/_sim/stats"): lambda body: {**stats(body), "cluster": self.snapshot()},
        }


# --- the cluster API ------------------------------------------------------------------

CLUSTER = web.AppKey("thox_cluster", Cluster)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, code: str | None, type: str = "invalid_request_error") -> web.Response:
    body = {"error": {"message": message, "type": type, "code": code}}
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.message, exc.code, exc.type)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason, None)


def _cluster(request: web.Request) -> Cluster:
    return request.app[CLUSTER]


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError:
        raise ApiError(400, "The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


def _model_name(body: dict[str, Any]) -> str:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "'model' must be a model name.", code="invalid_value")
    return name


def _online_or_503(cluster: Cluster) -> list[Member]:
    online = cluster.online()
    if not online:
        raise ApiError(503, "No cluster node is online.", type="server_error", code="cluster_unavailable")
    return online


async def health(request: web.Request) -> web.Response:
    cluster = _cluster(request)
    status = cluster.status()
    body = {
        "status": status,
        "cluster_id": cluster.cluster_id,
        "leader": cluster.leader(),
        "nodes_total": len(cluster.members),
        "nodes_online": len(cluster.online()),
    }
    return _json(body, 503 if status == "unhealthy" else 200)


async def topology(request: web.Request) -> web.Response:
    cluster = _cluster(request)
    nodes = [
        {
            "id": m.id, "role": cluster.role(m), "ram_gb": m.ram_gb,
            "tops": m.tops, "status": "offline" if m.id in cluster.down else "online", "position": m.position,
        }
        for m in cluster.members
    ]
    links = [
        {"from": a.id, "to": b.id, "bus": "ms-link", "up": a.id not in cluster.down and b.id not in cluster.down}
        for a, b in itertools.pairwise(cluster.members)
    ]
    return _json(
        {"cluster_id": cluster.cluster_id, "node_count": len(nodes), "leader": cluster.leader(), "nodes": nodes, "links": links}
    )


async def cluster_status(request: web.Request) -> web.Response:
    cluster = _cluster(request)
    online = cluster.online()
    models = [
        {"id": name, "context_length": CONTEXT_LENGTH, "nodes": [m.id for m in cluster.members]}
        for name in cluster.engine.models
    ]
    return _json(
        {
            "cluster_id": cluster.cluster_id,
            "name": f"MagStack {cluster.cluster_id}",
            "status": cluster.status(),
            "leader": cluster.leader(),
            "node_count": len(cluster.members),
            "nodes_online": len(online),
            "gpus": sum(m.gpus for m in online),
            "total_tops": sum(m.tops for m in online),
            "total_ram_gb": sum(m.ram_gb for m in online),
            "models": models,
        }
    )


async def nodes(request: web.Request) -> web.Response:
    return _json({"object": "list", "nodes": _cluster(request).snapshot()["nodes"]})


def _targets(cluster: Cluster, body: dict[str, Any]) -> list[Member]:
    online = _online_or_503(cluster)
    member_id = body.get("node")
    if member_id is None:
        return online
    member = cluster.member(member_id) if isinstance(member_id, str) else None
    if member is None:
        raise ApiError(400, "'node' must be a cluster node id.", code="invalid_value")
    if member.id in cluster.down:
        raise ApiError(503, f"Cluster node '{member.id}' is offline.", type="server_error", code="node_offline")
    return [member]


async def load(request: web.Request) -> web.Response:
    return await _set_loaded(request, True)


async def unload(request: web.Request) -> web.Response:
    return await _set_loaded(request, False)


async def _set_loaded(request: web.Request, loaded: bool) -> web.Response:
    cluster = _cluster(request)
    body = await _body(request)
    name = _model_name(body)
    if name not in cluster.engine.models:
        raise ApiError(404, f"The model '{name}' is not on this cluster.", code="model_not_found")
    targets = _targets(cluster, body)
    for m in targets:
        (m.models_loaded.add if loaded else m.models_loaded.discard)(name)
    status = "loaded" if loaded else "unloaded"
    return _json({"model": name, "status": status, "nodes": [m.id for m in targets]})


async def pull(request: web.Request) -> web.StreamResponse:
    cluster = _cluster(request)
    name = _model_name(await _body(request))
    if "missing" in name:
        raise ApiError(404, f"The model '{name}' is not in the Thox model registry.", code="model_not_found")
    online = _online_or_503(cluster)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)

    async def send(event: dict[str, Any]) -> None:
        await response.write(orjson.dumps(event) + b"\n")
        await asyncio.sleep(0.005)  # a download takes a while: the client sees separate events

    await send({"status": "pulling manifest", "model": name})
    for step in range(1, PULL_STEPS + 1):
        if cluster.pull_fail_after is not None and step > cluster.pull_fail_after:
            await send({"status": "error", "error": "download interrupted: connection reset by registry"})
            await response.write_eof()
            return response
        await send({"status": "downloading", "model": name, "completed": MODEL_SIZE * step // PULL_STEPS, "total": MODEL_SIZE})
    for m in online:
        await send({"status": "distributing", "model": name, "node": m.id})
    if name not in cluster.engine.models:
        cluster.engine.models.append(name)
    await send({"status": "success", "model": name})
    await response.write_eof()
    return response


def build_cluster_app(cluster: Cluster, middlewares: Sequence[Any] = ()) -> web.Application:
    """The cluster API (a device's :5381)."""
    app = web.Application(middlewares=[_errors, *middlewares])
    app[CLUSTER] = cluster
    app.add_routes(
        [
            web.get("/v1/health", health),
            web.get("/v1/topology", topology),
            web.get("/v1/cluster", cluster_status),
            web.get("/v1/nodes", nodes),
            web.post("/v1/models/load", load),
            web.post("/v1/models/unload", unload),
            web.post("/v1/models/pull", pull),
        ]
    )
    return app


# --- the inference side -------------------------------------------------------------------

INFERENCE_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


def serving_guard(cluster: Cluster):
    """Inference needs an online member: with none, 503 like a device whose stack is down."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in INFERENCE_PATHS and not cluster.online():
            return _error(503, "No cluster node is online.", "cluster_unavailable", "server_error")
        return await handler(request)

    return guard
