"""The simulator's deterministic tokenizer: counts and outputs a test can predict.

Prompt tokens, where B is the number of UTF-8 bytes of the text content and M
the number of chat messages:

    chat completions:  ceil(B / 4) + 4 * M     (B over every message's text parts)
    text completions:  ceil(B / 4)             (B of the prompt)
    embeddings:        sum of ceil(B_i / 4)    (one term per input)

ceil(B / 4) <= B, so a chat count never exceeds B + 8 * M + 64, the upper
bound the gateway reserves against (gateway/tokens.py): a simulator run can
never be billed above its reservation, just like a real byte-level BPE model.

Output tokens are words with a leading space (" lorem", " ipsum", ...), so a
stream carries exactly one word per chunk and the text length is predictable.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

WORDS = (
    " lorem", " ipsum", " dolor", " sit", " amet", " consectetur", " adipiscing", " elit",
    " sed", " do", " eiusmod", " tempor", " incididunt", " ut", " labore", " et",
    " dolore", " magna", " aliqua", " enim",
)  # fmt: skip
CHAT_TOKENS_PER_MESSAGE = 4
EMBEDDING_DIMS = 16
ECHO_PREFIX = "echo:"


def text_tokens(text: str) -> int:
    return -(-len(text.encode()) // 4)


def chat_prompt_tokens(contents: Iterable[str]) -> int:
    """Prompt tokens of a chat whose messages have these (already joined) text contents."""
    contents = list(contents)
    return text_tokens("".join(contents)) + CHAT_TOKENS_PER_MESSAGE * len(contents)


def word_tokens(count: int) -> list[str]:
    return [WORDS[i % len(WORDS)] for i in range(count)]


def echo_tokens(text: str) -> list[str] | None:
    """The answer to an ``echo:`` prompt (its words, one token each), or None if it is not one."""
    if not text.startswith(ECHO_PREFIX):
        return None
    words = text[len(ECHO_PREFIX) :].split()
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


def embedding(text: str) -> list[float]:
    """A unit vector that depends only on the text, so equal inputs embed equally."""
    digest = hashlib.shake_256(text.encode()).digest(2 * EMBEDDING_DIMS)
    raw = [int.from_bytes(digest[i : i + 2], "little") / 32767.5 - 1.0 for i in range(0, len(digest), 2)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]
