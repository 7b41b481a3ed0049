"""The database adapter: persists events to the store, one transaction per consumed batch.

| event                          | rows                                                        |
|--------------------------------|-------------------------------------------------------------|
| WORKFLOW_COMPLETED / _FAILED   | workflow_executions (final state) + workflow_steps          |
|                                | + metadata_stamps (the outcome's stamp; not for dry runs)   |
| STATE_TRANSITION (a batch)     | fsm_transitions, one row per transition                     |
| STATE_AGGREGATION_COMPLETED    | bridge_states (the reducer's intent, version-guarded)       |
| STAMP_CREATED (not by default) | metadata_stamps                                             |

The orchestrator writes a workflow's row itself while it runs (its checkpoints); the outcome writes its final
state, its steps and its stamp in one transaction, so a stored final state always comes with its stamp. The shipped
contract does not consume STAMP_CREATED (the ONEX mapping's source of a stamp's row): every stamp a workflow took
reaches this node in its outcome, and the orchestrator writes the row of a stamp no running workflow took (a late or a
repeated result). A contract that consumes it again gets each stamp's row twice, and the natural key drops the copy.

Group commit: the adapter's subscriptions (one per topic and partition) hand their rows to one writer task, which merges
what is pending into a single transaction; each handler returns, and its messages are acknowledged, only after the
transactions holding its rows committed. Fewer, larger transactions is what keeps a single SQLite writer (or a
PostgreSQL round trip) from being the bottleneck. Where the store runs transactions side by side (PostgreSQL: a pool;
``Store.concurrent_writes``), the rows are shared out among ``config.writers`` shards (contract default 2) by key
(``share_out``): a stamp's file, ``(namespace, file_path)``, decides the shard of its stamp, its workflow's final state
and steps, and a namespace the shard of its aggregate. A transaction holds the shards whose rows it writes, and a shard
is in one transaction at a time. From ``config.split_rows`` rows pending on (a backlog: the in-process graph outruns one
PostgreSQL server process), each shard with nothing in flight takes a transaction of its own, and they run side by side
on two server processes; fewer rows wait until no transaction is in flight, and then go in one, as a single writer would
write them. So two transactions in flight never write the same row: neither waits on the other's locks, they cannot
deadlock, and the store's numbering of a file's stamp versions and its copy of intelligence data between a stamp and its
step (triggers that read the committed rows) see what they would with one writer; a file's rows keep their order (its
shard's, first in first out). Below the threshold (small batches, as a separate adapter process on Kafka has them: a
median of 206 rows a transaction in ``bench/multiprocess.py``) a transaction a shard lowered that benchmark's ratio
(README, "Design decisions").

Idempotency: every row has a natural key (see ``onex.store``), so a redelivered event rewrites nothing. On top of
that, event ids already applied are skipped: recent ids in memory (bounded), and the ids of the reducer's intents
durably in ``processed_events`` (intents are the one kind whose replay after a restart must be recognised without
re-reading the row). With ``config.log_events`` every consumed event is also written to ``event_logs``.

Store outages. A store that cannot be reached is not a bad message, so it must not use up the bus's retries and
end in the dead-letter topic. One layer each (README, "Design decisions"): the store retries a call on its own and
keeps the circuit breaker (``PostgresStore``: ``retry_attempts``, ``retry_deadline``, ``breaker_*``); when it gives
up with ``StoreUnavailable`` (connection refused or lost, the server shutting down, its breaker open, the pool
exhausted, a database file locked by another process), this writer holds: it keeps the batches pending and their
handlers keep waiting, so their messages stay unacknowledged and the bus holds everything behind them: as many
messages as the memory bus's buffers take, or Kafka's log. The writer tries again with capped exponential backoff
(from the contract's ``retry.backoff_ms``, doubling up to ``config.outage_max_backoff_ms``), which is what keeps it
from hammering the store; it has no breaker of its own, the store's is the one. The handlers wait inside
``onex.resilience.holding()``, so the contract's ``timeout_ms`` does not cancel a handler held by an outage, and the
bus never counts an outage as a failed attempt. ``health()`` says DEGRADED from the first unavailable attempt to the
next successful one (heartbeats and the HTTP ``/health`` report it). When the store answers again everything pending
is written, each row once: natural keys make rewriting a batch whose COMMIT answer was lost harmless. Any other
``StoreError`` is about the data (a constraint, a value the store refuses): as before, the handler fails, the bus
retries the messages one by one and dead-letters the bad one with the error.

Draining during an outage: ``drain()`` gives the batches in hand ``config.drain_timeout_ms`` more
(``ONEX_DRAIN_TIMEOUT_MS``, default 5 s); if the store is still unavailable then, their handlers are cancelled,
which both buses take as "not handled": the messages stay unacknowledged (Kafka does not commit them and the group
gets them again; the memory bus puts them back in the group's buffer) and nothing is dead-lettered. The wait is
bounded by that timeout plus one store call in progress (``PostgresStore``: at most its ``retry_deadline``). Two
limits that are not this node's: ``Runtime.drain()`` on the memory bus first waits until the bus is quiescent, which
it is not while writes are held, so a whole runtime shut down during an outage waits there until the store is back;
and a Kafka member holding one batch for longer than ``max_poll_interval_ms`` (5 min) leaves its group, whose new
owner writes the batch again (duplicates, not losses).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from onex.envelope import ModelStateTransitions
from onex.exceptions import StoreUnavailable
from onex.nodes import EffectNode, Event, Lifecycle
from onex.resilience import holding
from onex.store import (
    BridgeStateRow,
    EventLogRow,
    StepRow,
    TransitionRow,
    WorkflowRow,
    WriteBatch,
    maker,
)

from ...models import ModelAggregationIntent, ModelStampCreated, ModelWorkflowFinished
from ...rows import created_stamp_row, outcome_stamp_row
from .models import ModelDatabaseAdapterConfig

WORKFLOW_TYPE = "stamp_workflow"
MAX_COMMIT_ROWS = 5_000
# The rows of a batch, built by ``onex.store.maker``: the same rows at about half the cost of the classes' own calls.
_transition_row = maker(TransitionRow)
_workflow_row = maker(WorkflowRow)
_step_row = maker(StepRow)

T = TypeVar("T")

_log = logging.getLogger(__name__)


class _GiveUp(asyncio.CancelledError):
    """Internal: draining, and the store stayed unavailable past the drain timeout.

    A ``CancelledError`` on purpose: raised out of a handler it reads as a cancelled handler, which both buses leave
    unacknowledged (redelivered later), where any ``Exception`` would be retried and then dead-lettered.
    """


_Held = tuple[WriteBatch, asyncio.Future[None]]  # a handler's rows, and what it waits on


@dataclass(slots=True, eq=False)
class _Shard:
    """The rows of one share of the keys (``share_out``): pending, and whether a transaction holds the share."""

    pending: deque[_Held] = field(default_factory=deque)  # first in, first out
    busy: bool = False


@dataclass(slots=True, eq=False)
class _Transaction:
    """A transaction in flight: the shards it holds and the rows it writes."""

    shards: list[_Shard]
    held: list[_Held]
    task: asyncio.Task[None] | None = None


@dataclass(frozen=True, slots=True)
class WriterStatistics:
    """A snapshot of the group-commit writers (``NodeDatabaseAdapterEffect.statistics()``).

    ``writers``: how many shards the rows are shared among, so how many transactions may be in flight at once
    (module docstring, "Group commit"); ``transactions``: how many are in flight now. ``pending_batches`` /
    ``pending_rows``: handed to the writer and not committed yet (their messages are not acknowledged; a handler's
    rows in two shards are two batches). ``commits``: transactions committed. ``unavailable``: store calls that
    found the store unavailable, since the start. ``outage_s``: how long the current outage has lasted, None when
    there is none.
    """

    writers: int
    transactions: int
    pending_batches: int
    pending_rows: int
    commits: int
    unavailable: int
    outage_s: float | None


class NodeDatabaseAdapterEffect(EffectNode):
    config_model = ModelDatabaseAdapterConfig
    config: ModelDatabaseAdapterConfig
    uses_breaker = False  # the store keeps the breaker (see above): a contract's circuit_breaker is refused
    cached_lookups = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = self.config
        self.log_events = config.log_events
        # Keyed by integers, which the garbage collector does not track (see the orchestrator's ``_finished``).
        self._recent: OrderedDict[int, None] = OrderedDict()
        self._recent_max = config.dedupe_window
        self._shards: list[_Shard] = []  # on_start: as many as config.writers and the store allow
        self._running: set[_Transaction] = set()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        # Store outages (module docstring): the first pause is the contract's retry backoff, doubling up to a cap.
        self._backoff_s = max(float(self.contract.resilience.retry.backoff_ms), 10.0) / 1000
        self._max_backoff_s = max(config.outage_max_backoff_ms / 1000, self._backoff_s)
        self._drain_timeout_s = config.drain_timeout_ms / 1000
        self._outage_since: float | None = None
        self._give_up_at: float | None = None  # set when draining starts
        self._draining = asyncio.Event()
        self._commits = 0
        self._unavailable = 0

    async def on_start(self) -> None:
        self._shards = [_Shard() for _ in range(max(1, min(self.config.writers, self.store.concurrent_writes)))]
        self._writer = asyncio.create_task(self._write_loop(), name=f"group-commit:{self.node_id}")

    async def drain(self) -> None:
        if self.lifecycle in (Lifecycle.STARTING, Lifecycle.RUNNING):
            # Handlers in hand return only once their rows are written: bound that wait while the store is away.
            self._give_up_at = time.monotonic() + self._drain_timeout_s
            self._draining.set()
        await super().drain()

    async def on_stop(self) -> None:
        tasks = [t.task for t in self._running if t.task is not None]
        if self._writer is not None:
            tasks.append(self._writer)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._abandon(self._shards)  # nobody writes them now; normally nothing is left after drain

    def health(self) -> str:
        base = super().health()
        return "DEGRADED" if base == "HEALTHY" and self._outage_since is not None else base

    def statistics(self) -> WriterStatistics:
        held = [*(h for t in self._running for h in t.held), *(h for shard in self._shards for h in shard.pending)]
        return WriterStatistics(
            writers=len(self._shards),
            transactions=len(self._running),
            pending_batches=sum(1 for _, done in held if not done.done()),
            pending_rows=sum(len(batch) for batch, done in held if not done.done()),
            commits=self._commits,
            unavailable=self._unavailable,
            outage_s=None if self._outage_since is None else time.monotonic() - self._outage_since,
        )

    async def _write_loop(self) -> None:
        """Start transactions for the shards with rows pending and none in flight (module docstring, "Group
        commit"): from ``config.split_rows`` rows on one each; fewer go in one transaction once no shard has one in
        flight, so that a light load is written as a single writer would write it."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            free = [shard for shard in self._shards if shard.pending and not shard.busy]
            if not free:
                continue
            if sum(len(batch) for shard in free for batch, _ in shard.pending) >= self.config.split_rows:
                groups = [[shard] for shard in free]
            elif any(shard.busy for shard in self._shards):
                continue  # a few rows: they wait for the transaction in flight, then go with the others in one
            else:
                groups = [free]
            for shards in groups:
                transaction = self._take(shards)
                if transaction is not None:
                    transaction.task = asyncio.create_task(self._write(transaction))
                    self._running.add(transaction)

    @staticmethod
    def _take(shards: list[_Shard]) -> _Transaction | None:
        """A transaction of the rows pending for ``shards``, in order, up to ``MAX_COMMIT_ROWS`` (a lost connection
        re-sends at most this much), holding the shards it took rows from; the rest waits for the next one. None
        when every handler waiting there was cancelled."""
        held: list[_Held] = []
        taken: list[_Shard] = []
        rows = 0
        for shard in shards:
            before = len(held)
            while shard.pending and rows < MAX_COMMIT_ROWS:
                batch, done = shard.pending.popleft()
                if done.done():
                    continue  # its handler was cancelled: the bus has its messages back
                held.append((batch, done))
                rows += len(batch)
            if len(held) > before:
                shard.busy = True
                taken.append(shard)
        return _Transaction(taken, held) if held else None

    async def _write(self, transaction: _Transaction) -> None:
        held = transaction.held
        batch = merge([rows for rows, _ in held])
        try:
            await self._store_call(functools.partial(self.store.apply, batch))
        except _GiveUp:
            self._abandon(transaction.shards, held)
        except Exception as exc:  # about the data: every contributor retries on its own (bus retry, dead letter)
            for _, done in held:
                if not done.done():
                    done.set_exception(exc)
        except BaseException:  # cancelled (on_stop): nobody will write these
            for _, done in held:
                done.cancel()
            raise
        else:
            self._commits += 1
            for _, done in held:
                if not done.done():
                    done.set_result(None)
        finally:
            for shard in transaction.shards:
                shard.busy = False
            self._running.discard(transaction)
            self._wake.set()  # what came meanwhile

    async def _store_call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn()``, called again and again while the store is unavailable (the store's breaker paces it too).

        Other errors pass through at once. Raises ``_GiveUp`` once draining has gone on for the drain timeout.
        """
        delay = self._backoff_s
        while True:
            try:
                result = await fn()
            except StoreUnavailable as exc:
                self._unavailable += 1
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    _log.warning(
                        "%s: store unavailable, holding %d rows unacknowledged and retrying: %s",
                        self.node_id,
                        self.statistics().pending_rows,
                        exc,
                    )
                if self._give_up_at is not None and time.monotonic() >= self._give_up_at:
                    raise _GiveUp("store unavailable while draining: messages left unacknowledged") from exc
                await self._pause(delay)
                delay = min(delay * 2, self._max_backoff_s)
                continue
            if self._outage_since is not None:
                _log.warning("%s: store available again after %.1f s", self.node_id, self.statistics().outage_s)
                self._outage_since = None
            return result

    async def _pause(self, delay: float) -> None:
        """Wait ``delay`` seconds before the next attempt; the start of a drain or its deadline cut it short."""
        if self._give_up_at is not None:
            await asyncio.sleep(max(0.0, min(delay, self._give_up_at - time.monotonic())))
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._draining.wait()

    @staticmethod
    def _abandon(shards: list[_Shard], held: Sequence[_Held] = ()) -> None:
        """Cancel every handler waiting for ``held`` or for ``shards``: their messages stay unacknowledged."""
        for _, done in [*held, *(h for shard in shards for h in shard.pending)]:
            done.cancel()
        for shard in shards:
            shard.pending.clear()

    async def _commit(self, batches: list[WriteBatch | None]) -> None:
        """Hand ``batches`` (one a shard, in the shards' order; None: nothing for that one) to the writer and wait
        until every one is committed."""
        loop = asyncio.get_running_loop()
        waits = []
        for shard, batch in zip(self._shards, batches, strict=True):
            if batch is not None:
                done: asyncio.Future[None] = loop.create_future()
                shard.pending.append((batch, done))
                waits.append(done)
        self._wake.set()
        with holding():  # waiting on the store: the handler's timeout_ms does not run out meanwhile
            if len(waits) == 1:
                await waits[0]
            else:
                await asyncio.gather(*waits)

    async def persist(self, events: Sequence[Event]) -> None:
        fresh = [e for e in events if e.envelope.event_id.int not in self._recent]
        intent_ids = [e.envelope.event_id for e in fresh if isinstance(e.payload, ModelAggregationIntent)]
        if intent_ids:
            with holding():
                todo = await self._store_call(functools.partial(self.store.unprocessed, self.contract.name, intent_ids))
            fresh = [
                e for e in fresh if not isinstance(e.payload, ModelAggregationIntent) or e.envelope.event_id in todo
            ]
        if not fresh:
            return
        await self._commit(self._to_batches(fresh))
        _remember(self._recent, (e.envelope.event_id.int for e in fresh), self._recent_max)

    def _to_batches(self, events: Sequence[Event]) -> list[WriteBatch | None]:
        """The rows of ``events``, a batch a shard (None where a shard gets nothing); see ``share_out``."""
        if len(self._shards) == 1:
            return [self.to_batch(events)]
        return [self.to_batch(share) if share else None for share in share_out(events, len(self._shards))]

    def to_batch(self, events: Sequence[Event]) -> WriteBatch:
        """The rows of ``events``: an outcome's final state, its steps and its stamp, so a stored final state always
        comes with its stamp (module docstring)."""
        batch = WriteBatch(consumer=self.contract.name)
        workflows: dict[int, WorkflowRow] = {}
        versions = (self.settings.metadata_version, self.settings.protocol_version)
        keep = functools.partial(_keep_combined, workflows)

        for envelope, payload in events:
            if isinstance(payload, ModelStateTransitions):
                batch.transitions.extend(
                    _transition_row(
                        id=t.transition_id,
                        entity_id=t.entity_id,
                        entity_type=t.entity_type,
                        from_state=t.from_state,
                        to_state=t.to_state,
                        transition_event=t.trigger,
                        correlation_id=t.correlation_id,
                        transition_data=t.data,
                        created_at=t.at,
                    )
                    for t in payload.transitions
                    if not t.data.get("dry_run")  # a dry run writes nothing
                )
            elif isinstance(payload, ModelWorkflowFinished):
                if payload.dry_run:
                    continue  # a dry run writes nothing
                keep(
                    _workflow_row(
                        correlation_id=payload.workflow_id,
                        workflow_type=WORKFLOW_TYPE,
                        current_state=payload.state,
                        state_seq=payload.state_seq,
                        namespace=payload.namespace,
                        file_path=payload.file_path,
                        file_hash=payload.file_hash,
                        stamp_id=payload.stamp_id,
                        started_at=payload.started_at,
                        completed_at=payload.completed_at,
                        execution_time_ms=payload.execution_time_ms,
                        error_message=payload.error,
                    )
                )
                if payload.stamp is not None:
                    batch.stamps.append(outcome_stamp_row(payload, *versions))
                batch.steps.extend(
                    _step_row(
                        workflow_id=payload.workflow_id,
                        step_name=s.step_name,
                        step_order=s.step_order,
                        status=s.status,
                        execution_time_ms=s.execution_time_ms,
                        step_data=s.data,
                        error_message=s.error,
                        created_at=payload.completed_at,
                    )
                    for s in payload.steps
                )
            elif isinstance(payload, ModelAggregationIntent):
                batch.bridge_states.append(
                    BridgeStateRow(
                        namespace=payload.namespace,
                        version=payload.version,
                        total_workflows_processed=payload.total_workflows_processed,
                        total_items_aggregated=payload.total_items_aggregated,
                        total_size_bytes=payload.total_size_bytes,
                        unique_file_hashes=payload.unique_file_hashes,
                        current_fsm_state=payload.current_fsm_state,
                        aggregation_metadata={
                            "by_file_type": payload.by_file_type,
                            "size_buckets": payload.size_buckets,
                            "windows_closed": payload.windows_closed,
                        },
                        last_aggregation_timestamp=payload.aggregated_at,
                    )
                )
                batch.processed_event_ids.append(envelope.event_id)
            elif isinstance(payload, ModelStampCreated) and not payload.dry_run:  # where a contract consumes it
                batch.stamps.append(created_stamp_row(envelope, payload, *versions))
            if self.log_events:
                # JSON mode: in-process payloads hold UUIDs and datetimes as objects, which a JSON column cannot.
                logged = envelope.model_dump(mode="json", include={"payload", "metadata"})
                batch.event_logs.append(
                    EventLogRow(
                        event_id=envelope.event_id,
                        event_type=envelope.event_type,
                        topic=self._consumed[envelope.event_type][0],
                        status="processed",
                        correlation_id=envelope.correlation_id,
                        timestamp=envelope.event_timestamp,
                        payload=logged["payload"],
                        metadata=logged["metadata"],
                    )
                )
        batch.workflows.extend(workflows.values())
        return batch


_NULLABLE_WORKFLOW_FIELDS: tuple[str, ...] = (
    "namespace", "file_path", "file_hash", "stamp_id", "started_at", "completed_at", "execution_time_ms",
    "error_message",
)  # fmt: skip


def combine(a: WorkflowRow, b: WorkflowRow) -> WorkflowRow:
    """Two rows of one workflow as the store's upsert would leave them: the higher ``state_seq`` wins (the later
    of equals), a NULL never overwrites (but for the checkpoint, the winner's either way), the metadata merges.

    Started and finished usually reach the adapter within one group commit, from two topics: combined, each
    workflow is written once instead of inserted and then updated (which also moves it in the state index).
    """
    win, lose = (b, a) if b.state_seq >= a.state_seq else (a, b)
    changes: dict[str, Any] = {
        name: getattr(lose, name)
        for name in _NULLABLE_WORKFLOW_FIELDS
        if getattr(win, name) is None and getattr(lose, name) is not None
    }
    if lose.metadata:
        changes["metadata"] = {**lose.metadata, **win.metadata}
    return dataclasses.replace(win, **changes) if changes else win


def _keep_combined(workflows: dict[int, WorkflowRow], row: WorkflowRow) -> None:
    """Add ``row`` to ``workflows`` (by its id's int: ``uuid.UUID.__hash__`` is Python, and the rows are this
    node's own, their ids typed), combined with the row of its workflow already there (``combine``)."""
    key = row.correlation_id.int
    prior = workflows.get(key)
    workflows[key] = row if prior is None else combine(prior, row)


def _remember(recent: OrderedDict[int, None], keys: Iterable[int], limit: int) -> None:
    """Add ``keys`` to ``recent``, then forget the oldest beyond ``limit``."""
    for key in keys:
        recent[key] = None
    while len(recent) > limit:
        recent.popitem(last=False)


def share_out(events: Sequence[Event], count: int) -> list[list[Event]]:
    """``events`` shared out among ``count`` shards (module docstring, "Group commit"): a stamp's events (its
    outcome, STAMP_CREATED) by its file, ``(namespace, file_path)``; an aggregate by its namespace; anything else
    (transitions: rows of their own, under ids nobody else writes) by its event id. Within a share, events keep
    their order."""
    shares: list[list[Event]] = [[] for _ in range(count)]
    for event in events:
        payload = event.payload
        if isinstance(payload, ModelWorkflowFinished | ModelStampCreated):
            key = hash((payload.namespace, payload.file_path))
        elif isinstance(payload, ModelAggregationIntent):
            key = hash(payload.namespace)
        else:
            key = event.envelope.event_id.int
        shares[key % count].append(event)
    return shares


def merge(batches: Sequence[WriteBatch]) -> WriteBatch:
    """One batch holding the rows of all ``batches`` (conflict rules make their order irrelevant); the rows of one
    workflow are combined into one (``combine``)."""
    if len(batches) == 1:
        return batches[0]
    merged = WriteBatch(consumer=batches[0].consumer)
    workflows: dict[int, WorkflowRow] = {}
    for b in batches:
        for row in b.workflows:
            _keep_combined(workflows, row)
    merged.workflows.extend(workflows.values())
    for b in batches:
        merged.processed_event_ids.extend(b.processed_event_ids)
        merged.steps.extend(b.steps)
        merged.stamps.extend(b.stamps)
        merged.transitions.extend(b.transitions)
        merged.bridge_states.extend(b.bridge_states)
        merged.registrations.extend(b.registrations)
        merged.heartbeats.extend(b.heartbeats)
        merged.event_logs.extend(b.event_logs)
    return merged
