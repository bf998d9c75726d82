"""The agent run loop, in a Celery worker.

    step: call the model (chat with the agent's tools, failover before any output)
          → a final message ends the run
          → tool calls: each is executed only if the caller granted it; a call to a
            tool that was not granted (or does not exist) is refused back to the model
            as the tool's result, never executed; every call, granted or refused, is
            written to the project's audit trail; the results go back to the model
    until the final answer, ``max_steps`` model calls, or the token budget.

Metering: one hold for the run's whole token budget (``max_tokens``, input and
output of every model call together, at the dearer of the two prices), settled
once at the end to the exact sum of the calls' usage (priced once, rounded down
once). Each call is given at most the output the remaining budget can pay for
after its prompt's upper bound, so the sum never passes the budget and the
settlement never passes the hold. One hold rather than one per call: the run
cannot stall half-way on an empty wallet, and it is one transfer and one
request record to reconcile. The hold is extended when the run starts
(gateway.paidjobs), so the sweeper never voids it while the run is alive.
"""
from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import orjson

from billing.pricing import Usage, add_usage
from console.services import audit_record
from nodes import jobs, paidjobs
from nodes.adapters import NodeError, adapter_for
from nodes.jobrouting import job_candidates
from nodes.models import Job

from .. import limits
from .. import paidjobs as gw_jobs
from .. import tokens as gw_tokens
from ..pipeline import first_node, usage_from
from .definitions import AGENTS
from .events import ENDPOINT, RunEvents, created_data
from .tools import TOOLS, ToolContext, ToolError, summary

log = logging.getLogger(__name__)
AUDIT_ACTION = "agent.tool_call"


def _usage_object(usage: Usage) -> dict[str, int]:
    return {"input_tokens": usage.input_tokens, "cached_input_tokens": usage.cached_input_tokens,
            "output_tokens": usage.output_tokens, "total_tokens": usage.input_tokens + usage.output_tokens}


class AgentRun(gw_jobs.JobRun):
    endpoint = ENDPOINT

    def __init__(self, job: Job):
        super().__init__(job)
        self.spec: dict[str, Any] = jobs.job_input(job=job)
        self.events = RunEvents(request_id=job.request_id, created=created_data(job.public_id, self.spec))
        self.usage = Usage(0, 0)
        self.steps = 0
        self.node_id = ""

    # --- one model call ---------------------------------------------------------------

    def _call_model(self, candidates, messages, tools) -> dict[str, Any]:
        budget_left = self.spec["max_tokens"] - self.usage.input_tokens - self.usage.output_tokens
        bound = gw_tokens.chat_prompt_bound({"messages": messages, "tools": tools})
        bound = min(bound, max(s.context_window for s in candidates))
        cap = min(min(s.max_output_tokens for s in candidates), budget_left - bound)
        if cap < 1:
            return {}
        upstream = {"messages": messages, "tools": tools, "max_tokens": cap}

        async def answer(served):
            return await adapter_for(served.node).chat(upstream)

        try:
            served, result = self.step(first_node(self.bill, candidates, upstream, answer))
        except NodeError as exc:
            raise gw_jobs.node_failure(exc) from None
        if not self.node_id:
            self.node_id = served.node.public_id
            paidjobs.job_assign_node(job=self.job, node_id=served.node.id)
        usage = usage_from(result.get("usage")) or Usage(
            input_tokens=gw_tokens.estimate_from_bound(bound),
            output_tokens=min(cap, gw_tokens.estimate_output_tokens(result.get("choices") or [])),
        )
        self.usage = add_usage(self.usage, usage)
        return result

    # --- one tool call ----------------------------------------------------------------

    def _tool(self, call: dict[str, Any]) -> str:
        function = call.get("function") or {}
        name, raw = str(function.get("name") or ""), function.get("arguments") or "{}"
        self.events.emit("tool.call", step=self.steps, call_id=call.get("id"), name=name, arguments=raw)
        arguments: Any = None
        try:
            arguments = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
        if name not in self.spec["granted"]:
            outcome = "refused"
            known = "is not granted for this run" if name in TOOLS else "does not exist"
            output: Any = {"error": f"tool '{name}' {known}; it was not run."}
        elif not isinstance(arguments, dict):
            outcome, output = "failed", {"error": "the arguments are not a JSON object"}
        else:
            try:
                output = TOOLS[name].run(arguments, ToolContext(project=self.job.project, step=self.step))
                outcome = "executed"
            except ToolError as exc:
                outcome, output = "failed", {"error": str(exc)}
        audit_record(
            project_id=self.job.project_id, action=AUDIT_ACTION, outcome=outcome, actor=self.spec["actor"],
            subject=self.job.public_id, request_id=self.job.request_id,
            data={"agent": self.spec["agent"], "step": self.steps, "tool": name, "call_id": call.get("id"),
                  "arguments": arguments if isinstance(arguments, dict) else raw,
                  "summary": summary(outcome, output.get("error") if outcome != "executed" else output)},
        )
        self.events.emit("tool.result", step=self.steps, call_id=call.get("id"), name=name, outcome=outcome,
                         output=output)
        return orjson.dumps(output).decode()

    # --- the loop ---------------------------------------------------------------------

    def loop_until_done(self) -> tuple[str | None, str]:
        spec = self.spec
        agent = AGENTS[spec["agent"]]
        project = self.job.project
        candidates = job_candidates(model=spec["model"], allow_non_confidential=project.allow_non_confidential,
                                    region=project.region_preference)
        if not candidates:
            raise gw_jobs.JobFailed("no_nodes_available", f"No eligible node serves '{spec['model']}' now.")
        tools = [TOOLS[name].schema for name in agent.tools]
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": agent.instructions},
            {"role": "user", "content": spec["input"]},
        ]
        while True:
            if self.steps >= spec["max_steps"]:
                return None, "max_steps"
            self.steps += 1
            self.events.emit("step.started", step=self.steps)
            result = self._call_model(candidates, messages, tools)
            if not result:
                self.steps -= 1  # the step never called the model
                return None, "max_tokens"
            message = ((result.get("choices") or [{}])[0]).get("message") or {}
            calls = [c for c in message.get("tool_calls") or [] if isinstance(c, dict)]
            content = message.get("content")
            self.events.emit(
                "message", step=self.steps, content=content,
                tool_calls=[{"id": c.get("id"), "name": (c.get("function") or {}).get("name")} for c in calls],
                usage=_usage_object(usage_from(result.get("usage")) or Usage(0, 0)),
            )
            if not calls:
                return content or "", "final_answer"
            messages.append({"role": "assistant", "content": content, "tool_calls": calls})
            for call in calls:
                messages.append({"role": "tool", "tool_call_id": str(call.get("id") or ""), "content": self._tool(call)})

    def _give_back_tokens(self) -> None:
        """The budget was admitted against the rate limits whole; what was not used goes back."""
        scope = dict(self.spec.get("limits") or {})
        unused = scope.pop("admitted", 0) - self.usage.input_tokens - self.usage.output_tokens
        if unused <= 0 or not scope:
            return
        try:
            self.step(limits.refund(key=SimpleNamespace(**scope), tokens=unused))
        except Exception:  # the limits only lag: a run never fails for this
            log.warning("agent run %s: could not give %d tokens back to the rate limits", self.job.public_id, unused)

    def run(self) -> None:
        failure: gw_jobs.JobFailed | None = None
        output, stop_reason = None, ""
        try:
            self.hold()
            output, stop_reason = self.loop_until_done()
        except gw_jobs.JobFailed as exc:
            failure = exc
        except Exception:
            log.exception("agent run %s failed", self.job.public_id)
            failure = gw_jobs.JobFailed("internal_error", "The run failed; you are billed only for model calls made.")
        bill, used = self.bill, self.usage
        # The same list as the events kept: sealed with the job, it holds the last event too.
        result: dict[str, Any] = {"output": output, "stop_reason": stop_reason or None, "steps": self.steps,
                                  "usage": _usage_object(used), "cost": 0, "events": self.events.kept}
        last: list[bytes] = []

        def settle_and_record() -> None:
            if bill is not None and used.input_tokens + used.output_tokens:
                # Every model call made is billed, in a failed run too.
                result["cost"] = bill.settle(usage=used, node_id=self.node_id)
            elif bill is not None:
                bill.void(error_code=failure.code if failure else "", node_id=self.node_id)
            common = {"steps": self.steps, "usage": result["usage"], "cost": result["cost"]}
            if failure is None:
                last.append(self.events.record("run.completed", output=output, stop_reason=stop_reason, **common))
            else:
                last.append(self.events.record(
                    "run.failed", error={"code": failure.code, "message": failure.message}, **common))

        self._give_back_tokens()
        status = Job.Status.SUCCEEDED if failure is None else Job.Status.FAILED
        # Settled, recorded and finished in one transaction; only then does the client see the end.
        self.finish(status=status, result=result, error=failure, settle=settle_and_record)
        for frame in last:
            self.events.publish(frame)
        self.events.close()


def run_job(job_id: str) -> None:
    run = AgentRun.claim(job_id)
    if run is None:
        return
    try:
        run.run()
    finally:
        run.events.close()
        run.close()
