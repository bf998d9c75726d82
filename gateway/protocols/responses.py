"""POST /v1/responses and GET /v1/responses/{id}: the OpenAI Responses API over chat nodes.

Input items become chat messages (function_call → assistant tool_calls,
function_call_output → tool message), the answer becomes output items
(message with output_text, function_call), and a stream becomes the typed
events ``response.created`` … ``response.output_text.delta`` …
``response.completed`` with a ``sequence_number`` each. Stored responses
(``store``, default true) are sealed at rest and readable by the same project.
"""
from __future__ import annotations

import re
import time
from typing import Annotated, Any, Literal

import orjson
from pydantic import Field

from billing.pricing import Usage
from django.utils import timezone

from config import asyncdb, crypto
from config.asyncdb import Stmt
from config.ids import new_id

from .. import schemas, tokens
from ..errors import GatewayError
from .base import Dialect, Encoder, content_modalities

_PURPOSE = "responses"
# Response ids are plain ASCII (config.ids); anything else was never stored, and a
# NUL byte would make PostgreSQL refuse the query: a 500 instead of a 404.
_RESPONSE_ID = re.compile(r"[A-Za-z0-9_]{1,64}")


class FunctionTool(schemas._Open):
    type: Literal["function"]
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunctionChoice(schemas._Open):
    type: Literal["function"]
    name: str


class ResponsesRequest(schemas._Open):
    model: Annotated[str, Field(min_length=1, max_length=200)]
    input: Annotated[str, Field(min_length=1)] | Annotated[list[dict[str, Any]], Field(min_length=1)]
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    stream: bool = False
    store: bool = True
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    metadata: dict[str, str] | None = None
    previous_response_id: None = None
    temperature: float | None = None
    top_p: float | None = None


def _part(part: Any, index: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise _invalid(index, "a content part must be an object")
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        if not isinstance(part.get("text"), str):
            raise _invalid(f"{index}.text", "text must be a string")
        return {"type": "text", "text": part["text"]}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise _invalid(f"{index}.image_url", "input_image needs an image_url (a URL or a data: URL)")
        image = {"url": url}
        if part.get("detail") in ("low", "high", "auto"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_audio":
        audio = part.get("input_audio")
        if not isinstance(audio, dict) or not audio.get("data"):
            raise _invalid(f"{index}.input_audio", "input_audio needs data and format")
        return {"type": "input_audio", "input_audio": audio}
    raise _invalid(f"{index}.type", f"unsupported content part type {kind!r}")


def _invalid(param: str, message: str) -> GatewayError:
    return GatewayError("invalid_request", f"Invalid value for '{param}': {message}.", param=param)


def _content(content: Any, index: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        return [_part(p, f"{index}.{i}") for i, p in enumerate(content)]
    raise _invalid(index, "content must be a string or a non-empty list of parts")


def to_messages(request: ResponsesRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    if isinstance(request.input, str):
        messages.append({"role": "user", "content": request.input})
        return messages
    for i, item in enumerate(request.input):
        where = f"input.{i}"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _invalid(f"{where}.role", "role must be user, assistant, system or developer")
            messages.append({"role": role, "content": _content(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            call = {
                "id": str(item.get("call_id") or ""),
                "type": "function",
                "function": {"name": str(item.get("name") or ""), "arguments": str(item.get("arguments") or "")},
            }
            if not call["id"] or not call["function"]["name"]:
                raise _invalid(where, "a function_call item needs call_id and name")
            last = messages[-1] if messages else None
            if last and last["role"] == "assistant" and last.get("tool_calls") is not None and not last.get("content"):
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not item.get("call_id"):
                raise _invalid(f"{where}.call_id", "a function_call_output item needs the call_id it answers")
            output = item.get("output")
            messages.append({
                "role": "tool",
                "tool_call_id": str(item["call_id"]),
                "content": output if isinstance(output, str) else orjson.dumps(output).decode(),
            })
        else:
            raise _invalid(f"{where}.type", f"unsupported input item type {kind!r}")
    return messages


def _usage(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


class ResponsesDialect(Dialect):
    endpoint = "responses"
    output_param = "max_output_tokens"

    def __init__(self, data: dict[str, Any], *, request_id: str):
        if data.get("previous_response_id") is not None:
            raise GatewayError(
                "invalid_request",
                "previous_response_id is not supported: send the conversation's items in 'input'.",
                param="previous_response_id",
            )
        self.request = schemas.validate(ResponsesRequest, data)
        self.request_id = request_id
        self.response_id = new_id("resp")
        self.model = self.request.model
        self.stream = self.request.stream
        self.messages = to_messages(self.request)
        found: set[str] = {"text"}
        for message in self.messages:
            found |= content_modalities(message.get("content"))
        self.modalities = frozenset(found)
        self.created_at = int(time.time())

    def output_cap(self, model_max: int) -> int:
        return self.request.max_output_tokens or model_max

    def prompt_bound(self) -> int:
        body: dict[str, Any] = {"messages": self.messages}
        if self.request.tools:
            body["tools"] = [t.model_dump(exclude_none=True) for t in self.request.tools]
        return tokens.chat_prompt_bound(body)

    def upstream(self, output_cap: int) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": self.messages, "max_tokens": output_cap}
        for name in ("temperature", "top_p"):
            if getattr(self.request, name) is not None:
                body[name] = getattr(self.request, name)
        if self.request.tools:
            body["tools"] = [
                {"type": "function", "function": t.model_dump(exclude_none=True, exclude={"type", "strict"})}
                for t in self.request.tools
            ]
        choice = self.request.tool_choice
        if choice is not None:
            body["tool_choice"] = choice if isinstance(choice, str) else {
                "type": "function", "function": {"name": choice.name}
            }
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def envelope(self, model: str, status: str, output: list, usage: Usage | None, node: dict) -> dict[str, Any]:
        request = self.request
        choice = request.tool_choice
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": request.instructions,
            "max_output_tokens": request.max_output_tokens,
            "model": model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "store": request.store,
            "temperature": request.temperature,
            "text": {"format": {"type": "text"}},
            "tool_choice": (choice if isinstance(choice, str) else choice.model_dump()) if choice else "auto",
            "tools": [t.model_dump(exclude_none=True) for t in request.tools or ()],
            "top_p": request.top_p,
            "truncation": "disabled",
            "usage": _usage(usage),
            "metadata": request.metadata or {},
            "node": node,
        }

    def answer(self, result, usage, node, model):
        choice = (result.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        output: list[dict[str, Any]] = []
        if message.get("content"):
            output.append(_message_item(new_id("msg"), message["content"], "completed"))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            output.append(_call_item(new_id("fc"), call.get("id") or new_id("call"), function.get("name", ""),
                                     function.get("arguments", ""), "completed"))
        status = "incomplete" if choice.get("finish_reason") == "length" else "completed"
        return self.envelope(model, status, output, usage, node)

    def encoder(self, model, node):
        return ResponsesEncoder(self, model, node)

    def store(self, obj, key) -> list[Stmt]:
        if obj is None or not self.request.store:
            return []
        return [store_statement(obj, project_id=key.project_id, request_id=self.request_id)]


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


class ResponsesEncoder(Encoder):
    def __init__(self, dialect: ResponsesDialect, model: str, node: dict):
        self.dialect, self.model, self.node = dialect, model, node
        self.seq = 0
        self.items: list[dict[str, Any]] = []  # output items in order, built as the deltas arrive
        self.text_item: dict[str, Any] | None = None  # the message item being written
        self.calls: dict[int, dict[str, Any]] = {}  # node tool-call index -> function_call item
        self.finish_reason: str | None = None
        self.result: dict[str, Any] | None = None

    def _event(self, kind: str, **fields: Any):
        self.seq += 1
        return (kind, orjson.dumps({"type": kind, "sequence_number": self.seq, **fields}))

    def _snapshot(self, status: str, usage: Usage | None = None, output: list | None = None) -> dict[str, Any]:
        return self.dialect.envelope(self.model, status, output if output is not None else [], usage, self.node)

    def start(self):
        shell = self._snapshot("in_progress")
        return [self._event("response.created", response=shell), self._event("response.in_progress", response=shell)]

    def _close_text(self) -> list:
        item = self.text_item
        if item is None:
            return []
        self.text_item = None
        index = self.items.index(item)
        text = item["content"][0]["text"]
        item["status"] = "completed"
        part = item["content"][0]
        return [
            self._event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                        text=text, logprobs=[]),
            self._event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                        part=part),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def chunk(self, chunk):
        events = []
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if self.text_item is None:
                    self.text_item = _message_item(new_id("msg"), "", "in_progress")
                    self.items.append(self.text_item)
                    index = len(self.items) - 1
                    shell = {**self.text_item, "content": []}
                    events.append(self._event("response.output_item.added", output_index=index, item=shell))
                    events.append(self._event(
                        "response.content_part.added", item_id=self.text_item["id"], output_index=index,
                        content_index=0, part={"type": "output_text", "text": "", "annotations": []},
                    ))
                self.text_item["content"][0]["text"] += text
                events.append(self._event(
                    "response.output_text.delta", item_id=self.text_item["id"],
                    output_index=self.items.index(self.text_item), content_index=0, delta=text, logprobs=[],
                ))
            for call in delta.get("tool_calls") or ():
                events += self._close_text()
                position = call.get("index", 0)
                function = call.get("function") or {}
                item = self.calls.get(position)
                if item is None:
                    item = _call_item(new_id("fc"), call.get("id") or new_id("call"), function.get("name") or "",
                                      "", "in_progress")
                    self.calls[position] = item
                    self.items.append(item)
                    events.append(self._event("response.output_item.added", output_index=len(self.items) - 1,
                                              item=dict(item)))
                if function.get("arguments"):
                    item["arguments"] += function["arguments"]
                    events.append(self._event(
                        "response.function_call_arguments.delta", item_id=item["id"],
                        output_index=self.items.index(item), delta=function["arguments"],
                    ))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _close_all(self) -> list:
        events = self._close_text()
        for item in self.calls.values():
            if item["status"] != "completed":
                item["status"] = "completed"
                index = self.items.index(item)
                events.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                          output_index=index, arguments=item["arguments"]))
                events.append(self._event("response.output_item.done", output_index=index, item=item))
        return events

    def finish(self, usage):
        events = self._close_all()
        status = "incomplete" if self.finish_reason == "length" else "completed"
        self.result = self._snapshot(status, usage, self.items)
        events.append(self._event(f"response.{status}", response=self.result))
        return events

    def fail(self, message, usage, code="upstream_unavailable"):
        self.result = self._snapshot("failed", usage, self.items)
        self.result["error"] = {"code": "server_error", "message": message}
        return [self._event("response.failed", response=self.result)]

    def final(self):
        return self.result


# --- stored responses ------------------------------------------------------------------


def _aad(project_id: int, response_id: str) -> bytes:
    return f"resp:{project_id}:{response_id}".encode()


def store_statement(obj: dict[str, Any], *, project_id: int, request_id: str) -> Stmt:
    sealed = crypto.seal(_PURPOSE, orjson.dumps(obj), _aad(project_id, obj["id"]))
    return Stmt(
        "INSERT INTO gateway_storedresponse (public_id, project_id, request_id, created_at, body) "
        "VALUES (%(public_id)s, %(project_id)s, %(request_id)s, %(created_at)s, %(body)s)",
        {
            "public_id": obj["id"],
            "project_id": project_id,
            "request_id": request_id,
            "created_at": timezone.now(),
            "body": sealed,
        },
    )


async def load(response_id: str, *, project_id: int) -> bytes | None:
    if not _RESPONSE_ID.fullmatch(response_id):
        return None
    row = await asyncdb.fetch_one(
        "SELECT body FROM gateway_storedresponse WHERE public_id = %(id)s AND project_id = %(project_id)s",
        {"id": response_id, "project_id": project_id},
    )
    if row is None:
        return None
    return crypto.open_sealed(_PURPOSE, bytes(row[0]), _aad(project_id, response_id))
