"""The reducer: streaming aggregation of stamps per namespace, in tumbling windows.

Pure in the ONEX sense: it writes nothing itself. When a namespace's window closes (``size_items`` stamps or ``size_ms``
elapsed, from the aggregation subcontract) it publishes the namespace's new running aggregate as a
STATE_AGGREGATION_COMPLETED intent with a version one higher than the last; the database adapter carries the intent out,
and the version guard there makes replays harmless.

Each namespace is an entity on the contract's aggregation_lifecycle FSM (idle -> aggregating -> flushing -> idle). Every
input (STAMP_CREATED, WORKFLOW_COMPLETED / _FAILED) is keyed by namespace and taken by one subscription, so with several
reducers in the group one namespace is always aggregated in one place (on Kafka: the range assignment gives partition i
of every input topic to the same member). The first time a reducer sees a namespace it loads the running totals from the
store (state_management: storage store), so a restarted reducer, or one that took the namespace over from another,
continues the versions instead of starting over; the distinct hashes are read back from ``metadata_stamps``. While
partitions move between reducers (a replica joins or leaves), an aggregate may miss the windows that were in flight at
the handover; stamps and workflows themselves are always stored exactly. Totals are cumulative: re-stamping an unchanged
file counts as one more item aggregated, while ``unique_file_hashes`` counts distinct content. Each workflow counts
once, however often its events arrive: a redelivered event has the same event id, but a stamp command handled twice
(redelivered after a crash, or retried after a step timeout) yields a second STAMP_CREATED with a new event id for the
same workflow. So stamps and outcomes are recognised by workflow id, within a bounded window of recent ones
(``config.dedupe_window``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from onex.contracts import AggregationFunction
from onex.exceptions import StoreUnavailable
from onex.fsm import Entity
from onex.nodes import Event, Lifecycle, ReducerNode
from onex.store import BridgeStateRow

from nodes.orchestrator.v1_0_0.models import ModelWorkflowFinished
from nodes.reducer.v1_0_0.models import ModelAggregationIntent
from nodes.stamping_effect.v1_0_0.models import ModelStampCreated


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

    async def on_start(self) -> None:
        self._timer = asyncio.create_task(self._tick(), name=f"windows:{self.node_id}")

    async def _load(self, namespace: str) -> None:
        """Continue the namespace's aggregate from the store, the first time this reducer sees the namespace.

        On first sight rather than at start: with several reducers, a namespace this one takes over (a replica
        joined or left) must start from what its previous owner stored, not from what was stored when this one
        started. Everything is read before the aggregate exists, so a handler of another partition that loads the
        same namespace meanwhile (or counts into it) is not overwritten.
        """
        delay = 0.1
        while True:
            try:
                row, hashes = await self._read_state(namespace)
                break
            except StoreUnavailable:
                # An unreachable store is no reason to dead-letter the events: hold them (unacknowledged) and try
                # again, as the database adapter holds its writes; only while draining let the bus have them back.
                if self.lifecycle is not Lifecycle.RUNNING:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
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
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer

    def _aggregate(self, namespace: str) -> NamespaceAggregate:
        agg = self.aggregates.get(namespace)
        if agg is None:
            assert self.fsm is not None
            agg = NamespaceAggregate(entity_id=f"namespace:{namespace}", namespace=namespace)
            self.fsm.attach(agg)
            self.aggregates[namespace] = agg
        return agg

    def _first_time(self, key: int) -> bool:
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > self.dedupe_window:
            self._seen.popitem(last=False)
        return True

    def _touch(self, agg: NamespaceAggregate, items: int) -> None:
        assert self.fsm is not None
        if agg.state == "idle":
            agg.window_started = time.monotonic()
            agg.window_items = 0
        agg.window_items += items
        agg.context["window_items"] = agg.window_items
        agg.dirty = True
        if agg.state == "idle":
            self.fsm.trigger(agg, "item", count=items)

    # -- handlers --
    async def handle_events(self, events: Sequence[Event]) -> None:
        """STAMP_CREATED and WORKFLOW_COMPLETED / _FAILED: one handler, so one subscription takes all three."""
        for namespace in {getattr(payload, "namespace", None) for _, payload in events} - self.aggregates.keys():
            if namespace is not None:
                await self._load(namespace)
        touched: Counter[str] = Counter()
        for _, payload in events:
            if isinstance(payload, ModelStampCreated):
                if payload.dry_run or not self._first_time(payload.workflow_id.int << 1):
                    continue
                agg = self.aggregates[payload.namespace]
                agg.items += 1
                agg.total_bytes += payload.file_size
                agg.hashes.add(payload.file_hash)
                agg.by_file_type[payload.file_type] += 1
                agg.size_buckets[bucket_label(payload.file_size, self.bucket_bounds)] += 1
                touched[payload.namespace] += 1
            elif isinstance(payload, ModelWorkflowFinished) and self._first_time(payload.workflow_id.int << 1 | 1):
                self.aggregates[payload.namespace].workflows += 1
                touched[payload.namespace] += 0  # a workflows-only window still closes
        for namespace, items in touched.items():
            self._touch(self.aggregates[namespace], items)
        self._close_windows(force=False)

    # -- windows --
    def _close_windows(self, *, force: bool) -> None:
        assert self.fsm is not None
        now = time.monotonic()
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
        entity.version += 1
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
                aggregated_at=datetime.now(UTC),
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
            await asyncio.sleep(self.flush_interval_s)
            self._close_windows(force=False)
            await self.flush()
