"""The one place Web Chat text (message content, conversation titles) is written and read.

Everything else (services, the relay, views, templates) goes through these
functions, never through ``Message.content`` / ``Conversation.title`` directly,
so the privacy issue can swap in envelope encryption here (seal on write, open
on read, with the conversation's project and the row as associated data)
without touching any caller. Until then the text is stored as it is.
"""
from __future__ import annotations

from .models import Conversation, Message

TITLE_MAX = 120


def _seal(text: str, *, conversation: Conversation) -> str:
    return text  # the privacy issue: encrypt to the project's key, bound to the conversation


def _open(stored: str, *, conversation: Conversation) -> str:
    return stored


def message_write(*, conversation: Conversation, role: str, text: str, **fields) -> Message:
    """A new message in ``conversation`` (``fields``: request_id, tokens, cost, status, turn_id)."""
    return Message.objects.create(
        conversation=conversation, role=role, content=_seal(text, conversation=conversation), **fields
    )


def reply_write(*, conversation: Conversation, turn_id: str, text: str, **fields) -> tuple[Message, bool]:
    """The assistant reply to turn ``turn_id``, stored once: a second call returns the first reply
    (False) and changes nothing, so a turn that ends in two places is stored exactly once."""
    return Message.objects.get_or_create(
        turn_id=turn_id,
        defaults={
            "conversation": conversation,
            "role": Message.Role.ASSISTANT,
            "content": _seal(text, conversation=conversation),
            **fields,
        },
    )


def message_text(message: Message) -> str:
    return _open(message.content, conversation=message.conversation)


def title_write(conversation: Conversation, title: str) -> None:
    """Set the title on the object (the caller saves it with ``update_fields=["title", ...]``)."""
    title = " ".join(title.split())[:TITLE_MAX]
    conversation.title = _seal(title, conversation=conversation)


def title_text(conversation: Conversation) -> str:
    return _open(conversation.title, conversation=conversation) if conversation.title else ""
