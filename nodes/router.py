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

MAX_BACKOFF = 60.0  # the longest a tripped breaker stays open before a trial request
FIRST_BACKOFF = 2.0
# Node.Attestation values (the registry hands them over as strings).
VERIFIED, NONE = "verified", "none"

_inflight: dict[int, int] = defaultdict(int)
# Circuit breakers, per node, in this process (passive health: request errors trip them at
# once; the beat probe is the fleet-wide view). Closed: no entry. Open: now < _open_until.
# Half-open: past it, one trial request at a time (_trial); its success closes the breaker,
# its failure reopens it for twice as long, up to MAX_BACKOFF.
_open_until: dict[int, float] = {}
_delay: dict[int, float] = {}
_trial: set[int] = set()
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


def usable(node_id: int, now: float | None = None) -> bool:
    """Whether this process's breaker lets a request through to the node now."""
    until = _open_until.get(node_id)
    if until is None:
        return True
    return (now if now is not None else time.monotonic()) >= until and node_id not in _trial


def order(candidates: Sequence[ServedModel], *, region: str = "") -> list[ServedModel]:
    now = time.monotonic()

    def rank(served: ServedModel) -> tuple:
        node = served.node
        ok = node.healthy and usable(node.id, now)
        elsewhere = bool(region) and node.region != region
        return (not ok, elsewhere, _inflight[node.id], load_of(served), random.random())

    return sorted(candidates, key=rank)


@contextmanager
def in_flight(node_id: int):
    _inflight[node_id] += 1
    try:
        yield
    finally:
        _inflight[node_id] -= 1


def trying(node_id: int) -> None:
    """A request is about to go to the node: if its breaker is half-open, this is the trial."""
    if node_id in _open_until:
        _trial.add(node_id)


def failed(node_id: int) -> None:
    """The node failed a request (retryable): trip its breaker now."""
    _trial.discard(node_id)
    delay = min(_delay.get(node_id, FIRST_BACKOFF / 2) * 2, MAX_BACKOFF)
    _delay[node_id] = delay
    _open_until[node_id] = time.monotonic() + delay


def succeeded(node_id: int) -> None:
    _trial.discard(node_id)
    if node_id in _open_until:
        _open_until.pop(node_id, None)
        _delay.pop(node_id, None)


def abandoned(node_id: int) -> None:
    """The attempt ended without a verdict (the request was cancelled): free the trial slot."""
    _trial.discard(node_id)


def reset() -> None:
    """Forget every breaker (tests)."""
    _open_until.clear()
    _delay.clear()
    _trial.clear()
