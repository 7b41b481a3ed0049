"""``SqliteStore``: the ``Store`` on SQLite, the embedded default (a file under ``.onex/``).

URL: ``sqlite:///relative/path.db`` (relative to the working directory), ``sqlite:////absolute/path.db``, or
``sqlite://:memory:`` for a private throwaway database that is gone at ``aclose()``. The file's directory is
created when missing. Query strings (``?mode=ro``) are refused rather than silently taken as part of the name. The path
is percent-decoded, as a PostgreSQL URL is (``sqlite:////tmp/sp%20ace.db`` is ``/tmp/sp ace.db``; a ``%`` in a name is
``%25``).

Threading and the writer process. Python's ``sqlite3`` blocks, so the store's calls run on one dedicated thread (the
database thread) that owns its connection; coroutines await it through ``loop.run_in_executor``. ``apply``, the nodes'
writes, goes elsewhere on a database file in WAL mode: to a process of its own (``writer="process"``, the default;
``onex._sqlite_process``), started by the first ``apply``, which writes with a connection of its own and the same code
(``onex._sqlite_exec``). The thread's ``sqlite3`` gave the interpreter lock up for every statement and took it back
afterwards, and while the event loop's thread ran the nodes each of those hand-overs waited: an orchestrator's
checkpoint, which an HTTP answer waits for, took 5-8 ms at the median where SQLite spent 0.15 ms on a group (README,
design decisions). With ``writer="thread"``, and always on ``:memory:`` (a second connection would be another database),
``apply`` runs on the database thread too. Either way writes run one group at a time, in the order they were made, and
the store's own calls never fight over SQLite's write lock for long (the process and the thread take it in turn, each
for one transaction, under the busy timeout). A call whose awaiting coroutine is cancelled still runs to its end (a
transaction is committed or rolled back whole, never left half done). Reads run on a second thread with a connection of
its own (``query_only``): in WAL mode a reader sees what was committed when its statement began, and neither waits for
the writer nor holds it up. Queued behind the database thread's groups, an indexed read made while ``bench/e2e.py``
wrote waited up to 707 ms. A write that returned is committed, so a read made after it sees it. With ``:memory:`` or a
journal that is not WAL, reads run on the database thread. ``aclose()`` waits for the calls and writes already made,
ends the writer process (which closes its connection first), then closes the connections and the threads.

Connection settings: WAL (readers in other processes, such as ``sqlite3 .onex/onex.db``, do not block the writer and are
not blocked by it), ``synchronous=NORMAL`` (in WAL mode a crash may lose the last transactions but never corrupts the
file; a committed batch survives a process crash, only a power cut may undo it), ``foreign_keys=ON``, and a busy timeout
(``_sqlite_exec.BUSY_TIMEOUT_S``) so that a writer in another process makes us wait instead of fail; past it, a locked
database is ``StoreUnavailable`` (an outage to hold through), never bad data.

Writes. ``apply(batch)`` is one ``BEGIN IMMEDIATE ... COMMIT``: the write lock is taken at ``BEGIN``, so a concurrent
writer elsewhere makes us wait there instead of failing mid-transaction; a write that is one statement goes alone, which
SQLite runs as a transaction of its own. Group commit (``onex._group_commit`` on the thread, ``WriterProcess`` for the
process): the batches of ``apply`` calls made while the writer is busy wait for it, then are written in one transaction,
as one batch (each table's rows of all of them in one go: fewer statements, each of which hands the interpreter lock
over twice); when a row fails, the transaction is rolled back and the group written again batch by batch, each inside a
savepoint of its own, so one that fails is rolled back alone and only its caller gets the error. Checkpoints (batches of
workflow rows alone, which an orchestrator's outcomes wait for) are written ahead of the rest of their group, as a write
of their own. Nodes flush small batches often (an HTTP request's workflow is a batch of one or two), and a transaction
each kept the one thread busy and every caller queueing behind the others' commits. The rows are encoded first (uuids,
JSON, timestamps: see ``migrations/sqlite/0001_initial.sql``), then each table's rows go out as multi-row INSERTs
(``_Writer.statements``), in the order workflows, steps, stamps, transitions, bridge states, registrations, heartbeats,
event logs, aggregate windows, node states, processed events. Any error rolls the whole batch back and raises
``StoreError`` naming the table and the operation (and the row, when it could not be encoded); ``StoreUnavailable`` when
the error is that another process kept the database locked for longer than the busy timeout (the batch may succeed
later); also when the file is read-only, the disk full or the file system failing (SQLITE_READONLY, FULL, IOERR,
CANTOPEN): those fail every batch alike, an outage to hold through, not a batch to dead-letter. Every call maps
SQLite's errors so, in one place (``_store_error``): reads too; ``open()`` and ``probe_write()`` refuse with a plain
``StoreError``.

Checkpoints. In WAL mode committed pages are appended to the ``-wal`` file and copied into the database by a
checkpoint, which SQLite runs by default inside the commit that crosses a threshold: that commit then takes tens
or hundreds of milliseconds (the copy and two fsyncs), and every node waiting on its batch waits with it (the HTTP
bench's p95 at a fixed rate went from ~3 ms to ~18 ms once the file was big enough to need them). So the writer's
automatic checkpoints are off, and a second connection on a thread of its own runs a ``PASSIVE`` checkpoint (it
never blocks the writer, nor waits for it) at most every ``CHECKPOINT_INTERVAL_S`` while writes come in. The copy
and the fsyncs release the GIL. On close the writer's connection checkpoints what is left, as SQLite does when the
last connection to a file closes.

Conflict rules: those of ``onex.store``, rendered from the one description of each table in ``onex._tables``
(as ``PostgresStore`` renders them), so that one conformance suite holds for both. Where the table in
``onex.store`` leaves room:

- ``workflow_executions.metadata`` is merged, not replaced: a shallow merge in which the keys of the row with the
  higher ``state_seq`` win (PostgreSQL's ``jsonb ||``; here the SQL function ``onex_json_merge``).
- ``workflow_executions.checkpoint`` (migration 7) is the value of the row with the higher ``state_seq``, NULL
  included, so the database adapter's row for a finished workflow clears it; in ``metadata`` until then, a checkpoint
  outlived its workflow, because a merge keeps the keys the newer row lacks.
- ``workflow_steps``: ``step_order`` is updated along with status, timings, data and error.
- A heartbeat updates ``health_status`` and ``last_heartbeat`` and merges its metadata into the node's, unless the
  stored heartbeat is newer. A heartbeat from a node that has not registered is dropped: the registration carries
  the node's type and version, which a heartbeat does not, and nodes re-announce themselves.
- A registration replaces every column except ``last_heartbeat`` when it has none.
- A missing ``created_at`` / ``registered_at`` / event-log ``timestamp`` is the time of the ``apply``.
- Naive datetimes are taken as UTC (as ``PostgresStore`` does); queries return aware UTC datetimes.

Migrations: ``migrations/sqlite/NNNN_name.sql``, applied by ``upgrade()`` in number order, each in its own
transaction, recorded in ``schema_migrations(version, name, checksum, applied_at)``. ``open()`` does not upgrade
(the CLI decides when to); until the schema is current every call raises ``StoreError`` saying to run
``onex db upgrade``. A migration file may hold ``--`` comments but not ``/* */`` ones.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import functools
import logging
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar, TypeVarTuple, cast
from urllib.parse import unquote

from onex import _tables
from onex._group_commit import GroupCommit
from onex._sqlite_exec import (
    EXECUTE_ERRORS,
    IN_CHUNK,
    Tables,
    Work,
    bindable,
    close,
    configure,
    connect,
    describe,
    failure,
    locked,
    packed,
    probe_write,
    rollback,
    write_group,
)
from onex._sqlite_exec import PRAGMAS as PRAGMAS  # re-exported: the benchmarks' raw floors take them from here
from onex._sqlite_exec import STATEMENTS_CACHED as STATEMENTS_CACHED  # re-exported: the tests read it here
from onex._sqlite_exec import padded as _padded
from onex._sqlite_migrations import _MIGRATIONS_DDL
from onex._sqlite_migrations import Migration as Migration  # re-exported: the store's callers and tests name it here
from onex._sqlite_migrations import _migrations as _migrations  # looked up here at open(), so a test can replace it
from onex._sqlite_process import WriterProcess, raised
from onex._sqlite_values import _FROM_SQL, _TO_SQL, _now, _ts, _uid, _uid_int
from onex._sqlite_writes import _PROCESSED, _WRITERS, SQL, _insert, _Writer
from onex._tables import (
    SELECT_AGGREGATE_WINDOW,
    SELECT_BRIDGE_STATE,
    SELECT_DEAD_LETTER,
    SELECT_EVENT_LOG,
    SELECT_NODE_STATE,
    SELECT_REGISTRATION,
    SELECT_STAMP,
    SELECT_STEP,
    SELECT_TRANSITION,
    SELECT_WORKFLOW,
)
from onex.exceptions import StoreError
from onex.meters import CommitMeter
from onex.settings import MEMORY as MEMORY  # re-exported, as is database_path: the SQLite URL's parts
from onex.settings import database_path as database_path
from onex.store import (
    TABLES,
    AggregateWindowRow,
    BridgeStateRow,
    DeadLetterRow,
    EventLogRow,
    NodeStateRow,
    RegistrationRow,
    StampRow,
    StepRow,
    Store,
    StoreHealth,
    TransitionRow,
    WorkflowRow,
    WriteBatch,
)

__all__ = ["SqliteStore"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")
_log = logging.getLogger("onex.store")


# sqlite3 adapts every parameter that is not exactly an int, float, str or bytearray before binding it, None included:
# it looks for an adapter registered for NoneType, finds none, then asks its PrepareProtocol type for __adapt__, and
# that failed lookup formats an AttributeError (about 3,300 instructions a None; a stamp's rows bind seven). An
# adapter registered for NoneType is found at once and gives None back, which binds as NULL: the same value for every
# connection in the process, at about a third of the cost. (Registering for int, float or str would instead make
# sqlite3 adapt every value; NoneType does not.)
sqlite3.register_adapter(type(None), cast("Callable[[None], None]", {}.get))  # C: no Python frame a None

MIN_SQLITE: Final = (3, 24, 0)  # UPSERT (INSERT ... ON CONFLICT DO UPDATE)
CHECKPOINT_INTERVAL_S: Final = 1.0  # at most one background WAL checkpoint per interval (module docstring)
WRITERS: Final = ("process", "thread")  # where apply() writes a database file in WAL mode (module docstring)


# --- writes ----------------------------------------------------------------------------------------------------------

# What encoding a row may raise: json (TypeError: not serialisable; ValueError: NaN, circular), _uid (ValueError),
# a wrong row type (AttributeError), datetime arithmetic at the edges (OverflowError).
_ENCODE_ERRORS: Final = (TypeError, ValueError, AttributeError, OverflowError)


def _encode(writer: _Writer, rows: Sequence[Any], now: str) -> list[tuple[Any, ...]]:
    encode = writer.encode
    try:
        return encode(rows, now)
    except _ENCODE_ERRORS:
        pass
    # The slow path, only once something failed: find the first bad row to name it.
    for index, row in enumerate(rows):
        try:
            encode((row,), now)
        except _ENCODE_ERRORS as exc:
            key = ", ".join(f"{k}={getattr(row, k, '?')}" for k in writer.key)
            raise _store_error(
                exc, f"apply: {writer.table} row {index} ({key}) cannot be stored", "nothing was written"
            ) from exc
    raise AssertionError("unreachable: a row failed to encode once and not the second time")


def _packed(work: Work) -> bytes:
    """``work`` as the writer process reads it (``_sqlite_exec.packed``). A value marshal does not write goes as
    ``sqlite3`` would bind it (``bindable``: an enum member as its value, a datetime through its adapter), as it does
    on the database thread; one ``sqlite3`` could not bind either is a StoreError naming its row, before anything is
    sent."""
    try:
        return packed([(sql.order, params) for sql, params in work])
    except ValueError:
        pass  # The slow path, only once something failed.
    plain: Tables = []
    for sql, params in work:
        rows = []
        for index, row in enumerate(params):
            try:
                rows.append(tuple(map(bindable, row)))
            except TypeError as exc:
                raise _store_error(
                    exc, f"apply: {sql.table} row {index} cannot be stored", "nothing was written"
                ) from exc
        plain.append((sql.order, rows))
    return packed(plain)


# --- reads -----------------------------------------------------------------------------------------------------------

_READ: Final = _tables.readers(_FROM_SQL)  # a fetched row as its dataclass, per table


# --- dead letters ---------------------------------------------------------------------------------------------------

_INSERT_DEAD_LETTER: Final = _insert(_tables.DEAD_LETTERS)
_REPLAYED: Final = "UPDATE dead_letters SET replayed_at = ?, replays = replays + 1 WHERE event_id = ?"
_dead_letter_params: Final = _tables.encoder(_tables.DEAD_LETTERS, _TO_SQL, fill_now=True)

# --- the store -------------------------------------------------------------------------------------------------------


class SqliteStore(Store):
    """The ``Store`` on one SQLite file (see the module docstring for threading, transactions and the rules).

    Besides the ``Store`` API: ``path`` (the database file, or ``":memory:"``), ``list_event_logs``,
    ``checkpoints`` (background WAL checkpoints run; ``checkpoint_interval_s`` paces them), ``transactions``
    (write transactions committed: ``apply`` calls waiting together share one), and ``writer_pid``: the writer
    process's, while ``apply`` writes through one (``writer="process"``, the default, on a database file in WAL mode:
    module docstring), else None.
    """

    def __init__(
        self,
        url: str,
        *,
        checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S,
        writer: str = "process",
        create: bool = True,
    ) -> None:
        """``create=False``: a database file that does not exist is a ``StoreError`` at ``open()``, not created (a
        command that only reads it, given a mistyped path, says so instead of leaving an empty database there)."""
        if writer not in WRITERS:
            raise ValueError(f"writer must be one of {', '.join(WRITERS)}, not {writer!r}")
        self.url = url
        # Percent-decoded, as a PostgreSQL URL's parts are: sqlite:////tmp/sp%20ace.db is the file "sp ace.db".
        self.path = unquote(database_path(url))
        self.commits = CommitMeter()
        self.checkpoint_interval_s = checkpoint_interval_s
        self.checkpoints = 0
        self.writer = writer
        self.create = create
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None  # the database thread; None once closing
        self._transactions = 0  # committed on the database thread (the writer process counts its own)
        self._process: WriterProcess | None = None  # apply()'s writer process, when it writes through one
        self._group: GroupCommit[WriteBatch] = GroupCommit(self._write_group, _checkpoint_only)
        self._checkpointer: concurrent.futures.ThreadPoolExecutor | None = None
        self._checkpoint: asyncio.Future[None] | None = None  # the background checkpoint running, if any
        self._checkpointed_at = -math.inf
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None  # reads, on a connection of their own
        # .conn: the connection of the thread it is read on (the database thread's, the reader's, the checkpointer's)
        self._here = threading.local()
        self._closed = False
        self._queued = 0  # rows of apply() calls submitted and not finished (health().queued_writes)
        # Touched only on the database thread:
        self._conn: sqlite3.Connection | None = None
        self._migrations: list[Migration] = []
        self._schema_problem: str | None = None  # why the schema is not usable yet; None when it is current
        self._journal_mode = ""

    def __repr__(self) -> str:
        return f"SqliteStore({self.url!r})"

    @property
    def transactions(self) -> int:
        process = self._process
        return self._transactions + (0 if process is None else process.transactions)

    @property
    def writer_pid(self) -> int | None:
        process = self._process
        return None if process is None else process.pid

    # --- lifecycle ---------------------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect (creating the file and its directory when missing). A no-op on an open store."""
        if self._executor is not None:
            return
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="onex-sqlite")
        # Published before the connection exists: calls made meanwhile queue up behind the connect on the one
        # thread, so they run after it, as if open() had returned first.
        self._executor, self._closed = executor, False
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._open_sync)
        except BaseException:
            # Also when cancelled while the thread was still connecting: close whatever it opened, after it.
            self._executor = None
            executor.submit(self._close_sync)
            executor.shutdown(wait=False)
            raise
        if self._journal_mode == "wal" and self.path != MEMORY:
            self._checkpointer = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="onex-sqlite-checkpoint"
            )
            self._reader = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="onex-sqlite-read")
            if self.writer == "process":
                self._process = WriterProcess(self.path, SQL)  # started by the first apply(): reading needs none

    async def aclose(self) -> None:
        """Finish the calls already queued, close the connection and stop the thread. Idempotent."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        self._closed = True
        reader, self._reader = self._reader, None
        if reader is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(reader, self._close_here)  # after the reads queued
            finally:
                reader.shutdown(wait=False)
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            running = self._checkpoint
            if running is not None:
                with contextlib.suppress(Exception):  # its failure was logged; closing goes on
                    await asyncio.shield(running)
            try:
                await asyncio.get_running_loop().run_in_executor(checkpointer, self._close_here)
            finally:
                checkpointer.shutdown(wait=False)  # its thread exits once idle (at once unless cancelled meanwhile)
        process, self._process = self._process, None
        try:
            await self._group.idle()  # the writes of apply() calls made before this one
            if process is not None:
                await process.idle()
                self._transactions += process.transactions  # still counted once the process is gone
                process.detach()
                # Its connection closes before the database thread's, which then checkpoints what is left as the last.
                await asyncio.get_running_loop().run_in_executor(executor, process.close)
                process = None
            await asyncio.get_running_loop().run_in_executor(executor, self._close_sync)
        except BaseException:
            if process is not None:  # cancelled before it was closed: the thread ends it first
                process.detach()
                executor.submit(process.close)
            executor.shutdown(wait=False)  # cancelled: the thread still closes the connection, then exits
            raise
        executor.shutdown(wait=True)  # the thread is idle now: this only joins it

    def _open_sync(self) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise StoreError(
                f"SQLite {sqlite3.sqlite_version} is too old: onex needs {'.'.join(map(str, MIN_SQLITE))} or later"
            )
        if not self.create and self.path != MEMORY and not Path(self.path).exists():
            raise StoreError(f"no SQLite database at {self.path}: `onex db upgrade` or `onex run` creates it")
        try:
            if self.path != MEMORY:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = connect(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise _refused(exc, f"cannot open SQLite database {self.path}") from exc
        try:
            self._journal_mode = configure(conn)
            if self._journal_mode == "wal" and self.path != MEMORY:
                conn.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer's thread does it (module docstring)
            self._migrations = _migrations()
            self._schema_problem = self._check_schema(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise _refused(exc, f"cannot open SQLite database {self.path}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn = self._here.conn = conn

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        self._here.conn = None
        if conn is None:
            return
        close(conn)

    def _maybe_checkpoint(self) -> None:
        """After a commit: start a background checkpoint unless one runs or one ran within the interval."""
        checkpointer = self._checkpointer
        if checkpointer is None or self._checkpoint is not None:
            return
        now = time.monotonic()
        if now - self._checkpointed_at < self.checkpoint_interval_s:
            return
        self._checkpointed_at = now
        running = asyncio.get_running_loop().run_in_executor(checkpointer, self._checkpoint_sync)
        self._checkpoint = running
        running.add_done_callback(self._checkpoint_done)

    def _checkpoint_done(self, running: asyncio.Future[None]) -> None:
        self._checkpoint = None
        if not running.cancelled() and (exc := running.exception()) is not None:
            _log.warning("background WAL checkpoint of %s failed: %s", self.path, exc)

    def _checkpoint_sync(self) -> None:
        """One PASSIVE checkpoint (on the checkpointer's thread, with its own connection)."""
        conn = getattr(self._here, "conn", None)
        if conn is None:
            conn = self._here.conn = connect(self.path)
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.checkpoints += 1

    async def _call(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """Run ``fn(*args)`` on the database thread."""
        executor = self._executor
        if executor is None:
            raise StoreError(f"{self!r} is {'closed' if self._closed else 'not open'}")
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    async def _read(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """Run the read ``fn(*args)`` on the reader's thread, whose connection is a WAL reader of its own: it
        neither waits for the database thread's writes nor holds them up (module docstring). On the database thread
        where there is no reader (``:memory:``, a journal that is not WAL)."""
        reader = self._reader
        if reader is None:
            return await self._call(fn, *args)
        return await asyncio.get_running_loop().run_in_executor(reader, self._reading, functools.partial(fn, *args))

    def _reading(self, read: Callable[[], T]) -> T:
        """On the reader's thread: ``read()``, once its connection is open."""
        if getattr(self._here, "conn", None) is None:
            conn = None
            try:
                conn = connect(self.path)
                conn.execute("PRAGMA query_only = ON")  # this connection only reads: a write here is a bug
            except sqlite3.Error as exc:
                if conn is not None:
                    conn.close()
                raise _store_error(exc, f"cannot open SQLite database {self.path}") from exc
            self._here.conn = conn
        return read()

    def _close_here(self) -> None:
        """Close the connection of this thread (the reader's, the checkpointer's), if it opened one."""
        conn, self._here.conn = getattr(self._here, "conn", None), None
        if conn is not None:
            conn.close()

    dialect = "sqlite"

    async def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the database thread, once the schema is current: the hook of ``onex.metastore``,
        whose ``fn`` opens and ends its own ``BEGIN IMMEDIATE`` transaction. Between calls it has the one connection
        to itself, so its read-check-write sequences need no other lock."""

        def run() -> T:
            return fn(self._ready())

        result = await self._call(run)
        self._maybe_checkpoint()
        return result

    async def read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` where reads run (the reader's thread, else the database thread), inside one read
        transaction: the statements of ``fn`` see one snapshot. The reader's connection refuses writes (``query_only``);
        ``fn`` must not write in either case: writes go through ``run_sync``."""
        return await self._read(self._snapshot, fn)

    def _snapshot(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._ready()
        try:
            conn.execute("BEGIN")  # deferred: a read transaction, which takes no lock a writer waits for
        except sqlite3.Error as exc:
            raise _store_error(exc, f"read_sync failed on {self.path}") from exc
        try:
            return fn(conn)
        finally:
            if conn.in_transaction:  # an error may have ended it already
                try:
                    conn.execute("COMMIT")  # only lets the snapshot go: nothing was written
                except sqlite3.Error:
                    rollback(conn)

    def _ready(self) -> sqlite3.Connection:
        """The connection of this thread (the database thread's, or the reader's), once the schema is current."""
        conn: sqlite3.Connection | None = getattr(self._here, "conn", None)
        if conn is None or self._conn is None:
            raise StoreError(f"{self!r} is closed")
        if self._schema_problem is not None:
            # Look again before refusing: another process (``onex db upgrade``) may have upgraded meanwhile.
            self._schema_problem = self._check_schema(conn)
            if self._schema_problem is not None:
                raise StoreError(self._schema_problem)
        return conn

    # --- migrations --------------------------------------------------------------------------------------------------

    async def upgrade(self) -> list[str]:
        """Apply pending migrations, each in its own transaction; the names applied (``[]`` when up to date).

        Two processes upgrading at once serialise on SQLite's write lock: each migration re-reads the applied
        versions after taking it. A migration recorded with a different checksum than its file is reported, not
        re-applied; a database with versions this onex does not know is refused.
        """
        return await self._call(self._upgrade_sync)

    def _upgrade_sync(self) -> list[str]:
        conn = self._conn
        if conn is None:
            raise StoreError(f"{self!r} is closed")
        applied: list[str] = []
        try:
            conn.execute(_MIGRATIONS_DDL)
            known = {m.version for m in self._migrations}
            newer = [v for (v,) in conn.execute("SELECT version FROM schema_migrations") if v not in known]
            if newer:
                raise StoreError(
                    f"database {self.path} has schema version {max(newer)}, newer than this onex knows "
                    f"({max(known, default=0)}): use a newer onex; nothing was applied"
                )
            for migration in self._migrations:
                if self._apply_migration(conn, migration):
                    applied.append(migration.name)
        except sqlite3.Error as exc:
            raise _store_error(exc, f"upgrade of {self.path} failed") from exc
        finally:
            self._schema_problem = self._check_schema(conn)
        return applied

    def _apply_migration(self, conn: sqlite3.Connection, migration: Migration) -> bool:
        """Apply one migration unless it is recorded already; whether it was applied."""
        statements = migration.statements()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT checksum FROM schema_migrations WHERE version = ?", (migration.version,))
            recorded = row.fetchone()
            if recorded is not None:
                conn.execute("ROLLBACK")
                if recorded[0] != migration.checksum:
                    raise StoreError(f"migration {migration.name} was applied to {self.path} with different contents")
                return False
            for statement in statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, ?)",
                (migration.version, migration.name, migration.checksum, _now()),
            )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            rollback(conn)
            raise _store_error(exc, f"migration {migration.name} failed on {self.path}", "it was rolled back") from exc
        except BaseException:
            rollback(conn)
            raise
        return True

    def _check_schema(self, conn: sqlite3.Connection) -> str | None:
        """Why the schema is not usable by this onex, or None when it is current."""
        try:
            applied = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
        except sqlite3.OperationalError:  # no such table: never upgraded
            applied = set()
        known = {m.version: m.name for m in self._migrations}
        if not applied:
            return f"database {self.path} has no onex schema yet: run `onex db upgrade`"
        newer = applied - known.keys()
        if newer:
            return (
                f"database {self.path} has schema version {max(newer)}, newer than this onex knows "
                f"({max(known, default=0)}): use a newer onex"
            )
        pending = sorted(known.keys() - applied)
        if pending:
            names = ", ".join(known[v] for v in pending)
            return f"database {self.path} needs migrations {names}: run `onex db upgrade`"
        return None

    async def probe_write(self) -> None:
        """Refuse a database that cannot be written (read-only file or directory, a file system that refuses writes):
        ``StoreError`` in one line. The write lock taken, a write made and rolled back (``_sqlite_exec.probe_write``):
        nothing changes. Before nodes start (``Runtime.start``), so that a command that cannot record its work does
        none of it (``onex stamp`` would stamp the files, then fail every write). Needs the current schema."""
        await self._call(self._probe_write_sync)

    def _probe_write_sync(self) -> None:
        conn = self._ready()
        try:
            probe_write(conn)
        except sqlite3.Error as exc:
            if locked(exc):  # busy past the timeout, not read-only: the nodes hold their writes until it is free
                _log.warning("SQLite database %s: the write probe found it locked: %s", self.path, exc)
                return
            raise _refused(exc, f"SQLite database {self.path} cannot be written") from exc

    # --- writes ------------------------------------------------------------------------------------------------------

    async def apply(self, batch: WriteBatch) -> None:
        """Write the batch in one transaction (module docstring), shared with the batches of other ``apply`` calls
        waiting meanwhile (group commit). Do not change ``batch`` until this returns."""
        rows = len(batch) + len(batch.processed_event_ids)
        if not rows:
            await self._call(self._ready)  # nothing to write; still an error on a closed or un-migrated store
            return
        executor = self._executor
        if executor is None:
            raise StoreError(f"{self!r} is {'closed' if self._closed else 'not open'}")
        self._queued += rows
        started = time.perf_counter()
        try:
            process = self._process
            if process is None:
                await self._group.submit(executor, batch)  # aclose() waits for what is submitted before it
            else:
                await self._submit(process, batch)
        finally:
            self._queued -= rows
        self.commits.committed(rows, time.perf_counter() - started)
        self._maybe_checkpoint()

    async def _submit(self, process: WriterProcess, batch: WriteBatch) -> None:
        """``apply`` through the writer process: the batch encoded here, written there with the group it falls into."""
        if self._schema_problem is not None:
            await self._call(self._ready)  # looks again, on the database thread; StoreError until the schema is current
        await process.submit(_packed(self._encode_batch(batch, _now())), _checkpoint_only(batch))

    def _write_group(self, batches: list[WriteBatch]) -> list[BaseException | None]:
        """On the database thread: write ``batches`` in one transaction (``_sqlite_exec.write_group``); each batch's
        error, or None."""
        errors: list[BaseException | None] = [None] * len(batches)
        try:
            conn = self._ready()
        except StoreError as exc:
            return [copy.copy(exc) for _ in batches]
        now = _now()
        # Encode everything before BEGIN: a row that cannot be stored fails its batch before the lock is taken.
        work: dict[int, Work] = {}
        for index, batch in enumerate(batches):
            try:
                work[index] = self._encode_batch(batch, now)
            except StoreError as exc:
                errors[index] = exc
        if not work:
            return errors
        failures, transactions = write_group(conn, work, len(batches), self.path)
        self._transactions += transactions
        return [error if failed is None else raised(failed) for error, failed in zip(errors, failures, strict=True)]

    def _encode_batch(self, batch: WriteBatch, now: str) -> Work:
        """Each table's rows of ``batch`` as parameters, in the order they are written; StoreError naming the row
        that cannot be encoded."""
        work = [
            (writer.sql, _encode(writer, rows, now)) for writer in _WRITERS if (rows := getattr(batch, writer.field))
        ]
        if batch.processed_event_ids:
            consumer = batch.consumer
            try:
                ids = [(consumer, _uid_int(i), now) for i in batch.processed_event_ids]
            except _ENCODE_ERRORS as exc:
                raise _store_error(exc, "apply: processed_event_ids", "nothing was written") from exc
            work.append((_PROCESSED.sql, ids))
        return work

    # --- reads -------------------------------------------------------------------------------------------------------

    def _fetch(self, what: str, sql: str, params: Sequence[Any], convert: Callable[[Any], T]) -> list[T]:
        conn = self._ready()
        try:
            return [convert(row) for row in conn.execute(sql, params)]
        except sqlite3.Error as exc:
            raise _store_error(exc, f"{what} failed on {self.path}") from exc

    def _fetch_in(
        self, what: str, sql: str, keys: list[Any], convert: Callable[[Any], T], *, before: tuple[Any, ...] = ()
    ) -> list[T]:
        """``_fetch`` of ``sql`` for ``keys``, ``IN_CHUNK`` at a time (``_padded``): ``{marks}`` in ``sql`` is the
        list's placeholders, ``before`` the parameters ahead of it."""
        found: list[T] = []
        for start in range(0, len(keys), IN_CHUNK):
            chunk = _padded(keys[start : start + IN_CHUNK])
            found += self._fetch(what, sql.format(marks=",".join("?" * len(chunk))), (*before, *chunk), convert)
        return found

    async def _query(self, what: str, sql: str, params: Sequence[Any], convert: Callable[[Any], T]) -> list[T]:
        return await self._read(self._fetch, what, sql, params, convert)

    async def unprocessed(self, consumer: str, event_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        if not event_ids:
            await self._call(self._ready)
            return set()
        return await self._read(self._unprocessed_sync, consumer, list(event_ids))

    def _unprocessed_sync(self, consumer: str, event_ids: list[uuid.UUID]) -> set[uuid.UUID]:
        self._ready()
        by_text = _texts_of(event_ids, "unprocessed")
        sql = "SELECT event_id FROM processed_events WHERE consumer = ? AND event_id IN ({marks})"
        seen = set(self._fetch_in("unprocessed", sql, list(by_text), _first, before=(consumer,)))
        return {event_id for text, event_id in by_text.items() if text not in seen}

    async def get_workflow(self, correlation_id: uuid.UUID) -> WorkflowRow | None:
        rows = await self._query(
            "get_workflow", f"{SELECT_WORKFLOW} WHERE correlation_id = ?", (_uid(correlation_id),), _READ.workflow
        )
        return rows[0] if rows else None

    async def list_workflows(
        self,
        *,
        state: str | None = None,
        limit: int = 100,
        namespace: str | None = None,
        since: datetime | None = None,
        file_path: str | None = None,
    ) -> list[WorkflowRow]:
        """The most recently created workflows first, optionally only those matching every filter given."""
        _check_page(limit, 0)
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("current_state", state),
            ("namespace", namespace),
            ("created_at >=", _ts(since)),
            ("file_path", file_path),
        ):
            if value is not None:
                where.append(f"{column} ?" if column.endswith(">=") else f"{column} = ?")
                params.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return await self._query(
            "list_workflows", f"{SELECT_WORKFLOW}{clause} ORDER BY id DESC LIMIT ?", (*params, limit), _READ.workflow
        )

    async def get_workflows(self, correlation_ids: Sequence[uuid.UUID]) -> list[WorkflowRow]:
        return await self._read(self._get_workflows_sync, list(correlation_ids))

    def _get_workflows_sync(self, correlation_ids: list[uuid.UUID]) -> list[WorkflowRow]:
        sql = f"{SELECT_WORKFLOW} WHERE correlation_id IN ({{marks}})"
        return self._fetch_in("get_workflows", sql, [_uid(i) for i in correlation_ids], _READ.workflow)

    async def workflow_states(self, correlation_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
        return await self._read(self._workflow_states_sync, list(correlation_ids))

    def _workflow_states_sync(self, correlation_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
        by_text = _texts_of(correlation_ids, "workflow_states")
        sql = "SELECT correlation_id, current_state FROM workflow_executions WHERE correlation_id IN ({marks})"
        return dict(self._fetch_in("workflow_states", sql, list(by_text), lambda row: (by_text[row[0]], row[1])))

    async def unprocessed_workflows(self, consumer: str, states: Sequence[str]) -> list[WorkflowRow]:
        marks = ",".join("?" * len(states))
        sql = (
            f"{SELECT_WORKFLOW} w WHERE current_state IN ({marks}) AND NOT EXISTS (SELECT 1 FROM processed_events p "
            "WHERE p.consumer = ? AND p.event_id = w.correlation_id) ORDER BY id"
        )
        return await self._query("unprocessed_workflows", sql, (*states, consumer), _READ.workflow)

    async def get_stamps(self, ids: Sequence[uuid.UUID]) -> list[StampRow]:
        return await self._read(self._get_stamps_sync, list(ids))

    def _get_stamps_sync(self, ids: list[uuid.UUID]) -> list[StampRow]:
        return self._fetch_in(
            "get_stamps", f"{SELECT_STAMP} WHERE id IN ({{marks}})", [_uid(i) for i in ids], _READ.stamp
        )

    async def mark_stale(self, heard_before: datetime) -> list[str]:
        # One statement is one transaction in autocommit mode; RETURNING names exactly the rows this call changed.
        sql = (
            "UPDATE node_registrations SET health_status = 'STALE', updated_at = ? "
            "WHERE last_heartbeat < ? AND health_status NOT IN ('STALE', 'STOPPED') RETURNING node_id"
        )
        return await self._call(self._fetch, "mark_stale", sql, (_now(), _ts(heard_before)), lambda row: str(row[0]))

    async def list_steps(self, workflow_id: uuid.UUID) -> list[StepRow]:
        return await self._query(
            "list_steps",
            f"{SELECT_STEP} WHERE workflow_id = ? ORDER BY step_order, rowid",
            (_uid(workflow_id),),
            _READ.step,
        )

    async def list_transitions(self, entity_id: str) -> list[TransitionRow]:
        """By ``created_at``, then in the order they were stored."""
        return await self._query(
            "list_transitions",
            f"{SELECT_TRANSITION} WHERE entity_id = ? ORDER BY created_at, seq",
            (entity_id,),
            _READ.transition,
        )

    async def get_stamps_by_hash(self, file_hash: str) -> list[StampRow]:
        return await self._query(
            "get_stamps_by_hash",
            f"{SELECT_STAMP} WHERE file_hash = ? ORDER BY created_at, rowid",
            (file_hash,),
            _READ.stamp,
        )

    async def list_stamps(self, namespace: str, *, limit: int = 100, offset: int = 0) -> list[StampRow]:
        """A page of a namespace's stamps, oldest first (``created_at``, then the order they were stored)."""
        _check_page(limit, offset)
        return await self._query(
            "list_stamps",
            f"{SELECT_STAMP} WHERE namespace = ? ORDER BY created_at, rowid LIMIT ? OFFSET ?",
            (namespace, limit, offset),
            _READ.stamp,
        )

    async def get_bridge_state(self, namespace: str) -> BridgeStateRow | None:
        rows = await self._query(
            "get_bridge_state", f"{SELECT_BRIDGE_STATE} WHERE namespace = ?", (namespace,), _READ.bridge_state
        )
        return rows[0] if rows else None

    async def list_bridge_states(self) -> list[BridgeStateRow]:
        return await self._query(
            "list_bridge_states", f"{SELECT_BRIDGE_STATE} ORDER BY namespace", (), _READ.bridge_state
        )

    async def list_registrations(self) -> list[RegistrationRow]:
        return await self._query(
            "list_registrations", f"{SELECT_REGISTRATION} ORDER BY node_id", (), _READ.registration
        )

    async def list_event_logs(self, correlation_id: uuid.UUID, *, limit: int = 1000) -> list[EventLogRow]:
        """The logged events of one correlation id, by ``timestamp`` (an addition to the ``Store`` API)."""
        _check_page(limit, 0)
        return await self._query(
            "list_event_logs",
            f"{SELECT_EVENT_LOG} WHERE correlation_id = ? ORDER BY timestamp, rowid LIMIT ?",
            (_uid(correlation_id), limit),
            _READ.event_log,
        )

    # --- dead letters ----------------------------------------------------------------------------------------------

    async def add_dead_letters(self, rows: Sequence[DeadLetterRow]) -> None:
        now = _now()
        params = self._encode_dead_letters("add_dead_letters", rows, now)
        await self._call(self._write_sync, "add_dead_letters", [(_INSERT_DEAD_LETTER, params)])

    async def record_replay(self, rows: Sequence[DeadLetterRow], at: datetime) -> None:
        params = self._encode_dead_letters("record_replay", rows, _now())
        replayed = [(_ts(at), p[0]) for p in params]
        await self._call(self._write_sync, "record_replay", [(_INSERT_DEAD_LETTER, params), (_REPLAYED, replayed)])

    @staticmethod
    def _encode_dead_letters(what: str, rows: Sequence[DeadLetterRow], now: str) -> list[tuple[Any, ...]]:
        try:
            return _dead_letter_params(rows, now)
        except _ENCODE_ERRORS as exc:
            raise _store_error(exc, what, "nothing was written") from exc

    def _write_sync(self, what: str, work: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        """Each statement with its parameter rows, all in one transaction (the write lock taken at BEGIN)."""
        conn = self._ready()
        if not any(params for _, params in work):
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            for sql, params in work:
                conn.executemany(sql, params)
            conn.execute("COMMIT")
        except EXECUTE_ERRORS as exc:
            rollback(conn)
            raise _store_error(exc, f"{what} failed on {self.path}", "it was rolled back") from exc
        except BaseException:
            rollback(conn)
            raise

    async def list_dead_letters(self, *, topic: str | None = None, limit: int = 100) -> list[DeadLetterRow]:
        _check_page(limit, 0)
        where, params = (" WHERE topic = ?", [topic]) if topic is not None else ("", [])
        sql = f"{SELECT_DEAD_LETTER}{where} ORDER BY dead_lettered_at DESC, seq DESC LIMIT ?"
        return await self._query("list_dead_letters", sql, (*params, limit), _READ.dead_letter)

    async def count_dead_letters(self, *, topic: str | None = None) -> int:
        where, params = (" WHERE topic = ?", [topic]) if topic is not None else ("", [])
        rows = await self._query("count_dead_letters", f"SELECT count(*) FROM dead_letters{where}", params, _first)
        return int(rows[0])

    async def find_dead_letters(self, event_id: uuid.UUID) -> list[DeadLetterRow]:
        key = _uid(event_id)
        sql = f"{SELECT_DEAD_LETTER} WHERE event_id = ? OR original_event_id = ? ORDER BY dead_lettered_at, seq"
        return await self._query("find_dead_letters", sql, (key, key), _READ.dead_letter)

    async def get_dead_letters(self, event_ids: Sequence[uuid.UUID]) -> list[DeadLetterRow]:
        return await self._read(self._get_dead_letters_sync, list(event_ids))

    def _get_dead_letters_sync(self, event_ids: list[uuid.UUID]) -> list[DeadLetterRow]:
        self._ready()
        sql = f"{SELECT_DEAD_LETTER} WHERE event_id IN ({{marks}})"
        return self._fetch_in("get_dead_letters", sql, [_uid(i) for i in event_ids], _READ.dead_letter)

    # --- aggregate windows and node state --------------------------------------------------------------------------

    async def list_aggregate_windows(
        self,
        *,
        node: str | None = None,
        aggregation: str | None = None,
        namespace: str | None = None,
        closed: bool | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[AggregateWindowRow]:
        _check_page(limit, 0)
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("node =", node),
            ("aggregation =", aggregation),
            ("namespace =", namespace),
            ("closed =", None if closed is None else int(closed)),
            ("window_start >=", _ts(since)),
        ):
            if value is not None:
                where.append(f"{column} ?")
                params.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        # SQLite sorts NULL below every value, so DESC puts the rows without a window last (no NULLS LAST before
        # SQLite 3.30); the timestamps are fixed-width text, so text order is time order.
        sql = (
            f"{SELECT_AGGREGATE_WINDOW}{clause} "
            "ORDER BY window_start DESC, group_key, node, aggregation, window_id LIMIT ?"
        )
        return await self._query("list_aggregate_windows", sql, (*params, limit), _READ.aggregate_window)

    async def get_aggregate_windows(self, node: str, *, open_only: bool = True) -> list[AggregateWindowRow]:
        only_open = " AND closed = 0" if open_only else ""
        sql = f"{SELECT_AGGREGATE_WINDOW} WHERE node = ?{only_open} ORDER BY aggregation, group_key, window_id"
        return await self._query("get_aggregate_windows", sql, (node,), _READ.aggregate_window)

    async def get_node_states(self, node: str, keys: Sequence[str]) -> list[NodeStateRow]:
        return await self._read(self._get_node_states_sync, node, list(keys))

    def _get_node_states_sync(self, node: str, keys: list[str]) -> list[NodeStateRow]:
        self._ready()
        sql = f'{SELECT_NODE_STATE} WHERE node = ? AND "key" IN ({{marks}})'
        return self._fetch_in("get_node_states", sql, keys, _READ.node_state, before=(node,))

    async def list_node_states(self, node: str, *, limit: int = 1000) -> list[NodeStateRow]:
        _check_page(limit, 0)
        sql = f'{SELECT_NODE_STATE} WHERE node = ? ORDER BY "key" LIMIT ?'
        return await self._query("list_node_states", sql, (node, limit), _READ.node_state)

    async def count(self, table: str) -> int:
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; expected one of {', '.join(TABLES)}")
        # The name is one of TABLES, so formatting it into the SQL is safe (identifiers cannot be parameters).
        rows = await self._query(f"count of {table}", f"SELECT count(*) FROM {table}", (), _first)
        return int(rows[0])

    # --- health ------------------------------------------------------------------------------------------------------

    async def health(self) -> StoreHealth:
        """``ok``; ``down`` with the reason when the store is not open, the file fails or the schema is not current.

        ``queued_writes`` is the rows of the ``apply`` calls waiting for or running on the database thread. Asked
        where reads run, so that a readiness probe does not queue behind the writes: on the database thread it took
        630-673 ms (p50) while 20,000 stamps were written, on the reader 4.7-5.5 ms (at most 268 ms).
        """
        if self._executor is None:
            return StoreHealth("down", f"{self!r} is {'closed' if self._closed else 'not open'}", self._queued)
        try:
            detail = await self._read(self._health_sync)
        except StoreError as exc:
            return StoreHealth("down", str(exc), self._queued)
        return StoreHealth("ok", detail, self._queued)

    def _health_sync(self) -> str:
        conn = self._ready()
        try:
            version = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
        except sqlite3.Error as exc:
            raise _store_error(exc, self.path) from exc
        return f"{self.path} (SQLite {sqlite3.sqlite_version}, journal {self._journal_mode}, schema {version})"


def _checkpoint_only(batch: WriteBatch) -> bool:
    """Whether ``batch`` is workflow rows alone (an orchestrator's checkpoint, which its outcomes wait for, and so a
    client): such batches are written ahead of the rest of their group (``GroupCommit``'s ``first``)."""
    return bool(batch.workflows) and len(batch) == len(batch.workflows) and not batch.processed_event_ids


def _first(row: tuple[Any, ...]) -> Any:
    return row[0]


def _texts_of(ids: Sequence[uuid.UUID], what: str) -> dict[str, uuid.UUID]:
    """Each id's stored text, to the id as given; a StoreError naming ``what`` for one that is no UUID."""
    try:
        return {_uid(i): i for i in ids}
    except _ENCODE_ERRORS as exc:
        raise _store_error(exc, what) from exc


def _check_page(limit: int, offset: int) -> None:
    if limit < 0 or offset < 0:
        raise ValueError(f"limit and offset must not be negative (limit={limit}, offset={offset})")


def _store_error(exc: BaseException, doing: str, then: str = "") -> StoreError:
    """The onex error for ``exc``, raised by ``sqlite3`` or by encoding a value for it: the one place this backend
    maps them (``_sqlite_exec.failure``, which the writer process uses too). The message is ``doing: <what went
    wrong>`` (``; then``, when given: what became of the call).

    ``StoreUnavailable`` when the database cannot be written now (``_sqlite_exec.unavailable``: another connection
    kept it locked past the busy timeout, the file is read-only, the disk is full, the file system fails): the same
    call may well succeed later, once the lock goes or someone acts, and the nodes hold their work meanwhile.
    ``StoreError`` for everything else, which is about the call or the file (a constraint, a value SQLite cannot bind,
    a corrupt file) and would fail again.
    """
    return raised(failure(exc, doing, then))


def _refused(exc: BaseException, doing: str) -> StoreError:
    """The error for ``exc`` where a file that cannot be written is refused, not waited for: opening the store, and
    the write probe before nodes start (a command says why and exits instead of holding). A plain ``StoreError``
    but for a database another connection keeps locked (``StoreUnavailable``, as ever: it can be written, later)."""
    if locked(exc):
        return _store_error(exc, doing)
    return StoreError(f"{doing}: {describe(exc)}")
