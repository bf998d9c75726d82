"""A client that leaves while the stream is settling must not interrupt the settlement."""
import asyncio
from types import SimpleNamespace

from gateway.chat import _StreamRun
from nodes.registry import NodeTarget, ServedModel


UPSTREAM = {"max_tokens": 10, "messages": [{"role": "user", "content": "hello there"}]}


class SlowPaid:
    request_id = "req_race"
    claim = None

    def __init__(self):
        self.settling = asyncio.Event()
        self.release = asyncio.Event()
        self.finished_with = None

    async def finish(self, **kwargs):
        self.settling.set()
        await self.release.wait()  # a slow settlement round trip
        self.finished_with = kwargs


async def chunks_of(*chunks):
    for chunk in chunks:
        yield chunk


def chunk(text):
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}


async def test_disconnect_during_settlement_does_not_cancel_it():
    node = NodeTarget(1, "node_x", "http://x", "openai", "r", "none", True)
    served = ServedModel("m", "m", 100, 100, node)
    paid = SlowPaid()
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    run = _StreamRun(paid, SimpleNamespace(name="m"), served, include_usage=False, upstream=UPSTREAM)
    rest = chunks_of(chunk("b"), {"choices": [], "usage": usage})
    run.task = asyncio.create_task(run.run(chunk("a"), rest, ttft_ms=1))
    await paid.settling.wait()
    run.client_gone()  # the client leaves after the last token, while money is settling
    paid.release.set()
    await run.task
    assert not run.task.cancelled()
    assert paid.finished_with["usage"].output_tokens == 2 and paid.finished_with["status_code"] == 200


async def test_disconnect_during_relay_stops_the_node_and_settles_what_was_generated():
    node = NodeTarget(1, "node_x", "http://x", "openai", "r", "none", True)
    served = ServedModel("m", "m", 100, 100, node)
    paid = SlowPaid()
    paid.release.set()
    gate = asyncio.Event()

    async def endless():
        yield chunk("b")
        await gate.wait()  # the node is still generating
        yield chunk("never")

    run = _StreamRun(paid, SimpleNamespace(name="m"), served, include_usage=False, upstream=UPSTREAM)
    run.task = asyncio.create_task(run.run(chunk("a"), endless(), ttft_ms=1))
    await asyncio.sleep(0.01)
    run.client_gone()
    await asyncio.gather(run.task, return_exceptions=True)
    assert run.task.cancelled()
    assert paid.finished_with["status_code"] == 499 and paid.finished_with["usage"].output_tokens == 2
