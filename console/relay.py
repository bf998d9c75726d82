"""Web Chat's answer stream: Server-Sent Events served by Channels at /chat/relay/<conversation>/.

The browser fetches it with ``Authorization: Relay <credential>`` (a turn's
credential from console.webchat.turn_start) and, to resume, ``Last-Event-ID``.
The session user must be the credential's user and the URL's conversation its
conversation. The first use claims the credential (minted → streaming, one
conditional UPDATE: a replayed first use is refused) and starts the turn: the
gateway's own chat pipeline, called in-process (``gateway.app.app`` with a
synthetic ASGI scope), billed to the project's Web Chat key, whose record goes
in the scope (``relay_key``) with the credential's spend cap. The turn runs in
a background task of this process, decoupled from the browser: a browser that
drops does not stop it, and the reply is stored when it ends (idempotently, by
turn id) and the credential revoked. A reconnect with the same credential and
a Last-Event-ID follows the gateway's stream log from that event, on any
process (``GET /v1/streams/<request_id>`` in-process): no new generation, no
second charge. The credential's TTL (≤ 60 s) bounds every connection it opens,
resumes included: past it the browser is refused and shows the stored reply once
the turn ends (console.chat_views.chat_turn_status). Stopping is a POST (console.chat_views.chat_turn_stop) that reaches
the process running the turn over ``config.bus``; the run then leaves the
gateway stream, which cancels the node and bills what was generated.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging

import orjson
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.http import AsyncHttpConsumer
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.pricing import TOKENS_PER_PRICE_UNIT
from config import asyncdb, bus, redisconn
from config.ids import new_id
from gateway import auth, background, streams, tokens
from gateway.app import app as gateway_app
from gateway.auth import KeyRecord
from gateway.catalog import catalog
from gateway.errors import GatewayError
from gateway.models import RequestRecord

from . import chat_store, webchat
from .models import Conversation, Message, RelayCredential

log = logging.getLogger(__name__)

# code -> (status, type), in the gateway's envelope {"error": {"type", "code", "message", "request_id"}}
ERRORS = {
    "credential_invalid": (401, "authentication_error"),
    "credential_expired": (401, "authentication_error"),
    "credential_revoked": (401, "authentication_error"),
    "credential_used": (409, "conflict_error"),
    "invalid_request": (400, "invalid_request_error"),
    "not_found": (404, "not_found_error"),
    "method_not_allowed": (405, "invalid_request_error"),
    "service_unavailable": (503, "api_error"),
}
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
RECORD_WAIT_SECONDS = 10.0  # how long a finished turn waits for the gateway's settlement row
REQUEST_ID_WAIT_SECONDS = 5.0  # how long a resume waits for a just-started stream's request id
STOP_POLL_SECONDS = 1.0  # how often a turn reads its stop flag while pub/sub is down


class Refused(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message

    @property
    def status(self) -> int:
        return ERRORS[self.code][0]

    def body(self, request_id: str) -> bytes:
        return orjson.dumps(
            {"error": {"type": ERRORS[self.code][1], "code": self.code, "message": self.message, "request_id": request_id}}
        )


# --- the credential ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Claim:
    fresh: bool  # True: this connection starts the turn; False: it resumes it
    credential_id: int
    turn_id: str
    conversation_id: int
    project_id: int
    model: str
    spend_cap: int
    request_id: str


def _claim(*, token_hash: str, user_id: int, conversation_public_id: str, resuming: bool) -> Claim:
    credential = (
        RelayCredential.objects.select_related("conversation").filter(token_hash=token_hash).first()
    )
    # Unknown, someone else's and another conversation's credentials are refused alike.
    if (
        credential is None
        or credential.user_id != user_id
        or credential.conversation.public_id != conversation_public_id
        or credential.conversation.deleted
    ):
        raise Refused("credential_invalid", "This relay credential is not valid for this conversation.")
    now = timezone.now()
    if credential.state == RelayCredential.State.REVOKED:
        raise Refused("credential_revoked", "This turn is over; its relay credential was revoked.")
    if now >= credential.expires_at:
        raise Refused("credential_expired", "This relay credential has expired; send the message again.")
    fresh = False
    if credential.state == RelayCredential.State.MINTED:
        # The claim: exactly one connection turns minted into streaming.
        fresh = bool(
            RelayCredential.objects.filter(
                id=credential.id, state=RelayCredential.State.MINTED, expires_at__gt=now
            ).update(state=RelayCredential.State.STREAMING, used_at=now)
        )
        if not fresh:
            credential.refresh_from_db()
            if credential.state != RelayCredential.State.STREAMING:
                raise Refused("credential_revoked", "This turn is over; its relay credential was revoked.")
    if not fresh and not resuming:
        raise Refused(
            "credential_used", "This relay credential was already used; resume with Last-Event-ID, or start a new turn."
        )
    return Claim(
        fresh=fresh,
        credential_id=credential.id,
        turn_id=credential.turn_id,
        conversation_id=credential.conversation_id,
        project_id=credential.conversation.project_id,
        model=credential.model,
        spend_cap=credential.spend_cap,
        request_id=credential.request_id,
    )


claim = database_sync_to_async(_claim)


@database_sync_to_async
def _request_id_of(credential_id: int) -> str:
    return RelayCredential.objects.filter(id=credential_id).values_list("request_id", flat=True).first() or ""


@database_sync_to_async
def _stop_requested(credential_id: int) -> bool:
    return RelayCredential.objects.filter(id=credential_id, stop_requested=True).exists()


@database_sync_to_async
def _request_id_set(credential_id: int, request_id: str) -> None:
    RelayCredential.objects.filter(id=credential_id).update(request_id=request_id)


@database_sync_to_async
def _key_lookup(conversation_id: int) -> str:
    return webchat.webchat_key(Conversation.objects.select_related("project").get(id=conversation_id).project).lookup


@database_sync_to_async
def _turn_inputs(conversation_id: int) -> tuple[str, list[dict]]:
    conversation = Conversation.objects.select_related("project").get(id=conversation_id)
    return webchat.webchat_key(conversation.project).lookup, webchat.history(conversation)


async def relay_key(lookup: str, *, spend_cap: int) -> KeyRecord:
    """The project's Web Chat key record, with this turn's spend cap, for the in-process call.
    Its stream is cancelled as soon as the relay leaves it (the relay stays to the end unless
    the user stops): no resume window to wait out."""
    try:
        record = await auth.cache.get(lookup)
    except asyncdb.DatabaseUnavailable:
        record = None
    if record is None or not record.active:
        raise Refused("service_unavailable", "The project's chat billing key is unavailable; try again shortly.")
    return dataclasses.replace(record, stream_resume_seconds=0, idempotency_required=False, request_spend_cap=spend_cap)


async def max_tokens_for(key: KeyRecord, model: str, body: dict, spend_cap: int) -> int:
    """The longest answer whose worst-case reservation fits the spend cap (at least 1: a prompt
    that alone exceeds the cap is refused by the gateway, spend_cap_reached)."""
    wanted = settings.WEBCHAT_MAX_OUTPUT_TOKENS
    try:
        entry = await catalog.get_for(key, model)
    except GatewayError:
        return wanted  # the gateway refuses the model itself, in its own words
    price = entry.price_at(timezone.now())
    if price is None:
        return wanted
    prompt = min(tokens.chat_prompt_bound(body), entry.context_window)
    room = spend_cap * TOKENS_PER_PRICE_UNIT - prompt * price.input_per_mtok
    fits = room // price.output_per_mtok if price.output_per_mtok else wanted
    return max(1, min(wanted, entry.max_output_tokens, fits))


# --- calling the gateway in-process ---------------------------------------------------------------


def gateway_scope(method: str, path: str, key: KeyRecord, headers: list[tuple[bytes, bytes]]) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 0),
        "server": ("webchat-relay", 0),
        "state": {},
        "relay_key": key,  # read by gateway.context.ApiRequest.authenticate
    }


class TurnRun:
    """One turn's gateway call in this process, followed to its end whoever watches."""

    def __init__(self, claim: Claim, key: KeyRecord, body: bytes, session_id: str):
        self.claim = claim
        self.key = key
        self.body = body
        self.session_id = session_id
        self.loop = asyncio.get_running_loop()
        self.status: int | None = None
        self.request_id = ""
        self.chunks: list[bytes] = []
        self.done = False
        self.started = asyncio.Event()
        self.finished = asyncio.Event()  # the reply is stored
        self.stop = asyncio.Event()
        self.reply: dict | None = None
        self._waiters: list[asyncio.Future] = []
        self._pending = b""
        self._parts: list[str] = []
        self.ended_ok = False
        self.error: dict | None = None

    # followers
    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def changed(self) -> None:
        waiter = self.loop.create_future()
        self._waiters.append(waiter)
        await waiter

    def request_stop(self) -> None:
        self.stop.set()

    # the gateway side
    async def run(self) -> None:
        sent = False

        async def receive():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": self.body, "more_body": False}
            await self.stop.wait()  # the user pressed stop: the gateway sees its client leave
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start":
                self.status = message["status"]
                self.request_id = dict(message.get("headers") or ()).get(b"x-request-id", b"").decode()
                if self.request_id:  # a resume elsewhere needs it before the first event
                    await _request_id_set(self.claim.credential_id, self.request_id)
                self.started.set()
            elif message["type"] == "http.response.body":
                chunk = message.get("body") or b""
                if chunk:
                    self.chunks.append(chunk)
                    if self.status == 200:
                        self._parse(chunk)
                    self._notify()

        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode()),
                   (b"x-session-id", self.session_id.encode())]
        watcher = asyncio.get_running_loop().create_task(self._watch_stop())
        try:
            await gateway_app(gateway_scope("POST", "/v1/chat/completions", self.key, headers), receive, send)
        except Exception:
            log.exception("web chat turn %s: the gateway call failed", self.claim.turn_id)
        finally:
            watcher.cancel()
            self.done = True
            self.started.set()
            self._notify()
        try:
            self.reply = await self._store()
        except Exception:
            log.exception("web chat turn %s: storing the reply failed", self.claim.turn_id)
        finally:
            _runs.pop(self.claim.turn_id, None)
            self.finished.set()

    async def _watch_stop(self) -> None:
        """A stop reaches this process over config.bus; while its Redis subscription is down
        (several processes, pub/sub lost), read the credential's stop flag instead."""
        while not self.stop.is_set():
            await asyncio.sleep(STOP_POLL_SECONDS)
            if redisconn.enabled() and not bus.subscribed() and await _stop_requested(self.claim.credential_id):
                self.stop.set()

    def _parse(self, chunk: bytes) -> None:
        """Follow the answer's text, and how it ended, in the gateway's SSE bytes."""
        self._pending += chunk
        *events, self._pending = self._pending.split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if not line.startswith(b"data: "):
                    continue
                data = line[6:]
                if data == b"[DONE]":
                    self.ended_ok = True
                    continue
                try:
                    obj = orjson.loads(data)
                except orjson.JSONDecodeError:
                    continue
                if "error" in obj:
                    self.error = obj["error"]
                for choice in obj.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        self._parts.append(content)

    async def _store(self) -> dict:
        status, text = Message.Status.OK, "".join(self._parts)
        if self.status != 200:
            status = Message.Status.FAILED
            try:
                error = orjson.loads(b"".join(self.chunks))["error"]
                text = f"{error['message']} ({error['code']})"
            except (orjson.JSONDecodeError, KeyError, TypeError):
                text = "The answer could not be started."
        elif self.error is not None:
            stopped = self.stop.is_set() or self.error.get("code") == "stream_cancelled"
            status = Message.Status.STOPPED if stopped else Message.Status.FAILED
            if not text:
                text = self.error.get("message", "")
        elif not self.ended_ok:
            status = Message.Status.STOPPED if self.stop.is_set() else Message.Status.FAILED
        record = await self._record() if self.request_id and self.status == 200 else None
        return await _reply_store(self.claim, text=text, status=status, request_id=self.request_id, record=record)

    async def _record(self) -> tuple[int, int, int] | None:
        """(input tokens, output tokens, cost) as the gateway settled them. Settlement is written
        before the closing events, but a stopped stream settles after the relay left it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECORD_WAIT_SECONDS
        while True:
            row = await _request_record(self.claim.project_id, self.request_id)
            if row is not None or loop.time() >= deadline:
                if row is None:
                    log.warning("web chat turn %s: no request record for %s", self.claim.turn_id, self.request_id)
                return row
            await asyncio.sleep(0.1)


@database_sync_to_async
def _request_record(project_id: int, request_id: str) -> tuple[int, int, int] | None:
    return (
        RequestRecord.objects.filter(project_id=project_id, request_id=request_id)
        .values_list("input_tokens", "output_tokens", "cost")
        .first()
    )


@database_sync_to_async
def _reply_store(claim: Claim, *, text: str, status: str, request_id: str, record) -> dict:
    input_tokens, output_tokens, cost = record or (0, 0, 0)
    with transaction.atomic():
        conversation = Conversation.objects.get(id=claim.conversation_id)
        message, _ = chat_store.reply_write(
            conversation=conversation, turn_id=claim.turn_id, text=text, status=status, request_id=request_id,
            input_tokens=input_tokens, output_tokens=output_tokens, cost=cost,
        )
        RelayCredential.objects.filter(id=claim.credential_id).exclude(state=RelayCredential.State.REVOKED).update(
            state=RelayCredential.State.REVOKED, revoked_at=timezone.now()
        )
        Conversation.objects.filter(id=conversation.id).update(updated_at=timezone.now())
    message.conversation = conversation
    return webchat.message_json(message)


@database_sync_to_async
def _stored_reply(turn_id: str) -> dict | None:
    message = Message.objects.select_related("conversation").filter(turn_id=turn_id).first()
    return webchat.message_json(message) if message is not None else None


# --- turns running in this process, and stopping them -----------------------------------------------

_runs: dict[str, TurnRun] = {}


def _stop(turn_id: str | None) -> None:
    """config.bus handler (from the listener, or in the thread of the view that published)."""
    run = _runs.get(turn_id) if turn_id else None
    if run is not None:
        run.loop.call_soon_threadsafe(run.request_stop)


bus.on(webchat.STOP_TOPIC, _stop)


def turn_event(reply: dict | None) -> bytes:
    """The relay's own last event (no id: it is not part of the gateway's stream): the stored reply,
    with its tokens and cost."""
    return b"event: turn\ndata: " + orjson.dumps(reply or {}) + b"\n\n"


# --- starting a turn ---------------------------------------------------------------------------------


async def launch(found: Claim, conversation_public_id: str) -> TurnRun:
    """Start the turn's gateway call in a background task of this process."""
    try:
        lookup, messages = await _turn_inputs(found.conversation_id)
        key = await relay_key(lookup, spend_cap=found.spend_cap)
    except Exception:
        # Nothing ran: the turn ends here, failed, and its credential is revoked.
        await _reply_store(found, text="The answer could not be started; try again.", status=Message.Status.FAILED,
                           request_id="", record=None)
        raise
    body = {"model": found.model, "messages": messages, "stream": True, "stream_options": {"include_usage": True}}
    body["max_tokens"] = await max_tokens_for(key, found.model, body, found.spend_cap)
    run = TurnRun(found, key, orjson.dumps(body), session_id=conversation_public_id)
    _runs[found.turn_id] = run
    # A fresh context: the run outlives the request that started it (and, from a sync view,
    # the thread asgiref would otherwise route its database calls to).
    contextvars.Context().run(background.spawn, run.run(), name=f"webchat:{found.turn_id}")
    return run


async def start_detached(token: str, user_id: int, conversation_public_id: str) -> None:
    """Start a turn with nobody streaming it (a browser without JavaScript): the reply is
    stored when it ends, and the conversation page shows it."""
    found = await claim(token_hash=webchat.hash_token(token), user_id=user_id,
                        conversation_public_id=conversation_public_id, resuming=False)
    await launch(found, conversation_public_id)


# --- the consumer ------------------------------------------------------------------------------------


class RelayConsumer(AsyncHttpConsumer):
    # No channel layer: nothing is ever sent to this consumer by name.
    channel_layer_alias = "webchat-relay-has-no-channel-layer"

    async def http_request(self, message):
        """Serve the request in a task, so the client leaving (http.disconnect, below) is seen
        while the stream is still being relayed."""
        if "body" in message:
            self.body.append(message["body"])
        if not message.get("more_body"):
            self._task = asyncio.ensure_future(self._serve())

    async def http_disconnect(self, message):
        task = getattr(self, "_task", None)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        raise StopConsumer()

    async def _serve(self) -> None:
        self._responded = False
        request_id = new_id("req")
        try:
            await self.handle(b"".join(self.body))
        except Refused as exc:
            if not self._responded:
                await self._error(exc, request_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("web chat relay failed")
            if not self._responded:
                await self._error(Refused("service_unavailable", "The relay failed; nothing was charged twice."), request_id)

    async def _error(self, exc: Refused, request_id: str) -> None:
        self._responded = True
        await self.send_response(
            exc.status, exc.body(request_id),
            headers=[(b"content-type", b"application/json"), (b"x-request-id", request_id.encode())],
        )

    async def _start(self, status: int, headers) -> None:
        self._responded = True
        await self.send_headers(status=status, headers=headers)

    async def handle(self, body: bytes) -> None:
        if self.scope["method"] != "GET":
            raise Refused("method_not_allowed", "The relay stream is read with GET.")
        headers = {k.lower(): v for k, v in self.scope.get("headers") or ()}
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        user = self.scope.get("user")
        if scheme.lower() != "relay" or not token.strip() or user is None or not user.is_authenticated:
            raise Refused("credential_invalid", "Send the turn's relay credential as 'Authorization: Relay …' "
                          "from the signed-in session it was issued to.")
        raw_last = headers.get(b"last-event-id")
        try:
            after = streams.parse_last_event_id({"last-event-id": raw_last.decode("latin-1")} if raw_last else {})
        except GatewayError as exc:
            raise Refused("invalid_request", exc.message) from None
        conversation_id = self.scope["url_route"]["kwargs"]["conversation_id"]
        found = await claim(
            token_hash=webchat.hash_token(token.strip()), user_id=user.id,
            conversation_public_id=conversation_id, resuming=raw_last is not None,
        )
        if found.fresh:
            await self._start_turn(found, conversation_id)
        else:
            await self._resume(found, after)

    async def _start_turn(self, found: Claim, conversation_public_id: str) -> None:
        await self._follow_local(await launch(found, conversation_public_id))

    async def _follow_local(self, run: TurnRun) -> None:
        await run.started.wait()
        if run.status != 200:
            while not run.done:
                await run.changed()
            await self._start(run.status or 502, [(b"content-type", b"application/json"),
                                                  (b"x-request-id", run.request_id.encode())])
            await self.send_body(b"".join(run.chunks))
            return
        await self._start(200, [*SSE_HEADERS, (b"x-request-id", run.request_id.encode()),
                                (b"x-turn-id", run.claim.turn_id.encode())])
        sent = 0
        while True:
            if sent < len(run.chunks):
                chunk, sent = b"".join(run.chunks[sent:]), len(run.chunks)
                await self.send_body(chunk, more_body=True)
                continue
            if run.done:
                break
            await run.changed()
        await run.finished.wait()
        await self.send_body(turn_event(run.reply))

    async def _resume(self, found: Claim, after: int) -> None:
        request_id = found.request_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REQUEST_ID_WAIT_SECONDS
        while not request_id and loop.time() < deadline:  # the stream is being opened right now
            await asyncio.sleep(0.1)
            request_id = await _request_id_of(found.credential_id)
        if not request_id:
            raise Refused("not_found", "This turn's stream has not started; try again shortly.")
        key = await relay_key(await _key_lookup(found.conversation_id), spend_cap=found.spend_cap)
        ended = asyncio.Event()
        status = 0

        async def receive():
            await ended.wait()  # until this request is over (the browser leaving cancels the task)
            return {"type": "http.disconnect"}

        async def send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                kept = [(k, v) for k, v in message.get("headers") or () if k in (b"content-type", b"cache-control", b"x-request-id")]
                await self._start(status, [*kept, (b"x-accel-buffering", b"no"), (b"x-turn-id", found.turn_id.encode())])
            elif message["type"] == "http.response.body":
                more = message.get("more_body", False)
                if message.get("body"):
                    await self.send_body(message["body"], more_body=more or status == 200)
                elif not more and status != 200:
                    await self.send_body(b"")

        headers = [(b"last-event-id", f"evt_{after}".encode())]
        try:
            await gateway_app(gateway_scope("GET", f"/v1/streams/{request_id}", key, headers), receive, send)
        finally:
            ended.set()
        if status != 200:
            return
        run = _runs.get(found.turn_id)
        if run is not None:
            await run.finished.wait()
            reply = run.reply
        else:  # the turn runs in another process: it stores the reply right after the last event
            reply = None
            deadline = loop.time() + RECORD_WAIT_SECONDS
            while reply is None and loop.time() < deadline:
                reply = await _stored_reply(found.turn_id)
                if reply is None:
                    await asyncio.sleep(0.1)
        await self.send_body(turn_event(reply))


class RelayNotFound(AsyncHttpConsumer):
    channel_layer_alias = RelayConsumer.channel_layer_alias

    async def handle(self, body):
        await self.send_response(
            404, Refused("not_found", "No such relay stream.").body(new_id("req")),
            headers=[(b"content-type", b"application/json")],
        )
