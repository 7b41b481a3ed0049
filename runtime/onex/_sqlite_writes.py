"""How the SQLite store's writes become statements: each table's multi-row INSERTs (``_Writer``), the numbering of
stamp versions, and a group of batches written as one (``_merged``). The store itself, and why, is ``onex._sqlite``.
"""

from __future__ import annotations

import functools
import itertools
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from onex import _tables
from onex._sqlite_values import _TO_SQL
from onex._tables import Table

T = TypeVar("T")

IN_CHUNK: Final = 512  # ids per "IN (...)" list: below SQLite's variable limit, even on old builds (999)
# What executing may raise besides sqlite3.Error: an int beyond 64 bits (OverflowError), a str that is not valid
# Unicode (UnicodeEncodeError), a parameter of a type sqlite3 cannot bind.
_EXECUTE_ERRORS: Final = (sqlite3.Error, OverflowError, UnicodeError, ValueError, TypeError)


_RULES: Final = {
    **_tables.COMMON_RULES,
    _tables.Rule.GREATEST: "max({t}.{c}, EXCLUDED.{c})",
    # The empty cases in SQL: onex_json_merge is Python, and calling it from inside the statement takes the GIL.
    _tables.Rule.MERGE: "CASE WHEN EXCLUDED.{c} = '{{}}' THEN {t}.{c} WHEN {t}.{c} = '{{}}' THEN EXCLUDED.{c} "
    "WHEN EXCLUDED.{seq} >= {t}.{seq} THEN onex_json_merge({t}.{c}, EXCLUDED.{c}) "
    "ELSE onex_json_merge(EXCLUDED.{c}, {t}.{c}) END",
    _tables.Rule.NOW: "EXCLUDED.{c}",  # the written column, bound to the time of the apply
}


def _insert(table: Table[Any]) -> str:
    """``INSERT ... VALUES (?, ...) ON CONFLICT ...``: the row's columns, then the ``written`` ones.

    ``ON CONFLICT DO NOTHING``, not ``INSERT OR IGNORE``: OR IGNORE also swallows NOT NULL and CHECK violations,
    which must fail the batch instead of silently dropping a row.
    """
    names = [c.sql for c in (*table.stored, *table.written)]
    return (
        f"INSERT INTO {table.name} AS {table.alias} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
        f"{table.on_conflict(_RULES)}"
    )


# Timestamps are fixed-width UTC text, so "<=" compares times. The parameters are those of _tables.HEARTBEATS.
_HEARTBEAT: Final = """
UPDATE node_registrations SET
    health_status = ?2,
    last_heartbeat = ?3,
    metadata = onex_json_merge(metadata, ?4),
    updated_at = ?5
WHERE node_id = ?1 AND (last_heartbeat IS NULL OR last_heartbeat <= ?3)
"""


@dataclass(frozen=True, slots=True)
class _Writer:
    """How the rows of one ``WriteBatch`` field are written."""

    field: str  # the WriteBatch attribute
    table: str
    operation: str  # for messages: "upsert", "insert" ...
    sql: str
    encode: _tables.Encode  # (rows, now) -> one parameter tuple per row
    key: tuple[str, ...]  # the row attributes that identify a row in a message

    def statements(self, rows: list[tuple[Any, ...]], max_variables: int) -> Iterator[tuple[str, list[Any], bool]]:
        """How to execute ``rows``: (sql, parameters, whether they are ``executemany``'s list of rows).

        Multi-row INSERTs of up to ``MULTI_ROW`` rows each, not ``executemany``: that runs one ``sqlite3_step`` per row,
        and the sqlite3 module releases the GIL around each, so the writer thread asks for the GIL back once per row.
        While the event loop's thread keeps the interpreter busy, each of those waits can last a switch interval
        (CPython's 5 ms; 1 ms in onex's processes, ``onex.runtime.tune_process``) and the writer falls far behind (the
        "convoy" effect, which cost a third of the end-to-end throughput). One statement per chunk asks once per chunk,
        and a group of batches is one batch (``_merged``). Within one statement SQLite applies the rows in order, a
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
            yield _multi_row(self.sql, count), list(_flat(chunk)), False


_flat: Final = itertools.chain.from_iterable  # the rows' values in one list, in C


@functools.cache
def _multi_row(sql: str, count: int) -> str:
    """``sql`` with its one VALUES row repeated ``count`` times."""
    head, values, tail = _split_values(sql)
    return f"{head}{','.join([values] * count)}{tail}"


MULTI_ROW: Final = 512
EXACT_ROWS: Final = 32  # up to this many rows go in one statement of their own count; more, a power of two


@functools.cache
def _split_values(sql: str) -> tuple[str, str, str]:
    """``sql`` as (up to and including "VALUES ", the one "(?, ...)" row, the rest); ("", "", "") without one."""
    at = sql.find("VALUES (")
    if at < 0:
        return "", "", ""
    end = sql.index(")", at)
    return sql[: at + len("VALUES ")], sql[at + len("VALUES ") : end + 1], sql[end + 1 :]


def _writer(field: str, table: Table[Any]) -> _Writer:
    heartbeat = table is _tables.HEARTBEATS
    attrs = {c.name: c.field for c in table.columns}
    return _Writer(
        field,
        table.name,
        "heartbeat update" if heartbeat else table.operation,
        _HEARTBEAT if heartbeat else _insert(table),
        _tables.encoder(table, _TO_SQL, fill_now=True),
        # A stamp by its id too: the key of its own table. By the row's attributes (a window's group, not group_key).
        tuple(dict.fromkeys(attrs.get(k, k) for k in (table.names[0], *table.key))),
    )


_WRITERS: Final = tuple(_writer(field, table) for field, table in _tables.BATCH)
_STAMP_WRITER: Final = next(w for w in _WRITERS if w.table == _tables.STAMPS.name)
_NS, _PATH, _HASH, _VERSION = (
    [c.name for c in _tables.STAMPS.stored].index(n) for n in ("namespace", "file_path", "file_hash", "version")
)


def _numbered(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The stamp rows, each without a ``version`` given the next of its file (namespace, file_path): 1 + the highest
    stored, counting up in batch order; a row that will be dropped as a duplicate (its key stored, or earlier in
    the batch) uses no number.

    One query per batch (inside its transaction: SQLite has one writer) reads the stored rows of the batch's files.
    Migration 0005's trigger numbers a row without a version too, for other writers, but with an UPDATE per row,
    which cost the raw floor of bench/e2e about a quarter of its throughput."""
    files = list({(r[_NS], r[_PATH]) for r in rows if r[_VERSION] is None})
    if not files:
        return rows
    latest: dict[tuple[str, str], int] = {}
    stored: set[tuple[str, str, str]] = set()
    for start in range(0, len(files), IN_CHUNK // 2):  # two variables a file
        chunk = _padded(files[start : start + IN_CHUNK // 2])
        for namespace, path, digest, version in conn.execute(
            _multi_row(_STORED_VERSIONS, len(chunk)), list(_flat(chunk))
        ):
            stored.add((namespace, path, digest))
            latest[namespace, path] = max(latest.get((namespace, path), 0), version or 0)
    numbered = []
    for row in rows:
        key = (row[_NS], row[_PATH], row[_HASH])
        if row[_VERSION] is None and key not in stored:
            version = latest.get(key[:2], 0) + 1
            latest[key[:2]] = version
            row = (*row[:_VERSION], version, *row[_VERSION + 1 :])
        stored.add(key)
        numbered.append(row)
    return numbered


def _execute(conn: sqlite3.Connection, writer: _Writer, params: list[tuple[Any, ...]]) -> None:
    """Write one table's rows (``params``) in the statements ``_Writer.statements`` makes of them."""
    if writer is _STAMP_WRITER:
        params = _numbered(conn, params)
    for sql, args, many in writer.statements(params, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)):
        if many:
            conn.executemany(sql, args)
        else:
            conn.execute(sql, args)


def _merged(
    batches: Iterable[list[tuple[_Writer, list[tuple[Any, ...]]]]],
) -> list[tuple[_Writer, list[tuple[Any, ...]]]] | None:
    """The rows of several batches as one batch's: each table's rows of every batch in batch order, the tables in
    the order a batch writes them. None where that could store something else than the batches one after the other:
    a node's registration and its heartbeat, whose outcome depends on which comes first (the other tables' rows are
    keyed, version-guarded or idempotent, and the triggers between stamps and steps fire either way round)."""
    by_writer: dict[_Writer, list[tuple[Any, ...]]] = {}
    for statements in batches:
        for writer, params in statements:
            if writer.table == _REGISTRATIONS:
                return None
            if (rows := by_writer.get(writer)) is None:
                by_writer[writer] = list(params)
            else:
                rows += params
    return sorted(by_writer.items(), key=lambda item: _WRITE_ORDER[item[0]])


def _write_merged(conn: sqlite3.Connection, merged: list[tuple[_Writer, list[tuple[Any, ...]]]]) -> bool:
    """Write ``_merged``'s rows: True once written; False when a row fails, with the transaction rolled back (the
    group is then written again batch by batch, so that only the batch at fault fails)."""
    try:
        for writer, params in merged:
            _execute(conn, writer, params)
    except _EXECUTE_ERRORS:
        if not conn.in_transaction:  # SQLite rolled the whole transaction back by itself (SQLITE_FULL, IOERR ...)
            raise
        conn.execute("ROLLBACK")
        return False
    return True


def _one_statement(
    conn: sqlite3.Connection, work: list[tuple[_Writer, list[tuple[Any, ...]]]]
) -> tuple[str, str, list[Any]] | None:
    """(what, sql, parameters) where ``work`` is one statement, which SQLite runs as a transaction of its own; None
    where it is more (the stamps' numbering reads first), or more than ``EXACT_ROWS`` rows (a large group: the two
    statements saved matter less than building its parameters twice)."""
    if len(work) != 1 or work[0][0] is _STAMP_WRITER or len(work[0][1]) > EXACT_ROWS:
        return None
    writer, params = work[0]
    statements = list(writer.statements(params, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)))
    if len(statements) != 1 or statements[0][2]:
        return None
    return f"{writer.operation} of {writer.table}", statements[0][0], statements[0][1]


# The stored versions of files given as (namespace, file_path) rows: _multi_row repeats the row.
_STORED_VERSIONS: Final = (
    "SELECT m.namespace, m.file_path, m.file_hash, m.version FROM (VALUES (?, ?)) AS f"
    " JOIN metadata_stamps AS m ON m.namespace = f.column1 AND m.file_path = f.column2"
)


def _padded(keys: list[T]) -> list[T]:
    """``keys`` with the last repeated up to a power of two. What matches an IN list, or a VALUES list read into a
    set, does not change with a key twice; and then a handful of statement texts per query stay prepared in the
    connection's cache, where a text for every count was parsed each time and pushed the writes' statements out."""
    return keys + keys[-1:] * ((1 << (len(keys) - 1).bit_length()) - len(keys))


# Its rows are built in _encode_batch: (consumer, event id, now).
_PROCESSED: Final = _Writer(
    "processed_event_ids", "processed_events", "insert", _insert(_tables.PROCESSED), lambda r, now: [], ("event_id",)
)
_WRITE_ORDER: Final = {writer: order for order, writer in enumerate((*_WRITERS, _PROCESSED))}  # see _merged
_REGISTRATIONS: Final = _tables.REGISTRATIONS.name  # a registration's and a heartbeat's table
