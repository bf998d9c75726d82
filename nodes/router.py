"""Which nodes may serve a request, and the order in which to try them.

Eligible: a node with a verified attestation that has not expired, or, only for
a project that allows non-confidential nodes, one without attestation
(``none``: hosted providers, plain servers). An unverified node (registered,
not yet or no longer attested) serves nobody.

Order: healthy nodes first (the health task's view, and this process's own: a node
that just failed is skipped for a backoff that doubles up to a minute), then
in the project's preferred region (if it has one), then by this process's in-flight count, then by the load the node last reported
in a heartbeat (the least-loaded first), random among equals.
"""
from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import contextmanager

from config import bus
from nodes.registry import LOAD_TOPIC, ServedModel

MAX_BACKOFF = 60.0
# Node.Attestation values (the registry hands them over as strings).
VERIFIED, NONE = "verified", "none"

_inflight: dict[int, int] = defaultdict(int)
_down_until: dict[int, float] = {}
_backoff: dict[int, float] = {}
# Heartbeat loads newer than the catalog's snapshot (NodeTarget.load), by node id.
_reported_load: dict[int, float] = {}


def _on_load(value: str | None) -> None:
    if value is None:  # "drop everything": the next catalog load has fresh loads
        _reported_load.clear()
        return
    node_id, _, load = value.partition(":")
    try:
        _reported_load[int(node_id)] = float(load)
    except ValueError:
        pass


bus.on(LOAD_TOPIC, _on_load)


def load_of(served: ServedModel) -> float:
    return _reported_load.get(served.node.id, served.node.load)


def eligible(served: ServedModel, *, allow_non_confidential: bool, now: float) -> bool:
    """``now`` in epoch seconds (time.time())."""
    node = served.node
    if node.attestation == VERIFIED:
        return node.attested_until is not None and node.attested_until > now
    return node.attestation == NONE and allow_non_confidential


def order(candidates: Sequence[ServedModel], *, region: str = "") -> list[ServedModel]:
    now = time.monotonic()

    def rank(served: ServedModel) -> tuple:
        node = served.node
        usable = node.healthy and _down_until.get(node.id, 0.0) <= now
        elsewhere = bool(region) and node.region != region
        return (not usable, elsewhere, _inflight[node.id], load_of(served), random.random())

    return sorted(candidates, key=rank)


@contextmanager
def in_flight(node_id: int):
    _inflight[node_id] += 1
    try:
        yield
    finally:
        _inflight[node_id] -= 1


def failed(node_id: int) -> None:
    delay = min(_backoff.get(node_id, 1.0) * 2, MAX_BACKOFF)
    _backoff[node_id] = delay
    _down_until[node_id] = time.monotonic() + delay


def succeeded(node_id: int) -> None:
    if node_id in _backoff:
        _backoff.pop(node_id, None)
        _down_until.pop(node_id, None)
