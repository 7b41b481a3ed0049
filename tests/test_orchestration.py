"""The orchestrator step engine (``onex.nodes.OrchestratorNode``): stages from dependencies, parallel starts,
retries, optional steps, per-step timeouts, and late or duplicate results.

The orchestrator is the workshop project's ``assembler``: steps ``a`` and ``b`` (stage 1), ``c`` after both, and an
optional ``polish`` after ``c``. ``a``, ``b`` and ``c`` are dispatched as STEP_REQUESTED and finish when the test
publishes STEP_DONE; ``polish`` runs inline and fails when the request says ``polish: fail``.
"""

from __future__ import annotations

import functools
import importlib
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest
from onex.clock import Clock
from onex.contracts import ContractSet, Step, load_contracts, plan_stages
from onex.envelope import OnexEnvelopeV1
from onex.exceptions import OnexError
from onex.nodes import StepStatus
from onex.testing import Harness, ManualClock

if TYPE_CHECKING:
    # For annotations only: at run time the assembler's class is that of the workshop's private alias (see below).
    from tests.projects.workshop.nodes.assembler.v1_0_0.node import NodeAssembler

# See tests/test_nodes.py: the repository's `nodes` package owns the name, the workshop gets a private alias.
importlib.import_module("nodes")

ROOT = Path(__file__).resolve().parent / "projects" / "workshop"
REPO = Path(__file__).resolve().parents[1]  # the shipped nodes


@functools.cache
def workshop(**env: str) -> ContractSet:
    return load_contracts(ROOT, env=env)


def assembler(env: Mapping[str, str] | None = None, *, clock: Clock | None = None) -> Harness:
    return Harness(["assembler"], root=ROOT, contracts=workshop(**(env or {})), clock=clock)


def hosted_assembler(h: Harness) -> NodeAssembler:
    """The hosted assembler as its class, by cast: under the private alias its class is a copy isinstance would miss."""
    return cast("NodeAssembler", h.runtime.node("assembler"))


async def build(h: Harness, item: str = "chair", **fields: Any) -> uuid.UUID:
    cid = uuid.uuid4()
    await h.publish("BUILD_REQUESTED", {"item": item, **fields}, correlation_id=cid)
    await h.settle()
    return cid


async def step_done(h: Harness, cid: uuid.UUID, step: str, *, ok: bool = True, error: str | None = None) -> None:
    payload: dict[str, Any] = {"workflow_id": str(cid), "step": step, "ok": ok}
    if error is not None:
        payload["error"] = error
    await h.publish("STEP_DONE", payload)
    await h.settle()


def finished(h: Harness, cid: uuid.UUID) -> list[OnexEnvelopeV1]:
    return [
        e
        for name, e in h.events
        if name in ("BUILD_COMPLETED", "BUILD_FAILED") and e.payload["workflow_id"] == str(cid)
    ]


def statuses(outcome: OnexEnvelopeV1) -> dict[str, str]:
    return {name: step["status"] for name, step in outcome.payload["steps"].items()}


# --- planning ----------------------------------------------------------------------------------------------------


def step(name: str, *depends_on: str) -> Step:
    return Step(step_name=name, depends_on=depends_on)


def test_plan_stages_puts_steps_whose_dependencies_are_done_in_one_parallel_stage() -> None:
    stages = plan_stages([step("d", "c"), step("a"), step("c", "a", "b"), step("b"), step("e", "a")])

    assert [[s.step_name for s in stage] for stage in stages] == [["a", "b"], ["c", "e"], ["d"]]


def test_plan_stages_rejects_a_dependency_on_an_unknown_step() -> None:
    with pytest.raises(OnexError, match="step 'c' depends on unknown step 'x'"):
        plan_stages([step("a"), step("c", "a", "x")])


def test_plan_stages_rejects_a_cycle_naming_the_steps_in_it() -> None:
    with pytest.raises(OnexError, match=r"steps \['b', 'c'\] depend on each other in a cycle"):
        plan_stages([step("a"), step("b", "a", "c"), step("c", "b")])
    with pytest.raises(OnexError, match="cycle"):
        plan_stages([step("self", "self")])


@pytest.mark.anyio
async def test_the_engine_runs_each_stage_of_the_contract_steps_in_parallel_and_the_stages_in_order() -> None:
    async with assembler() as h:
        node = hosted_assembler(h)
        cid = await build(h)
        workflow = node.workflows[cid]
        running = []
        for finished_step in ("a", "b", "c"):
            running.append({name for name, run in workflow.steps.items() if run.status is StepStatus.RUNNING})
            await step_done(h, cid, finished_step)

    # The contract's plan, [[a, b], [c], [polish]], as the engine runs it: a and b at once, c once both finished.
    assert [[s.step_name for s in stage] for stage in plan_stages(node.steps)] == [["a", "b"], ["c"], ["polish"]]
    assert running == [{"a", "b"}, {"b"}, {"c"}]
    assert node.started == [("a", 1), ("b", 1), ("c", 1), ("polish", 1)]


# --- running -----------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_and_b_start_together_and_c_starts_only_after_both_completed() -> None:
    async with assembler() as h:
        node = hosted_assembler(h)
        cid = await build(h)
        request = h.of("BUILD_REQUESTED")[0]
        after_request = list(node.started)

        await step_done(h, cid, "a")
        after_a = list(node.started)
        await step_done(h, cid, "b")
        after_b = list(node.started)
        await step_done(h, cid, "c")

    # Both stage-1 steps were started while the one request was handled, and c was not.
    assert after_request == [("a", 1), ("b", 1)]
    dispatched = [(e.payload["step"], e.causation_id) for e in h.of("STEP_REQUESTED")]
    assert dispatched[:2] == [("a", request.event_id), ("b", request.event_id)]
    assert after_a == after_request
    assert after_b == [("a", 1), ("b", 1), ("c", 1)]
    assert node.started == [("a", 1), ("b", 1), ("c", 1), ("polish", 1)]
    [outcome] = finished(h, cid)
    assert outcome.event_type == "BUILD_COMPLETED"
    assert outcome.payload["error"] is None
    assert statuses(outcome) == {"a": "completed", "b": "completed", "c": "completed", "polish": "completed"}
    assert [(t["from_state"], t["to_state"]) for t in h.transitions(cid)] == [
        ("pending", "running"),
        ("running", "completed"),
    ]


@pytest.mark.anyio
async def test_a_step_with_two_attempts_is_retried_once_then_fails_the_workflow_with_its_error() -> None:
    async with assembler() as h:
        node = hosted_assembler(h)
        cid = await build(h)
        await step_done(h, cid, "b")

        await step_done(h, cid, "a", ok=False, error="jammed")
        retried = list(node.started)
        assert finished(h, cid) == []  # one attempt left: not finished yet

        await step_done(h, cid, "a", ok=False, error="jammed again")

    assert retried == [("a", 1), ("b", 1), ("a", 2)]
    assert [(e.payload["step"], e.payload["attempt"]) for e in h.of("STEP_REQUESTED")] == [
        ("a", 1),
        ("b", 1),
        ("a", 2),
    ]
    [outcome] = finished(h, cid)
    assert outcome.event_type == "BUILD_FAILED"
    assert outcome.payload["error"] == "a: jammed again"
    assert outcome.payload["steps"]["a"] == {"status": "failed", "attempts": 2, "error": "jammed again"}
    assert outcome.payload["steps"]["c"]["status"] == "skipped"
    assert ("c", 1) not in node.started
    assert [t["to_state"] for t in h.transitions(cid)] == ["running", "failed"]


@pytest.mark.anyio
async def test_a_step_with_one_attempt_fails_the_workflow_at_its_first_failure() -> None:
    async with assembler() as h:
        node = hosted_assembler(h)
        cid = await build(h)
        await step_done(h, cid, "b", ok=False, error="out of stock")

    [outcome] = finished(h, cid)
    assert outcome.event_type == "BUILD_FAILED"
    assert outcome.payload["steps"]["b"] == {"status": "failed", "attempts": 1, "error": "out of stock"}
    assert [s for s, _ in node.started].count("b") == 1


@pytest.mark.anyio
async def test_an_optional_step_that_fails_is_skipped_and_the_workflow_completes() -> None:
    async with assembler() as h:
        cid = await build(h, polish="fail")
        for name in ("a", "b", "c"):
            await step_done(h, cid, name)

    [outcome] = finished(h, cid)
    assert outcome.event_type == "BUILD_COMPLETED"
    assert outcome.payload["error"] is None
    assert outcome.payload["steps"]["polish"] == {
        "status": "skipped",
        "attempts": 1,
        "error": "the polisher is out of wax",
    }
    assert [t["to_state"] for t in h.transitions(cid)] == ["running", "completed"]


@pytest.mark.anyio
async def test_a_step_that_never_completes_is_failed_by_the_timeout_sweeper_after_its_timeout() -> None:
    clock = ManualClock()
    async with assembler({"WORKSHOP_STEP_B_TIMEOUT_MS": "100"}, clock=clock) as h:
        node = hosted_assembler(h)
        cid = await build(h)
        await step_done(h, cid, "a")  # b starts now, due 100 ms later on the harness's clock

        await clock.advance(0.08)  # the sweeper looks every 50 ms: at 50 ms b is within its timeout
        await h.settle()
        assert finished(h, cid) == []
        await clock.advance(0.1)  # a sweep at 100 ms or after finds b past its deadline: only it ends this workflow
        await h.settle()
        await step_done(h, cid, "b")  # too late

    outcome = finished(h, cid)[0]
    assert outcome.payload["error"] == "b: step b timed out after 100 ms"
    assert outcome.payload["steps"]["b"] == {
        "status": "failed",
        "attempts": 1,
        "error": "step b timed out after 100 ms",
    }
    assert [e.event_type for e in finished(h, cid)] == ["BUILD_FAILED"]
    assert ("c", 1) not in node.started
    assert [t["to_state"] for t in h.transitions(cid)] == ["running", "failed"]


@pytest.mark.anyio
async def test_a_step_records_its_milliseconds_on_the_nodes_clock_rounded_to_the_microsecond() -> None:
    clock = ManualClock(start=0.0)  # the wall time the engine reads: exact sums of what advance() is given
    async with assembler(clock=clock) as h:
        node = hosted_assembler(h)
        cid = await build(h)  # a and b start at 0
        steps = node.workflows[cid].steps
        await clock.advance(0.0123456)
        await step_done(h, cid, "a")
        await clock.advance(0.0021)
        await step_done(h, cid, "b")  # c starts, and is still running
        elapsed = {name: steps[name].elapsed_ms for name in ("a", "b", "c")}

    assert elapsed == {"a": 12.346, "b": 14.446, "c": None}


class _TickingClock(ManualClock):
    """Wall time that moves on by 12.3456 ms each time it is read, so a workflow's start and end are apart."""

    def __init__(self) -> None:
        super().__init__(start=1_765_000_000.0)
        self.reads = 0

    def time(self) -> float:
        self.reads += 1
        return super().time() + self.reads * 0.0123456


@pytest.mark.anyio
async def test_a_stamp_workflow_takes_its_milliseconds_from_its_start_and_end_rounded_to_the_microsecond() -> None:
    async with Harness(["orchestrator", "stamping_effect"], root=REPO, clock=_TickingClock()) as h:
        await h.publish("STAMP_REQUESTED", {"content": "x = 1\n", "file_path": "x.py", "namespace": "onex.test.ms"})
        await h.settle()

    [outcome] = h.of("WORKFLOW_COMPLETED")
    finished = outcome.payload
    took = finished.completed_at - finished.started_at
    assert took.total_seconds() > 0.012  # at least one read of the clock apart
    assert finished.execution_time_ms == round(took.total_seconds() * 1000, 3)


@pytest.mark.anyio
async def test_a_workflows_transitions_carry_its_nodes_clock_as_its_own_times_do() -> None:
    clock = ManualClock(start=1_765_000_000.0)  # 2025-12-06, and it stands still: every time read is this one
    async with Harness(["orchestrator", "stamping_effect"], root=REPO, clock=clock) as h:
        await h.publish("STAMP_REQUESTED", {"content": "x = 1\n", "file_path": "x.py", "namespace": "onex.test.at"})
        await h.settle()

    [outcome] = h.of("WORKFLOW_COMPLETED")
    transitions = [t for e in h.of("STATE_TRANSITION") for t in e.payload.transitions]
    assert [t.trigger for t in transitions] == ["start", "complete"]
    assert {t.at for t in transitions} == {outcome.payload.started_at} == {clock.now()}


@pytest.mark.anyio
async def test_finished_steps_leave_the_deadline_heap_and_a_step_still_running_times_out() -> None:
    clock = ManualClock()
    async with assembler({"WORKSHOP_STEP_B_TIMEOUT_MS": "100"}, clock=clock) as h:
        node = hosted_assembler(h)
        slow = await build(h)
        await step_done(h, slow, "a")  # its b keeps running
        quick = [await build(h, item=f"stool-{i}") for i in range(30)]
        for cid in quick:
            for name in ("a", "b", "c"):
                await step_done(h, cid, name)
        # One step runs (slow's b); of the 122 entries pushed, those of finished steps were dropped as they went:
        # left until their deadlines, all 122 would still be there.
        assert len(node._deadlines) <= 2
        await clock.advance(0.15)
        await h.settle()

    assert [e.event_type for e in finished(h, slow)] == ["BUILD_FAILED"]
    assert "b: step b timed out after 100 ms" in str(finished(h, slow)[0].payload["error"])
    assert {e.event_type for cid in quick for e in finished(h, cid)} == {"BUILD_COMPLETED"}


@pytest.mark.anyio
async def test_steps_within_their_timeout_are_left_alone_by_the_sweeper() -> None:
    clock = ManualClock()
    async with assembler({"WORKSHOP_STEP_B_TIMEOUT_MS": "100"}, clock=clock) as h:
        cid = await build(h)
        await step_done(h, cid, "a")
        await clock.advance(0.05)
        quick = await build(h, item="stool")
        await step_done(h, quick, "a")  # the quick build's b is due at 150 ms, the slow one's at 100 ms
        await clock.advance(0.05)
        await h.settle()
        for name in ("b", "c"):
            await step_done(h, quick, name)
        await clock.advance(0.1)  # past 150 ms: the quick build's b finished in time and is left alone
        await h.settle()

    assert [e.event_type for e in finished(h, quick)] == ["BUILD_COMPLETED"]
    assert [e.event_type for e in finished(h, cid)] == ["BUILD_FAILED"]


@pytest.mark.anyio
async def test_late_and_duplicate_results_are_ignored() -> None:
    async with assembler() as h:
        node = hosted_assembler(h)
        cid = await build(h)
        await step_done(h, cid, "a")
        await step_done(h, cid, "a")  # duplicate while the workflow runs
        await step_done(h, cid, "a", ok=False, error="too late to fail")
        assert node.started == [("a", 1), ("b", 1)]

        await step_done(h, cid, "b")
        await step_done(h, cid, "c")
        steps_when_done = {name: run.status for name, run in node.finished[cid].steps.items()}
        # Late results for a finished workflow: the engine must neither restart nor re-finish anything.
        await step_done(h, cid, "c")
        await step_done(h, cid, "b", ok=False, error="late failure")

    assert node.started == [("a", 1), ("b", 1), ("c", 1), ("polish", 1)]
    assert [e.event_type for e in finished(h, cid)] == ["BUILD_COMPLETED"]
    assert {name: run.status for name, run in node.finished[cid].steps.items()} == steps_when_done
    assert set(steps_when_done.values()) == {StepStatus.COMPLETED}
    assert node.workflows == {}
    assert h.dead_letters() == []


# --- blocked -----------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_no_step_starts_once_a_required_step_has_failed() -> None:
    async with assembler() as h:
        node = hosted_assembler(h)
        cid = await build(h)
        await step_done(h, cid, "b")
        await step_done(h, cid, "a", ok=False, error="jammed")
        await step_done(h, cid, "a", ok=False, error="jammed again")

    [outcome] = finished(h, cid)
    assert outcome.event_type == "BUILD_FAILED"
    assert [s for s, _ in node.started] == ["a", "b", "a"]
    assert statuses(outcome)["polish"] == "skipped"


@pytest.mark.anyio
async def test_an_on_workflow_done_that_raises_is_logged_naming_the_workflow(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workflow is off the running ones before ``on_workflow_done``: a redelivery finds it finished, so a user
    class's error there would leave it with no outcome and no word, were it not logged here."""

    async def broken(workflow: Any) -> None:
        raise RuntimeError("a bug in the node class")

    async with assembler() as h:
        node = hosted_assembler(h)
        monkeypatch.setattr(node, "on_workflow_done", broken)
        cid = await build(h)
        with caplog.at_level("ERROR", logger="onex.nodes"):
            await step_done(h, cid, "b")
            await step_done(h, cid, "a", ok=False, error="jammed")
            await step_done(h, cid, "a", ok=False, error="jammed again")

    [record] = [r for r in caplog.records if "on_workflow_done failed" in r.getMessage()]
    assert str(cid) in record.getMessage()
    assert record.exc_info is not None
    assert "a bug in the node class" in str(record.exc_info[1])
