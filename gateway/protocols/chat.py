"""POST /v1/chat/completions: the nodes' own protocol, passed through."""
from __future__ import annotations

import time
from typing import Any

import orjson

from billing.pricing import Usage

from .. import schemas, tokens
from ..errors import envelope
from ..sse import DONE
from .base import Dialect, Encoder, content_modalities, usage_object


class ChatDialect(Dialect):
    endpoint = "chat.completions"

    def __init__(self, data: dict[str, Any], *, request_id: str):
        self.data = data
        self.request = schemas.validate(schemas.ChatCompletionRequest, data)
        self.request_id = request_id
        self.model = self.request.model
        self.stream = self.request.stream
        self.output_param = "max_completion_tokens" if self.request.max_completion_tokens else "max_tokens"
        found: set[str] = {"text"}
        for message in data["messages"]:
            found |= content_modalities(message.get("content"))
        self.modalities = frozenset(found)

    def output_cap(self, model_max: int) -> int:
        return self.request.output_cap or model_max

    def prompt_bound(self) -> int:
        return tokens.chat_prompt_bound(self.data)

    def upstream(self, output_cap: int) -> dict[str, Any]:
        # The node must never produce more than was reserved.
        upstream = dict(self.data)
        upstream.pop("max_completion_tokens", None)
        upstream["max_tokens"] = output_cap
        if self.stream:
            upstream["stream_options"] = {"include_usage": True}
        return upstream

    def answer(self, result, usage, node, model):
        result["id"] = f"chatcmpl-{self.request_id}"
        result["model"] = model
        result["usage"] = usage_object(usage)
        result["node"] = node
        return result

    def encoder(self, model, node):
        return ChatEncoder(f"chatcmpl-{self.request_id}", model, node, self.request.include_usage, self.request_id)


class ChatEncoder(Encoder):
    def __init__(self, completion_id: str, model: str, node: dict, include_usage: bool, request_id: str,
                 obj: str = "chat.completion.chunk"):
        self.completion_id, self.model, self.node = completion_id, model, node
        self.include_usage = include_usage
        self.request_id = request_id
        self.object = obj
        self.first = True

    def chunk(self, chunk):
        chunk["id"] = self.completion_id
        chunk["model"] = self.model
        chunk.pop("usage", None)
        if self.first:
            chunk["node"] = self.node
            self.first = False
        return [(None, orjson.dumps(chunk))]

    def finish(self, usage: Usage | None):
        events = []
        if self.include_usage and usage is not None:
            last = {
                "id": self.completion_id,
                "object": self.object,
                "created": int(time.time()),
                "model": self.model,
                "choices": [],
                "usage": usage_object(usage),
            }
            events.append((None, orjson.dumps(last)))
        events.append((None, DONE))
        return events

    def fail(self, message, usage, code="upstream_unavailable"):
        return [(None, orjson.dumps(envelope(code, message, self.request_id)))]
