"""What only ``SqliteStore`` promises: its URL, file, WAL mode, thread, migrations table and error messages.

The behaviour every store shares is in ``tests/test_store_conformance.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from onex import _sqlite, _sqlite_exec, _sqlite_writes, store
from onex._sqlite import Migration, SqliteStore, database_path
from onex.exceptions import StoreError, StoreUnavailable
from onex.store import EventLogRow, HeartbeatRow, RegistrationRow, StampRow, StepRow, WorkflowRow, WriteBatch
from onex.stores import open_store

pytestmark = pytest.mark.anyio

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection to look at the file from outside the store."""
    conn = sqlite3.connect(path)
    try:
        yield conn
    finally:
        conn.close()


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def store_threads(prefix: str = "onex-sqlite_") -> set[threading.Thread]:
    """The live threads of stores: their database threads, or with ``onex-sqlite-checkpoint`` their checkpointers,
    with ``onex-sqlite-read_`` their readers."""
    return {t for t in threading.enumerate() if t.name.startswith(prefix)}


def stamp(**fields: object) -> StampRow:
    values: dict[str, object] = {
        "id": uuid.uuid4(),
        "file_hash": "h",
        "file_path": f"{uuid.uuid4()}.py",
        "file_size": 1,
        "namespace": "ns",
        "stamp_type": "lightweight",
        "file_type": "python",
    }
    values.update(fields)
    return StampRow(**values)  # type: ignore[arg-type]


# --- URLs ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("store_url", "path"),
    [
        ("sqlite:///.onex/onex.db", ".onex/onex.db"),
        ("sqlite:///onex.db", "onex.db"),
        ("sqlite:////var/lib/onex/onex.db", "/var/lib/onex/onex.db"),
        ("sqlite://:memory:", ":memory:"),
        ("sqlite:///:memory:", ":memory:"),
    ],
)
def test_url_to_path(store_url: str, path: str) -> None:
    assert database_path(store_url) == path
    assert isinstance(open_store(store_url), SqliteStore)


@pytest.mark.parametrize(
    "store_url", ["sqlite://", "sqlite:///", "sqlite:relative.db", "sqlite://host/x.db", "sqlite:///x.db?mode=ro"]
)
def test_invalid_urls_are_refused_at_once(store_url: str) -> None:
    with pytest.raises(ValueError, match="SQLite"):
        SqliteStore(store_url)


# --- the file ---------------------------------------------------------------------------------------------------


async def test_the_directory_is_created_and_the_file_is_in_wal_mode(tmp_path: Path) -> None:
    db = tmp_path / "a" / "b" / "c" / "onex.db"
    async with SqliteStore(url(db)) as store:
        await store.upgrade()
        await store.apply(WriteBatch(stamps=[stamp()]))
        assert await anyio.Path(db).is_file()
        assert await anyio.Path(f"{db}-wal").exists()  # WAL, while open
        health = await store.health()
        assert health.status == "ok"
        assert "journal wal" in health.detail
        with raw(db) as conn:  # a second reader sees committed data while the store is open
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert conn.execute("SELECT count(*) FROM metadata_stamps").fetchone() == (1,)
    assert not await anyio.Path(f"{db}-wal").exists()  # the last connection checkpointed and removed it


async def test_relative_paths_are_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with SqliteStore("sqlite:///.onex/onex.db") as store:
        await store.upgrade()
    assert await anyio.Path(tmp_path / ".onex" / "onex.db").is_file()


async def test_timestamps_are_fixed_width_utc_text(tmp_path: Path) -> None:
    db = tmp_path / "onex.db"
    cid = uuid.uuid4()
    async with SqliteStore(url(db)) as store:
        await store.upgrade()
        await store.apply(
            WriteBatch(
                workflows=[
                    WorkflowRow(cid, "stamp", "done", 1, started_at=T0.replace(microsecond=0), metadata={"é": 1})
                ]
            )
        )
    with raw(db) as conn:
        row = conn.execute(
            "SELECT correlation_id, started_at, metadata FROM workflow_executions WHERE correlation_id = ?",
            (str(cid),),
        ).fetchone()
    # Microseconds always present: one width, so text order is time order; compact JSON, Unicode kept.
    assert row == (str(cid), "2024-05-01T12:00:00.000000+00:00", '{"é":1}')


async def test_an_in_memory_store(tmp_path: Path) -> None:
    async with SqliteStore("sqlite://:memory:") as store:
        assert await store.upgrade() == [m.name for m in _sqlite._migrations()]
        await store.apply(WriteBatch(stamps=[stamp()]))
        assert await store.count("metadata_stamps") == 1
        assert "journal memory" in (await store.health()).detail
    assert [p async for p in anyio.Path(tmp_path).iterdir()] == []


async def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.db"
    bogus.write_text("not a database, just some text that is long enough to have a header " * 20)
    before = store_threads()
    with pytest.raises(StoreError, match=r"notes\.db.*not a database"):
        await SqliteStore(url(bogus)).open()
    for thread in store_threads() - before:  # the failed open's thread closes what it opened, then exits
        thread.join(timeout=10)
        assert not thread.is_alive()


async def test_a_directory_where_the_file_should_be(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open SQLite database"):
        await SqliteStore(url(tmp_path)).open()


# --- one thread, one connection ----------------------------------------------------------------------------------


async def test_every_call_runs_on_one_thread_that_stops_at_aclose(tmp_path: Path) -> None:
    before, checkpointers_before = store_threads(), store_threads("onex-sqlite-checkpoint")
    readers_before = store_threads("onex-sqlite-read_")
    store = SqliteStore(url(tmp_path / "onex.db"))
    await store.open()
    await store.upgrade()
    mine = store_threads() - before
    assert len(mine) == 1
    (thread,) = mine
    assert thread is not threading.current_thread()

    await asyncio.gather(*(store.apply(WriteBatch(stamps=[stamp()])) for _ in range(50)))
    assert store_threads() - before == {thread}  # no second thread, however many calls were in flight
    assert await store.count("metadata_stamps") == 50
    checkpointers = store_threads("onex-sqlite-checkpoint") - checkpointers_before
    assert len(checkpointers) == 1  # the background checkpoints' thread, started after the first commit

    readers = store_threads("onex-sqlite-read_") - readers_before
    assert len(readers) == 1  # reads run on a thread of their own, started by the first read (count, here)

    await store.aclose()
    assert not thread.is_alive()
    for other in checkpointers | readers:
        other.join(timeout=10)  # asked to stop by aclose; only this test waits for the thread to go
        assert not other.is_alive()


async def _nothing() -> None:
    return None


async def handed_over(store: SqliteStore, rows: int) -> None:
    """Let the ``apply()`` tasks just created take their first step, in which each hands its batch over; fails
    unless ``rows`` rows then wait (the store's ``queued_writes``). No time: the loop runs callbacks in the order they
    were scheduled, so a task created after them has run once each of them took its first step."""
    await asyncio.ensure_future(_nothing())
    assert store._queued == rows, f"{store._queued} rows handed over, expected {rows}"


async def test_aclose_finishes_the_writes_already_queued(tmp_path: Path) -> None:
    db = tmp_path / "onex.db"
    store = SqliteStore(url(db))
    await store.open()
    await store.upgrade()
    writes = [asyncio.ensure_future(store.apply(WriteBatch(stamps=[stamp() for _ in range(100)]))) for _ in range(10)]
    await handed_over(store, 1_000)  # the writes are submitted to the thread
    await store.aclose()
    await asyncio.gather(*writes)
    with raw(db) as conn:
        assert conn.execute("SELECT count(*) FROM metadata_stamps").fetchone() == (1_000,)


async def hold_thread(store: SqliteStore) -> tuple[asyncio.Future[None], threading.Event]:
    """Keep the store's thread busy (a ``run_sync`` call) until the returned event is set; returns that call."""
    entered, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        entered.set()
        release.wait(30)

    holding = asyncio.ensure_future(store.run_sync(hold))
    assert await asyncio.to_thread(entered.wait, 30)
    return holding, release


async def in_one_group(
    store: SqliteStore, batches: list[WriteBatch], told: list[int] | None = None
) -> tuple[list[BaseException | None], int]:
    """Apply ``batches`` while the store's thread is held, so that they are written as one group: each call's error
    (None when it succeeded) and how many transactions the group took; ``told``, when given, gets the batches'
    indexes in the order their callers were told."""
    holding, release = await hold_thread(store)
    calls = [asyncio.ensure_future(store.apply(batch)) for batch in batches]
    for index, call in enumerate(calls):
        if told is not None:
            call.add_done_callback(functools.partial(lambda index, _: told.append(index), index))
    await handed_over(store, sum(len(batch) + len(batch.processed_event_ids) for batch in batches))
    before = store.transactions
    release.set()
    await holding
    errors = await asyncio.gather(*calls, return_exceptions=True)
    return [e if isinstance(e, BaseException) else None for e in errors], store.transactions - before


async def test_writes_made_while_the_thread_is_busy_are_committed_together_in_one_transaction(
    tmp_path: Path,
) -> None:
    async with SqliteStore(url(tmp_path / "onex.db"), writer="thread") as store:
        assert isinstance(store, SqliteStore)
        await store.upgrade()
        holding, release = await hold_thread(store)
        calls = [asyncio.ensure_future(store.apply(WriteBatch(stamps=[stamp(), stamp()]))) for _ in range(6)]
        await handed_over(store, 12)
        calls[2].cancel()  # its caller gives up: its batch is written all the same
        before = store.transactions
        release.set()
        await holding
        await asyncio.gather(*calls[:2], *calls[3:])
        assert store.transactions - before == 1
        assert await store.count("metadata_stamps") == 12
        assert calls[2].cancelled()


def good_and_bad_batches() -> dict[str, WriteBatch]:
    """Two good batches, one whose row fails as SQLite writes it and one whose row cannot be encoded."""
    return {
        "good": WriteBatch(stamps=[stamp(file_path="good.py")]),
        "fails": WriteBatch(stamps=[stamp(file_path="undone.py"), stamp(file_size=2**63)]),  # fails executing
        "unencodable": WriteBatch(stamps=[stamp(stamp_data={"x": {1, 2}})]),  # fails before BEGIN
        "also good": WriteBatch(
            workflows=[WorkflowRow(uuid.uuid4(), "stamp_workflow", "completed", 2)],
            stamps=[stamp(file_path="also.py")],
        ),
    }


async def only_the_bad_batches_failed(
    store: SqliteStore, batches: dict[str, WriteBatch], errors: list[BaseException | None]
) -> None:
    """Each of ``good_and_bad_batches`` got its own outcome, and only the good ones' rows are stored."""
    outcomes = dict(zip(batches, errors, strict=True))
    assert outcomes["good"] is None
    assert outcomes["also good"] is None
    assert isinstance(outcomes["fails"], StoreError)
    assert "insert of metadata_stamps failed" in str(outcomes["fails"])
    assert "the batch was rolled back" in str(outcomes["fails"])
    assert isinstance(outcomes["unencodable"], StoreError)
    assert "cannot be stored" in str(outcomes["unencodable"])
    stored = {s.file_path for s in await store.list_stamps("ns", limit=100)}
    assert stored == {"good.py", "also.py"}  # none of the failed batch's rows, the good one either


async def test_a_batch_that_fails_in_a_shared_transaction_is_rolled_back_alone(tmp_path: Path) -> None:
    async with SqliteStore(url(tmp_path / "onex.db"), writer="thread") as store:
        assert isinstance(store, SqliteStore)
        await store.upgrade()
        batches = good_and_bad_batches()
        errors, transactions = await in_one_group(store, list(batches.values()))
        await only_the_bad_batches_failed(store, batches, errors)
        assert transactions == 1
        assert await store.count("workflow_executions") == 1


async def test_a_shared_transaction_writes_each_tables_rows_of_every_batch_together(tmp_path: Path) -> None:
    # One statement a table for the whole group, where there was one a batch and a savepoint around each: every
    # statement the database thread runs hands the interpreter lock over twice (see the README's design decisions).
    async with SqliteStore(url(tmp_path / "onex.db"), writer="thread") as store:
        assert isinstance(store, SqliteStore)
        await store.upgrade()
        statements: list[str] = []
        await store.run_sync(lambda conn: conn.set_trace_callback(statements.append))
        batches = [
            WriteBatch(
                workflows=[WorkflowRow(uuid.uuid4(), "stamp_workflow", "processing", 1)],
                stamps=[stamp(), stamp()],
                processed_event_ids=[uuid.uuid4()],
                consumer=f"c{i}",
            )
            for i in range(6)
        ]
        errors, transactions = await in_one_group(store, batches)
        await store.run_sync(lambda conn: conn.set_trace_callback(None))

        assert errors == [None] * 6
        assert transactions == 1
        # The trace repeats a statement at each trigger it runs (the stamps have two): each run counted once.
        written = [s.split(" AS ")[0] for s, _ in itertools.groupby(statements) if s.startswith("INSERT INTO")]
        # 12 stamps, 6 workflows, 6 processed ids: one statement each (up to EXACT_ROWS rows are one statement).
        assert written.count("INSERT INTO metadata_stamps") == 1
        assert written.count("INSERT INTO workflow_executions") == 1
        assert written.count("INSERT INTO processed_events") == 1
        assert not [s for s in statements if s.startswith("SAVEPOINT")]  # none around the group, none a batch
        assert [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT")] == ["BEGIN IMMEDIATE", "COMMIT"]
        assert await store.count("metadata_stamps") == 12
        assert await store.count("workflow_executions") == 6
        for i, batch in enumerate(batches):
            assert await store.unprocessed(f"c{i}", batch.processed_event_ids) == set()


@contextlib.asynccontextmanager
async def migrated(tmp_path: Path, writer: str = "thread") -> AsyncIterator[SqliteStore]:
    """A migrated store. Its writes on the database thread by default: the tests of groups hold that thread, or trace
    its connection; the writer process runs the same code (``_sqlite_exec.write_group``)."""
    async with SqliteStore(url(tmp_path / "onex.db"), writer=writer) as store:
        assert isinstance(store, SqliteStore)
        await store.upgrade()
        yield store


def checkpoint(state_seq: int = 1) -> WriteBatch:
    """An orchestrator's checkpoint: workflow rows alone."""
    return WriteBatch(workflows=[WorkflowRow(uuid.uuid4(), "stamp_workflow", "processing", state_seq)])


async def traced(store: SqliteStore, statements: list[str]) -> None:
    await store.run_sync(lambda conn: conn.set_trace_callback(statements.append))


async def test_a_write_of_one_statement_goes_without_begin_and_commit(tmp_path: Path) -> None:
    # One statement is a transaction by itself: BEGIN and COMMIT would each hand the interpreter lock over for nothing.
    async with migrated(tmp_path) as store:
        statements: list[str] = []
        await traced(store, statements)
        await store.apply(WriteBatch(workflows=[checkpoint().workflows[0] for _ in range(3)]))
        errors, transactions = await in_one_group(store, [checkpoint(), checkpoint()])  # merged: still one
        assert (errors, transactions) == ([None, None], 1)
        assert [s.split(" AS ")[0] for s in statements] == ["INSERT INTO workflow_executions"] * 2
        assert await store.count("workflow_executions") == 5

        # A row that fails fails its batch whole, and leaves no transaction open behind it.
        statements.clear()
        with pytest.raises(StoreError, match="upsert of workflow_executions failed"):
            await store.apply(WriteBatch(workflows=[*checkpoint().workflows, *checkpoint(2**63).workflows]))
        assert not [s for s in statements if s.startswith("BEGIN")]
        assert await store.count("workflow_executions") == 5
        await store.apply(checkpoint())
        assert await store.count("workflow_executions") == 6


async def test_a_group_whose_one_statement_fails_is_written_again_batch_by_batch(tmp_path: Path) -> None:
    async with migrated(tmp_path) as store:
        good, bad, also = checkpoint(), checkpoint(2**63), checkpoint()  # 2**63: refused binding, in the statement
        errors, transactions = await in_one_group(store, [good, bad, also])
        assert errors[0] is None
        assert errors[2] is None
        assert isinstance(errors[1], StoreError)
        assert "the batch was rolled back" in str(errors[1])
        assert transactions == 1
        stored = {
            w.correlation_id
            for w in await store.get_workflows([b.workflows[0].correlation_id for b in (good, bad, also)])
        }
        assert stored == {good.workflows[0].correlation_id, also.workflows[0].correlation_id}


async def test_a_group_whose_merged_write_fails_is_rolled_back_and_written_again_batch_by_batch(
    tmp_path: Path,
) -> None:
    # No savepoint around the merged write (two statements saved, a group's commonest case): a row that fails
    # rolls the transaction back, and the group is written again batch by batch.
    async with migrated(tmp_path) as store:
        statements: list[str] = []
        await traced(store, statements)
        batches = [WriteBatch(stamps=[stamp(file_path="a.py")]), WriteBatch(stamps=[stamp(file_size=2**63)])]
        errors, transactions = await in_one_group(store, batches)
        assert errors[0] is None
        assert isinstance(errors[1], StoreError)
        assert transactions == 1
        marks = [s for s in statements if s.split()[0] in ("BEGIN", "ROLLBACK", "COMMIT", "SAVEPOINT", "RELEASE")]
        assert marks == [
            "BEGIN IMMEDIATE",  # the merged write, which fails
            "ROLLBACK",
            "BEGIN IMMEDIATE",
            *("SAVEPOINT onex_batch", "RELEASE onex_batch"),
            *("SAVEPOINT onex_batch", "ROLLBACK TO onex_batch", "RELEASE onex_batch"),
            "COMMIT",
        ]
        assert {s.file_path for s in await store.list_stamps("ns")} == {"a.py"}


async def test_checkpoints_are_written_ahead_of_the_rest_of_their_group(tmp_path: Path) -> None:
    # An orchestrator's outcomes wait for their checkpoint; the database adapter's rows wait for nobody but itself.
    # So in a group, the batches of workflow rows alone go first, in a write of their own, and their callers are told
    # before the rest is written.
    async with migrated(tmp_path) as store:
        statements: list[str] = []
        await traced(store, statements)
        rows = WriteBatch(stamps=[stamp()], processed_event_ids=[uuid.uuid4()], consumer="adapter")
        batches = [rows, checkpoint(), WriteBatch(stamps=[stamp()]), checkpoint()]
        told: list[int] = []
        assert await in_one_group(store, batches, told) == ([None] * 4, 2)
        assert told[:2] == [1, 3]
        first = [s.split(" AS ")[0] for s in statements[:2]]
        assert first == ["INSERT INTO workflow_executions", "BEGIN IMMEDIATE"]
        assert await store.count("workflow_executions") == 2
        assert await store.count("metadata_stamps") == 2


async def test_a_failure_of_the_thread_itself_reaches_the_callers_of_both_parts_of_a_group(tmp_path: Path) -> None:
    async with migrated(tmp_path) as store:

        def broken(batches: list[WriteBatch]) -> list[BaseException | None]:
            raise RuntimeError("the thread broke")

        written = store._group._write
        store._group._write = broken
        try:
            errors, _ = await in_one_group(store, [WriteBatch(stamps=[stamp()]), checkpoint()])
        finally:
            store._group._write = written
        assert [str(e) for e in errors] == ["the thread broke"] * 2
        await store.apply(checkpoint())  # the next group is written
        assert await store.count("workflow_executions") == 1


async def test_a_registration_and_a_heartbeat_in_one_transaction_apply_in_the_order_of_their_batches(
    tmp_path: Path,
) -> None:
    # Which comes first decides the stored health: these two are not written together, as the other tables' rows are.
    async with SqliteStore(url(tmp_path / "onex.db"), writer="thread") as store:
        assert isinstance(store, SqliteStore)
        await store.upgrade()
        await store.apply(WriteBatch(registrations=[RegistrationRow("n1", "EFFECT", "1.0.0")]))
        beat = WriteBatch(heartbeats=[HeartbeatRow("n1", "HEALTHY", T0)], stamps=[stamp()])
        registered = WriteBatch(
            registrations=[RegistrationRow("n1", "EFFECT", "1.0.1", health_status="DEGRADED")], stamps=[stamp()]
        )
        assert await in_one_group(store, [beat, registered]) == ([None, None], 1)

        [node] = await store.list_registrations()
        # The heartbeat, then the registration, which replaces every column but the heartbeat's time.
        assert (node.node_version, node.health_status, node.last_heartbeat) == ("1.0.1", "DEGRADED", T0)
        assert await store.count("metadata_stamps") == 2


async def test_a_store_can_be_reopened(tmp_path: Path) -> None:
    store = SqliteStore(url(tmp_path / "onex.db"))
    async with store:
        await store.upgrade()
        await store.apply(WriteBatch(stamps=[stamp()]))
    with pytest.raises(StoreError, match="closed"):
        await store.count("metadata_stamps")
    async with store:
        assert await store.count("metadata_stamps") == 1


async def test_a_store_that_was_never_opened(tmp_path: Path) -> None:
    store = SqliteStore(url(tmp_path / "onex.db"))
    with pytest.raises(StoreError, match="not open"):
        await store.upgrade()
    assert (await store.health()).status == "down"
    await store.aclose()  # nothing to close: fine


async def test_reads_answer_while_a_write_holds_the_database_thread(tmp_path: Path) -> None:
    """Reads run on a thread and a connection of their own (a WAL reader): one made while a write transaction is held
    open on the database thread answers at once, from what was committed before; once the write commits, the next
    read sees it. Queued behind the writes, such a read waited for them (up to 707 ms while bench/e2e.py wrote)."""
    a, b = uuid.UUID(int=1), uuid.UUID(int=2)
    async with SqliteStore(url(tmp_path / "onex.db")) as s:
        await s.upgrade()
        await s.apply(WriteBatch(consumer="c", processed_event_ids=[a]))
        inside, release = threading.Event(), threading.Event()

        def held(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO processed_events VALUES ('c', ?, '2026-01-01T00:00:00.000000+00:00')", (str(b),))
            inside.set()
            release.wait(60)
            conn.execute("COMMIT")

        write = asyncio.ensure_future(s.run_sync(held))
        try:
            assert await asyncio.to_thread(inside.wait, 60)
            assert await asyncio.wait_for(s.unprocessed("c", [a, b]), 30) == {b}  # b's row is not committed yet
            assert await asyncio.wait_for(s.count("processed_events"), 30) == 1
            assert (await asyncio.wait_for(s.health(), 30)).status == "ok"  # a readiness probe does not queue either
        finally:
            release.set()
            await write
        assert await s.unprocessed("c", [a, b]) == set()


async def test_read_sync_sees_one_snapshot_and_does_not_wait_for_the_writer(tmp_path: Path) -> None:
    """``read_sync`` (the metastore's reads) runs on the reader inside one read transaction: while a write is held
    open it answers, and a write committed between two of its statements is not seen by the second."""
    async with SqliteStore(url(tmp_path / "onex.db")) as s:
        await s.upgrade()
        await s.apply(WriteBatch(consumer="c", processed_event_ids=[uuid.UUID(int=1)]))
        held, release, reading, go = (threading.Event() for _ in range(4))

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO processed_events VALUES ('c', 'x', '2026-01-01T00:00:00.000000+00:00')")
            held.set()
            release.wait(60)
            conn.execute("COMMIT")

        def count(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT count(*) FROM processed_events").fetchone()[0])

        def twice(conn: sqlite3.Connection) -> tuple[int, int]:
            first = count(conn)
            reading.set()
            go.wait(60)
            return first, count(conn)

        writing = asyncio.ensure_future(s.run_sync(write))
        try:
            assert await asyncio.to_thread(held.wait, 60)
            snapshot = asyncio.ensure_future(s.read_sync(twice))
            assert await asyncio.to_thread(reading.wait, 60)  # the first count ran while the write was held
        finally:
            release.set()
            await writing
        go.set()
        assert await snapshot == (1, 1)  # the write committed meanwhile is not in the snapshot
        assert await s.read_sync(count) == 2
        with pytest.raises(sqlite3.OperationalError, match="readonly"):  # the reader's connection only reads
            await s.read_sync(lambda conn: conn.execute("DELETE FROM processed_events"))


async def test_a_read_in_memory_runs_on_the_database_thread() -> None:
    """``:memory:`` has no reader: a second connection would open another, empty database."""
    async with SqliteStore("sqlite://:memory:") as s:
        await s.upgrade()
        assert s._reader is None
        await s.apply(WriteBatch(consumer="c", processed_event_ids=[uuid.UUID(int=1)]))
        assert await s.unprocessed("c", [uuid.UUID(int=1), uuid.UUID(int=2)]) == {uuid.UUID(int=2)}


async def test_two_stores_on_one_file_wait_for_each_other_instead_of_failing(tmp_path: Path) -> None:
    # Two processes' worth of writers: each has its own thread and connection; the busy timeout and
    # BEGIN IMMEDIATE make them take turns.
    db = tmp_path / "onex.db"
    async with SqliteStore(url(db)) as first, SqliteStore(url(db)) as second:
        await first.upgrade()
        assert await second.upgrade() == []
        batches = [WriteBatch(stamps=[stamp() for _ in range(200)]) for _ in range(20)]
        await asyncio.gather(*(s.apply(b) for s, b in zip([first, second] * 10, batches, strict=True)))
        assert await first.count("metadata_stamps") == 4_000


@pytest.mark.parametrize("writer", ["process", "thread"])
async def test_a_database_locked_past_the_busy_timeout_is_unavailable_not_bad_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    db = tmp_path / "onex.db"
    # The store waits BUSY_TIMEOUT_S (10 s) for another writer; give up at once here instead (its connections, the
    # writer process's included, take it when they are made).
    monkeypatch.setattr(_sqlite_exec, "BUSY_TIMEOUT_S", 0.0)
    async with SqliteStore(url(db), writer=writer) as store:
        assert isinstance(store, SqliteStore)  # for mypy: Store.__aenter__ is declared to return a Store
        await store.upgrade()
        with raw(db) as other:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            with pytest.raises(StoreUnavailable, match="locked"):
                await store.apply(WriteBatch(stamps=[stamp()]))
            other.execute("ROLLBACK")
        await store.apply(WriteBatch(stamps=[stamp()]))  # the same call succeeds once the lock is gone
        assert await store.count("metadata_stamps") == 1
        with pytest.raises(StoreError) as refused:  # a value SQLite cannot store stays a plain StoreError
            await store.apply(WriteBatch(stamps=[stamp(file_size=2**70)]))
        assert not isinstance(refused.value, StoreUnavailable)
        assert (store.writer_pid is not None) == (writer == "process")


# --- migrations --------------------------------------------------------------------------------------------------


async def test_migrations_are_recorded(tmp_path: Path) -> None:
    db = tmp_path / "onex.db"
    shipped = sorted((Path(_sqlite.__file__).parent / "migrations" / "sqlite").glob("*.sql"))
    async with SqliteStore(url(db)) as store:
        assert await store.upgrade() == [path.stem for path in shipped]
        assert await store.upgrade() == []
    with raw(db) as conn:
        rows = conn.execute("SELECT version, name, checksum, applied_at FROM schema_migrations").fetchall()
    assert [(v, n, c) for v, n, c, _ in rows] == [
        (i, path.stem, hashlib.sha256(path.read_text("utf-8").encode()).hexdigest())
        for i, path in enumerate(shipped, start=1)
    ]
    applied_at = datetime.fromisoformat(rows[0][3])
    assert applied_at.utcoffset() is not None
    assert abs((datetime.now(UTC) - applied_at).total_seconds()) < 60


async def test_an_unmigrated_database_says_what_to_run(tmp_path: Path) -> None:
    async with SqliteStore(url(tmp_path / "onex.db")) as store:
        with pytest.raises(StoreError, match="run `onex db upgrade`"):
            await store.get_workflow(uuid.uuid4())
        with pytest.raises(StoreError, match="run `onex db upgrade`"):
            await store.apply(WriteBatch())
        health = await store.health()
        assert health.status == "down"
        assert "onex db upgrade" in health.detail


async def test_an_upgrade_by_another_process_is_noticed(tmp_path: Path) -> None:
    db = tmp_path / "onex.db"
    async with SqliteStore(url(db)) as waiting:
        with pytest.raises(StoreError, match="upgrade"):
            await waiting.count("event_logs")
        async with SqliteStore(url(db)) as upgrader:  # `onex db upgrade`, elsewhere
            await upgrader.upgrade()
        assert await waiting.count("event_logs") == 0


SHIPPED = _sqlite._migrations()  # taken before any test replaces _migrations


async def test_a_failing_migration_is_rolled_back_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n = len(SHIPPED) + 1
    broken = Migration(n, f"{n:04d}_broken", "CREATE TABLE half_done (x INTEGER);\nCREATE TABLE oops (;\n")
    monkeypatch.setattr(_sqlite, "_migrations", lambda: [*SHIPPED, broken])
    db = tmp_path / "onex.db"
    async with SqliteStore(url(db)) as store:
        with pytest.raises(StoreError, match=rf"{broken.name}.*rolled back"):
            await store.upgrade()
        # The shipped ones went through and stay; the broken one left nothing behind; the store is not current.
        with pytest.raises(StoreError, match=f"needs migrations {broken.name}: run `onex db upgrade`"):
            await store.count("event_logs")
    with raw(db) as conn:
        assert conn.execute("SELECT version FROM schema_migrations").fetchall() == [(m.version,) for m in SHIPPED]
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "half_done" not in tables
    assert "event_logs" in tables


async def test_a_later_migration_is_applied_on_upgrade(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "onex.db"
    async with SqliteStore(url(db)) as store:
        await store.upgrade()
    n = len(SHIPPED) + 1
    later = Migration(n, f"{n:04d}_notes", "-- a comment; with a semicolon\nCREATE TABLE notes (body TEXT);\n")
    monkeypatch.setattr(_sqlite, "_migrations", lambda: [*SHIPPED, later])
    async with SqliteStore(url(db)) as store:
        assert await store.upgrade() == [later.name]
        assert await store.upgrade() == []
        assert await store.count("event_logs") == 0


async def test_an_edited_migration_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "onex.db"
    async with SqliteStore(url(db)) as store:
        await store.upgrade()
    first, *rest = SHIPPED
    edited = Migration(first.version, first.name, first.sql + "\n-- edited after release\n")
    monkeypatch.setattr(_sqlite, "_migrations", lambda: [edited, *rest])
    async with SqliteStore(url(db)) as store:
        with pytest.raises(StoreError, match=r"0001_initial was applied .* with different contents"):
            await store.upgrade()


async def test_a_database_from_a_newer_onex_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "onex.db"
    async with SqliteStore(url(db)) as store:
        await store.upgrade()
    with raw(db) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (9999, '9999_future', 'x', '2030-01-01')")
        conn.commit()
    async with SqliteStore(url(db)) as store:
        with pytest.raises(StoreError, match="schema version 9999, newer than this onex"):
            await store.count("event_logs")
        with pytest.raises(StoreError, match="newer than this onex"):
            await store.upgrade()


def test_migration_scripts_are_split_into_statements() -> None:
    script = """-- leading comment; with a semicolon
CREATE TABLE a (x TEXT DEFAULT 'semi;colon');  -- trailing comment
CREATE TRIGGER a_t AFTER INSERT ON a BEGIN
    UPDATE a SET x = 'y;z';
    DELETE FROM a WHERE x = 'q';
END;

-- closing comment
"""
    statements = Migration(1, "0001_x", script).statements()
    assert len(statements) == 2
    assert statements[0].endswith("-- trailing comment")
    assert statements[1].startswith("CREATE TRIGGER")
    assert statements[1].endswith("END;")
    with pytest.raises(StoreError, match="no terminating semicolon"):
        Migration(1, "0001_x", "CREATE TABLE a (x)\n").statements()


def test_the_shipped_migrations_are_numbered_without_gaps() -> None:
    migrations = SHIPPED
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    for m in migrations:
        assert m.statements()


# --- errors name what failed ---------------------------------------------------------------------------------------


async def test_an_unencodable_row_is_named(tmp_path: Path) -> None:
    async with SqliteStore(url(tmp_path / "onex.db")) as store:
        await store.upgrade()
        bad = stamp(stamp_data={"x": {1, 2}})
        with pytest.raises(StoreError, match=rf"metadata_stamps row 1 \(id={bad.id}.*set is not JSON serializable"):
            await store.apply(WriteBatch(stamps=[stamp(), bad]))


@pytest.mark.parametrize("writer", ["process", "thread"])
async def test_ids_are_stored_as_their_text_a_careless_callers_str_normalised(tmp_path: Path, writer: str) -> None:
    cid, event = uuid.uuid4(), uuid.uuid4()
    step = StepRow(str(cid).upper(), "hash", 1, "completed")  # type: ignore[arg-type]  # a str, upper-case
    async with migrated(tmp_path, writer) as store:
        await store.apply(
            WriteBatch(
                consumer="c",
                stamps=[stamp(id=cid, workflow_id=cid)],
                workflows=[WorkflowRow(cid, "stamp", "done", 1)],
                steps=[step],
                processed_event_ids=[event],
            )
        )
        assert await store.unprocessed("c", [event]) == set()
        assert [s.workflow_id for s in await store.list_steps(cid)] == [cid]
    with raw(tmp_path / "onex.db") as conn:
        assert conn.execute("SELECT id, workflow_id FROM metadata_stamps").fetchall() == [(str(cid), str(cid))]
        assert conn.execute("SELECT correlation_id FROM workflow_executions").fetchall() == [(str(cid),)]
        assert conn.execute("SELECT workflow_id FROM workflow_steps").fetchall() == [(str(cid),)]
        assert conn.execute("SELECT event_id FROM processed_events").fetchall() == [(str(event),)]


async def test_a_database_error_names_the_table_and_the_operation(tmp_path: Path) -> None:
    async with SqliteStore(url(tmp_path / "onex.db")) as store:
        await store.upgrade()
        with pytest.raises(StoreError, match=r"insert of metadata_stamps failed.*rolled back"):
            await store.apply(WriteBatch(stamps=[stamp(file_size=2**63)]))


# --- additions to the Store API ----------------------------------------------------------------------------------


async def test_event_logs_round_trip(tmp_path: Path) -> None:
    cid = uuid.uuid4()
    rows = [
        EventLogRow(
            event_id=uuid.uuid4(),
            event_type="WORKFLOW_COMPLETED",
            topic="dev.omninode_bridge.onex.evt.workflow-completed.v1",
            status="processed",
            correlation_id=cid,
            timestamp=T0.replace(second=s),
            processing_time_ms=0.5,
            payload={"state": "completed"},
            metadata={"partition": 3},
        )
        for s in (2, 1)
    ]
    store = SqliteStore(url(tmp_path / "onex.db"))
    async with store:
        await store.upgrade()
        await store.apply(WriteBatch(event_logs=[*rows, EventLogRow(uuid.uuid4(), "OTHER", "t", "ok")]))
        assert await store.list_event_logs(cid) == rows[::-1]
        assert await store.list_event_logs(uuid.uuid4()) == []


# --- multi-row statements --------------------------------------------------------------------------------------------


def transition(cid: uuid.UUID, n: int) -> store.TransitionRow:
    return store.TransitionRow(
        id=uuid.uuid5(cid, str(n)),
        entity_id=str(cid),
        entity_type="orchestrator",
        from_state="pending",
        to_state="processing",
        transition_event="start",
        correlation_id=cid,
        created_at=T0,
    )


def test_rows_go_out_as_multi_row_statements_within_the_variable_limit() -> None:
    writer = next(w for w in _sqlite_writes._WRITERS if w.field == "transitions")
    rows = [(n, *range(8)) for n in range(_sqlite_exec.MULTI_ROW + 7)]

    statements = list(writer.sql.statements(rows, max_variables=999))

    # 999 variables hold 111 rows of 9 columns: statements of 64 rows (the largest power of two that fits), then the
    # 7 left in one (up to EXACT_ROWS rows go in one statement), none through executemany, every row once and in order.
    assert [len(args) // 9 for _, args, _ in statements] == [64] * 8 + [7]
    assert not any(many for _, _, many in statements)
    assert all(sql.count("(?, ?, ?, ?, ?, ?, ?, ?, ?)") == len(args) // 9 for sql, args, _ in statements)
    assert [args[i] for _, args, _ in statements for i in range(0, len(args), 9)] == list(range(len(rows)))
    # Without the limit, up to MULTI_ROW rows a statement.
    assert [len(args) // 9 for _, args, _ in writer.sql.statements(rows, max_variables=250_000)] == [
        _sqlite_exec.MULTI_ROW,
        7,
    ]
    assert [len(args) // 9 for _, args, _ in writer.sql.statements(rows[:100], max_variables=250_000)] == [64, 32, 4]
    # One text per count up to EXACT_ROWS, then one per power of two: the texts a table uses are few, and stay
    # prepared in the connection's cache.
    texts = {
        sql for n in range(1, _sqlite_exec.MULTI_ROW + 1) for sql, _, _ in writer.sql.statements(rows[:n], 250_000)
    }
    exact = _sqlite_exec.EXACT_ROWS
    assert len(texts) == exact + _sqlite_exec.MULTI_ROW.bit_length() - exact.bit_length()
    assert len(texts) * len(_sqlite_writes._WRITERS) < _sqlite.STATEMENTS_CACHED


async def test_a_batch_longer_than_one_statement_keeps_every_row_and_the_conflict_rules(tmp_path: Path) -> None:
    cids = [uuid.uuid4() for _ in range(_sqlite_exec.MULTI_ROW + 50)]
    started = [WorkflowRow(cid, "w", "processing", 1, metadata={"started": True}) for cid in cids]
    # The same workflows again, later in the same batch (so in a later statement for most): the higher state_seq
    # wins and the metadata merges, as row-by-row execution would have it.
    finished = [WorkflowRow(cid, "w", "completed", 2, file_hash="h", metadata={"done": True}) for cid in cids]
    transitions = [transition(cid, n) for cid in cids for n in range(2)]
    async with SqliteStore(url(tmp_path / "onex.db")) as s:
        await s.upgrade()
        await s.apply(WriteBatch(workflows=[*started, *finished], transitions=[*transitions, *transitions[:10]]))

        assert await s.count("fsm_transitions") == len(transitions)
        assert await s.count("workflow_executions") == len(cids)
        for cid in (cids[0], cids[_sqlite_exec.MULTI_ROW], cids[-1]):
            row = await s.get_workflow(cid)
            assert row is not None
            assert (row.current_state, row.state_seq, row.file_hash) == ("completed", 2, "h")
            assert row.metadata == {"started": True, "done": True}


async def test_a_database_another_process_keeps_locked_is_unavailable_when_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "onex.db"
    async with SqliteStore(url(db)) as store:
        await store.upgrade()
    monkeypatch.setattr(_sqlite_exec, "BUSY_TIMEOUT_S", 0.0)  # give up at once instead of after 10 s
    with raw(db) as other:
        other.execute("PRAGMA locking_mode = EXCLUSIVE")  # held from its first transaction until it closes
        other.execute("BEGIN EXCLUSIVE")
        other.execute("COMMIT")
        reader = SqliteStore(url(db))
        with pytest.raises(StoreUnavailable, match="locked"):  # an outage the node holds through, not a bad store
            await reader.open()
        await reader.aclose()
    async with SqliteStore(url(db)) as store:  # the lock is gone with the other connection
        assert await store.count("node_registrations") == 0


async def test_wal_checkpoints_run_on_a_thread_of_their_own_never_inside_a_commit(tmp_path: Path) -> None:
    db = tmp_path / "onex.db"
    async with SqliteStore(url(db), checkpoint_interval_s=0) as store:
        await store.upgrade()
        # The writer never checkpoints inside a commit (which would hold up every batch waiting behind it).
        assert await store._call(lambda: store._ready().execute("PRAGMA wal_autocheckpoint").fetchone()[0]) == 0
        for _ in range(3):
            await store.apply(WriteBatch(stamps=[stamp(), stamp()]))
            if store._checkpoint is not None:
                await store._checkpoint
        assert store.checkpoints >= 1
        assert store._checkpoint is None
        # The rows are in the database file itself, not only in its -wal: a copy of the file alone holds them.
        copy = tmp_path / "copy.db"
        copy.write_bytes(db.read_bytes())
        with raw(copy) as conn:
            assert conn.execute("SELECT count(*) FROM metadata_stamps").fetchone()[0] >= 4
    assert not (tmp_path / "onex.db-wal").exists() or (tmp_path / "onex.db-wal").stat().st_size == 0


async def test_a_store_in_memory_has_no_checkpointer() -> None:
    async with SqliteStore("sqlite://:memory:") as store:
        await store.upgrade()
        await store.apply(WriteBatch(stamps=[stamp()]))
        assert store._checkpointer is None
        assert store.checkpoints == 0
        assert not store.circuit_open  # SQLite has no breaker: never refuses without trying


def test_none_binds_as_null_through_the_adapter_the_store_registers() -> None:
    """``onex._sqlite`` registers an adapter for NoneType (sqlite3 otherwise fails an attribute lookup for every None
    it binds): it must give None back, so that None still binds as NULL, on any connection of the process."""
    adapter = sqlite3.adapters[(type(None), sqlite3.PrepareProtocol)]
    assert adapter(None) is None
    conn = sqlite3.connect(":memory:")
    try:
        assert conn.execute("SELECT ? IS NULL, typeof(?)", (None, None)).fetchone() == (1, "null")
    finally:
        conn.close()


def test_key_lists_are_padded_to_a_power_of_two_with_the_same_keys() -> None:
    """Reads by a list of keys repeat its last key up to a power of two long, so that a handful of statement texts
    stay prepared instead of one for every count (which also pushed the writes' statements out of the cache)."""
    for n in range(0, 70):
        keys = list(range(n))
        padded = _sqlite_exec.padded(keys)
        assert padded[:n] == keys
        assert set(padded) == set(keys)
        assert len(padded) == (0 if n == 0 else 1 << (n - 1).bit_length())


async def test_reads_by_key_lists_of_every_length_answer_as_before(tmp_path: Path) -> None:
    async with SqliteStore(url(tmp_path / "onex.db")) as s:
        await s.upgrade()
        ids = [uuid.UUID(int=i + 1) for i in range(40)]
        await s.apply(store.WriteBatch(consumer="c", processed_event_ids=ids[::3]))
        executed: list[str] = []
        # On the reader's thread, where reads run: the statements with their values, as SQLite ran them.
        await s._read(lambda: s._ready().set_trace_callback(executed.append))
        for n in range(1, len(ids) + 1):
            assert await s.unprocessed("c", ids[:n]) == {i for k, i in enumerate(ids[:n]) if k % 3}
    # Each list was padded: as many values in it as a power of two, so a handful of texts were prepared.
    lengths = {sql.split(" IN (", 1)[1].count("'") // 2 for sql in executed if "FROM processed_events" in sql}
    assert lengths == {1, 2, 4, 8, 16, 32, 64}
