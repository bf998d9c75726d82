"""The stream producer: a client leaving never interrupts a settlement; the resume window decides
when a stream nobody follows is stopped."""
import asyncio
from types import SimpleNamespace

from gateway import streams
from gateway.pipeline import StreamRun
from gateway.protocols.chat import ChatDialect
from nodes.registry import NodeTarget, ServedModel

BODY = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hello there"}], "stream": True}


class SlowPaid:
    request_id = "req_race"
    claim = None
    key = SimpleNamespace(project_id=1)

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


def start(paid, first, rest, resume_seconds=0.0):
    node = NodeTarget(1, "node_x", "http://x", "openai", "r", "none", True)
    served = ServedModel("m", "m", 100, 100, node)
    dialect = ChatDialect(dict(BODY), request_id=paid.request_id)
    log = streams.StreamLog(paid.request_id, project_id=1, endpoint="chat.completions", headers={})
    log._mirror = None  # in-process only: this test is about the producer
    run = StreamRun(paid, dialect, dialect.encoder("m", {}), served, dialect.upstream(10), log, resume_seconds)
    follower = log.follow(0)
    run.task = asyncio.create_task(run.run(first, rest, ttft_ms=1))
    return run, follower


async def test_disconnect_during_settlement_does_not_cancel_it():
    paid = SlowPaid()
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    run, follower = start(paid, chunk("a"), chunks_of(chunk("b"), {"choices": [], "usage": usage}))
    await paid.settling.wait()
    follower.close()  # the client leaves after the last token, while money is settling
    paid.release.set()
    await run.task
    assert not run.task.cancelled()
    assert paid.finished_with["usage"].output_tokens == 2 and paid.finished_with["status_code"] == 200


async def test_without_a_resume_window_a_disconnect_stops_the_node_and_settles_what_was_generated():
    paid = SlowPaid()
    paid.release.set()
    gate = asyncio.Event()

    async def endless():
        yield chunk("b")
        await gate.wait()  # the node is still generating
        yield chunk("never")

    run, follower = start(paid, chunk("a"), endless())
    await asyncio.sleep(0.01)
    follower.close()
    await asyncio.gather(run.task, return_exceptions=True)
    assert run.task.cancelled()
    assert paid.finished_with["status_code"] == 499 and paid.finished_with["usage"].output_tokens == 2


async def test_within_the_resume_window_generation_goes_on_and_a_new_follower_gets_the_rest():
    paid = SlowPaid()
    paid.release.set()
    gate = asyncio.Event()

    async def slow():
        yield chunk("b")
        await gate.wait()
        yield chunk("c")
        yield {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}

    run, follower = start(paid, chunk("a"), slow(), resume_seconds=5)
    seen = await follower.read(1)
    follower.close()  # the client drops after two events
    gate.set()
    await run.task
    assert not run.task.cancelled() and paid.finished_with["status_code"] == 200
    again = run.log.follow(len(seen))  # reconnect with Last-Event-ID = the last id it saw
    rest = []
    while (items := await again.read(1)) is not None:
        rest += items
    assert [f.split(b"\n")[0] for f in rest] == [b"id: evt_3", b"id: evt_4"]  # "c", then [DONE]
    assert b'"content":"c"' in rest[0] and rest[1].endswith(b"data: [DONE]\n\n")


async def test_a_stream_nobody_follows_is_cancelled_when_the_window_ends():
    paid = SlowPaid()
    paid.release.set()
    gate = asyncio.Event()

    async def endless():
        yield chunk("b")
        await gate.wait()
        yield chunk("never")

    run, follower = start(paid, chunk("a"), endless(), resume_seconds=0.3)
    await follower.read(1)
    follower.close()
    await asyncio.gather(run.task, return_exceptions=True)
    assert run.task.cancelled() and paid.finished_with["status_code"] == 499
    frames = run.log.frames
    assert b'"stream_cancelled"' in frames[-1]  # a late reader learns why the stream ended
