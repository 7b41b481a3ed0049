"""Benchmark: the HTTP gateway's POST /stamp with 1 KiB content, on the embedded default (memory bus, SQLite).

The server is this process: every node on a MemoryBus, a SQLite store in a temporary directory, and the gateway on
uvicorn, all in one event loop as ``onex run --http`` hosts them. The load comes from ``bench/loadgen.py`` in a
second process (keep-alive HTTP/1.1 over raw sockets; see its docstring), so client and server do not share a GIL.
Each repeat runs:

- **saturation**: ``--connections`` connections sending back to back for ``--duration`` s. Target (issue 12): at
  least half of the floor's (below).
- **fixed rate**: half the saturation the run before it reached (or ``--rate`` requests/s) for ``--duration`` s,
  open loop: latency counts from when each request was due, so queueing shows. Target: p95 < 10 ms.
- **floor**: the same saturation load on ``POST /hash`` with the same bodies: HTTP, JSON and BLAKE3 without a
  workflow, i.e. what the HTTP layer alone costs; the ratio says how much of /stamp's cost is the workflow.
- **raw stamp**: the same saturation load on a raw baseline that does a stamp's work as plainly as an HTTP service could
  (``raw_stamp_app``, on the same uvicorn set-up in this process): the body parsed by orjson, BLAKE3, the rows
  ``bench/e2e.py``'s raw floor writes for a stamp (``e2e.raw_rows``) inserted and committed on a ``sqlite3`` connection
  of the event loop's own (WAL, the store's pragmas), then the answer; the requests of one turn of the event loop in one
  transaction. Its ratio is onex's stamp against a stamp's work without onex, as ``bench/e2e.py`` measures in process
  (README, Performance: the proposal to judge the gateway by it).

Each saturation run and each fixed-rate run also gives what the server, this process, spent a request
(``server_per_request``): CPU µs of the event loop's thread and of the store's threads, KiB written to disk, the nodes'
handler calls (one a batch) and the store's transactions, from its first request (the warm-up's included) until every
row is written; and how busy the event loop's thread was meanwhile (``loop_busy``: its CPU seconds a second). In
process, ``bench/e2e.py`` gives the same workflows' CPU an item to set them against: twice as much on the store's
threads a request was how the gateway's random workflow ids showed. At the fixed rate, fewer requests arrive together,
so the nodes' batches and the store's groups are smaller and a request costs more: that is how busy "half of saturation"
keeps the server (README, Performance).

After the warm-up and after each run on ``/stamp``, once every row is written, the store must hold a workflow and a
stamp for every request answered 200 so far (``check_stored``), as the raw stamp's rows are checked: otherwise the
benchmark ends (exit 1) naming the table and the counts, before any figure is printed or written.

Figures are medians over ``--repeat`` runs. The load generator and the server share the machine's cores, so on a
small machine they compete; the JSON records the core count.

    .venv/bin/python bench/http.py [--rate R] [--duration 10] [--repeat 3] [--connections 64]
                                   [--synchronous-checkpoints off]

``--synchronous-checkpoints off`` runs the server with ``ONEX_SYNCHRONOUS_CHECKPOINTS=off``: the orchestrator writes
its checkpoints behind its batches (README, Design decisions).

``run(**options) -> dict`` is the entry point for ``bench/run.py``; results go to ``bench/results/http.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.machinery
import importlib.util
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

if TYPE_CHECKING:
    from onex.runtime import Runtime

if __name__ == "http":  # pragma: no cover - only when imported by that name
    # `python bench/<script>.py` puts bench/ first on sys.path, where this file would shadow the standard library's
    # `http` package for every later `import http.client` (urllib.request, uvicorn, httpx...), in every benchmark.
    # Imported under that name, it puts the real package in its place: an import returns what sys.modules holds once
    # the module ran. Nothing in this file imports `http` at module level, so nothing here needs it meanwhile.
    _spec = importlib.machinery.PathFinder.find_spec("http", [os.path.dirname(os.__file__)])
    assert _spec is not None
    assert _spec.loader is not None
    _stdlib_http = importlib.util.module_from_spec(_spec)
    sys.modules["http"] = _stdlib_http
    _spec.loader.exec_module(_stdlib_http)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
LOADGEN = Path(__file__).resolve().parent / "loadgen.py"
# Issue 12's targets: saturation at least half of `POST /hash`'s, a p95 under 10 ms at half of saturation.
P95_TARGET_MS = 10.0
RATIO_TARGET = 0.5


async def _load(url: str, *, path: str, rate: float, duration: float, connections: int, size: int,
                namespace: str = "bench.http", warmup: float = 1.0, body: str = "",
                first: int = 0) -> dict[str, Any]:  # fmt: skip
    """One run of the load generator in its own process; its JSON result. ``body``, ``first``: see loadgen's
    ``--body`` and ``--first``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(LOADGEN), "--url", url, "--path", path, "--rate", str(rate), "--duration", str(duration),
        "--connections", str(connections), "--size", str(size), "--warmup", str(warmup), "--namespace", namespace,
        "--first", str(first), *(("--body", body) if body else ()), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"load generator exited {proc.returncode}")
    result: dict[str, Any] = json.loads(out)
    return result


def raw_stamp_app(conn: sqlite3.Connection) -> Callable[..., Awaitable[None]]:
    """An ASGI app that answers any request as a raw stamp (module docstring, "raw stamp") written on ``conn``: the
    requests of one turn of the event loop share a transaction (the simplest group commit; with a transaction a
    request the baseline was bound by SQLite's commits, 2,298-2,707 req/s in six runs whatever ``POST /hash`` did)."""
    e2e = _e2e()
    now = datetime.now(UTC).isoformat  # as the raw floor stamps its rows
    headers = [(b"content-type", b"application/json")]
    rows = e2e.raw_batch()
    waiting: list[asyncio.Future[None]] = []

    def commit() -> None:
        e2e.raw_commit(conn, rows)
        for answered in waiting:
            answered.set_result(None)
        waiting.clear()

    async def app(
        scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]
    ) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        request = orjson.loads(body)
        digest = e2e.raw_rows(rows, request["content"], request["file_path"], request.get("namespace", "bench"), now())
        stamp_id = rows["metadata_stamps"][-1][0]
        committed = asyncio.get_running_loop().create_future()
        if not waiting:
            asyncio.get_running_loop().call_soon(commit)  # once this turn's other requests have added theirs
        waiting.append(committed)
        await committed
        answer = orjson.dumps({"file_hash": digest, "stamp_id": stamp_id})
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*headers, (b"content-length", b"%d" % len(answer))],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    return app


@contextlib.asynccontextmanager
async def raw_server(prefix: str) -> AsyncIterator[tuple[str, sqlite3.Connection]]:
    """``raw_stamp_app`` served in this process on a fresh database in a temporary directory: yields its base URL and
    its connection (to count the rows)."""
    from onex.http import bind
    from onex.http.server import base_url, quiet_server

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        conn = _e2e().raw_connection(Path(tmp) / "raw.db")
        sock = bind("127.0.0.1:0")
        server = quiet_server(raw_stamp_app(conn), grace_s=1)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            yield base_url(sock), conn
        finally:
            server.should_exit = True
            await serving
            sock.close()
            conn.close()


class Served(NamedTuple):
    """What ``gateway`` yields: the base URL, ``settle`` (returns once the bus is idle: the last run's rows written
    before the next run starts) and the runtime behind it (for its counters: ``_server_usage``)."""

    url: str
    settle: Callable[[], Awaitable[None]]
    runtime: Runtime


@contextlib.asynccontextmanager
async def gateway(prefix: str, *, synchronous: bool = True) -> AsyncIterator[Served]:
    """Every node and the HTTP gateway in this process, as ``onex run --http`` hosts them, on a memory bus and a
    SQLite store in a temporary directory (``Served``)."""
    from onex.bus import MemoryBus
    from onex.http import bind, serve
    from onex.runtime import Runtime
    from onex.settings import Settings

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        settings = Settings.load(environ={}, root=str(ROOT), store=f"sqlite:///{tmp}/onex.db").with_(
            heartbeat_interval_s=0, synchronous_checkpoints=synchronous
        )
        sock = bind("127.0.0.1:0")
        try:
            async with Runtime(settings) as runtime:
                stop, ready = asyncio.Event(), asyncio.Event()
                urls: list[str] = []

                def announce(url: str) -> None:
                    urls.append(url)
                    ready.set()

                async def settle() -> None:
                    if isinstance(runtime.bus, MemoryBus):
                        await runtime.bus.join()

                server = asyncio.create_task(serve(runtime, settings, sock=sock, stop=stop, ready=announce))
                await ready.wait()
                try:
                    yield Served(urls[0], settle, runtime)
                finally:
                    stop.set()
                    await server
        finally:
            sock.close()


def _e2e() -> Any:
    """``bench/e2e.py``, whose per-thread CPU readings this benchmark shares."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bench import e2e

    return e2e


def _written() -> int | None:
    """The bytes this process and the SQLite store's writer process have had written to disk so far (/proc/PID/io;
    None where there is no such file)."""
    _e2e()  # ROOT on sys.path, for bench.procstat
    from bench.procstat import children

    total = None
    for pid in ("self", *map(str, children(os.getpid(), "_sqlite_exec.py"))):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/io") as io:
            total = (total or 0) + next(int(line.split()[1]) for line in io if line.startswith("write_bytes"))
    return total


class Usage(NamedTuple):
    """The server's counters at one moment (``_server_usage``)."""

    cpu: dict[str, float]  # CPU seconds by thread (``e2e.thread_cpu``: the event loop's, the store's)
    written: int | None  # ``_written()``
    handler_calls: int  # the nodes' handler calls so far (one a batch or a message, failed ones included)
    transactions: int | None  # the store's write transactions so far (None: a store that does not count them)
    at: float  # time.monotonic()


def _server_usage(runtime: Runtime) -> Usage:
    """This process's counters now, and the runtime's."""
    calls = sum(t.durations.count for node in runtime.nodes for t in node.meter.tallies.values())
    transactions = getattr(runtime.store, "transactions", None)
    return Usage(_e2e().thread_cpu(), _written(), calls, transactions, time.monotonic())


def _per_request(before: Usage, runtime: Runtime, requests: int) -> dict[str, Any]:
    """What the server spent a request since ``before`` (``_server_usage``): CPU µs by thread, KiB written, handler
    calls and store transactions; and ``loop_busy``, the event loop thread's CPU seconds a second meanwhile."""
    after = _server_usage(runtime)
    seconds = {name: cpu - before.cpu.get(name, 0.0) for name, cpu in after.cpu.items()}
    spent: dict[str, Any] = {f"cpu_us_{name}": round(cpu / requests * 1e6, 1) for name, cpu in seconds.items()}
    if before.written is not None and after.written is not None:
        spent["written_kib"] = round((after.written - before.written) / requests / 1024, 1)
    spent["handler_calls"] = round((after.handler_calls - before.handler_calls) / requests, 2)
    if before.transactions is not None and after.transactions is not None:
        spent["transactions"] = round((after.transactions - before.transactions) / requests, 3)
    if "main" in seconds:  # the same reading as the CPU above
        spent["loop_busy"] = round(seconds["main"] / (after.at - before.at), 2)
    return spent


async def _bench(
    rate: float, duration: float, repeat: int, connections: int, size: int, synchronous: bool
) -> dict[str, list[Any]]:
    from onex.http import PREFIX

    runs: dict[str, list[Any]] = {"fixed": [], "saturation": [], "floor": [], "raw": []}
    sent = 0  # requests so far: the next run numbers its own from here, so no two stamp the same file and content
    stamped = 0  # POST /stamp requests the gateway answered 200 so far, the warm-up's included: a workflow's rows each

    async def load(path: str, *, to: str = "", **options: Any) -> dict[str, Any]:
        nonlocal sent, stamped
        result = await _load(to or url, path=path, size=size, first=sent, **options)
        sent += result["sent"]
        if path == stamp and not to:
            stamped += result["ok"]
        return result

    async with (
        gateway("onex-bench-http-", synchronous=synchronous) as (url, settle, runtime),
        raw_server("onex-bench-http-raw-") as (raw_url, raw),
    ):
        stamp, hash_ = f"{PREFIX}/stamp", f"{PREFIX}/hash"

        async def measured(**options: Any) -> dict[str, Any]:
            """A load on ``stamp``, with what the server spent a request on it until every row is written."""
            before = _server_usage(runtime)
            result = await load(stamp, **options)
            await settle()  # every row written: the store's work for these requests is done
            result["server"] = _per_request(before, runtime, result["sent"])
            await check_stored(runtime, stamped, "POST /stamp")
            return result

        await load(stamp, rate=0, duration=2, connections=connections)  # warm up
        await settle()
        await check_stored(runtime, stamped, "POST /stamp (the warm-up)")
        for _ in range(repeat):
            runs["saturation"].append(await measured(rate=0, duration=duration, connections=connections))
            fixed = rate or round(runs["saturation"][-1]["rps"] / 2)  # half of saturation by default
            runs["fixed"].append(await measured(rate=fixed, duration=duration, connections=32))
            runs["floor"].append(
                await load(hash_, rate=0, duration=duration / 2, connections=connections, namespace="")
            )
            raw_run = await load("/stamp", to=raw_url, rate=0, duration=duration / 2, connections=connections)
            stored = raw.execute("SELECT count(*) FROM metadata_stamps").fetchone()[0]
            if stored != sum(r["sent"] for r in (*runs["raw"], raw_run)):  # every request answered, warm-ups too
                raise RuntimeError(f"raw baseline: {stored} stamps stored, not one a request sent")
            runs["raw"].append(raw_run)
    return runs


async def check_stored(runtime: Runtime, answered: int, run: str) -> None:
    """End the benchmark (SystemExit, exit status 1) unless the store holds a workflow and a stamp for each of the
    ``answered`` requests answered 200 so far (the run settled: every row written), as the raw baseline is checked: a
    gateway that answers without storing must fail, never print a figure."""
    wrong = [
        f"{table}: found {found}, expected {answered}"
        for table in ("metadata_stamps", "workflow_executions")
        if (found := await runtime.store.count(table)) != answered
    ]
    if wrong:
        raise SystemExit(f"http {run}: rows not as expected for {answered} requests answered 200: {'; '.join(wrong)}")


def _median(runs: list[dict[str, Any]], key: str) -> float:
    median: float = statistics.median(r[key] for r in runs)
    return round(median, 3)


def _server_medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    """This process (the server) a request, the medians over the repeats of ``_per_request``'s figures: CPU µs of the
    event loop's thread (main) and of the store's threads (sqlite), KiB written to disk, handler calls, store
    transactions, the event loop's thread's busy share."""
    return {key: _median([r["server"] for r in runs], key) for key in runs[0]["server"]}


def run(
    *,
    rate: float = 0.0,
    duration: float = 10.0,
    repeat: int = 3,
    connections: int = 64,
    size: int = 1024,
    synchronous_checkpoints: bool = True,
    event_loop: str = "auto",
) -> dict[str, Any]:
    """``event_loop``: the server's, as ``ONEX_EVENT_LOOP`` names ``onex run``'s (``onex.runtime.run_main``); the
    baselines run on it too."""
    from onex.runtime import chosen_loop, run_main, tune_process

    tune_process()  # as `onex run` does
    runs = run_main(_bench(rate, duration, repeat, connections, size, synchronous_checkpoints), event_loop=event_loop)
    fixed, saturation, floor, raw = runs["fixed"], runs["saturation"], runs["floor"], runs["raw"]
    errors = sum(r["errors"] for rs in runs.values() for r in rs)
    fixed_p95 = _median(fixed, "p95_ms")
    saturation_rps = _median(saturation, "rps")
    floor_rps = _median(floor, "rps")
    raw_rps = _median(raw, "rps")
    result = {
        "benchmark": "http_stamp_inprocess_sqlite",
        "content_bytes": size,
        "repeat": repeat,
        "synchronous_checkpoints": synchronous_checkpoints,
        "fixed_rate": {
            "target_rps": rate or _median(fixed, "target_rate"),  # the rate asked for; achieved_rps: answered
            "rate": "fixed" if rate else "half of each repeat's saturation",
            "achieved_rps": _median(fixed, "rps"),
            "p50_ms": _median(fixed, "p50_ms"),
            "p95_ms": fixed_p95,
            "p99_ms": _median(fixed, "p99_ms"),
            "p95_target_ms": P95_TARGET_MS,
            "p95_met": fixed_p95 < P95_TARGET_MS,
            "server_per_request": _server_medians(fixed),
        },
        "saturation": {
            "connections": connections,
            "rps": saturation_rps,
            "p50_ms": _median(saturation, "p50_ms"),
            "p95_ms": _median(saturation, "p95_ms"),
            "p99_ms": _median(saturation, "p99_ms"),
            "ratio_target": RATIO_TARGET,
            "ratio_met": bool(floor_rps) and saturation_rps / floor_rps >= RATIO_TARGET,
            "server_per_request": _server_medians(saturation),
        },
        "floor_hash_no_workflow": {"rps": floor_rps, "p50_ms": _median(floor, "p50_ms")},
        "stamp_vs_floor_ratio": round(saturation_rps / floor_rps, 3) if floor_rps else None,
        "raw_stamp": {"rps": raw_rps, "p50_ms": _median(raw, "p50_ms")},
        "stamp_vs_raw_stamp_ratio": round(saturation_rps / raw_rps, 3) if raw_rps else None,
        "errors": errors,
        "runs": runs,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()},
        "event_loop": chosen_loop(event_loop),
        "at": datetime.now(UTC).isoformat(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "http.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _print(result: dict[str, Any]) -> None:
    from onex._render import console  # piped, every cell whole
    from rich.table import Table

    fixed, sat, floor = result["fixed_rate"], result["saturation"], result["floor_hash_no_workflow"]
    raw = result["raw_stamp"]
    behind = "" if result["synchronous_checkpoints"] else ", checkpoints written behind"
    table = Table(
        title=f"POST /stamp, {result['content_bytes']} B content{behind}, median of {result['repeat']} run(s)"
    )
    for column in ("run", "req/s", "p50 ms", "p95 ms", "p99 ms", "target", "met"):
        table.add_column(column, justify="left" if column in ("run", "target") else "right")
    table.add_row(f"fixed {fixed['target_rps']:g} req/s", f"{fixed['achieved_rps']:,.0f}", f"{fixed['p50_ms']:.2f}",
                  f"{fixed['p95_ms']:.2f}", f"{fixed['p99_ms']:.2f}", f"p95 < {fixed['p95_target_ms']:g} ms",
                  "yes" if fixed["p95_met"] else "NO")  # fmt: skip
    table.add_row(f"saturation ({sat['connections']} conns)", f"{sat['rps']:,.0f}", f"{sat['p50_ms']:.2f}",
                  f"{sat['p95_ms']:.2f}", f"{sat['p99_ms']:.2f}", f">= {sat['ratio_target']:g} of /hash",
                  "yes" if sat["ratio_met"] else "NO")  # fmt: skip
    table.add_row("floor: POST /hash (no workflow)", f"{floor['rps']:,.0f}", f"{floor['p50_ms']:.2f}", "", "", "", "")
    table.add_row("raw stamp (BLAKE3, the rows, a commit)", f"{raw['rps']:,.0f}", f"{raw['p50_ms']:.2f}", "", "", "",
                  "")  # fmt: skip
    console.print(table)
    for name, spent in (("saturation", sat["server_per_request"]), ("the fixed rate", fixed["server_per_request"])):
        print(f"the server a request at {name}: CPU {spent.get('cpu_us_main', 0):.0f} µs on the event loop's thread "
              f"(busy {spent.get('loop_busy', 0):.2f} of the time), {spent.get('cpu_us_sqlite', 0):.0f} µs on the "
              f"store's threads; {spent.get('written_kib', 0):.1f} KiB written; {spent['handler_calls']:.2f} handler "
              f"calls, {spent.get('transactions', 0):.3f} store transactions")  # fmt: skip
    print(f"stamp/floor ratio {result['stamp_vs_floor_ratio']}; stamp/raw stamp ratio "
          f"{result['stamp_vs_raw_stamp_ratio']}; errors {result['errors']}; "
          f"{result['machine']['cpus']} CPU(s), load generator in a second process on the same machine; "
          f"{result['event_loop']}'s event loop")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark POST /stamp of the HTTP gateway.")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="fixed-rate run: requests/s (default: half of the saturation reached)"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64, help="saturation run: concurrent connections")
    parser.add_argument("--size", type=int, default=1024, help="bytes of content per request")
    parser.add_argument(
        "--synchronous-checkpoints",
        choices=("on", "off"),
        default="on",
        help="the server's ONEX_SYNCHRONOUS_CHECKPOINTS (default on, as onex run's)",
    )
    parser.add_argument(
        "--event-loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="the server's ONEX_EVENT_LOOP (default auto, as onex run's)",
    )
    args = parser.parse_args(argv)
    result = run(rate=args.rate, duration=args.duration, repeat=args.repeat, connections=args.connections,
                 size=args.size, synchronous_checkpoints=args.synchronous_checkpoints == "on",
                 event_loop=args.event_loop)  # fmt: skip
    _print(result)
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
