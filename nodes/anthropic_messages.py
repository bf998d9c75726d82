"""Anthropic's Messages API and OpenAI chat, translated both ways: pure functions, no Django, no I/O.

Written once here because three places need it, and nodes must not import the gateway:

* ``gateway/protocols/messages.py`` (clients speak Messages, nodes speak chat) turns a
  Messages request into chat messages, tools and tool choice (:func:`to_chat_messages`,
  :func:`tools_to_chat`, :func:`tool_choice_to_chat`) and chat finish reasons into stop
  reasons (:data:`STOP_REASONS`);
* ``nodes/adapters/anthropic.py`` (the gateway speaks chat, the upstream speaks Messages)
  goes the other way: :func:`to_messages_request`, :func:`completion_from_message`,
  :func:`chat_usage`, and :class:`ChunkTranslator` for streams;
* ``nodes/nodeserver/anthropic.py`` (the simulator's Anthropic dialect) parses Messages
  requests with the same functions the gateway uses.

Bad input raises :class:`FormatError`, naming the offending field in Anthropic's or
OpenAI's dotted path style (``messages.1.content.0``).
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson

# OpenAI chat finish_reason -> Anthropic stop_reason, and back.
# Anthropic's error ``type`` for each HTTP status (its docs' table, and the statuses our gateway uses).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "api_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use"}
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Anthropic's temperature range is [0, 1], OpenAI's [0, 2]: a higher value is sent as 1.
MAX_TEMPERATURE = 1.0
# OpenAI fields with no Messages equivalent that would change what the client gets back:
# refused rather than silently dropped. (Pure sampling hints such as seed or the penalties
# are dropped: the answer keeps its shape.)
_REFUSED = {
    "logprobs": "log probabilities are not available from this model",
    "top_logprobs": "log probabilities are not available from this model",
    "logit_bias": "logit_bias is not supported by this model",
    "audio": "audio output is not available from this model",
    "prediction": "predicted outputs are not supported by this model",
}


class FormatError(ValueError):
    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}.")
        self.param = param
        self.message = message


class StreamError(Exception):
    """An ``event: error`` inside a Messages stream (e.g. ``overloaded_error``)."""

    def __init__(self, type: str, message: str):
        super().__init__(f"{type}: {message}")
        self.type = type
        self.message = message


# --- Messages request -> chat messages (gateway dialect, simulator) ------------------------


def text_of(value: Any, where: str) -> str:
    """A tool result's or system prompt's content: a string or text blocks."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for i, block in enumerate(value):
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise FormatError(f"{where}.{i}", "only text blocks are supported here")
            texts.append(block["text"])
        return "\n".join(texts)
    if value is None:
        return ""
    raise FormatError(where, "must be a string or a list of text blocks")


def image_to_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "base64" and source.get("data") and source.get("media_type"):
        url = f"data:{source['media_type']};base64,{source['data']}"
    elif source.get("type") == "url" and source.get("url"):
        url = source["url"]
    else:
        raise FormatError(f"{where}.source", "an image needs a base64 source (media_type, data) or a url source")
    return {"type": "image_url", "image_url": {"url": url}}


def _cached(block: Any) -> bool:
    return isinstance(block, dict) and isinstance(block.get("cache_control"), dict)


def _keep_cache(part: dict[str, Any], block: dict[str, Any]) -> dict[str, Any]:
    """``part`` with ``block``'s prompt-caching breakpoint, if it has one."""
    if _cached(block):
        part["cache_control"] = block["cache_control"]
    return part


def to_chat_messages(system: Any, messages: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``system`` and ``[{"role", "content"}]`` of a Messages request as chat messages.

    Content blocks become chat content: text, image -> image_url, tool_use -> the
    assistant's tool_calls, tool_result -> tool messages (placed before the user's
    new text: they answer the previous assistant turn). ``cache_control`` on system,
    text and image blocks stays on the chat part (an Anthropic node passes it on as a
    prompt-caching breakpoint; other nodes ignore the extra key).
    """
    out: list[dict[str, Any]] = []
    if system:
        text = text_of(system, "system")
        if isinstance(system, list) and any(_cached(block) for block in system):
            out.append({"role": "system", "content": [_keep_cache({"type": "text", "text": b["text"]}, b) for b in system]})
        else:
            out.append({"role": "system", "content": text})
    for i, message in enumerate(messages):
        role, content = message["role"], message["content"]
        where = f"messages.{i}.content"
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        parts: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        for j, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            at = f"{where}.{j}"
            if kind == "text":
                if not isinstance(block.get("text"), str):
                    raise FormatError(f"{at}.text", "must be a string")
                parts.append(_keep_cache({"type": "text", "text": block["text"]}, block))
            elif kind == "image" and role == "user":
                parts.append(_keep_cache(image_to_part(block, at), block))
            elif kind == "tool_use" and role == "assistant":
                if not block.get("id") or not block.get("name"):
                    raise FormatError(at, "a tool_use block needs id and name")
                arguments = orjson.dumps(block.get("input") or {}).decode()
                calls.append({"id": block["id"], "type": "function",
                              "function": {"name": block["name"], "arguments": arguments}})
            elif kind == "tool_result" and role == "user":
                if not block.get("tool_use_id"):
                    raise FormatError(at, "a tool_result block needs tool_use_id")
                text = text_of(block.get("content"), f"{at}.content")
                if block.get("is_error"):
                    text = f"Error: {text}"
                results.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
            else:
                raise FormatError(f"{at}.type", f"block type {kind!r} is not supported in a {role} message")
        out.extend(results)
        if role == "assistant":
            text = "".join(p["text"] for p in parts)
            entry: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                entry["tool_calls"] = calls
            out.append(entry)
        elif parts:
            only_text = all(p["type"] == "text" and not _cached(p) for p in parts)
            out.append({"role": "user", "content": "".join(p["text"] for p in parts) if only_text else parts})
    return out


def tools_to_chat(tools: Iterable[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Messages tools (``name``, ``description``, ``input_schema``) as chat function tools."""
    if not tools:
        return None
    return [
        {"type": "function", "function": {"name": t["name"], "description": t.get("description") or "",
                                          "parameters": t["input_schema"]}}
        for t in tools
    ]


def tool_choice_to_chat(choice: dict[str, Any] | None) -> Any:
    if choice is None:
        return None
    if choice["type"] == "tool":
        if not choice.get("name"):
            raise FormatError("tool_choice.name", "required when tool_choice.type is 'tool'")
        return {"type": "function", "function": {"name": choice["name"]}}
    return {"auto": "auto", "any": "required", "none": "none"}[choice["type"]]


def tool_input(arguments: str) -> dict[str, Any]:
    """A chat call's JSON arguments as a tool_use ``input`` object (which must be an object)."""
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {"_raw_arguments": arguments}
    return value if isinstance(value, dict) else {"value": value}


# --- chat request -> Messages request (adapter) ----------------------------------------------


def _data_url(url: str) -> tuple[str, str] | None:
    """(media_type, base64 data) of a ``data:<type>;base64,<data>`` URL."""
    head, sep, data = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        return None
    return head[5:-7], data


def _content_blocks(content: Any, where: str, *, images: bool) -> list[dict[str, Any]]:
    """A chat message's content (string or parts) as Messages content blocks; empty text is left out
    (Anthropic refuses empty text blocks)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise FormatError(where, "must be a string or a list of content parts")
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        at = f"{where}.{j}"
        if kind == "text" and isinstance(part.get("text"), str):
            if part["text"]:
                # Prompt-caching breakpoints ride on chat parts, as OpenRouter and LiteLLM take them.
                blocks.append(_keep_cache({"type": "text", "text": part["text"]}, part))
        elif kind == "image_url" and images:
            url = (part.get("image_url") or {}).get("url")
            if not isinstance(url, str) or not url:
                raise FormatError(f"{at}.image_url.url", "must be a data: or http(s) URL")
            inline = _data_url(url)
            source = (
                {"type": "base64", "media_type": inline[0], "data": inline[1]} if inline
                else {"type": "url", "url": url}
            )
            blocks.append(_keep_cache({"type": "image", "source": source}, part))
        else:
            raise FormatError(f"{at}.type", f"content part {kind!r} cannot be sent to this model")
    return blocks


def _tool_use(call: dict[str, Any], where: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not call.get("id") or not function.get("name"):
        raise FormatError(where, "a tool call needs an id and a function name")
    return {"type": "tool_use", "id": call["id"], "name": function["name"],
            "input": tool_input(function.get("arguments") or "")}


def tools_from_chat(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type") != "function" or not function.get("name"):
            raise FormatError(f"tools.{i}", "only function tools can be sent to this model")
        entry: dict[str, Any] = {
            "name": function["name"],
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
        }
        if function.get("description"):
            entry["description"] = function["description"]
        out.append(entry)
    return out


def tool_choice_from_chat(choice: Any, *, parallel: Any) -> dict[str, Any] | None:
    if choice is None:
        result = None
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if not name:
            raise FormatError("tool_choice", "a named tool choice needs function.name")
        result = {"type": "tool", "name": name}
    elif choice in ("auto", "required", "none"):
        result = {"type": {"auto": "auto", "required": "any", "none": "none"}[choice]}
    else:
        raise FormatError("tool_choice", "must be 'none', 'auto', 'required' or a named function")
    if parallel is False and (result is None or result["type"] != "none"):
        result = {**(result or {"type": "auto"}), "disable_parallel_tool_use": True}
    return result


def to_messages_request(body: dict[str, Any], *, default_max_tokens: int = 4096) -> dict[str, Any]:
    """An OpenAI chat completion request as a Messages request.

    System and developer messages become ``system`` text blocks; tool messages become
    ``tool_result`` blocks of a user turn; consecutive turns of one role are merged (the
    Messages API wants user and assistant to alternate). ``max_completion_tokens`` or
    ``max_tokens`` becomes the required ``max_tokens``.
    """
    for name, message in _REFUSED.items():
        if body.get(name):
            raise FormatError(name, message)
    if body.get("n") not in (None, 1):
        raise FormatError("n", "only n=1 is supported by this model")
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") not in (None, "text"):
        raise FormatError("response_format", f"{response_format.get('type')!r} is not available from this model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise FormatError("messages", "must be a non-empty list")

    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        where = f"messages.{i}.content"
        if role in ("system", "developer"):
            system += _content_blocks(message.get("content"), where, images=False)
            continue
        if role == "user":
            blocks = _content_blocks(message.get("content"), where, images=True)
        elif role == "assistant":
            blocks = _content_blocks(message.get("content"), where, images=False)
            blocks += [_tool_use(c, f"messages.{i}.tool_calls.{j}") for j, c in enumerate(message.get("tool_calls") or ())]
        elif role == "tool":
            if not message.get("tool_call_id"):
                raise FormatError(f"messages.{i}.tool_call_id", "a tool message needs the id of the call it answers")
            content = message.get("content")
            text = content if isinstance(content, str) else "".join(b["text"] for b in _content_blocks(content, where, images=False))
            blocks, role = [{"type": "tool_result", "tool_use_id": message["tool_call_id"], "content": text}], "user"
        else:
            raise FormatError(f"messages.{i}.role", f"role {role!r} cannot be sent to this model")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise FormatError("messages", "there must be at least one user or assistant message with content")

    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens
    out: dict[str, Any] = {"model": body["model"], "max_tokens": max_tokens, "messages": turns}
    if system:
        out["system"] = system
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise FormatError("temperature", "must be a number")
        out["temperature"] = min(float(temperature), MAX_TEMPERATURE)
    for name in ("top_p", "top_k"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("tools"):
        out["tools"] = tools_from_chat(body["tools"])
    choice = tool_choice_from_chat(body.get("tool_choice"), parallel=body.get("parallel_tool_calls"))
    if choice is not None and out.get("tools"):
        out["tool_choice"] = choice
    if isinstance(body.get("user"), str) and body["user"]:
        out["metadata"] = {"user_id": body["user"]}
    if body.get("stream"):
        out["stream"] = True
    return out


# --- Messages answer -> chat completion (adapter) --------------------------------------------


def chat_usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    """Anthropic usage as chat usage: prompt tokens are all input tokens, cache reads and writes
    included (Anthropic counts them apart from ``input_tokens``); cache reads are the cached tokens."""
    usage = usage or {}
    read = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + read + written
    output = int(usage.get("output_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": read, "cache_creation_tokens": written},
    }


def completion_from_message(message: dict[str, Any], *, created: int | None = None) -> dict[str, Any]:
    """A Messages answer as a ``chat.completion``: text blocks joined into ``content``, tool_use
    blocks as ``tool_calls`` (other block kinds, such as thinking, are left out)."""
    text, calls = [], []
    for block in message.get("content") or ():
        if block.get("type") == "text":
            text.append(block.get("text") or "")
        elif block.get("type") == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append({"id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": arguments}})
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if calls:
        reply["tool_calls"] = calls
    return {
        "id": message.get("id") or "",
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": message.get("model") or "",
        "choices": [{"index": 0, "message": reply, "logprobs": None,
                     "finish_reason": FINISH_REASONS.get(message.get("stop_reason") or "end_turn", "stop")}],
        "usage": chat_usage(message.get("usage")),
    }


class ChunkTranslator:
    """A Messages stream's events as ``chat.completion.chunk`` objects, for one stream.

    ``message_start`` gives the id, model and input usage; a role chunk opens the chat
    stream with the first content (so an error that comes before any content leaves
    nothing sent) and carries the usage known so far, so a stream cut later is billed
    the provider's own input count rather than an estimate; text and ``input_json_delta`` deltas become content and tool-call
    argument deltas; ``message_delta`` gives the finish reason and the cumulative usage;
    ``message_stop`` ends with a usage chunk (``choices: []``), as OpenAI's
    ``include_usage`` does. ``ping`` and kinds this code does not know (Anthropic may add
    some) are skipped; ``error`` raises :class:`StreamError`.
    """

    def __init__(self) -> None:
        self.id = ""
        self.model = ""
        self.created = int(time.time())
        self.usage: dict[str, Any] = {}
        self.calls: dict[int, int] = {}  # content block index -> tool call index
        self.opened = False
        self.done = False

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
        out = []
        if not self.opened:
            self.opened = True
            out.append(self._frame([{"index": 0, "delta": {"role": "assistant", "content": ""},
                                     "logprobs": None, "finish_reason": None}], usage=chat_usage(self.usage)))
        out.append(self._frame([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]))
        return out

    def _frame(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": choices, **extra}

    def _count(self, usage: dict[str, Any] | None) -> None:
        self.usage.update({k: v for k, v in (usage or {}).items() if isinstance(v, int)})

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self.id, self.model = message.get("id") or "", message.get("model") or ""
            self._count(message.get("usage"))
            return []
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                position = self.calls[event.get("index", 0)] = len(self.calls)
                call = {"index": position, "id": block.get("id"), "type": "function",
                        "function": {"name": block.get("name") or "", "arguments": ""}}
                return self._chunk({"content": None, "tool_calls": [call]})
            if block.get("type") == "text" and block.get("text"):
                return self._chunk({"content": block["text"]})
            return []
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return self._chunk({"content": delta["text"]})
            if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                position = self.calls.get(event.get("index", 0), 0)
                return self._chunk({"tool_calls": [{"index": position, "function": {"arguments": delta["partial_json"]}}]})
            return []  # thinking, signature and citation deltas have no chat equivalent
        if kind == "message_delta":
            self._count(event.get("usage"))
            stop = (event.get("delta") or {}).get("stop_reason")
            return self._chunk({}, FINISH_REASONS.get(stop or "end_turn", "stop"))
        if kind == "message_stop":
            self.done = True
            return [self._frame([], usage=chat_usage(self.usage))]
        if kind == "error":
            error = event.get("error") or {}
            raise StreamError(str(error.get("type") or "api_error"), str(error.get("message") or "stream error"))
        return []  # ping, content_block_stop, and event kinds added after this was written
