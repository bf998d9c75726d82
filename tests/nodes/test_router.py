"""The router: who may serve (attestation, the project's non-confidential setting), in what order
(breakers, region preference, load), and failover before the first token — at most
NODE_MAX_ATTEMPTS nodes, each failure logged."""
import logging
import time
from types import SimpleNamespace

import pytest

from gateway.pipeline import first_node
from nodes import router
from nodes.adapters import NodeError
from nodes.registry import NodeTarget, ServedModel

NOW = 1_000_000.0


def served(node_id: int, *, attestation="verified", attested_until=NOW + 60, region="eu", healthy=True, load=0.0):
    node = NodeTarget(node_id, f"node_{node_id}", "http://x", "openai", region, attestation, healthy,
                      load=load, attested_until=attested_until)
    return ServedModel("m", f"up-{node_id}", 100, 100, node)


@pytest.fixture(autouse=True)
def clean_breakers():
    router.reset()
    yield
    router.reset()


@pytest.mark.parametrize(
    ("attestation", "attested_until", "allow_non_confidential", "expected"),
    [
        ("verified", NOW + 1, False, True),
        ("verified", NOW, False, False),  # expired exactly now: stale
        ("verified", None, True, False),  # verified without an expiry is never trusted
        ("unverified", NOW + 60, True, False),  # not attested (yet, or any more): serves nobody
        ("none", None, False, False),  # non-confidential: off by default
        ("none", None, True, True),
    ],
)
def test_eligibility(attestation, attested_until, allow_non_confidential, expected):
    s = served(1, attestation=attestation, attested_until=attested_until)
    assert router.eligible(s, allow_non_confidential=allow_non_confidential, now=NOW) is expected


def test_order_prefers_healthy_then_the_region_then_the_least_loaded():
    far_idle, near_busy, near_idle, sick = (
        served(1, region="us", load=0.0), served(2, region="eu", load=0.8),
        served(3, region="eu", load=0.1), served(4, region="eu", healthy=False),
    )
    candidates = [sick, far_idle, near_busy, near_idle]
    assert [s.node.id for s in router.order(candidates, region="eu")] == [3, 2, 1, 4]
    assert [s.node.id for s in router.order(candidates)] == [1, 3, 2, 4]


def test_a_failure_trips_the_breaker_at_once_and_a_single_trial_closes_it(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    a, b = served(1), served(2, load=0.5)
    router.failed(1)
    assert not router.usable(1)
    assert [s.node.id for s in router.order([a, b])] == [2, 1]  # open: tried last
    clock[0] += router.FIRST_BACKOFF
    assert router.usable(1)  # half-open: one trial
    router.trying(1)
    assert not router.usable(1)  # a second request does not pile onto the trial
    router.failed(1)  # the trial failed: open again, twice as long
    clock[0] += router.FIRST_BACKOFF
    assert not router.usable(1)
    clock[0] += router.FIRST_BACKOFF
    router.trying(1)
    router.succeeded(1)
    assert router.usable(1) and [s.node.id for s in router.order([a, b])] == [1, 2]


def test_an_abandoned_trial_frees_the_slot(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    router.failed(1)
    clock[0] += 60
    router.trying(1)
    router.abandoned(1)
    assert router.usable(1)


def _paid():
    return SimpleNamespace(request_id="req_test", meta=SimpleNamespace(attempts=0))


async def test_failover_stops_after_max_attempts_and_logs_each(settings, caplog):
    settings.NODE_MAX_ATTEMPTS = 2
    tried = []

    async def attempt(s):
        tried.append(s.node.id)
        raise NodeError("connection refused", permanent=False)

    paid = _paid()
    with caplog.at_level(logging.WARNING, logger="gateway.pipeline"), pytest.raises(NodeError):
        await first_node(paid, [served(1), served(2), served(3)], {}, attempt)
    assert tried == [1, 2] and paid.meta.attempts == 2
    logged = [r.getMessage() for r in caplog.records if "failed before the first token" in r.getMessage()]
    assert len(logged) == 2 and "node_1" in logged[0] and "attempt 1 of 2" in logged[0] and "node_2" in logged[1]
    assert not router.usable(1) and not router.usable(2) and router.usable(3)


async def test_failover_reaches_the_next_node_and_tells_it_its_own_model_name(settings):
    settings.NODE_MAX_ATTEMPTS = 3
    upstream = {"model": "m"}
    seen = []

    async def attempt(s):
        seen.append(upstream["model"])
        if s.node.id == 1:
            raise NodeError("503", permanent=False, status=503)
        return "answer"

    paid = _paid()
    chosen, result = await first_node(paid, [served(1), served(2)], upstream, attempt)
    assert (chosen.node.id, result, paid.meta.attempts, seen) == (2, "answer", 2, ["up-1", "up-2"])
    assert router.usable(2) and not router.usable(1)


async def test_a_permanent_error_is_not_retried_elsewhere():
    tried = []

    async def attempt(s):
        tried.append(s.node.id)
        raise NodeError("context too long", permanent=True, status=400)

    with pytest.raises(NodeError):
        await first_node(_paid(), [served(1), served(2)], {}, attempt)
    assert tried == [1] and router.usable(1)  # the request was bad, not the node
