"""POST /v1/agents/runs and GET /v1/agents/runs/{id}/events.

A run is a paid job: the token budget is held, the job row created with the hold,
event 1 (``run.created``) written to the run's stream, then the job is queued.
With ``stream: true`` the answer is that stream (SSE: ``run.created``,
``step.started``, ``message``, ``tool.call``, ``tool.result`` … ``run.completed``
or ``run.failed``, each with ``id: evt_<n>``); otherwise 202 with the job
(poll ``GET /v1/jobs/{id}``). The run's request id (``X-Request-ID``) names its
stream: ``GET /v1/streams/{request_id}`` with Last-Event-ID resumes it like any
stream; ``GET /v1/agents/runs/{id}/events`` does the same by job id and, once the
stream's retention has passed, replays the events kept with the finished job.
"""
from __future__ import annotations

from typing import Annotated

import orjson
from django.conf import settings
from django.utils import timezone
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from billing.pricing import budget_micros
from nodes import jobs, paidjobs
from nodes.models import Job

from .. import limits, streams
from .. import paidjobs as gw_jobs
from .. import tokens as gw_tokens
from ..catalog import catalog
from ..context import ApiRequest, json_response
from ..errors import GatewayError
from ..paid import PaidRequest
from ..pipeline import candidates_for
from ..schemas import parse_json, validate
from ..sse import SSEResponse
from . import events
from .definitions import AGENTS
from .tools import TOOLS

Name = Annotated[str, Field(min_length=1, max_length=64)]


class AgentRunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent: Name = "default"
    input: Annotated[str, Field(min_length=1, max_length=100_000)]
    model: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    tools: Annotated[list[Name], Field(max_length=16)] = []
    max_steps: Annotated[int, Field(ge=1, le=100)] = 8
    max_tokens: Annotated[int, Field(ge=1, le=10_000_000)] = 4096
    stream: bool = False


def _checked(data: AgentRunRequest):
    agent = AGENTS.get(data.agent)
    if agent is None:
        raise GatewayError("not_found", f"No agent '{data.agent}'; agents: {', '.join(sorted(AGENTS))}.", param="agent")
    for name in data.tools:
        if name not in agent.tools:
            known = "" if name in TOOLS else " (no such tool)"
            raise GatewayError("invalid_request", f"The agent '{agent.name}' has no tool '{name}'{known}; it has: "
                               f"{', '.join(agent.tools)}.", param="tools")
    if len(set(data.tools)) != len(data.tools):
        raise GatewayError("invalid_request", "A tool is granted twice.", param="tools")
    if data.max_steps > settings.AGENT_MAX_STEPS:
        raise GatewayError("invalid_request", f"max_steps is at most {settings.AGENT_MAX_STEPS}.", param="max_steps")
    if data.max_tokens > settings.AGENT_MAX_TOKENS:
        raise GatewayError("invalid_request", f"max_tokens is at most {settings.AGENT_MAX_TOKENS}.", param="max_tokens")
    first = gw_tokens.chat_prompt_bound({
        "messages": [{"role": "system", "content": agent.instructions}, {"role": "user", "content": data.input}],
        "tools": [TOOLS[name].schema for name in agent.tools],
    })
    if data.max_tokens <= first:
        raise GatewayError("invalid_request", f"max_tokens ({data.max_tokens}) leaves no room for an answer: the "
                           f"first call's prompt may take up to {first} tokens.", param="max_tokens")
    return agent


async def create_run(req: ApiRequest):
    key = await req.authenticate(publishable_ok=False, scope="agents")
    data = validate(AgentRunRequest, parse_json(await req.body()))
    agent = _checked(data)
    model = agent.model_for(data.model)
    entry = await catalog.get_for(key, model)
    price = entry.price_at(timezone.now())
    if price is None:
        raise GatewayError("model_not_found", f"The model '{model}' has no price yet.", param="model")
    if price.per_image:
        raise GatewayError("invalid_request", f"The model '{model}' generates images; an agent needs a chat model.",
                           param="model")
    candidates_for(entry, key)  # no eligible node: 503 before anything is counted or held
    decision = await limits.admit(key=key, tokens=data.max_tokens)
    req.extra_headers.update(decision.headers())
    paid = PaidRequest(key=key, request_id=req.request_id, endpoint=events.ENDPOINT, price=price, stream=data.stream,
                       claim=None, session_id=req.session_id, admitted_tokens=decision.cost)
    params = {"agent": agent.name, "model": model, "tools": data.tools, "max_steps": data.max_steps,
              "max_tokens": data.max_tokens, "stream": data.stream}
    spec = {"agent": agent.name, "input": data.input, "model": model, "granted": data.tools,
            "max_steps": data.max_steps, "max_tokens": data.max_tokens, "actor": key.key_public_id,
            # The worker gives the budget's unused tokens back to the same rate-limit buckets.
            "limits": {"admitted": decision.cost, **limits.refund_scope(key)}}
    from ..tasks import run_agent_job

    job = await gw_jobs.create(paid=paid, kind=Job.Kind.AGENT_RUN, params=params, input=spec,
                               amount=budget_micros(price, data.max_tokens))
    # Event 1 is written before the job is queued, so the worker (any process) appends after it
    # and a follower (any process) always finds the stream.
    try:
        await events.open_stream(request_id=req.request_id, project_id=key.project_id,
                                 headers={**_stream_headers(req), "x-job-id": job.public_id},
                                 data=events.created_data(job.public_id, spec))
    except Exception:
        raise await gw_jobs.abandon(paid=paid, job=job, message="The event store is unreachable; nothing was "
                                    "charged.") from None
    try:
        await gw_jobs.queue(paid=paid, job=job, task=run_agent_job)
    except GatewayError:
        events.forget_local(req.request_id)
        raise
    headers = {"x-job-id": job.public_id, "location": f"/v1/jobs/{job.public_id}"}
    if data.stream:
        follower, kept = await streams.open_follower(req.request_id, project_id=key.project_id, after=0)
        return SSEResponse(follower, headers={**req.response_headers(), **kept, **headers, "x-accel-buffering": "no"})
    return json_response(req, orjson.dumps(jobs.job_object(job, include_result=False)), status=202, headers=headers)


def _stream_headers(req: ApiRequest) -> dict[str, str]:
    kept = {"x-request-id": req.request_id}
    if req.session_id:
        kept["x-session-id"] = req.session_id
    return kept


async def run_events(req: ApiRequest):
    """GET /v1/agents/runs/{id}/events: the run's events after Last-Event-ID, live or kept."""
    key = await req.authenticate(publishable_ok=False, scope="agents")
    run_id = req.request.path_params["run_id"]
    after = streams.parse_last_event_id(req.headers)
    job = await paidjobs.job_load(public_id=run_id, project_id=key.project_id, kind=Job.Kind.AGENT_RUN)
    if job is None:
        raise GatewayError("not_found", f"No agent run '{run_id}' in this project.")
    headers = {"x-job-id": job.public_id, "x-accel-buffering": "no"}
    if job.status not in jobs.TERMINAL:
        follower, kept = await streams.open_follower(job.request_id, project_id=key.project_id, after=after)
        return SSEResponse(follower, headers={**req.response_headers(), **kept, **headers})
    kept_events = (jobs.job_result(job=job) or {}).get("events") or []
    body = events.frames_of(kept_events, after=after)
    return Response(body, media_type="text/event-stream", headers={**req.response_headers(), **headers,
                                                                   "cache-control": "no-cache"})
