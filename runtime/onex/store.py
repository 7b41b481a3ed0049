"""The persistence seam: ``Store`` with ``SqliteStore`` (``_sqlite.py``) and ``PostgresStore`` (``_postgres.py``).
``onex.stores.open_store(url)`` opens the one a URL names.

Writes go through ``apply(batch)``: one transaction per batch, every row idempotent by its natural key, and the
ids of the events that produced the batch recorded in ``processed_events`` in that same transaction, so a
redelivered event is recognised (``unprocessed``) and never applied twice.

Natural keys and conflict rules (the same on every store; ``tests/test_store_conformance.py`` checks them):

| table               | key                                   | on conflict                                       |
|---------------------|---------------------------------------|---------------------------------------------------|
| workflow_executions | correlation_id                        | fields of the row with the higher ``state_seq``   |
|                     |                                       | win; NULLs never overwrite values, but for        |
|                     |                                       | ``checkpoint``: a finished row's NULL clears it   |
| workflow_steps      | (workflow_id, step_name)              | update status, timings, data, error               |
| metadata_stamps     | (namespace, file_path, file_hash)     | keep the existing row                             |
| fsm_transitions     | id                                    | keep the existing row                             |
| bridge_states       | namespace                             | replace when the new ``version`` is higher         |
| node_registrations  | node_id                               | replace (registration), heartbeat updates health  |
| event_logs          | event_id                              | keep the existing row                             |
| processed_events    | (consumer, event_id)                  | keep the existing row                             |
| dead_letters        | event_id (the dead letter's own id)   | keep the existing row; ``record_replay`` upserts  |
|                     |                                       | and counts the replay                             |
| aggregate_windows   | (node, aggregation, group_key,        | replace when the new ``version`` is higher        |
|                     | window_id)                            |                                                   |
| node_states         | (node, key)                           | replace when the new ``version`` is higher, or    |
|                     |                                       | always when it is 0 (``versioning: none``)        |
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import importlib.resources
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from onex._frozen import maker as maker  # re-exported: the row types' builder for the hot path
from onex._frozen import quick_init
from onex.envelope import UNDECODABLE, OnexEnvelopeV1, dlq_topic
from onex.exceptions import StoreError
from onex.meters import CommitMeter

TABLES: tuple[str, ...] = (
    "workflow_executions",
    "workflow_steps",
    "metadata_stamps",
    "fsm_transitions",
    "bridge_states",
    "node_registrations",
    "event_logs",
    "processed_events",
    "dead_letters",
    "aggregate_windows",
    "node_states",
)


@quick_init
@dataclass(frozen=True, slots=True)
class WorkflowRow:
    correlation_id: uuid.UUID
    workflow_type: str
    current_state: str
    state_seq: int  # number of transitions so far; a row with a lower state_seq never overwrites a higher one
    namespace: str | None = None
    file_path: str | None = None
    file_hash: str | None = None
    stamp_id: uuid.UUID | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    execution_time_ms: float | None = None
    error_message: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # The orchestrator's checkpoint while the workflow runs (what ``restore`` needs to resume it); None once it has
    # finished: the row that records its end clears it (``Rule.NEWER``), its request's content with it.
    checkpoint: dict[str, Any] | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class StepRow:
    workflow_id: uuid.UUID  # the workflow's correlation_id
    step_name: str
    step_order: int
    status: str  # pending | running | completed | failed | skipped
    execution_time_ms: float | None = None
    step_data: dict[str, Any] = field(default_factory=dict)
    error_message: str | None = None
    created_at: datetime | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class StampRow:
    id: uuid.UUID  # the stamp's uid
    file_hash: str
    file_path: str
    file_size: int
    namespace: str
    stamp_type: str  # lightweight | rich | sidecar
    file_type: str
    workflow_id: uuid.UUID | None = None
    stamp_data: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    # The O.N.E. v0.1 columns (migration 0005). ``version`` None: the store numbers the row, 1 + the highest
    # version of the same (namespace, file_path); an empty ``intelligence_data`` is filled from the workflow's
    # intelligence step when the store has it (both by trigger, so every writer gets them).
    op_id: uuid.UUID | None = None  # the operation (workflow) that produced the stamp
    version: int | None = None
    intelligence_data: dict[str, Any] = field(default_factory=dict)
    metadata_version: str = "0.1"  # onex.settings.DEFAULT_METADATA_VERSION; writers pass the settings' value
    protocol_version: str = "1.0"  # onex.settings.DEFAULT_PROTOCOL_VERSION
    file_metadata: dict[str, Any] = field(default_factory=dict)  # {file_type, size, mode}
    updated_at: datetime | None = None  # None: the time of the write


@quick_init
@dataclass(frozen=True, slots=True)
class TransitionRow:
    id: uuid.UUID  # the transition event's id
    entity_id: str
    entity_type: str
    from_state: str | None
    to_state: str
    transition_event: str  # the trigger
    correlation_id: uuid.UUID | None = None
    transition_data: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class BridgeStateRow:
    namespace: str
    version: int  # increases with every aggregate the reducer emits for this namespace
    total_workflows_processed: int
    total_items_aggregated: int
    total_size_bytes: int
    unique_file_hashes: int
    current_fsm_state: str
    aggregation_metadata: dict[str, Any] = field(default_factory=dict)  # by_file_type, size_buckets, windows
    last_aggregation_timestamp: datetime | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class RegistrationRow:
    node_id: str
    node_type: str
    node_version: str
    health_status: str = "UNKNOWN"
    capabilities: dict[str, Any] = field(default_factory=dict)
    endpoints: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    last_heartbeat: datetime | None = None
    registered_at: datetime | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class HeartbeatRow:
    node_id: str
    health_status: str
    at: datetime
    metadata: dict[str, Any] = field(default_factory=dict)  # uptime_seconds, active_operations


@quick_init
@dataclass(frozen=True, slots=True)
class EventLogRow:
    event_id: uuid.UUID
    event_type: str
    topic: str
    status: str
    correlation_id: uuid.UUID | None = None
    timestamp: datetime | None = None
    processing_time_ms: float | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


@quick_init
@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """A message a consumer gave up on, as its dead letter (``envelope.dead_letter``) describes it.

    On the memory bus the runtime keeps every dead letter here (they die with the process otherwise); on Kafka the
    ``.dlq`` topics hold them and rows exist only for the letters ``onex dlq replay`` replayed.
    """

    event_id: uuid.UUID  # the dead letter's own id
    topic: str  # the dead-letter topic, ``<original_topic>.dlq``
    original_topic: str
    event_type: str  # of the original; ``UNDECODABLE`` for a Kafka record that was no envelope
    error_type: str
    error: str
    attempts: int
    letter: dict[str, Any]  # the whole dead-letter envelope, as JSON
    original_event_id: uuid.UUID | None = None  # None for a record that was no envelope
    correlation_id: uuid.UUID | None = None
    group_name: str | None = None  # the consumer group that gave up, when known
    dead_lettered_at: datetime | None = None
    replayed_at: datetime | None = None  # the last replay
    replays: int = 0


@quick_init
@dataclass(frozen=True, slots=True)
class AggregateWindowRow:
    """One aggregation's result for one group in one window, as the reducer persists it (``TIME_WINDOW``).

    Stored under (``node``, ``aggregation``, ``group_key(group)``, ``window_id``): ``group`` is the group-by fields'
    values (``{}`` for an aggregation without group-by), ``window_id`` names the window (``""`` when the
    aggregation has no windows: a running total). The group's ``namespace`` value, when it has one, is stored
    beside it for the namespace queries (``list_aggregate_windows(namespace=...)``).

    Versioning is monotonic: a row replaces the stored one only when its ``version`` is higher, so a stale writer
    (a replica that lost the partition, a redelivered batch) never takes a window backwards; an equal version
    changes nothing. ``values`` are the functions' results by output name, ``state`` whatever the engine needs to go
    on from here after a restart (both JSON objects: no NaN or Infinity). ``updated_at`` is the time of the write
    when None (as it is on rows to write).
    """

    node: str
    aggregation: str
    group: dict[str, Any]
    window_id: str
    window_start: datetime | None
    window_end: datetime | None
    closed: bool
    items: int
    values: dict[str, Any]
    state: dict[str, Any]
    version: int
    updated_at: datetime | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class NodeStateRow:
    """A node's state for one key, kept in the store (``state_management`` ``storage: store``) for nodes that have
    no table of their own.

    Stored under (``node``, ``key``). ``version`` > 0 is monotonic (``versioning: monotonic``): a row replaces the
    stored one only when its version is higher. ``version`` 0 means unversioned (``versioning: none``): the row
    always replaces the stored one, whatever its version. ``fields`` is a JSON object (no NaN or Infinity);
    ``updated_at`` is the time of the write when None (as it is on rows to write).
    """

    node: str
    key: str
    version: int
    fields: dict[str, Any]
    updated_at: datetime | None = None


MAX_OFFSET: Final = 10**12  # the largest offset a page is asked for: beyond any table, an int64 on every store

# One encoder, built once: sorted keys and compact separators, so equal groups are equal text whatever order their
# keys were built in. allow_nan=False: PostgreSQL's jsonb refuses NaN, and a key must be the same on both stores.
_GROUP_KEY: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def group_key(group: Mapping[str, Any]) -> str:
    """The stored key of an aggregation group: its values as canonical JSON (sorted keys, compact separators).

    Values compare as their JSON text: ``1`` and ``1.0`` are two groups. ValueError for NaN or Infinity, TypeError
    for a value JSON cannot hold.
    """
    return _GROUP_KEY(group)


def group_namespace(group: Mapping[str, Any]) -> str | None:
    """The ``namespace`` column of an aggregate window: the group's ``namespace`` value as text, None without one."""
    value = group.get("namespace")
    return None if value is None else str(value)


def dead_letter_row(letter: OnexEnvelopeV1, *, topic: str | None = None, group: str | None = None) -> DeadLetterRow:
    """The store row of a dead letter (``envelope.dead_letter`` or a Kafka raw record's), read from its payload."""
    payload = letter.payload
    original_topic = str(payload.get("original_topic") or "")
    original = payload.get("original")
    original_id: uuid.UUID | None = None
    if isinstance(original, dict):
        event_type = str(original.get("event_type") or "?")
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            original_id = uuid.UUID(str(original.get("event_id")))
    else:
        event_type = UNDECODABLE
    attempts = payload.get("attempts")
    return DeadLetterRow(
        event_id=letter.event_id,
        topic=topic or dlq_topic(original_topic),
        original_topic=original_topic,
        event_type=event_type,
        error_type=str(payload.get("error_type") or ""),
        error=str(payload.get("error") or ""),
        attempts=attempts if isinstance(attempts, int) else 0,
        letter=letter.model_dump(mode="json"),
        original_event_id=original_id,
        correlation_id=letter.correlation_id,
        group_name=group or (str(payload["group"]) if payload.get("group") else None),
        dead_lettered_at=letter.event_timestamp,
    )


@dataclass(slots=True)
class WriteBatch:
    """Rows to write in one transaction, plus the ids of the events they came from."""

    consumer: str = ""
    processed_event_ids: list[uuid.UUID] = field(default_factory=list)
    workflows: list[WorkflowRow] = field(default_factory=list)
    steps: list[StepRow] = field(default_factory=list)
    stamps: list[StampRow] = field(default_factory=list)
    transitions: list[TransitionRow] = field(default_factory=list)
    bridge_states: list[BridgeStateRow] = field(default_factory=list)
    registrations: list[RegistrationRow] = field(default_factory=list)
    heartbeats: list[HeartbeatRow] = field(default_factory=list)
    event_logs: list[EventLogRow] = field(default_factory=list)
    aggregate_windows: list[AggregateWindowRow] = field(default_factory=list)  # monotonic by ``version``
    node_states: list[NodeStateRow] = field(default_factory=list)  # monotonic by ``version``; version 0 overwrites

    def __len__(self) -> int:
        return (
            len(self.workflows)
            + len(self.steps)
            + len(self.stamps)
            + len(self.transitions)
            + len(self.bridge_states)
            + len(self.registrations)
            + len(self.heartbeats)
            + len(self.event_logs)
            + len(self.aggregate_windows)
            + len(self.node_states)
        )


@dataclass(frozen=True, slots=True)
class StoreHealth:
    status: str  # ok | degraded | down
    detail: str = ""
    queued_writes: int = 0


class Store(abc.ABC):
    """Base of every store. An async context manager; ``open()`` connects, ``aclose()`` flushes and disconnects."""

    url: str
    commits: CommitMeter  # rows and seconds of each committed batch, for /metrics
    # Which SQL the metastore (onex.metastore) speaks to this store: "sqlite" (``SqliteStore.run_sync``) or
    # "postgres" (``PostgresStore.run``), its two hooks for running its own transactions; "" for a store without.
    dialect: str = ""
    # How many ``apply`` transactions can usefully run at once: 1 for a store that writes through one connection
    # anyway (SQLite's writer thread). The database adapter shares its rows out among at most this many shards.
    concurrent_writes: int = 1

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    @abc.abstractmethod
    async def upgrade(self) -> list[str]:
        """Apply pending numbered migrations; returns the names applied (empty when up to date)."""

    @abc.abstractmethod
    async def apply(self, batch: WriteBatch) -> None:
        """Write the whole batch in one transaction (see the module docstring for the conflict rules)."""

    @abc.abstractmethod
    async def unprocessed(self, consumer: str, event_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """The subset of ``event_ids`` that ``consumer`` has not recorded as processed yet."""

    # --- queries -------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def get_workflow(self, correlation_id: uuid.UUID) -> WorkflowRow | None: ...

    @abc.abstractmethod
    async def list_workflows(
        self,
        *,
        state: str | None = None,
        limit: int = 100,
        namespace: str | None = None,
        since: datetime | None = None,
        file_path: str | None = None,
    ) -> list[WorkflowRow]:
        """The most recently created workflows first (at most ``limit``), only those matching every filter given:
        ``state``, ``namespace``, created at or after ``since``, for ``file_path`` (as stored)."""

    @abc.abstractmethod
    async def get_workflows(self, correlation_ids: Sequence[uuid.UUID]) -> list[WorkflowRow]:
        """The stored rows among ``correlation_ids`` (in no particular order; unknown ids are left out)."""

    async def workflow_states(self, correlation_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
        """The current state of each stored workflow among ``correlation_ids``, keyed by the id as given (unknown ids
        are left out): what ``get_workflows`` says of them, without reading and decoding the rest of their rows (a
        checkpoint's JSON). The stores answer it with a query of their own."""
        given = {cid: cid for cid in correlation_ids}
        return {given[r.correlation_id]: r.current_state for r in await self.get_workflows(list(given))}

    @abc.abstractmethod
    async def unprocessed_workflows(self, consumer: str, states: Sequence[str]) -> list[WorkflowRow]:
        """Workflows in one of ``states`` whose correlation id ``consumer`` has not recorded in ``processed_events``
        (a consumer that keeps per-workflow state records the workflows it took into account there, in the
        transaction that stores that state)."""

    @abc.abstractmethod
    async def get_stamps(self, ids: Sequence[uuid.UUID]) -> list[StampRow]:
        """The stored stamps among ``ids`` (in no particular order; unknown ids are left out)."""

    @abc.abstractmethod
    async def mark_stale(self, heard_before: datetime) -> list[str]:
        """Mark STALE every registered node whose last heartbeat is older than ``heard_before`` and which is neither
        STALE nor STOPPED yet; returns their ids. ``last_heartbeat`` is left as it is: it only ever holds the time
        of a heartbeat. Registry replicas share this one view, so they agree on who is alive."""

    @abc.abstractmethod
    async def list_steps(self, workflow_id: uuid.UUID) -> list[StepRow]:
        """Steps of a workflow ordered by ``step_order``."""

    @abc.abstractmethod
    async def list_transitions(self, entity_id: str) -> list[TransitionRow]:
        """Transitions of an entity in the order they happened."""

    @abc.abstractmethod
    async def get_stamps_by_hash(self, file_hash: str) -> list[StampRow]: ...

    @abc.abstractmethod
    async def list_stamps(self, namespace: str, *, limit: int = 100, offset: int = 0) -> list[StampRow]: ...

    @abc.abstractmethod
    async def get_bridge_state(self, namespace: str) -> BridgeStateRow | None: ...

    @abc.abstractmethod
    async def list_bridge_states(self) -> list[BridgeStateRow]: ...

    @abc.abstractmethod
    async def list_registrations(self) -> list[RegistrationRow]: ...

    # --- dead letters (``onex dlq``) ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def add_dead_letters(self, rows: Sequence[DeadLetterRow]) -> None:
        """Insert the rows in one transaction; a row whose ``event_id`` is stored already is left as it is."""

    @abc.abstractmethod
    async def list_dead_letters(self, *, topic: str | None = None, limit: int = 100) -> list[DeadLetterRow]:
        """The newest dead letters first (``dead_lettered_at``, then the order stored), at most ``limit``, only those
        of the dead-letter topic ``topic`` when given."""

    @abc.abstractmethod
    async def count_dead_letters(self, *, topic: str | None = None) -> int:
        """How many dead letters ``list_dead_letters`` would return without a limit."""

    @abc.abstractmethod
    async def find_dead_letters(self, event_id: uuid.UUID) -> list[DeadLetterRow]:
        """The dead letters whose own id or whose original's id is ``event_id`` (one original may have been given up
        on by several consumer groups, or again after a replay), oldest first."""

    @abc.abstractmethod
    async def get_dead_letters(self, event_ids: Sequence[uuid.UUID]) -> list[DeadLetterRow]:
        """The stored rows among the dead letters ``event_ids`` (in no particular order; unknown ids are left out)."""

    @abc.abstractmethod
    async def record_replay(self, rows: Sequence[DeadLetterRow], at: datetime) -> None:
        """Record that the dead letters ``rows`` were replayed at ``at``, in one transaction: a row not stored yet is
        inserted (from a Kafka ``.dlq`` topic), then every one gets ``replayed_at = at`` and ``replays + 1``."""

    # --- aggregation windows and node state (issue 14) -------------------------------------------------------------
    @abc.abstractmethod
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
        """Aggregate windows matching every filter given, newest window first (``window_start`` descending, rows
        without a window last), then by group key (then node, aggregation and window id), at most ``limit``.

        ``namespace`` is the group's ``namespace`` value; ``closed`` True for closed windows only, False for open
        ones only; ``since`` keeps the windows that start at or after it (a row without a window has no start and
        is left out). ValueError for a negative ``limit``.
        """

    @abc.abstractmethod
    async def get_aggregate_windows(self, node: str, *, open_only: bool = True) -> list[AggregateWindowRow]:
        """Every stored window of ``node`` (only those not closed, by default): what a reducer restores when it
        starts or takes a partition over. Ordered by aggregation, group key, window id."""

    @abc.abstractmethod
    async def get_node_states(self, node: str, keys: Sequence[str]) -> list[NodeStateRow]:
        """The stored state of ``node`` for the keys among ``keys`` (in no particular order; unknown keys are left
        out)."""

    @abc.abstractmethod
    async def list_node_states(self, node: str, *, limit: int = 1000) -> list[NodeStateRow]:
        """The stored state of ``node``, by key, at most ``limit`` rows (ValueError when negative)."""

    @abc.abstractmethod
    async def count(self, table: str) -> int:
        """Rows in one of ``TABLES`` (a ValueError for any other name)."""

    @abc.abstractmethod
    async def health(self) -> StoreHealth: ...

    async def probe_write(self) -> None:
        """``StoreError`` when the store cannot be written at all (SQLite: a read-only file, a file system that
        refuses writes), checked without changing anything; before nodes start, so that they do no work they could not
        record. Nothing here for a server (PostgreSQL): one that is down is held through, one that refuses a write
        says so on that write."""
        return  # not abstract: a store without such a check (PostgreSQL) has nothing to do

    @property
    def circuit_open(self) -> bool:
        """Whether the store refuses calls without trying, its circuit breaker open (PostgreSQL while the server
        fails); False for a store without one."""
        return False

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


# --- migrations ------------------------------------------------------------------------------------------------------

MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    """One numbered schema change shipped as ``onex/migrations/<dialect>/NNNN_name.sql``."""

    version: int
    name: str  # the file name without ``.sql``: "0001_initial"
    sql: str

    @property
    def checksum(self) -> str:
        """Recorded when applied: a released migration edited afterwards is reported instead of re-applied."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


M = TypeVar("M", bound=Migration)


def load_migrations(dialect: str, kind: type[M]) -> list[M]:
    """The migrations shipped for ``dialect`` by version; StoreError if two share a number."""
    directory = importlib.resources.files("onex").joinpath("migrations", dialect)
    found: list[M] = []
    for entry in directory.iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append(kind(int(match.group(1)), entry.name.removesuffix(".sql"), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise StoreError(f"two {dialect} migrations share a number: {[m.name for m in found]}")
    return found
