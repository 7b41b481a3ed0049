"""Benchmark: end-to-end stamping on the embedded default vs a raw floor, in the same run.

- onex: ``--items`` (default 100,000) content items of ~1 KiB submitted as STAMP_REQUESTED through ``StampClient``
  to every node hosted in-process (MemoryBus): orchestrator -> stamping_effect -> reducer -> database_adapter_effect
  -> SQLite (a file in a temporary directory). The clock stops when every workflow's outcome arrived *and* the
  runtime drained, i.e. every row is persisted; the row counts are then checked.
- raw floor: a plain loop over the same items that hashes each with BLAKE3 and batch-inserts the same rows (one
  workflow, one stamp, two FSM transitions, two steps per item) with ``sqlite3.executemany`` into the same schema
  with the same pragmas, 500 items per transaction. What is left between the two is the runtime's own overhead:
  envelopes, validation, the FSM, routing, the bus.

Prints items/s for both and the ratio; writes ``bench/results/e2e.json``.

    .venv/bin/python bench/e2e.py [--items N] [--repeat R]

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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from blake3 import blake3
from onex._sqlite import PRAGMAS, _migrations
from onex.client import StampClient
from onex.runtime import Runtime, tune_gc
from onex.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BATCH = 500


def make_items(count: int) -> list[str]:
    """~1 KiB of distinct text per item."""
    return [f"item {i:08d} " + "x" * 1010 + "\n" for i in range(count)]


async def run_onex(items: list[str], directory: Path) -> tuple[float, dict[str, int]]:
    settings = Settings.load(environ={}, root=str(ROOT), store=f"sqlite:///{directory}/onex.db").with_(
        heartbeat_interval_s=0
    )
    async with Runtime(settings) as runtime:
        async with StampClient(runtime.bus, runtime.contracts, settings) as client:
            start = time.perf_counter()
            cids = [
                await client.submit({"content": text, "file_path": f"item-{i}.txt", "namespace": "bench"})
                for i, text in enumerate(items)
            ]
            failed = 0
            for cid in cids:
                outcome = await client.outcome(cid, timeout=600)
                failed += outcome.payload.get("state") != "completed"
            await runtime.drain()
            elapsed = time.perf_counter() - start
        counts = {
            t: await runtime.store.count(t)
            for t in ("workflow_executions", "metadata_stamps", "fsm_transitions", "workflow_steps")
        }
        counts["failed"] = failed
    return elapsed, counts


_RAW = {
    "workflow_executions": "INSERT INTO workflow_executions (correlation_id, workflow_type, current_state, state_seq,"
    " namespace, file_path, file_hash, stamp_id, started_at, completed_at, execution_time_ms, metadata, created_at,"
    " updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    "metadata_stamps": "INSERT INTO metadata_stamps (id, file_hash, file_path, file_size, namespace, stamp_type,"
    " file_type, workflow_id, stamp_data, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
    "fsm_transitions": "INSERT INTO fsm_transitions (id, entity_id, entity_type, from_state, to_state,"
    " transition_event, correlation_id, transition_data, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
    "workflow_steps": "INSERT INTO workflow_steps (workflow_id, step_name, step_order, status, execution_time_ms,"
    " step_data, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
}


def run_raw(items: list[str], path: Path) -> float:
    """Hash every item and insert the rows the workflow persists, as directly as Python and sqlite3 allow."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        for pragma in PRAGMAS:
            conn.execute(pragma)
        for migration in _migrations():
            conn.executescript(migration.sql)
        start = time.perf_counter()
        for offset in range(0, len(items), BATCH):
            rows: dict[str, list[tuple[Any, ...]]] = {table: [] for table in _RAW}
            now = datetime.now(UTC).isoformat()
            for i, text in enumerate(items[offset : offset + BATCH], offset):
                digest = blake3(text.encode()).hexdigest()
                cid, stamp_id = str(uuid.uuid4()), str(uuid.uuid4())
                rows["workflow_executions"].append(
                    (
                        cid,
                        "stamp_workflow",
                        "completed",
                        2,
                        "bench",
                        f"item-{i}.txt",
                        digest,
                        stamp_id,
                        now,
                        now,
                        0.1,
                        "{}",
                        now,
                        now,
                    )
                )
                rows["metadata_stamps"].append(
                    (
                        stamp_id,
                        digest,
                        f"item-{i}.txt",
                        len(text),
                        "bench",
                        "lightweight",
                        "text",
                        cid,
                        json.dumps({"uid": stamp_id, "hash": digest, "ts": now}),
                        now,
                    )
                )
                rows["fsm_transitions"].append(
                    (str(uuid.uuid4()), cid, "orchestrator", "pending", "processing", "start", cid, "{}", now)
                )
                rows["fsm_transitions"].append(
                    (str(uuid.uuid4()), cid, "orchestrator", "processing", "completed", "complete", cid, "{}", now)
                )
                rows["workflow_steps"].append((cid, "stamp", 0, "completed", 0.1, "{}", now, now))
                rows["workflow_steps"].append((cid, "intelligence", 1, "skipped", 0.0, "{}", now, now))
            conn.execute("BEGIN IMMEDIATE")
            for table, table_rows in rows.items():
                conn.executemany(_RAW[table], table_rows)
            conn.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        conn.close()


def run(*, items: int = 100_000, repeat: int = 1) -> dict[str, Any]:
    data = make_items(items)
    tune_gc()  # as `onex stamp` / `onex run` do
    onex_s: list[float] = []
    raw_s: list[float] = []
    counts: dict[str, int] = {}
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="onex-bench-") as tmp:
            raw_s.append(run_raw(data, Path(tmp) / "raw.db"))
        with tempfile.TemporaryDirectory(prefix="onex-bench-") as tmp:
            elapsed, counts = asyncio.run(run_onex(data, Path(tmp)))
            onex_s.append(elapsed)
    # fsm_transitions also holds the reducer's and the registry's own transitions: at least two per workflow.
    expected = {"workflow_executions": items, "metadata_stamps": items, "workflow_steps": 2 * items, "failed": 0}
    complete = {k: counts.get(k) for k in expected} == expected and counts.get("fsm_transitions", 0) >= 2 * items
    onex_rate = items / min(onex_s)
    raw_rate = items / min(raw_s)
    result = {
        "benchmark": "e2e_inprocess_sqlite",
        "items": items,
        "item_bytes": len(data[0]),
        "repeat": repeat,
        "onex_items_per_s": round(onex_rate),
        "raw_floor_items_per_s": round(raw_rate),
        "ratio": round(onex_rate / raw_rate, 3),
        "rows_persisted": counts,
        "rows_as_expected": complete,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
        "at": datetime.now(UTC).isoformat(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "e2e.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    r = run(items=args.items, repeat=args.repeat)
    print(f"end to end, {r['items']:,} items of {r['item_bytes']} bytes, in-process (MemoryBus + SQLite)")
    print(f"  {'onex (all nodes, every row persisted)':40s} {r['onex_items_per_s']:>10,} items/s")
    print(f"  {'raw floor (blake3 + executemany)':40s} {r['raw_floor_items_per_s']:>10,} items/s")
    print(f"  {'ratio onex / raw':40s} {r['ratio']:>10.3f}")
    print(f"  rows persisted {r['rows_persisted']} as expected: {r['rows_as_expected']}")


if __name__ == "__main__":
    main()
