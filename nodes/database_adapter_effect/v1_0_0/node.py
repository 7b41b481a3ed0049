"""The database adapter: persists events to the store, one transaction per consumed batch.

| event                          | rows                                                        |
|--------------------------------|-------------------------------------------------------------|
| WORKFLOW_STARTED               | workflow_executions (processing)                            |
| WORKFLOW_COMPLETED / _FAILED   | workflow_executions (final state) + workflow_steps          |
| STAMP_CREATED                  | metadata_stamps (dry runs are not persisted)                |
| STATE_TRANSITION               | fsm_transitions                                             |
| STATE_AGGREGATION_COMPLETED    | bridge_states (the reducer's intent, version-guarded)       |

Group commit: the adapter's subscriptions (one per topic and partition) hand their rows to one writer task, which
merges everything pending into a single transaction; each handler returns, and its messages are acknowledged, only
after the transaction holding its rows committed. Fewer, larger transactions is what keeps a single SQLite writer
(or a PostgreSQL round trip) from being the bottleneck.

Idempotency: every row has a natural key (see ``onex.store``), so a redelivered event rewrites nothing. On top of
that, event ids already applied are skipped: recent ids in memory (bounded), and the ids of the reducer's intents
durably in ``processed_events`` (intents are the one kind whose replay after a restart must be recognised without
re-reading the row). With ``config.log_events`` every consumed event is also written to ``event_logs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from onex.envelope import ModelStateTransition
from onex.nodes import EffectNode, Event
from onex.store import BridgeStateRow, EventLogRow, StampRow, StepRow, TransitionRow, WorkflowRow, WriteBatch

from nodes.orchestrator.v1_0_0.models import ModelWorkflowFinished, ModelWorkflowStarted
from nodes.reducer.v1_0_0.models import ModelAggregationIntent
from nodes.stamping_effect.v1_0_0.models import ModelStampCreated

WORKFLOW_TYPE = "stamp_workflow"
MAX_COMMIT_ROWS = 5_000


class NodeDatabaseAdapterEffect(EffectNode):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log_events = str(self.contract.config.get("log_events", "false")).lower() in ("1", "true", "yes")
        self._recent: OrderedDict[uuid.UUID, None] = OrderedDict()
        self._recent_max = int(self.contract.config.get("dedupe_window", 200_000))
        self._pending: list[tuple[WriteBatch, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name=f"group-commit:{self.node_id}")

    async def on_stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, rows = [], 0
            while self._pending and rows < MAX_COMMIT_ROWS:  # a lost connection re-sends at most this much
                batch, done = self._pending.pop(0)
                pending.append((batch, done))
                rows += len(batch)
            if self._pending:
                self._wake.set()  # the rest goes in the next transaction
            if not pending:
                continue
            merged = merge([batch for batch, _ in pending])
            try:
                await self.breaker.call(functools.partial(self.store.apply, merged))
            except Exception as exc:  # every contributor retries on its own (the bus's retry and dead letter)
                for _, done in pending:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in pending:
                    if not done.done():
                        done.set_result(None)

    async def _commit(self, batch: WriteBatch) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((batch, done))
        self._wake.set()
        await done

    async def persist(self, events: Sequence[Event]) -> None:
        fresh = [e for e in events if e.envelope.event_id not in self._recent]
        intent_ids = [e.envelope.event_id for e in fresh if isinstance(e.payload, ModelAggregationIntent)]
        if intent_ids:
            todo = await self.store.unprocessed(self.contract.name, intent_ids)
            fresh = [
                e for e in fresh if not isinstance(e.payload, ModelAggregationIntent) or e.envelope.event_id in todo
            ]
        if not fresh:
            return
        await self._commit(self.to_batch(fresh))
        for e in fresh:
            self._recent[e.envelope.event_id] = None
        while len(self._recent) > self._recent_max:
            self._recent.popitem(last=False)

    def to_batch(self, events: Sequence[Event]) -> WriteBatch:
        batch = WriteBatch(consumer=self.contract.name)
        workflows: dict[uuid.UUID, WorkflowRow] = {}

        def keep(row: WorkflowRow) -> None:
            # Started and finished often arrive in the same batch: write only the furthest state of each workflow.
            # Keep the started row's start time if the finished one lacks it.
            prior = workflows.get(row.correlation_id)
            if prior is None or row.state_seq >= prior.state_seq:
                workflows[row.correlation_id] = row

        for envelope, payload in events:
            if isinstance(payload, ModelStampCreated):
                if not payload.dry_run:
                    batch.stamps.append(
                        StampRow(
                            id=payload.stamp_id,
                            file_hash=payload.file_hash,
                            file_path=payload.file_path,
                            file_size=payload.file_size,
                            namespace=payload.namespace,
                            stamp_type=payload.stamp_type,
                            file_type=payload.file_type,
                            workflow_id=payload.workflow_id,
                            stamp_data=payload.stamp,
                            created_at=envelope.event_timestamp,
                        )
                    )
            elif isinstance(payload, ModelStateTransition):
                batch.transitions.append(
                    TransitionRow(
                        id=payload.transition_id,
                        entity_id=payload.entity_id,
                        entity_type=payload.entity_type,
                        from_state=payload.from_state,
                        to_state=payload.to_state,
                        transition_event=payload.trigger,
                        correlation_id=payload.correlation_id,
                        transition_data=payload.data,
                        created_at=payload.at,
                    )
                )
            elif isinstance(payload, ModelWorkflowStarted):
                keep(
                    WorkflowRow(
                        correlation_id=payload.workflow_id,
                        workflow_type=WORKFLOW_TYPE,
                        current_state="processing",
                        state_seq=1,
                        namespace=payload.namespace,
                        file_path=payload.file_path,
                        started_at=payload.started_at,
                    )
                )
            elif isinstance(payload, ModelWorkflowFinished):
                keep(
                    WorkflowRow(
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
                batch.steps.extend(
                    StepRow(
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
            if self.log_events:
                batch.event_logs.append(
                    EventLogRow(
                        event_id=envelope.event_id,
                        event_type=envelope.event_type,
                        topic=self._consumed[envelope.event_type][0],
                        status="processed",
                        correlation_id=envelope.correlation_id,
                        timestamp=envelope.event_timestamp,
                        payload=envelope.payload,
                        metadata=envelope.metadata,
                    )
                )
        batch.workflows.extend(workflows.values())
        return batch


def merge(batches: Sequence[WriteBatch]) -> WriteBatch:
    """One batch holding the rows of all ``batches`` (conflict rules make their order irrelevant)."""
    if len(batches) == 1:
        return batches[0]
    merged = WriteBatch(consumer=batches[0].consumer)
    for b in batches:
        merged.processed_event_ids.extend(b.processed_event_ids)
        merged.workflows.extend(b.workflows)
        merged.steps.extend(b.steps)
        merged.stamps.extend(b.stamps)
        merged.transitions.extend(b.transitions)
        merged.bridge_states.extend(b.bridge_states)
        merged.registrations.extend(b.registrations)
        merged.heartbeats.extend(b.heartbeats)
        merged.event_logs.extend(b.event_logs)
    return merged
