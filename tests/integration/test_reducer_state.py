"""The reducer's aggregation subcontract and state_management in whole stamping workflows (``onex.testing.Harness``).

Its aggregations are persisted per group and window in ``aggregate_windows``; its state_management subcontract says
which of its totals and windows a new process restores, and when they are written. Each case changes one field of the
shipped contracts and runs the shipped node graph on a ``ManualClock`` (so a workflow's completion time, the event
time of the per-minute windows, is the test's) with a real SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from onex.aggregation import Aggregator
from onex.clock import ManualClock
from onex.contracts import Aggregation, ContractSet, load_contracts
from onex.exceptions import StoreError
from onex.store import AggregateWindowRow
from onex.testing import Harness

from nodes.models import ModelWorkflowFinished
from nodes.reducer.v1_0_0.node import NodeReducer, Outcome

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
NS = "aggregated"
T0 = datetime(2026, 12, 2, 12, 0, 10, tzinfo=UTC).timestamp()  # ten seconds into a minute


@functools.cache
def shipped() -> ContractSet:
    return load_contracts(ROOT, env={})


def reducer_with(*, config: dict[str, Any] | None = None, **state: Any) -> ContractSet:
    """The shipped contracts, the reducer's config and state_management subcontract changed as given."""
    contracts = shipped()
    reducer = contracts.get("reducer")
    current = reducer.subcontracts.state_management
    assert current is not None
    subcontracts = reducer.subcontracts.model_copy(update={"state_management": current.model_copy(update=state)})
    changed = reducer.model_copy(update={"subcontracts": subcontracts, "config": {**reducer.config, **(config or {})}})
    return ContractSet(contracts.root, [changed if c is reducer else c for c in contracts])


def files(directory: Path, sizes: list[int]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, size in enumerate(sizes):
        path = directory / f"f{i}.txt"
        path.write_bytes(b"%d" % i + b"x" * (size - len(b"%d" % i)))
        paths.append(path)
    return paths


async def stamp(h: Harness, paths: list[Path]) -> None:
    for path in paths:
        await h.publish("STAMP_REQUESTED", {"file_path": str(path), "namespace": NS})
    await h.settle()


async def windows(h: Harness, aggregation: str, **filters: Any) -> list[AggregateWindowRow]:
    return await h.store.list_aggregate_windows(node="reducer", aggregation=aggregation, namespace=NS, **filters)


def harness(url: str, clock: ManualClock, contracts: ContractSet | None = None) -> Harness:
    return Harness(root=ROOT, contracts=contracts or shipped(), store_url=url, clock=clock)


# --- aggregations --------------------------------------------------------------------------------------------------


async def test_every_aggregation_of_the_subcontract_is_persisted_per_group_and_window(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/onex.db"
    clock = ManualClock(start=T0)
    sizes = [100, 2_000, 3_000]
    async with harness(url, clock) as h:
        await stamp(h, files(tmp_path / "tree", sizes))
        minute = await windows(h, "per_minute")
        by_type = await windows(h, "by_file_type")
        buckets = await windows(h, "size_buckets")
        outcomes = await windows(h, "outcomes")
        # The minute ends, and its grace (5 s): the timer closes the window and writes it final.
        await clock.advance(60)
        closed = await windows(h, "per_minute", closed=True)

    [open_minute] = minute
    minute_start = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    assert (open_minute.closed, open_minute.items) == (False, 3)
    assert open_minute.window_id == f"t:{int(minute_start.timestamp() * 1000)}"
    assert open_minute.values["workflows"] == 3
    assert open_minute.values["bytes"] == sum(sizes)
    assert open_minute.values["largest"] == max(sizes)
    assert open_minute.values["mean_size"] == pytest.approx(sum(sizes) / 3)
    assert open_minute.window_start == minute_start
    assert [(w.closed, w.items, w.values["workflows"]) for w in closed] == [(True, 3, 3)]
    assert {w.group["stamp.file_type"]: w.values["files"] for w in by_type} == {"text": 3}
    assert {w.group["bucket"]: w.values["files"] for w in buckets} == {"<=1024": 1, "<=65536": 2}
    assert {w.group["state"]: w.values["workflows"] for w in outcomes} == {"completed": 3}
    assert all((w.window_id, w.window_start, w.window_end) == ("", None, None) for w in by_type + buckets + outcomes)


async def test_a_reducer_aggregation_must_group_by_namespace() -> None:
    contracts = shipped()
    reducer = contracts.get("reducer")
    aggregation = reducer.subcontracts.aggregation
    assert aggregation is not None
    assert NodeReducer.contract_problems(reducer) == []
    ungrouped = tuple(
        a.model_copy(update={"group_by": ()}) if a.name == "per_minute" else a for a in aggregation.aggregations
    )
    changed = reducer.model_copy(
        update={
            "subcontracts": reducer.subcontracts.model_copy(
                update={"aggregation": aggregation.model_copy(update={"aggregations": ungrouped})}
            )
        }
    )
    [(path, message)] = NodeReducer.contract_problems(changed)
    index = [a.name for a in aggregation.aggregations].index("per_minute")
    assert path == ("subcontracts", "aggregation", "aggregations", index, "group_by")
    assert "'per_minute' must group by namespace" in message


async def test_count_windows_go_on_numbering_in_a_new_process(tmp_path: Path) -> None:
    contracts = shipped()
    reducer = contracts.get("reducer")
    aggregation = reducer.subcontracts.aggregation
    assert aggregation is not None
    pairs = Aggregation.model_validate(
        {
            "name": "pairs",
            "type": "NAMESPACE_GROUPING",
            "window": {"type": "tumbling", "size_items": 2},
            "functions": [{"name": "files", "function": "count"}],
        }
    )
    subcontracts = reducer.subcontracts.model_copy(
        update={"aggregation": aggregation.model_copy(update={"aggregations": (*aggregation.aggregations, pairs)})}
    )
    changed = reducer.model_copy(update={"subcontracts": subcontracts})
    contracts = ContractSet(contracts.root, [changed if c is reducer else c for c in contracts])
    url = f"sqlite:///{tmp_path}/onex.db"
    clock = ManualClock(start=T0)
    paths = files(tmp_path / "tree", [10, 20, 30, 40])
    async with harness(url, clock, contracts) as h:
        await stamp(h, paths[:2])  # fills n:0
    async with harness(url, clock, contracts) as h:
        await stamp(h, paths[2:])  # fills n:1, not a second n:0 the store would refuse
        rows = await windows(h, "pairs")
    assert sorted((w.window_id, w.closed, w.items) for w in rows) == [("n:0", True, 2), ("n:1", True, 2)]


# --- state_fields: what a new process restores ---------------------------------------------------------------------


async def restart_twice(tmp_path: Path, contracts: ContractSet) -> tuple[Any, list[AggregateWindowRow]]:
    """Stamp two files, stop, stamp one more in a new process within the same minute: the stored totals and the
    open per-minute window."""
    url = f"sqlite:///{tmp_path}/onex.db"
    clock = ManualClock(start=T0)
    paths = files(tmp_path / "tree", [10, 20, 40])
    async with harness(url, clock, contracts) as h:
        await stamp(h, paths[:2])
    async with harness(url, clock, contracts) as h:
        await stamp(h, paths[2:])
        return await h.store.get_bridge_state(NS), await windows(h, "per_minute")


async def test_a_new_process_restores_the_totals_and_open_windows_its_state_fields_list(tmp_path: Path) -> None:
    totals, minute = await restart_twice(tmp_path, shipped())
    assert totals is not None
    assert (totals.total_workflows_processed, totals.total_items_aggregated, totals.total_size_bytes) == (3, 3, 70)
    assert [(w.items, w.values["bytes"]) for w in minute] == [(3, 70)]


async def test_a_field_left_out_of_state_fields_counts_from_zero_in_each_process(tmp_path: Path) -> None:
    kept = tuple(
        f
        for f in shipped().get("reducer").subcontracts.state_management.state_fields  # type: ignore[union-attr]
        if f not in ("total_size_bytes", "windows")
    )
    totals, minute = await restart_twice(tmp_path, reducer_with(state_fields=kept))
    assert totals is not None
    assert (totals.total_workflows_processed, totals.total_items_aggregated) == (3, 3)  # restored
    assert totals.total_size_bytes == 40  # only the second process's file
    assert [(w.items, w.values["bytes"]) for w in minute] == [(1, 40)]  # the window started again


# --- storage and checkpoint ------------------------------------------------------------------------------------------


async def test_storage_memory_writes_no_totals_and_restores_none(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/onex.db"
    clock = ManualClock(start=T0)
    contracts = reducer_with(storage="memory", config={"window_items": 1_000, "window_ms": 600_000})
    async with harness(url, clock, contracts) as h:
        await stamp(h, files(tmp_path / "tree", [10, 20]))
        during = await h.store.get_bridge_state(NS)
        running = await windows(h, "outcomes")
    # Neither the totals (no checkpoint; no intent yet, the window is long) nor an open window are written.
    assert during is None
    assert running == []


async def test_storage_memory_starts_from_zero_whatever_the_store_holds(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/onex.db"
    clock = ManualClock(start=T0)
    paths = files(tmp_path / "tree", [10, 20, 40])
    async with harness(url, clock) as h:
        await stamp(h, paths[:2])
    async with harness(url, clock, reducer_with(storage="memory")) as h:
        await stamp(h, paths[2:])
        await h.runtime.drain()  # closes the namespace's window: its intent carries this process's totals
        [last] = [e for e in h.of("STATE_AGGREGATION_COMPLETED") if e.payload["namespace"] == NS][-1:]
    assert (last.payload["total_items_aggregated"], last.payload["total_size_bytes"]) == (1, 40)


async def test_checkpoint_per_window_writes_the_totals_only_when_a_window_closes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/onex.db"
    clock = ManualClock(start=T0)
    contracts = reducer_with(checkpoint="per_window", config={"window_items": 1_000, "window_ms": 30_000})
    async with harness(url, clock, contracts) as h:
        await stamp(h, files(tmp_path / "tree", [10, 20]))
        before = await h.store.get_bridge_state(NS)
        await clock.advance(30)  # the namespace's window closes: its intent, and the checkpoint
        after = await h.store.get_bridge_state(NS)
        counted = await h.store.unprocessed("reducer.workflows", [e.correlation_id for e in h.of("WORKFLOW_COMPLETED")])  # type: ignore[misc]
    assert before is None
    assert after is not None
    assert after.total_items_aggregated == 2
    assert counted == set()  # the workflows it counts were recorded with it


async def test_checkpoint_per_batch_writes_the_totals_with_every_batch(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/onex.db"
    clock = ManualClock(start=T0)
    contracts = reducer_with(config={"window_items": 1_000, "window_ms": 30_000})
    async with harness(url, clock, contracts) as h:
        await stamp(h, files(tmp_path / "tree", [10, 20]))
        state = await h.store.get_bridge_state(NS)
    assert state is not None
    assert state.total_items_aggregated == 2


async def test_checkpoint_interval_ms_writes_the_totals_on_the_timer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/onex.db"
    clock = ManualClock(start=T0)
    contracts = reducer_with(
        checkpoint="interval_ms", interval_ms=5_000, config={"window_items": 1_000, "window_ms": 600_000}
    )
    async with harness(url, clock, contracts) as h:
        await stamp(h, files(tmp_path / "tree", [10, 20]))
        before = await h.store.get_bridge_state(NS)
        await clock.advance(5)
        after = await h.store.get_bridge_state(NS)
    assert before is None
    assert after is not None
    assert after.total_items_aggregated == 2


def outcome(namespace: str) -> dict[str, Any]:
    """A WORKFLOW_COMPLETED payload without a stamp: one workflow for the namespace's totals, no item."""
    return {
        "workflow_id": str(uuid.uuid4()),
        "state": "completed",
        "state_seq": 2,
        "namespace": namespace,
        "started_at": "2026-12-02T12:00:00+00:00",
        "completed_at": "2026-12-02T12:00:01+00:00",
        "execution_time_ms": 1000.0,
    }


@contextlib.asynccontextmanager
async def reducer_and_another_namespace(
    tmp_path: Path,
) -> AsyncIterator[tuple[Harness, NodeReducer, list[str], str]]:
    """A reducer checkpointing per window (none closes in these tests), the two topics it consumes, and a namespace
    whose partition is not NS's: a rebalance can move NS away and keep that one."""
    contracts = reducer_with(checkpoint="per_window", config={"window_items": 1_000, "window_ms": 600_000})
    async with Harness(
        ["reducer"], root=ROOT, contracts=contracts, store_url=f"sqlite:///{tmp_path}/onex.db", clock=ManualClock()
    ) as h:
        node = h.runtime.node("reducer")
        assert isinstance(node, NodeReducer)
        topics = [node.topic("WORKFLOW_COMPLETED"), node.topic("WORKFLOW_FAILED")]
        here = {h.bus.partition_of(topics[0], NS)}
        other = next(n for n in (f"ns{i}" for i in range(100)) if h.bus.partition_of(topics[0], n) not in here)
        yield h, node, topics, other


async def comes_back_and_counts(
    h: Harness, node: NodeReducer, owned: frozenset[tuple[str, int]], moved: dict[str, Any]
) -> None:
    """NS comes back before another reducer counted it: its outcome, delivered again, counts here once."""
    await node.on_partitions(owned)
    await h.publish("WORKFLOW_COMPLETED", moved, partition_key=NS)
    await h.settle()
    await node.checkpoint()
    state = await h.store.get_bridge_state(NS)
    assert state is not None
    assert state.total_workflows_processed == 1


@pytest.mark.parametrize("one_batch", [False, True], ids=["a-batch-per-namespace", "one-batch"])
async def test_a_namespace_moved_away_before_its_checkpoint_leaves_its_workflows_to_be_counted(
    tmp_path: Path, one_batch: bool
) -> None:
    # Counted and acknowledged, not yet checkpointed (per_window, no window closes), when a rebalance moves the
    # namespace to another reducer: its counts are dropped here, so the workflows must not be recorded as counted by
    # this reducer's next checkpoint (another namespace's), or the new owner's reconcile skips them for good.
    async with reducer_and_another_namespace(tmp_path) as (h, node, topics, other):
        moved, stays = outcome(NS), outcome(other)
        if one_batch:  # as _reconcile hands over the workflows it finds, every namespace's at once
            models = [ModelWorkflowFinished.model_validate(p) for p in (moved, stays)]
            await node._reduce(
                [Outcome(m.workflow_id, m.namespace, True, None, 0, "-", m, m.completed_at) for m in models]
            )
        else:
            for payload in (moved, stays):
                await h.publish("WORKFLOW_COMPLETED", payload, partition_key=payload["namespace"])
            await h.settle()
        moved_id, stays_id = uuid.UUID(moved["workflow_id"]), uuid.UUID(stays["workflow_id"])
        assert await h.store.unprocessed(node.processed_key, [moved_id, stays_id]) == {moved_id, stays_id}
        owned = node._owned

        await node.on_partitions(frozenset((t, h.bus.partition_of(t, other)) for t in topics))
        await node.checkpoint()
        assert await h.store.unprocessed(node.processed_key, [moved_id, stays_id]) == {moved_id}
        assert await h.store.get_bridge_state(NS) is None

        await comes_back_and_counts(h, node, owned, moved)
        assert await h.store.unprocessed(node.processed_key, [moved_id]) == set()


async def test_a_namespace_moved_away_while_its_checkpoint_failed_is_not_written_later_and_comes_back_counted(
    tmp_path: Path,
) -> None:
    # The checkpoint took the namespace's totals and counted workflows out of the reducer, and its write failed
    # while a rebalance moved the namespace away: what it puts back for the next checkpoint must not include that
    # namespace (its totals are the new owner's to write), nor leave its workflows recorded as seen here.
    async with reducer_and_another_namespace(tmp_path) as (h, node, topics, other):
        moved, stays = outcome(NS), outcome(other)
        for payload in (moved, stays):
            await h.publish("WORKFLOW_COMPLETED", payload, partition_key=payload["namespace"])
        await h.settle()
        owned = node._owned
        moved_id, stays_id = uuid.UUID(moved["workflow_id"]), uuid.UUID(stays["workflow_id"])

        writing, apply = anyio.Event(), h.store.apply

        async def failing(batch: Any) -> None:
            writing.set()
            await node.on_partitions(frozenset((t, h.bus.partition_of(t, other)) for t in topics))
            raise StoreError("the write failed")

        h.store.apply = failing  # type: ignore[method-assign]
        with pytest.raises(StoreError):
            await node.checkpoint()
        assert writing.is_set()
        h.store.apply = apply  # type: ignore[method-assign]
        await node.checkpoint()
        assert await h.store.get_bridge_state(NS) is None
        assert await h.store.list_aggregate_windows(node=node.contract.name, namespace=NS) == []
        assert await h.store.unprocessed(node.processed_key, [moved_id, stays_id]) == {moved_id}

        await comes_back_and_counts(h, node, owned, moved)


# --- what the audit of aggregation found -------------------------------------------------------------------------


def finished(namespace: str = NS, **fields: Any) -> dict[str, Any]:
    """A WORKFLOW_COMPLETED payload of a stamped file, its fields as given."""
    workflow_id = uuid.uuid4()
    stamp = {
        "stamp_id": str(uuid.uuid4()),
        "file_hash": workflow_id.hex * 2,
        "file_size": 10,
        "file_type": "text",
        "file_path": f"/tmp/{workflow_id}.txt",
        "stamp_type": "lightweight",
        "status": "stamped",
    }
    return {**outcome(namespace), "workflow_id": str(workflow_id), "stamp": stamp, **fields}


async def settle_retrying(h: Harness, clock: ManualClock, *, at_most: float = 30.0) -> None:
    """``h.settle()`` while the clock moves on, so that a failing batch goes through the bus's retries (they pause
    on the clock) to its dead letter. The clock moves ``at_most`` seconds (the retries pause far less): a loaded
    machine settles in more turns of the loop, and moving on every turn took it past the minute the outcomes fall in,
    whose window then closed before the last of them (CI on a7ccd4e: ``minute.items`` 1, not 2)."""
    settling = asyncio.ensure_future(h.settle())
    with anyio.fail_after(10):
        moved = 0.0
        while not settling.done() and moved < at_most:
            await clock.advance(0.5)
            moved += 0.5
        await settling


def with_aggregation(extra: dict[str, Any], contracts: ContractSet | None = None) -> ContractSet:
    """``contracts`` (the shipped ones) with one more aggregation in the reducer's subcontract."""
    contracts = contracts or shipped()
    reducer = contracts.get("reducer")
    aggregation = reducer.subcontracts.aggregation
    assert aggregation is not None
    added = aggregation.model_copy(update={"aggregations": (*aggregation.aggregations, Aggregation(**extra))})
    subcontracts = reducer.subcontracts.model_copy(update={"aggregation": added})
    changed = reducer.model_copy(update={"subcontracts": subcontracts})
    return ContractSet(contracts.root, [changed if c is reducer else c for c in contracts])


async def test_a_max_of_datetimes_is_checkpointed_and_goes_on_after_a_restart(tmp_path: Path) -> None:
    # A datetime kept as such in the accumulator made every checkpoint fail (not JSON), so nothing was written again;
    # and one restored as text did not compare with the datetimes that came next.
    latest = {
        "name": "latest",
        "type": "NAMESPACE_GROUPING",
        "functions": [
            {"name": "last_done", "function": "max", "field": "completed_at"},
            {"name": "first_done", "function": "min", "field": "completed_at"},
        ],
    }
    contracts, url, clock = with_aggregation(latest), f"sqlite:///{tmp_path}/onex.db", ManualClock(start=T0)
    found = []
    for completed in ("2026-12-02T12:00:01+00:00", "2026-12-02T14:00:05+02:00", "2026-12-02T12:00:03+00:00"):
        async with Harness(["reducer"], root=ROOT, contracts=contracts, store_url=url, clock=clock) as h:
            await h.publish("WORKFLOW_COMPLETED", finished(completed_at=completed), partition_key=NS)
            await settle_retrying(h, clock)  # a checkpoint the store refused was retried
            [row] = await windows(h, "latest")
            state = await h.store.get_bridge_state(NS)
            assert state is not None
            found.append((state.total_workflows_processed, row.items, row.values, row.state["acc"]))
    first, later = "2026-12-02T12:00:01.000000+00:00", "2026-12-02T12:00:05.000000+00:00"  # 14:00:05+02:00 in UTC
    expected = [
        (1, 1, {"last_done": first, "first_done": first}),
        (2, 2, {"last_done": later, "first_done": first}),
        (3, 3, {"last_done": later, "first_done": first}),
    ]
    assert [(workflows, items, values) for workflows, items, values, _ in found] == expected
    assert all(values == acc for *_, values, acc in found)  # what a restart goes on from is what the values say


async def test_an_outcome_completed_without_a_timezone_is_counted_in_utc(tmp_path: Path) -> None:
    # Its event time raised inside the aggregator: the outcome was lost, and the batch's others counted only in memory.
    clock = ManualClock(start=T0)
    async with Harness(
        ["reducer"], root=ROOT, contracts=shipped(), store_url=f"sqlite:///{tmp_path}/onex.db", clock=clock
    ) as h:
        aware, naive = finished(), finished(completed_at="2026-12-02T12:00:02")
        for payload in (aware, naive):
            await h.publish("WORKFLOW_COMPLETED", payload, partition_key=NS)
        await settle_retrying(h, clock)
        state = await h.store.get_bridge_state(NS)
        [minute] = await windows(h, "per_minute")
        ids = [uuid.UUID(p["workflow_id"]) for p in (aware, naive)]
        assert await h.store.unprocessed("reducer.workflows", ids) == set()
        assert await h.store.list_dead_letters() == []
    assert state is not None
    assert (state.total_workflows_processed, state.total_items_aggregated) == (2, 2)
    assert (minute.window_id, minute.items) == (f"t:{int(datetime(2026, 12, 2, 12, 0, tzinfo=UTC).timestamp())}000", 2)


async def test_a_batch_the_aggregator_fails_on_counts_nothing_then_each_good_outcome_once(tmp_path: Path) -> None:
    # The aggregator raising midway (here a CUSTOM method, on one outcome) left the batch's earlier outcomes counted in
    # memory and every outcome remembered: the retry skipped them all, so nothing was written nor dead-lettered.
    picky = {"name": "picky", "type": "CUSTOM", "method": "picky", "group_by": ["namespace"]}
    picky_contracts = with_aggregation(picky)
    poison = finished()

    def picky_key(record: Any) -> str:
        if str(record.workflow_id) == poison["workflow_id"]:
            raise ValueError("this outcome cannot be aggregated")
        return "ok"

    clock = ManualClock(T0)
    async with Harness(
        ["reducer"], root=ROOT, contracts=shipped(), store_url=f"sqlite:///{tmp_path}/onex.db", clock=clock
    ) as h:
        node = h.runtime.node("reducer")
        assert isinstance(node, NodeReducer)
        aggregation = picky_contracts.get("reducer").subcontracts.aggregation
        assert aggregation is not None
        node.aggregator = Aggregator(aggregation, methods={"picky": picky_key}, clock=node.clock)
        good = [finished(), finished()]
        for payload in (good[0], poison, good[1]):  # one batch: the first counted before the poison raises
            await h.publish("WORKFLOW_COMPLETED", payload, partition_key=NS)
        await settle_retrying(h, clock)
        state = await h.store.get_bridge_state(NS)
        [minute] = await windows(h, "per_minute")
        [picked] = await windows(h, "picky")
        letters = await h.store.list_dead_letters()
        ids = [uuid.UUID(p["workflow_id"]) for p in (*good, poison)]
        unprocessed = await h.store.unprocessed(node.processed_key, ids)
    assert state is not None
    assert (state.total_workflows_processed, state.total_items_aggregated) == (2, 2)
    assert (minute.items, picked.items, picked.group) == (2, 2, {"namespace": NS, "key": "ok"})
    assert unprocessed == {uuid.UUID(poison["workflow_id"])}
    assert [letter.error_type for letter in letters] == ["ValueError"]


async def test_a_redelivery_is_recognised_however_many_workflows_wait_for_a_checkpoint(tmp_path: Path) -> None:
    # dedupe_window bounds the workflows remembered; evicting one not checkpointed yet (the store does not know it)
    # counted it again when it was delivered after dedupe_window newer ones.
    contracts = reducer_with(
        checkpoint="per_window", config={"window_items": 1_000, "window_ms": 600_000, "dedupe_window": 2}
    )
    async with Harness(
        ["reducer"], root=ROOT, contracts=contracts, store_url=f"sqlite:///{tmp_path}/onex.db", clock=ManualClock(T0)
    ) as h:
        node = h.runtime.node("reducer")
        assert isinstance(node, NodeReducer)
        first = finished()
        for payload in (first, finished(), finished(), first):  # the first again, after two newer ones
            await h.publish("WORKFLOW_COMPLETED", payload, partition_key=NS)
            await h.settle()
        await node.checkpoint()
        state = await h.store.get_bridge_state(NS)
        [minute] = await windows(h, "per_minute")
        # Once checkpointed, the window bounds what is remembered again; the store recognises the rest.
        await h.publish("WORKFLOW_COMPLETED", first, partition_key=NS)
        await h.settle()
        await node.checkpoint()
        again = await h.store.get_bridge_state(NS)
        remembered = len(node._seen)
    assert state is not None
    assert again is not None
    assert (state.total_workflows_processed, state.total_items_aggregated, minute.items) == (3, 3, 3)
    assert again.total_workflows_processed == 3
    assert remembered == 2
