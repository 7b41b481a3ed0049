"""The database adapter (``nodes/database_adapter_effect``): a bad row is dead-lettered, a store outage is not.

The adapter is hosted alone in a ``Harness``; the test publishes what the other nodes would. The whole graph
through a PostgreSQL outage is in ``tests/integration/test_postgres_workflow.py``.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from onex._postgres import PostgresStore
from onex._sqlite import SqliteStore
from onex.contracts import load_contracts
from onex.envelope import ModelStateTransitions, OnexEnvelopeV1
from onex.nodes import Event, Lifecycle
from onex.resilience import BreakerState
from onex.store import WorkflowRow, WriteBatch
from onex.testing import Harness

from nodes.database_adapter_effect.v1_0_0.node import NodeDatabaseAdapterEffect, merge, share_out
from nodes.models import ModelAggregationIntent, ModelStampCreated, ModelWorkflowFinished
from tests.fixtures.postgres import CuttableProxy, through

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
ADAPTER = "database_adapter_effect"


def outcome(i: int, **stamp: Any) -> dict[str, Any]:
    """A WORKFLOW_COMPLETED payload as the orchestrator publishes it: one workflow row, its steps and its stamp
    (one metadata_stamps row)."""
    workflow_id = str(uuid.uuid4())
    return {
        "workflow_id": workflow_id,
        "state": "completed",
        "state_seq": 2,
        "namespace": "ns",
        "file_path": f"src/{i}.py",
        "started_at": "2024-05-01T12:00:00+00:00",
        "completed_at": "2024-05-01T12:00:01+00:00",
        "execution_time_ms": 1000.0,
        "steps": [{"step_name": "stamp", "step_order": 0, "status": "completed", "attempts": 1}],
        "stamp": {
            "stamp_id": str(uuid.uuid4()),
            "file_path": f"src/{i}.py",
            "file_hash": f"{i:064x}",
            "file_size": 10 + i,
            "file_type": "python",
            "stamp_type": "lightweight",
            "status": "stamped",
            **stamp,
        },
    }


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` until it holds (health and the writer's counters have no event to wait on); the caller's
    ``fail_after`` bounds the wait."""
    for _ in itertools.count():
        if condition():
            return
        await anyio.sleep(0.01)


def adapter_of(h: Harness) -> NodeDatabaseAdapterEffect:
    node = h.runtime.node(ADAPTER)
    assert isinstance(node, NodeDatabaseAdapterEffect)
    return node


async def test_a_value_the_store_refuses_is_dead_lettered_and_does_not_trip_the_breaker(store_url: str) -> None:
    async with Harness([ADAPTER], root=ROOT, store_url=store_url) as h:
        adapter = adapter_of(h)
        bad = await h.publish("WORKFLOW_COMPLETED", outcome(1, file_size=2**70))  # beyond any 64-bit column
        dead = await h.wait_for("DEAD_LETTER", lambda e: e.causation_id == bad.event_id, timeout=30)

        assert dead.payload["attempts"] == adapter.contract.resilience.retry.max_attempts
        assert dead.payload["error_type"] == "StoreError"
        assert "metadata_stamps" in dead.payload["error"]
        # The store answered every one of those attempts: it is not unavailable, and nothing is held.
        assert adapter.breaker.state is BreakerState.CLOSED
        assert adapter.health() == "HEALTHY"
        assert adapter.statistics().pending_batches == 0

        good = outcome(2)
        await h.publish("WORKFLOW_COMPLETED", good)
        await h.settle()
        assert [s.file_path for s in await h.store.get_stamps_by_hash(good["stamp"]["file_hash"])] == ["src/2.py"]
        assert await h.store.count("metadata_stamps") == 1
        # The workflow's row, its steps and its stamp were written together; the bad one's none of them.
        assert await h.store.count("workflow_executions") == await h.store.count("workflow_steps") == 1
        assert h.dead_letters() == [dead]


async def test_draining_while_postgres_is_unreachable_ends_and_leaves_the_writes_for_redelivery(
    postgres_dsn: str,
) -> None:
    contracts = load_contracts(ROOT, env={"ONEX_DRAIN_TIMEOUT_MS": "200"})
    proxy = CuttableProxy.before(postgres_dsn)
    async with proxy as port:
        proxy_url = f"{through(postgres_dsn, port)}&retry_attempts=1"  # the store gives up after one attempt
        async with Harness([ADAPTER], root=ROOT, contracts=contracts, store_url=proxy_url) as h:
            adapter = adapter_of(h)
            await proxy.sever()
            sent = [outcome(i) for i in range(3)]
            try:
                for payload in sent:
                    await h.publish("WORKFLOW_COMPLETED", payload)
                with anyio.fail_after(30):
                    # Three rows per outcome: the workflow, its step, its stamp.
                    await until(
                        lambda: adapter.health() == "DEGRADED" and adapter.statistics().pending_rows == 3 * len(sent)
                    )
                    await adapter.stop()  # drains: the writes in hand wait 200 ms more, then are let go

                assert adapter.lifecycle is Lifecycle.STOPPED
                await h.settle()  # the recorder has seen the STOPPED heartbeat
                assert h.dead_letters() == []
                stats = h.bus.statistics()
                assert (stats.dead_lettered, stats.buffered) == (0, len(sent))  # unacknowledged, back in the group
            finally:
                proxy.mend()

            # The next adapter of the group gets them, and writes them now that the server is back.
            successor = NodeDatabaseAdapterEffect(adapter.contract, bus=h.bus, store=h.store, settings=h.settings)
            await successor.start()
            try:
                with anyio.fail_after(30):
                    await h.settle()
            finally:
                await successor.stop()
            assert successor.statistics().commits >= 1
            for payload in sent:
                [row] = await h.store.get_stamps_by_hash(payload["stamp"]["file_hash"])
                assert str(row.id) == payload["stamp"]["stamp_id"]
            assert await h.store.count("metadata_stamps") == len(sent)
            assert h.dead_letters() == []


async def test_a_stamps_row_comes_from_its_outcome_and_a_stamp_created_handed_over_writes_it_too(
    tmp_path: Path,
) -> None:
    """The shipped contract does not consume STAMP_CREATED: the outcome writes a workflow's final state, its steps and
    its stamp in one transaction. The node still writes the row of a STAMP_CREATED handed to it (a contract that
    consumes the event, as the ONEX mapping has it); the outcome's copy of that row is then dropped by its key."""
    async with Harness([ADAPTER], root=ROOT, store_url=f"sqlite:///{tmp_path}/onex.db") as h:
        adapter = adapter_of(h)
        events = adapter.contract.subcontracts.event_type
        assert events is not None
        assert "STAMP_CREATED" not in {c.event_name for c in events.consumes}
        batches: list[WriteBatch] = []
        to_batch = adapter.to_batch

        def spy(events: Any) -> WriteBatch:
            batches.append(to_batch(events))
            return batches[-1]

        adapter.to_batch = spy  # type: ignore[method-assign]
        done, other = outcome(1, file_mode="0644"), outcome(2)
        await h.publish("STAMP_CREATED", stamp_created(done))  # nobody here consumes it
        await h.publish("WORKFLOW_COMPLETED", done)
        await h.settle()
        assert [[str(s.id) for s in b.stamps] for b in batches] == [[done["stamp"]["stamp_id"]]]
        assert [len(b.workflows) for b in batches] == [1]
        (row,) = await h.store.get_stamps_by_hash(done["stamp"]["file_hash"])
        assert str(row.id) == done["stamp"]["stamp_id"]
        assert row.file_metadata["mode"] == "0644"

        await adapter.persist([event(ModelStampCreated, stamp_created(other))])
        await adapter.persist([event(ModelWorkflowFinished, other)])
        assert [[str(s.id) for s in b.stamps] for b in batches[1:]] == [[other["stamp"]["stamp_id"]]] * 2
        assert await h.store.count("metadata_stamps") == 2
        assert await h.store.count("workflow_executions") == await h.store.count("workflow_steps") == 2


# --- writers: transactions in flight at once -------------------------------------------------------------------------


def stamp_created(payload: dict[str, Any]) -> dict[str, Any]:
    """The STAMP_CREATED of an ``outcome``'s stamp."""
    return {"workflow_id": payload["workflow_id"], "namespace": payload["namespace"], **payload["stamp"]}


def event(model: Any, payload: dict[str, Any]) -> Event:
    return Event(OnexEnvelopeV1(event_type="X", source_node_id="test", payload=payload), model.model_validate(payload))


def test_share_out_gives_a_files_events_one_writer_and_spreads_the_files() -> None:
    """A stamp's outcome and STAMP_CREATED go to the writer of its file, whichever workflow stamped it (a restamp's
    version is numbered from the rows committed before), an aggregate to the writer of its namespace; transitions
    anywhere. Within a share the events keep their order."""
    events = []
    for i in range(200):
        first, again = outcome(i), outcome(i)  # two workflows stamping the same file
        events += [
            event(ModelStampCreated, stamp_created(first)),
            event(ModelWorkflowFinished, first),
            event(ModelWorkflowFinished, again),
        ]
    for ns in ("ns", "other"):
        totals = dict.fromkeys(
            (
                "version",
                "total_workflows_processed",
                "total_items_aggregated",
                "total_size_bytes",
                "unique_file_hashes",
            ),
            1,
        )
        intent = {"namespace": ns, **totals, "current_fsm_state": "active", "aggregated_at": T1.isoformat()}
        events.append(event(ModelAggregationIntent, intent))
    events += [event(ModelStateTransitions, {"transitions": []}) for _ in range(50)]

    shares = share_out(events, 2)

    assert sorted(e.envelope.event_id for share in shares for e in share) == sorted(e.envelope.event_id for e in events)
    assert all(share == [e for e in events if e in share] for share in shares)  # the order of ``events``
    writer_of: dict[tuple[str, str | None], int] = {}
    for index, share in enumerate(shares):
        for e in share:
            if not isinstance(e.payload, ModelStateTransitions):
                key = (e.payload.namespace, getattr(e.payload, "file_path", None))
                assert writer_of.setdefault(key, index) == index, key
    files = [writer for (_, path), writer in writer_of.items() if path is not None]
    assert len(files) == 200
    assert 50 < files.count(0) < 150  # spread: each writer has a fair share of the files
    assert share_out(events, 1) == [events]


async def test_as_many_writers_as_the_store_runs_transactions_at_once(store_url: str) -> None:
    """PostgreSQL (a pool) takes the contract's two writers; SQLite writes through one thread: one."""
    async with Harness([ADAPTER], root=ROOT, store_url=store_url) as h:
        assert adapter_of(h).statistics().writers == (2 if isinstance(h.store, PostgresStore) else 1)


def keys(batch: WriteBatch) -> set[tuple[Any, ...]]:
    """The rows ``batch`` writes or locks, by key: its stamps (by id and by file) and its workflows."""
    return (
        {("stamp", s.id) for s in batch.stamps}
        | {("file", s.namespace, s.file_path) for s in batch.stamps}
        | {("workflow", w.correlation_id) for w in batch.workflows}
    )


async def test_below_split_rows_the_shares_go_in_one_transaction(postgres_dsn: str) -> None:
    """A hundred outcomes (300 rows, fewer than the contract's split_rows) are written as a single writer would: one
    transaction at a time, holding both shards' rows."""
    async with Harness([ADAPTER], root=ROOT, store_url=postgres_dsn) as h:
        adapter = adapter_of(h)
        assert adapter.config.split_rows > 300
        apply, in_flight, most = h.store.apply, [0], [0]

        async def counted(batch: WriteBatch) -> None:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
            try:
                await apply(batch)
            finally:
                in_flight[0] -= 1

        h.store.apply = counted  # type: ignore[method-assign]
        for i in range(100):
            await h.publish("WORKFLOW_COMPLETED", outcome(i))
        with anyio.fail_after(30):
            await h.settle()

        assert most[0] == 1
        assert adapter.statistics().commits >= 1
        assert await h.store.count("metadata_stamps") == await h.store.count("workflow_executions") == 100


async def test_a_few_rows_wait_for_the_transaction_in_flight(postgres_dsn: str) -> None:
    """Once a transaction is in flight, fewer than split_rows rows of the other shard do not start one of their own:
    they wait, and go in one transaction with the rest (a light load stays one transaction at a time)."""
    async with Harness([ADAPTER], root=ROOT, store_url=postgres_dsn) as h:
        adapter = adapter_of(h)
        adapter.config = adapter.config.model_copy(update={"split_rows": 1})  # the first goes alone
        apply, begun, first, release = h.store.apply, list[int](), anyio.Event(), anyio.Event()

        async def held(batch: WriteBatch) -> None:
            begun.append(len(batch))
            if len(begun) == 1:
                first.set()
                await release.wait()
            await apply(batch)

        h.store.apply = held  # type: ignore[method-assign]
        async with anyio.create_task_group() as tg:
            tg.start_soon(adapter.persist, [event(ModelWorkflowFinished, outcome(0))])
            try:
                with anyio.fail_after(30):
                    await first.wait()
                    adapter.config = adapter.config.model_copy(update={"split_rows": 1_000})
                    rest = [event(ModelWorkflowFinished, outcome(i)) for i in range(1, 21)]
                    assert all(share_out(rest, 2))  # files of both shards
                    tg.start_soon(adapter.persist, rest)
                    await until(lambda: adapter.statistics().pending_rows == 3 * 21)  # all handed to the writer
                    await until(lambda: not adapter._wake.is_set())  # and the writer has looked at them
                    assert adapter.statistics().transactions == 1
            finally:
                release.set()

        assert begun == [3, 3 * 20]
        assert adapter.statistics().transactions == 0
        assert await h.store.count("metadata_stamps") == 21


async def test_two_transactions_in_flight_never_write_the_same_row(postgres_dsn: str) -> None:
    """Two hundred files stamped at once, one of them by twenty workflows. With split_rows 1 every shard takes a
    transaction of its own, and the first is held until the second has begun, so the two are in flight together;
    shared out by file, they hold no row in common. Shared out any other way, two restamps of a file could be given one
    version (the store numbers a file's stamps from the rows committed before). The file's stamps are numbered 1 to
    20."""
    async with Harness([ADAPTER], root=ROOT, store_url=postgres_dsn) as h:
        assert isinstance(h.store, PostgresStore)
        adapter = adapter_of(h)
        adapter.config = adapter.config.model_copy(update={"split_rows": 1})
        apply, second, release = h.store.apply, anyio.Event(), anyio.Event()
        in_flight: list[set[tuple[Any, ...]]] = []
        shared: set[tuple[Any, ...]] = set()  # keys of rows in two transactions in flight together

        async def held(batch: WriteBatch) -> None:
            mine = keys(batch)
            for other in in_flight:
                shared.update(mine & other)
            in_flight.append(mine)
            if len(in_flight) == 2:
                second.set()
            try:
                if not second.is_set():
                    await release.wait()  # the first waits until the second has begun
                await apply(batch)
            finally:
                in_flight.remove(mine)

        h.store.apply = held  # type: ignore[method-assign]
        sent = [outcome(i if i % 11 else 999, file_hash=f"{i:064x}") for i in range(220)]
        for payload in sent:
            await h.publish("WORKFLOW_COMPLETED", payload)
        try:
            with anyio.fail_after(30):
                await second.wait()
        finally:
            release.set()
        with anyio.fail_after(30):
            await h.settle()

        assert shared == set()
        assert h.store.statistics().retries == 0
        assert await h.store.count("metadata_stamps") == await h.store.count("workflow_executions") == len(sent)
        async with h.store.connection() as conn:
            versions = await conn.fetch(
                "SELECT file_path, array_agg(version ORDER BY version) AS v FROM metadata_stamps GROUP BY file_path"
            )
        by_file = {r["file_path"]: list(r["v"]) for r in versions}
        assert by_file["src/999.py"] == list(range(1, 21))
        assert all(v == [1] for path, v in by_file.items() if path != "src/999.py")


# --- one row per workflow per commit ---------------------------------------------------------------------------------

T1 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
T2 = datetime(2024, 5, 1, 12, 0, 1, tzinfo=UTC)


def started(cid: uuid.UUID, **fields: Any) -> WorkflowRow:
    return WorkflowRow(
        cid, "stamp_workflow", "processing", 1, namespace="ns", file_path="a.py", started_at=T1, **fields
    )


def finished(cid: uuid.UUID, **fields: Any) -> WorkflowRow:
    values: dict[str, Any] = {"file_hash": "h", "completed_at": T2, "execution_time_ms": 1.5, **fields}
    return WorkflowRow(cid, "stamp_workflow", "completed", 2, **values)


PAIRS: dict[str, Callable[[uuid.UUID], tuple[WorkflowRow, WorkflowRow]]] = {
    "started then finished": lambda cid: (started(cid), finished(cid)),
    "finished then started": lambda cid: (finished(cid), started(cid)),
    "the finished row lacks what the started one has": lambda cid: (started(cid), finished(cid, namespace=None)),
    "equal state_seq: the later wins, nulls do not overwrite": lambda cid: (
        finished(cid, error_message="first"),
        finished(cid, file_hash=None, error_message="second"),
    ),
    "metadata merges, the winner's keys on top": lambda cid: (
        started(cid, metadata={"a": 1, "b": 1}),
        finished(cid, metadata={"b": 2, "c": 2}),
    ),
    "the lower row's metadata under the winner's": lambda cid: (
        finished(cid, metadata={"b": 2}),
        started(cid, metadata={"a": 1, "b": 1}),
    ),
}


@pytest.mark.parametrize("case", list(PAIRS))
async def test_merging_batches_combines_a_workflows_rows_as_the_store_would(tmp_path: Path, case: str) -> None:
    one, other = uuid.uuid4(), uuid.uuid4()
    async with SqliteStore(f"sqlite:///{tmp_path}/onex.db") as store:
        await store.upgrade()
        first, second = PAIRS[case](one)
        await store.apply(WriteBatch(workflows=[first]))  # one row per transaction: the store merges them
        await store.apply(WriteBatch(workflows=[second]))
        first, second = PAIRS[case](other)
        merged = merge([WriteBatch(workflows=[first]), WriteBatch(workflows=[second])])
        assert len(merged.workflows) == 1
        await store.apply(merged)

        by_store, by_merge = await store.get_workflow(one), await store.get_workflow(other)
    assert by_store is not None
    assert by_merge is not None
    ignored = {"correlation_id", "created_at", "updated_at"}
    assert {k: v for k, v in asdict(by_merge).items() if k not in ignored} == {
        k: v for k, v in asdict(by_store).items() if k not in ignored
    }
