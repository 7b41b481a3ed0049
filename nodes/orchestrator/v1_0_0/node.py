"""The stamping orchestrator: one workflow per STAMP_REQUESTED, on the stamp_workflow FSM.

Steps come from the contract (``config.steps``): ``stamp`` is a STAMP_FILE command routed over the bus to the
service the routing subcontract picks (``onex.routing``: strategy, targets, fallbacks; the first target on the
event's topic, any other on a topic of its own) and completes when its STAMP_CREATED / STAMP_FAILED arrives;
``intelligence`` (optional) posts the hash to ``config.intelligence_url`` and is skipped when no URL is configured
or the service fails. Events a batch produces are collected and published together at the end of the batch (the
bus batches them), its outcomes once their workflows' checkpoints are stored (``OrchestratorNode.flush``).

A stamp's row is written from its workflow's outcome (the database adapter's). A STAMP_CREATED that no running
workflow takes as its result (late: its workflow failed or retried the step meanwhile; or one this process has not
seen the request of) still stands for a file stamped, so its row is written here, one transaction a batch, before the
batch is acknowledged: the row of every stamp made is stored, as when the adapter consumed them all (README, "Design
decisions"). While the store is unavailable the batch waits for it, as a checkpoint does (``hold_store``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from onex.clock import utc_text
from onex.envelope import OnexEnvelopeV1, derived_after, id_tail, uuid_text
from onex.exceptions import OnexError, PayloadError, TransitionError
from onex.files import SNIFF_SIZE, detect_file_type
from onex.fsm import Entity
from onex.nodes import Event, OrchestratorNode, StepRun, StepStatus, Workflow
from onex.routing import LiveServices, Router
from onex.store import StampRow, WriteBatch

from ...models import (
    ModelStampCommand,
    ModelStampCreated,
    ModelStampFailed,
    ModelStampRecord,
    ModelStampRequest,
    ModelStepResult,
    ModelWorkflowFinished,
)
from ...rows import created_stamp_row
from .models import ModelOrchestratorConfig

_MICROSECOND = timedelta(microseconds=1)
# Read once: a member read off its enum class takes the hook of EnumType's __getattr__ on CPython 3.11.
_RUNNING, _FAILED = StepStatus.RUNNING, StepStatus.FAILED


class NodeOrchestrator(OrchestratorNode):
    config_model = ModelOrchestratorConfig
    config: ModelOrchestratorConfig
    step_names = frozenset({"stamp", "intelligence"})
    required_steps = frozenset({"stamp"})  # its workflows end when the stamp step does
    # What its routing subcontract routes, and the fields hash_key and conditions read (_route_context).
    routes = {
        "STAMP_FILE": frozenset(
            {"workflow_id", "file_path", "namespace", "stamp_type", "dry_run", "author", "file_type"}
        )
    }

    # Its workflows cannot resume without the request they stamp, which their context holds.
    state_support = dataclasses.replace(OrchestratorNode.state_support, required=("state", "steps", "context"))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.intelligence_url = self.config.intelligence_url
        self.finished_by_state: dict[str, int] = defaultdict(int)
        self._commands: dict[str, list[OnexEnvelopeV1]] = defaultdict(list)  # STAMP_FILE by the topic of its target
        self.router = Router(self.contract.subcontracts.routing, default_service="stamping_effect")
        self.live = LiveServices(self.store, clock=self.clock)

    async def on_start(self) -> None:
        # The topics of the services it routes to besides the first (start() creates the event's own): on Kafka a
        # command may go out before the target's process created its topic.
        topic = self.topic_of("STAMP_FILE")
        await self.bus.ensure_topics(sorted({self.router.topic(topic, s) for s in self.router.services()}))
        await super().on_start()

    @property
    def workflows_by_state(self) -> dict[str, int]:
        """Workflows this orchestrator runs now (``processing``) and has finished since it started."""
        return {"processing": len(self.workflows), **self.finished_by_state}

    # -- FSM entry actions (named in subcontracts/fsm/stamp_workflow.yaml) --
    def on_processing(self, entity: Entity) -> None:
        pass

    def on_completed(self, entity: Entity) -> None:
        self.finished_by_state["completed"] += 1

    def on_failed(self, entity: Entity) -> None:
        self.finished_by_state["failed"] += 1

    # -- durability (OrchestratorNode checkpoints; these say what of a workflow's context to keep) --
    def save_context(self, workflow: Workflow) -> dict[str, Any]:
        # No None anywhere (the request's unset fields default to None, and restore_context reads what is missing as
        # absent): a checkpoint without a null is stored without a search for NaN (onex._jsontext).
        request: ModelStampRequest = workflow.context["request"]
        saved = {
            "request": request.to_jsonable(exclude_none=True),
            "started_at": utc_text(workflow.context["started_at"]),
        }
        if workflow.request is not None:
            saved["request_id"] = uuid_text(workflow.request.event_id)
        stamp: ModelStampCreated | None = workflow.context.get("stamp")
        if stamp is not None:
            saved["stamp"] = stamp.to_jsonable()
        if target := workflow.context.get("target"):
            saved["target"] = target
        return saved

    def restore_context(self, workflow: Workflow, saved: Mapping[str, Any]) -> None:
        request = ModelStampRequest.model_validate(saved["request"])
        workflow.context.update(
            input=request.file_path or "<content>",
            namespace=request.namespace,
            request=request,
            started_at=datetime.fromisoformat(saved["started_at"]),
        )
        if saved.get("target"):
            workflow.context["target"] = saved["target"]
        if saved.get("stamp"):
            stamp = ModelStampCreated.model_validate(saved["stamp"])
            workflow.context.update(stamp=stamp, file_hash=stamp.file_hash)

    def durable(self, workflow: Workflow) -> bool:
        request: ModelStampRequest = workflow.context["request"]
        return not request.dry_run

    def _marks(self, workflow: Workflow) -> dict[str, Any]:
        """What a transition of ``workflow`` carries besides its trigger: a dry run's are marked, and not stored."""
        return {} if self.durable(workflow) else {"dry_run": True}

    def row_fields(self, workflow: Workflow) -> dict[str, Any]:
        request: ModelStampRequest | None = workflow.context.get("request")
        stamp: ModelStampCreated | None = workflow.context.get("stamp")
        return {
            "namespace": request.namespace if request is not None else None,
            "file_path": request.file_path if request is not None else None,
            "file_hash": stamp.file_hash if stamp is not None else None,
            "stamp_id": stamp.stamp_id if stamp is not None else None,
            "started_at": workflow.context.get("started_at"),
        }

    # -- handlers --
    async def handle_events(self, events: Sequence[Event]) -> None:
        """Requests and step results: one handler, so one subscription (one Kafka consumer) takes them all. Every
        one of them is keyed by workflow id, so partition i of each topic reaches the same orchestrator."""
        untaken: list[StampRow] = []
        for envelope, payload in events:
            if isinstance(payload, ModelStampRequest):
                keyed_by_its_workflow = envelope.partition_key is None and envelope.correlation_id is not None
                if keyed_by_its_workflow or not await self._moved(envelope):
                    await self._start(envelope, payload)
            elif isinstance(payload, ModelStampCreated):
                if not await self._result(envelope, payload) and not payload.dry_run:
                    settings = self.settings
                    untaken.append(
                        created_stamp_row(envelope, payload, settings.metadata_version, settings.protocol_version)
                    )
            elif isinstance(payload, ModelStampFailed):
                await self._result(envelope, payload)
            else:
                # The contract's codec hands over its payload model; another class here means the contract's model
                # and this module's are not the same class (say a copy of the package imported under two names).
                # Dead-lettered with this error rather than taken for a late result and dropped.
                kind = type(payload)
                raise PayloadError(
                    uuid_text(envelope.event_id),
                    envelope.event_type,
                    f"the orchestrator does not handle a {kind.__module__}.{kind.__qualname__} (expected "
                    f"{ModelStampRequest.__module__}.ModelStampRequest, ModelStampCreated or ModelStampFailed)",
                )
        if untaken:  # the rows of stamps no running workflow took (module docstring), stored before the acknowledgement
            batch = WriteBatch(consumer=self.contract.name, stamps=untaken)
            await self.hold_store(functools.partial(self.store.apply, batch))

    async def _moved(self, request: OnexEnvelopeV1) -> bool:
        """Whether ``request``, keyed otherwise than by its workflow id (``onex publish --key``, a producer that gave
        no correlation id), went again keyed by it, to the partition its workflow's results will come to: on Kafka
        each replica owns its partitions, and the one that ran a workflow whose request came on another partition
        than its results never heard them (the step timed out, and the workflow failed, though the file was
        stamped). Same event id: what counts events by id counts it once."""
        if not self.bus.retains_messages:  # the memory bus: every partition is this process's
            return False
        cid = request.correlation_id or request.event_id
        topic, own = self._consumed["STAMP_REQUESTED"][0], uuid_text(cid)
        if request.key == own or self.bus.partition_of(topic, request.key) == self.bus.partition_of(topic, own):
            return False
        await self.bus.publish(topic, request.model_copy(update={"partition_key": None, "correlation_id": cid}))
        return True

    async def _start(self, envelope: OnexEnvelopeV1, request: ModelStampRequest) -> None:
        assert self.fsm is not None
        cid = envelope.correlation_id or envelope.event_id
        if self.known(cid):
            # A redelivered request: its workflow runs or finished. What handling it published may not have reached
            # the broker (the bus hands a batch over again when a record it produced was not delivered), so the
            # command of a step still waiting for its result goes out again, with the same id.
            running = self.workflows.get(cid)
            stamping = None if running is None else running.steps.get("stamp")
            if running is not None and stamping is not None and stamping.status is _RUNNING:
                # To the target this attempt was routed to, not to a new pick.
                target = running.context.get("target") or self.router.default_service
                self._send(target, self._stamp_command(running, stamping))
            return
        workflow = Workflow(cid, self.steps, input=request.file_path or "<content>", namespace=request.namespace)
        workflow.request = envelope
        workflow.context["request"] = request
        workflow.context["started_at"] = self.clock.now()
        self.fsm.attach(workflow)
        self.fsm.trigger(workflow, "start", **self._marks(workflow))
        self.track(workflow)
        await self.advance(workflow)

    async def _result(self, envelope: OnexEnvelopeV1, result: ModelStampCreated | ModelStampFailed) -> bool:
        """Complete or fail the stamp step of the result's workflow; False when no running step took the result."""
        workflow = self.workflows.get(envelope.correlation_id)  # type: ignore[arg-type]
        stamping = None if workflow is None else workflow.steps.get("stamp")  # none: a contract without the step
        if workflow is None or stamping is None or stamping.status is not _RUNNING:
            # Late or duplicate, or the result of a request this process has not handled yet (it published the
            # command, crashed before its checkpoint, and the request is redelivered): handling the request again
            # sends the same command again, and the effect answers it again.
            return False
        if isinstance(result, ModelStampCreated):
            workflow.context["file_hash"] = result.file_hash
            workflow.context["stamp"] = result
            await self.complete_step(
                workflow,
                "stamp",
                {
                    "file_hash": result.file_hash,
                    "stamp_id": uuid_text(result.stamp_id),
                    "status": result.status,
                    "file_type": result.file_type,
                    "file_size": result.file_size,
                },
            )
        else:
            run = stamping
            # A failure answers one attempt (its command, the causation): an earlier attempt's, late or handled again
            # (its batch was redelivered), says nothing of the running one. One without a causation is taken.
            if envelope.causation_id not in (None, self._command_id(workflow, run)):
                return False
            await self.fail_step(workflow, "stamp", result.error, retryable=result.retryable)
        return True

    # -- steps --
    async def run_step(self, workflow: Workflow, run: StepRun) -> dict[str, Any] | None:
        name = run.step.step_name
        if name == "stamp":
            target = await self._route(workflow)
            workflow.context["target"] = target
            self._send(target, self._stamp_command(workflow, run))
            return None
        if name == "intelligence":
            if not self.intelligence_url:
                # No attempt can mend configuration: skipped when the contract says optional, else failed at once.
                return self._give_up(workflow, run, "no intelligence service configured")
            try:
                return await asyncio.wait_for(self._ask_intelligence(workflow), run.step.timeout_ms / 1000)
            except (OSError, TimeoutError, ValueError) as exc:
                # The base class's path for a step that fails as it runs: retried while the contract's max_attempts
                # allow, then skipped if the step is optional and failing its workflow if not.
                raise OnexError(f"intelligence service unavailable: {exc}") from exc
        # A contract naming a step no runner here carries out (validation refuses it, this is the backstop): failed,
        # or skipped when optional, as the contract says; never quietly skipped.
        return self._give_up(
            workflow, run, f"no runner for step {name!r}: this orchestrator runs 'stamp' and 'intelligence'"
        )

    def _give_up(self, workflow: Workflow, run: StepRun, reason: str) -> dict[str, Any]:
        """For ``run_step``: end ``run`` with ``reason`` no retry can mend, on the base class's terms: skipped when
        the step is optional, else failed (failing its workflow), its attempts those made.

        Not ``fail_step``: that advances the workflow, and ``run_step`` is called while ``advance`` walks its steps;
        ``_start_step`` leaves a step that is no longer running as it is, whatever ``run_step`` returns."""
        self._finish_step(workflow, run, error=reason, final=True)
        return {}

    async def _route(self, workflow: Workflow) -> str:
        """The service this attempt of the stamp step goes to (each attempt is routed again: a retry may go to a
        fallback). ``OnexError`` when a conditional routing has no target for the request and no fallback."""
        router = self.router
        if router.fixed:
            return router.default_service  # the shipped deployment: nothing to choose, nothing to read
        if router.needs_availability:
            await self.live.refresh()
        route = router.choose(self._route_context(workflow), self.live.available)
        if route is None:
            raise OnexError("no routing target matches the request and the routing has no fallback")
        return route.service

    def _route_context(self, workflow: Workflow) -> dict[str, Any]:
        """What hash keys and conditions read: the command's fields, and the file's type as onex names it (by the
        file's name, and the content's first bytes for content requests; the orchestrator opens no file)."""
        if self.router.strategy not in ("hash", "conditional"):
            return {}
        request: ModelStampRequest = workflow.context["request"]
        head = request.content.encode()[:SNIFF_SIZE] if request.content is not None else b""
        return {
            "workflow_id": str(workflow.cid),
            "file_path": request.file_path,
            "namespace": request.namespace,
            "stamp_type": request.stamp_type,
            "dry_run": request.dry_run,
            "author": request.author,
            "file_type": detect_file_type(request.file_path or "", head),
        }

    def _send(self, service: str, command: OnexEnvelopeV1) -> None:
        self._commands[self.router.topic(self.topic_of("STAMP_FILE"), service)].append(command)

    def _stamp_command(self, workflow: Workflow, run: StepRun) -> OnexEnvelopeV1:
        request: ModelStampRequest = workflow.context["request"]
        return self.envelope(
            "STAMP_FILE",
            ModelStampCommand.built(
                workflow_id=workflow.cid,
                file_path=request.file_path,
                content=request.content,
                content_base64=request.content_base64,
                namespace=request.namespace,
                stamp_type=request.stamp_type,
                dry_run=request.dry_run,
                author=request.author,
                attempt=run.attempts,
            ),
            correlation_id=workflow.cid,
            event_id=self._command_id(workflow, run),
        )

    def _command_id(self, workflow: Workflow, run: StepRun) -> uuid.UUID:
        """Derived from the workflow and the attempt: the same command whoever sends it again, a new one for each
        retry."""
        return derived_after(workflow.cid, id_tail(self.contract.name, "STAMP_FILE", run.attempts))

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
        steps = workflow.steps
        reasons = [f"{r.step.step_name}: {r.error}" for r in steps.values() if r.status is _FAILED]
        if "stamp" not in steps:  # validation refuses such steps; a contract loaded without it still gets a reason
            reasons.append(self._no_stamp(workflow))
        error = "; ".join(reasons) if reasons else None
        if error is None:
            try:
                self.fsm.trigger(workflow, "complete", **self._marks(workflow))
            except TransitionError as exc:
                # The base class took this workflow off its running ones before calling here: an exception would
                # leave it with no outcome (the request, handled again, is one it knows as finished), no dead letter
                # and no log. So a workflow that cannot complete fails, with why.
                error = self._incomplete(workflow, exc)
        if error is not None:
            workflow.context["error"] = error
            self.fsm.trigger(workflow, "fail", error=error, **self._marks(workflow))
        self.fsm.detach(workflow)
        request: ModelStampRequest = workflow.context["request"]
        stamp: ModelStampCreated | None = workflow.context.get("stamp")
        now = self.clock.now()
        started: datetime = workflow.context["started_at"]
        finished = ModelWorkflowFinished.built(
            workflow_id=workflow.cid,
            state="failed" if error else "completed",
            state_seq=workflow.seq,
            namespace=request.namespace,
            file_path=request.file_path,
            started_at=started,
            completed_at=now,
            execution_time_ms=(now - started) // _MICROSECOND / 1000,  # round(ms, 3) exactly, at a third of its cost
            file_hash=stamp.file_hash if stamp else None,
            stamp_id=stamp.stamp_id if stamp else None,
            dry_run=request.dry_run,
            error=error,
            steps=tuple(
                ModelStepResult.built(
                    step_name=r.step.step_name,
                    step_order=r.order,
                    status=r.status._value_,  # the plain str, without the `.value` descriptor
                    attempts=r.attempts,
                    execution_time_ms=r.elapsed_ms,
                    error=r.error,
                    data=r.data,
                )
                for r in workflow.steps.values()
            ),
            stamp=None
            if stamp is None
            else ModelStampRecord.built(
                stamp_id=stamp.stamp_id,
                file_path=stamp.file_path,
                file_hash=stamp.file_hash,
                file_size=stamp.file_size,
                file_type=stamp.file_type,
                stamp_type=stamp.stamp_type,
                status=stamp.status,
                data=stamp.stamp,
                file_mode=stamp.file_mode,
            ),
        )
        event = "WORKFLOW_FAILED" if error else "WORKFLOW_COMPLETED"
        # One outcome per workflow, whoever finishes it: its id is derived from the workflow alone, so an outcome
        # published again after a crash is recognised downstream.
        outcome = self.envelope(
            event,
            finished,
            correlation_id=workflow.cid,
            event_id=derived_after(workflow.cid, id_tail(self.contract.name, event)),
        )
        self.send_outcome(workflow, event, outcome)

    @staticmethod
    def _no_stamp(workflow: Workflow) -> str:
        names = ", ".join(repr(name) for name in workflow.steps) or "none"
        return f"no 'stamp' step: the contract's steps ({names}) stamp nothing, so the workflow cannot complete"

    @staticmethod
    def _incomplete(workflow: Workflow, refused: TransitionError) -> str:
        """Why ``workflow``, whose steps all ended without a required one failing, cannot complete: what its FSM's
        ``complete`` guard needs (the stamp's ``file_hash``) only the ``stamp`` step gives, and an optional one may
        have been skipped."""
        stamping = workflow.steps["stamp"]
        if stamping.status is not StepStatus.COMPLETED:
            return f"stamp: {stamping.status.value} ({stamping.error}), so the workflow cannot complete"
        return str(refused)

    async def publish_commands(self) -> None:
        commands, self._commands = self._commands, defaultdict(list)
        try:
            for topic in list(commands):
                await self.bus.publish_many(topic, commands[topic])
                del commands[topic]
        except BaseException:  # kept, ahead of newer ones, for the next flush (a copy that went out has the same id)
            for topic, envelopes in commands.items():
                self._commands[topic][:0] = envelopes
            raise
