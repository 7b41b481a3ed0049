"""The stamping orchestrator: one workflow per STAMP_REQUESTED, on the stamp_workflow FSM.

Steps come from the contract (``config.steps``): ``stamp`` is routed over the bus to the service named by the
routing subcontract and completes when its STAMP_CREATED / STAMP_FAILED arrives; ``intelligence`` (optional) posts
the hash to ``config.intelligence_url`` and is skipped when no URL is configured or the service fails. Events a
batch produces are collected and published together at the end of the batch (the bus batches them).
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from onex.envelope import OnexEnvelopeV1
from onex.fsm import Entity
from onex.nodes import Event, OrchestratorNode, StepRun, StepStatus, Workflow

from nodes.orchestrator.v1_0_0.models import (
    ModelStampCommand,
    ModelStampRequest,
    ModelStepResult,
    ModelWorkflowFinished,
    ModelWorkflowStarted,
)
from nodes.stamping_effect.v1_0_0.models import ModelStampCreated, ModelStampFailed


class NodeOrchestrator(OrchestratorNode):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.intelligence_url: str = str(self.contract.config.get("intelligence_url") or "")
        self.workflows_by_state: dict[str, int] = defaultdict(int)
        self._outbox: dict[str, list[OnexEnvelopeV1]] = defaultdict(list)
        # Workflows finished recently, so a redelivered request (at-least-once) does not run its workflow again.
        # Bounded: a redelivery later than ``dedupe_window`` workflows would run again, and is idempotent in the store.
        # Keyed by the ids' integers: a UUID is an object the garbage collector tracks, an int is not, and a
        # window of 200,000 live UUIDs made every collection slower.
        self._finished: OrderedDict[int, None] = OrderedDict()
        self.dedupe_window = int(self.contract.config.get("dedupe_window", 200_000))
        routing = self.contract.subcontracts.routing
        self.stamp_service = routing.targets[0].service if routing and routing.targets else "stamping_effect"

    # -- FSM entry actions (named in subcontracts/fsm/stamp_workflow.yaml) --
    def on_processing(self, entity: Entity) -> None:
        self.workflows_by_state["processing"] += 1

    def on_completed(self, entity: Entity) -> None:
        self.workflows_by_state["processing"] -= 1
        self.workflows_by_state["completed"] += 1

    def on_failed(self, entity: Entity) -> None:
        if entity.history and entity.history[-1].from_state == "processing":
            self.workflows_by_state["processing"] -= 1
        self.workflows_by_state["failed"] += 1

    # -- handlers --
    async def handle_stamp_requested(self, events: Sequence[Event]) -> None:
        assert self.fsm is not None
        for envelope, request in events:
            cid = envelope.correlation_id or uuid.uuid4()
            if cid in self.workflows or cid.int in self._finished:
                continue  # a redelivered request for a workflow already running or finished
            assert isinstance(request, ModelStampRequest)
            workflow = Workflow(cid, self.steps, input=request.file_path or "<content>", namespace=request.namespace)
            workflow.request = envelope
            workflow.context["request"] = request
            workflow.context["started_at"] = datetime.now(UTC)
            self.fsm.attach(workflow)
            self.fsm.trigger(workflow, "start")
            self.workflows[cid] = workflow
            self._outbox["WORKFLOW_STARTED"].append(
                self.envelope(
                    "WORKFLOW_STARTED",
                    ModelWorkflowStarted(
                        workflow_id=cid,
                        namespace=request.namespace,
                        file_path=request.file_path,
                        started_at=workflow.context["started_at"],
                    ),
                    causation=envelope,
                )
            )
            await self.advance(workflow)

    async def handle_stamp_result(self, events: Sequence[Event]) -> None:
        for envelope, result in events:
            workflow = self.workflows.get(envelope.correlation_id)  # type: ignore[arg-type]
            if workflow is None or workflow.steps["stamp"].status is not StepStatus.RUNNING:
                continue  # late or duplicate result of a workflow already finished
            if isinstance(result, ModelStampCreated):
                workflow.context["file_hash"] = result.file_hash
                workflow.context["stamp"] = result
                await self.complete_step(
                    workflow,
                    "stamp",
                    {
                        "file_hash": result.file_hash,
                        "stamp_id": str(result.stamp_id),
                        "status": result.status,
                        "file_type": result.file_type,
                        "file_size": result.file_size,
                    },
                )
            elif isinstance(result, ModelStampFailed):
                await self.fail_step(workflow, "stamp", result.error, retryable=result.retryable)

    # -- steps --
    async def run_step(self, workflow: Workflow, run: StepRun) -> dict[str, Any] | None:
        name = run.step.step_name
        if name == "stamp":
            request: ModelStampRequest = workflow.context["request"]
            self._outbox["STAMP_FILE"].append(
                self.envelope(
                    "STAMP_FILE",
                    ModelStampCommand(
                        workflow_id=workflow.cid,
                        file_path=request.file_path,
                        content=request.content,
                        namespace=request.namespace,
                        stamp_type=request.stamp_type,
                        dry_run=request.dry_run,
                        author=request.author,
                        attempt=run.attempts,
                    ),
                    causation=workflow.request,
                )
            )
            return None
        if name == "intelligence":
            if not self.intelligence_url:
                return await self.skip_step(workflow, name, "no intelligence service configured")
            try:
                return await asyncio.wait_for(self._ask_intelligence(workflow), run.step.timeout_ms / 1000)
            except (OSError, TimeoutError, ValueError) as exc:
                return await self.skip_step(workflow, name, f"intelligence service unavailable: {exc}")
        return await self.skip_step(workflow, name, f"no runner for step {name!r}")

    async def _ask_intelligence(self, workflow: Workflow) -> dict[str, Any]:
        body = json.dumps(
            {"file_hash": workflow.context.get("file_hash"), "namespace": workflow.context.get("namespace")}
        ).encode()
        request = urllib.request.Request(self.intelligence_url, data=body, headers={"content-type": "application/json"})

        def call() -> dict[str, Any]:
            with urllib.request.urlopen(request, timeout=5) as response:
                data = json.loads(response.read() or b"{}")
            return data if isinstance(data, dict) else {"result": data}

        return await asyncio.to_thread(call)

    async def on_workflow_done(self, workflow: Workflow) -> None:
        assert self.fsm is not None
        required_failed = [r for r in workflow.steps.values() if r.status is StepStatus.FAILED]
        if required_failed:
            error = "; ".join(f"{r.step.step_name}: {r.error}" for r in required_failed)
            self.fsm.trigger(workflow, "fail", error=error)
        else:
            error = None
            self.fsm.trigger(workflow, "complete")
        self.fsm.detach(workflow)
        self._finished[workflow.cid.int] = None
        if len(self._finished) > self.dedupe_window:
            self._finished.popitem(last=False)
        request: ModelStampRequest = workflow.context["request"]
        stamp: ModelStampCreated | None = workflow.context.get("stamp")
        now = datetime.now(UTC)
        started: datetime = workflow.context["started_at"]
        finished = ModelWorkflowFinished(
            workflow_id=workflow.cid,
            state="failed" if error else "completed",
            state_seq=len(workflow.history),
            namespace=request.namespace,
            file_path=request.file_path,
            started_at=started,
            completed_at=now,
            execution_time_ms=round((now - started).total_seconds() * 1000, 3),
            file_hash=stamp.file_hash if stamp else None,
            stamp_id=stamp.stamp_id if stamp else None,
            error=error,
            steps=tuple(
                ModelStepResult(
                    step_name=r.step.step_name,
                    step_order=r.order,
                    status=r.status.value,
                    attempts=r.attempts,
                    execution_time_ms=r.elapsed_ms,
                    error=r.error,
                    data=r.data,
                )
                for r in workflow.steps.values()
            ),
        )
        event = "WORKFLOW_FAILED" if error else "WORKFLOW_COMPLETED"
        self._outbox[event].append(self.envelope(event, finished, causation=workflow.request))

    async def flush(self) -> None:
        outbox, self._outbox = self._outbox, defaultdict(list)
        for event_name, envelopes in outbox.items():
            await self.publish_envelopes(event_name, envelopes)
        await super().flush()
