"""What a client protocol must provide to run through the paid pipeline."""
from __future__ import annotations

from typing import Any

from billing.pricing import Usage
from config.asyncdb import Stmt

Event = tuple[str | None, bytes]  # (SSE event name or None, data)


class Encoder:
    """Turns a node's OpenAI chunks into this protocol's stream events, for one stream."""

    def start(self) -> list[Event]:
        return []

    def chunk(self, chunk: dict[str, Any]) -> list[Event]:
        raise NotImplementedError

    def finish(self, usage: Usage | None) -> list[Event]:
        raise NotImplementedError

    def fail(self, message: str, usage: Usage | None, code: str = "upstream_unavailable") -> list[Event]:
        """The node broke mid-answer: an explicit error event, never a silent end."""
        raise NotImplementedError

    def cancelled(self, usage: Usage | None) -> list[Event]:
        """Nobody came back within the resume window; recorded for a late reader."""
        message = "The stream was cancelled: no client was connected within the resume window."
        return self.fail(message, usage, "stream_cancelled")

    def final(self) -> dict[str, Any] | None:
        """The whole answer as one object, for protocols that store it (Responses)."""
        return None


class Dialect:
    endpoint = ""
    call = "chat"  # the node call: chat | completions | embeddings
    publishable_ok = True
    scope = "chat"  # the API key scope it needs (console.keys.SCOPES)
    output_param = "max_tokens"
    modalities: frozenset[str] = frozenset({"text"})
    stream = False
    model = ""

    def __init__(self, data: dict[str, Any], *, request_id: str):
        raise NotImplementedError

    def output_cap(self, model_max: int) -> int:
        raise NotImplementedError

    def prompt_bound(self) -> int:
        raise NotImplementedError

    def upstream(self, output_cap: int) -> dict[str, Any]:
        """The OpenAI request body the node gets (its model name is set per node)."""
        raise NotImplementedError

    def answer(self, result: dict[str, Any], usage: Usage, node: dict[str, str], model: str) -> dict[str, Any]:
        raise NotImplementedError

    def encoder(self, model: str, node: dict[str, str]) -> Encoder:
        raise NotImplementedError

    def store(self, obj: dict[str, Any] | None, key) -> list[Stmt]:
        """Statements that keep the answer, run in the settlement's transaction."""
        return []


def usage_object(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
    }


def content_modalities(content: Any) -> set[str]:
    """The input kinds in an OpenAI content value (a string or a list of parts)."""
    found: set[str] = set()
    if isinstance(content, list):
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image_url":
                found.add("image")
            elif kind == "input_audio":
                found.add("audio")
    return found
