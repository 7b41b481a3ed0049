"""The reducer: streaming aggregation of stamps per namespace, in tumbling windows.

Its input is the workflow outcomes (WORKFLOW_COMPLETED / _FAILED), keyed by namespace and taken by one subscription,
so with several reducers in the group one namespace is always aggregated in one place (on Kafka: the range assignment
gives partition i of both topics to the same member). An outcome carries what is aggregated of its stamp (size, type,
hash, dry run), so the reducer needs nothing keyed otherwise.

State (state_management: storage store). At the end of every handled batch the new totals of each namespace it
touched are written to ``bridge_states`` with a version one higher, before the batch is acknowledged: a reducer that
is killed loses nothing it acknowledged, and the reducer that gets a namespace next (after a restart, or because a
replica joined or left) loads exactly those totals the first time it sees the namespace; the distinct hashes are read
back from ``metadata_stamps``. A namespace whose partition moves away is forgotten, so it is loaded afresh if it
comes back.

Windows. When a namespace's window closes (``size_items`` stamps or ``size_ms`` elapsed, from the aggregation
subcontract) the reducer publishes the namespace's running aggregate as a STATE_AGGREGATION_COMPLETED intent, for
whoever consumes it; the database adapter carries it out, and the version guard makes it a no-op where the checkpoint
already wrote that version. Each namespace is an entity on the contract's aggregation_lifecycle FSM (idle ->
aggregating -> flushing -> idle).

Totals are cumulative: re-stamping an unchanged file counts as one more item aggregated, while ``unique_file_hashes``
counts distinct content. Each workflow counts once, however often its outcome arrives (delivered again, published
again after a crash, or found lost in the store): the workflows a checkpoint counts are recorded with it in
``processed_events`` (consumer ``<name>.workflows``), and every batch is checked against them; a bounded window of
recent ones (``config.dedupe_window``) spares that read for redeliveries in one process. Finished workflows whose
outcome was lost after the database adapter stored it are found there too (``_reconcile``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from onex.contracts import AggregationFunction
from onex.exceptions import OnexError
from onex.fsm import Entity
from onex.nodes import Event, ReducerNode
from onex.store import BridgeStateRow, WriteBatch

from nodes.models import ModelAggregationIntent, ModelWorkflowFinished

_log = logging.getLogger(__name__)
WORKFLOW_TYPE = "stamp_workflow"  # the orchestrator's workflows (its FSM's name)


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


def bucket_label(size: int, bounds: Sequence[int]) -> str:
    for bound in bounds:
        if size <= bound:
            return f"<={bound}"
    return f">{bounds[-1]}" if bounds else "all"


class NodeReducer(ReducerNode):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        aggregation = self.contract.subcontracts.aggregation
        window = aggregation.window if aggregation else None
        self.window_items = (window.size_items if window else None) or 5000
        self.window_s = ((window.size_ms if window else None) or 500) / 1000
        histogram = next((f for f in (aggregation.functions if aggregation else ()) if f.function == "histogram"), None)
        self.bucket_bounds: tuple[int, ...] = histogram.buckets if isinstance(histogram, AggregationFunction) else ()
        self.flush_interval_s = float(self.contract.config.get("flush_interval_ms", 500)) / 1000
        self.dedupe_window = int(self.contract.config.get("dedupe_window", 200_000))
        self.aggregates: dict[str, NamespaceAggregate] = {}
        # Keyed by integers, which the garbage collector does not track (see the orchestrator's ``_finished``).
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._intents: list[ModelAggregationIntent] = []
        self._timer: asyncio.Task[None] | None = None
        # Under this consumer name processed_events records the workflows the stored aggregates count.
        self.processed_key = f"{self.contract.name}.workflows"
        self.reconcile_after_s = float(self.contract.config.get("reconcile_after_ms", 10_000)) / 1000
        self._owned: frozenset[tuple[str, int]] = frozenset()
        self._reconciler: asyncio.Task[None] | None = None
        self._reducing = asyncio.Lock()  # handled batches and reconciliation count workflows one at a time

    async def on_start(self) -> None:
        self._timer = asyncio.create_task(self._tick(), name=f"windows:{self.node_id}")

    async def _load(self, namespace: str) -> None:
        """Continue the namespace's aggregate from the store, the first time this reducer sees the namespace.

        On first sight rather than at start: with several reducers, a namespace this one takes over (a replica
        joined or left) must start from what its previous owner stored, not from what was stored when this one
        started. Everything is read before the aggregate exists, so a handler of another partition that loads the
        same namespace meanwhile (or counts into it) is not overwritten.
        """
        row, hashes = await self.hold_store(functools.partial(self._read_state, namespace))
        if namespace in self.aggregates:
            return
        agg = self._aggregate(namespace)
        if row is not None:
            agg.version = row.version
            agg.workflows = row.total_workflows_processed
            agg.items = row.total_items_aggregated
            agg.total_bytes = row.total_size_bytes
            agg.hashes = hashes
            agg.by_file_type.update(row.aggregation_metadata.get("by_file_type", {}))
            agg.size_buckets.update(row.aggregation_metadata.get("size_buckets", {}))

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
        if self.bus.retains_messages and self.settings.checkpoints:
            if self._reconciler is not None:
                self._reconciler.cancel()
            self._reconciler = asyncio.create_task(self._reconcile_later(), name=f"reconcile:{self.node_id}")

    async def _reconcile_later(self) -> None:
        await self.clock.sleep(self.reconcile_after_s)
        try:
            await self._reconcile()
        except OnexError as exc:  # the store is away: the next assignment looks again
            _log.warning("%s: could not look for finished workflows left out of the aggregates: %s", self.node_id, exc)

    async def _read_state(self, namespace: str) -> tuple[BridgeStateRow | None, set[str]]:
        row = await self.store.get_bridge_state(namespace)
        hashes: set[str] = set()
        if row is not None:
            offset, page = 0, 10_000
            while stamps := await self.store.list_stamps(namespace, limit=page, offset=offset):
                hashes.update(st.file_hash for st in stamps)
                offset += page
        return row, hashes

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

    def _remember(self, key: int) -> None:
        self._seen[key] = None
        if len(self._seen) > self.dedupe_window:
            self._seen.popitem(last=False)

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
                )
            )
        await self._reduce(outcomes)

    async def announce(self) -> None:
        await super().announce()
        if not self.bus.retains_messages and self.settings.checkpoints:
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
            outcomes.append(
                Outcome(
                    row.correlation_id,
                    row.namespace,
                    row.current_state == "completed" and stamp is not None,
                    stamp.file_hash if stamp else None,
                    stamp.file_size if stamp else 0,
                    stamp.file_type if stamp else "unknown",
                )
            )
        _log.info("%s: aggregating %d finished workflow(s) no aggregate counted", self.node_id, len(outcomes))
        await self._reduce(outcomes)
        await self.flush()

    async def _reduce(self, outcomes: Sequence[Outcome]) -> None:
        async with self._reducing:
            await self._reduce_locked(outcomes)

    async def _reduce_locked(self, outcomes: Sequence[Outcome]) -> None:
        fresh: dict[uuid.UUID, Outcome] = {}
        for outcome in outcomes:
            if outcome.workflow_id.int not in self._seen:
                fresh.setdefault(outcome.workflow_id, outcome)
        if fresh and self.settings.checkpoints:
            # Counted before, by this reducer or another (a redelivered outcome, a replica that took over): the
            # workflows an aggregate counts are recorded with its checkpoint.
            todo = await self.hold_store(functools.partial(self.store.unprocessed, self.processed_key, list(fresh)))
            fresh = {cid: o for cid, o in fresh.items() if cid in todo}
        for namespace in {o.namespace for o in fresh.values()} - self.aggregates.keys():
            await self._load(namespace)
        touched: Counter[str] = Counter()
        for outcome in fresh.values():
            self._remember(outcome.workflow_id.int)
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
        changed = [self.aggregates[namespace] for namespace in touched]
        for agg in changed:
            agg.version += 1  # this batch's checkpoint; an intent published now carries it
        for namespace, items in touched.items():
            self._touch(self.aggregates[namespace], items)
        self._close_windows(force=False)
        await self._checkpoint(changed, list(fresh))

    async def _checkpoint(self, aggregates: Sequence[NamespaceAggregate], workflows: list[uuid.UUID]) -> None:
        """Write the new totals of the namespaces a batch touched, before its messages are acknowledged.

        The reducer's state lives in the store (its state_management subcontract: ``storage: store``), one version
        per handled batch: a reducer that is killed loses nothing it acknowledged, and whoever takes a namespace
        over continues from exactly what was acknowledged. Windows decide when an aggregate is published as an
        intent; the checkpoint decides what is durable.
        """
        if not aggregates or not self.settings.checkpoints:
            return
        batch = WriteBatch(
            consumer=self.processed_key,
            processed_event_ids=workflows,
            bridge_states=[self._state_row(a) for a in aggregates],
        )
        await self.hold_store(functools.partial(self.store.apply, batch))

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
        await self.publish_envelopes(
            "STATE_AGGREGATION_COMPLETED", [self.envelope("STATE_AGGREGATION_COMPLETED", intent) for intent in intents]
        )
        await super().flush()

    async def _tick(self) -> None:
        while True:
            await self.clock.sleep(self.flush_interval_s)
            self._close_windows(force=False)
            await self.flush()
