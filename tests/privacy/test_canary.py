"""The canary: a unique string sent through every way a body travels, then looked for everywhere
it could have landed in clear — a full pg_dump of the database, every key and value in every
Redis database, and the log output of the server processes and the Celery worker — in clear,
hex and base64. Zero hits. And the bodies the project kept DO open in the console for a role
with requests.view, so the test cannot pass by storing nothing.

Two server processes (DEBUG logging), the simulator node answering ``echo:`` prompts with their
own words (so the answers carry the canary too), real PostgreSQL and Redis. Alice's project keeps
bodies; Charlie's keeps none (the default).
"""
from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection
from django.test import Client

from console import services
from console.models import Message
from gateway import vault
from gateway.models import BodyBlob, IdempotencyRecord, RequestRecord, StoredResponse
from tests.conftest import SIM_MODEL, Process, cache_settle, make_tenant, server_env, start_server
from tests.console.test_webchat import answer_text, new_turn, read_stream, signed_in, wait_for_reply

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

BROKER = "redis://127.0.0.1:6379/12"


def forms_of(canary: str) -> dict[str, bytes]:
    """The canary as it could appear: clear, hex (as bytea is dumped), base64 at each alignment."""
    raw = canary.encode()
    out = {"clear": raw, "hex": raw.hex().encode(), "HEX": raw.hex().upper().encode()}
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)
        # without the group the leading bytes share, and the last group, which depends on what follows
        core = encoded[4 if shift else 0 : -4]
        out[f"base64+{shift}"] = core
        out[f"base64url+{shift}"] = core.replace(b"+", b"-").replace(b"/", b"_")
    return out


def hits(data: bytes, forms: dict[str, bytes]) -> list[str]:
    return [name for name, needle in forms.items() if needle in data]


def redis_dump(db: int) -> list[tuple[bytes, bytes]]:
    """Every key of Redis database ``db`` with its value(s), whatever its type."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=db)
    out = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        try:
            if kind == b"string":
                value = client.get(key) or b""
            elif kind == b"hash":
                value = b"|".join(k + b"=" + v for k, v in client.hgetall(key).items())
            elif kind == b"list":
                value = b"|".join(client.lrange(key, 0, -1))
            elif kind == b"set":
                value = b"|".join(client.smembers(key))
            elif kind == b"zset":
                value = b"|".join(client.zrange(key, 0, -1))
            elif kind == b"stream":
                value = b"|".join(
                    entry_id + b":" + b",".join(k + b"=" + v for k, v in fields.items())
                    for entry_id, fields in client.xrange(key)
                )
            else:
                value = b""
        except redis.ResponseError:  # the key changed type or vanished between SCAN and reading it
            continue
        out.append((key, value))
    client.close()
    return out


@pytest.fixture
def processes(transactional_db, sim_node):
    servers = [start_server(LOG_LEVEL="DEBUG"), start_server(LOG_LEVEL="DEBUG")]
    worker = Process(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo", "--loglevel", "DEBUG",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        env=server_env(CELERY_BROKER_URL=BROKER, LOG_LEVEL="DEBUG"),
        ready="ready.",
    )
    yield servers, worker
    for process in (*(s.process for s in servers), worker):
        process.stop()


def sse_events(text: str) -> list[dict]:
    out = []
    for block in text.split("\n\n"):
        event = {}
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            if name in ("id", "event", "data"):
                event[name] = value
        if "data" in event:
            out.append(event)
    return out


def chat_text(events: list[dict]) -> str:
    text = ""
    for event in events:
        if event.get("event", "message") == "message" and event["data"] != "[DONE]":
            for choice in json.loads(event["data"]).get("choices") or ():
                text += (choice.get("delta") or {}).get("content") or ""
    return text


def test_the_canary_is_nowhere_in_clear(processes, sim, tmp_path):
    (a, b), worker = processes
    canary = "cnry" + secrets.token_hex(12)
    forms = forms_of(canary)
    alice, charlie = make_tenant("alice"), make_tenant("charlie")
    services.project_body_storage_set(project=alice.project, store_bodies="forever", body_retention_days=30)
    cache_settle()
    prompt = f"echo: {canary} is the secret word"
    chat = {"model": SIM_MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 40}
    kept_ids: list[str] = []

    def post(server, path, tenant, body, **headers) -> httpx.Response:
        response = httpx.post(f"{server.api}{path}", json=body, headers={**tenant.auth(), **headers}, timeout=30)
        assert response.status_code == 200, response.text
        return response

    for tenant in (alice, charlie):
        # chat, not streamed and streamed
        r = post(a, "/chat/completions", tenant, chat)
        assert canary in r.json()["choices"][0]["message"]["content"]
        s = post(b, "/chat/completions", tenant, {**chat, "stream": True})
        assert canary in chat_text(sse_events(s.text))
        # the Responses API (kept for GET /v1/responses/{id}) and its retrieval
        r2 = post(a, "/responses", tenant, {"model": SIM_MODEL, "input": prompt, "max_output_tokens": 40})
        assert canary in r2.text
        again = httpx.get(f"{b.api}/responses/{r2.json()['id']}", headers=tenant.auth(), timeout=30)
        assert again.status_code == 200 and canary in again.text
        # Anthropic Messages, streamed and not
        m = post(b, "/messages", tenant, {"model": SIM_MODEL, "max_tokens": 40, "messages": [{"role": "user", "content": prompt}]})
        assert canary in m.text
        ms = post(a, "/messages", tenant, {"model": SIM_MODEL, "max_tokens": 40, "stream": True,
                                           "messages": [{"role": "user", "content": prompt}]})
        assert canary in ms.text
        # embeddings (the canary is in the request only)
        post(a, "/embeddings", tenant, {"model": SIM_MODEL, "input": f"{canary} to embed"})
        # an idempotent replay, not streamed and streamed
        key = "idem-" + secrets.token_hex(6)
        first = post(a, "/chat/completions", tenant, chat, **{"Idempotency-Key": key})
        replay = post(b, "/chat/completions", tenant, chat, **{"Idempotency-Key": key})
        assert replay.json() == first.json() and canary in replay.text
        skey = "idem-" + secrets.token_hex(6)
        post(a, "/chat/completions", tenant, {**chat, "stream": True}, **{"Idempotency-Key": skey})
        sreplay = post(b, "/chat/completions", tenant, {**chat, "stream": True}, **{"Idempotency-Key": skey})
        assert canary in chat_text(sse_events(sreplay.text))
        if tenant is alice:
            kept_ids += [r.headers["x-request-id"], s.headers["x-request-id"], r2.headers["x-request-id"],
                         m.headers["x-request-id"], ms.headers["x-request-id"], first.headers["x-request-id"]]

        # a stream dropped on one process and resumed on the other
        sim.configure(tokens_per_s=40)
        long_prompt = f"echo: {canary} " + " ".join(f"w{i}" for i in range(20)) + f" {canary}"
        seen = ""
        with httpx.stream("POST", f"{a.api}/chat/completions", headers=tenant.auth(), timeout=30,
                          json={**chat, "messages": [{"role": "user", "content": long_prompt}], "stream": True}) as live:
            request_id = resumed_id = live.headers["x-request-id"]
            for chunk in live.iter_text():
                seen += chunk
                if seen.count("\n\n") >= 3:
                    break
        last = [e for e in sse_events(seen[: seen.rfind("\n\n") + 2]) if "id" in e][-1]["id"]
        resumed = httpx.get(f"{b.api}/streams/{request_id}", headers={**tenant.auth(), "Last-Event-ID": last}, timeout=30)
        assert resumed.status_code == 200 and canary in chat_text(sse_events(resumed.text))
        sim.configure(tokens_per_s=0)

    # Web Chat (alice's project), through the relay, streamed; its history kept encrypted
    client = signed_in(a, alice.user)
    turn = new_turn(client, f"echo: {canary} in web chat")
    response, events = read_stream(client, turn)
    assert response.status_code == 200 and canary in answer_text(events)
    reply = wait_for_reply(turn["turn_id"])
    reply.conversation.refresh_from_db()
    from console import chat_store

    assert canary in chat_store.message_text(reply)
    assert canary in chat_store.title_text(reply.conversation)
    assert Message.objects.filter(conversation=reply.conversation).count() == 2

    # the retention task, through the worker: an expired body of alice's goes
    from celery import Celery

    expired = vault.body_store(project=alice.project, owner="request", ref="req_expired", kind="request",
                               plaintext=f"{canary} expired".encode(), expires_at=reply.created_at)
    with Celery(broker=BROKER, set_as_current=False) as producer:
        producer.send_task("gateway.tasks.purge_expired_bodies")
    deadline = time.monotonic() + 30
    while BodyBlob.objects.filter(id=expired.id).exists():
        assert time.monotonic() < deadline, "".join(worker.output[-30:])
        time.sleep(0.2)

    # everything settled and written (bodies are stored in the background after settlement)
    deadline = time.monotonic() + 30
    while sim.stats()["active"] or BodyBlob.objects.filter(project=alice.project, ref__in=kept_ids).count() < 2 * len(kept_ids):
        assert time.monotonic() < deadline, "bodies were not stored"
        time.sleep(0.2)
    time.sleep(1.0)  # the last background writes and Redis mirrors

    # --- the bodies kept DO open, in the console, for a developer-or-above role ----------------
    assert not RequestRecord.objects.filter(project=charlie.project, bodies_kept=True).exists()
    assert not BodyBlob.objects.filter(project=charlie.project).exists()
    kept = RequestRecord.objects.filter(project=alice.project, request_id__in=kept_ids)
    assert kept.count() == len(kept_ids) and all(r.bodies_kept for r in kept)
    opened = vault.request_bodies(project=alice.project, records=list(kept))
    for request_id in kept_ids:
        assert canary in opened[request_id]["request"], request_id
        assert canary in opened[request_id]["response"], request_id
    browser = Client()
    browser.force_login(alice.user)
    page = browser.get(f"/console/projects/{alice.project.public_id}/requests/").content.decode()
    for request_id in kept_ids:
        row = page.split(f'data-request="{request_id}"')[1].split("<tr data-request=")[0]
        assert canary in row and '<pre class="body" data-kind="response">' in row
    browser.force_login(charlie.user)
    theirs = browser.get(f"/console/projects/{charlie.project.public_id}/requests/").content.decode()
    assert "bodies not kept" in theirs and canary not in theirs

    # --- and nowhere in clear ---------------------------------------------------------------
    found: dict[str, list[str]] = {}
    name = connection.settings_dict["NAME"]
    dump = subprocess.run(["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "--no-owner", name],
                          capture_output=True, check=True, timeout=120).stdout
    assert b"gateway_bodyblob" in dump and len(dump) > 100_000
    if h := hits(dump, forms):
        lines = [line[:200] for line in dump.split(b"\n") if any(forms[f] in line for f in h)]
        found["pg_dump"] = h + [repr(line) for line in lines[:5]]

    stream_keys = []
    for db in range(16):
        for key, value in redis_dump(db):
            if b":stream:" in key:
                stream_keys.append(key)
            if h := hits(key, forms) + hits(value, forms):
                found[f"redis db {db} {key!r}"] = h
    # the places that did hold the text were searched: the streams (this test's among them), the
    # idempotent responses and Responses API answers, Web Chat's messages
    assert any(resumed_id.encode() in key for key in stream_keys) and any(
        s.headers["x-request-id"].encode() in key for key in stream_keys)
    assert IdempotencyRecord.objects.filter(project=alice.project, response__isnull=False).count() == 2
    assert StoredResponse.objects.filter(project__in=[alice.project, charlie.project]).count() == 2
    assert b"console_message" in dump and Message.objects.exclude(content="").count() >= 2

    logs = tmp_path / "logs"
    logs.mkdir()
    for label, process in (("server-a", a.process), ("server-b", b.process), ("worker", worker)):
        path = logs / f"{label}.log"
        path.write_text("".join(process.output))
        assert path.stat().st_size > 0
        if h := hits(path.read_bytes(), forms):
            found[str(path)] = h
    state = Path(settings.STATE_DIR)
    for path in state.rglob("*"):
        if path.is_file() and (h := hits(path.read_bytes(), forms)):
            found[str(path)] = h

    assert found == {}, f"the canary {canary} was found in clear: {found}"
