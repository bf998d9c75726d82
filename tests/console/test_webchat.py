"""Web Chat end to end against a live server: a turn's relay credential, the answer streamed over
SSE by the Channels consumer (the gateway's chat pipeline run in-process), stored with the tokens and
cost the gateway settled, and every way a credential is refused."""
from __future__ import annotations

import datetime as dt
import json
import re
import time

import httpx
import pytest
from django.test import Client
from django.utils import timezone

from billing.models import Transfer, Wallet
from console import webchat
from console.models import ApiKey, Conversation, Message, RelayCredential
from gateway import tokens
from gateway.models import RequestRecord
from tests.conftest import SIM_MODEL, cache_settle

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


# --- helpers -------------------------------------------------------------------------------------------


def signed_in(server, user) -> httpx.Client:
    """An HTTP client with the user's session cookie and a CSRF token, like a browser."""
    django_client = Client()
    django_client.force_login(user)
    client = httpx.Client(base_url=server.url, timeout=30, follow_redirects=False)
    client.cookies.set("sessionid", django_client.cookies["sessionid"].value)
    page = client.get("/console/chat/")
    assert page.status_code == 200, page.text[:500]
    client.headers["X-CSRFToken"] = client.cookies["csrftoken"]
    return client


def new_turn(client, message="Hello there", model=SIM_MODEL) -> dict:
    response = client.post("/console/chat/new", data={"model": model, "message": message},
                           headers={"Accept": "application/json"})
    assert response.status_code == 201, response.text
    return response.json()


def relay_headers(turn, **extra) -> dict:
    return {"Authorization": f"Relay {turn['credential']}", **extra}


def parse_events(text: str) -> list[dict]:
    out = []
    for raw in text.split("\n\n"):
        event = {"id": None, "event": "message", "data": None}
        for line in raw.split("\n"):
            if line.startswith("id: "):
                event["id"] = int(line[len("id: evt_"):])
            elif line.startswith("event: "):
                event["event"] = line[len("event: "):]
            elif line.startswith("data: "):
                event["data"] = line[len("data: "):]
        if event["data"] is not None:
            out.append(event)
    return out


def answer_text(events) -> str:
    text = ""
    for event in events:
        if event["event"] == "message" and event["data"] != "[DONE]":
            for choice in json.loads(event["data"]).get("choices") or ():
                text += choice["delta"].get("content") or ""
    return text


def read_stream(client, turn, *, headers=None) -> tuple[httpx.Response, list[dict]]:
    with client.stream("GET", turn["stream_url"], headers=headers or relay_headers(turn)) as response:
        body = response.read().decode()
    return response, parse_events(body) if response.headers.get("content-type", "").startswith("text/event-stream") else []


def read_some(client, turn, n: int) -> list[dict]:
    """Open the stream, keep its first n gateway events, then drop the connection."""
    buffer = ""
    with client.stream("GET", turn["stream_url"], headers=relay_headers(turn)) as response:
        assert response.status_code == 200
        for chunk in response.iter_text():
            buffer += chunk
            complete = buffer[: buffer.rfind("\n\n") + 2] if "\n\n" in buffer else ""
            kept = [e for e in parse_events(complete) if e["id"] is not None]
            if len(kept) >= n:
                return kept[:n]
    raise AssertionError("the stream ended early")


def wait_for_reply(turn_id: str, timeout: float = 20) -> Message:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = Message.objects.filter(turn_id=turn_id).first()
        if reply is not None:
            return reply
        time.sleep(0.1)
    raise AssertionError(f"turn {turn_id} was never stored")


def error_of(response) -> dict:
    return response.json()["error"]


# --- the happy path -----------------------------------------------------------------------------------


def test_a_turn_streams_through_the_relay_and_is_stored_with_the_settled_cost(server, alice, sim_node):
    client = signed_in(server, alice.user)
    turn = new_turn(client, "Hello there")
    assert turn["credential"].startswith("wcr_") and "sk_live_" not in json.dumps(turn)

    response, events = read_stream(client, turn)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert [e["id"] for e in events if e["id"]] == list(range(1, len([e for e in events if e["id"]]) + 1))
    text = answer_text(events)
    assert text
    assert any(e["data"] == "[DONE]" for e in events)
    final = events[-1]
    assert final["event"] == "turn"
    reply_event = json.loads(final["data"])

    reply = Message.objects.get(turn_id=turn["turn_id"])
    record = RequestRecord.objects.get(request_id=reply.request_id)
    assert reply.role == "assistant" and reply.status == "ok"
    assert webchat.chat_store.message_text(reply) == text
    assert (reply.input_tokens, reply.output_tokens, reply.cost) == (record.input_tokens, record.output_tokens, record.cost)
    assert reply.cost > 0 and reply.output_tokens > 0
    assert reply_event["cost"] == reply.cost and reply_event["output_tokens"] == reply.output_tokens
    # Billed once, to the project's Web Chat key, grouped by the conversation.
    transfer = Transfer.objects.get(id=record.transfer_id)
    assert transfer.status == "posted" and transfer.amount == reply.cost
    key = ApiKey.objects.get(id=record.api_key_id)
    assert key.kind == ApiKey.Kind.WEBCHAT and key.project_id == alice.project.id
    assert record.session_id == turn["conversation_id"]
    assert Wallet.objects.get(id=alice.wallet.id).reserved == 0

    credential = RelayCredential.objects.get(turn_id=turn["turn_id"])
    assert credential.state == "revoked" and credential.revoked_at is not None
    assert credential.token_hash == webchat.hash_token(turn["credential"])
    # After the end the credential is refused, also as a resume.
    again = client.get(turn["stream_url"], headers=relay_headers(turn, **{"Last-Event-ID": "evt_2"}))
    assert again.status_code == 401 and error_of(again)["code"] == "credential_revoked"

    # The page lists the conversation and shows the message with its cost.
    page = client.get(turn["conversation_url"])
    assert page.status_code == 200
    assert "Hello there" in page.text and reply_event["cost_display"] in page.text


def test_the_conversation_is_sent_whole_and_a_second_turn_continues_it(server, alice, sim_node):
    client = signed_in(server, alice.user)
    first = new_turn(client, "first question")
    read_stream(client, first)
    second = client.post(first["conversation_url"] + "turns", data={"message": "second question"},
                         headers={"Accept": "application/json"}).json()
    response, events = read_stream(client, second)
    assert response.status_code == 200 and events[-1]["event"] == "turn"
    conversation = Conversation.objects.get(public_id=first["conversation_id"])
    roles = [m["role"] for m in webchat.history(conversation)]
    assert roles == ["user", "assistant", "user", "assistant"]
    # The second request's prompt held the whole conversation: more input tokens than the first.
    replies = list(Message.objects.filter(conversation=conversation, role="assistant").order_by("id"))
    assert replies[1].input_tokens > replies[0].input_tokens


# --- refusals -----------------------------------------------------------------------------------------


def test_a_replayed_first_use_is_refused_while_the_turn_streams(server, alice, sim_node, sim):
    sim.configure(tokens_per_s=40)
    client = signed_in(server, alice.user)
    turn = new_turn(client)
    with client.stream("GET", turn["stream_url"], headers=relay_headers(turn)) as first:
        assert first.status_code == 200
        next(first.iter_raw())
        replay = client.get(turn["stream_url"], headers=relay_headers(turn))
        assert replay.status_code == 409
        assert error_of(replay)["code"] == "credential_used"
        assert set(error_of(replay)) >= {"type", "code", "message", "request_id"}
    wait_for_reply(turn["turn_id"])
    assert RequestRecord.objects.filter(session_id=turn["conversation_id"]).count() == 1


def test_an_expired_credential_is_refused_and_nothing_runs(server, alice, sim_node):
    client = signed_in(server, alice.user)
    turn = new_turn(client)
    RelayCredential.objects.filter(turn_id=turn["turn_id"]).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    response = client.get(turn["stream_url"], headers=relay_headers(turn))
    assert response.status_code == 401 and error_of(response)["code"] == "credential_expired"
    assert RelayCredential.objects.get(turn_id=turn["turn_id"]).state == "minted"
    assert not RequestRecord.objects.filter(project=alice.project).exists()


def test_the_ttl_is_at_most_sixty_seconds(server, alice, sim_node):
    client = signed_in(server, alice.user)
    turn = new_turn(client)
    credential = RelayCredential.objects.get(turn_id=turn["turn_id"])
    assert dt.timedelta(0) < credential.expires_at - credential.created_at <= dt.timedelta(seconds=60)


def test_cross_conversation_other_user_and_anonymous_use_are_refused(server, alice, bob, sim_node):
    client = signed_in(server, alice.user)
    turn = new_turn(client, "first conversation")
    other = client.post("/console/chat/new", data={"model": SIM_MODEL}, headers={"Accept": "application/json"}).json()

    wrong_conversation = client.get(f"/chat/relay/{other['conversation_id']}/", headers=relay_headers(turn))
    assert wrong_conversation.status_code == 401 and error_of(wrong_conversation)["code"] == "credential_invalid"

    bob_client = signed_in(server, bob.user)  # a member of the same organization
    as_bob = bob_client.get(turn["stream_url"], headers=relay_headers(turn))
    assert as_bob.status_code == 401 and error_of(as_bob)["code"] == "credential_invalid"
    # nor can bob read or post to alice's conversation
    assert bob_client.get(turn["conversation_url"]).status_code == 404
    assert bob_client.post(turn["conversation_url"] + "turns", data={"message": "hi"}).status_code == 404

    anonymous = httpx.get(f"{server.url}{turn['stream_url']}", headers=relay_headers(turn))
    assert anonymous.status_code == 401 and error_of(anonymous)["code"] == "credential_invalid"
    forged = client.get(turn["stream_url"], headers={"Authorization": "Relay wcr_not-a-real-one"})
    assert forged.status_code == 401
    bad_resume = client.get(turn["stream_url"], headers=relay_headers(turn, **{"Last-Event-ID": "evt_x; DROP"}))
    assert bad_resume.status_code == 400 and error_of(bad_resume)["code"] == "invalid_request"
    assert client.post(turn["stream_url"], headers=relay_headers(turn)).status_code == 405
    assert client.get("/chat/relay/nothing-here").status_code == 404
    # None of that used the credential: its owner still can.
    assert RelayCredential.objects.get(turn_id=turn["turn_id"]).state == "minted"
    response, events = read_stream(client, turn)
    assert response.status_code == 200 and events[-1]["event"] == "turn"


def test_the_web_chat_key_never_authenticates_over_http(server, alice, sim_node):
    client = signed_in(server, alice.user)
    read_stream(client, new_turn(client))
    key = ApiKey.objects.get(project=alice.project, kind=ApiKey.Kind.WEBCHAT)
    assert key.lookup.startswith("wc_") and key.hash == "!"
    for presented in (key.lookup, f"sk_live_{key.lookup}", "!"):
        response = httpx.get(f"{server.api}/models", headers={"Authorization": f"Bearer {presented}"})
        assert response.status_code == 401


# --- resume, disconnect, stop ---------------------------------------------------------------------------


def test_a_dropped_stream_resumes_from_the_last_event_without_a_second_charge(server, alice, sim_node, sim):
    sim.configure(tokens_per_s=60)
    client = signed_in(server, alice.user)
    turn = new_turn(client)
    first = read_some(client, turn, 3)
    assert [e["id"] for e in first] == [1, 2, 3]

    response, rest = read_stream(client, turn, headers=relay_headers(turn, **{"Last-Event-ID": "evt_3"}))
    assert response.status_code == 200
    ids = [e["id"] for e in rest if e["id"] is not None]
    assert ids and ids[0] == 4 and ids == list(range(4, 4 + len(ids)))
    assert rest[-1]["event"] == "turn"

    reply = wait_for_reply(turn["turn_id"])
    assert webchat.chat_store.message_text(reply) == answer_text(first + rest)
    assert reply.status == "ok"
    records = RequestRecord.objects.filter(session_id=turn["conversation_id"])
    assert records.count() == 1 and records.get().cost == reply.cost
    assert Transfer.objects.filter(id=records.get().transfer_id, status="posted").count() == 1
    assert sim.stats()["requests"] == 1


def test_a_stream_resumes_on_another_server_process(server, second_server_proc, alice, sim_node, sim):
    sim.configure(tokens_per_s=60)
    client = signed_in(server, alice.user)
    turn = new_turn(client)
    first = read_some(client, turn, 4)

    elsewhere = signed_in(second_server_proc, alice.user)  # the same user, another process
    response, rest = read_stream(elsewhere, turn, headers=relay_headers(turn, **{"Last-Event-ID": "evt_4"}))
    assert response.status_code == 200
    ids = [e["id"] for e in rest if e["id"] is not None]
    assert ids[0] == 5 and ids == list(range(5, 5 + len(ids)))
    reply_event = json.loads(rest[-1]["data"])
    assert rest[-1]["event"] == "turn" and reply_event["status"] == "ok"

    reply = wait_for_reply(turn["turn_id"])
    assert webchat.chat_store.message_text(reply) == answer_text(first + rest)
    assert reply_event["cost"] == reply.cost == RequestRecord.objects.get(request_id=reply.request_id).cost
    assert sim.stats()["requests"] == 1


def test_a_turn_is_stored_when_the_browser_disconnects(server, alice, sim_node, sim):
    sim.configure(tokens_per_s=80)
    client = signed_in(server, alice.user)
    turn = new_turn(client)
    read_some(client, turn, 2)  # then the browser goes away
    reply = wait_for_reply(turn["turn_id"])
    record = RequestRecord.objects.get(request_id=reply.request_id)
    assert reply.status == "ok" and record.status_code == 200
    assert (reply.output_tokens, reply.cost) == (record.output_tokens, record.cost)
    assert reply.output_tokens == sim.stats()["last"][0]["completion_tokens"]  # generated to the end
    assert RelayCredential.objects.get(turn_id=turn["turn_id"]).state == "revoked"


def test_stop_cancels_the_generation_and_bills_only_what_was_generated(server, alice, sim_node, sim):
    sim.configure(tokens_per_s=20)
    client = signed_in(server, alice.user)
    turn = new_turn(client)
    read_some(client, turn, 3)
    stopped = client.post(turn["stop_url"], headers={"Accept": "application/json"})
    assert stopped.status_code == 200
    reply = wait_for_reply(turn["turn_id"])
    record = RequestRecord.objects.get(request_id=reply.request_id)
    assert reply.status == "stopped"
    assert record.error_code == "client_disconnected"
    assert 0 < reply.output_tokens < 200 and reply.output_tokens == record.output_tokens
    assert reply.cost == record.cost == Transfer.objects.get(id=record.transfer_id).amount
    assert Wallet.objects.get(id=alice.wallet.id).reserved == 0
    state = client.get(turn["status_url"]).json()
    assert state["state"] == "revoked" and state["reply"]["status"] == "stopped"


# --- money and plans ------------------------------------------------------------------------------------


def test_the_turn_spend_cap_bounds_max_tokens_and_refuses_a_turn_that_cannot_fit(server, alice, sim_node, sim):
    client = signed_in(server, alice.user)
    turn = new_turn(client, "hi")
    conversation = Conversation.objects.get(public_id=turn["conversation_id"])
    prompt = tokens.chat_prompt_bound({"messages": webchat.history(conversation)})
    # sim-small: 1 micro-unit per input token, 2 per output token → room for exactly 7 output tokens.
    RelayCredential.objects.filter(turn_id=turn["turn_id"]).update(spend_cap=prompt + 2 * 7 + 1)
    response, _ = read_stream(client, turn)
    assert response.status_code == 200
    reply = wait_for_reply(turn["turn_id"])
    assert reply.output_tokens == 7 and sim.stats()["last"][0]["completion_tokens"] == 7
    assert reply.cost <= prompt + 15

    refused_turn = client.post(turn["conversation_url"] + "turns", data={"message": "again"},
                               headers={"Accept": "application/json"}).json()
    RelayCredential.objects.filter(turn_id=refused_turn["turn_id"]).update(spend_cap=1)
    before = sim.stats()["requests"]
    refused = client.get(refused_turn["stream_url"], headers=relay_headers(refused_turn))
    assert refused.status_code == 402
    assert error_of(refused)["code"] == "spend_cap_reached"
    failed = wait_for_reply(refused_turn["turn_id"])
    assert failed.status == "failed" and failed.cost == 0
    assert sim.stats()["requests"] == before
    assert Wallet.objects.get(id=alice.wallet.id).reserved == 0
    assert RelayCredential.objects.get(turn_id=refused_turn["turn_id"]).state == "revoked"


def test_the_model_picker_lists_only_plan_models_and_the_gateway_refuses_others(server, alice, sim_node):
    from billing.models import Plan
    from billing.plans import account_plan_set

    client = signed_in(server, alice.user)
    assert f'<option value="{SIM_MODEL}">' in client.get("/console/chat/").text
    turn = new_turn(client)  # minted while the plan allowed it

    plan = Plan.objects.create(code="chat-test", name="Chat test", allowed_models=["some-other-model"])
    account_plan_set(account=alice.organization.billing_account, plan=plan)
    cache_settle()
    assert f'<option value="{SIM_MODEL}">' not in client.get("/console/chat/").text
    refused_new = client.post("/console/chat/new", data={"model": SIM_MODEL, "message": "hi"},
                              headers={"Accept": "application/json"})
    assert refused_new.status_code == 400

    response = client.get(turn["stream_url"], headers=relay_headers(turn))
    assert response.status_code == 403 and error_of(response)["code"] == "model_forbidden"
    assert wait_for_reply(turn["turn_id"]).status == "failed"
    assert not RequestRecord.objects.filter(project=alice.project, status_code=200).exists()


# --- the page without JavaScript, and conversation management ------------------------------------------------


def test_without_javascript_a_posted_message_is_answered_after_a_refresh(server, alice, sim_node):
    client = signed_in(server, alice.user)
    response = client.post("/console/chat/new", data={"model": SIM_MODEL, "message": "no script here"})
    assert response.status_code == 302
    url = response.headers["location"]
    conversation = Conversation.objects.get(public_id=re.search(r"(conv_[A-Za-z0-9]+)", url).group(1))
    reply = None
    deadline = time.monotonic() + 20
    while reply is None and time.monotonic() < deadline:
        reply = Message.objects.filter(conversation=conversation, role="assistant").first()
        time.sleep(0.1)
    assert reply is not None and reply.status == "ok" and reply.cost > 0
    page = client.get(url)
    assert "no script here" in page.text and 'http-equiv="refresh"' not in page.text


def test_rename_delete_and_regenerate(server, alice, sim_node):
    client = signed_in(server, alice.user)
    turn = new_turn(client, "to be renamed")
    read_stream(client, turn)
    first_reply = Message.objects.get(turn_id=turn["turn_id"])

    regenerated = client.post(turn["conversation_url"] + "turns", data={"regenerate": "1"},
                              headers={"Accept": "application/json"}).json()
    _, events = read_stream(client, regenerated)
    assert events[-1]["event"] == "turn"
    conversation = Conversation.objects.get(public_id=turn["conversation_id"])
    visible = webchat.visible_messages(conversation)
    assert [m.role for m in visible] == ["user", "assistant"]
    assert visible[1].turn_id == regenerated["turn_id"]
    first_reply.refresh_from_db()
    assert first_reply.superseded

    assert client.post(turn["conversation_url"] + "rename", data={"title": "Renamed chat"}).status_code == 302
    assert "Renamed chat" in client.get("/console/chat/").text
    assert client.post(turn["conversation_url"] + "delete").status_code == 302
    assert client.get(turn["conversation_url"]).status_code == 404
    assert "Renamed chat" not in client.get("/console/chat/").text


def test_posts_need_the_csrf_token(server, alice, sim_node):
    client = signed_in(server, alice.user)
    del client.headers["X-CSRFToken"]
    response = client.post("/console/chat/new", data={"model": SIM_MODEL, "message": "hi"})
    assert response.status_code == 403
    assert not Conversation.objects.exists()


def test_the_demo_user_can_chat_with_the_local_model(transactional_db, capsys, settings):
    from django.core.management import call_command

    from console.models import Organization

    settings.LOCAL_NODE_ENABLED = True
    call_command("bootstrap_demo", "--json")
    organization = Organization.objects.get(public_id=json.loads(capsys.readouterr().out)["organization"])
    assert webchat.chat_models(organization) == [settings.LOCAL_NODE_MODEL]  # not the embedding model
    assert webchat.chat_project(organization).allow_non_confidential  # the local node has no attestation


def test_a_relay_ttl_above_sixty_seconds_stops_start_up():
    from tests.test_settings import load_settings

    result = load_settings(WEBCHAT_RELAY_TTL_SECONDS="61")
    assert result.returncode != 0 and "WEBCHAT_RELAY_TTL_SECONDS=61 is above the maximum 60" in result.stderr
    assert load_settings(WEBCHAT_RELAY_TTL_SECONDS="30").returncode == 0
