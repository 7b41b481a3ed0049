"""The contract every ``Store`` keeps, run against each implementation (``tests/fixtures/stores.py``).

Nothing here knows which database it talks to: it writes through ``apply`` and looks through the query methods
and ``count``. The conflict rules are those of the table in ``onex.store``'s docstring; where that table leaves
room, the choices both stores made are pinned here too (metadata merge, heartbeats of unregistered nodes, the
order of ties, naive datetimes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from onex.exceptions import StoreError
from onex.store import (
    TABLES,
    BridgeStateRow,
    DeadLetterRow,
    EventLogRow,
    HeartbeatRow,
    RegistrationRow,
    StampRow,
    StepRow,
    Store,
    TransitionRow,
    WorkflowRow,
    WriteBatch,
)

from tests.fixtures.stores import MakeStore

pytestmark = pytest.mark.anyio

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
NASTY = [
    "'); DROP TABLE metadata_stamps; --",
    "\"; DELETE FROM workflow_executions WHERE '1'='1",
    "O'Brien's \"quoted\" `backticked` \\backslashed\\ %s ? $1 :name",
    "ünïcödé 名前 ✓ 🚀 \u200b zero-width, \t tab, \n newline",
]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def workflow(cid: uuid.UUID, state: str, seq: int, **fields: Any) -> WorkflowRow:
    return WorkflowRow(correlation_id=cid, workflow_type="stamp", current_state=state, state_seq=seq, **fields)


def stamp(namespace: str = "ns", path: str = "a.py", file_hash: str = "h1", **fields: Any) -> StampRow:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "file_hash": file_hash,
        "file_path": path,
        "file_size": 10,
        "namespace": namespace,
        "stamp_type": "lightweight",
        "file_type": "python",
        # Given, so a row reads back as it was written: the store numbers only a row without one (and sets a
        # missing updated_at to the time of the write); tests/test_migration_0005.py pins both.
        "version": 1,
        "updated_at": fields.get("created_at"),
    }
    values.update(fields)
    return StampRow(**values)


def transition(entity_id: str, from_state: str | None, to_state: str, **fields: Any) -> TransitionRow:
    return TransitionRow(
        id=fields.pop("id", uuid.uuid4()),
        entity_id=entity_id,
        entity_type="workflow",
        from_state=from_state,
        to_state=to_state,
        transition_event=f"to_{to_state}",
        **fields,
    )


def bridge_state(namespace: str, version: int, total: int = 1) -> BridgeStateRow:
    return BridgeStateRow(
        namespace=namespace,
        version=version,
        total_workflows_processed=total,
        total_items_aggregated=total,
        total_size_bytes=total * 100,
        unique_file_hashes=total,
        current_fsm_state="aggregating",
    )


def registration(node_id: str, **fields: Any) -> RegistrationRow:
    values: dict[str, Any] = {"node_id": node_id, "node_type": "EFFECT", "node_version": "1.0.0"}
    values.update(fields)
    return RegistrationRow(**values)


def event_log(**fields: Any) -> EventLogRow:
    values: dict[str, Any] = {"event_id": uuid.uuid4(), "event_type": "STAMP_CREATED", "topic": "t", "status": "ok"}
    values.update(fields)
    return EventLogRow(**values)


async def counts(store: Store) -> dict[str, int]:
    return {table: await store.count(table) for table in TABLES}


def only(**nonzero: int) -> dict[str, int]:
    """Expected ``counts``: these tables hold that many rows, every other one none."""
    return {**dict.fromkeys(TABLES, 0), **nonzero}


def assert_utc(value: datetime | None) -> None:
    assert value is not None
    assert value.utcoffset() == timedelta(0)


# --- round trips: every field of every row type ------------------------------------------------------------------


async def test_workflow_round_trip(store: Store) -> None:
    row = WorkflowRow(
        correlation_id=uuid.uuid4(),
        workflow_type="stamp_workflow",
        current_state="completed",
        state_seq=3,
        namespace="omninode.docs",
        file_path="docs/readme.md",
        file_hash="af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
        stamp_id=uuid.uuid4(),
        started_at=at(0),
        completed_at=at(1.5),
        execution_time_ms=1500.25,
        error_message="none, really",
        metadata={"file_type": "markdown", "sizes": [1, 2, 3], "nested": {"ok": True, "none": None}, "f": 0.5},
    )
    await store.apply(WriteBatch(workflows=[row]))

    got = await store.get_workflow(row.correlation_id)
    assert got == row
    assert got is not None
    assert_utc(got.started_at)
    assert_utc(got.completed_at)
    assert await store.get_workflow(uuid.uuid4()) is None


async def test_step_round_trip(store: Store) -> None:
    cid = uuid.uuid4()
    row = StepRow(
        workflow_id=cid,
        step_name="hash_file",
        step_order=2,
        status="failed",
        execution_time_ms=12.5,
        step_data={"attempt": 3, "bytes": 4096},
        error_message="timeout after 5000 ms",
        created_at=at(2),
    )
    await store.apply(WriteBatch(workflows=[workflow(cid, "processing", 1)], steps=[row]))
    assert await store.list_steps(cid) == [row]
    assert await store.list_steps(uuid.uuid4()) == []


async def test_stamp_round_trip(store: Store) -> None:
    row = StampRow(
        id=uuid.uuid4(),
        file_hash="b3" * 32,
        file_path="src/pkg/module.py",
        file_size=5 * 2**40,  # 5 TiB: needs 64 bits
        namespace="omninode.src",
        stamp_type="rich",
        file_type="python",
        workflow_id=uuid.uuid4(),
        stamp_data={"metadata_version": "0.1", "author": "onex", "tags": ["a", "b"]},
        created_at=at(3),
        op_id=uuid.uuid4(),
        version=7,
        intelligence_data={"context": "automated_processing", "score": 0.5},
        metadata_version="0.2",
        protocol_version="1.1",
        file_metadata={"file_type": "python", "size": 5 * 2**40, "mode": "0644"},
        updated_at=at(4),
    )
    await store.apply(WriteBatch(stamps=[row]))
    assert await store.get_stamps_by_hash(row.file_hash) == [row]
    assert await store.list_stamps("omninode.src") == [row]


async def test_transition_round_trip(store: Store) -> None:
    row = TransitionRow(
        id=uuid.uuid4(),
        entity_id="entity-1",
        entity_type="workflow",
        from_state=None,
        to_state="pending",
        transition_event="create",
        correlation_id=uuid.uuid4(),
        transition_data={"reason": "new request", "n": 1},
        created_at=at(4),
    )
    await store.apply(WriteBatch(transitions=[row]))
    assert await store.list_transitions("entity-1") == [row]
    assert await store.list_transitions("nobody") == []


async def test_bridge_state_round_trip(store: Store) -> None:
    row = BridgeStateRow(
        namespace="omninode.docs",
        version=7,
        total_workflows_processed=120,
        total_items_aggregated=118,
        total_size_bytes=3 * 2**40,
        unique_file_hashes=99,
        current_fsm_state="idle",
        aggregation_metadata={"by_file_type": {"python": 80, "markdown": 38}, "size_buckets": [1, 2]},
        last_aggregation_timestamp=at(5),
    )
    await store.apply(WriteBatch(bridge_states=[row]))
    assert await store.get_bridge_state("omninode.docs") == row
    assert await store.list_bridge_states() == [row]
    assert await store.get_bridge_state("missing") is None


async def test_registration_round_trip(store: Store) -> None:
    row = RegistrationRow(
        node_id="stamping_effect-1",
        node_type="EFFECT",
        node_version="1.2.3",
        health_status="HEALTHY",
        capabilities={"hash": ["blake3"], "max_file_mb": 512},
        endpoints={"health": "http://127.0.0.1:8080/health"},
        metadata={"host": "worker-3"},
        last_heartbeat=at(6),
        registered_at=at(5),
    )
    await store.apply(WriteBatch(registrations=[row]))
    assert await store.list_registrations() == [row]


async def test_event_log_is_stored_once(store: Store) -> None:
    row = event_log(correlation_id=uuid.uuid4(), timestamp=at(7), processing_time_ms=1.25, payload={"x": [1]})
    await store.apply(WriteBatch(event_logs=[row, event_log()]))
    await store.apply(WriteBatch(event_logs=[row]))  # redelivered
    assert await store.count("event_logs") == 2


async def test_missing_creation_times_are_the_time_of_the_write(store: Store) -> None:
    cid = uuid.uuid4()
    before = datetime.now(UTC)
    await store.apply(
        WriteBatch(
            steps=[StepRow(cid, "s", 1, "running")],
            stamps=[stamp()],
            transitions=[transition("e", None, "pending")],
            registrations=[registration("n")],
        )
    )
    # Generous bounds: a database server's clock may differ a little from ours.
    (step,) = await store.list_steps(cid)
    (stored_stamp,) = await store.list_stamps("ns")
    (stored_transition,) = await store.list_transitions("e")
    (node,) = await store.list_registrations()
    for value in (step.created_at, stored_stamp.created_at, stored_transition.created_at, node.registered_at):
        assert_utc(value)
        assert value is not None
        assert abs(value - before) < timedelta(minutes=5)


@pytest.fixture
def local_zone_not_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run in a local time zone 5:30 east of UTC, so that "naive means local time" would show."""
    monkeypatch.setenv("TZ", "ONEX-05:30")  # a POSIX TZ string: needs no tz database
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("local_zone_not_utc")
async def test_naive_datetimes_are_utc_and_other_zones_come_back_as_utc(store: Store) -> None:
    naive, paris = uuid.uuid4(), uuid.uuid4()
    plus_two = timezone(timedelta(hours=2))
    await store.apply(
        WriteBatch(
            workflows=[
                workflow(naive, "processing", 1, started_at=datetime(2024, 5, 1, 12, 0, 0, 5)),
                workflow(paris, "processing", 1, started_at=datetime(2024, 5, 1, 14, 0, 0, 5, tzinfo=plus_two)),
            ]
        )
    )
    for cid in (naive, paris):
        got = await store.get_workflow(cid)
        assert got is not None
        assert got.started_at == datetime(2024, 5, 1, 12, 0, 0, 5, tzinfo=UTC)
        assert_utc(got.started_at)


# --- workflow_executions: the row with the higher state_seq wins, NULLs never overwrite ------------------------------


async def test_a_later_state_replaces_an_earlier_one(store: Store) -> None:
    cid = uuid.uuid4()
    await store.apply(WriteBatch(workflows=[workflow(cid, "processing", 1, namespace="ns", started_at=at(0))]))
    await store.apply(
        WriteBatch(workflows=[workflow(cid, "completed", 2, completed_at=at(2), execution_time_ms=2000.0)])
    )
    got = await store.get_workflow(cid)
    assert got == workflow(
        cid, "completed", 2, namespace="ns", started_at=at(0), completed_at=at(2), execution_time_ms=2000.0
    )
    assert await store.count("workflow_executions") == 1


async def test_completed_arriving_before_started_is_not_undone(store: Store) -> None:
    cid = uuid.uuid4()
    completed = workflow(
        cid, "completed", 3, file_hash="h", completed_at=at(3), execution_time_ms=3000.0, metadata={"result": "ok"}
    )
    started = workflow(
        cid,
        "processing",
        1,
        namespace="ns",
        file_path="a.py",
        file_hash="stale",
        started_at=at(0),
        error_message=None,
        metadata={"input": "a.py", "result": "pending"},
    )
    await store.apply(WriteBatch(workflows=[completed]))
    await store.apply(WriteBatch(workflows=[started]))

    got = await store.get_workflow(cid)
    assert got == WorkflowRow(
        correlation_id=cid,
        workflow_type="stamp",
        current_state="completed",  # the higher state_seq keeps its state ...
        state_seq=3,
        namespace="ns",  # ... and the lower one fills in only what was unknown
        file_path="a.py",
        file_hash="h",
        started_at=at(0),
        completed_at=at(3),
        execution_time_ms=3000.0,
        metadata={"input": "a.py", "result": "ok"},
    )


async def test_nulls_never_overwrite_values(store: Store) -> None:
    cid = uuid.uuid4()
    first = workflow(
        cid,
        "processing",
        1,
        namespace="ns",
        file_path="a.py",
        file_hash="h",
        stamp_id=uuid.uuid4(),
        started_at=at(0),
        error_message="retrying",
        metadata={"k": "v"},
    )
    await store.apply(WriteBatch(workflows=[first]))
    await store.apply(WriteBatch(workflows=[workflow(cid, "completed", 2)]))  # every optional field None / empty
    got = await store.get_workflow(cid)
    assert got == WorkflowRow(**{**_fields(first), "current_state": "completed", "state_seq": 2})


async def test_metadata_is_merged_with_the_higher_state_seq_winning(store: Store) -> None:
    cid = uuid.uuid4()
    await store.apply(WriteBatch(workflows=[workflow(cid, "processing", 1, metadata={"a": 1, "b": 1})]))
    await store.apply(WriteBatch(workflows=[workflow(cid, "completed", 2, metadata={"b": 2, "c": {"d": 2}})]))
    got = await store.get_workflow(cid)
    assert got is not None
    assert got.metadata == {"a": 1, "b": 2, "c": {"d": 2}}


async def test_equal_state_seq_takes_the_later_values(store: Store) -> None:
    cid = uuid.uuid4()
    await store.apply(WriteBatch(workflows=[workflow(cid, "processing", 1, file_path="old.py")]))
    await store.apply(WriteBatch(workflows=[workflow(cid, "processing", 1, file_path="new.py")]))
    got = await store.get_workflow(cid)
    assert got is not None
    assert got.file_path == "new.py"


async def test_several_rows_of_one_workflow_in_one_batch(store: Store) -> None:
    cid = uuid.uuid4()
    rows = [
        workflow(cid, "completed", 2, completed_at=at(2)),
        workflow(cid, "pending", 0, namespace="ns"),
        workflow(cid, "processing", 1, started_at=at(1)),
    ]
    await store.apply(WriteBatch(workflows=rows))
    assert await store.get_workflow(cid) == workflow(
        cid, "completed", 2, namespace="ns", started_at=at(1), completed_at=at(2)
    )


async def test_list_workflows_newest_first_by_state_and_limited(store: Store) -> None:
    ids = [uuid.uuid4() for _ in range(4)]
    for i, cid in enumerate(ids):  # one batch each: creation order is the order of the batches
        await store.apply(WriteBatch(workflows=[workflow(cid, "completed" if i % 2 else "failed", 2)]))
    assert [w.correlation_id for w in await store.list_workflows()] == ids[::-1]
    assert [w.correlation_id for w in await store.list_workflows(state="completed")] == [ids[3], ids[1]]
    assert [w.correlation_id for w in await store.list_workflows(limit=1)] == [ids[3]]
    assert await store.list_workflows(state="nope") == []
    # An update does not make a workflow newer: the order is that of creation.
    await store.apply(WriteBatch(workflows=[workflow(ids[0], "completed", 3)]))
    assert [w.correlation_id for w in await store.list_workflows(limit=1)] == [ids[3]]


async def test_list_workflows_filters_by_namespace_since_and_file_path_together(store: Store) -> None:
    ids = [uuid.uuid4() for _ in range(4)]
    for i, cid in enumerate(ids):
        row = workflow(cid, "completed" if i < 3 else "failed", 2, namespace=f"ns{i % 2}", file_path=f"f{i // 2}.py")
        await store.apply(WriteBatch(workflows=[row]))
    assert [w.correlation_id for w in await store.list_workflows(namespace="ns1")] == [ids[3], ids[1]]
    assert [w.correlation_id for w in await store.list_workflows(namespace="ns1", state="completed")] == [ids[1]]
    assert [w.correlation_id for w in await store.list_workflows(file_path="f1.py")] == [ids[3], ids[2]]
    assert [w.correlation_id for w in await store.list_workflows(file_path="f1.py", limit=1)] == [ids[3]]
    assert await store.list_workflows(namespace=NASTY[0]) == []
    # ``since`` compares creation times written by the store (or the database server): generous bounds.
    now = datetime.now(UTC)
    assert len(await store.list_workflows(since=now - timedelta(minutes=5))) == 4
    assert await store.list_workflows(since=now + timedelta(hours=1)) == []
    assert len(await store.list_workflows(since=(now - timedelta(minutes=5)).replace(tzinfo=None), state="failed")) == 1


# --- workflow_steps ------------------------------------------------------------------------------------------------


async def test_get_workflows_returns_the_stored_rows_among_the_ids(store: Store) -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    await store.apply(WriteBatch(workflows=[workflow(ids[0], "processing", 1), workflow(ids[1], "completed", 2)]))
    many = [uuid.uuid4() for _ in range(1_200)]  # more than one statement's worth of parameters
    found = await store.get_workflows([*ids, *many])
    assert sorted((w.correlation_id, w.current_state) for w in found) == sorted(
        [(ids[0], "processing"), (ids[1], "completed")]
    )
    assert await store.get_workflows([]) == []


async def test_workflow_states_are_what_get_workflows_says_of_the_ids(store: Store) -> None:
    """The states alone (the orchestrator's look at whether outcomes got stored reads nothing else): keyed by the ids
    as given, equal to the base class's answer from whole rows, in more than one statement's worth of ids."""
    ids = [uuid.uuid4() for _ in range(3)]
    big = {"v": 1, "context": {"request": {"content": "x" * 2_000}}}
    await store.apply(
        WriteBatch(workflows=[workflow(ids[0], "processing", 1, checkpoint=big), workflow(ids[1], "completed", 2)])
    )
    asked = [*ids, *(uuid.uuid4() for _ in range(1_200))]
    states = await store.workflow_states(asked)
    assert states == {ids[0]: "processing", ids[1]: "completed"}
    assert all(type(cid) is uuid.UUID for cid in states)
    assert states == await Store.workflow_states(store, asked)  # the base class's, from get_workflows
    assert await store.workflow_states([]) == {}


async def test_a_checkpoint_in_metadata_is_replaced_and_cleared_by_later_rows(store: Store) -> None:
    cid = uuid.uuid4()
    await store.apply(WriteBatch(workflows=[workflow(cid, "processing", 1, metadata={"checkpoint": {"attempt": 1}})]))
    await store.apply(WriteBatch(workflows=[workflow(cid, "processing", 1, metadata={"checkpoint": {"attempt": 2}})]))
    assert (await store.get_workflow(cid)).metadata == {"checkpoint": {"attempt": 2}}  # type: ignore[union-attr]
    await store.apply(WriteBatch(workflows=[workflow(cid, "completed", 2, metadata={"checkpoint": None})]))
    stale = workflow(cid, "processing", 1, metadata={"checkpoint": {"attempt": 1}})  # a late, older checkpoint
    await store.apply(WriteBatch(workflows=[stale]))
    row = await store.get_workflow(cid)
    assert row is not None
    assert (row.current_state, row.metadata) == ("completed", {"checkpoint": None})


async def test_a_checkpoint_is_the_newer_rows_and_a_finished_row_clears_it(store: Store) -> None:
    """``checkpoint`` (migration 7) is the value of the row with the higher ``state_seq``, NULL included: unlike the
    other columns, a finished workflow's row, which has none, clears it, and an older one never brings it back."""
    cid, other = uuid.uuid4(), uuid.uuid4()
    request = {"content": "x" * 2_000}
    await store.apply(WriteBatch(workflows=[workflow(cid, "processing", 1, checkpoint={"attempt": 1, **request})]))
    await store.apply(WriteBatch(workflows=[workflow(cid, "processing", 1, checkpoint={"attempt": 2})]))
    assert (await store.get_workflow(cid)).checkpoint == {"attempt": 2}  # type: ignore[union-attr]
    # The database adapter's row from the outcome: no checkpoint, metadata left as it is.
    await store.apply(WriteBatch(workflows=[workflow(cid, "completed", 2, metadata={"by": "adapter"})]))
    late = workflow(cid, "processing", 1, checkpoint={"attempt": 1, **request})  # a late, older checkpoint
    await store.apply(WriteBatch(workflows=[late]))
    row = await store.get_workflow(cid)
    assert row is not None
    assert (row.current_state, row.state_seq, row.checkpoint, row.metadata) == ("completed", 2, None, {"by": "adapter"})
    # An older row without a checkpoint does not clear a newer one's.
    await store.apply(WriteBatch(workflows=[workflow(other, "processing", 3, checkpoint={"attempt": 3})]))
    await store.apply(WriteBatch(workflows=[workflow(other, "processing", 2)]))
    assert (await store.get_workflow(other)).checkpoint == {"attempt": 3}  # type: ignore[union-attr]


async def test_mark_stale_marks_silent_nodes_once_and_keeps_their_last_heartbeat(store: Store) -> None:
    await store.apply(WriteBatch(registrations=[registration(f"n{i}") for i in range(4)]))
    beats = [
        HeartbeatRow("n0", "HEALTHY", at(10)),
        HeartbeatRow("n1", "HEALTHY", at(50)),
        HeartbeatRow("n2", "STOPPED", at(10)),
        HeartbeatRow("n3", "DEGRADED", at(20)),
    ]
    await store.apply(WriteBatch(heartbeats=beats))

    assert sorted(await store.mark_stale(at(30))) == ["n0", "n3"]
    assert await store.mark_stale(at(30)) == []  # already stale
    nodes = {r.node_id: (r.health_status, r.last_heartbeat) for r in await store.list_registrations()}
    assert nodes == {
        "n0": ("STALE", at(10)),
        "n1": ("HEALTHY", at(50)),
        "n2": ("STOPPED", at(10)),
        "n3": ("STALE", at(20)),
    }
    await store.apply(WriteBatch(heartbeats=[HeartbeatRow("n0", "HEALTHY", at(40))]))  # it comes back
    assert {r.node_id: r.health_status for r in await store.list_registrations()}["n0"] == "HEALTHY"


async def test_a_step_is_updated_in_place(store: Store) -> None:
    cid = uuid.uuid4()
    await store.apply(WriteBatch(steps=[StepRow(cid, "hash", 1, "running", created_at=at(0))]))
    done = StepRow(cid, "hash", 1, "completed", execution_time_ms=5.0, step_data={"hash": "h"}, created_at=at(9))
    await store.apply(WriteBatch(steps=[done]))
    (got,) = await store.list_steps(cid)
    # status, timings, data and error are the new ones; the step keeps the time it was first seen
    assert got == StepRow(cid, "hash", 1, "completed", execution_time_ms=5.0, step_data={"hash": "h"}, created_at=at(0))
    failed = StepRow(cid, "hash", 1, "failed", error_message="disk full", created_at=at(10))
    await store.apply(WriteBatch(steps=[failed]))
    (got,) = await store.list_steps(cid)
    assert (got.status, got.error_message, got.execution_time_ms, got.step_data) == ("failed", "disk full", None, {})
    assert await store.count("workflow_steps") == 1


async def test_steps_are_listed_by_step_order(store: Store) -> None:
    cid = uuid.uuid4()
    steps = [StepRow(cid, name, order, "completed") for name, order in [("c", 3), ("a", 1), ("b", 2)]]
    await store.apply(WriteBatch(steps=steps))
    assert [s.step_name for s in await store.list_steps(cid)] == ["a", "b", "c"]


async def test_steps_and_stamps_may_arrive_before_their_workflow(store: Store) -> None:
    cid = uuid.uuid4()
    await store.apply(WriteBatch(steps=[StepRow(cid, "hash", 1, "completed")], stamps=[stamp(workflow_id=cid)]))
    await store.apply(WriteBatch(workflows=[workflow(cid, "completed", 2)]))
    assert len(await store.list_steps(cid)) == 1
    assert (await store.list_stamps("ns"))[0].workflow_id == cid


# --- metadata_stamps: keep the existing row ----------------------------------------------------------------------


async def test_a_duplicate_stamp_is_ignored(store: Store) -> None:
    first = stamp(stamp_data={"v": 1}, created_at=at(0))
    same_key = stamp(stamp_data={"v": 2}, created_at=at(1))  # another id, same (namespace, file_path, file_hash)
    same_id = stamp(id=first.id, file_hash="h2")  # a redelivery under another key
    await store.apply(WriteBatch(stamps=[first]))
    await store.apply(WriteBatch(stamps=[same_key, same_id]))
    assert await store.list_stamps("ns") == [first]
    assert await store.count("metadata_stamps") == 1


async def test_the_same_file_may_be_stamped_in_several_namespaces_and_versions(store: Store) -> None:
    rows = [
        stamp("ns1", "a.py", "h1", created_at=at(0)),
        stamp("ns2", "a.py", "h1", created_at=at(1)),
        stamp("ns1", "a.py", "h2", created_at=at(2), version=2),
        stamp("ns1", "b.py", "h1", created_at=at(3)),
    ]
    await store.apply(WriteBatch(stamps=rows))
    assert await store.get_stamps_by_hash("h1") == [rows[0], rows[1], rows[3]]
    assert await store.list_stamps("ns1") == [rows[0], rows[2], rows[3]]
    assert await store.get_stamps_by_hash("nope") == []


async def test_a_long_path_that_does_not_compress_is_stored_keyed_and_numbered(store: Store) -> None:
    # 4,000 bytes of hex (Linux allows 4,096): more than a PostgreSQL btree entry holds (2,704), and random, so that
    # compression does not bring it under. Migration 0008 keys such a path by its md5 there; SQLite always stored it.
    long = "/" + "/".join(uuid.uuid4().hex for _ in range(122))[:3_999]
    longer = long[:-1] + ("0" if long[-1] != "0" else "1")  # another file, the same up to its last byte
    first = stamp(path=long, file_hash="h1", created_at=at(0))
    await store.apply(WriteBatch(stamps=[first, stamp(path=long, file_hash="h1", created_at=at(1))]))  # a duplicate
    second = stamp(path=long, file_hash="h2", created_at=at(2), version=None)  # numbered by the store
    other = stamp(path=longer, file_hash="h1", created_at=at(3), version=None)
    await store.apply(WriteBatch(stamps=[second, other]))
    assert [(s.file_path, s.file_hash, s.version) for s in await store.list_stamps("ns")] == [
        (long, "h1", 1),
        (long, "h2", 2),
        (longer, "h1", 1),
    ]


async def test_list_stamps_pages_oldest_first(store: Store) -> None:
    rows = [stamp(path=f"f{i:02}.py", created_at=at(30 - i)) for i in range(30)]  # stored newest first
    await store.apply(WriteBatch(stamps=rows))
    oldest_first = rows[::-1]
    assert await store.list_stamps("ns", limit=10) == oldest_first[:10]
    assert await store.list_stamps("ns", limit=10, offset=10) == oldest_first[10:20]
    assert await store.list_stamps("ns", limit=100, offset=25) == oldest_first[25:]
    assert await store.list_stamps("ns", offset=30) == []
    assert await store.list_stamps("other") == []


# --- fsm_transitions: the order they happened -----------------------------------------------------------------------


async def test_transitions_come_back_in_the_order_they_were_stored(store: Store) -> None:
    entity = str(uuid.uuid4())
    states = ["pending", "processing", "hashing", "stamping", "persisting", "completed"]
    chain = [transition(entity, a, b) for a, b in zip([None, *states], states, strict=False)]
    # No created_at: every row of a batch gets the same time, so only the storage order can tell them apart.
    await store.apply(WriteBatch(transitions=chain[:4]))
    await store.apply(WriteBatch(transitions=chain[4:]))
    got = await store.list_transitions(entity)
    assert [(t.from_state, t.to_state) for t in got] == [(t.from_state, t.to_state) for t in chain]


async def test_transitions_are_ordered_by_their_time_first(store: Store) -> None:
    entity = "e"
    late = transition(entity, "processing", "completed", created_at=at(2))
    early = transition(entity, "pending", "processing", created_at=at(1))
    await store.apply(WriteBatch(transitions=[late]))
    await store.apply(WriteBatch(transitions=[early]))  # delivered out of order
    assert await store.list_transitions(entity) == [early, late]


async def test_a_redelivered_transition_is_ignored(store: Store) -> None:
    row = transition("e", None, "pending", created_at=at(0))
    await store.apply(WriteBatch(transitions=[row]))
    await store.apply(WriteBatch(transitions=[row, transition("e", "pending", "done", id=row.id)]))
    assert await store.list_transitions("e") == [row]


# --- bridge_states: replaced only by a higher version ---------------------------------------------------------------


async def test_bridge_state_is_replaced_only_by_a_higher_version(store: Store) -> None:
    await store.apply(WriteBatch(bridge_states=[bridge_state("ns", 2, total=20)]))
    await store.apply(WriteBatch(bridge_states=[bridge_state("ns", 1, total=10)]))  # stale
    await store.apply(WriteBatch(bridge_states=[bridge_state("ns", 2, total=99)]))  # same version: redelivery
    assert await store.get_bridge_state("ns") == bridge_state("ns", 2, total=20)
    await store.apply(WriteBatch(bridge_states=[bridge_state("ns", 3, total=30)]))
    assert await store.get_bridge_state("ns") == bridge_state("ns", 3, total=30)


async def test_bridge_states_are_listed_by_namespace(store: Store) -> None:
    await store.apply(WriteBatch(bridge_states=[bridge_state("b", 1), bridge_state("a", 1), bridge_state("c", 1)]))
    assert [s.namespace for s in await store.list_bridge_states()] == ["a", "b", "c"]


# --- node_registrations: a registration replaces, a heartbeat updates health -------------------------------------


async def test_a_registration_replaces_the_previous_one(store: Store) -> None:
    await store.apply(WriteBatch(registrations=[registration("n1", capabilities={"old": True}, registered_at=at(0))]))
    newer = RegistrationRow(
        node_id="n1",
        node_type="REDUCER",
        node_version="2.0.0",
        health_status="HEALTHY",
        capabilities={"new": True},
        endpoints={"e": "x"},
        metadata={"m": 1},
        last_heartbeat=at(5),
        registered_at=at(4),
    )
    await store.apply(WriteBatch(registrations=[newer, registration("n0")]))
    assert [r.node_id for r in await store.list_registrations()] == ["n0", "n1"]
    assert (await store.list_registrations())[1] == newer


async def test_a_heartbeat_updates_health_and_merges_metadata(store: Store) -> None:
    await store.apply(WriteBatch(registrations=[registration("n1", metadata={"host": "h"}, registered_at=at(0))]))
    beat = HeartbeatRow("n1", "HEALTHY", at(30), metadata={"uptime_seconds": 30})
    await store.apply(WriteBatch(heartbeats=[beat]))
    (node,) = await store.list_registrations()
    assert (node.health_status, node.last_heartbeat) == ("HEALTHY", at(30))
    assert node.metadata == {"host": "h", "uptime_seconds": 30}
    assert (node.node_type, node.node_version, node.registered_at) == ("EFFECT", "1.0.0", at(0))


async def test_a_stale_heartbeat_is_ignored(store: Store) -> None:
    await store.apply(WriteBatch(registrations=[registration("n1")]))
    await store.apply(WriteBatch(heartbeats=[HeartbeatRow("n1", "DEGRADED", at(60))]))
    await store.apply(WriteBatch(heartbeats=[HeartbeatRow("n1", "HEALTHY", at(30))]))  # delivered late
    (node,) = await store.list_registrations()
    assert (node.health_status, node.last_heartbeat) == ("DEGRADED", at(60))


async def test_heartbeats_in_one_batch_apply_in_time_order(store: Store) -> None:
    await store.apply(WriteBatch(registrations=[registration("n1")]))
    beats = [
        HeartbeatRow("n1", "HEALTHY", at(1)),
        HeartbeatRow("n1", "UNHEALTHY", at(3)),
        HeartbeatRow("n1", "X", at(2)),
    ]
    await store.apply(WriteBatch(heartbeats=beats))
    (node,) = await store.list_registrations()
    assert (node.health_status, node.last_heartbeat) == ("UNHEALTHY", at(3))


async def test_a_heartbeat_of_an_unregistered_node_is_dropped(store: Store) -> None:
    await store.apply(WriteBatch(heartbeats=[HeartbeatRow("ghost", "HEALTHY", at(0))]))
    assert await store.list_registrations() == []


async def test_a_registration_without_heartbeat_keeps_the_last_one(store: Store) -> None:
    await store.apply(WriteBatch(registrations=[registration("n1")], heartbeats=[HeartbeatRow("n1", "HEALTHY", at(9))]))
    await store.apply(WriteBatch(registrations=[registration("n1", node_version="1.0.1")]))  # a restart
    (node,) = await store.list_registrations()
    assert (node.node_version, node.last_heartbeat) == ("1.0.1", at(9))


# --- apply is one transaction ---------------------------------------------------------------------------------------


def _mixed_batch(bad_stamp: StampRow) -> WriteBatch:
    cid = uuid.uuid4()
    return WriteBatch(
        consumer="adapter",
        processed_event_ids=[uuid.uuid4()],
        workflows=[workflow(cid, "processing", 1)],
        steps=[StepRow(cid, "hash", 1, "running")],
        stamps=[stamp(path="good.py"), bad_stamp],
        transitions=[transition(str(cid), None, "pending")],
        bridge_states=[bridge_state("ns", 1)],
        registrations=[registration("n1")],
        event_logs=[event_log()],
    )


@pytest.mark.parametrize(
    "bad_stamp",
    [
        # Cannot even be encoded: caught before anything is sent.
        pytest.param(stamp(path="bad.py", stamp_data={"handle": object()}), id="unserialisable-json"),
        pytest.param(stamp(path="bad.py", stamp_data={"ratio": float("nan")}), id="nan-in-json"),
        # Fails in the database, after the workflows and steps of the batch were written: they must be undone.
        pytest.param(stamp(path="bad.py", file_size=2**64), id="integer-overflow"),
    ],
)
async def test_a_batch_with_one_bad_row_writes_nothing(store: Store, bad_stamp: StampRow) -> None:
    batch = _mixed_batch(bad_stamp)
    with pytest.raises(StoreError, match="metadata_stamps"):
        await store.apply(batch)
    assert await counts(store) == only()
    assert await store.unprocessed("adapter", batch.processed_event_ids) == set(batch.processed_event_ids)

    # The store is still usable, and the same batch without the bad row goes through.
    batch.stamps = batch.stamps[:1]
    await store.apply(batch)
    assert await store.count("metadata_stamps") == 1
    assert await store.unprocessed("adapter", batch.processed_event_ids) == set()


async def test_a_row_missing_a_required_value_fails_the_batch(store: Store) -> None:
    # Not silently dropped, as "INSERT OR IGNORE" would: only conflicts on the natural key are ignored.
    broken = stamp(file_path=None)
    with pytest.raises(StoreError, match="metadata_stamps"):
        await store.apply(WriteBatch(workflows=[workflow(uuid.uuid4(), "pending", 0)], stamps=[broken]))
    assert await counts(store) == only()


# --- processed_events: idempotent consumers -------------------------------------------------------------------------


async def test_processed_event_ids_are_recorded_with_the_batch(store: Store) -> None:
    done, pending = [uuid.uuid4() for _ in range(3)], [uuid.uuid4() for _ in range(2)]
    assert await store.unprocessed("adapter", done + pending) == set(done + pending)

    await store.apply(WriteBatch(consumer="adapter", processed_event_ids=done, event_logs=[event_log()]))
    assert await store.unprocessed("adapter", done + pending) == set(pending)
    assert await store.unprocessed("reducer", done) == set(done)  # per consumer
    assert await store.unprocessed("adapter", []) == set()
    assert await store.unprocessed("adapter", [pending[0], pending[0], done[0]]) == {pending[0]}

    await store.apply(WriteBatch(consumer="adapter", processed_event_ids=done))  # recorded again: no error
    assert await store.count("processed_events") == 3


async def test_unprocessed_handles_many_ids(store: Store) -> None:
    ids = [uuid.uuid4() for _ in range(1_234)]  # more than any sensible query parameter list
    pending = set(ids[::7])
    await store.apply(WriteBatch(consumer="c", processed_event_ids=[i for i in ids if i not in pending]))
    assert await store.unprocessed("c", ids) == pending


# --- migrations ----------------------------------------------------------------------------------------------------


async def test_upgrading_twice_is_a_no_op(store: Store) -> None:
    await store.apply(WriteBatch(bridge_states=[bridge_state("ns", 1)]))
    assert await store.upgrade() == []
    assert await store.count("bridge_states") == 1


async def test_a_fresh_database_is_upgraded_and_an_unupgraded_one_refused(make_store: MakeStore) -> None:
    fresh = await make_store(upgrade=False)
    with pytest.raises(StoreError):
        await fresh.count("workflow_executions")
    with pytest.raises(StoreError):
        await fresh.apply(WriteBatch(event_logs=[event_log()]))
    assert (await fresh.health()).status != "ok"

    applied = await fresh.upgrade()
    assert applied
    assert all(name[:4].isdigit() for name in applied)
    assert await fresh.count("workflow_executions") == 0
    assert (await fresh.health()).status == "ok"


# --- hostile and unusual text ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", NASTY)
async def test_hostile_strings_are_stored_verbatim(store: Store, text: str) -> None:
    row = stamp(
        namespace=text,
        path=text,
        file_hash=text,
        file_type=text,
        stamp_data={text: text, "k": [text]},
        created_at=at(0),
    )
    cid = uuid.uuid4()
    await store.apply(
        WriteBatch(
            workflows=[workflow(cid, text, 1, namespace=text, error_message=text, metadata={text: text})],
            stamps=[row],
            transitions=[transition(text, text, text)],
            bridge_states=[bridge_state(text, 1)],
            registrations=[registration(text, metadata={"note": text})],
        )
    )
    assert await store.list_stamps(text) == [row]
    assert await store.get_stamps_by_hash(text) == [row]
    got = await store.get_workflow(cid)
    assert got is not None
    assert (got.current_state, got.namespace, got.error_message, got.metadata) == (text, text, text, {text: text})
    assert [t.to_state for t in await store.list_transitions(text)] == [text]
    assert (await store.get_bridge_state(text)) == bridge_state(text, 1)
    assert (await store.list_registrations())[0].metadata == {"note": text}
    assert await counts(store) == only(
        workflow_executions=1, metadata_stamps=1, fsm_transitions=1, bridge_states=1, node_registrations=1
    )


@pytest.mark.parametrize("name", ["users", "metadata_stamps; DROP TABLE event_logs", "", "METADATA_STAMPS"])
async def test_count_accepts_only_the_store_tables(store: Store, name: str) -> None:
    with pytest.raises(ValueError, match="unknown table"):
        await store.count(name)
    assert await store.count("event_logs") == 0


# --- volume, concurrency, lifecycle ---------------------------------------------------------------------------------


async def test_a_batch_of_5000_rows(store: Store) -> None:
    batch = WriteBatch(consumer="bulk", processed_event_ids=[uuid.uuid4() for _ in range(1_000)])
    for i in range(1_000):
        cid = uuid.uuid4()
        batch.workflows.append(workflow(cid, "completed", 2, namespace="bulk", file_path=f"f{i}.py"))
        batch.steps.append(StepRow(cid, "hash", 1, "completed", execution_time_ms=0.1))
        batch.stamps.append(stamp("bulk", f"f{i}.py", f"{i:064x}", workflow_id=cid))
        batch.transitions.append(transition(str(cid), "pending", "processing", correlation_id=cid))
        batch.transitions.append(transition(str(cid), "processing", "completed", correlation_id=cid))
    assert len(batch) == 5_000
    await store.apply(batch)
    assert await counts(store) == only(
        workflow_executions=1_000,
        workflow_steps=1_000,
        metadata_stamps=1_000,
        fsm_transitions=2_000,
        processed_events=1_000,
    )
    assert len(await store.list_stamps("bulk", limit=2_000)) == 1_000


async def test_concurrent_applies_all_land(store: Store) -> None:
    async def write(i: int) -> None:
        await store.apply(WriteBatch(stamps=[stamp(path=f"{i}-{j}.py") for j in range(50)]))

    await asyncio.gather(*(write(i) for i in range(20)))
    assert await store.count("metadata_stamps") == 1_000


async def test_data_survives_reopening(make_store: MakeStore) -> None:
    first = await make_store()
    cid = uuid.uuid4()
    await first.apply(WriteBatch(workflows=[workflow(cid, "completed", 2)]))
    await first.aclose()
    second = await make_store(upgrade=False)  # already upgraded
    assert await second.get_workflow(cid) == workflow(cid, "completed", 2)


async def test_an_empty_batch_is_fine(store: Store) -> None:
    await store.apply(WriteBatch())
    assert await counts(store) == only()


async def test_health_and_a_closed_store(store: Store) -> None:
    health = await store.health()
    assert (health.status, health.queued_writes) == ("ok", 0)

    await store.aclose()
    await store.aclose()  # idempotent
    assert (await store.health()).status == "down"
    with pytest.raises(StoreError):
        await store.apply(WriteBatch(event_logs=[event_log()]))
    with pytest.raises(StoreError):
        await store.list_registrations()


def _fields(row: WorkflowRow) -> dict[str, Any]:
    return {name: getattr(row, name) for name in WorkflowRow.__dataclass_fields__}


# --- dead letters (onex dlq) -----------------------------------------------------------------------------------------


def dead_letter_row(seconds: float, topic: str = "t.dlq", **fields: Any) -> DeadLetterRow:
    event_id = fields.pop("event_id", uuid.uuid4())
    values: dict[str, Any] = {
        "event_id": event_id,
        "topic": topic,
        "original_topic": topic.removesuffix(".dlq"),
        "event_type": "STAMP_REQUESTED",
        "error_type": "PayloadError",
        "error": NASTY[0],
        "attempts": 3,
        "letter": {"event_id": str(event_id), "payload": {"text": NASTY[3]}},
        "original_event_id": uuid.uuid4(),
        "correlation_id": uuid.uuid4(),
        "group_name": "orchestrator",
        "dead_lettered_at": at(seconds),
    }
    return DeadLetterRow(**{**values, **fields})


async def test_dead_letters_are_kept_once_and_listed_newest_first(store: Store) -> None:
    old, new, other = dead_letter_row(1), dead_letter_row(5), dead_letter_row(3, topic="u.dlq", original_event_id=None)
    await store.add_dead_letters([old, new, other])
    await store.add_dead_letters([dataclasses.replace(old, error="changed")])  # the same letter again: kept as it was

    assert await store.list_dead_letters() == [new, other, old]
    assert await store.list_dead_letters(limit=2) == [new, other]
    assert await store.list_dead_letters(topic="t.dlq") == [new, old]
    assert await store.list_dead_letters(topic="nowhere.dlq") == []
    assert await store.count_dead_letters() == 3
    assert await store.count_dead_letters(topic="u.dlq") == 1
    assert await store.count("dead_letters") == 3


async def test_a_dead_letter_is_found_by_its_own_id_or_its_originals(store: Store) -> None:
    first = dead_letter_row(1)
    again = dead_letter_row(2, original_event_id=first.original_event_id, group_name=None)
    unrelated = dead_letter_row(3)
    await store.add_dead_letters([first, again, unrelated])

    assert await store.find_dead_letters(first.event_id) == [first]
    assert first.original_event_id is not None
    assert await store.find_dead_letters(first.original_event_id) == [first, again]
    assert await store.find_dead_letters(uuid.uuid4()) == []
    assert {r.event_id for r in await store.get_dead_letters([first.event_id, unrelated.event_id])} == {
        first.event_id,
        unrelated.event_id,
    }
    assert await store.get_dead_letters([]) == []


async def test_a_replay_is_recorded_on_a_stored_letter_and_on_one_not_stored_yet(store: Store) -> None:
    stored, from_kafka = dead_letter_row(1), dead_letter_row(2, topic="k.dlq")
    await store.add_dead_letters([stored])

    await store.record_replay([stored, from_kafka], at(10))
    await store.record_replay([stored], at(20))

    by_id = {r.event_id: r for r in await store.list_dead_letters()}
    assert by_id[stored.event_id] == dataclasses.replace(stored, replayed_at=at(20), replays=2)
    assert by_id[from_kafka.event_id] == dataclasses.replace(from_kafka, replayed_at=at(10), replays=1)
    await store.record_replay([], at(30))  # nothing to record is fine
    assert await store.count("dead_letters") == 2
