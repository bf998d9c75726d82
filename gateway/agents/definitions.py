"""Agents: named definitions a run picks with ``agent``.

Built in, in code, for now: an agent is instructions, the tools it knows (offered
to the model) and optionally a model. The caller grants a subset of those tools
for each run; the model may ask for any tool it was offered, and the run refuses
(and audits) a call to one that was not granted. A model named in the request
wins over the agent's; without either, AGENT_DEFAULT_MODEL.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings


@dataclass(frozen=True)
class Agent:
    name: str
    instructions: str
    tools: tuple[str, ...]
    model: str | None = None

    def model_for(self, requested: str | None) -> str:
        return requested or self.model or settings.AGENT_DEFAULT_MODEL


AGENTS: dict[str, Agent] = {
    agent.name: agent
    for agent in (
        Agent(
            name="default",
            instructions="You are an assistant running on a private inference platform. Use a tool when it "
                         "helps answer; when you have the answer, reply briefly without calling a tool.",
            tools=("node_metrics", "http_fetch"),
        ),
        Agent(
            name="operator",
            instructions="You report on the inference nodes that serve this project: their load, health, region "
                         "and attestation. Call node_metrics, then summarise what it returned.",
            tools=("node_metrics",),
        ),
    )
}
