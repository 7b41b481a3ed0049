"""The assembler: an orchestrator whose steps a, b and c are done elsewhere and polish is done inline.

``run_step`` dispatches a, b and c as STEP_REQUESTED (returns None) and records every start in ``started``;
a STEP_DONE event completes or fails the step. polish completes at once, or raises OnexError when the request
said ``polish: fail``. Results are handed to the engine even for finished workflows (kept in ``finished``), so
tests see the engine itself ignore late and duplicate results.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from onex.exceptions import OnexError
from onex.nodes import Event, OrchestratorNode, StepRun, Workflow

DISPATCHED = ("a", "b", "c")


class NodeAssembler(OrchestratorNode):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started: list[tuple[str, int]] = []  # (step, attempt) in the order the engine started them
        self.finished: dict[uuid.UUID, Workflow] = {}

    async def handle_build(self, event: Event) -> None:
        assert self.fsm is not None
        cid = event.envelope.correlation_id or uuid.uuid4()
        workflow = Workflow(cid, self.steps, item=event.payload["item"], polish=event.payload.get("polish", "ok"))
        workflow.request = event.envelope
        self.fsm.attach(workflow)
        self.fsm.trigger(workflow, "start")
        self.workflows[cid] = workflow
        await self.advance(workflow)

    def save_context(self, workflow: Workflow) -> dict[str, Any]:
        return {"item": workflow.context["item"], "polish": workflow.context.get("polish", "ok")}

    def restore_context(self, workflow: Workflow, saved: Mapping[str, Any]) -> None:
        workflow.context.update(saved)

    async def handle_step_done(self, event: Event) -> None:
        cid = uuid.UUID(event.payload["workflow_id"])
        workflow = self.workflows.get(cid) or self.finished.get(cid)
        if workflow is None:
            return
        step = event.payload["step"]
        if event.payload["ok"]:
            await self.complete_step(workflow, step, {"done_by": event.envelope.source_node_id})
        else:
            await self.fail_step(workflow, step, event.payload.get("error", "failed"))

    async def run_step(self, workflow: Workflow, run: StepRun) -> dict[str, Any] | None:
        name = run.step.step_name
        self.started.append((name, run.attempts))
        if name in DISPATCHED:
            await self.publish(
                "STEP_REQUESTED",
                {"workflow_id": str(workflow.correlation_id), "step": name, "attempt": run.attempts},
                causation=workflow.request,
            )
            return None
        if workflow.context["polish"] == "fail":
            raise OnexError("the polisher is out of wax")
        return {"shine": "high"}

    async def on_workflow_done(self, workflow: Workflow) -> None:
        assert self.fsm is not None
        failed = [r for r in workflow.steps.values() if r.status.value == "failed"]
        error = "; ".join(f"{r.step.step_name}: {r.error}" for r in failed) or None
        self.fsm.trigger(workflow, "fail" if error else "complete")
        self.finished[workflow.correlation_id] = workflow  # type: ignore[index]
        await self.publish(
            "BUILD_FAILED" if error else "BUILD_COMPLETED",
            {
                "workflow_id": str(workflow.correlation_id),
                "item": workflow.context["item"],
                "error": error,
                "steps": {
                    r.step.step_name: {"status": r.status.value, "attempts": r.attempts, "error": r.error}
                    for r in workflow.steps.values()
                },
            },
            causation=workflow.request,
        )
