"""Prometheus metrics of this process, served at ``/metrics`` (config/ops.py).

Each ASGI process keeps and exposes its own registry: they are separate services (one uvicorn
process per core, each on its own port or pod), not forked workers of one master, so Prometheus
scrapes every process and sums with ``sum by (...)``. The multiprocess mode of prometheus_client
(mmap files shared by forked workers) would add a file write per observation to the hot path
and cannot represent the per-process gauges (streams open, node breakers) without extra rules.

Hot-path cost: a request records one histogram observation and one counter increment through
children cached per (route, method, status); tokens and reservations are two or three more
increments per paid request. Node health is read at scrape time from this process's model
catalog and breakers: no I/O, nothing on the request path.
"""
from __future__ import annotations

import os
import socket
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# The name this process gives itself (X-Served-By, logs): PROCESS_NAME, else host:pid.
PROCESS_NAME = os.environ.get("PROCESS_NAME") or f"{socket.gethostname()}:{os.getpid()}"

registry = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "platform_http_requests", "HTTP requests answered, by route template and status.",
    ["route", "method", "status"], registry=registry,
)
LATENCY = Histogram(
    "platform_http_request_duration_seconds",
    "Time from the request's arrival to its last byte (a stream counts until it ends).",
    ["route", "method"], registry=registry,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
TOKENS = Counter(
    "platform_tokens", "Tokens settled (billed), by model and direction (input/output).",
    ["model", "direction"], registry=registry,
)
RESERVATIONS_OPEN = Gauge(
    "platform_reservations_open", "Reservations this process holds and has not settled or voided yet.",
    registry=registry,
)
STREAMS_OPEN = Gauge(
    "platform_streams_open", "Streams this process is relaying from a node (not yet finished).", registry=registry,
)
DRAINING = Gauge("platform_draining", "1 once this process has been told to stop (readiness is 503).", registry=registry)
STARTED = Gauge("platform_process_start_time_seconds", "When this process started (epoch).", registry=registry)
STARTED.set(time.time())

_children: dict[tuple[str, str, int], tuple] = {}


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    key = (route, method, status)
    pair = _children.get(key)
    if pair is None:
        pair = _children[key] = (REQUESTS.labels(route, method, str(status)), LATENCY.labels(route, method))
    pair[0].inc()
    pair[1].observe(seconds)


def tokens_settled(model: str, input_tokens: int, output_tokens: int) -> None:
    if input_tokens:
        TOKENS.labels(model, "input").inc(input_tokens)
    if output_tokens:
        TOKENS.labels(model, "output").inc(output_tokens)


class NodeCollector:
    """Per node, as this process sees it at scrape time: up (healthy per the fleet probe and this
    process's breaker closed), the load the node last reported, and requests in flight to it."""

    def __init__(self) -> None:
        self._last: dict = {}  # the catalog's last loaded models (it drops them on an invalidation)

    def describe(self):
        return self._families()

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        labels = ["node", "region"]
        return (
            GaugeMetricFamily("platform_node_up", "1 if the node gets traffic from this process.", labels=labels),
            GaugeMetricFamily("platform_node_load", "The load the node last reported (0..1).", labels=labels),
            GaugeMetricFamily("platform_node_inflight", "Requests this process has open to the node.", labels=labels),
        )

    def collect(self):
        from gateway.catalog import catalog
        from nodes import router

        models = catalog._models
        if models is not None:
            self._last = models

        up, load, inflight = self._families()
        seen = set()
        now = time.monotonic()
        for entry in self._last.values():
            for served in entry.served_by:
                node = served.node
                if node.id in seen:
                    continue
                seen.add(node.id)
                labels = [node.public_id, node.region]
                up.add_metric(labels, 1.0 if node.healthy and router.usable(node.id, now) else 0.0)
                load.add_metric(labels, router.load_of(served))
                inflight.add_metric(labels, router._inflight.get(node.id, 0))
        yield up
        yield load
        yield inflight


registry.register(NodeCollector())


def exposition() -> tuple[bytes, str]:
    return generate_latest(registry), CONTENT_TYPE_LATEST
