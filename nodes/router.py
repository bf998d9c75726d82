"""Choose the order in which to try nodes for a request.

Healthy nodes first (the health task's view, and this process's own: a node
that just failed is skipped for a backoff that doubles up to a minute), then
by this process's in-flight count, random among equals.
"""
from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import contextmanager

from nodes.registry import ServedModel

MAX_BACKOFF = 60.0

_inflight: dict[int, int] = defaultdict(int)
_down_until: dict[int, float] = {}
_backoff: dict[int, float] = {}


def order(candidates: Sequence[ServedModel]) -> list[ServedModel]:
    now = time.monotonic()

    def rank(served: ServedModel) -> tuple:
        node = served.node
        usable = node.healthy and _down_until.get(node.id, 0.0) <= now
        return (not usable, _inflight[node.id], random.random())

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
