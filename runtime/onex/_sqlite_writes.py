"""How the SQLite store's writes are described: each ``WriteBatch`` field's encoder, and its table's statement
(``_Writer``), from the one description of each table in ``onex._tables``. Executing the encoded rows (multi-row
INSERTs, the numbering of stamp versions, a group of batches as one) is ``onex._sqlite_exec``'s; the store itself, and
why, is ``onex._sqlite``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from onex import _tables
from onex._sqlite_exec import Sql, StampColumns
from onex._sqlite_values import _TO_PARAMS
from onex._tables import Table

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
    """How the rows of one ``WriteBatch`` field are encoded, and written (``sql``: ``onex._sqlite_exec``)."""

    field: str  # the WriteBatch attribute
    encode: _tables.Encode  # (rows, now) -> one parameter tuple per row
    key: tuple[str, ...]  # the row attributes that identify a row in a message
    sql: Sql

    @property
    def table(self) -> str:
        return self.sql.table


def _writer(index: int, field: str, table: Table[Any]) -> _Writer:
    heartbeat = table is _tables.HEARTBEATS
    attrs = {c.name: c.field for c in table.columns}
    stamps = None
    if table is _tables.STAMPS:
        stored = [c.name for c in table.stored]
        stamps = StampColumns(*(stored.index(n) for n in ("namespace", "file_path", "file_hash", "version")))
    return _Writer(
        field,
        _tables.encoder(table, _TO_PARAMS, fill_now=True),
        # A stamp by its id too: the key of its own table. By the row's attributes (a window's group, not group_key).
        tuple(dict.fromkeys(attrs.get(k, k) for k in (table.names[0], *table.key))),
        Sql(
            index,
            table.name,
            "heartbeat update" if heartbeat else table.operation,
            _HEARTBEAT if heartbeat else _insert(table),
            stamps,
            # A node's registration and its heartbeat: which comes first decides what is stored (``merged``).
            ordered=table is _tables.REGISTRATIONS or heartbeat,
            uuids=tuple(i for i, c in enumerate(table.stored) if c.kind == "uuid"),
        ),
    )


_WRITERS: Final = tuple(_writer(index, field, table) for index, (field, table) in enumerate(_tables.BATCH))
# Its rows are built in _encode_batch: (consumer, event id, now).
_PROCESSED: Final = _Writer(
    "processed_event_ids",
    lambda r, now: [],
    ("event_id",),
    Sql(len(_WRITERS), "processed_events", "insert", _insert(_tables.PROCESSED), uuids=(1,)),
)
SQL: Final = tuple(w.sql for w in (*_WRITERS, _PROCESSED))  # every table's Sql, by its index
