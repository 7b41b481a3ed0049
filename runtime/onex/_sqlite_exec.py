"""How the SQLite store's encoded rows are written on a connection, and the writer process that does it.

Rows arrive here encoded (``onex._sqlite_writes`` turns a ``WriteBatch`` into each table's parameter tuples, the ids
as ints, which ``with_texts`` formats here, off the event loop's thread where this runs in a process); what is left is
SQL: each table's multi-row INSERTs (``Sql.statements``), the numbering of stamp versions, a group of batches
written as one (``merged``), savepoints when a batch of the group fails, and the errors as the store reports them.

The same code runs in two places. On the store's database thread, where ``SqliteStore`` writes a ``:memory:``
database, or any database when it is given ``writer="thread"``; and in the writer process (``python -I`` of this
file, ``child_main``), where ``SqliteStore`` writes a database file by default, so that SQLite's work never waits for
the interpreter lock the nodes' event loop holds (``onex._sqlite_process``, README design decisions). That is why
this module imports nothing of onex but ``_jsontext`` (json and orjson): run as a script it puts a bare ``onex``
package in place first, so that the process starts in tens of milliseconds instead of importing pydantic, asyncio and
every node's dependency (half a second).

Frames between the store and its writer process are a 4-byte big-endian length and a pickle. The store sends its
configuration once (``Config``), then one group at a time: ``{batch index: packed batch}`` and the number of batches,
where a batch is packed by ``packed`` (marshal: the plain values SQLite binds, nothing the process would have to
import); the process answers each with every batch's error (None, or ``(unavailable, message)``) and the transactions
it committed. ``None``, or the end of its input, stops it.
"""

from __future__ import annotations

if __name__ == "__main__":  # pragma: no cover - the writer process (see the module docstring); tested through it
    import os as _os
    import sys as _sys
    import types as _types

    _package = _types.ModuleType("onex")
    _package.__path__ = [_os.path.dirname(_os.path.abspath(__file__))]
    _sys.modules["onex"] = _package

import contextlib
import functools
import itertools
import json
import marshal
import os
import pickle
import signal
import sqlite3
import struct
import sys
from collections.abc import Iterable, Iterator
from typing import Any, Final, NamedTuple, TypeVar

from onex import _jsontext

T = TypeVar("T")

BUSY_TIMEOUT_S: Final = 10.0  # how long a statement waits for another connection's lock before failing
# The connection's prepared statements: the writers' (a few dozen texts a table: their row counts are exact up to
# EXACT_ROWS, then powers of two up to MULTI_ROW), the reads (their key lists a power of two long: _padded), the
# migrations' (sqlite3's default is 128).
STATEMENTS_CACHED: Final = 512
# Set on every connection, after "PRAGMA journal_mode = WAL" (bench/store_sqlite.py gives its raw floor the same).
PRAGMAS: Final = (
    "PRAGMA synchronous = NORMAL",
    # No table declares a foreign key (see the migration); this is SQLite's per-connection opt-in, so that one a
    # later migration declares is enforced as PostgreSQL would enforce it.
    "PRAGMA foreign_keys = ON",
    # Checkpoint every ~40 MB of WAL instead of SQLite's 4 MB: a batch touches pages all over the uuid-keyed
    # indexes, a checkpoint writes each touched page once however many commits changed it, and it costs two
    # fsyncs. Measured on the bench workload: ~20% more rows/s. The WAL file is cut back to 64 MB afterwards.
    # (SqliteStore turns this off on its writer and checkpoints from another thread instead: see onex._sqlite's
    # docstring; a plain connection, such as the benchmark's raw floor, keeps it.)
    "PRAGMA wal_autocheckpoint = 10000",
    "PRAGMA journal_size_limit = 67108864",
)
IN_CHUNK: Final = 512  # ids per "IN (...)" list: below SQLite's variable limit, even on old builds (999)
MULTI_ROW: Final = 512
EXACT_ROWS: Final = 32  # up to this many rows go in one statement of their own count; more, a power of two
# What executing may raise besides sqlite3.Error: an int beyond 64 bits (OverflowError), a str that is not valid
# Unicode (UnicodeEncodeError), a parameter of a type sqlite3 cannot bind.
EXECUTE_ERRORS: Final = (sqlite3.Error, OverflowError, UnicodeError, ValueError, TypeError)

Failure = tuple[bool, str]  # (whether it is StoreUnavailable rather than StoreError, the message)


def connect(path: str, busy_timeout_s: float | None = None) -> sqlite3.Connection:
    """A connection to ``path``: no implicit BEGIN from the sqlite3 module (transactions are explicit), SQLite's busy
    timeout (``BUSY_TIMEOUT_S`` unless given) from the first statement on (the journal mode may wait too), the
    statements' cache."""
    timeout = BUSY_TIMEOUT_S if busy_timeout_s is None else busy_timeout_s
    return sqlite3.connect(path, isolation_level=None, timeout=timeout, cached_statements=STATEMENTS_CACHED)


def configure(conn: sqlite3.Connection) -> str:
    """WAL where the file system allows it, ``PRAGMAS``, and ``onex_json_merge``; the journal mode in effect."""
    # Not every file system can do WAL (some network ones): SQLite then keeps its rollback journal.
    mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
    for pragma in PRAGMAS:
        conn.execute(pragma)
    conn.create_function("onex_json_merge", 2, json_merge, deterministic=True)
    return mode


def close(conn: sqlite3.Connection) -> None:
    """Close a writer's connection, refreshing the planner's statistics first where it is worth it (cheap, and SQLite
    advises it before closing; closing matters more than the statistics, hence no error from them)."""
    try:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA optimize")
    finally:
        conn.close()


def json_merge(base: str, over: str) -> str:
    """SQL ``onex_json_merge(base, over)``: the shallow merge of two JSON objects, ``over``'s keys winning."""
    if over == "{}":
        return base
    if base == "{}":
        return over
    merged = json.loads(base)
    merged.update(json.loads(over))
    return _jsontext.dumps(merged)


class StampColumns(NamedTuple):
    """Where a stamp row holds what its version's numbering reads (``numbered``)."""

    namespace: int
    file_path: int
    file_hash: int
    version: int


class Sql(NamedTuple):
    """How one table's encoded rows are written: its statement, and what messages call it."""

    order: int  # its place among the writers (``_sqlite_writes.SQL``): a group's tables are written in it (``merged``)
    table: str
    operation: str  # for messages: "upsert", "insert" ...
    sql: str  # one row's statement: INSERT ... VALUES (?, ...) ... (repeated for many rows), or an UPDATE
    stamps: StampColumns | None = None  # the stamps' table, whose rows are numbered before they are written
    ordered: bool = False  # its rows' outcome depends on the order of batches (registrations, heartbeats)
    uuids: tuple[int, ...] = ()  # where its rows hold ids as 128-bit ints, written as their text (``with_texts``)

    def statements(self, rows: list[tuple[Any, ...]], max_variables: int) -> Iterator[tuple[str, list[Any], bool]]:
        """How to execute ``rows``: (sql, parameters, whether they are ``executemany``'s list of rows).

        Multi-row INSERTs of up to ``MULTI_ROW`` rows each, not ``executemany``: that runs one ``sqlite3_step`` per row,
        and the sqlite3 module releases the GIL around each, so a writer thread asks for the GIL back once per row.
        While the event loop's thread keeps the interpreter busy, each of those waits can last a switch interval
        (CPython's 5 ms; 1 ms in onex's processes, ``onex.runtime.tune_process``) and the writer falls far behind (the
        "convoy" effect, which cost a third of the end-to-end throughput). One statement per chunk asks once per chunk,
        and a group of batches is one batch (``merged``). Within one statement SQLite applies the rows in order, a
        later row's conflict with an earlier one included, as executemany would. A statement without one VALUES row (the
        heartbeat UPDATE) goes through ``executemany``.
        """
        if not _split_values(self.sql)[1]:
            yield self.sql, rows, True
            return
        per = max(1, min(MULTI_ROW, max_variables // max(len(rows[0]), 1))) if rows else 1
        start = 0
        while start < len(rows):
            # What is left in one statement up to EXACT_ROWS rows (a group's commonest case: one statement a table),
            # else a power of two rows (the largest that fits): a few dozen statement texts per table, which stay in
            # the connection's statement cache, instead of one to parse for every count.
            left = min(per, len(rows) - start)
            count = left if left <= EXACT_ROWS else 1 << (left.bit_length() - 1)
            chunk = rows[start : start + count]
            start += count
            yield multi_row(self.sql, count), list(_flat(chunk)), False


Work = list[tuple[Sql, list[tuple[Any, ...]]]]  # a batch's tables, each with its encoded rows, in writing order


# The texts of the ids formatted lately (``uuid_text``): a stamp's rows name the same few ids again and again (its
# workflow's in five rows of four tables: 13 ids a stamp, 4 of them distinct). Cleared when full; a lookup or an entry
# racing a clear on another store's thread only costs a formatting.
_TEXTS_KEPT: Final = 8192
_texts_kept: dict[int, str] = {}


def uuid_text(value: int) -> str:
    """The text of the UUID whose 128-bit int is ``value``, as ``str(uuid.UUID(int=value))`` writes it."""
    text = _texts_kept.get(value)
    if text is None:
        if len(_texts_kept) >= _TEXTS_KEPT:
            _texts_kept.clear()
        digits = f"{value:032x}"
        text = _texts_kept[value] = f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
    return text


def with_texts(work: Work) -> Work:
    """``work`` with each table's ids (``Sql.uuids``) as the text the store keeps. The event loop's thread hands them
    over as ints, which cost less to make and to pack than the text, so that the writer (the process, where there is
    one) formats them instead."""
    return [(sql, _texts(sql.uuids, len(rows[0]))(rows) if sql.uuids and rows else rows) for sql, rows in work]


@functools.cache
def _texts(positions: tuple[int, ...], width: int) -> Any:
    """A function of a table's rows (``width`` values each) with the ids at ``positions`` as text (None stays)."""
    values = [f"(None if (v := r[{i}]) is None else _text(v))" if i in positions else f"r[{i}]" for i in range(width)]
    scope: dict[str, Any] = {"_text": uuid_text}
    exec(f"def texts(rows):\n    return [({', '.join(values)},) for r in rows]\n", scope)
    return scope["texts"]


_flat: Final = itertools.chain.from_iterable  # the rows' values in one list, in C


@functools.cache
def multi_row(sql: str, count: int) -> str:
    """``sql`` with its one VALUES row repeated ``count`` times."""
    head, values, tail = _split_values(sql)
    return f"{head}{','.join([values] * count)}{tail}"


@functools.cache
def _split_values(sql: str) -> tuple[str, str, str]:
    """``sql`` as (up to and including "VALUES ", the one "(?, ...)" row, the rest); ("", "", "") without one."""
    at = sql.find("VALUES (")
    if at < 0:
        return "", "", ""
    end = sql.index(")", at)
    return sql[: at + len("VALUES ")], sql[at + len("VALUES ") : end + 1], sql[end + 1 :]


def padded(keys: list[T]) -> list[T]:
    """``keys`` with the last repeated up to a power of two. What matches an IN list, or a VALUES list read into a
    set, does not change with a key twice; and then a handful of statement texts per query stay prepared in the
    connection's cache, where a text for every count was parsed each time and pushed the writes' statements out."""
    return keys + keys[-1:] * ((1 << (len(keys) - 1).bit_length()) - len(keys))


# The stored versions of files given as (namespace, file_path) rows: multi_row repeats the row.
_STORED_VERSIONS: Final = (
    "SELECT m.namespace, m.file_path, m.file_hash, m.version FROM (VALUES (?, ?)) AS f"
    " JOIN metadata_stamps AS m ON m.namespace = f.column1 AND m.file_path = f.column2"
)


def _numbered(conn: sqlite3.Connection, at: StampColumns, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The stamp rows, each without a ``version`` given the next of its file (namespace, file_path): 1 + the highest
    stored, counting up in batch order; a row that will be dropped as a duplicate (its key stored, or earlier in
    the batch) uses no number.

    One query per batch (inside its transaction: SQLite has one writer) reads the stored rows of the batch's files.
    Migration 0005's trigger numbers a row without a version too, for other writers, but with an UPDATE per row,
    which cost the raw floor of bench/e2e about a quarter of its throughput."""
    ns, path, digest, version_at = at
    files = list({(r[ns], r[path]) for r in rows if r[version_at] is None})
    if not files:
        return rows
    latest: dict[tuple[str, str], int] = {}
    stored: set[tuple[str, str, str]] = set()
    for start in range(0, len(files), IN_CHUNK // 2):  # two variables a file
        chunk = padded(files[start : start + IN_CHUNK // 2])
        for namespace, file_path, file_hash, version in conn.execute(
            multi_row(_STORED_VERSIONS, len(chunk)), list(_flat(chunk))
        ):
            stored.add((namespace, file_path, file_hash))
            latest[namespace, file_path] = max(latest.get((namespace, file_path), 0), version or 0)
    numbered = []
    for row in rows:
        key = (row[ns], row[path], row[digest])
        if row[version_at] is None and key not in stored:
            version = latest.get(key[:2], 0) + 1
            latest[key[:2]] = version
            row = (*row[:version_at], version, *row[version_at + 1 :])
        stored.add(key)
        numbered.append(row)
    return numbered


def execute(conn: sqlite3.Connection, sql: Sql, params: list[tuple[Any, ...]]) -> None:
    """Write one table's rows (``params``) in the statements ``Sql.statements`` makes of them."""
    if sql.stamps is not None:
        params = _numbered(conn, sql.stamps, params)
    for text, args, many in sql.statements(params, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)):
        if many:
            conn.executemany(text, args)
        else:
            conn.execute(text, args)


def merged(batches: Iterable[Work]) -> Work | None:
    """The rows of several batches as one batch's: each table's rows of every batch in batch order, the tables in
    the order a batch writes them. None where that could store something else than the batches one after the other:
    a node's registration and its heartbeat, whose outcome depends on which comes first (the other tables' rows are
    keyed, version-guarded or idempotent, and the triggers between stamps and steps fire either way round)."""
    by_table: dict[Sql, list[tuple[Any, ...]]] = {}
    for statements in batches:
        for sql, params in statements:
            if sql.ordered:
                return None
            if (rows := by_table.get(sql)) is None:
                by_table[sql] = list(params)
            else:
                rows += params
    return sorted(by_table.items(), key=lambda item: item[0].order)


def _write_merged(conn: sqlite3.Connection, work: Work) -> bool:
    """Write ``merged``'s rows: True once written; False when a row fails, with the transaction rolled back (the
    group is then written again batch by batch, so that only the batch at fault fails)."""
    try:
        for sql, params in work:
            execute(conn, sql, params)
    except EXECUTE_ERRORS:
        if not conn.in_transaction:  # SQLite rolled the whole transaction back by itself (SQLITE_FULL, IOERR ...)
            raise
        conn.execute("ROLLBACK")
        return False
    return True


def _one_statement(conn: sqlite3.Connection, work: Work) -> tuple[str, str, list[Any]] | None:
    """(what, sql, parameters) where ``work`` is one statement, which SQLite runs as a transaction of its own; None
    where it is more (the stamps' numbering reads first), or more than ``EXACT_ROWS`` rows (a large group: the two
    statements saved matter less than building its parameters twice)."""
    if len(work) != 1 or work[0][0].stamps is not None or len(work[0][1]) > EXACT_ROWS:
        return None
    sql, params = work[0]
    statements = list(sql.statements(params, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)))
    if len(statements) != 1 or statements[0][2]:
        return None
    return f"{sql.operation} of {sql.table}", statements[0][0], statements[0][1]


def write_group(
    conn: sqlite3.Connection, work: dict[int, Work], count: int, path: str
) -> tuple[list[Failure | None], int]:
    """Write the encoded batches ``work`` (by their index among ``count`` batches) in one transaction: each batch's
    failure or None, and the transactions committed (0 or 1).

    Several batches are written as one (``merged``: each table's rows in one go), without BEGIN and COMMIT when that
    is one statement; where that cannot be, or a row fails, each inside a savepoint of its own: a batch that fails is
    rolled back alone and gets its error, the others are committed. An error of the transaction itself (BEGIN,
    COMMIT, a row of a lone batch) fails every batch."""
    errors: list[Failure | None] = [None] * count
    work = {index: with_texts(statements) for index, statements in work.items()}
    alone = len(work) == 1  # the savepoint costs nothing to leave out, and a lone batch is the common case
    together = next(iter(work.values())) if alone else merged(work.values())  # one statement a table
    single = None if together is None else _one_statement(conn, together)
    current = "begin"

    def failed(exc: BaseException) -> Failure:
        return failure(exc, f"apply: {current} failed on {path}", "the batch was rolled back")

    try:
        if single is not None:  # a transaction by itself: no BEGIN and COMMIT to hand the lock over for
            current = single[0]
            try:
                conn.execute(single[1], single[2])
            except EXECUTE_ERRORS:
                if alone:
                    raise
                together = None  # nothing of it was written: batch by batch, below
            else:
                return errors, 1
        conn.execute("BEGIN IMMEDIATE")
        current = "write"
        if not alone and together is not None and not _write_merged(conn, together):
            together = None
            conn.execute("BEGIN IMMEDIATE")  # _write_merged rolled its transaction back
        if alone or together is None:
            for index, statements in work.items():
                if not alone:
                    conn.execute("SAVEPOINT onex_batch")
                try:
                    for sql, params in statements:
                        current = f"{sql.operation} of {sql.table}"
                        execute(conn, sql, params)
                except EXECUTE_ERRORS as exc:
                    # SQLite rolls the whole transaction back by itself after some errors (SQLITE_FULL, IOERR...):
                    # then there is no savepoint to go back to, and the batches before it are undone too.
                    if alone or not conn.in_transaction:
                        raise
                    conn.execute("ROLLBACK TO onex_batch")
                    conn.execute("RELEASE onex_batch")
                    errors[index] = failed(exc)
                    continue
                if not alone:
                    conn.execute("RELEASE onex_batch")
        current = "commit"
        conn.execute("COMMIT")
    except EXECUTE_ERRORS as exc:
        rollback(conn)
        for index in work:
            if errors[index] is None:
                errors[index] = failed(exc)
        return errors, 0
    except BaseException:
        rollback(conn)
        raise
    return errors, 1


def rollback(conn: sqlite3.Connection) -> None:
    # SQLite may have rolled back by itself already (after SQLITE_FULL, SQLITE_IOERR ...): then this one fails.
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def failure(exc: BaseException, doing: str, then: str = "") -> Failure:
    """How the store reports ``exc`` (``onex._sqlite._store_error``): whether it is ``StoreUnavailable`` (the
    database cannot be written at all for now, ``unavailable``: the same call may well succeed later), and the
    message, ``doing: <what went wrong>`` (``; then``, when given: what became of the call)."""
    message = f"{doing}: {describe(exc)}"
    return unavailable(exc), f"{message}; {then}" if then else message


# The SQLite errors that say the database cannot be written now, whatever is written: another connection kept it
# locked past the busy timeout (BUSY, LOCKED), the file or its directory is read-only (READONLY), the disk or the
# database is full (FULL), the file system fails (IOERR), the file cannot be opened (CANTOPEN, a writer process
# started mid-run). Each fails every batch alike until someone acts (or the lock goes), so it is an outage the nodes
# hold through (``StoreUnavailable``), not a bad batch to retry three times and dead-letter (which, kept in the same
# store, fails too). Extended codes (SQLITE_READONLY_DBMOVED, SQLITE_IOERR_WRITE ...) count as their primary code.
UNAVAILABLE: Final = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CANTOPEN,
    }
)


def locked(exc: BaseException) -> bool:
    """Whether ``exc`` says another connection kept the database locked past the busy timeout (BUSY, LOCKED): the
    database can be written, only not now."""
    busy = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return isinstance(exc, sqlite3.OperationalError) and (exc.sqlite_errorcode & 0xFF) in busy  # extended codes too


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be written now (``UNAVAILABLE``): the SQLite errors that are about
    availability (``StoreUnavailable``), not about the batch."""
    return isinstance(exc, sqlite3.OperationalError) and (exc.sqlite_errorcode & 0xFF) in UNAVAILABLE


def probe_write(conn: sqlite3.Connection) -> None:
    """Take the write lock and make a write that is rolled back (nothing changes): the sqlite3 error of a database
    that cannot be written (read-only file or directory, a file system that refuses writes), before anything relies on
    writing it. Needs the migrations' table (``schema_migrations``). A full disk may pass: a rolled-back write reaches
    no file; the writes that meet it are held as an outage (``unavailable``)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        # A row that exists, written as it is: SQLite writes the page (and so asks for the file) all the same.
        conn.execute(
            "UPDATE schema_migrations SET name = name WHERE version = (SELECT max(version) FROM schema_migrations)"
        )
    finally:
        rollback(conn)


def describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


# --- the writer process ---------------------------------------------------------------------------------------------

LENGTH: Final = struct.Struct("!I")  # a frame's first 4 bytes: the pickle's length


class Config(NamedTuple):
    """What the writer process is told first: the database, every table's ``Sql`` by its order, the busy timeout."""

    path: str
    writers: tuple[Sql, ...]
    busy_timeout_s: float


Tables = list[tuple[int, list[tuple[Any, ...]]]]  # an encoded batch: each table's writer (its Sql.order) and rows


def packed(tables: Tables) -> bytes:
    """An encoded batch as the writer process reads it (``unpacked``): marshal's bytes, which a value marshal does
    not write (a subclass of str or int, an enum's member, a datetime) makes fail with ValueError (then ``bindable``).
    Marshal rather than pickle: it writes the values SQLite binds in about two thirds of the time, and never a
    reference to a class, which the process (importing nothing of the program that runs the store) could not load."""
    return marshal.dumps(tables)


def unpacked(data: bytes) -> Tables:
    tables: Tables = marshal.loads(data)
    return tables


def bindable(value: Any) -> Any:
    """``value`` as ``packed`` can write it and SQLite binds it as ``sqlite3`` would bind ``value`` itself: through the
    adapter registered for its type (``sqlite3.register_adapter``: datetimes on Python 3.11, say), or as the built-in
    type it subclasses (an ``enum.StrEnum`` member as its text, an ``IntEnum``'s as its number). TypeError for what
    ``sqlite3`` cannot bind either."""
    adapter = sqlite3.adapters.get((type(value), sqlite3.PrepareProtocol))
    if adapter is not None:
        value = adapter(value)
    if value is None or type(value) in (str, int, float, bytes, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)  # the text itself, not what the subclass's __str__ says (an enum member's name)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(memoryview(value))
    raise TypeError(f"type {type(value).__name__!r} is not supported")


def send(fd: int, value: Any) -> memoryview | None:
    """Write ``value`` to ``fd`` as one frame: on a blocking ``fd`` until it is all written (None); on a non-blocking
    one (the store's end of the pipe, ``onex._sqlite_process``) what the pipe could not take yet, for the caller to
    write once it is writable (``write_some``), or None when it took it all."""
    data = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    return write_some(fd, memoryview(LENGTH.pack(len(data)) + data))


def write_some(fd: int, view: memoryview) -> memoryview | None:
    """Write ``view`` to ``fd`` until it is written (None) or ``fd`` is non-blocking and full: then what is left."""
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            return view
    return None


def receive(fd: int) -> Any:
    """The next frame's value from ``fd`` (blocking); EOFError at the end of the input."""
    (length,) = LENGTH.unpack(_read_exactly(fd, LENGTH.size))
    return pickle.loads(_read_exactly(fd, length))


def _read_exactly(fd: int, size: int) -> bytes:
    parts = []
    while size:
        part = os.read(fd, min(size, 1 << 20))
        if not part:
            raise EOFError
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def child_main() -> None:  # pragma: no cover - runs in the writer process; tested through SqliteStore
    """The writer process: frames on stdin, answers on stdout (module docstring). Interrupts are for the process
    that started it, which drains its writes and then ends this one by closing its input."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    source, answers = sys.stdin.fileno(), sys.stdout.fileno()
    try:
        config: Config = receive(source)
    except EOFError:
        return
    conn = None
    try:
        conn = connect(config.path, config.busy_timeout_s)
        configure(conn)
        conn.execute("PRAGMA wal_autocheckpoint = 0")  # the store's checkpointer thread does it (onex._sqlite)
    except sqlite3.Error as exc:
        send(answers, failure(exc, f"cannot open SQLite database {config.path}"))
        return
    send(answers, None)
    writers = config.writers
    try:
        while True:
            try:
                message = receive(source)
            except EOFError:
                return
            if message is None:
                return
            group, count = message
            try:
                work = {index: [(writers[w], rows) for w, rows in unpacked(data)] for index, data in group.items()}
                answer = write_group(conn, work, count, config.path)
            except Exception as exc:  # a bug of this module's, not the rows': every batch gets it
                answer = [failure(exc, f"apply failed on {config.path}")] * count, 0
            try:
                send(answers, answer)
            except OSError:  # the store's process is gone (killed): what was committed stays, as after any crash
                return
    finally:
        close(conn)


if __name__ == "__main__":  # pragma: no cover
    # Through the module, not this script's own copy: the frames' Sql and Config are onex._sqlite_exec's.
    from onex._sqlite_exec import child_main as _main

    _main()
