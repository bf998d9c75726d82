"""Thox-style edge clusters: inference through the OpenAI-compatible API, the cluster through its own.

A Thox.ai device (MagStack: devices that stack into a cluster) answers inference
on :8080 (``base_url`` = ``http://host:8080/v1``, served by whichever member the
cluster picks) and cluster management on :5381: ``GET /v1/topology``,
``/v1/cluster``, ``/v1/nodes``, ``/v1/health``, ``POST /v1/models/load``,
``/unload``, ``/pull``. The cluster API's root is ``NodeTarget.cluster_url``
(``Node.cluster_url``), or, when that is empty, the base URL's scheme and host on
port 5381. Both APIs get the node's credentials as ``Authorization: Bearer``.

The response shapes are our reading of Thox's published docs, not a verified
spec (see ``nodes/nodeserver/thox.py`` for each one, and the README). They are
parsed leniently (unknown fields ignored) but a response missing what we rely on
(member ids, a cluster id) is a retryable NodeError, like any broken node.

Management errors: 404 (no such model, no such member) and 400-class answers
are permanent; 503 (no member online, member offline), other 5xx, connection
failures and a pull that breaks mid-download are retryable.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nodes import http

from .base import NodeError, register
from .openai import OpenAICompatibleAdapter, _error_from, _timeout

DEFAULT_CLUSTER_PORT = 5381
PULL_IDLE_SECONDS = 300  # a pull may go quiet this long (a large download) before it counts as stuck
SERVING = ("healthy", "degraded")  # /v1/health statuses in which the cluster answers requests


def cluster_root(base_url: str, cluster_url: str = "") -> str:
    """The cluster API's root: ``cluster_url`` if set, else the inference host on port 5381."""
    if cluster_url:
        return cluster_url.rstrip("/")
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    return f"{parts.scheme or 'http'}://{host}:{DEFAULT_CLUSTER_PORT}"


# --- what the cluster API answers -----------------------------------------------------


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ClusterMember(_Lenient):
    """One device in the stack, as ``GET /v1/nodes`` reports it."""

    id: Annotated[str, Field(min_length=1, max_length=64)]
    hostname: str = ""
    role: str = "worker"
    status: str = "online"
    hardware: str = ""
    gpus: Annotated[int, Field(ge=0)] = 0
    ram_gb: Annotated[float, Field(ge=0)] = 0
    load: float = 0.0
    models_loaded: list[str] = []
    last_seen: datetime | None = None

    @field_validator("load")
    @classmethod
    def _clamped(cls, value: float) -> float:
        return min(max(value, 0.0), 1.0)

    @field_validator("status", "role")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.strip().lower()

    @property
    def online(self) -> bool:
        return self.status == "online"


class ClusterModel(_Lenient):
    id: Annotated[str, Field(min_length=1, max_length=200)]
    context_length: Annotated[int, Field(ge=1)] | None = None
    nodes: list[str] | None = None  # the members holding it; None = the cluster as a whole


class ClusterInfo(_Lenient):
    """``GET /v1/cluster``."""

    cluster_id: Annotated[str, Field(min_length=1)]
    name: str = ""
    status: str = "healthy"
    leader: str | None = None
    models: list[ClusterModel] = []


class TopologyNode(_Lenient):
    id: str
    role: str = "worker"


class Topology(_Lenient):
    """``GET /v1/topology``."""

    cluster_id: Annotated[str, Field(min_length=1)]
    node_count: int = 0
    leader: str | None = None
    nodes: list[TopologyNode] = []
    links: list[dict[str, Any]] = []


class _Members(_Lenient):
    nodes: list[ClusterMember]


@dataclass(frozen=True)
class ClusterSnapshot:
    """What the registry keeps of a cluster: its members (roles from the topology) and its models."""

    cluster_id: str
    name: str
    leader: str | None
    members: tuple[ClusterMember, ...]
    models: tuple[ClusterModel, ...]

    @property
    def online(self) -> tuple[ClusterMember, ...]:
        return tuple(m for m in self.members if m.online)

    @property
    def serving(self) -> bool:
        return bool(self.online)

    def served_models(self) -> list[ClusterModel]:
        """The models some online member holds (all of them when the cluster does not say who holds what)."""
        up = {m.id for m in self.online}
        return [m for m in self.models if up and (m.nodes is None or up.intersection(m.nodes))]


def _parse(schema: type[BaseModel], data: Any, what: str):
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise NodeError(f"thox {what} is malformed at {where or 'the top'}: {first['msg']}", permanent=False) from None


def _management_error(status: int, raw: bytes) -> NodeError:
    error = _error_from(status, raw)
    if status == 404:  # no such model or member: asking again cannot make it appear
        error.permanent = True
    return error


@register
class ThoxAdapter(OpenAICompatibleAdapter):
    kind = "thox"

    @property
    def cluster_url(self) -> str:
        return cluster_root(self.target.base_url, self.target.cluster_url)

    async def _cluster_json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = orjson.dumps(body) if body is not None else None
        try:
            async with http.session().request(
                method, self.cluster_url + path, data=data, headers=self._json, timeout=_timeout()
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise _management_error(resp.status, raw)
                return orjson.loads(raw)
        except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError) as exc:
            raise NodeError(f"thox cluster API unreachable or broken: {exc.__class__.__name__}", permanent=False) from exc

    # --- the cluster ---------------------------------------------------------------

    async def health(self) -> bool:
        """The cluster answers requests: ``/v1/health`` says healthy or degraded (some member online)."""
        try:
            answer = await self._cluster_json("GET", "/v1/health")
        except NodeError:
            return False
        return isinstance(answer, dict) and answer.get("status") in SERVING

    async def topology(self) -> Topology:
        return _parse(Topology, await self._cluster_json("GET", "/v1/topology"), "topology")

    async def cluster(self) -> ClusterInfo:
        return _parse(ClusterInfo, await self._cluster_json("GET", "/v1/cluster"), "cluster status")

    async def members(self) -> list[ClusterMember]:
        return _parse(_Members, await self._cluster_json("GET", "/v1/nodes"), "node list").nodes

    async def snapshot(self) -> ClusterSnapshot:
        """The cluster, its members and their roles, read in one go (three calls at once)."""
        info, members, topology = await asyncio.gather(self.cluster(), self.members(), self.topology())
        roles = {n.id: n.role.strip().lower() for n in topology.nodes}
        leader = topology.leader or info.leader
        members = [
            m.model_copy(update={"role": "leader" if m.id == leader else roles.get(m.id, m.role)}) for m in members
        ]
        if len({m.id for m in members}) != len(members):
            raise NodeError("thox node list names a member twice", permanent=False)
        return ClusterSnapshot(
            cluster_id=info.cluster_id, name=info.name, leader=leader, members=tuple(members), models=tuple(info.models)
        )

    # --- models --------------------------------------------------------------------

    async def load_model(self, name: str, member: str | None = None) -> list[str]:
        """Load on every online member (or on ``member``); the members that loaded it."""
        return await self._load("/v1/models/load", name, member)

    async def unload_model(self, name: str, member: str | None = None) -> list[str]:
        return await self._load("/v1/models/unload", name, member)

    async def _load(self, path: str, name: str, member: str | None) -> list[str]:
        body: dict[str, Any] = {"model": name} if member is None else {"model": name, "node": member}
        answer = await self._cluster_json("POST", path, body)
        nodes = answer.get("nodes") if isinstance(answer, dict) else None
        if not isinstance(nodes, list):
            raise NodeError(f"thox {path} answered without the members it changed", permanent=False)
        return [str(n) for n in nodes]

    async def pull_model(self, name: str) -> AsyncIterator[dict[str, Any]]:
        """NDJSON progress as ``{"status", "completed"?, "total"?}``, ending with status "success".

        The model missing from Thox's registry is a 404 before any progress (permanent);
        a download that breaks (``{"status": "error"}``) or a stream that ends before
        "success" is retryable.
        """
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.GATEWAY_UPSTREAM_CONNECT_SECONDS, sock_read=PULL_IDLE_SECONDS
        )
        body = orjson.dumps({"model": name})
        try:
            async with http.session().post(
                self.cluster_url + "/v1/models/pull", data=body, headers=self._json, timeout=timeout
            ) as resp:
                if resp.status >= 400:
                    raise _management_error(resp.status, await resp.read())
                async for event in http.ndjson(resp):
                    if not isinstance(event, dict):
                        raise NodeError("thox pull sent something other than a JSON object", permanent=False)
                    if event.get("status") == "error" or "error" in event:
                        raise NodeError(f"thox pull of {name} broke: {event.get('error')}", permanent=False)
                    yield {k: event[k] for k in ("status", "completed", "total") if k in event}
                    if event.get("status") == "success":
                        return
        except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError) as exc:
            raise NodeError(f"thox pull broke: {exc.__class__.__name__}", permanent=False) from exc
        raise NodeError(f"thox pull of {name} ended before it succeeded", permanent=False)
