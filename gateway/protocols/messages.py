"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API over chat nodes.

Content blocks become chat content (text, image → image_url, tool_use →
assistant tool_calls, tool_result → tool messages); the answer becomes
content blocks with Anthropic's stop reasons, and a stream becomes
message_start / content_block_start / content_block_delta /
content_block_stop / message_delta (cumulative usage) / message_stop, with a
ping after the start. Errors on these routes use Anthropic's shape.

The request translation is nodes/anthropic_messages.py, shared with the
Anthropic node adapter and the simulator's Anthropic dialect.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import Field
from starlette.responses import Response

from billing.pricing import Usage
from config.ids import new_id
from nodes import anthropic_messages
from nodes.anthropic_messages import ERROR_TYPES, STOP_REASONS, tool_input

from .. import schemas, tokens
from ..errors import GatewayError
from .base import Dialect, Encoder, content_modalities




def error_body(exc: GatewayError, request_id: str) -> bytes:
    error = {"type": ERROR_TYPES.get(exc.status, "api_error"), "message": exc.message, "code": exc.code}
    return orjson.dumps({"type": "error", "error": error, "request_id": request_id})


def error_response(req, exc: GatewayError) -> Response:
    headers = {**req.response_headers(), **exc.headers, "request-id": req.request_id}
    return Response(error_body(exc, req.request_id), status_code=exc.status, media_type="application/json",
                    headers=headers)


class Tool(schemas._Open):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")]
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None


class ToolChoice(schemas._Open):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Message(schemas._Open):
    role: Literal["user", "assistant"]
    content: str | Annotated[list[dict[str, Any]], Field(min_length=1)]


class CountTokensRequest(schemas._Open):
    model: Annotated[str, Field(min_length=1, max_length=200)]
    messages: Annotated[list[Message], Field(min_length=1)]
    system: str | list[dict[str, Any]] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: Annotated[int, Field(ge=1)]
    stop_sequences: Annotated[list[str], Field(max_length=16)] | None = None
    stream: bool = False
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    metadata: dict[str, Any] | None = None


def _invalid(param: str, message: str) -> GatewayError:
    return GatewayError("invalid_request", f"{param}: {message}.", param=param)


def to_messages(request: CountTokensRequest) -> list[dict[str, Any]]:
    messages = [{"role": m.role, "content": m.content} for m in request.messages]
    try:
        return anthropic_messages.to_chat_messages(request.system, messages)
    except anthropic_messages.FormatError as exc:
        raise _invalid(exc.param, exc.message) from None


def _chat_tools(request: CountTokensRequest) -> list[dict[str, Any]] | None:
    return anthropic_messages.tools_to_chat([t.model_dump() for t in request.tools or ()])


def _chat_tool_choice(choice: ToolChoice | None) -> Any:
    try:
        return anthropic_messages.tool_choice_to_chat(choice.model_dump() if choice else None)
    except anthropic_messages.FormatError as exc:
        raise _invalid(exc.param, exc.message) from None


def prompt_bound(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
    body: dict[str, Any] = {"messages": messages}
    if tools:
        body["tools"] = tools
    return tokens.chat_prompt_bound(body)


def _usage(usage: Usage | None) -> dict[str, Any]:
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0}
    # Anthropic counts cache reads apart from input_tokens.
    return {
        "input_tokens": usage.input_tokens - usage.cached_input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached_input_tokens,
    }


class MessagesDialect(Dialect):
    endpoint = "messages"

    def __init__(self, data: dict[str, Any], *, request_id: str):
        self.request = schemas.validate(MessagesRequest, data)
        self.request_id = request_id
        self.message_id = f"msg_{request_id.removeprefix('req_')}"
        self.model = self.request.model
        self.stream = self.request.stream
        self.messages = to_messages(self.request)
        self.tools = _chat_tools(self.request)
        self.tool_choice = _chat_tool_choice(self.request.tool_choice)
        found: set[str] = {"text"}
        for message in self.messages:
            found |= content_modalities(message.get("content"))
        self.modalities = frozenset(found)

    def output_cap(self, model_max: int) -> int:
        return self.request.max_tokens

    def prompt_bound(self) -> int:
        return prompt_bound(self.messages, self.tools)

    def upstream(self, output_cap: int) -> dict[str, Any]:
        request = self.request
        body: dict[str, Any] = {"model": self.model, "messages": self.messages, "max_tokens": output_cap}
        if request.stop_sequences:
            body["stop"] = request.stop_sequences
        for name in ("temperature", "top_p"):
            if getattr(request, name) is not None:
                body[name] = getattr(request, name)
        if self.tools:
            body["tools"] = self.tools
        if self.tool_choice is not None:
            body["tool_choice"] = self.tool_choice
            if request.tool_choice.disable_parallel_tool_use:
                body["parallel_tool_calls"] = False
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def answer(self, result, usage, node, model):
        choice = (result.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        content: list[dict[str, Any]] = []
        if message.get("content"):
            content.append({"type": "text", "text": message["content"]})
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            content.append({"type": "tool_use", "id": call.get("id") or new_id("toolu"),
                            "name": function.get("name", ""), "input": tool_input(function.get("arguments", ""))})
        return {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
            "stop_sequence": None,
            "usage": _usage(usage),
            "node": node,
        }

    def encoder(self, model, node):
        return MessagesEncoder(self.message_id, model, node)


class MessagesEncoder(Encoder):
    def __init__(self, message_id: str, model: str, node: dict):
        self.message_id, self.model, self.node = message_id, model, node
        self.block: int | None = None  # index of the open content block
        self.kind: str | None = None  # "text" or "tool_use"
        self.blocks = 0
        self.calls: dict[int, int] = {}  # node tool-call index -> content block index
        self.finish_reason: str | None = None

    @staticmethod
    def _event(kind: str, **fields: Any):
        return (kind, orjson.dumps({"type": kind, **fields}))

    def start(self):
        message = {
            "id": self.message_id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0},
            "node": self.node,
        }
        return [self._event("message_start", message=message), self._event("ping")]

    def _stop_block(self) -> list:
        if self.block is None:
            return []
        index, self.block, self.kind = self.block, None, None
        return [self._event("content_block_stop", index=index)]

    def _open(self, kind: str, block: dict[str, Any]) -> list:
        events = self._stop_block()
        self.block, self.kind = self.blocks, kind
        self.blocks += 1
        events.append(self._event("content_block_start", index=self.block, content_block=block))
        return events

    def chunk(self, chunk):
        events = []
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if self.kind != "text":
                    events += self._open("text", {"type": "text", "text": ""})
                events.append(self._event("content_block_delta", index=self.block,
                                          delta={"type": "text_delta", "text": delta["content"]}))
            for call in delta.get("tool_calls") or ():
                position = call.get("index", 0)
                function = call.get("function") or {}
                if position not in self.calls:
                    block = {"type": "tool_use", "id": call.get("id") or new_id("toolu"),
                             "name": function.get("name") or "", "input": {}}
                    events += self._open("tool_use", block)
                    self.calls[position] = self.block
                if function.get("arguments"):
                    events.append(self._event("content_block_delta", index=self.calls[position],
                                              delta={"type": "input_json_delta", "partial_json": function["arguments"]}))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def finish(self, usage):
        stop = STOP_REASONS.get(self.finish_reason or "stop", "end_turn")
        return [
            *self._stop_block(),
            self._event("message_delta", delta={"stop_reason": stop, "stop_sequence": None}, usage=_usage(usage)),
            self._event("message_stop"),
        ]

    def fail(self, message, usage, code="upstream_unavailable"):
        error = {"type": "api_error", "message": message, "code": code}
        return [*self._stop_block(), ("error", orjson.dumps({"type": "error", "error": error}))]


def count_tokens(data: dict[str, Any]) -> tuple[str, int]:
    """The model named and an estimate of the prompt's tokens (about 4 bytes a token)."""
    request = schemas.validate(CountTokensRequest, data)
    messages = to_messages(request)
    return request.model, tokens.estimate_from_bound(prompt_bound(messages, _chat_tools(request)))
