"""POST /v1/completions (legacy text completion) and POST /v1/embeddings."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from .. import schemas, tokens
from .base import Dialect, usage_object
from .chat import ChatEncoder


class CompletionRequest(schemas._Open):
    model: Annotated[str, Field(min_length=1, max_length=200)]
    prompt: Annotated[str, Field(max_length=4 * 1024 * 1024)] | Annotated[list[str], Field(min_length=1, max_length=64)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    stream: bool = False
    stream_options: schemas.StreamOptions | None = None
    n: Literal[1] = 1
    echo: Literal[False] = False
    best_of: Literal[1] | None = None


class CompletionDialect(Dialect):
    endpoint = "completions"
    call = "completions"

    def __init__(self, data: dict[str, Any], *, request_id: str):
        self.data = data
        self.request = schemas.validate(CompletionRequest, data)
        self.request_id = request_id
        self.model = self.request.model
        self.stream = self.request.stream

    def output_cap(self, model_max: int) -> int:
        # OpenAI's legacy default is 16 tokens; the model's own cap is the friendlier default.
        return self.request.max_tokens or model_max

    def prompt_bound(self) -> int:
        return tokens.text_bound(self.request.prompt)

    def upstream(self, output_cap: int) -> dict[str, Any]:
        upstream = dict(self.data)
        upstream["max_tokens"] = output_cap
        if self.stream:
            upstream["stream_options"] = {"include_usage": True}
        return upstream

    def answer(self, result, usage, node, model):
        result["id"] = f"cmpl-{self.request_id}"
        result["object"] = "text_completion"
        result["model"] = model
        result["usage"] = usage_object(usage)
        result["node"] = node
        return result

    def encoder(self, model, node):
        include_usage = bool(self.request.stream_options and self.request.stream_options.include_usage)
        return ChatEncoder(f"cmpl-{self.request_id}", model, node, include_usage, self.request_id, obj="text_completion")


class EmbeddingRequest(schemas._Open):
    model: Annotated[str, Field(min_length=1, max_length=200)]
    input: Annotated[str, Field(min_length=1)] | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None


class EmbeddingDialect(Dialect):
    endpoint = "embeddings"
    call = "embeddings"
    scope = "embeddings"
    publishable_ok = False  # embeddings are server-side work: a browser key has no business here

    def __init__(self, data: dict[str, Any], *, request_id: str):
        self.data = data
        self.request = schemas.validate(EmbeddingRequest, data)
        self.request_id = request_id
        self.model = self.request.model

    def output_cap(self, model_max: int) -> int:
        return 0

    def prompt_bound(self) -> int:
        return tokens.text_bound(self.request.input)

    def upstream(self, output_cap: int) -> dict[str, Any]:
        return dict(self.data)

    def answer(self, result, usage, node, model):
        result["object"] = "list"
        result["model"] = model
        result["usage"] = {"prompt_tokens": usage.input_tokens, "total_tokens": usage.input_tokens}
        result["node"] = node
        return result
