"""A workflow as an orchestrator runs it (``onex.nodes.OrchestratorNode``): an FSM entity with a run of each step."""

from __future__ import annotations

import asyncio
import enum
import heapq
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from onex.contracts import Step
from onex.envelope import OnexEnvelopeV1, millis_of, uuid_text
from onex.fsm import Entity


class StepStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


# For the step engine: a member read off its class takes the hook of EnumType's __getattr__ on CPython 3.11 (99
# against 24 ns), and the engine reads about ten a stamp.
_PENDING, _RUNNING, _COMPLETED, _FAILED, _SKIPPED = (
    StepStatus.PENDING,
    StepStatus.RUNNING,
    StepStatus.COMPLETED,
    StepStatus.FAILED,
    StepStatus.SKIPPED,
)


@dataclass(slots=True)
class StepRun:
    step: Step
    order: int
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    started: float = 0.0  # wall clock (time.time()): it is checkpointed, and read again by another process
    deadline: float | None = None  # wall clock; set while the step runs
    elapsed_ms: float | None = None
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def checkpoint(self) -> dict[str, Any]:
        """The step as JSON values; what is None left out (``restore`` reads it back as None), so that a checkpoint
        holds no null and the store's JSON text need not be searched for a NaN (``onex._jsontext``)."""
        saved = {
            "status": self.status._value_,  # the plain str (`.value` is a descriptor in Python, on the hot path)
            "attempts": self.attempts,
            "started": self.started,
            "data": self.data,
        }
        if self.deadline is not None:
            saved["deadline"] = self.deadline
        if self.elapsed_ms is not None:
            saved["elapsed_ms"] = self.elapsed_ms
        if self.error is not None:
            saved["error"] = self.error
        return saved

    def restore(self, saved: Mapping[str, Any]) -> None:
        self.status = StepStatus(saved["status"])
        self.attempts = int(saved["attempts"])
        self.started = float(saved["started"])
        self.deadline = saved.get("deadline")
        self.elapsed_ms = saved.get("elapsed_ms")
        self.data = dict(saved.get("data") or {})
        self.error = saved.get("error")


CHECKPOINT_VERSION = 1


class Workflow(Entity):
    """One orchestrated workflow: an FSM entity with its steps."""

    def __init__(self, correlation_id: uuid.UUID, steps: Sequence[Step], **context: Any) -> None:
        super().__init__(
            entity_id=uuid_text(correlation_id),
            correlation_id=correlation_id,
            context=dict(context),
            id_millis=millis_of(correlation_id),  # its transitions' ids begin with its id's time (``Entity``)
        )
        self.cid = correlation_id  # the same id, typed as always present
        self.steps = {s.step_name: StepRun(s, i) for i, s in enumerate(steps)}
        self.request: OnexEnvelopeV1 | None = None
        self.adopted = False  # loaded from a checkpoint another process (or an earlier run) wrote
        self.stored: asyncio.Future[None] | None = None  # the last write begun of its checkpoint (its outcome waits)

    def checkpoint(self, keeps: Collection[str], save_context: Callable[[Workflow], dict[str, Any]]) -> dict[str, Any]:
        """The checkpoint of a running workflow: its state and sequence, and of ``keeps`` (the state_management
        fields) its steps and what ``save_context`` keeps of its context (``OrchestratorNode.restore`` reads it)."""
        saved: dict[str, Any] = {"v": CHECKPOINT_VERSION, "state": self.state, "seq": self.seq}
        if "steps" in keeps:
            saved["steps"] = {name: run.checkpoint() for name, run in self.steps.items()}
        if "context" in keeps:
            saved["context"] = save_context(self)
        return saved

    @classmethod
    def restored(cls, correlation_id: uuid.UUID, steps: Sequence[Step], saved: Any) -> Workflow | None:
        """The workflow ``checkpoint`` saved (its context is the orchestrator's to restore), marked adopted; None
        for what is not a checkpoint of this version."""
        if not isinstance(saved, dict) or saved.get("v") != CHECKPOINT_VERSION:
            return None
        workflow = cls(correlation_id, steps)
        workflow.adopted = True
        workflow.state = str(saved["state"])
        workflow.seq = int(saved["seq"])
        for name, run_saved in dict(saved.get("steps") or {}).items():
            if (run := workflow.steps.get(name)) is not None:
                run.restore(run_saved)
        return workflow


class StepDeadlines:
    """The deadlines of the steps an orchestrator runs, soonest first (a heap of ``(deadline, sequence, workflow id,
    step run, attempt)``), for its sweeper, which fails a step still running its attempt when the deadline passes.

    A step that finishes leaves its entry behind (taking one out of a heap is a search), and ``spend`` counts them:
    once they are more than half the heap, one pass keeps only the entries of steps still running that attempt (read
    off the run the entry holds, without hashing the workflow's id: ``UUID.__hash__`` is Python). Left until their
    deadline instead, as they were, a stamp's two entries stayed 30 and 5 seconds after it finished: at 3,000 stamps a
    second about 100,000 entries, each a tuple the garbage collector tracked holding a workflow id it kept alive, the
    bulk of what a young collection scanned over HTTP (issue 12's thirty-third part)."""

    __slots__ = ("heap", "seq", "spent")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, uuid.UUID, StepRun, int]] = []
        self.seq = 0  # a tie-break: equal deadlines never compare what follows
        self.spent = 0  # entries of steps that finished since the last pass, at most

    def __len__(self) -> int:
        return len(self.heap)

    def push(self, workflow: Workflow, run: StepRun, *, at: float | None = None) -> None:
        """Watch ``run``'s deadline (or look at it again ``at`` that time)."""
        assert run.deadline is not None
        self.seq += 1
        heapq.heappush(self.heap, (run.deadline if at is None else at, self.seq, workflow.cid, run, run.attempts))

    def due(self, now: float, workflows: Mapping[uuid.UUID, Workflow]) -> list[tuple[Workflow, str]]:
        """Take out every entry whose deadline is ``now`` or earlier; the workflows (still this process's: in
        ``workflows``, with that run) and steps still running the attempt it was set for."""
        heap, found = self.heap, []
        while heap and heap[0][0] <= now:
            _, _, cid, run, attempt = heapq.heappop(heap)
            name = run.step.step_name
            if _running(run, attempt) and (workflow := workflows.get(cid)) is not None and workflow.steps[name] is run:
                found.append((workflow, name))
        return found

    def spend(self) -> None:
        """A step with an entry here finished: once such entries are more than half the heap, drop them all."""
        self.spent += 1
        if self.spent > len(self.heap) >> 1:
            kept = [entry for entry in self.heap if _running(entry[3], entry[4])]
            heapq.heapify(kept)
            self.heap, self.spent = kept, 0


def _running(run: StepRun, attempt: int) -> bool:
    """Whether ``run`` runs the attempt an entry was set for (a step finishing has no deadline any more)."""
    return run.status is _RUNNING and run.attempts == attempt and run.deadline is not None
