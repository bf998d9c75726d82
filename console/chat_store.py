"""The one place Web Chat text (message content, conversation titles) is written and read.

Everything else (services, the relay, views, templates) goes through these
functions, never through ``Message.content`` / ``Conversation.title`` directly.
The text is stored encrypted (gateway.vault.text_seal: a fresh data key per text,
wrapped by the project's key, wrapped by a master key), with the project and the
row (the message's id, the conversation's public id) as associated data: a value
copied to another row or project does not open. Text written before encryption
was on reads as it is.
"""
from __future__ import annotations

from django.db import transaction

from config import envelope

from .models import Conversation, Message

TITLE_MAX = 120
UNREADABLE = "[This text can no longer be read: the project's key was destroyed.]"


def _seal(text: str, *, conversation: Conversation, owner: str, ref: str, kind: str) -> str:
    from gateway import vault

    return vault.text_seal(project=conversation.project, owner=owner, ref=ref, kind=kind, text=text)


def _open(stored: str, *, conversation: Conversation, owner: str, ref: str, kind: str) -> str:
    from gateway import vault

    try:
        return vault.text_open(project=conversation.project, owner=owner, ref=ref, kind=kind, stored=stored)
    except vault.BodyUnavailable:
        return UNREADABLE


def _message_seal(message: Message, text: str, conversation: Conversation) -> None:
    message.content = _seal(text, conversation=conversation, owner="message", ref=str(message.id), kind="content")
    message.save(update_fields=["content"])


def message_write(*, conversation: Conversation, role: str, text: str, **fields) -> Message:
    """A new message in ``conversation`` (``fields``: request_id, tokens, cost, status, turn_id)."""
    with transaction.atomic():  # the row first (its id is bound into the ciphertext), then its text
        message = Message.objects.create(conversation=conversation, role=role, content="", **fields)
        _message_seal(message, text, conversation)
    return message


def reply_write(*, conversation: Conversation, turn_id: str, text: str, **fields) -> tuple[Message, bool]:
    """The assistant reply to turn ``turn_id``, stored once: a second call returns the first reply
    (False) and changes nothing, so a turn that ends in two places is stored exactly once."""
    with transaction.atomic():
        message, created = Message.objects.get_or_create(
            turn_id=turn_id,
            defaults={"conversation": conversation, "role": Message.Role.ASSISTANT, "content": "", **fields},
        )
        if created:
            _message_seal(message, text, conversation)
    return message, created


def message_text(message: Message) -> str:
    if not message.content:
        return ""
    return _open(message.content, conversation=message.conversation, owner="message", ref=str(message.id), kind="content")


def title_write(conversation: Conversation, title: str) -> None:
    """Set the title on the object (the caller saves it with ``update_fields=["title", ...]``)."""
    title = " ".join(title.split())[:TITLE_MAX]
    conversation.title = (
        _seal(title, conversation=conversation, owner="conversation", ref=conversation.public_id, kind="title")
        if title else ""
    )


def title_text(conversation: Conversation) -> str:
    if not conversation.title:
        return ""
    return _open(conversation.title, conversation=conversation, owner="conversation", ref=conversation.public_id, kind="title")


def rewrap(project, *, version: int, kek: bytes, keks: dict[int, bytes], batch: int = 500) -> int:
    """Re-wrap the data keys of the project's Web Chat texts under KEK ``version`` (for
    ``manage.py rotate_keys --project``); batched, resumable. Returns how many changed."""
    from gateway import vault

    org = project.organization_id

    def rewrapped(stored: str, owner: str, ref: str, kind: str) -> str | None:
        if not envelope.is_packed(stored):
            return None
        old_version, wrapped, nonce, ciphertext = envelope.unpack(stored)
        if old_version == version:
            return None
        old = keks.get(old_version)
        if old is None:
            old = keks[old_version] = vault.project_key(organization_id=org, project_id=project.id, version=old_version)
        aad = envelope.blob_aad(organization_id=org, project_id=project.id, owner=owner, ref=ref, kind=kind)
        return envelope.pack(version, envelope.rewrap_dek(old, old_version, kek, version, wrapped, aad), nonce, ciphertext)

    done = 0
    last = 0
    while True:
        with transaction.atomic():
            rows = list(
                Message.objects.select_for_update(skip_locked=True)
                .filter(conversation__project_id=project.id, id__gt=last).order_by("id").only("id", "content")[:batch]
            )
            if not rows:
                break
            for message in rows:
                new = rewrapped(message.content, "message", str(message.id), "content")
                if new is not None:
                    Message.objects.filter(id=message.id).update(content=new)
                    done += 1
            last = rows[-1].id
    for conversation in Conversation.objects.filter(project_id=project.id).exclude(title="").only("id", "public_id", "title"):
        new = rewrapped(conversation.title, "conversation", conversation.public_id, "title")
        if new is not None:
            Conversation.objects.filter(id=conversation.id).update(title=new)
            done += 1
    return done
