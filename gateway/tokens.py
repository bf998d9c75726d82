"""An upper bound on prompt tokens, without a tokenizer.

The models we serve use byte-level BPE tokenizers, where every token covers
at least one byte of UTF-8 text, so a prompt has at most as many text tokens
as bytes. Chat templates add special and role tokens: we allow 8 per message
and 64 per request (this covers default system prompts such as SmolLM2's).
The reservation is priced from this bound and the output cap, so the posted
cost (from the node's exact usage) can never exceed it.
"""
from __future__ import annotations

from typing import Any

import orjson

PER_MESSAGE = 8
PER_REQUEST = 64


# An image or audio part has no byte bound on its tokens: the context window bounds it.
UNBOUNDED = 1 << 40


def _text_bytes(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content.encode())
    total = 0
    for part in content:
        if isinstance(part, dict):
            total += len(part.get("text", "").encode()) if part.get("type", "text") == "text" else UNBOUNDED
    return total


def text_bound(texts) -> int:
    """The bound for plain text inputs (legacy completions, embeddings)."""
    if isinstance(texts, str):
        texts = [texts]
    return PER_REQUEST + sum(PER_MESSAGE + len(t.encode()) for t in texts)


def chat_prompt_bound(body: dict[str, Any]) -> int:
    total = PER_REQUEST
    for message in body["messages"]:
        total += PER_MESSAGE + _text_bytes(message.get("content"))
        if message.get("name"):
            total += len(message["name"].encode())
        if message.get("tool_calls"):
            total += len(orjson.dumps(message["tool_calls"]))
    if body.get("tools"):
        total += len(orjson.dumps(body["tools"]))
    return total


def estimate_from_bound(bound: int) -> int:
    """A central estimate (about 4 bytes a token) for when a node never reports usage."""
    return max(1, (bound - PER_REQUEST) // 4)


def estimate_output_tokens(choices: list[dict[str, Any]]) -> int:
    """The same estimate for an answer whose node reported no usage."""
    total = 0
    for choice in choices:
        message = choice.get("message") or {}
        total += _text_bytes(message.get("content")) + _text_bytes(choice.get("text"))
        if message.get("tool_calls"):
            total += len(orjson.dumps(message["tool_calls"]))
    return -(-total // 4)
