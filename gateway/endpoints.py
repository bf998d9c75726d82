"""The /v1 inference endpoints: each names its dialect; the pipeline does the rest."""
from __future__ import annotations

import orjson

from . import pipeline, schemas
from .catalog import catalog
from .context import ApiRequest, json_response
from .errors import GatewayError
from .protocols import messages, responses
from .protocols.chat import ChatDialect
from .protocols.completions import CompletionDialect, EmbeddingDialect
from .protocols.messages import MessagesDialect
from .protocols.responses import ResponsesDialect


async def chat_completions(req: ApiRequest):
    return await pipeline.handle(req, ChatDialect)


async def completions(req: ApiRequest):
    return await pipeline.handle(req, CompletionDialect)


async def embeddings(req: ApiRequest):
    return await pipeline.handle(req, EmbeddingDialect)


async def create_response(req: ApiRequest):
    return await pipeline.handle(req, ResponsesDialect)


async def get_response(req: ApiRequest):
    # Stored answers are read server-side: a browser key (public by design) may not list them back.
    key = await req.authenticate(publishable_ok=False, scope="chat")
    response_id = req.request.path_params["response_id"]
    body = await responses.load(response_id, project_id=key.project_id)
    if body is None:  # another project's response is indistinguishable from a missing one
        raise GatewayError("not_found", f"No stored response '{response_id}' in this project.")
    return json_response(req, body)


async def create_message(req: ApiRequest):
    return await pipeline.handle(req, MessagesDialect)


async def count_message_tokens(req: ApiRequest):
    key = await req.authenticate(publishable_ok=True, scope="chat")
    model, count = messages.count_tokens(schemas.parse_json(await req.body()))
    await catalog.get_for(key, model)
    return json_response(req, orjson.dumps({"input_tokens": count}))


stream_get = pipeline.stream_get
