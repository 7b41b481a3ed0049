"""Benchmark: rows/s through ``PostgresStore.apply`` vs a raw floor of batched asyncpg writes, same rows, same run.

20,000 stamped files, each one workflow + one stamp + two FSM transitions + one step = 100,000 rows, written in
batches of 500 rows (100 files) by one writer, one transaction per batch:

- ``store``: ``PostgresStore.apply`` as shipped (``bulk_method=json``: one ``INSERT ... SELECT FROM
  jsonb_array_elements($1) ON CONFLICT`` per table and batch, the rows in one JSON document, every row by its natural
  key, processed-event ids recorded in the same transaction);
- ``store, bulk_method=unnest``: the same statement reading one array per column (``unnest($1::uuid[], ...)``);
- ``store, bulk_method=copy``: COPY into a temporary staging table, then ``INSERT ... SELECT ... ON CONFLICT``;
- ``store, bulk_method=executemany``: a prepared ``INSERT ... ON CONFLICT`` per row, pipelined by asyncpg;
- ``floor (COPY)``: ``copy_records_to_table`` of the same rows straight into the tables of an identical schema,
  no conflict handling, nothing else: what the server and asyncpg cost at the least;
- ``floor (executemany)``: plain ``INSERT`` via ``executemany`` into the same schema.

Each run of a variant gets its own fresh schema (created by the store's migrations), dropped afterwards. Rows are
built before the clock starts. The variants take turns, ``--repeat`` rounds (default 3), and each one's best run
counts. Prints rows/s, the CPU this process spent a row (the client's share: on a node's event loop, what the
nodes cannot use), and the store/floor ratios; writes ``bench/results/store_postgres.json``. ``run(dsn=None)``
returns the same figures as a dict.

    .venv/bin/python bench/store_postgres.py [--dsn postgresql://postgres@127.0.0.1:5432/test] [--repeat N]

The DSN defaults to ``ONEX_BENCH_POSTGRES``, then ``ONEX_TEST_POSTGRES``, then the local test server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from onex._postgres import PostgresStore
from onex.store import StampRow, StepRow, TransitionRow, WorkflowRow, WriteBatch

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
RESULTS = Path(__file__).resolve().parent / "results" / "store_postgres.json"
ITEMS = 20_000
ROWS_PER_ITEM = 5
BATCH_ROWS = 500


@dataclass
class Batch:
    """One batch, both as a ``WriteBatch`` and as plain tuples per table for the floor."""

    write: WriteBatch
    tables: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = field(default_factory=dict)


def build(items: int, seed: uuid.UUID) -> list[Batch]:
    per_batch = BATCH_ROWS // ROWS_PER_ITEM
    at = datetime(2025, 1, 1, tzinfo=UTC)
    batches: list[Batch] = []
    for first in range(0, items, per_batch):
        write = WriteBatch(consumer="database_adapter_effect")
        for i in range(first, min(first + per_batch, items)):
            cid = uuid.uuid5(seed, f"workflow-{i}")
            file_hash = f"{i:064x}"
            started = at + timedelta(milliseconds=i)
            write.workflows.append(
                WorkflowRow(
                    cid,
                    "stamp_workflow",
                    "completed",
                    3,
                    namespace=f"ns{i % 8}",
                    file_path=f"/repo/src/{i}.py",
                    file_hash=file_hash,
                    stamp_id=uuid.uuid5(seed, f"stamp-{i}"),
                    started_at=started,
                    completed_at=started + timedelta(milliseconds=3),
                    execution_time_ms=3.0,
                    metadata={"size": i, "rich": False},
                )
            )
            write.stamps.append(
                StampRow(
                    uuid.uuid5(seed, f"stamp-{i}"),
                    file_hash,
                    f"/repo/src/{i}.py",
                    1000 + i,
                    f"ns{i % 8}",
                    "lightweight",
                    "python",
                    workflow_id=cid,
                    stamp_data={"uid": str(cid), "hash": file_hash, "ts": started.isoformat()},
                    created_at=started,
                )
            )
            write.transitions.extend(
                TransitionRow(
                    uuid.uuid5(seed, f"t{i}-{n}"),
                    str(cid),
                    "workflow",
                    a,
                    b,
                    trigger,
                    correlation_id=cid,
                    transition_data={"n": n},
                    created_at=started + timedelta(microseconds=n),
                )
                for n, (a, b, trigger) in enumerate(
                    [("pending", "processing", "start"), ("processing", "completed", "finish")]
                )
            )
            write.steps.append(
                StepRow(
                    cid,
                    "stamp_file",
                    1,
                    "completed",
                    execution_time_ms=2.5,
                    step_data={"bytes": 1000 + i},
                    created_at=started,
                )
            )
            write.processed_event_ids.append(uuid.uuid5(seed, f"event-{i}"))
        batches.append(Batch(write, _floor_tables(write)))
    return batches


def _floor_tables(w: WriteBatch) -> dict[str, tuple[list[str], list[tuple[Any, ...]]]]:
    """The batch as rows of the real tables, every NOT NULL column filled the way the store fills it."""
    now = datetime.now(UTC)
    return {
        "workflow_executions": (
            [
                "correlation_id",
                "workflow_type",
                "current_state",
                "state_seq",
                "namespace",
                "file_path",
                "file_hash",
                "stamp_id",
                "started_at",
                "completed_at",
                "execution_time_ms",
                "error_message",
                "metadata",
            ],
            [
                (
                    r.correlation_id,
                    r.workflow_type,
                    r.current_state,
                    r.state_seq,
                    r.namespace,
                    r.file_path,
                    r.file_hash,
                    r.stamp_id,
                    r.started_at,
                    r.completed_at,
                    r.execution_time_ms,
                    r.error_message,
                    r.metadata,
                )
                for r in w.workflows
            ],
        ),
        "workflow_steps": (
            ["workflow_id", "step_name", "step_order", "status", "execution_time_ms", "step_data", "created_at"],
            [
                (
                    r.workflow_id,
                    r.step_name,
                    r.step_order,
                    r.status,
                    r.execution_time_ms,
                    r.step_data,
                    r.created_at or now,
                )
                for r in w.steps
            ],
        ),
        "metadata_stamps": (
            [
                "id",
                "file_hash",
                "file_path",
                "file_size",
                "namespace",
                "stamp_type",
                "file_type",
                "workflow_id",
                "stamp_data",
                "created_at",
            ],
            [
                (
                    r.id,
                    r.file_hash,
                    r.file_path,
                    r.file_size,
                    r.namespace,
                    r.stamp_type,
                    r.file_type,
                    r.workflow_id,
                    r.stamp_data,
                    r.created_at or now,
                )
                for r in w.stamps
            ],
        ),
        "fsm_transitions": (
            [
                "id",
                "entity_id",
                "entity_type",
                "from_state",
                "to_state",
                "transition_event",
                "correlation_id",
                "transition_data",
                "created_at",
            ],
            [
                (
                    r.id,
                    r.entity_id,
                    r.entity_type,
                    r.from_state,
                    r.to_state,
                    r.transition_event,
                    r.correlation_id,
                    r.transition_data,
                    r.created_at or now,
                )
                for r in w.transitions
            ],
        ),
        "processed_events": (["consumer", "event_id"], [(w.consumer, e) for e in w.processed_event_ids]),
    }


def _with_query(dsn: str, **params: object) -> str:
    sep = "&" if "?" in dsn else "?"
    return dsn + sep + "&".join(f"{k}={v}" for k, v in params.items())


async def _drop(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


async def time_store(dsn: str, batches: list[Batch], **params: object) -> tuple[float, float]:
    schema = f"onex_bench_{uuid.uuid4().hex[:8]}"
    try:
        async with PostgresStore(_with_query(dsn, schema=schema, **params)) as store:
            await store.upgrade()
            start, cpu = time.perf_counter(), time.process_time()
            for batch in batches:
                await store.apply(batch.write)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
            assert await store.count("workflow_executions") == ITEMS
            assert await store.count("fsm_transitions") == 2 * ITEMS
        return elapsed, cpu
    finally:
        await _drop(dsn, schema)


async def time_floor(dsn: str, batches: list[Batch], method: str) -> tuple[float, float]:
    schema = f"onex_bench_{uuid.uuid4().hex[:8]}"
    try:
        async with PostgresStore(_with_query(dsn, schema=schema)) as store:
            await store.upgrade()  # the identical schema; the floor then writes with a bare connection
        conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
        try:
            await conn.set_type_codec(
                "jsonb",
                encoder=lambda v: b"\x01" + json.dumps(v, separators=(",", ":")).encode(),
                decoder=lambda b: json.loads(b[1:]),
                schema="pg_catalog",
                format="binary",
            )
            inserts = {
                table: f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
                f"({', '.join(f'${n}' for n in range(1, len(cols) + 1))})"
                for table, (cols, _) in batches[0].tables.items()
            }
            start, cpu = time.perf_counter(), time.process_time()
            for batch in batches:
                async with conn.transaction():
                    for table, (columns, rows) in batch.tables.items():
                        if method == "copy":
                            await conn.copy_records_to_table(table, records=rows, columns=columns, schema_name=schema)
                        else:
                            await conn.executemany(inserts[table], rows)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
            assert await conn.fetchval("SELECT count(*) FROM fsm_transitions") == 2 * ITEMS
        finally:
            await conn.close()
        return elapsed, cpu
    finally:
        await _drop(dsn, schema)


async def _run(dsn: str, repeat: int) -> dict[str, Any]:
    batches = build(ITEMS, uuid.uuid4())
    rows = sum(len(b.write) for b in batches)
    conn = await asyncpg.connect(dsn)
    try:
        server = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    variants: dict[str, Callable[[], Awaitable[tuple[float, float]]]] = {
        "store": lambda: time_store(dsn, batches),
        "store_unnest": lambda: time_store(dsn, batches, bulk_method="unnest"),
        "store_copy_staging": lambda: time_store(dsn, batches, bulk_method="copy"),
        "store_executemany": lambda: time_store(dsn, batches, bulk_method="executemany"),
        "floor_copy": lambda: time_floor(dsn, batches, "copy"),
        "floor_executemany": lambda: time_floor(dsn, batches, "executemany"),
    }
    # Best of ``repeat``, the variants taking turns: the minimum is the run least disturbed by the machine's other
    # work, and taking turns spreads any drift in that work over all of them.
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, variant in variants.items():
            times[name].append(await variant())
    seconds = {name: min(t for t, _ in ts) for name, ts in times.items()}
    cpu = {name: min(c for _, c in ts) for name, ts in times.items()}
    rates = {name: rows / s for name, s in seconds.items()}
    floor = max(rates["floor_copy"], rates["floor_executemany"])
    return {
        "benchmark": "store_postgres",
        "rows": rows,
        "items": ITEMS,
        "batch_rows": BATCH_ROWS,
        "batches": len(batches),
        "repeat": repeat,
        "rows_per_s": {name: round(rate) for name, rate in rates.items()},
        "seconds": {name: round(s, 3) for name, s in seconds.items()},
        "client_cpu_us_per_row": {name: round(c / rows * 1e6, 2) for name, c in cpu.items()},
        "ratio_store_to_floor": round(rates["store"] / floor, 3),
        "ratio_store_to_floor_copy": round(rates["store"] / rates["floor_copy"], 3),
        "ratio_store_to_floor_executemany": round(rates["store"] / rates["floor_executemany"], 3),
        "ratio_store_to_unnest": round(rates["store"] / rates["store_unnest"], 3),
        "ratio_store_to_copy_staging": round(rates["store"] / rates["store_copy_staging"], 3),
        "ratio_store_to_executemany": round(rates["store"] / rates["store_executemany"], 3),
        "server_version": server,
        "asyncpg_version": asyncpg.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def run(dsn: str | None = None, repeat: int = 3) -> dict[str, Any]:
    """Run the benchmark against ``dsn``; print the figures, write them to ``bench/results/store_postgres.json``."""
    dsn = dsn or os.environ.get("ONEX_BENCH_POSTGRES") or os.environ.get("ONEX_TEST_POSTGRES") or DEFAULT_DSN
    result = asyncio.run(_run(dsn, repeat))
    rates, cpu = result["rows_per_s"], result["client_cpu_us_per_row"]
    print(f"rows:                       {result['rows']:,} in batches of {result['batch_rows']} rows")
    print("                                         rows/s   client CPU us/row")
    for name, label in (
        ("store", "PostgresStore.apply (json)"),
        ("store_unnest", "  bulk_method=unnest"),
        ("store_copy_staging", "  bulk_method=copy (staging)"),
        ("store_executemany", "  bulk_method=executemany"),
        ("floor_copy", "floor: COPY into the tables"),
        ("floor_executemany", "floor: plain INSERT, executemany"),
    ):
        print(f"{label + ':':<34} {rates[name]:10,} {cpu[name]:19.2f}")
    print(f"ratio store / best floor:          {result['ratio_store_to_floor']:10.2f}")
    print(f"ratio store / executemany floor:   {result['ratio_store_to_floor_executemany']:10.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  -> {RESULTS}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    run(args.dsn, args.repeat)
