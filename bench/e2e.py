"""Benchmark: end-to-end stamping on the embedded default vs a raw floor, in the same run.

- onex: ``--items`` (default 100,000) content items of ~1 KiB submitted as STAMP_REQUESTED through ``StampClient``
  to every node hosted in-process (MemoryBus): orchestrator -> stamping_effect -> reducer -> database_adapter_effect
  -> SQLite (a file in a temporary directory). The clock stops when every workflow's outcome arrived *and* the
  runtime drained, i.e. every row is persisted; the row counts are then checked, after every run of every repeat
  (``check_rows``): a run that lost a row or a workflow ends the benchmark (exit 1, naming the table, the count found
  and the count expected) before any figure is printed or written. Reported also: how much of its time
  came after the last outcome had arrived (``stored_after_last_outcome_s``), the rows left to write then (the
  database adapter's backlog) with the nodes' work done; with ``--store postgresql://...`` too.
- raw floor: a plain loop over the same items that hashes each with BLAKE3 and batch-inserts the same rows (one
  workflow, one stamp, two FSM transitions, two steps per item) with ``sqlite3.executemany`` into the same schema
  with the same pragmas, 500 items per transaction, the workflow's id made as onex makes it (``new_id``, time-ordered)
  and the others random, as onex's derived ids are. What is left between the two is the runtime's own overhead:
  envelopes, validation, the FSM, routing, the bus.

- without checkpoints: the same onex run with ``checkpoints=False`` (``ONEX_CHECKPOINTS=off``): workflows and
  aggregates are not checkpointed, as before durable workflows; ``durability_cost`` is what checkpoints cost.
- checkpoints written behind: the same onex run with ``synchronous_checkpoints=False``
  (``ONEX_SYNCHRONOUS_CHECKPOINTS=off``): the orchestrator does not wait for its checkpoints, and a workflow that
  finished before its checkpoint was written is never written; its rows are checked as the onex run's.
- ceiling: the same onex run with a store that discards every write (``_DiscardingStore``): what the runtime's
  nodes, bus, validation and FSM cost on their own. No store, however fast, can take onex above it; when it is
  below a target, the target is out of reach of the node graph itself. Reported also as CPU milliseconds an item of
  the event loop's thread against the raw floor's (from /proc, Linux): the same comparison without what either
  waits for, steadier from run to run than items/s.
- one workflow at a time: the onex run over ``--alone`` of the items (default a tenth), the client waiting for each
  outcome before it submits the next, as a lone HTTP request goes; its rows are checked too. Reported with CPU
  milliseconds a stamp of the event loop's thread and of the SQLite store's threads (writer, reader, checkpointer;
  from /proc, Linux), against the same for the onex run: what a node's batch, flush and transaction cost when it holds
  one stamp, the cost the HTTP latency at a fixed rate depends on. Timed natively: under Valgrind
  (``bench/instructions.py``) this run's count moves by a third between runs of the same code.
- reads while writing: during the onex run a task reads by an index (``get_stamps_by_hash`` of a hash no row has)
  every 10 ms, what the HTTP API or ``onex status`` waits for while the store is busy writing; reported as p50 / p95
  / max milliseconds against the same read on the idle store afterwards (with ``--store postgresql://...`` too).

Prints items/s for each and the ratios; writes ``bench/results/e2e.json``.

With ``--store postgresql://USER@HOST:PORT/DB`` the same run goes to PostgreSQL instead:

- onex: as above, with the runtime's store a ``PostgresStore`` on a fresh schema ``onex_bench_<hex>`` (created by
  the store's migrations before the clock starts, dropped afterwards; other URL parameters, ``max_size`` say,
  are kept).
- raw floors: the same loop of BLAKE3 plus the same rows per item, 500 items per transaction, on one bare asyncpg
  connection into another fresh schema created by the same migrations: ``copy_records_to_table`` (COPY, binary)
  and ``executemany`` of a plain ``INSERT``. The ratio is onex against the faster floor.
- CPU milliseconds an item of onex (with and without checkpoints) and of the COPY floor (medians over the repeats), this
  process's (every thread) and, where the server runs on this machine, the server's: its postmaster and every process it
  started (backends, WAL writer, checkpointer; a backend that ended counts through the postmaster's children's time). A
  shared server's other clients count too. On two cores the two together bound the throughput, and they move less from
  run to run than items/s.

Prints a table (best and median of ``--repeat`` runs) and writes ``bench/results/e2e_postgres.json``. When no
PostgreSQL answers at the URL, says so and skips (exit 0).

    .venv/bin/python bench/e2e.py [--items N] [--repeat R] [--alone N] [--store sqlite | postgresql://...]

``run(**options) -> dict`` is the entry point for ``bench/run.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from blake3 import blake3
from onex._postgres import PostgresSettings, PostgresStore, _init_jsonb
from onex._sqlite import PRAGMAS, SqliteStore, _migrations
from onex._tables import STAMPS, STEPS, TRANSITIONS, WORKFLOWS
from onex.client import MAX_PENDING, StampClient
from onex.envelope import OnexEnvelopeV1, new_id
from onex.runtime import Runtime, chosen_loop, run_main, tune_process
from onex.settings import Settings, redact_url
from onex.store import Store, WriteBatch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for bench.procstat when run as a script

from bench.loadgen import percentile  # noqa: E402 - needs ROOT on sys.path
from bench.procstat import (  # noqa: E402 - needs ROOT on sys.path
    CLOCK_TICK,
    children,
    postmaster_of,
    process_cpu,
    server_cpu,
    stat_fields,
)

RESULTS = ROOT / "bench" / "results"
BATCH = 500


def make_items(count: int) -> list[str]:
    """~1 KiB of distinct text per item."""
    return [f"item {i:08d} " + "x" * 1010 + "\n" for i in range(count)]


class _DiscardingStore(SqliteStore):
    """A migrated SQLite store whose writes do nothing: for the ceiling run."""

    async def apply(self, batch: WriteBatch) -> None:
        return None


async def run_onex(
    items: list[str],
    store_url: str,
    *,
    discard: bool = False,
    checkpoints: bool = True,
    synchronous: bool = True,
    in_flight: int = MAX_PENDING,
    cpu: dict[str, float] | None = None,
    reads: dict[str, list[float]] | None = None,
    postmaster: int | None = None,
    tails: list[float] | None = None,
) -> tuple[float, dict[str, int]]:
    """The onex run over ``items`` (module docstring): seconds and the row counts. ``cpu``, when given, gets the CPU
    seconds the run took (``thread_cpu``): ``main`` (the event loop's thread) and ``sqlite`` (the store's threads),
    and with ``postmaster`` the PostgreSQL server's (``server``, ``procstat.server_cpu``).
    ``reads``, when given, gets the milliseconds of the reads made meanwhile (``busy``) and afterwards (``idle``).
    ``tails``, when given, gets the seconds from the last outcome's arrival to every row stored (the drain)."""
    settings = Settings.load(environ={}, root=str(ROOT), store=store_url).with_(
        heartbeat_interval_s=0, checkpoints=checkpoints, synchronous_checkpoints=synchronous
    )
    store = _DiscardingStore(settings.store_url()) if discard else None
    if store is None:
        return await _run_onex(items, settings, None, in_flight, cpu, reads, postmaster, tails)
    async with store:
        await store.upgrade()
        return await _run_onex(items, settings, store, in_flight, cpu, reads, postmaster, tails)


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) so far of this process's event loop thread (``main``) and of its other threads
    together with the SQLite store's writer process (``sqlite``: the store's database thread, reader and WAL
    checkpointer, and the process its writes go to), from /proc; {} where there is none (not Linux). A thread or process
    that ended meanwhile drops out of the sum; the store's live as long as the run."""
    found: dict[str, float] = {}
    main = str(threading.main_thread().native_id)
    with contextlib.suppress(OSError):  # not Linux
        for tid in os.listdir("/proc/self/task"):
            if (fields := stat_fields(f"/proc/self/task/{tid}/stat")) is not None:
                name = "main" if tid == main else "sqlite"
                found[name] = found.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLOCK_TICK  # utime, stime
        for pid in children(os.getpid(), "_sqlite_exec.py"):
            if (seconds := process_cpu(pid)) is not None:
                found["sqlite"] = found.get("sqlite", 0.0) + seconds
    return found


_NO_HASH = "0" * 64  # a file hash no row has: a read by an index that finds nothing


async def _timed_read(store: Store, ms: list[float]) -> None:
    """One read by an index; its milliseconds into ``ms``."""
    started = time.perf_counter()
    await store.get_stamps_by_hash(_NO_HASH)
    ms.append((time.perf_counter() - started) * 1000)


async def _read_every_10ms(store: Store, until: asyncio.Event, ms: list[float]) -> None:
    """Read by an index every 10 ms until ``until`` is set; each read's milliseconds into ``ms``."""
    while not until.is_set():
        await _timed_read(store, ms)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), 0.01)  # the pace; ends at once when the run does


async def _run_onex(
    items: list[str],
    settings: Settings,
    store: Store | None,
    in_flight: int,
    cpu: dict[str, float] | None = None,
    reads: dict[str, list[float]] | None = None,
    postmaster: int | None = None,
    tails: list[float] | None = None,
) -> tuple[float, dict[str, int]]:
    """As ``onex stamp`` runs: at most ``in_flight`` workflows in flight, outcomes counted as they arrive."""
    failed = 0
    pending: set[uuid.UUID] = set()
    all_in = asyncio.Event()

    def arrived(outcome: OnexEnvelopeV1) -> None:
        nonlocal failed
        failed += outcome.payload.get("state") != "completed"
        assert outcome.correlation_id is not None
        pending.discard(outcome.correlation_id)
        client.forget(outcome.correlation_id)
        if not pending and submitting_done:
            all_in.set()

    submitting_done = False
    async with Runtime(settings, store=store) as runtime:
        async with StampClient(
            runtime.bus, runtime.contracts, settings, on_outcome=arrived, max_pending=in_flight
        ) as client:
            db = runtime.store
            ended = asyncio.Event()
            if reads is not None:
                reading = asyncio.create_task(_read_every_10ms(db, ended, reads.setdefault("busy", [])))
            before = _cpu_now(postmaster)
            start = time.perf_counter()
            for i, text in enumerate(items):
                pending.add(await client.submit({"content": text, "file_path": f"item-{i}.txt", "namespace": "bench"}))
            submitting_done = True
            if pending:
                await asyncio.wait_for(all_in.wait(), 600)
            answered = time.perf_counter()
            await runtime.drain()
            stored = time.perf_counter()
            elapsed = stored - start
            if tails is not None:
                tails.append(stored - answered)
            if cpu is not None:
                cpu.update(_cpu_spent(before, postmaster))
            ended.set()
            if reads is not None:
                await reading
                for _ in range(50):
                    await _timed_read(db, reads.setdefault("idle", []))
        counts = {
            t: await runtime.store.count(t)
            for t in ("workflow_executions", "metadata_stamps", "fsm_transitions", "workflow_steps")
        }
        counts["failed"] = failed
    return elapsed, counts


RAW_INSERTS = {
    "workflow_executions": "INSERT INTO workflow_executions (correlation_id, workflow_type, current_state, state_seq,"
    " namespace, file_path, file_hash, stamp_id, started_at, completed_at, execution_time_ms, metadata, created_at,"
    " updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    "metadata_stamps": "INSERT INTO metadata_stamps (id, file_hash, file_path, file_size, namespace, stamp_type,"
    " file_type, workflow_id, stamp_data, created_at, op_id, version, intelligence_data, metadata_version,"
    " protocol_version, file_metadata, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    "fsm_transitions": "INSERT INTO fsm_transitions (id, entity_id, entity_type, from_state, to_state,"
    " transition_event, correlation_id, transition_data, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
    "workflow_steps": "INSERT INTO workflow_steps (workflow_id, step_name, step_order, status, execution_time_ms,"
    " step_data, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
}


def raw_batch() -> dict[str, list[tuple[Any, ...]]]:
    """Rows to write, by table (``RAW_INSERTS``), none yet."""
    return {table: [] for table in RAW_INSERTS}


def raw_commit(conn: sqlite3.Connection, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    """Insert ``rows`` (``raw_batch``) in one transaction, as directly as sqlite3 allows, and empty it."""
    conn.execute("BEGIN IMMEDIATE")
    for table, table_rows in rows.items():
        conn.executemany(RAW_INSERTS[table], table_rows)
        table_rows.clear()
    conn.execute("COMMIT")


def raw_rows(rows: dict[str, list[tuple[Any, ...]]], text: str, file_path: str, namespace: str, now: str) -> str:
    """Append to ``rows`` (``raw_batch``) the rows a stamp of ``text`` persists, as the raw floor writes them
    (``bench/http.py``'s raw baseline too); its BLAKE3 digest."""
    digest = blake3(text.encode()).hexdigest()
    # The workflow id as onex makes one (new_id: time-ordered); the rest random, like onex's derived ids.
    cid, stamp_id = str(new_id()), str(uuid.uuid4())
    rows["workflow_executions"].append(
        (
            cid,
            "stamp_workflow",
            "completed",
            2,
            namespace,
            file_path,
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
            file_path,
            len(text),
            namespace,
            "lightweight",
            "text",
            cid,
            json.dumps({"uid": stamp_id, "hash": digest, "ts": now}),
            now,
            cid,
            1,  # every item is a file of its own: its first version
            "{}",
            "0.1",
            "1.0",
            json.dumps({"file_type": "text", "size": len(text), "mode": None}),
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
    return digest


def raw_connection(path: Path) -> sqlite3.Connection:
    """The raw floor's connection to a new database at ``path``: WAL, the store's pragmas, the schema migrated."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for pragma in PRAGMAS:
        conn.execute(pragma)
    for migration in _migrations():
        conn.executescript(migration.sql)
    return conn


def run_raw(items: list[str], path: Path) -> float:
    """Hash every item and insert the rows the workflow persists, as directly as Python and sqlite3 allow."""
    conn = raw_connection(path)
    try:
        start = time.perf_counter()
        rows = raw_batch()
        for offset in range(0, len(items), BATCH):
            now = datetime.now(UTC).isoformat()
            for i, text in enumerate(items[offset : offset + BATCH], offset):
                raw_rows(rows, text, f"item-{i}.txt", "bench", now)
            raw_commit(conn, rows)
        return time.perf_counter() - start
    finally:
        conn.close()


def run(
    *,
    items: int = 100_000,
    repeat: int = 1,
    store: str | None = None,
    alone: int | None = None,
    event_loop: str = "auto",
) -> dict[str, Any]:
    """``store``: None or ``sqlite`` for the embedded default (a temporary file), or a PostgreSQL URL. ``alone``:
    items of the one-at-a-time run (default a tenth of ``items``; 0 skips it). ``event_loop``: the loop every run
    with one is on, as ``ONEX_EVENT_LOOP`` names a command's (``onex.runtime.run_main``; the SQLite floor has none)."""
    if store is not None and store.startswith(("postgresql:", "postgres:")):
        return run_postgres(items=items, repeat=repeat, url=store, event_loop=event_loop)
    if store not in (None, "sqlite"):
        raise ValueError(f"--store {store!r}: expected sqlite or postgresql://USER@HOST:PORT/DB")
    data = make_items(items)
    on_loop = functools.partial(run_main, event_loop=event_loop)
    tune_process()  # as `onex stamp` / `onex run` do
    onex_s: list[float] = []
    raw_s: list[float] = []
    ceiling_s: list[float] = []
    ceiling_cpu: list[float] = []  # each repeat's CPU seconds of the event loop's thread in the ceiling run
    raw_cpu: list[float] = []  # each repeat's CPU seconds of the raw floor (this thread: it runs here, in one)
    volatile_s: list[float] = []
    behind_s: list[float] = []
    counts: dict[str, int] = {}
    alone = items // 10 if alone is None else alone
    alone_data = data[:alone]
    alone_s: list[float] = []
    cpu: list[tuple[dict[str, float], dict[str, float]]] = []  # each repeat's (batched, one at a time) thread CPU
    reads: dict[str, list[float]] = {}  # milliseconds of the reads during the onex runs (busy) and after (idle)
    tails: list[float] = []  # each persisted run's seconds from its last outcome to every row stored
    for n in range(1, repeat + 1):
        with tempfile.TemporaryDirectory(prefix="onex-bench-") as tmp:
            before = thread_cpu().get("main", 0.0)
            raw_s.append(run_raw(data, Path(tmp) / "raw.db"))
            raw_cpu.append(thread_cpu().get("main", 0.0) - before)
        batched_cpu: dict[str, float] = {}
        with tempfile.TemporaryDirectory(prefix="onex-bench-") as tmp:
            elapsed, counts = on_loop(
                run_onex(data, f"sqlite:///{tmp}/onex.db", cpu=batched_cpu, reads=reads, tails=tails)
            )
            check_rows(f"e2e onex run (repeat {n})", counts, items)
            onex_s.append(elapsed)
        if alone:
            alone_cpu: dict[str, float] = {}
            with tempfile.TemporaryDirectory(prefix="onex-bench-") as tmp:
                elapsed, alone_counts = on_loop(
                    run_onex(alone_data, f"sqlite:///{tmp}/onex.db", in_flight=1, cpu=alone_cpu)
                )
                check_rows(f"e2e one workflow at a time (repeat {n})", alone_counts, alone)
                alone_s.append(elapsed)
            cpu.append((batched_cpu, alone_cpu))
        with tempfile.TemporaryDirectory(prefix="onex-bench-") as tmp:
            elapsed, volatile_counts = on_loop(run_onex(data, f"sqlite:///{tmp}/onex.db", checkpoints=False))
            check_rows(f"e2e without checkpoints (repeat {n})", volatile_counts, items)
            volatile_s.append(elapsed)
        ceiling_threads: dict[str, float] = {}
        with tempfile.TemporaryDirectory(prefix="onex-bench-") as tmp:
            elapsed, ceiling_counts = on_loop(
                run_onex(data, f"sqlite:///{tmp}/onex.db", discard=True, cpu=ceiling_threads)
            )
            check_rows(f"e2e ceiling (repeat {n})", ceiling_counts, items, stored=False)  # its store keeps nothing
            ceiling_s.append(elapsed)
        if "main" in ceiling_threads:
            ceiling_cpu.append(ceiling_threads["main"])
        with tempfile.TemporaryDirectory(prefix="onex-bench-") as tmp:
            elapsed, behind_counts = on_loop(run_onex(data, f"sqlite:///{tmp}/onex.db", synchronous=False))
            check_rows(f"e2e checkpoints written behind (repeat {n})", behind_counts, items)
            behind_s.append(elapsed)
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
        **_tail_figures(tails, onex_s),
        "ceiling_items_per_s": round(items / min(ceiling_s)),
        "ceiling_ratio": round(items / min(ceiling_s) / raw_rate, 3),
        "no_checkpoints_items_per_s": round(items / min(volatile_s)),
        "durability_cost": round(1 - onex_rate / (items / min(volatile_s)), 3),
        "checkpoints_behind_items_per_s": round(items / min(behind_s)),
        "checkpoints_behind_ratio": round(items / min(behind_s) / raw_rate, 3),
        **_cpu_figures(items, ceiling_cpu, raw_cpu),
        "rows_persisted": counts,
        "rows_as_expected": True,  # every run was checked (check_rows): a run that lost a row ended the benchmark
        **(_alone_figures(items, alone, alone_s, cpu) if alone else {}),
        "reads_while_writing_ms": _percentiles(reads.get("busy", [])),
        "reads_idle_ms": _percentiles(reads.get("idle", [])),
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
        "event_loop": chosen_loop(event_loop),
        "at": datetime.now(UTC).isoformat(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "e2e.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _tail_figures(tails: list[float], seconds: list[float]) -> dict[str, float]:
    """Medians over the repeats of the persisted run's seconds, and of those after its last outcome had arrived: what
    was left to write then (the database adapter's backlog), with the nodes' work done."""
    return {
        "persisted_s": round(statistics.median(seconds), 3),
        "stored_after_last_outcome_s": round(statistics.median(tails), 3),
    }


def _print_tail(r: dict[str, Any], width: int) -> None:
    label = "rows stored after the last outcome"
    print(f"  {label:{width}s} {r['stored_after_last_outcome_s']:>10.2f} s of {r['persisted_s']:.2f} s")


def _cpu_figures(items: int, ceiling_cpu: list[float], raw_cpu: list[float]) -> dict[str, Any]:
    """CPU milliseconds an item (medians over the repeats) of the ceiling run's event loop and of the raw floor, and
    their ratio: the hot path's cost in time without what either waits for, steadier than items/s from one run to the
    next (issue 12's eighteenth part: four runs of each of two commits, 133-137.5 against 144-148 µs, never crossing,
    where their items/s ratios overlapped). Empty where the threads' CPU cannot be read (not Linux)."""
    if not (ceiling_cpu and raw_cpu and all(ceiling_cpu) and all(raw_cpu)):
        return {}
    ceiling_ms = statistics.median(ceiling_cpu) / items * 1000
    raw_ms = statistics.median(raw_cpu) / items * 1000
    return {
        "ceiling_cpu_ms_per_stamp": round(ceiling_ms, 4),
        "raw_floor_cpu_ms_per_item": round(raw_ms, 4),
        "cpu_ratio_raw_over_ceiling": round(raw_ms / ceiling_ms, 3),
    }


def _not_as_expected(counts: dict[str, int], items: int, *, stored: bool = True) -> list[str]:
    """What a run over ``items`` items got wrong: ``table: found N, expected M`` for each table short of (or over) its
    rows, and the workflows that failed; [] when none. ``stored=False`` (the ceiling: its store discards every write)
    checks only that no workflow failed. fsm_transitions also holds the reducer's and the registry's own transitions:
    at least two per workflow."""
    expected = {"workflow_executions": items, "metadata_stamps": items, "workflow_steps": 2 * items} if stored else {}
    wrong = [
        f"{table}: found {counts.get(table)}, expected {n}" for table, n in expected.items() if counts.get(table) != n
    ]
    if stored and counts.get("fsm_transitions", 0) < 2 * items:
        wrong.append(f"fsm_transitions: found {counts.get('fsm_transitions')}, expected at least {2 * items}")
    if counts.get("failed") != 0:
        wrong.append(f"failed workflows: found {counts.get('failed')}, expected 0")
    return wrong


def _as_expected(counts: dict[str, int], items: int) -> bool:
    """Whether a run over ``items`` items stored every row and no workflow failed (``_not_as_expected``)."""
    return not _not_as_expected(counts, items)


def check_rows(run: str, counts: dict[str, int], items: int, *, stored: bool = True) -> None:
    """End the benchmark (SystemExit, exit status 1) when ``run`` over ``items`` items lost rows or a workflow
    (``_not_as_expected``): a faster run that lost rows must fail, never print a figure. Call it after every run,
    before anything is printed or written."""
    if wrong := _not_as_expected(counts, items, stored=stored):
        raise SystemExit(f"{run} over {items} items: rows not as expected: {'; '.join(wrong)} (counts {counts})")


def _percentiles(ms: list[float]) -> dict[str, float | int]:
    """p50, p95 (nearest rank, ``loadgen.percentile``) and the largest of ``ms``, and how many."""
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "p50": round(percentile(ms, 50), 2),
        "p95": round(percentile(ms, 95), 2),
        "max": round(max(ms), 1),
    }


def _alone_figures(
    items: int, alone: int, seconds: list[float], cpu: list[tuple[dict[str, float], dict[str, float]]]
) -> dict[str, Any]:
    """The one-at-a-time run against the batched one: items/s, and CPU milliseconds a stamp of the event loop's
    thread and of the SQLite store's (medians over the repeats): what a lone request's batches cost."""

    def per_stamp(which: int, thread: str, n: int) -> float | None:
        values = [pair[which][thread] for pair in cpu if thread in pair[which]]
        return round(statistics.median(values) / n * 1000, 3) if values else None

    ms = {
        "batched": {t: per_stamp(0, t, items) for t in ("main", "sqlite")},
        "alone": {t: per_stamp(1, t, alone) for t in ("main", "sqlite")},
    }
    batched, lone = (sum(v for v in ms[k].values() if v) for k in ("batched", "alone"))
    return {
        "alone_items": alone,
        "alone_items_per_s": round(alone / min(seconds)),
        "cpu_ms_per_stamp": ms,
        "alone_over_batched_cpu": round(lone / batched, 2) if batched else None,
    }


# --- PostgreSQL ------------------------------------------------------------------------------------------------------

# The rows of one item, per table, in the column order of the tuples ``_raw_postgres_rows`` builds: the store's
# (``onex._tables``), then the columns it sets to the time of the write.
_PG_COLUMNS: dict[str, tuple[str, ...]] = {
    t.name: (*t.names, *(c.name for c in t.written)) for t in (WORKFLOWS, STAMPS, TRANSITIONS, STEPS)
}
_PG_INSERT = {
    table: f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(f'${n}' for n in range(1, len(cols) + 1))})"
    for table, cols in _PG_COLUMNS.items()
}


def with_schema(url: str, schema: str) -> str:
    """``url`` with its ``schema`` parameter (``PostgresStore``'s) set to ``schema``; other parameters kept."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "schema"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("schema", schema)])))


async def _server(dsn: str) -> tuple[str, int | None] | None:
    """The server's version and its postmaster's pid (``procstat.postmaster_of``), or None when nothing answers at
    ``dsn``."""
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return None
    try:
        return str(await conn.fetchval("SHOW server_version")), await postmaster_of(conn)
    finally:
        await conn.close()


async def _fresh_schema(url: str) -> str:
    """Create a fresh schema with the store's migrations; returns the store URL pointing at it."""
    schema_url = with_schema(url, f"onex_bench_{uuid.uuid4().hex[:8]}")
    async with PostgresStore(schema_url) as store:
        await store.upgrade()
    return schema_url


async def _drop_schema(schema_url: str) -> None:
    settings = PostgresSettings.from_url(schema_url)
    conn = await asyncpg.connect(settings.dsn, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{settings.schema}" CASCADE')  # a checked identifier
    finally:
        await conn.close()


def _raw_postgres_rows(items: list[str], offset: int) -> dict[str, list[tuple[Any, ...]]]:
    """The rows ``run_raw`` writes to SQLite, typed for asyncpg (UUIDs, datetimes, JSON as Python values)."""
    rows: dict[str, list[tuple[Any, ...]]] = {table: [] for table in _PG_COLUMNS}
    now = datetime.now(UTC)
    ts = now.isoformat()
    for i, text in enumerate(items, offset):
        digest = blake3(text.encode()).hexdigest()
        cid, stamp_id = new_id(), uuid.uuid4()  # as run_raw's
        path = f"item-{i}.txt"
        rows["workflow_executions"].append(
            (cid, "stamp_workflow", "completed", 2, "bench", path, digest, stamp_id, now, now, 0.1, None, {}, None,
             now, now)
        )  # fmt: skip
        rows["metadata_stamps"].append(
            (stamp_id, digest, path, len(text), "bench", "lightweight", "text", cid,
             {"uid": str(stamp_id), "hash": digest, "ts": ts}, now,
             cid, 1, {}, "0.1", "1.0", {"file_type": "text", "size": len(text), "mode": None}, now)
        )  # fmt: skip
        entity = str(cid)
        rows["fsm_transitions"].append(
            (uuid.uuid4(), entity, "orchestrator", "pending", "processing", "start", cid, {}, now)
        )
        rows["fsm_transitions"].append(
            (uuid.uuid4(), entity, "orchestrator", "processing", "completed", "complete", cid, {}, now)
        )
        rows["workflow_steps"].append((cid, "stamp", 0, "completed", 0.1, {}, None, now, now))
        rows["workflow_steps"].append((cid, "intelligence", 1, "skipped", 0.0, {}, None, now, now))
    return rows


def _cpu_now(postmaster: int | None) -> dict[str, float]:
    """``thread_cpu()``, and the server's CPU seconds as ``server`` where ``postmaster`` is known."""
    now = thread_cpu()
    if (server := server_cpu(postmaster)) is not None:
        now["server"] = server
    return now


def _cpu_spent(before: dict[str, float], postmaster: int | None) -> dict[str, float]:
    """The CPU seconds spent since ``before`` (a ``_cpu_now``)."""
    return {k: v - before.get(k, 0.0) for k, v in _cpu_now(postmaster).items()}


def _per_item(spent: dict[str, float], items: int, into: dict[str, list[float]]) -> None:
    """The CPU milliseconds an item of ``spent`` (seconds, ``_cpu_now`` keys), this process's threads together as
    ``client``."""
    into.setdefault("client", []).append(1000 * sum(v for k, v in spent.items() if k != "server") / items)
    if "server" in spent:
        into.setdefault("server", []).append(1000 * spent["server"] / items)


async def run_raw_postgres(
    items: list[str], url: str, method: str, cpu: dict[str, list[float]] | None = None, postmaster: int | None = None
) -> float:
    """Hash every item and write the same rows as ``run_raw``, ``BATCH`` items per transaction, on one bare
    connection: ``method`` is ``copy`` (``copy_records_to_table``) or ``executemany`` (a plain ``INSERT``). ``cpu``,
    when given, gets the CPU milliseconds an item (``_per_item``), the server's too with ``postmaster``."""
    schema_url = await _fresh_schema(url)
    try:
        settings = PostgresSettings.from_url(schema_url)
        conn = await asyncpg.connect(settings.dsn, server_settings={"search_path": settings.schema})
        try:
            await _init_jsonb(conn)  # the store's binary JSONB codec (COPY speaks nothing else)
            before = _cpu_now(postmaster)
            start = time.perf_counter()
            for offset in range(0, len(items), BATCH):
                rows = _raw_postgres_rows(items[offset : offset + BATCH], offset)
                async with conn.transaction():
                    for table, table_rows in rows.items():
                        if method == "copy":
                            await conn.copy_records_to_table(
                                table, records=table_rows, columns=_PG_COLUMNS[table], schema_name=settings.schema
                            )
                        else:
                            await conn.executemany(_PG_INSERT[table], table_rows)
            elapsed = time.perf_counter() - start
            if cpu is not None:
                _per_item(_cpu_spent(before, postmaster), len(items), cpu)
            written = await conn.fetchval("SELECT count(*) FROM workflow_steps")
            if written != 2 * len(items):
                raise RuntimeError(f"raw floor ({method}) wrote {written} steps, expected {2 * len(items)}")
        finally:
            await conn.close()
        return elapsed
    finally:
        await _drop_schema(schema_url)


async def run_onex_postgres(
    items: list[str],
    url: str,
    *,
    checkpoints: bool = True,
    reads: dict[str, list[float]] | None = None,
    cpu: dict[str, list[float]] | None = None,
    postmaster: int | None = None,
    tails: list[float] | None = None,
) -> tuple[float, dict[str, int]]:
    schema_url = await _fresh_schema(url)  # migrated before the clock starts: the runtime only migrates SQLite
    try:
        spent: dict[str, float] = {}
        result = await run_onex(
            items, schema_url, checkpoints=checkpoints, reads=reads, cpu=spent, postmaster=postmaster, tails=tails
        )
        if cpu is not None:
            _per_item(spent, len(items), cpu)
        return result
    finally:
        await _drop_schema(schema_url)


def run_postgres(*, items: int, repeat: int, url: str, event_loop: str = "auto") -> dict[str, Any]:
    """The PostgreSQL run (module docstring); ``{"skipped": reason}`` when no server answers at ``url``."""
    on_loop = functools.partial(run_main, event_loop=event_loop)
    shown = redact_url(url)
    found = on_loop(_server(PostgresSettings.from_url(url).dsn))
    if found is None:
        return {"benchmark": "e2e_inprocess_postgres", "skipped": f"no PostgreSQL answers at {shown}"}
    server, postmaster = found  # one lookup: every run below talks to the same server
    data = make_items(items)
    tune_process()  # as `onex stamp` / `onex run` do
    seconds: dict[str, list[float]] = {"onex": [], "onex_no_checkpoints": [], "raw_copy": [], "raw_executemany": []}
    counts: dict[str, int] = {}
    reads: dict[str, list[float]] = {}  # as in run()
    cpu: dict[str, dict[str, list[float]]] = {"onex": {}, "onex_no_checkpoints": {}, "raw_copy": {}}  # ms an item
    tails: list[float] = []  # as in run()
    for n in range(1, repeat + 1):
        seconds["raw_copy"].append(on_loop(run_raw_postgres(data, url, "copy", cpu["raw_copy"], postmaster)))
        seconds["raw_executemany"].append(on_loop(run_raw_postgres(data, url, "executemany")))
        elapsed, counts = on_loop(
            run_onex_postgres(data, url, reads=reads, cpu=cpu["onex"], postmaster=postmaster, tails=tails)
        )
        check_rows(f"e2e on PostgreSQL, onex run (repeat {n})", counts, items)
        seconds["onex"].append(elapsed)
        elapsed, volatile_counts = on_loop(
            run_onex_postgres(data, url, checkpoints=False, cpu=cpu["onex_no_checkpoints"], postmaster=postmaster)
        )
        check_rows(f"e2e on PostgreSQL, without checkpoints (repeat {n})", volatile_counts, items)
        seconds["onex_no_checkpoints"].append(elapsed)
    best = {k: items / min(v) for k, v in seconds.items()}
    median = {k: items / statistics.median(v) for k, v in seconds.items()}
    floor = max(best["raw_copy"], best["raw_executemany"])
    floor_median = max(median["raw_copy"], median["raw_executemany"])
    result = {
        "benchmark": "e2e_inprocess_postgres",
        "items": items,
        "item_bytes": len(data[0]),
        "repeat": repeat,
        "batch_items": BATCH,
        "onex_items_per_s": round(best["onex"]),
        "raw_floor_items_per_s": round(floor),
        "raw_floor_copy_items_per_s": round(best["raw_copy"]),
        "raw_floor_executemany_items_per_s": round(best["raw_executemany"]),
        "ratio": round(best["onex"] / floor, 3),
        "no_checkpoints_items_per_s": round(best["onex_no_checkpoints"]),
        "durability_cost": round(1 - best["onex"] / best["onex_no_checkpoints"], 3),
        **_tail_figures(tails, seconds["onex"]),
        "median": {
            "onex_items_per_s": round(median["onex"]),
            "no_checkpoints_items_per_s": round(median["onex_no_checkpoints"]),
            "raw_floor_copy_items_per_s": round(median["raw_copy"]),
            "raw_floor_executemany_items_per_s": round(median["raw_executemany"]),
            "ratio": round(median["onex"] / floor_median, 3),
        },
        "seconds": {k: [round(x, 3) for x in v] for k, v in seconds.items()},
        # Medians over the repeats; "server" only where the server runs on this machine.
        "cpu_ms_per_item": {
            run: {side: round(statistics.median(v), 4) for side, v in sides.items()} for run, sides in cpu.items()
        },
        "reads_while_writing_ms": _percentiles(reads.get("busy", [])),
        "reads_idle_ms": _percentiles(reads.get("idle", [])),
        "rows_persisted": counts,
        "rows_as_expected": True,  # every run was checked (check_rows): a run that lost a row ended the benchmark
        "server": {"url": shown, "version": server, "asyncpg": asyncpg.__version__},
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
        "event_loop": chosen_loop(event_loop),
        "at": datetime.now(UTC).isoformat(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "e2e_postgres.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def print_postgres(r: dict[str, Any]) -> None:
    if "skipped" in r:
        print(f"end to end on PostgreSQL: skipped, {r['skipped']}")
        return
    m = r["median"]
    print(
        f"end to end, {r['items']:,} items of {r['item_bytes']} bytes, in-process (MemoryBus + PostgreSQL "
        f"{r['server']['version']} at {r['server']['url']}), {r['repeat']} run(s), on {r['event_loop']}'s event loop"
    )
    rows = [
        ("onex (all nodes, every row persisted)", r["onex_items_per_s"], m["onex_items_per_s"]),
        ("onex without checkpoints (not durable)", r["no_checkpoints_items_per_s"], m["no_checkpoints_items_per_s"]),
        (f"raw floor: blake3 + COPY, {r['batch_items']}/tx", r["raw_floor_copy_items_per_s"],
         m["raw_floor_copy_items_per_s"]),
        (f"raw floor: blake3 + executemany, {r['batch_items']}/tx", r["raw_floor_executemany_items_per_s"],
         m["raw_floor_executemany_items_per_s"]),
    ]  # fmt: skip
    print(f"  {'':44s} {'best items/s':>14s} {'median items/s':>16s}")
    for label, best, median in rows:
        print(f"  {label:44s} {best:>14,} {median:>16,}")
    print(f"  {'ratio onex / faster floor':44s} {r['ratio']:>14.3f} {m['ratio']:>16.3f}")
    print(f"  {'durability costs (best)':44s} {r['durability_cost']:>14.1%}")
    _print_tail(r, 44)
    cpu = r["cpu_ms_per_item"]
    for label, run in (
        ("onex", "onex"),
        ("onex without checkpoints", "onex_no_checkpoints"),
        ("COPY floor", "raw_copy"),
    ):
        server = cpu[run].get("server")
        where = f", the server {server}" if server is not None else " (the server is not on this machine)"
        print(f"  {'CPU ms an item, ' + label:44s} this process {cpu[run]['client']}{where}")
    _print_reads(r, 44)
    print(f"  rows persisted {r['rows_persisted']} as expected: {r['rows_as_expected']}")
    print(f"  -> {RESULTS / 'e2e_postgres.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--store",
        default="sqlite",
        help="sqlite (default: a temporary file) or postgresql://USER@HOST:PORT/DB (a fresh schema per run)",
    )
    parser.add_argument(
        "--alone", type=int, default=None, help="items of the one-at-a-time run (default: a tenth of --items; 0: skip)"
    )
    parser.add_argument(
        "--event-loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="the loop of the onex runs (and of the PostgreSQL floor), as ONEX_EVENT_LOOP names a command's (auto)",
    )
    args = parser.parse_args()
    if args.alone is not None and args.alone < 0:
        parser.error(f"--alone {args.alone}: expected 0 or more")
    if args.store.startswith(("postgresql:", "postgres:")):
        print_postgres(run(items=args.items, repeat=args.repeat, store=args.store, event_loop=args.event_loop))
        return
    if args.store != "sqlite":
        parser.error(f"--store {args.store!r}: expected sqlite or postgresql://USER@HOST:PORT/DB")
    r = run(items=args.items, repeat=args.repeat, alone=args.alone, event_loop=args.event_loop)
    print(
        f"end to end, {r['items']:,} items of {r['item_bytes']} bytes, in-process (MemoryBus + SQLite),"
        f" on {r['event_loop']}'s event loop"
    )
    print(f"  {'onex (all nodes, every row persisted)':40s} {r['onex_items_per_s']:>10,} items/s")
    print(f"  {'raw floor (blake3 + executemany)':40s} {r['raw_floor_items_per_s']:>10,} items/s")
    print(f"  {'ratio onex / raw':40s} {r['ratio']:>10.3f}")
    _print_tail(r, 40)
    print(f"  {'ceiling: onex, writes discarded':40s} {r['ceiling_items_per_s']:>10,} items/s")
    print(f"  {'ratio ceiling / raw':40s} {r['ceiling_ratio']:>10.3f}")
    if "ceiling_cpu_ms_per_stamp" in r:
        print(
            f"  {'CPU ms an item, ceiling / raw floor':40s} event loop {r['ceiling_cpu_ms_per_stamp']},"
            f" raw {r['raw_floor_cpu_ms_per_item']}: ratio {r['cpu_ratio_raw_over_ceiling']}"
        )
    print(f"  {'onex without checkpoints (not durable)':40s} {r['no_checkpoints_items_per_s']:>10,} items/s")
    print(f"  {'durability costs':40s} {r['durability_cost']:>10.1%}")
    print(f"  {'onex, checkpoints written behind':40s} {r['checkpoints_behind_items_per_s']:>10,} items/s")
    print(f"  {'ratio checkpoints behind / raw':40s} {r['checkpoints_behind_ratio']:>10.3f}")
    if "alone_items" in r:
        cpu = r["cpu_ms_per_stamp"]
        print(
            f"  {'onex, one workflow at a time':40s} {r['alone_items_per_s']:>10,} items/s ({r['alone_items']:,} items)"
        )
        for label, key in (("batched", "batched"), ("one at a time", "alone")):
            print(f"  {'CPU ms a stamp, ' + label:40s} event loop {cpu[key]['main']}, the store {cpu[key]['sqlite']}")
        print(f"  {'CPU a stamp, one at a time / batched':40s} {r['alone_over_batched_cpu']:>10}")
    _print_reads(r, 40)
    print(f"  rows persisted {r['rows_persisted']} as expected: {r['rows_as_expected']}")


def _print_reads(r: dict[str, Any], width: int) -> None:
    """The reads-while-writing line, its label ``width`` wide as the table it ends."""
    busy, idle = r["reads_while_writing_ms"], r["reads_idle_ms"]
    if busy["n"] and idle["n"]:
        label = "a read by an index while writing, ms"
        print(
            f"  {label:{width}s} p50 {busy['p50']}, p95 {busy['p95']}, max {busy['max']}"
            f" ({busy['n']} reads; idle: p50 {idle['p50']})"
        )


if __name__ == "__main__":
    main()
