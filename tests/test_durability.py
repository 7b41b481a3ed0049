"""Durable workflows on the memory bus: checkpoints in the store, resumed by the next run, derived event ids.

The multi-process cases (SIGKILL of each node on Kafka, replicas, PostgreSQL and broker restarts) are in
``tests/integration/test_faults.py``; these pin the mechanisms in one process, on a real SQLite file.
"""

from __future__ import annotations

import random
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onex.contracts import Step
from onex.envelope import (
    ORDERED_SINCE_MS,
    OnexEnvelopeV1,
    derived_after,
    derived_at,
    derived_from,
    derived_id,
    id_tail,
    millis_of,
    new_id,
)
from onex.exceptions import BusError, StoreError
from onex.filetypes import Stamp
from onex.nodes import OrchestratorNode, StepRun, StepStatus
from onex.store import WorkflowRow, WriteBatch
from onex.testing import Harness, ManualClock

from nodes.orchestrator.v1_0_0.node import NodeOrchestrator
from nodes.reducer.v1_0_0.node import NodeReducer
from nodes.stamping_effect.v1_0_0.node import row_id

ROOT = Path(__file__).resolve().parents[1]
NS = "durable"

pytestmark = pytest.mark.anyio


def request(i: int) -> dict[str, str]:
    return {"content": f"print({i})\n", "file_path": f"f{i}.py", "namespace": NS}


def of_workflow(cid: uuid.UUID | None) -> Callable[[OnexEnvelopeV1], bool]:
    """A ``wait_for`` predicate: an event of the workflow ``cid``."""
    return lambda e: e.correlation_id == cid


def refuse_commands_once(h: Harness, node: NodeOrchestrator, monkeypatch: pytest.MonkeyPatch) -> list[OnexEnvelopeV1]:
    """Make the bus refuse the first publish of stamp commands (the broker gone for longer than the producer waits);
    the commands it refused."""
    topic = node.router.topic(node.topic_of("STAMP_FILE"), node.router.default_service)
    real, refused = h.bus.publish_many, list[OnexEnvelopeV1]()

    async def refused_once(to: str, envelopes: Sequence[OnexEnvelopeV1]) -> None:
        if to == topic and not refused:
            refused.extend(envelopes)
            raise BusError("cannot publish to t: KafkaTimeoutError")
        await real(to, envelopes)

    monkeypatch.setattr(h.bus, "publish_many", refused_once)
    return refused


async def test_a_new_workflow_in_flight_is_checkpointed(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path}/onex.db"
    # No stamping effect: the command is never answered, so the workflow stays in flight.
    async with Harness(["orchestrator"], root=ROOT, store_url=store_url) as h:
        sent = await h.publish("STAMP_REQUESTED", request(1))
        await h.settle()
        assert sent.correlation_id is not None  # the harness gives everything it publishes a correlation id
        row = await h.store.get_workflow(sent.correlation_id)

    assert row is not None
    assert (row.current_state, row.workflow_type, row.namespace, row.file_path) == (
        "processing",
        "stamp_workflow",
        NS,
        "f1.py",
    )
    checkpoint = row.checkpoint
    assert checkpoint is not None
    assert row.metadata == {}  # the checkpoint has a column of its own (migration 7)
    assert checkpoint["state"] == "processing"
    assert checkpoint["seq"] == row.state_seq == 1
    stamp = checkpoint["steps"]["stamp"]
    assert (stamp["status"], stamp["attempts"]) == ("running", 1)
    assert stamp["deadline"] > stamp["started"]
    assert checkpoint["context"]["request"]["content"] == "print(1)\n"
    # Nothing None is kept (read back as None): a checkpoint without a null is stored without a search for NaN.
    assert b"null" not in orjson.dumps(checkpoint)


@pytest.mark.parametrize(
    "saved",
    [
        {"deadline": 12.5, "elapsed_ms": 3.25, "error": "boom"},
        {"deadline": None, "elapsed_ms": None, "error": None},  # as versions before 2026-12 wrote them
        {},
    ],
)
def test_a_step_checkpoint_leaves_out_what_is_none_and_reads_back_the_same(saved: dict[str, object]) -> None:
    step = Step(step_name="stamp")
    kept = {"status": "running", "attempts": 2, "started": 10.0, "data": {"k": 1}, **saved}
    run = StepRun(step, 0)
    run.restore(kept)
    assert (run.deadline, run.elapsed_ms, run.error) == (
        saved.get("deadline"),
        saved.get("elapsed_ms"),
        saved.get("error"),
    )
    again = StepRun(step, 0)
    again.restore(run.checkpoint())
    assert again == run
    assert None not in run.checkpoint().values()


async def test_the_next_run_on_the_same_store_resumes_what_a_stopped_run_left_in_processing(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path}/onex.db"
    async with Harness(["orchestrator", "database_adapter_effect"], root=ROOT, store_url=store_url) as first:
        sent = [await first.publish("STAMP_REQUESTED", request(i)) for i in range(5)]
        await first.settle()
        commands = first.of("STAMP_FILE")
    cids = {e.correlation_id for e in sent}
    assert {c.correlation_id for c in commands} == cids

    async with Harness(root=ROOT, store_url=store_url) as second:
        for cid in cids:
            await second.wait_for("WORKFLOW_COMPLETED", of_workflow(cid))
        await second.settle()
        rows = {cid: await second.store.get_workflow(cid) for cid in cids}  # type: ignore[arg-type]
        transitions = {cid: await second.store.list_transitions(str(cid)) for cid in cids}
        resent = second.of("STAMP_FILE")
        state = await second.store.get_bridge_state(NS)

    assert {cid: (r.current_state if r else None) for cid, r in rows.items()} == dict.fromkeys(cids, "completed")
    # A finished workflow's row keeps no checkpoint, so not its request's content either.
    assert {cid: (r.checkpoint, r.metadata) for cid, r in rows.items() if r} == dict.fromkeys(cids, (None, {}))
    for cid in cids:
        # The audit log holds the first run's start and the second run's completion, each once.
        assert [(t.from_state, t.to_state) for t in transitions[cid]] == [
            ("pending", "processing"),
            ("processing", "completed"),
        ]
    # The interrupted attempt is retried as attempt 2: a new command id, derived from the workflow and the attempt.
    assert {e.payload["attempt"] for e in resent} == {2}
    assert not {e.event_id for e in resent} & {e.event_id for e in commands}
    assert state is not None
    assert (state.total_workflows_processed, state.total_items_aggregated) == (5, 5)


async def test_a_checkpoint_written_before_migration_7_in_metadata_is_resumed(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path}/onex.db"
    async with Harness(["orchestrator"], root=ROOT, store_url=store_url) as first:
        sent = await first.publish("STAMP_REQUESTED", request(1))
        await first.settle()
    cid = sent.correlation_id
    with sqlite3.connect(tmp_path / "onex.db") as db:  # where an older onex kept it: metadata's "checkpoint" key
        db.execute(
            "UPDATE workflow_executions SET metadata = '{\"checkpoint\":' || checkpoint || '}', checkpoint = NULL"
        )

    async with Harness(root=ROOT, store_url=store_url) as second:
        done = await second.wait_for("WORKFLOW_COMPLETED", of_workflow(cid))
        await second.settle()
        assert cid is not None
        row = await second.store.get_workflow(cid)

    assert done.payload["state"] == "completed"
    assert row is not None
    assert (row.current_state, row.checkpoint) == ("completed", None)


async def test_outcomes_the_store_does_not_show_finished_are_published_again(tmp_path: Path) -> None:
    """The orchestrator's look, ``confirm_after_s`` after publishing outcomes, at whether they got stored (a broker
    that lost them; on Kafka only, so driven by hand here): an outcome whose row is finished is done with; one whose
    row is still running, or absent, is published again (the same envelope) and looked at again later."""
    # On a clock that moves only when told: the orchestrator's own sweep, which looks at the same outcomes every 50 ms
    # on its clock, never runs between the call below and the checks (it did once, and took them in hand meanwhile).
    clock = ManualClock()
    async with Harness(["orchestrator"], root=ROOT, store_url=f"sqlite:///{tmp_path}/onex.db", clock=clock) as h:
        node = h.runtime.node("orchestrator")
        assert isinstance(node, OrchestratorNode)
        stored, running, absent = (uuid.uuid4() for _ in range(3))
        rows = [
            WorkflowRow(stored, "stamp_workflow", "completed", 2),
            WorkflowRow(running, "stamp_workflow", "processing", 1),
        ]
        await h.store.apply(WriteBatch(workflows=rows))
        outcomes = {
            cid: OnexEnvelopeV1(event_type="WORKFLOW_COMPLETED", source_node_id="t", correlation_id=cid, payload={})
            for cid in (stored, running, absent)
        }
        node._unconfirmed.extend((0.0, cid, "WORKFLOW_COMPLETED", outcome) for cid, outcome in outcomes.items())

        await node._confirm_stored(now=100.0)
        await h.settle()

        assert sorted(e.event_id for e in h.of("WORKFLOW_COMPLETED")) == sorted(
            outcomes[cid].event_id for cid in (running, absent)
        )
        assert [(due, cid) for due, cid, _, _ in node._unconfirmed] == [
            (100.0 + node.confirm_after_s, running),
            (100.0 + node.confirm_after_s, absent),
        ]


async def test_outcomes_whose_publishing_again_the_bus_refused_are_looked_at_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the bus refuses to publish an unstored outcome again (the broker still away), that outcome and those
    after it stay watched, and the next look publishes them, rather than their rows staying running for good."""
    clock = ManualClock()
    async with Harness(["orchestrator"], root=ROOT, store_url=f"sqlite:///{tmp_path}/onex.db", clock=clock) as h:
        node = h.runtime.node("orchestrator")
        assert isinstance(node, OrchestratorNode)
        cids = [uuid.uuid4(), uuid.uuid4()]  # no row shows either finished
        outcomes = [
            OnexEnvelopeV1(event_type="WORKFLOW_COMPLETED", source_node_id="t", correlation_id=cid, payload={})
            for cid in cids
        ]
        node._unconfirmed.extend((0.0, cid, "WORKFLOW_COMPLETED", o) for cid, o in zip(cids, outcomes, strict=True))
        real, refused = node.publish_envelopes, list[OnexEnvelopeV1]()

        async def refused_once(event_name: str, envelopes: Sequence[OnexEnvelopeV1]) -> None:
            if not refused:
                refused.extend(envelopes)
                raise BusError("cannot publish to t: KafkaTimeoutError")
            await real(event_name, envelopes)

        monkeypatch.setattr(node, "publish_envelopes", refused_once)
        with pytest.raises(BusError):
            await node._confirm_stored(now=100.0)
        assert refused == outcomes[:1]
        assert [(due, cid) for due, cid, _, _ in node._unconfirmed] == [(100.0 + node.confirm_after_s, c) for c in cids]

        await node._confirm_stored(now=100.0 + node.confirm_after_s)
        await h.settle()
        assert sorted(e.event_id for e in h.of("WORKFLOW_COMPLETED")) == sorted(o.event_id for o in outcomes)


async def test_step_deadlines_a_sweep_could_not_act_on_are_due_at_a_later_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before timing out the steps of workflows it took over, the sweeper asks the store whether another process
    finished them. When the store refuses, those deadlines stay due and a later sweep times the step out, rather than
    the step running for good (no result comes: that is why it timed out)."""
    clock = ManualClock()
    async with Harness(["orchestrator"], root=ROOT, store_url=f"sqlite:///{tmp_path}/onex.db", clock=clock) as h:
        node = h.runtime.node("orchestrator")
        assert isinstance(node, OrchestratorNode)
        await h.publish("STAMP_REQUESTED", request(1))  # no stamping effect: the command is never answered
        await h.settle()
        [workflow] = node.workflows.values()
        workflow.adopted = True  # as if loaded from a checkpoint, after a restart or a rebalance
        real, calls = node.store.workflow_states, 0

        async def refused_once(cids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise StoreError("database disk image is malformed")
            return await real(cids)

        monkeypatch.setattr(node.store, "workflow_states", refused_once)
        run = workflow.steps["stamp"]
        await clock.advance(run.step.timeout_ms / 1000 + 0.01)  # the deadline passes; the sweep's lookup is refused
        assert (calls, run.attempts) == (1, 1)
        await clock.advance(1.0)
        await h.settle()
        assert (calls, workflow.steps["stamp"].attempts) == (2, 2)  # timed out, and retried


async def test_a_sweep_does_not_time_out_the_attempt_a_result_began_while_it_waited_for_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step's deadline passes and the sweeper asks the store about the workflow; meanwhile a retryable failure
    arrives and the step's next attempt begins. The sweep times out the attempt that was due, not the new one."""
    clock = ManualClock()
    async with Harness(["orchestrator"], root=ROOT, store_url=f"sqlite:///{tmp_path}/onex.db", clock=clock) as h:
        node = h.runtime.node("orchestrator")
        assert isinstance(node, OrchestratorNode)
        await h.publish("STAMP_REQUESTED", request(1))
        await h.settle()
        [workflow] = node.workflows.values()
        workflow.adopted = True
        real = node.store.workflow_states

        async def a_result_meanwhile(cids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
            await node.fail_step(workflow, "stamp", "busy")  # what handling a STAMP_FAILED does: attempt 2 begins
            return await real(cids)

        monkeypatch.setattr(node.store, "workflow_states", a_result_meanwhile)
        await clock.advance(workflow.steps["stamp"].step.timeout_ms / 1000 + 0.01)
        run = workflow.steps["stamp"]
        assert (run.status, run.attempts) == (StepStatus.RUNNING, 2)
        assert workflow.state not in ("failed", "completed")


async def test_the_outcome_of_a_refused_flush_goes_out_with_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The orchestrator's flush publishes the batch's outcomes; when the bus refuses them, they stay queued, ahead of
    newer ones, and go out with the next flush (here the batch handled again), rather than the client never hearing
    (a dry run is not stored, so nothing else would publish it again)."""
    async with Harness(["orchestrator", "stamping_effect"], root=ROOT, store_url=f"sqlite:///{tmp_path}/onex.db") as h:
        node = h.runtime.node("orchestrator")
        assert isinstance(node, OrchestratorNode)
        real, refused = node.publish_envelopes, list[OnexEnvelopeV1]()

        async def refused_once(event_name: str, envelopes: Sequence[OnexEnvelopeV1]) -> None:
            if event_name.startswith("WORKFLOW_") and not refused:
                refused.extend(envelopes)
                raise BusError("cannot publish to t: KafkaTimeoutError")
            await real(event_name, envelopes)

        monkeypatch.setattr(node, "publish_envelopes", refused_once)
        sent = await h.publish("STAMP_REQUESTED", {**request(1), "dry_run": True})
        done = await h.wait_for("WORKFLOW_COMPLETED", of_workflow(sent.correlation_id))
        assert [e.event_id for e in refused] == [done.event_id]


async def test_the_retry_a_refused_flush_held_goes_out_and_the_failure_handled_again_does_not_end_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retryable failure begins the step's next attempt, whose command the bus refuses: the command stays queued and
    the failure's batch is handled again. The failure answers the first attempt (its causation), so handling it again
    does not fail the second, and the second attempt's command goes out with that batch's flush."""
    clock = ManualClock()  # no step times out meanwhile
    async with Harness(["orchestrator"], root=ROOT, store_url=f"sqlite:///{tmp_path}/onex.db", clock=clock) as h:
        node = h.runtime.node("orchestrator")
        assert isinstance(node, NodeOrchestrator)
        sent = await h.publish("STAMP_REQUESTED", request(1))
        await h.settle()
        cid = sent.correlation_id
        assert cid is not None
        [first] = [e for e in h.of("STAMP_FILE") if e.correlation_id == cid]
        refused = refuse_commands_once(h, node, monkeypatch)
        failure = {"workflow_id": str(cid), "namespace": NS, "file_path": "f1.py", "error": "busy", "retryable": True}
        answer = OnexEnvelopeV1(  # as the stamping effect answers: caused by the command
            event_type="STAMP_FAILED",
            source_node_id="t",
            correlation_id=cid,
            causation_id=first.event_id,
            payload=failure,
        )
        await h.bus.publish(h.topic("STAMP_FAILED"), answer)
        await h.settle()

        assert [e.payload.attempt for e in refused] == [2]
        commands = [e for e in h.of("STAMP_FILE") if e.correlation_id == cid]
        assert [e.payload.attempt for e in commands] == [1, 2]
        assert commands[1].event_id == refused[0].event_id
        assert not [e for e in h.of("WORKFLOW_FAILED") if e.correlation_id == cid]
        run = node.workflows[cid].steps["stamp"]
        assert (run.status, run.attempts) == (StepStatus.RUNNING, 2)


async def test_the_retry_a_refused_sweep_kept_goes_out_with_the_next_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step times out and the sweeper begins its next attempt, whose command the bus refuses. The command stays
    queued and the next sweep flushes it, rather than it waiting for a batch that an idle orchestrator never handles
    (the attempt would then time out unsent)."""
    clock = ManualClock()
    async with Harness(["orchestrator"], root=ROOT, store_url=f"sqlite:///{tmp_path}/onex.db", clock=clock) as h:
        node = h.runtime.node("orchestrator")
        assert isinstance(node, NodeOrchestrator)
        sent = await h.publish("STAMP_REQUESTED", request(1))  # no stamping effect: the command is never answered
        await h.settle()
        cid = sent.correlation_id
        assert cid is not None
        refused = refuse_commands_once(h, node, monkeypatch)
        timeout_s = node.workflows[cid].steps["stamp"].step.timeout_ms / 1000
        await clock.advance(timeout_s + 3 * node.sweep_interval_s)  # the step times out; sweeps after it
        await h.settle()

        assert [e.payload.attempt for e in refused] == [2]
        assert [e.payload.attempt for e in h.of("STAMP_FILE") if e.correlation_id == cid] == [1, 2]


async def test_a_workflow_left_without_a_checkpoint_is_failed_with_the_reason(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path}/onex.db"
    orphan = uuid.uuid4()
    async with Harness(["database_adapter_effect"], root=ROOT, store_url=store_url) as first:
        # What an older onex left: a processing row written from WORKFLOW_STARTED (no longer published), no checkpoint.
        row = WorkflowRow(orphan, "stamp_workflow", "processing", 1, namespace=NS, file_path="old.py")
        await first.store.apply(WriteBatch(workflows=[row]))

    async with Harness(["orchestrator"], root=ROOT, store_url=store_url) as second:
        await second.settle()
        stored = await second.store.get_workflow(orphan)

    assert stored is not None
    assert stored.current_state == "failed"
    assert stored.error_message is not None
    assert "no checkpoint" in stored.error_message


async def test_a_redelivered_request_is_not_run_twice() -> None:
    async with Harness(root=ROOT) as h:
        sent = await h.publish("STAMP_REQUESTED", request(7))
        await h.wait_for("WORKFLOW_COMPLETED", lambda e: e.correlation_id == sent.correlation_id)
        await h.bus.publish(h.topic("STAMP_REQUESTED"), sent)  # what at-least-once delivery may do
        await h.settle()

    assert len([e for e in h.of("WORKFLOW_COMPLETED") if e.correlation_id == sent.correlation_id]) == 1
    assert len([e for e in h.of("STAMP_FILE") if e.correlation_id == sent.correlation_id]) == 1


async def test_a_request_delivered_again_while_its_step_runs_sends_the_same_command_again() -> None:
    # Handling a batch again (a record it produced did not reach the broker) must produce its output again.
    async with Harness(["orchestrator"], root=ROOT) as h:
        sent = await h.publish("STAMP_REQUESTED", request(8))
        await h.settle()
        await h.bus.publish(h.topic("STAMP_REQUESTED"), sent)
        await h.settle()
        commands = [e for e in h.of("STAMP_FILE") if e.correlation_id == sent.correlation_id]

    assert len(commands) == 2
    assert commands[0].event_id == commands[1].event_id
    assert commands[0].payload == commands[1].payload


async def test_events_caused_by_an_event_have_ids_derived_from_it() -> None:
    async with Harness(root=ROOT) as h:
        sent = await h.publish("STAMP_REQUESTED", request(3))
        done = await h.wait_for("WORKFLOW_COMPLETED", lambda e: e.correlation_id == sent.correlation_id)
        await h.settle()
        command = h.of("STAMP_FILE")[0]
        created = h.of("STAMP_CREATED")[0]

    cid = sent.correlation_id
    assert command.event_id == derived_id(cid, "orchestrator", "STAMP_FILE", 1)
    assert created.event_id == derived_id(command.event_id, "stamping_effect", "STAMP_CREATED", 0)
    assert done.event_id == derived_id(cid, "orchestrator", "WORKFLOW_COMPLETED")
    # Transitions too: the n-th transition of a workflow always has the same id, so the audit log stores it once; it
    # begins with the time the workflow's id begins with.
    assert cid is not None
    ids = [t["transition_id"] for t in h.transitions(cid)]
    assert ids == [derived_at(millis_of(cid), f"orchestrator\x1f{cid}\x1f\x1f{n}".encode()) for n in range(2)]
    assert [i.int >> 80 for i in ids] == [millis_of(cid)] * 2


def test_an_id_derived_at_a_time_begins_with_it_unless_older_versions_derived_it() -> None:
    # Stable: a replay by a later version must derive what this one did (pinned).
    at = ORDERED_SINCE_MS + 1234
    assert derived_at(at, b"onex") == derived_at(at, b"onex") == uuid.UUID("01a24c83-45d2-8f8c-90d8-fe7a67ab8a2d")
    assert derived_at(at, b"onex").int >> 80 == at
    assert derived_at(at, b"onex").version == 8
    assert derived_at(at, b"onex") != derived_at(at, b"onex!")
    # From a time before ids were ordered (a workflow or a stamp stored by an earlier version), or none: as before.
    assert derived_at(ORDERED_SINCE_MS - 1, b"onex") == derived_from(b"onex")
    assert derived_at(None, b"onex") == derived_from(b"onex")
    assert millis_of(uuid.UUID("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")) == 0x0193A1B2C3D4
    assert millis_of(uuid.UUID("56bbeb2e-89f8-4bde-a006-09a645eb73e0")) is None  # version 4: no time in it


async def test_a_workflows_stored_rows_are_keyed_in_the_order_workflows_and_stamps_are_made() -> None:
    # Its transitions' ids begin with its id's time, its stamp's with the stamp's: the indexes keyed by them grow at
    # their end as workflows run, where ids of hash bits alone each dirtied an index page of their own.
    async with Harness(root=ROOT) as h:
        cids: list[uuid.UUID] = []
        for i in range(3):
            cid = (await h.publish("STAMP_REQUESTED", request(40 + i))).correlation_id
            assert cid is not None
            cids.append(cid)
            await h.wait_for("WORKFLOW_COMPLETED", lambda e: e.correlation_id == cids[-1])
        await h.settle()
        transitions = [t for cid in cids for t in await h.store.list_transitions(str(cid))]
        workflows = [await h.store.get_workflow(cid) for cid in cids]
        stamps = await h.store.get_stamps([w.stamp_id for w in workflows if w is not None and w.stamp_id is not None])

    assert [t.id.int >> 80 for t in transitions] == [millis_of(cid) for cid in cids for _ in range(2)]
    assert sorted(cids) == cids  # new_id's: the workflows' times in the order they started
    assert len(stamps) == 3
    for stamp in stamps:
        made = datetime.fromisoformat(stamp.stamp_data["ts"])
        assert stamp.id.int >> 80 == (made - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def test_derived_ids_stay_what_earlier_versions_derived() -> None:
    # A workflow resumed by a newer onex must derive the ids an older one did, or a replay would store twice.
    cid = uuid.UUID("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
    command = uuid.UUID("8a1f030c-f33a-8194-a1f7-da57b3285db8")  # as onex derived it before derived_after
    assert derived_id(cid, "orchestrator", "STAMP_FILE", 1) == command
    assert derived_after(cid, id_tail("orchestrator", "STAMP_FILE", 1)) == command
    assert derived_id("orchestrator", str(cid), "", 0) == uuid.UUID("bda2a8f9-0a07-8b8b-a4a7-11ea5225cf04")
    assert derived_after(cid, id_tail()) == derived_id(cid)


@pytest.mark.parametrize(
    "uid",
    [
        "56bbeb2e-89f8-4bde-a006-09a645eb73e0",
        "56BBEB2E-89F8-4BDE-A006-09A645EB73E0",
        "{56bbeb2e-89f8-4bde-a006-09a645eb73e0}",  # not a stamp's form: read as uuid.UUID() reads it
    ],
)
def test_a_stamp_row_id_is_derived_from_the_stamps_uid_as_a_uuid(uid: str) -> None:
    # The stamping effect encodes the uid's 16 bytes itself; the id is the one it derived before (pinned), whatever case
    # the uid was written in (a stamp read from a file keeps its text).
    stamp = Stamp(uid=uid, hash="ab" * 32, ts="2026-12-03T00:00:00.000000+00:00", kind="lightweight")
    expected = derived_id(uuid.UUID(uid), "ns", "dir/a.py", stamp.hash)
    assert row_id(stamp, "ns", "dir/a.py") == expected == uuid.UUID("e2bf0561-3d01-877b-8ec0-44a70e8cd102")


def test_a_stamp_row_id_begins_with_the_stamps_time_from_when_onex_orders_them() -> None:
    # The stamp above was made before ORDERED_SINCE_MS: its row keeps the id it was stored under. One made since begins
    # with its time (pinned), and one whose time cannot be read (another tool's stamp) is derived as before.
    uid, hash_ = "56bbeb2e-89f8-4bde-a006-09a645eb73e0", "ab" * 32
    made = "2026-12-07T00:00:00.123456+00:00"
    stamp = Stamp(uid=uid, hash=hash_, ts=made, kind="lightweight")
    assert row_id(stamp, "ns", "dir/a.py") == uuid.UUID("01a24dcc-d87b-82bf-8561-3d01a77b8ec0")
    assert row_id(stamp, "ns", "dir/a.py").int >> 80 == 1_796_601_600_123  # 2026-12-07T00:00:00.123Z
    assert row_id(
        Stamp(uid=uid, hash=hash_, ts="2026-12-07T00:00:00.123456", kind="lightweight"), "ns", "dir/a.py"
    ) == (
        row_id(stamp, "ns", "dir/a.py")  # a time without a zone is UTC's, as onex writes them
    )
    foreign = Stamp(uid=uid, hash=hash_, ts="yesterday", kind="lightweight")
    assert row_id(foreign, "ns", "dir/a.py") == derived_id(uuid.UUID(uid), "ns", "dir/a.py", hash_)


@settings(max_examples=5, deadline=None)
@given(st.integers())
def test_random_seed_cannot_make_ids_repeat(seed: int) -> None:
    # Hypothesis reseeds the global generator for every example; so may any library. Ids must not follow it.
    random.seed(seed)
    first = new_id()
    random.seed(seed)
    assert new_id() != first
    seen.add(first)


seen: set[uuid.UUID] = set()


def test_ids_drawn_across_hypothesis_examples_are_distinct() -> None:
    seen.clear()
    test_random_seed_cannot_make_ids_repeat()
    assert len(seen) == 5


def finished(i: int, *, dry_run: bool = False) -> dict[str, object]:
    """A WORKFLOW_COMPLETED payload as the orchestrator publishes it, with its stamp."""
    stamp_id = str(uuid.uuid4())
    return {
        "workflow_id": str(uuid.uuid4()),
        "stamp_id": stamp_id,
        "file_hash": f"{i:064x}",
        "state": "completed",
        "state_seq": 2,
        "namespace": NS,
        "file_path": f"f{i}.py",
        "started_at": "2024-05-01T12:00:00+00:00",
        "completed_at": "2024-05-01T12:00:01+00:00",
        "execution_time_ms": 1000.0,
        "dry_run": dry_run,
        "stamp": {
            "stamp_id": stamp_id,
            "file_path": f"f{i}.py",
            "file_hash": f"{i:064x}",
            "file_size": 100 + i,
            "file_type": "code",
            "stamp_type": "lightweight",
            "status": "stamped",
        },
    }


async def test_outcomes_stored_but_never_aggregated_are_aggregated_by_the_next_run(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path}/onex.db"
    outcomes = [finished(i) for i in range(4)] + [finished(9, dry_run=True)]  # a dry run is not stored
    # A run killed after the database adapter stored these outcomes, before the reducer aggregated them.
    async with Harness(["database_adapter_effect"], root=ROOT, store_url=store_url) as first:
        for payload in outcomes:
            await first.publish("WORKFLOW_COMPLETED", payload)
        await first.settle()
        assert await first.store.get_bridge_state(NS) is None

    async with Harness(["reducer"], root=ROOT, store_url=store_url) as second:
        state = await second.store.get_bridge_state(NS)
        # An outcome delivered again (at least once) is recognised: it was recorded with the checkpoint.
        await second.publish("WORKFLOW_COMPLETED", outcomes[0], partition_key=NS)
        await second.settle()
        again = await second.store.get_bridge_state(NS)

    assert state is not None
    assert (state.total_workflows_processed, state.total_items_aggregated) == (4, 4)
    assert state.total_size_bytes == sum(100 + i for i in range(4))
    assert again == state


async def test_the_reducers_timer_goes_on_after_a_flush_the_bus_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The timer that closes windows by time flushes what they produced; a flush that fails (the broker gone for
    longer than the producer waits, on Kafka) is logged, and the next tick flushes again."""
    clock = ManualClock()
    async with Harness(["reducer"], root=ROOT, store_url=f"sqlite:///{tmp_path}/onex.db", clock=clock) as h:
        node = h.runtime.node("reducer")
        assert isinstance(node, NodeReducer)
        real, calls = node.flush, 0

        async def refused_once() -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise BusError("cannot publish to t: KafkaTimeoutError")
            await real()

        monkeypatch.setattr(node, "flush", refused_once)
        for _ in range(3):
            await clock.advance(node.flush_interval_s)
        assert calls == 3


async def test_the_aggregates_of_a_refused_flush_go_out_at_the_next_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window closed by the clock queues its namespace's aggregate (STATE_AGGREGATION_COMPLETED); when the bus
    refuses the flush that publishes it, the aggregate stays queued and the next tick publishes it, rather than a
    consumer of those events missing that window."""
    clock = ManualClock()
    async with Harness(["reducer"], root=ROOT, store_url=f"sqlite:///{tmp_path}/onex.db", clock=clock) as h:
        node = h.runtime.node("reducer")
        assert isinstance(node, NodeReducer)
        real, refused = node.publish_envelopes, list[OnexEnvelopeV1]()

        async def refused_once(event_name: str, envelopes: Sequence[OnexEnvelopeV1]) -> None:
            if event_name == "STATE_AGGREGATION_COMPLETED" and envelopes and not refused:
                refused.extend(envelopes)
                raise BusError("cannot publish to t: KafkaTimeoutError")
            await real(event_name, envelopes)

        monkeypatch.setattr(node, "publish_envelopes", refused_once)
        await h.publish("WORKFLOW_COMPLETED", finished(1), partition_key=NS)
        await h.settle()
        await clock.advance(node.window_s)  # the window closes; its flush is refused
        assert len(refused) == 1
        assert h.of("STATE_AGGREGATION_COMPLETED") == []
        await clock.advance(node.flush_interval_s)
        await h.settle()
        [published] = h.of("STATE_AGGREGATION_COMPLETED")
        assert published.payload.total_workflows_processed == 1


async def test_the_transitions_of_a_refused_flush_go_out_with_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node's state machine records its transitions, and a flush publishes them as one STATE_TRANSITION event. When
    the bus refuses it, they stay recorded, ahead of newer ones, for the next flush: every transition is persisted and
    ``onex trace`` shows them in order (here the reducer's, a window closed by the clock)."""
    clock = ManualClock()
    async with Harness(["reducer"], root=ROOT, store_url=f"sqlite:///{tmp_path}/onex.db", clock=clock) as h:
        node = h.runtime.node("reducer")
        assert isinstance(node, NodeReducer)
        real, refused = node.publish, list[Any]()

        async def refused_once(event_name: str, payload: Any, **kwargs: Any) -> OnexEnvelopeV1:
            if event_name == "STATE_TRANSITION" and not refused:
                refused.extend(payload.transitions)
                raise BusError("cannot publish to t: KafkaTimeoutError")
            return await real(event_name, payload, **kwargs)

        await h.publish("WORKFLOW_COMPLETED", finished(1), partition_key=NS)
        await h.settle()
        before = len(h.of("STATE_TRANSITION"))
        monkeypatch.setattr(node, "publish", refused_once)
        await clock.advance(node.window_s)  # the window closes; the flush of its transitions is refused
        assert refused
        assert len(h.of("STATE_TRANSITION")) == before
        await clock.advance(node.flush_interval_s)
        await h.settle()
        published = [t for e in h.of("STATE_TRANSITION")[before:] for t in e.payload.transitions]
        assert [t.transition_id for t in published[: len(refused)]] == [t.transition_id for t in refused]


async def test_an_outcome_delivered_again_to_the_next_run_is_not_counted_again(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path}/onex.db"
    outcomes = [finished(i) for i in range(3)]
    async with Harness(["database_adapter_effect", "reducer"], root=ROOT, store_url=store_url) as first:
        for payload in outcomes:
            await first.publish("WORKFLOW_COMPLETED", payload, partition_key=NS)
        await first.settle()
        state = await first.store.get_bridge_state(NS)

    # A new reducer remembers nothing in memory: what it was given before is recognised by the store's record of
    # the workflows its aggregate counts (``Store.unprocessed``), and a fresh one beside them is counted.
    async with Harness(["reducer"], root=ROOT, store_url=store_url) as second:
        await second.publish("WORKFLOW_COMPLETED", outcomes[1], partition_key=NS)
        await second.publish("WORKFLOW_COMPLETED", finished(7), partition_key=NS)
        await second.settle()
        again = await second.store.get_bridge_state(NS)

    assert state is not None
    assert (state.total_workflows_processed, state.total_size_bytes) == (3, 100 + 101 + 102)
    assert again is not None
    assert (again.total_workflows_processed, again.total_size_bytes) == (4, 100 + 101 + 102 + 107)


async def test_a_store_written_before_the_reducer_recorded_its_workflows_is_not_counted_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onex import _sqlite
    from onex._sqlite import SqliteStore
    from onex.store import BridgeStateRow

    shipped = _sqlite._migrations()
    db_url = f"sqlite:///{tmp_path}/onex.db"
    with monkeypatch.context() as patch:
        patch.setattr(_sqlite, "_migrations", lambda: shipped[:1])  # the schema of the previous version
        async with SqliteStore(db_url) as old:
            await old.upgrade()
            totals = BridgeStateRow(NS, 7, 3, 0, 0, 0, "idle")  # what its reducer had counted
            await old.apply(WriteBatch(bridge_states=[totals]))
    with sqlite3.connect(tmp_path / "onex.db") as db:  # its finished workflows, in that schema's columns
        db.executemany(
            "INSERT INTO workflow_executions (correlation_id, workflow_type, current_state, state_seq, namespace,"
            " created_at, updated_at) VALUES (?, 'stamp_workflow', 'completed', 2, ?, ?, ?)",
            [
                (str(uuid.uuid4()), NS, "2026-12-01T00:00:00.000000+00:00", "2026-12-01T00:00:00.000000+00:00")
                for _ in "abc"
            ],
        )

    async with Harness(["reducer"], root=ROOT, store_url=db_url) as h:  # upgrades, then reconciles at start
        await h.settle()
        state = await h.store.get_bridge_state(NS)

    assert state is not None
    assert (state.version, state.total_workflows_processed) == (7, 3)
