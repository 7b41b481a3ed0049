"""The reducer: streaming aggregation of stamps per namespace, in tumbling windows.

Its input is the workflow outcomes (WORKFLOW_COMPLETED / _FAILED), keyed by namespace and taken by one subscription,
so with several reducers in the group one namespace is always aggregated in one place (on Kafka: the range assignment
gives partition i of both topics to the same member). An outcome carries what is aggregated of its stamp (size, type,
hash, dry run), so the reducer needs nothing keyed otherwise.

State (its state_management subcontract, ``onex.state``). A checkpoint writes the new totals of each namespace
changed since the last one to ``bridge_states`` with a version one higher, and the open windows of its aggregations
to ``aggregate_windows``, with the workflows they count, in one transaction: by default after every handled batch,
before it is acknowledged, so a reducer that is killed loses nothing it acknowledged (``checkpoint: per_window`` or
``interval_ms`` write less; what a crash then loses is found again by ``_reconcile``). The reducer that gets a
namespace next (after a restart, or because a replica joined or left) loads exactly what was written the first time
it sees the namespace; the distinct hashes are read back from ``metadata_stamps``. Only the ``state_fields`` listed
are restored; the others count from zero in every process. A namespace whose partition moves away is forgotten, so
it is loaded afresh if it comes back.

Intents. When a namespace's window closes (``config.window_items`` stamps or ``config.window_ms`` elapsed) the
reducer publishes the namespace's running totals as a STATE_AGGREGATION_COMPLETED intent, for whoever consumes it;
the database adapter carries it out, and the version guard makes it a no-op where the checkpoint already wrote that
version. Each namespace is an entity on the contract's aggregation_lifecycle FSM (idle -> aggregating -> flushing ->
idle).

Aggregations. Every outcome (dry runs aside) is also a record of the aggregation subcontract (``onex.aggregation``):
its aggregations (by file type, by size bucket, per minute, ...) are persisted per group and window in
``aggregate_windows``, a window when it closes, open ones with each checkpoint when ``windows`` is a state field.
Every aggregation must group by namespace (NAMESPACE_GROUPING does by itself): a namespace is aggregated in one
place, so no two replicas write the same window.

Totals are cumulative: re-stamping an unchanged file counts as one more item aggregated, while ``unique_file_hashes``
counts distinct content. Each workflow counts once, however often its outcome arrives (delivered again, published
again after a crash, or found lost in the store): the workflows a checkpoint counts are recorded with it in
``processed_events`` (consumer ``<name>.workflows``), and every batch is checked against them; a bounded window of
recent ones (``config.dedupe_window``) spares that read for redeliveries in one process. The workflows counted since
the last checkpoint are not in the store yet, so they stay remembered however many there are; the window bounds
only those checkpointed. Finished workflows whose outcome was lost after the database adapter stored it are found
there too (``_reconcile``).

A batch counts whole or not at all: if aggregating one of its outcomes raises, nothing of the batch is counted or
remembered (the aggregator rolls back to a savepoint), so the bus's retries and its dead letter see the batch as
delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import uuid
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from onex.aggregation import Aggregator, WindowResult
from onex.contracts import Contract, StateSupport
from onex.exceptions import OnexError
from onex.fsm import Entity
from onex.nodes import Event, ReducerNode
from onex.store import AggregateWindowRow, BridgeStateRow, WriteBatch, group_key

from ...models import ModelAggregationIntent, ModelWorkflowFinished
from .models import ModelReducerConfig

_log = logging.getLogger(__name__)
WORKFLOW_TYPE = "stamp_workflow"  # the orchestrator's workflows (its FSM's name)
TOTALS = ("total_workflows_processed", "total_items_aggregated", "total_size_bytes", "unique_file_hashes")
STATE_FIELDS = (*TOTALS, "aggregation_metadata", "windows")


@dataclass(eq=False)
class NamespaceAggregate(Entity):
    namespace: str = ""
    version: int = 0
    workflows: int = 0
    items: int = 0
    total_bytes: int = 0
    hashes: set[str] = field(default_factory=set)
    by_file_type: Counter[str] = field(default_factory=Counter)
    size_buckets: Counter[str] = field(default_factory=Counter)
    windows_closed: int = 0
    window_items: int = 0
    window_started: float = 0.0
    dirty: bool = False


class Outcome(NamedTuple):
    """What the reducer takes from a finished workflow (its outcome event, or its stored row and stamp)."""

    workflow_id: uuid.UUID
    namespace: str
    counts: bool  # completed, not a dry run: its stamp is an item
    file_hash: str | None
    file_size: int
    file_type: str
    record: Any  # what the aggregations read: the outcome's payload, or the same fields from the store
    at: datetime  # when the workflow finished: the record's event time


def bucket_label(size: int, bounds: Sequence[int]) -> str:
    for bound in bounds:
        if size <= bound:
            return f"<={bound}"
    return f">{bounds[-1]}" if bounds else "all"


class NodeReducer(ReducerNode):
    config_model = ModelReducerConfig
    config: ModelReducerConfig
    cached_lookups = {}

    # Its namespace totals (the columns of bridge_states) and its open windows; versioned, because the database
    # adapter applies its intents by version (an older one is a no-op), and the only kind that closes windows.
    state_support = StateSupport(
        fields=STATE_FIELDS,
        versionings=("monotonic",),
        checkpoints=("per_batch", "per_window", "interval_ms"),
        why="the database adapter applies a reducer's intents by their version",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        aggregation = self.contract.subcontracts.aggregation
        aggregations = aggregation.aggregations if aggregation else ()
        self.window_items = self.config.window_items
        self.window_s = self.config.window_ms / 1000
        # The totals' size histogram (aggregation_metadata.size_buckets) has the SIZE_BUCKETS aggregation's bounds.
        sizes = next((a for a in aggregations if a.type == "SIZE_BUCKETS"), None)
        self.bucket_bounds: tuple[int, ...] = sizes.buckets if sizes else ()
        self.aggregator: Aggregator | None = None
        if aggregation is not None and aggregations:
            methods = {a.method: getattr(self, a.method) for a in aggregations if a.method}
            self.aggregator = Aggregator(aggregation, methods=methods, clock=self.clock)
        # What the next checkpoint writes: namespaces whose totals changed, workflows they count, windows (by
        # aggregation, group and window id: a newer result of a window replaces an older one not written yet).
        self._changed: dict[str, NamespaceAggregate] = {}
        self._counted: dict[str, list[uuid.UUID]] = {}  # by namespace: one that moves away takes its workflows along
        self._windows: dict[tuple[str, str, str], WindowResult] = {}
        self._window_versions: dict[tuple[str, str, str], int] = {}  # open windows: the version last written
        self._window_closed = False  # since the last checkpoint (checkpoint: per_window)
        self.flush_interval_s = self.config.flush_interval_ms / 1000
        self.dedupe_window = self.config.dedupe_window
        self.aggregates: dict[str, NamespaceAggregate] = {}
        # Keyed by integers, which the garbage collector does not track (see the orchestrator's ``_finished``).
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._intents: list[ModelAggregationIntent] = []
        self._timer: asyncio.Task[None] | None = None
        # Under this consumer name processed_events records the workflows the stored aggregates count.
        self.processed_key = f"{self.contract.name}.workflows"
        self.reconcile_after_s = self.config.reconcile_after_ms / 1000
        self._owned: frozenset[tuple[str, int]] = frozenset()
        self._reconciler: asyncio.Task[None] | None = None
        self._reducing = asyncio.Lock()  # handled batches and reconciliation count workflows one at a time

    @classmethod
    def contract_problems(cls, contract: Contract) -> list[tuple[tuple[str | int, ...], str]]:
        """What ``onex validate`` reports beyond the schema: an aggregation that does not group by namespace would
        be computed in part by every replica, each overwriting the others' windows."""
        aggregation = contract.subcontracts.aggregation
        return [
            (
                ("subcontracts", "aggregation", "aggregations", index, "group_by"),
                f"aggregation {spec.name!r} must group by namespace: a reducer aggregates each namespace in one "
                "place, so a group spanning namespaces would be counted in part by every replica",
            )
            for index, spec in enumerate(aggregation.aggregations if aggregation else ())
            if spec.type != "NAMESPACE_GROUPING" and "namespace" not in spec.group_by
        ]

    async def on_start(self) -> None:
        self._timer = asyncio.create_task(self._tick(), name=f"windows:{self.node_id}")

    async def _load(self, namespace: str) -> None:
        """Continue the namespace's aggregate from the store, the first time this reducer sees the namespace.

        On first sight rather than at start: with several reducers, a namespace this one takes over (a replica
        joined or left) must start from what its previous owner stored, not from what was stored when this one
        started. Everything is read before the aggregate exists, so a handler of another partition that loads the
        same namespace meanwhile (or counts into it) is not overwritten.
        """
        if not self.state_policy.durable:  # storage: memory: every process starts from zero
            self._aggregate(namespace)
            return
        row, hashes, windows = await self.hold_store(functools.partial(self._read_state, namespace))
        if namespace in self.aggregates:
            return
        agg = self._aggregate(namespace)
        keeps = self.state_policy.keeps
        if row is not None:
            agg.version = row.version  # always: the store refuses a version it already has
            if keeps("total_workflows_processed"):
                agg.workflows = row.total_workflows_processed
            if keeps("total_items_aggregated"):
                agg.items = row.total_items_aggregated
            if keeps("total_size_bytes"):
                agg.total_bytes = row.total_size_bytes
            agg.hashes = hashes
            if keeps("aggregation_metadata"):
                agg.by_file_type.update(row.aggregation_metadata.get("by_file_type", {}))
                agg.size_buckets.update(row.aggregation_metadata.get("size_buckets", {}))
                agg.windows_closed = int(row.aggregation_metadata.get("windows_closed", 0))
        for w in windows:  # restored only if kept, but every write goes on from the version stored
            if not w.closed:
                self._window_versions[(w.aggregation, group_key(w.group), w.window_id)] = w.version
        if self.aggregator is not None and windows:
            # Closed count windows only number the next ones; open windows continue when ``windows`` is kept.
            self.aggregator.restore(_result(w) for w in windows if w.closed or keeps("windows"))

    def _owns(self, namespace: str) -> bool:
        topic = self._consumed["WORKFLOW_COMPLETED"][0]
        return (topic, self.bus.partition_of(topic, namespace)) in self._owned

    async def on_partitions(self, assigned: frozenset[tuple[str, int]]) -> None:
        """Forget the namespaces whose partitions went elsewhere: if they come back, they are loaded afresh from the
        checkpoints their owner meanwhile wrote. On a broker, look for lost outcomes once the new owner caught up
        (see ``_reconcile``)."""
        self._owned = assigned
        for namespace in [n for n in self.aggregates if not self._owns(n)]:
            del self.aggregates[namespace]
            self._changed.pop(namespace, None)
        for namespace in [n for n in self._counted if not self._owns(n)]:
            # Not recorded as counted (their counts went with the namespace): the new owner still finds them, and
            # so does this reducer should the namespace come back before anyone counted them.
            for workflow_id in self._counted.pop(namespace):
                self._seen.pop(workflow_id.int, None)
        if self.aggregator is not None:
            self.aggregator.forget(lambda group: self._owns(str(group.get("namespace"))))
            for pending in (self._windows, self._window_versions):
                for key in [k for k in pending if not self._owns(_namespace_of(k[1]))]:
                    del pending[key]  # a namespace that comes back loads its windows' versions again
        if self.bus.retains_messages and self.state_policy.durable:
            if self._reconciler is not None:
                self._reconciler.cancel()
            self._reconciler = asyncio.create_task(self._reconcile_later(), name=f"reconcile:{self.node_id}")

    async def _reconcile_later(self) -> None:
        await self.clock.sleep(self.reconcile_after_s)
        try:
            await self._reconcile()
        except OnexError as exc:  # the store is away: the next assignment looks again
            _log.warning("%s: could not look for finished workflows left out of the aggregates: %s", self.node_id, exc)

    async def _read_state(self, namespace: str) -> tuple[BridgeStateRow | None, set[str], list[AggregateWindowRow]]:
        row = await self.store.get_bridge_state(namespace)
        hashes: set[str] = set()
        if row is not None and self.state_policy.keeps("unique_file_hashes"):
            offset, page = 0, 10_000
            while stamps := await self.store.list_stamps(namespace, limit=page, offset=offset):
                hashes.update(st.file_hash for st in stamps)
                offset += page
        windows: list[AggregateWindowRow] = []
        if self.aggregator is not None:
            windows = await self.store.list_aggregate_windows(
                node=self.contract.name, namespace=namespace, closed=False, limit=1_000_000
            )
            # Count windows go on numbering from the latest closed one of each group (the newest 1,000 of the
            # namespace per aggregation are looked at), so a new window never takes a stored one's id.
            for name in self.aggregator.counted:
                windows += await self.store.list_aggregate_windows(
                    node=self.contract.name, namespace=namespace, aggregation=name, closed=True, limit=1_000
                )
        return row, hashes, windows

    async def on_drain(self) -> None:
        self._close_windows(force=True)

    async def on_stop(self) -> None:
        for task in (self._timer, self._reconciler):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _aggregate(self, namespace: str) -> NamespaceAggregate:
        agg = self.aggregates.get(namespace)
        if agg is None:
            assert self.fsm is not None
            # A fresh salt: the aggregate's transitions start counting again in every process that loads it.
            agg = NamespaceAggregate(entity_id=f"namespace:{namespace}", namespace=namespace, id_salt=self.ids().hex)
            self.fsm.attach(agg)
            self.aggregates[namespace] = agg
        return agg

    def _touch(self, agg: NamespaceAggregate, items: int) -> None:
        assert self.fsm is not None
        if agg.state == "idle":
            agg.window_started = self.clock.monotonic()
            agg.window_items = 0
        agg.window_items += items
        agg.context["window_items"] = agg.window_items
        agg.dirty = True
        if agg.state == "idle":
            self.fsm.trigger(agg, "item", count=items)

    # -- handlers --
    async def handle_events(self, events: Sequence[Event]) -> None:
        """WORKFLOW_COMPLETED / _FAILED, keyed by namespace: each outcome carries what is aggregated of its stamp."""
        outcomes = []
        for _, payload in events:
            assert isinstance(payload, ModelWorkflowFinished)
            if payload.dry_run:
                continue  # a dry run writes nothing, aggregates included
            stamp = payload.stamp
            outcomes.append(
                Outcome(
                    payload.workflow_id,
                    payload.namespace,
                    payload.state == "completed" and not payload.dry_run,
                    stamp.file_hash if stamp else None,
                    stamp.file_size if stamp else 0,
                    stamp.file_type if stamp else "unknown",
                    payload,
                    payload.completed_at,
                )
            )
        await self._reduce(outcomes)

    async def announce(self) -> None:
        await super().announce()
        if not self.bus.retains_messages and self.state_policy.durable:
            await self._reconcile()

    async def _reconcile(self) -> None:
        """Aggregate the finished workflows of this reducer's namespaces that are stored but no aggregate counts.

        Every workflow an aggregate counts is recorded with its checkpoint, so these are found in the store. Their
        outcome was lost after the database adapter stored it: on the memory bus, with a run that was killed (done
        at start, before this run's own work); on a broker that lost what it held (tansu with memory storage,
        restarted) before the reducer read it (done a while after every partition assignment, once the reducer
        caught up). A workflow counted here and then delivered after all is recognised and not counted again.
        """
        rows = await self.hold_store(
            functools.partial(self.store.unprocessed_workflows, self.processed_key, ("completed", "failed"))
        )
        rows = [
            r
            for r in rows
            if r.workflow_type == WORKFLOW_TYPE
            and r.namespace is not None
            and (not self.bus.retains_messages or self._owns(r.namespace))
        ]
        if not rows:
            return
        ids = [r.stamp_id for r in rows if r.stamp_id is not None and r.current_state == "completed"]
        stamps = {s.id: s for s in await self.hold_store(functools.partial(self.store.get_stamps, ids))}
        outcomes = []
        for row in rows:
            # Dry runs store no stamp: like their outcomes, they count as workflows, not as items.
            stamp = stamps.get(row.stamp_id) if row.stamp_id is not None else None
            assert row.namespace is not None
            # The fields of the outcome the aggregations may read, as the store has them.
            record = {
                "workflow_id": row.correlation_id,
                "state": row.current_state,
                "namespace": row.namespace,
                "file_path": row.file_path,
                "execution_time_ms": row.execution_time_ms,
                "completed_at": row.completed_at,
                "stamp": {"file_hash": stamp.file_hash, "file_size": stamp.file_size, "file_type": stamp.file_type}
                if stamp
                else None,
            }
            outcomes.append(
                Outcome(
                    row.correlation_id,
                    row.namespace,
                    row.current_state == "completed" and stamp is not None,
                    stamp.file_hash if stamp else None,
                    stamp.file_size if stamp else 0,
                    stamp.file_type if stamp else "unknown",
                    record,
                    row.completed_at or self.clock.now(),
                )
            )
        _log.info("%s: aggregating %d finished workflow(s) no aggregate counted", self.node_id, len(outcomes))
        await self._reduce(outcomes)
        await self.flush()

    async def _reduce(self, outcomes: Sequence[Outcome]) -> None:
        async with self._reducing:
            await self._reduce_locked(outcomes)

    async def _reduce_locked(self, outcomes: Sequence[Outcome]) -> None:
        # By the workflow ids' ints: ``uuid.UUID.__hash__`` is Python, about three times an int's lookup.
        fresh: dict[int, Outcome] = {}
        for outcome in outcomes:
            key = outcome.workflow_id.int
            if key not in self._seen:
                fresh.setdefault(key, outcome)
        if fresh and self.state_policy.durable:
            # Counted before, by this reducer or another (a redelivered outcome, a replica that took over): the
            # workflows an aggregate counts are recorded with its checkpoint.
            ids = [o.workflow_id for o in fresh.values()]
            todo = await self.hold_store(functools.partial(self.store.unprocessed, self.processed_key, ids))
            kept = {cid.int for cid in todo}
            fresh = {key: o for key, o in fresh.items() if key in kept}
        for namespace in {o.namespace for o in fresh.values()} - self.aggregates.keys():
            await self._load(namespace)
        aggregator = self.aggregator
        if aggregator is not None and fresh:
            # First, and all or nothing: an outcome the aggregator cannot take (what its CUSTOM method raises, say)
            # fails the batch with nothing of it counted, so a retry or the dead letter sees all of it again.
            aggregator.savepoint()
            try:
                add = aggregator.add
                for outcome in fresh.values():
                    add(outcome.record, outcome.at)
            except BaseException:
                aggregator.rollback()
                raise
            aggregator.release()
        touched: Counter[str] = Counter()
        seen = self._seen
        for key, outcome in fresh.items():
            seen[key] = None
            agg = self.aggregates[outcome.namespace]
            agg.workflows += 1
            touched[outcome.namespace] += 0  # a workflows-only window still closes
            if not outcome.counts or outcome.file_hash is None:
                continue
            agg.items += 1
            agg.total_bytes += outcome.file_size
            agg.hashes.add(outcome.file_hash)
            agg.by_file_type[outcome.file_type] += 1
            agg.size_buckets[bucket_label(outcome.file_size, self.bucket_bounds)] += 1
            touched[outcome.namespace] += 1
        for namespace in touched:
            agg = self.aggregates[namespace]
            if namespace not in self._changed:
                agg.version += 1  # the next checkpoint's; an intent published before it carries it too
                self._changed[namespace] = agg
        for namespace, items in touched.items():
            self._touch(self.aggregates[namespace], items)
        if len(touched) == 1:  # a batch of one namespace (its outcomes share a partition): no call per workflow
            self._counted.setdefault(next(iter(touched)), []).extend([o.workflow_id for o in fresh.values()])
        else:
            for outcome in fresh.values():
                self._counted.setdefault(outcome.namespace, []).append(outcome.workflow_id)
        # Forget the oldest remembered workflows beyond the window, but never one not checkpointed yet: the store
        # does not know it, so only this reducer recognises it delivered again. Those are the newest remembered
        # (every remembered workflow is counted until a checkpoint records it; on_partitions forgets both at once).
        excess = len(seen) - self.dedupe_window - sum(map(len, self._counted.values()))
        for _ in range(excess):
            seen.popitem(last=False)
        self._close_windows(force=False)

    async def checkpoint(self) -> None:
        """Write what changed since the last checkpoint in one transaction: the namespaces' new totals, the
        aggregation windows that changed or closed (an open one with its accumulators when ``windows`` is a state
        field, so a new process continues it), and the workflows they count, recorded so no workflow is counted
        twice (see the module docstring for when this runs).

        With ``storage: memory`` only the closed windows are written: they are results, not state.
        """
        async with self._reducing:
            await self._checkpoint_locked()

    async def _checkpoint_locked(self) -> None:
        self._collect_closed()
        if self.aggregator is not None and self.state_policy.durable:
            for result in self.aggregator.dirty():
                self._windows[(result.aggregation, group_key(result.group), result.window_id)] = result
        changed, self._changed = self._changed, {}
        counted, self._counted = self._counted, {}
        windows, self._windows = self._windows, {}
        self._window_closed = False
        durable = self.state_policy.durable
        if not durable:
            windows = {key: result for key, result in windows.items() if result.closed}
        if not (changed and durable) and not windows:
            return
        batch = WriteBatch(
            consumer=self.processed_key,
            processed_event_ids=[workflow_id for ids in counted.values() for workflow_id in ids] if durable else [],
            bridge_states=[self._state_row(a) for a in changed.values()] if durable else [],
            aggregate_windows=[self._window_row(key, result) for key, result in windows.items()],
        )
        try:
            await self.hold_store(functools.partial(self.store.apply, batch))
        except BaseException:
            # Written with the next checkpoint (newer results of the same windows win), but not what a rebalance
            # meanwhile moved away (``on_partitions``): the new owner writes it.
            self._changed = {n: a for n, a in changed.items() if self._owns(n)} | self._changed
            for namespace, ids in counted.items():
                if self._owns(namespace):
                    self._counted.setdefault(namespace, [])[:0] = ids
                else:
                    for workflow_id in ids:
                        self._seen.pop(workflow_id.int, None)
            self._windows = {k: w for k, w in windows.items() if self._owns(_namespace_of(k[1]))} | self._windows
            raise
        for key, result in windows.items():
            if result.closed:
                self._window_versions.pop(key, None)

    def _collect_closed(self) -> None:
        """Take the aggregation windows that became final, for the next checkpoint."""
        if self.aggregator is None:
            return
        for result in self.aggregator.close_due():
            self._window_closed = True
            self._windows[(result.aggregation, group_key(result.group), result.window_id)] = result

    def _window_row(self, key: tuple[str, str, str], result: WindowResult) -> AggregateWindowRow:
        version = self._window_versions.get(key, 0) + 1
        self._window_versions[key] = version
        # An open window's accumulators are stored only to be restored (``windows`` a state field).
        state = result.state if not result.closed and self.state_policy.keeps("windows") else {}
        return AggregateWindowRow(
            node=self.contract.name,
            aggregation=result.aggregation,
            group=result.group,
            window_id=result.window_id,
            # A running total has no window (its first and last record's times stay in its state).
            window_start=result.window_start if result.window_id else None,
            window_end=result.window_end if result.window_id else None,
            closed=result.closed,
            items=result.items,
            values=result.values,
            state=state,
            version=version,
        )

    def _state_row(self, agg: NamespaceAggregate) -> BridgeStateRow:
        return BridgeStateRow(
            namespace=agg.namespace,
            version=agg.version,
            total_workflows_processed=agg.workflows,
            total_items_aggregated=agg.items,
            total_size_bytes=agg.total_bytes,
            unique_file_hashes=len(agg.hashes),
            current_fsm_state=agg.state,
            aggregation_metadata={
                "by_file_type": dict(agg.by_file_type),
                "size_buckets": dict(agg.size_buckets),
                "windows_closed": agg.windows_closed,
            },
            last_aggregation_timestamp=self.clock.now(),
        )

    # -- windows --
    def _close_windows(self, *, force: bool) -> None:
        assert self.fsm is not None
        now = self.clock.monotonic()
        for agg in self.aggregates.values():
            if not agg.dirty:
                continue
            due = agg.window_items >= self.window_items or now - agg.window_started >= self.window_s
            if force or due:
                agg.context["window_items"] = max(agg.window_items, 1)  # a workflows-only window still flushes
                self.fsm.trigger(agg, "close_window")  # entry action emit_aggregate queues the intent
                self.fsm.trigger(agg, "flushed")
                self._window_closed = True

    def emit_aggregate(self, entity: Entity) -> None:
        """FSM entry action of ``flushing``: queue the namespace's new aggregate as an intent."""
        assert isinstance(entity, NamespaceAggregate)
        entity.windows_closed += 1
        entity.dirty = False
        self._intents.append(
            ModelAggregationIntent(
                namespace=entity.namespace,
                version=entity.version,
                total_workflows_processed=entity.workflows,
                total_items_aggregated=entity.items,
                total_size_bytes=entity.total_bytes,
                unique_file_hashes=len(entity.hashes),
                current_fsm_state="aggregating",
                by_file_type=dict(entity.by_file_type),
                size_buckets=dict(entity.size_buckets),
                windows_closed=entity.windows_closed,
                aggregated_at=self.clock.now(),
            )
        )

    async def flush(self) -> None:
        intents, self._intents = self._intents, []
        try:
            await self.publish_envelopes(
                "STATE_AGGREGATION_COMPLETED",
                [self.envelope("STATE_AGGREGATION_COMPLETED", intent) for intent in intents],
            )
        except OnexError:
            # The bus refused them (the broker gone longer than the producer waits): kept, ahead of newer ones, for
            # the next flush. Some may have gone out already: the database adapter's write of them is version-guarded.
            self._intents[:0] = intents
            raise
        await super().flush()  # checkpoint: per_batch writes here
        if self.state_policy.checkpoint == "per_window":
            self._collect_closed()
            if self._window_closed:
                await self.checkpoint()

    async def _tick(self) -> None:
        while True:
            await self.clock.sleep(self.flush_interval_s)
            self._close_windows(force=False)
            try:
                await self.flush()  # with checkpoint: per_batch, a window the clock closed is written now
            except OnexError as exc:  # the broker or the store is away: the timer must outlive it
                _log.warning("%s: could not flush on the timer, trying again at the next tick: %s", self.node_id, exc)


def _namespace_of(group_key: str) -> str:
    return str(json.loads(group_key).get("namespace"))


def _result(row: AggregateWindowRow) -> WindowResult:
    return WindowResult(
        aggregation=row.aggregation,
        group=row.group,
        window_id=row.window_id,
        window_start=row.window_start,
        window_end=row.window_end,
        closed=row.closed,
        items=row.items,
        values=row.values,
        state=row.state,
    )
