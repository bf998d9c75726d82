"""The tools an agent run may be granted, by name.

A tool is offered to the model with its JSON schema; it runs only if the caller
granted it for the run (``tools`` in POST /v1/agents/runs). Tools run in the
worker: ``run(arguments, ctx)`` is sync (the ORM may be used) and reaches async
I/O through ``ctx.step``. A tool fails with ToolError, whose message goes back
to the model as the tool's result.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nodes.metrics import project_node_metrics

from .fetch import FetchRefused, fetch


class ToolError(Exception):
    pass


@dataclass(frozen=True)
class ToolContext:
    project: Any  # console.Project of the run
    step: Callable  # runs a coroutine on the run's loop, within the run's time


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    run: Callable[[dict[str, Any], ToolContext], Any]

    @property
    def schema(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


def _node_metrics(arguments: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    model = arguments.get("model")
    if model is not None and not isinstance(model, str):
        raise ToolError("'model' must be a string")
    nodes = project_node_metrics(allow_non_confidential=ctx.project.allow_non_confidential, model=model)
    return {"nodes": nodes}


def _http_fetch(arguments: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    url = arguments.get("url")
    if not isinstance(url, str) or not url:
        raise ToolError("'url' (a string) is required")
    try:
        return ctx.step(fetch(url))
    except FetchRefused as exc:
        raise ToolError(str(exc)) from None


TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool(
            name="node_metrics",
            description="Load, health, region and attestation of the inference nodes serving this project.",
            parameters={"type": "object", "properties": {
                "model": {"type": "string", "description": "Only the nodes serving this model."}}},
            run=_node_metrics,
        ),
        Tool(
            name="http_fetch",
            description="HTTP GET a URL on an allowed host; returns the status, content type and the text "
                        "(cut at a size limit).",
            parameters={"type": "object", "properties": {"url": {"type": "string", "format": "uri"}},
                        "required": ["url"]},
            run=_http_fetch,
        ),
    )
}


def summary(outcome: str, output: Any) -> str:
    """One line for the audit trail: what came of a call, never the whole output."""
    if outcome != "executed":
        return str(output)[:500]
    if isinstance(output, dict) and "nodes" in output:
        return f"{len(output['nodes'])} nodes"
    if isinstance(output, dict) and "status" in output:
        size = len(output.get("body") or "")
        return f"HTTP {output['status']} {output.get('content_type', '')}, {size} characters" + (
            " (truncated)" if output.get("truncated") else "")
    return str(output)[:200]
