"""Benchmark: rows/s through ``SqliteStore.apply`` vs a raw ``sqlite3`` floor, on the same schema in the same run.

The workload is what stamping ``--items`` files (default 20,000) writes: per item one workflow upsert, one stamp,
two FSM transitions and one step, so 5 rows per item (100,000 rows by default), in batches of ``--batch`` rows
(default 500, i.e. 100 items per ``apply``).

- store: ``SqliteStore.apply`` of ``WriteBatch``es of row dataclasses: encoding (uuids, JSON, timestamps), the
  hop to the store's writer process (``onex._sqlite_process``), one transaction per batch with the store's
  conflict-handling statements.
- raw floor: plain ``sqlite3`` ``executemany`` of plain ``INSERT``s (no conflict clauses) of tuples encoded before
  the clock starts, one transaction per batch, into a database with the same schema (the store's migration) and
  the same pragmas (``onex._sqlite.PRAGMAS``), on the calling thread: what SQLite itself costs with the same
  indexes and durability.
- encode: the store's row encoding alone, over the same batches (no database), to show where the gap goes.

Each side runs ``--repeat`` times (default 5) on a fresh file in a temporary directory, alternating; the best run
counts. Prints both rates and their ratio; writes ``bench/results/store_sqlite.json``.

    .venv/bin/python bench/store_sqlite.py [--items N] [--batch ROWS] [--repeat R]

``run(**options) -> dict`` is the entry point for ``bench/run.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sqlite3
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# The private names give the raw floor the store's schema and pragmas, and time the store's encoder alone.
from onex._sqlite import PRAGMAS, SqliteStore, _encode, _migrations
from onex._sqlite_values import _now
from onex._sqlite_writes import _WRITERS
from onex.store import StampRow, StepRow, TransitionRow, WorkflowRow, WriteBatch

ROWS_PER_ITEM = 5
RESULTS = Path(__file__).resolve().parent / "results" / "store_sqlite.json"


def make_items(count: int) -> list[tuple[WorkflowRow, StampRow, TransitionRow, TransitionRow, StepRow]]:
    """The rows of ``count`` stamped files, as the nodes would hand them to the database adapter."""
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    items = []
    for i in range(count):
        cid, stamp_id = uuid.uuid4(), uuid.uuid4()
        started, done = t0 + timedelta(milliseconds=i), t0 + timedelta(milliseconds=i + 3)
        path, digest = f"src/pkg/module_{i}.py", f"{i:064x}"
        items.append(
            (
                WorkflowRow(
                    correlation_id=cid,
                    workflow_type="stamp_workflow",
                    current_state="completed",
                    state_seq=2,
                    namespace="bench",
                    file_path=path,
                    file_hash=digest,
                    stamp_id=stamp_id,
                    started_at=started,
                    completed_at=done,
                    execution_time_ms=3.0,
                    metadata={"file_type": "python", "size": 1234},
                ),
                StampRow(
                    id=stamp_id,
                    file_hash=digest,
                    file_path=path,
                    file_size=1234,
                    namespace="bench",
                    stamp_type="lightweight",
                    file_type="python",
                    workflow_id=cid,
                    stamp_data={"uid": str(stamp_id), "hash": digest, "ts": done.isoformat()},
                    created_at=done,
                ),
                TransitionRow(uuid.uuid4(), str(cid), "workflow", "pending", "processing", "start", cid, {}, started),
                TransitionRow(uuid.uuid4(), str(cid), "workflow", "processing", "completed", "finish", cid, {}, done),
                StepRow(cid, "stamp_file", 1, "completed", 2.5, {"bytes": 1234}, None, done),
            )
        )
    return items


def make_batches(items: list[Any], batch_rows: int) -> list[WriteBatch]:
    per_batch = max(1, batch_rows // ROWS_PER_ITEM)
    batches = []
    for start in range(0, len(items), per_batch):
        batch = WriteBatch()
        for workflow, stamp, first, second, step in items[start : start + per_batch]:
            batch.workflows.append(workflow)
            batch.stamps.append(stamp)
            batch.transitions += (first, second)
            batch.steps.append(step)
        batches.append(batch)
    return batches


async def run_store(path: Path, batches: list[WriteBatch]) -> float:
    async with SqliteStore(f"sqlite:///{path}") as store:
        await store.upgrade()
        start = time.perf_counter()
        for batch in batches:
            await store.apply(batch)
        elapsed = time.perf_counter() - start
        expected = sum(len(b) for b in batches)
        stored = sum([await store.count(t) for t in ("workflow_executions", "workflow_steps", "metadata_stamps")])
        stored += await store.count("fsm_transitions")
        assert stored == expected, (stored, expected)
    return elapsed


# --- the raw floor -----------------------------------------------------------------------------------------------

_RAW_SQL = {
    "workflow_executions": "INSERT INTO workflow_executions (correlation_id, workflow_type, current_state, state_seq, "
    "namespace, file_path, file_hash, stamp_id, started_at, completed_at, execution_time_ms, error_message, "
    "metadata, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "workflow_steps": "INSERT INTO workflow_steps (workflow_id, step_name, step_order, status, execution_time_ms, "
    "step_data, error_message, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "metadata_stamps": "INSERT INTO metadata_stamps (id, file_hash, file_path, file_size, namespace, stamp_type, "
    "file_type, workflow_id, stamp_data, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "fsm_transitions": "INSERT INTO fsm_transitions (id, entity_id, entity_type, from_state, to_state, "
    "transition_event, correlation_id, transition_data, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
}


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="microseconds")


def _js(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


def raw_tuples(batches: list[WriteBatch]) -> list[dict[str, list[tuple[Any, ...]]]]:
    """The same rows as plain tuples, encoded the way the store stores them (before the clock starts)."""
    now = datetime.now(UTC).isoformat(timespec="microseconds")
    encoded: list[dict[str, list[tuple[Any, ...]]]] = []
    for b in batches:
        encoded.append(
            {
                "workflow_executions": [
                    (str(w.correlation_id), w.workflow_type, w.current_state, w.state_seq, w.namespace, w.file_path,
                     w.file_hash, str(w.stamp_id), _ts(w.started_at), _ts(w.completed_at), w.execution_time_ms,
                     w.error_message, _js(w.metadata), now, now)
                    for w in b.workflows
                ],
                "workflow_steps": [
                    (str(s.workflow_id), s.step_name, s.step_order, s.status, s.execution_time_ms, _js(s.step_data),
                     s.error_message, _ts(s.created_at), now)
                    for s in b.steps
                ],
                "metadata_stamps": [
                    (str(s.id), s.file_hash, s.file_path, s.file_size, s.namespace, s.stamp_type, s.file_type,
                     str(s.workflow_id), _js(s.stamp_data), _ts(s.created_at))
                    for s in b.stamps
                ],
                "fsm_transitions": [
                    (str(t.id), t.entity_id, t.entity_type, t.from_state, t.to_state, t.transition_event,
                     str(t.correlation_id), _js(t.transition_data), _ts(t.created_at))
                    for t in b.transitions
                ],
            }
        )  # fmt: skip
    return encoded


def run_raw(path: Path, encoded: list[dict[str, list[tuple[Any, ...]]]]) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        for pragma in PRAGMAS:
            conn.execute(pragma)
        for migration in _migrations():
            conn.executescript(migration.sql)
        start = time.perf_counter()
        for tables in encoded:
            conn.execute("BEGIN IMMEDIATE")
            for table, rows in tables.items():
                conn.executemany(_RAW_SQL[table], rows)
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
    finally:
        conn.close()
    return elapsed


# --- driver ------------------------------------------------------------------------------------------------------


def run_encode(batches: list[WriteBatch]) -> float:
    """Seconds the store spends turning the batches' rows into parameter tuples (its own, private encoder)."""
    now = _now()
    start = time.perf_counter()
    for batch in batches:
        for writer in _WRITERS:
            rows = getattr(batch, writer.field)
            if rows:
                _encode(writer, rows, now)
    return time.perf_counter() - start


def run(*, items: int = 20_000, batch: int = 500, repeat: int = 5) -> dict[str, Any]:
    """Run the benchmark; the figures as a dict (also written to ``bench/results/store_sqlite.json``)."""
    batches = make_batches(make_items(items), batch)
    encoded = raw_tuples(batches)
    rows = sum(len(b) for b in batches)
    store_times: list[float] = []
    raw_times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="onex-bench-") as tmp:
        for attempt in range(repeat):
            raw_times.append(run_raw(Path(tmp, f"raw-{attempt}.db"), encoded))
            store_times.append(asyncio.run(run_store(Path(tmp, f"store-{attempt}.db"), batches)))
    encode_time = min(run_encode(batches) for _ in range(repeat))
    store_rate, raw_rate = rows / min(store_times), rows / min(raw_times)
    result: dict[str, Any] = {
        "benchmark": "store_sqlite",
        "rows": rows,
        "items": items,
        "batch_rows": batch,
        "batches": len(batches),
        "repeat": repeat,
        "store_rows_per_s": round(store_rate),
        "raw_rows_per_s": round(raw_rate),
        "ratio_store_to_raw": round(store_rate / raw_rate, 3),
        "encode_us_per_row": round(encode_time / rows * 1e6, 2),
        "store_seconds": [round(t, 4) for t in store_times],
        "raw_seconds": [round(t, 4) for t in raw_times],
        "sqlite_version": sqlite3.sqlite_version,
        "python": sys.version.split()[0],
        "machine": platform.platform(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=20_000, help="stamped files (5 rows each)")
    parser.add_argument("--batch", type=int, default=500, help="rows per apply / transaction")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each side; the best counts")
    args = parser.parse_args()
    r = run(items=args.items, batch=args.batch, repeat=args.repeat)
    print(f"{r['rows']:,} rows in batches of {r['batch_rows']} (SQLite {r['sqlite_version']}, best of {r['repeat']})")
    print(f"  SqliteStore.apply    {r['store_rows_per_s']:>10,} rows/s")
    print(f"  raw sqlite3 floor    {r['raw_rows_per_s']:>10,} rows/s")
    print(f"  ratio store / raw    {r['ratio_store_to_raw']:>10.2f}")
    print(f"  of which encoding    {r['encode_us_per_row']:>10.2f} us/row")
    print(f"  -> {RESULTS}")


if __name__ == "__main__":
    main()
