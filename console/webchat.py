"""Web Chat: conversations, turns and their relay credentials (writes and reads).

A turn: the user's message is stored, then a relay credential is minted for the
answer's stream (console.relay serves it). The browser never holds an API key:
the turn is billed to the project's system key of kind ``webchat``, which has
no plaintext and cannot authenticate over HTTP; the relay hands its record to
the gateway in-process, with the credential's spend cap on top.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from billing.models import ModelPrice
from billing.topups import format_amount
from config import bus
from config.ids import ALPHABET, new_id
from nodes.models import NodeModel

from . import chat_store
from .models import ApiKey, Conversation, Message, Project, RelayCredential

STOP_TOPIC = "webchat.stop"  # value: a turn id; the process running it stops it
TOKEN_PREFIX = "wcr_"
WEBCHAT_LOOKUP_PREFIX = "wc_"  # "_" is outside the API key alphabet: keys.parse never yields it


class ChatError(Exception):
    """A refused chat action, with a message to show."""


# --- the billing key ---------------------------------------------------------------------


def webchat_key(project: Project) -> ApiKey:
    """The project's Web Chat key, created on first use. It has no plaintext: its lookup
    cannot come out of keys.parse, its hash matches no input, and gateway.auth refuses its
    kind, so the only way to bill to it is the relay's in-process call."""
    key = ApiKey.objects.filter(project=project, kind=ApiKey.Kind.WEBCHAT, status=ApiKey.Status.ACTIVE).first()
    if key is not None:
        return key
    with transaction.atomic():
        Project.objects.select_for_update().filter(id=project.id).first()  # one creator at a time
        key = ApiKey.objects.filter(project=project, kind=ApiKey.Kind.WEBCHAT, status=ApiKey.Status.ACTIVE).first()
        if key is None:
            lookup = WEBCHAT_LOOKUP_PREFIX + "".join(secrets.choice(ALPHABET) for _ in range(12))
            key = ApiKey.objects.create(
                project=project, kind=ApiKey.Kind.WEBCHAT, name="Web Chat", lookup=lookup, hash="!", last4="chat"
            )
    return key


# --- models a conversation may use ------------------------------------------------------------


def chat_models(organization) -> list[str]:
    """Text models that are priced, served by an active node, and allowed by the organization's plan."""
    served = set(
        NodeModel.objects.filter(node__status="active", max_output_tokens__gt=0).values_list("model", flat=True)
    )
    priced = set(ModelPrice.objects.filter(model__in=served).values_list("model", flat=True))
    plan = getattr(getattr(organization, "billing_account", None), "plan", None)
    allowed = set(plan.allowed_models) if plan is not None and plan.allowed_models else None
    return sorted(m for m in priced if allowed is None or m in allowed)


def chat_project(organization) -> Project | None:
    """The project a new conversation in ``organization`` is billed to: its first."""
    return organization.projects.order_by("created_at", "id").first()


# --- conversations --------------------------------------------------------------------------


def conversations_for(user, organization) -> QuerySet[Conversation]:
    return Conversation.objects.filter(user=user, deleted=False, project__organization=organization).order_by(
        "-updated_at", "-id"
    )


def conversation_for(user, public_id: str) -> Conversation:
    """The user's own conversation (DoesNotExist otherwise, also for a member of the same org)."""
    return Conversation.objects.select_related("project__organization").get(
        public_id=public_id, user=user, deleted=False, project__organization__memberships__user=user
    )


def conversation_create(*, user, project: Project, model: str) -> Conversation:
    if model not in chat_models(project.organization):
        raise ChatError(f"The model '{model}' is not available to this organization.")
    return Conversation.objects.create(user=user, project=project, model=model)


def conversation_rename(*, conversation: Conversation, title: str) -> Conversation:
    chat_store.title_write(conversation, title)
    conversation.save(update_fields=["title", "updated_at"])
    return conversation


def conversation_delete(*, conversation: Conversation) -> None:
    """Hidden at once; its credentials stop working (a turn in flight still ends and is billed)."""
    with transaction.atomic():
        Conversation.objects.filter(id=conversation.id).update(deleted=True)
        RelayCredential.objects.filter(
            conversation=conversation, state=RelayCredential.State.MINTED
        ).update(state=RelayCredential.State.REVOKED, revoked_at=timezone.now())


def visible_messages(conversation: Conversation) -> list[Message]:
    rows = list(conversation.messages.filter(superseded=False).order_by("created_at", "id"))
    for row in rows:
        row.conversation = conversation  # chat_store reads it; no query per message
    return rows


def history(conversation: Conversation) -> list[dict]:
    """The messages the model sees: the visible ones, without failed or empty replies."""
    out = []
    for message in visible_messages(conversation):
        text = chat_store.message_text(message)
        if message.role == Message.Role.ASSISTANT and (message.status == Message.Status.FAILED or not text):
            continue
        out.append({"role": message.role, "content": text})
    return out


# --- turns ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    turn_id: str
    credential: str  # the plaintext, handed to the browser once
    expires_at: dt.datetime
    user_message: Message | None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@transaction.atomic
def turn_start(*, conversation: Conversation, user, text: str = "", regenerate: bool = False) -> Turn:
    """Store the user's message (or, to regenerate, hide the last answer) and mint the
    relay credential for the answer's stream."""
    conversation = Conversation.objects.select_for_update().get(id=conversation.id)
    if conversation.deleted:
        raise ChatError("This conversation was deleted.")
    if conversation.model not in chat_models(conversation.project.organization):
        raise ChatError(f"The model '{conversation.model}' is no longer available to this organization.")
    user_message = None
    if regenerate:
        last = conversation.messages.filter(superseded=False).order_by("-created_at", "-id").first()
        if last is None:
            raise ChatError("There is nothing to regenerate yet.")
        if last.role == Message.Role.ASSISTANT:
            Message.objects.filter(id=last.id).update(superseded=True)
    else:
        text = text.strip()
        if not text:
            raise ChatError("Write a message first.")
        if len(text) > settings.WEBCHAT_MAX_MESSAGE_CHARS:
            raise ChatError(f"A message may be at most {settings.WEBCHAT_MAX_MESSAGE_CHARS} characters.")
        user_message = chat_store.message_write(conversation=conversation, role=Message.Role.USER, text=text)
        if not conversation.title:
            chat_store.title_write(conversation, text)
    conversation.save(update_fields=["title", "updated_at"])
    webchat_key(conversation.project)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    turn_id = new_id("turn")
    credential = RelayCredential.objects.create(
        token_hash=hash_token(token),
        user=user,
        conversation=conversation,
        turn_id=turn_id,
        model=conversation.model,
        spend_cap=settings.WEBCHAT_TURN_SPEND_CAP,
        expires_at=timezone.now() + dt.timedelta(seconds=settings.WEBCHAT_RELAY_TTL_SECONDS),
    )
    return Turn(turn_id=turn_id, credential=token, expires_at=credential.expires_at, user_message=user_message)


def turn_stop(*, conversation: Conversation, turn_id: str) -> bool:
    """Ask the process streaming this turn to stop it (the gateway bills what was generated).
    A turn whose stream never started is revoked here. False if the turn is over."""
    now = timezone.now()
    credentials = RelayCredential.objects.filter(conversation=conversation, turn_id=turn_id)
    if credentials.filter(state=RelayCredential.State.MINTED).update(
        state=RelayCredential.State.REVOKED, revoked_at=now, stop_requested=True
    ):
        return True
    if credentials.filter(state=RelayCredential.State.STREAMING).update(stop_requested=True):
        transaction.on_commit(lambda: bus.publish(STOP_TOPIC, turn_id))
        return True
    return False


def turn_state(*, conversation: Conversation, turn_id: str) -> dict | None:
    """Where a turn is: its credential's state and, once stored, its reply."""
    credential = RelayCredential.objects.filter(conversation=conversation, turn_id=turn_id).first()
    if credential is None:
        return None
    reply = Message.objects.filter(turn_id=turn_id, conversation=conversation).first()
    out = {"turn_id": turn_id, "state": credential.state, "reply": None}
    if reply is not None:
        reply.conversation = conversation
        out["reply"] = message_json(reply)
    return out


def message_json(message: Message) -> dict:
    return {
        "id": message.id,
        "role": message.role,
        "text": chat_store.message_text(message),
        "status": message.status,
        "input_tokens": message.input_tokens,
        "output_tokens": message.output_tokens,
        "cost": message.cost,
        "cost_display": format_amount(message.cost),
        "turn_id": message.turn_id,
        "request_id": message.request_id,
    }
