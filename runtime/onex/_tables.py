"""The tables the stores write, described once: ``SqliteStore`` and ``PostgresStore`` render their SQL from here.

A ``Table`` names its columns in the order of its row dataclass's fields, each with a logical type (``Kind``);
its natural key; and what ``ON CONFLICT`` does, column by column (``Rule``). The conflict rules themselves are
documented in ``onex.store``. What differs between the dialects stays in ``_sqlite.py`` and ``_postgres.py``:
placeholders, how a logical type is encoded (SQLite stores uuids, JSON and timestamps as text; PostgreSQL takes
them natively), the two or three conflict rules whose SQL differs, and the bulk paths. Each dialect gives
``encoder`` and ``decoder`` one converter per logical type; the per-table functions are generated from that.

Why generated: the encoders run once per row on the hot path. ``encoder`` writes the list comprehension one
would write by hand (``[(_uuid(r.correlation_id), r.workflow_type, ...) for r in rows]``), compiled once at import,
so no per-row loop over columns, dict lookup or type test is left; this is what ``dataclasses`` does for
``__init__``. Column names are checked to be identifiers and the row's fields, so no other text reaches the source.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from onex.store import (
    AggregateWindowRow,
    BridgeStateRow,
    DeadLetterRow,
    EventLogRow,
    HeartbeatRow,
    NodeStateRow,
    RegistrationRow,
    StampRow,
    StepRow,
    TransitionRow,
    WorkflowRow,
    group_namespace,
)

R = TypeVar("R")

# "json_key": a JSON object stored as canonical text (onex.store.group_key), so that it can be part of a key.
Kind = Literal["uuid", "text", "int", "bigint", "float", "bool", "json", "json_key", "timestamp"]
Convert = Callable[[Any], Any]
Encode = Callable[[Sequence[Any], Any], list[tuple[Any, ...]]]


class Rule(enum.Enum):
    """What ``ON CONFLICT ... DO UPDATE`` sets one column to (``EXCLUDED`` is the new row, the alias the stored one)."""

    REPLACE = "replace"  # the new value
    KEEP_IF_NULL = "keep_if_null"  # the new value, unless it is NULL
    LATEST = "latest"  # the value of the row with the higher ``Table.seq``; NULL never overwrites a value
    NEWER = "newer"  # the value of the row with the higher ``Table.seq``, NULL included
    GREATEST = "greatest"  # the greater of the two
    MERGE = "merge"  # JSON objects merged shallowly, the keys of the row with the higher ``Table.seq`` winning
    NOW = "now"  # the time of the write


# The right-hand sides that read the same in both dialects; each dialect adds GREATEST, MERGE and NOW.
# ``{c}`` is the column, ``{t}`` the stored row's alias, ``{seq}`` the table's ``seq`` column.
COMMON_RULES: Mapping[Rule, str] = {
    Rule.REPLACE: "EXCLUDED.{c}",
    Rule.KEEP_IF_NULL: "COALESCE(EXCLUDED.{c}, {t}.{c})",
    # Every right-hand side of an UPDATE sees the row as it was before it, so ``{t}.{seq}`` is the stored one
    # even though ``seq`` itself is assigned in the same SET.
    Rule.LATEST: "CASE WHEN EXCLUDED.{seq} >= {t}.{seq} THEN COALESCE(EXCLUDED.{c}, {t}.{c}) "
    "ELSE COALESCE({t}.{c}, EXCLUDED.{c}) END",
    Rule.NEWER: "CASE WHEN EXCLUDED.{seq} >= {t}.{seq} THEN EXCLUDED.{c} ELSE {t}.{c} END",
}


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    kind: Kind
    null: bool = False  # the row may hold None
    default_now: bool = False  # None means the time of the write (implies ``null``)
    on_conflict: Rule | None = None  # None: an upsert leaves the stored value
    attr: str = ""  # the row's attribute, when it is not ``name``
    derive: Convert | None = None  # in ``Table.derived``: the stored value, computed from the row's ``attr``

    @property
    def field(self) -> str:
        return self.attr or self.name

    @property
    def sql(self) -> str:
        """The name as SQL spells it: quoted when it is a keyword in either dialect (``"values"``)."""
        return f'"{self.name}"' if self.name in _KEYWORDS else self.name


# Column names that are keywords in SQLite or PostgreSQL, and so are quoted wherever SQL names them.
_KEYWORDS = frozenset({"values", "key"})


@dataclass(frozen=True, slots=True)
class Table(Generic[R]):
    """One table as the stores write it (see the module docstring).

    ``columns`` are what a row carries, in its dataclass's field order; ``derived`` are stored too, each computed
    from one of the row's fields by its ``Column.derive`` (for queries; never read back into a row); ``written`` are
    the columns the store sets to the time of the write on its own (SQLite binds them; PostgreSQL leaves them to
    ``DEFAULT now()`` and renders ``Rule.NOW`` as ``now()``). An upsert is a table with a ``Rule`` on some column:
    ``ON CONFLICT (key) DO UPDATE``, guarded by ``guard`` when set (with ``zero_overwrites``, a new row whose
    ``guard`` value is 0 passes the guard whatever the stored one). Otherwise ``ON CONFLICT DO NOTHING``, on the
    key or, with ``any_conflict``, on whatever unique constraint the row violates.
    """

    name: str
    row: type[R] | None  # None: the dialects build the tuples themselves
    columns: tuple[Column, ...]
    key: tuple[str, ...]  # the natural key: the conflict target, and how an error message names a row
    written: tuple[Column, ...] = ()
    seq: str = ""  # for Rule.LATEST and Rule.MERGE: the column whose higher value wins
    guard: str = ""  # update only when the new row's value of this column is greater than the stored one's
    any_conflict: bool = False
    derived: tuple[Column, ...] = ()
    zero_overwrites: bool = False  # with ``guard``: a new row whose guard value is 0 always updates

    def __post_init__(self) -> None:
        every = [c.name for c in (*self.columns, *self.derived, *self.written)]
        attrs = [c.field for c in (*self.columns, *self.derived)]
        if not all(name.isidentifier() for name in (*every, *attrs)):
            raise ValueError(f"{self.name}: column names must be identifiers: {every}")
        if any(c.derive is None or not c.attr for c in self.derived):
            raise ValueError(f"{self.name}: a derived column needs the row attribute it is computed from and how")
        if self.row is not None:
            fields = [f.name for f in dataclasses.fields(self.row)]  # type: ignore[arg-type]
            if [c.field for c in self.columns] != fields:
                raise ValueError(f"{self.name}: columns {every} are not the fields of {self.row.__name__}: {fields}")

    @property
    def alias(self) -> str:
        return self.name[0]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def stored(self) -> tuple[Column, ...]:
        """What ``encoder`` gives per row, in order: the row's columns, then the derived ones."""
        return (*self.columns, *self.derived)

    @property
    def upsert(self) -> bool:
        return any(c.on_conflict is not None for c in (*self.stored, *self.written))

    @property
    def operation(self) -> str:
        """For messages."""
        return "upsert" if self.upsert else "insert"

    @property
    def key_positions(self) -> tuple[int, ...]:
        return tuple(self.names.index(k) for k in self.key)

    def select(self) -> str:
        return f"SELECT {', '.join(c.sql for c in self.columns)} FROM {self.name}"

    def on_conflict(self, rules: Mapping[Rule, str]) -> str:
        """The ``ON CONFLICT`` clause, each ``Rule``'s right-hand side taken from ``rules`` (``COMMON_RULES`` plus
        the dialect's own)."""
        by_name = {c.name: c.sql for c in (*self.stored, *self.written)}
        key = ", ".join(by_name[k] for k in self.key)
        if not self.upsert:
            return "ON CONFLICT DO NOTHING" if self.any_conflict else f"ON CONFLICT ({key}) DO NOTHING"
        sets = ",\n    ".join(
            f"{c.sql} = " + rules[c.on_conflict].format(c=c.sql, t=self.alias, seq=self.seq)
            for c in (*self.stored, *self.written)
            if c.on_conflict is not None
        )
        guard = ""
        if self.guard:
            g = by_name[self.guard]
            guard = f"\nWHERE EXCLUDED.{g} > {self.alias}.{g}"
            if self.zero_overwrites:
                guard += f" OR EXCLUDED.{g} = 0"
        return f"ON CONFLICT ({key}) DO UPDATE SET\n    {sets}{guard}"


# --- the tables --------------------------------------------------------------------------------------------------

_NOW = Rule.NOW
_CREATED = Column("created_at", "timestamp")
_UPDATED = Column("updated_at", "timestamp", on_conflict=_NOW)


def _latest(name: str, kind: Kind) -> Column:
    return Column(name, kind, null=True, on_conflict=Rule.LATEST)


def _replaced(name: str, kind: Kind, *, null: bool = False) -> Column:
    return Column(name, kind, null=null, on_conflict=Rule.REPLACE)


WORKFLOWS: Table[WorkflowRow] = Table(
    "workflow_executions",
    WorkflowRow,
    (
        Column("correlation_id", "uuid"),
        Column("workflow_type", "text", on_conflict=Rule.LATEST),
        Column("current_state", "text", on_conflict=Rule.LATEST),
        Column("state_seq", "int", on_conflict=Rule.GREATEST),
        _latest("namespace", "text"),
        _latest("file_path", "text"),
        _latest("file_hash", "text"),
        _latest("stamp_id", "uuid"),
        _latest("started_at", "timestamp"),
        _latest("completed_at", "timestamp"),
        _latest("execution_time_ms", "float"),
        _latest("error_message", "text"),
        Column("metadata", "json", on_conflict=Rule.MERGE),
        Column("checkpoint", "json", null=True, on_conflict=Rule.NEWER),
    ),
    key=("correlation_id",),
    written=(_CREATED, _UPDATED),
    seq="state_seq",
)

STEPS: Table[StepRow] = Table(
    "workflow_steps",
    StepRow,
    (
        Column("workflow_id", "uuid"),
        Column("step_name", "text"),
        _replaced("step_order", "int"),
        _replaced("status", "text"),
        _replaced("execution_time_ms", "float", null=True),
        _replaced("step_data", "json"),
        _replaced("error_message", "text", null=True),
        Column("created_at", "timestamp", default_now=True),
    ),
    key=("workflow_id", "step_name"),
    written=(_UPDATED,),
)

STAMPS: Table[StampRow] = Table(
    "metadata_stamps",
    StampRow,
    (
        Column("id", "uuid"),
        Column("file_hash", "text"),
        Column("file_path", "text"),
        Column("file_size", "bigint"),
        Column("namespace", "text"),
        Column("stamp_type", "text"),
        Column("file_type", "text"),
        Column("workflow_id", "uuid", null=True),
        Column("stamp_data", "json"),
        Column("created_at", "timestamp", default_now=True),
        # O.N.E. v0.1 (migration 0005). A NULL version is numbered by the store's trigger, which also fills an
        # empty intelligence_data from the workflow's intelligence step.
        Column("op_id", "uuid", null=True),
        Column("version", "int", null=True),
        Column("intelligence_data", "json"),
        Column("metadata_version", "text"),
        Column("protocol_version", "text"),
        Column("file_metadata", "json"),
        Column("updated_at", "timestamp", default_now=True),
    ),
    key=("namespace", "file_path", "file_hash"),
    any_conflict=True,  # the id is unique too
)

TRANSITIONS: Table[TransitionRow] = Table(
    "fsm_transitions",
    TransitionRow,
    (
        Column("id", "uuid"),
        Column("entity_id", "text"),
        Column("entity_type", "text"),
        Column("from_state", "text", null=True),
        Column("to_state", "text"),
        Column("transition_event", "text"),
        Column("correlation_id", "uuid", null=True),
        Column("transition_data", "json"),
        Column("created_at", "timestamp", default_now=True),
    ),
    key=("id",),
    any_conflict=True,
)

BRIDGE_STATES: Table[BridgeStateRow] = Table(
    "bridge_states",
    BridgeStateRow,
    (
        Column("namespace", "text"),
        _replaced("version", "bigint"),
        _replaced("total_workflows_processed", "bigint"),
        _replaced("total_items_aggregated", "bigint"),
        _replaced("total_size_bytes", "bigint"),
        _replaced("unique_file_hashes", "bigint"),
        _replaced("current_fsm_state", "text"),
        _replaced("aggregation_metadata", "json"),
        _replaced("last_aggregation_timestamp", "timestamp", null=True),
    ),
    key=("namespace",),
    written=(_CREATED, _UPDATED),
    guard="version",
)

REGISTRATIONS: Table[RegistrationRow] = Table(
    "node_registrations",
    RegistrationRow,
    (
        Column("node_id", "text"),
        _replaced("node_type", "text"),
        _replaced("node_version", "text"),
        _replaced("health_status", "text"),
        _replaced("capabilities", "json"),
        _replaced("endpoints", "json"),
        _replaced("metadata", "json"),
        Column("last_heartbeat", "timestamp", null=True, on_conflict=Rule.KEEP_IF_NULL),
        Column("registered_at", "timestamp", default_now=True, on_conflict=Rule.REPLACE),
    ),
    key=("node_id",),
    written=(_UPDATED,),
)

# A heartbeat is an UPDATE of node_registrations, not an insert: each dialect writes that statement itself (it
# merges the metadata, and only a heartbeat not older than the stored one counts). This gives its parameters.
HEARTBEATS: Table[HeartbeatRow] = Table(
    "node_registrations",
    HeartbeatRow,
    (
        Column("node_id", "text"),
        Column("health_status", "text"),
        Column("last_heartbeat", "timestamp", attr="at"),
        Column("metadata", "json"),
    ),
    key=("node_id",),
    written=(Column("updated_at", "timestamp"),),
)

EVENT_LOGS: Table[EventLogRow] = Table(
    "event_logs",
    EventLogRow,
    (
        Column("event_id", "uuid"),
        Column("event_type", "text"),
        Column("topic", "text"),
        Column("status", "text"),
        Column("correlation_id", "uuid", null=True),
        Column("timestamp", "timestamp", default_now=True),
        Column("processing_time_ms", "float", null=True),
        Column("payload", "json"),
        Column("metadata", "json"),
    ),
    key=("event_id",),
    any_conflict=True,
)

PROCESSED: Table[Any] = Table(
    "processed_events",
    None,
    (Column("consumer", "text"), Column("event_id", "uuid")),
    key=("consumer", "event_id"),
    written=(Column("processed_at", "timestamp"),),
    any_conflict=True,
)

DEAD_LETTERS: Table[DeadLetterRow] = Table(
    "dead_letters",
    DeadLetterRow,
    (
        Column("event_id", "uuid"),
        Column("topic", "text"),
        Column("original_topic", "text"),
        Column("event_type", "text"),
        Column("error_type", "text"),
        Column("error", "text"),
        Column("attempts", "int"),
        Column("letter", "json"),
        Column("original_event_id", "uuid", null=True),
        Column("correlation_id", "uuid", null=True),
        Column("group_name", "text", null=True),
        Column("dead_lettered_at", "timestamp", default_now=True),
        Column("replayed_at", "timestamp", null=True),
        Column("replays", "int"),
    ),
    key=("event_id",),
)

AGGREGATE_WINDOWS: Table[AggregateWindowRow] = Table(
    "aggregate_windows",
    AggregateWindowRow,
    (
        Column("node", "text"),
        Column("aggregation", "text"),
        Column("group_key", "json_key", attr="group"),
        Column("window_id", "text"),
        _replaced("window_start", "timestamp", null=True),
        _replaced("window_end", "timestamp", null=True),
        _replaced("closed", "bool"),
        _replaced("items", "bigint"),
        _replaced("values", "json"),
        _replaced("state", "json"),
        _replaced("version", "bigint"),
        # The row's time, else the write's: REPLACE, not NOW, so both dialects store the same (NOW is the
        # transaction's time on PostgreSQL whatever the row says).
        Column("updated_at", "timestamp", default_now=True, on_conflict=Rule.REPLACE),
    ),
    key=("node", "aggregation", "group_key", "window_id"),
    guard="version",
    # Part of group_key already, so an update never changes it.
    derived=(Column("namespace", "text", null=True, attr="group", derive=group_namespace),),
)

NODE_STATES: Table[NodeStateRow] = Table(
    "node_states",
    NodeStateRow,
    (
        Column("node", "text"),
        Column("key", "text"),
        _replaced("version", "bigint"),
        _replaced("fields", "json"),
        Column("updated_at", "timestamp", default_now=True, on_conflict=Rule.REPLACE),
    ),
    key=("node", "key"),
    guard="version",
    zero_overwrites=True,  # version 0 is state_management's ``versioning: none``: the last write wins
)

# The WriteBatch attribute of each table's rows, in the order ``apply`` writes them (processed events come last).
BATCH: tuple[tuple[str, Table[Any]], ...] = (
    ("workflows", WORKFLOWS),
    ("steps", STEPS),
    ("stamps", STAMPS),
    ("transitions", TRANSITIONS),
    ("bridge_states", BRIDGE_STATES),
    ("registrations", REGISTRATIONS),
    ("heartbeats", HEARTBEATS),
    ("event_logs", EVENT_LOGS),
    ("aggregate_windows", AGGREGATE_WINDOWS),
    ("node_states", NODE_STATES),
)

# What the queries read: a row's columns, in the order its decoder takes them.
SELECT_WORKFLOW = WORKFLOWS.select()
SELECT_STEP = STEPS.select()
SELECT_STAMP = STAMPS.select()
SELECT_TRANSITION = TRANSITIONS.select()
SELECT_BRIDGE_STATE = BRIDGE_STATES.select()
SELECT_REGISTRATION = REGISTRATIONS.select()
SELECT_EVENT_LOG = EVENT_LOGS.select()
SELECT_DEAD_LETTER = DEAD_LETTERS.select()
SELECT_AGGREGATE_WINDOW = AGGREGATE_WINDOWS.select()
SELECT_NODE_STATE = NODE_STATES.select()


# --- encoders and decoders ---------------------------------------------------------------------------------------


def _converted(value: str, convert: Convert | None, name: str, *, null: bool, missing: str) -> tuple[str, bool]:
    """The source of one converted value, and whether it needs ``convert`` bound as ``name``."""
    if convert is None and missing == "None":
        return value, False  # None stays None, anything else goes as it is
    call = f"{name}(v)" if convert is not None else "v"
    if null:
        return f"({missing} if (v := {value}) is None else {call})", convert is not None
    return f"{name}({value})", True


def encoder(table: Table[Any], convert: Mapping[Kind, Convert | None], *, fill_now: bool) -> Encode:
    """``encode(rows, now)``: each row as a tuple of its columns' values, each converted by its kind's ``convert``.

    With ``fill_now`` (SQLite) a missing ``default_now`` value is ``now``, and the ``written`` columns follow the
    row's, all ``now``; without (PostgreSQL) both are left to the SQL.
    """
    scope: dict[str, Any] = {}
    values: list[str] = []
    for i, c in enumerate(table.stored):
        fn = convert[c.kind]
        missing = "now" if fill_now and c.default_now else "None"
        value = f"r.{c.field}"
        if c.derive is not None:
            scope[f"_d{i}"] = c.derive
            value = f"_d{i}({value})"
        source, bound = _converted(value, fn, f"_c{i}", null=c.null or c.default_now, missing=missing)
        values.append(source)
        if bound:
            scope[f"_c{i}"] = fn
    if fill_now:
        values += ["now"] * len(table.written)
    encode: Encode = _compile(
        f"def encode(rows, now):\n    return [({', '.join(values)},) for r in rows]\n", scope, "encode"
    )
    return encode


def decoder(table: Table[R], convert: Mapping[Kind, Convert | None]) -> Callable[[Any], R]:
    """``decode(fetched)``: a fetched row (the columns of ``table.select()``) as ``table.row``."""
    if table.row is None:
        raise ValueError(f"{table.name} has no row type to decode to")
    scope: dict[str, Any] = {"_row": table.row}
    values: list[str] = []
    for i, c in enumerate(table.columns):
        fn = convert[c.kind]
        source, bound = _converted(f"t[{i}]", fn, f"_c{i}", null=c.null or c.default_now, missing="None")
        values.append(source)
        if bound:
            scope[f"_c{i}"] = fn
    decode: Callable[[Any], R] = _compile(f"def decode(t):\n    return _row({', '.join(values)})\n", scope, "decode")
    return decode


def _compile(source: str, scope: dict[str, Any], name: str) -> Any:
    exec(compile(source, f"<onex._tables {name}>", "exec"), scope)
    return scope[name]


@dataclass(frozen=True, slots=True)
class Readers:
    """One dialect's decoders (``readers``): a row of each ``SELECT_...`` above as its row dataclass."""

    workflow: Callable[[Any], WorkflowRow]
    step: Callable[[Any], StepRow]
    stamp: Callable[[Any], StampRow]
    transition: Callable[[Any], TransitionRow]
    bridge_state: Callable[[Any], BridgeStateRow]
    registration: Callable[[Any], RegistrationRow]
    event_log: Callable[[Any], EventLogRow]
    dead_letter: Callable[[Any], DeadLetterRow]
    aggregate_window: Callable[[Any], AggregateWindowRow]
    node_state: Callable[[Any], NodeStateRow]


def readers(convert: Mapping[Kind, Convert | None]) -> Readers:
    """Every table's ``decoder`` with the dialect's converters."""
    return Readers(
        decoder(WORKFLOWS, convert),
        decoder(STEPS, convert),
        decoder(STAMPS, convert),
        decoder(TRANSITIONS, convert),
        decoder(BRIDGE_STATES, convert),
        decoder(REGISTRATIONS, convert),
        decoder(EVENT_LOGS, convert),
        decoder(DEAD_LETTERS, convert),
        decoder(AGGREGATE_WINDOWS, convert),
        decoder(NODE_STATES, convert),
    )
