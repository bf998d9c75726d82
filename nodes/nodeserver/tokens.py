"""The simulator's deterministic tokenizer: counts and outputs a test can predict.

Prompt tokens, where B is a number of UTF-8 bytes and M the number of chat
messages:

    chat completions:  ceil(B / 4) + 4 * M     (B over every message's text parts, the
                                                name and arguments of each tool call it
                                                made, and the request's ``tools`` as
                                                compact JSON; image and audio parts add 0)
    text completions:  ceil(B / 4)             (B of the prompt)
    embeddings:        sum of ceil(B_i / 4)    (one term per input)

ceil(B / 4) <= B, so a chat count never exceeds B + 8 * M + 64, the upper
bound the gateway reserves against (gateway/tokens.py, which counts the same
text, tool calls and tools): a simulator run can never be billed above its
reservation, just like a real byte-level BPE model.

Output tokens are words with a leading space (" lorem", " ipsum", ...), so a
stream carries exactly one word per chunk and the text length is predictable.
An ``echo:`` prompt is answered with its own words (then "[image]" / "[audio]"
for each media part of the message), a tool call with its JSON arguments cut
before each space: ``{"text": "a b"}`` is the tokens ``{"text":``, `` "a``, `` b"}``.

A ``call:`` message may name the tool and give its arguments: in
``call: http_fetch {"url": "http://x/"}`` the first word names one of the
request's tools and the rest, a JSON object, is sent as the arguments as it
is; any other text becomes ``{"text": <text>}``. After a tool result (the last
message has the role ``tool``) the answer is ``result:`` and the result's
first words, so a test can see what the model was given.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

WORDS = (
    " lorem", " ipsum", " dolor", " sit", " amet", " consectetur", " adipiscing", " elit",
    " sed", " do", " eiusmod", " tempor", " incididunt", " ut", " labore", " et",
    " dolore", " magna", " aliqua", " enim",
)  # fmt: skip
CHAT_TOKENS_PER_MESSAGE = 4
EMBEDDING_DIMS = 16
ECHO_PREFIX = "echo:"
CALL_PREFIX = "call:"


def text_tokens(text: str) -> int:
    return -(-len(text.encode()) // 4)


def chat_prompt_tokens(messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] = ()) -> int:
    """Prompt tokens of a chat: messages as the engines see them (text ``content``, ``tool_calls``)."""
    size = len(orjson.dumps(tools)) if tools else 0
    for message in messages:
        size += len(message["content"].encode())
        for call in message.get("tool_calls", ()):
            size += len((call["function"]["name"] + call["function"]["arguments"]).encode())
    return -(-size // 4) + CHAT_TOKENS_PER_MESSAGE * len(messages)


def word_tokens(count: int) -> list[str]:
    return [WORDS[i % len(WORDS)] for i in range(count)]


def echo_tokens(text: str, media: Iterable[str] = ()) -> list[str] | None:
    """The answer to an ``echo:`` prompt (its words, then its media parts, one token each), or None."""
    if not text.startswith(ECHO_PREFIX):
        return None
    words = text[len(ECHO_PREFIX) :].split() + [f"[{kind}]" for kind in media]
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


def parse_call(text: str, names: Sequence[str] = ()) -> tuple[str | None, str]:
    """The tool a ``call:`` message names (its first word, when that is one of ``names``)
    and the call's arguments as JSON: a JSON object given there, else ``{"text": <the text>}``."""
    if text.startswith(CALL_PREFIX):
        text = text[len(CALL_PREFIX) :]
    text = text.strip()
    name = None
    first, _, rest = text.partition(" ")
    if first and first in names:
        name, text = first, rest.strip()
    if text.startswith("{"):
        try:
            given = json.loads(text)
        except ValueError:
            given = None
        if isinstance(given, dict):
            return name, json.dumps(given, ensure_ascii=False)
    return name, json.dumps({"text": text}, ensure_ascii=False)


def argument_pieces(arguments: str) -> list[str]:
    """Call arguments as tokens, cut before each space."""
    cuts = [i for i, char in enumerate(arguments) if char == " "]
    return [arguments[start:end] for start, end in zip([0, *cuts], [*cuts, len(arguments)])]


def tool_call_pieces(text: str) -> list[str]:
    """A call's arguments, ``{"text": <text after "call:", or all of it>}``, as tokens."""
    return argument_pieces(parse_call(text)[1])


RESULT_PREFIX = "result:"


def tool_result_tokens(content: str, limit: int) -> list[str]:
    """The answer after a tool result: ``result:`` and up to ``limit`` - 1 of its words."""
    words = [RESULT_PREFIX, *content.split()][: max(1, limit)]
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


def embedding(text: str) -> list[float]:
    """A unit vector that depends only on the text, so equal inputs embed equally."""
    digest = hashlib.shake_256(text.encode()).digest(2 * EMBEDDING_DIMS)
    raw = [int.from_bytes(digest[i : i + 2], "little") / 32767.5 - 1.0 for i in range(0, len(digest), 2)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]
