"""How ``PostgresStore`` writes a table's rows: the SQL of each table, rendered from ``onex._tables``, and the rows
encoded for it (``onex._postgres``'s docstring says which method sends what)."""

from __future__ import annotations

import json
import operator
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from onex import _jsontext, _tables
from onex._tables import Convert, Kind, Table
from onex.store import group_key

__all__ = [
    "FROM_SQL",
    "PREPARE_DOCS",
    "PROCESSED",
    "STAGED",
    "WRITES",
    "Rows",
    "TableSQL",
    "dump_doc",
    "render",
    "script",
    "utc",
]


def utc(value: datetime | None) -> datetime | None:
    # A naive datetime means UTC everywhere in onex; asyncpg would read it as local time instead.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


# --- SQL -------------------------------------------------------------------------------------------------------------

# The PostgreSQL type of each logical type of ``onex._tables`` (for the unnest arrays and the COPY staging tables).
_SQL_TYPES: Final[dict[Kind, str]] = {
    "uuid": "UUID",
    "text": "TEXT",
    "int": "INTEGER",
    "bigint": "BIGINT",
    "float": "DOUBLE PRECISION",
    "bool": "BOOLEAN",
    "json": "JSONB",
    "json_key": "TEXT",
    "timestamp": "TIMESTAMPTZ",
}
# asyncpg takes and gives the native values (JSONB through the codec of _init_jsonb); only a naive datetime needs
# its zone, since asyncpg would read it as local time. None: the value as it is.
# A json_key is canonical JSON text (onex.store.group_key), the same text SqliteStore stores.
_TO_SQL: Final[dict[Kind, Convert | None]] = dict.fromkeys(_SQL_TYPES, None) | {
    "timestamp": utc,
    "json_key": group_key,
}
FROM_SQL: Final[dict[Kind, Convert | None]] = dict.fromkeys(_SQL_TYPES, None) | {"json_key": json.loads}


def _float_json(value: float) -> float | str:
    # orjson writes NaN and Infinity as null, and a jsonb number has no negative zero: zero and those go as text, which
    # PostgreSQL's double precision reads as asyncpg's binary sends them.
    return value if value and value - value == 0.0 else str(value).replace("inf", "Infinity").replace("nan", "NaN")


# bulk_method=json: a row is a JSON array, the values as orjson writes them (UUIDs and datetimes as their text), a
# JSON column's value embedded as its own text, checked as the jsonb codec checks it (``_jsontext.fragment``).
# _DOC_VALUE reads value i back in SQL.
_TO_JSON: Final[dict[Kind, Convert | None]] = _TO_SQL | {"json": _jsontext.fragment, "float": _float_json}
_DOC_VALUE: Final[dict[Kind, str]] = {kind: "(r->>{i})::" + sql for kind, sql in _SQL_TYPES.items()} | {
    "text": "r->>{i}",
    "json_key": "r->>{i}",
    "json": "NULLIF(r->{i}, 'null'::jsonb)",  # a JSON column's None is SQL NULL, as with the other methods
}

_RULES: Final = {
    **_tables.COMMON_RULES,
    _tables.Rule.GREATEST: "GREATEST({t}.{c}, EXCLUDED.{c})",
    _tables.Rule.MERGE: "CASE WHEN EXCLUDED.{seq} >= {t}.{seq} THEN {t}.{c} || EXCLUDED.{c} "
    "ELSE EXCLUDED.{c} || {t}.{c} END",
    _tables.Rule.NOW: "now()",
}


@dataclass(frozen=True, slots=True)
class TableSQL:
    """How one table is written: row by row (``statement``, executemany) or set-based (``bulk`` or COPY + ``move``).

    Set-based, the rows of a batch go in rounds: the n-th row of the batch for one natural key goes in round n,
    and rounds run one after another, because one ``INSERT ... ON CONFLICT DO UPDATE`` cannot touch a row twice.
    So several rows for one key in a batch (a workflow's start and its completion) apply in batch order, exactly
    as row by row. Insert-only tables (``key`` None) need one round: ``DO NOTHING`` also skips duplicates within
    one statement.
    """

    name: str
    operation: str  # for messages: "upsert", "insert" ...
    columns: tuple[str, ...]
    statement: str  # one row: INSERT ... VALUES ($1, ...) ON CONFLICT ...
    bulk: str  # one round: INSERT ... SELECT ... FROM unnest($1::type[], ...) ON CONFLICT ...
    doc: str  # bulk_method=json: one round: INSERT ... SELECT ... FROM jsonb_array_elements($1) ... ON CONFLICT ...
    prepared: str  # ... and its name as a prepared statement of the connection (``PREPARE_DOCS``, ``script``)
    staging: str  # bulk_method=copy: a temporary table per connection, COPYed into ...
    staging_ddl: str
    staging_columns: tuple[str, ...]
    move: str  # ... then moved with INSERT ... SELECT ... WHERE round = $1 ORDER BY ord ON CONFLICT ...
    key: tuple[int, ...] | None  # positions of the natural key's columns in a row's argument tuple
    encode: _tables.Encode  # (rows, None) -> one argument tuple per row, in ``columns`` order
    encode_doc: _tables.Encode  # the same for ``doc``: each tuple one JSON array of the document


def render(table: Table[Any]) -> TableSQL:
    """A ``TableSQL`` rendered from its description. A ``default_now`` column's NULL becomes ``now()``; ``written``
    columns are left to their ``DEFAULT now()``."""
    stored = table.stored
    names = tuple(c.sql for c in stored)
    listed = ", ".join(names)
    defaults = ["COALESCE({}, now())" if c.default_now else "{}" for c in stored]
    values = ", ".join(d.format(f"${n}") for n, d in enumerate(defaults, 1))
    selected = ", ".join(d.format(c) for d, c in zip(defaults, names, strict=True))
    types = [_SQL_TYPES[c.kind] for c in stored]
    arrays = ", ".join(f"${n}::{t}[]" for n, t in enumerate(types, 1))
    typed = ", ".join(f"{c} {t}" for c, t in zip(names, types, strict=True))
    read = ", ".join(
        f"{_DOC_VALUE[c.kind].format(i=i)} AS {n}" for i, (c, n) in enumerate(zip(stored, names, strict=True))
    )
    insert = f"INSERT INTO {table.name} AS {table.alias} ({listed})"
    conflict = table.on_conflict(_RULES)
    staging = f"_onex_stage_{table.name}"
    return TableSQL(
        name=table.name,
        operation=table.operation,
        columns=tuple(c.name for c in stored),
        statement=f"{insert} VALUES ({values}) {conflict}",
        bulk=f"{insert} SELECT {selected} FROM unnest({arrays}) WITH ORDINALITY AS s({listed}, ord) ORDER BY ord "
        f"{conflict}",
        doc=f"{insert} SELECT {selected} FROM (SELECT {read}, ord FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY"
        f" AS e(r, ord)) AS s ORDER BY ord {conflict}",
        prepared=f"onex_doc_{table.name}",
        staging=staging,
        staging_ddl=f"CREATE TEMPORARY TABLE {staging} (ord INTEGER, round INTEGER, {typed}) ON COMMIT DELETE ROWS",
        staging_columns=("ord", "round", *(c.name for c in stored)),  # asyncpg quotes them
        move=f"{insert} SELECT {selected} FROM pg_temp.{staging} WHERE round = $1 ORDER BY ord {conflict}",
        key=table.key_positions if table.upsert else None,
        encode=_tables.encoder(table, _TO_SQL, fill_now=False),
        encode_doc=_tables.encoder(table, _TO_JSON, fill_now=False),
    )


# A heartbeat updates health_status and last_heartbeat and merges its metadata into the node's, unless the stored
# heartbeat is newer. One from a node that has not registered (yet) is dropped: the registration carries the node's
# type and version, which a heartbeat does not, and nodes re-announce themselves on the registry's request. Few
# per batch, so always row by row (``bulk`` empty). The parameters are those of _tables.HEARTBEATS.
_HEARTBEATS: Final = TableSQL(
    name="node_registrations",
    operation="heartbeat update",
    columns=_tables.HEARTBEATS.names,
    statement="""UPDATE node_registrations SET
        health_status = $2,
        last_heartbeat = $3,
        metadata = metadata || $4::jsonb,
        updated_at = now()
    WHERE node_id = $1 AND (last_heartbeat IS NULL OR last_heartbeat <= $3)""",
    bulk="",
    doc="",
    prepared="",
    staging="",
    staging_ddl="",
    staging_columns=(),
    move="",
    key=None,
    encode=(_encode_heartbeats := _tables.encoder(_tables.HEARTBEATS, _TO_SQL, fill_now=False)),
    encode_doc=_encode_heartbeats,  # never used: heartbeats always go row by row
)

# (WriteBatch attribute, how its rows are written), in the order apply writes them.
WRITES: Final = tuple((f, _HEARTBEATS if t is _tables.HEARTBEATS else render(t)) for f, t in _tables.BATCH)
PROCESSED: Final = render(_tables.PROCESSED)  # its rows are built in _apply_once: (consumer, event id)
STAGED: Final = (*(table for _, table in WRITES if table.bulk), PROCESSED)  # those with a staging table


class Rows:
    """One table's rows of a batch, encoded for ``_write``, and the rounds they go in when set-based: the n-th row of
    the batch for one natural key goes in round n, rounds one after another (``TableSQL``). Insert-only tables
    (``key`` None) and rows whose keys all differ, the common case, go in one round."""

    __slots__ = ("_round", "by_executemany", "encoded", "rounds", "table")

    def __init__(self, table: TableSQL, encoded: list[tuple[Any, ...]], by_executemany: bool) -> None:
        self.table, self.encoded, self.by_executemany = table, encoded, by_executemany
        self._round: list[int] | None = None  # each row's round, when there are several
        self.rounds = 1
        if table.key is None or by_executemany:
            return
        key = operator.itemgetter(*table.key)
        if len(set(map(key, encoded))) == len(encoded):
            return
        seen: dict[Any, int] = {}
        self._round = []
        for row in encoded:
            k = key(row)
            n = seen[k] = seen.get(k, -1) + 1
            self._round.append(n)
        self.rounds = max(self._round) + 1

    def round_of(self, i: int) -> int:
        return 0 if self._round is None else self._round[i]

    def of_round(self, n: int) -> list[tuple[Any, ...]]:
        if self._round is None:
            return self.encoded
        return [row for row, k in zip(self.encoded, self._round, strict=True) if k == n]


def dump_doc(rows: list[tuple[Any, ...]]) -> bytes:
    """A ``bulk_method=json`` document: ``rows`` (``encode_doc``'s tuples) as one JSON array of arrays."""
    return orjson.dumps(rows, default=_doc_default)


def _doc_default(value: Any) -> str:
    # orjson writes uuid.UUID itself but not its subclasses: asyncpg's own UUID, which ids read back from the store are
    # (a reducer's reconciled workflows, an orchestrator's reloaded checkpoints), written again.
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


# Every document statement prepared on a connection, by name: ``script``'s statements execute them, planned once.
PREPARE_DOCS: Final = ";\n".join(
    f"PREPARE {t.prepared} (jsonb) AS {t.doc}" for t in (*(t for _, t in WRITES), PROCESSED) if t.doc
)


def script(work: list[Rows]) -> str:
    """``work`` (``bulk_method=json`` rows, one round each) as one text of statements, each executing its table's
    prepared statement (``PREPARE_DOCS``) on its document, inlined as a dollar-quoted literal: sent by the simple query
    protocol, it is one message, one round trip and one transaction (PostgreSQL runs a message's statements as one
    unless they say otherwise), the statements in order."""
    statements = []
    for rows in work:
        doc = dump_doc(rows.encoded).decode()
        tag = "$onex$"
        while tag in doc:  # a value holding the tag: another one, which it does not hold
            tag = f"$onex_{secrets.token_hex(4)}$"
        statements.append(f"EXECUTE {rows.table.prepared}({tag}{doc}{tag})")
    return ";\n".join(statements)
