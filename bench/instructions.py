"""Benchmark: CPU instructions per stamp, onex against the raw floor of ``bench/e2e.py``, counted by Valgrind.

Timings on this machine move by 30 % and more between runs, so a change of a few per cent to the hot path cannot be
told from the noise by ``bench/e2e.py`` alone. Instructions executed can: each run below is a child Python process
under ``valgrind --tool=callgrind`` (``PYTHONHASHSEED=0``), whose count moves by a few tenths of a per cent between
runs. What is counted per item is the difference between a run of ``--items`` and one of ``--base`` items, divided
by the difference in items, so the start (imports, contracts, migrations) cancels out:

- onex ceiling: ``bench/e2e.py``'s ceiling run (every node in process on the memory bus, every store write
  discarded): the node graph's own work, envelopes, validation, the FSM, the bus;
- onex ceiling without checkpoints: the same with ``checkpoints=False`` (``ONEX_CHECKPOINTS=off``);
- onex, every row persisted: ``bench/e2e.py``'s onex run on SQLite (the store's writer process's instructions, SQLite's
  included, are counted too); and the same with the orchestrator's checkpoints written behind its batches
  (``ONEX_SYNCHRONOUS_CHECKPOINTS=off``);
- raw floor: ``bench/e2e.py``'s floor (BLAKE3 and ``executemany`` of the same rows).

An instruction is not a unit of time (the floor spends more of its time waiting on memory and the disk than the node
graph does, and so runs fewer instructions per second), so the ratio here is not the ratio of ``bench/e2e.py``; it
is the figure that tells whether a change made the hot path cheaper.

Not counted here: the persisted run one workflow at a time (a lone HTTP request's cost), which ``bench/e2e.py``
times natively instead. Under Valgrind its count moved by a third between runs of the same code (2.8 to 4.1 million
instructions a stamp, 600 items minus 200; six runs of 600 items 5.76 to 6.35 G in all): one at a time, what a stamp
costs depends on how the nodes' batches and the writer's transactions happen to fall together, which thread timing
decides, and Valgrind runs one thread at a time.

Each count is also given for the event loop's thread alone (``--separate-threads=yes``: the run's first thread, where
every node runs): the persisted run's speed is bound by that thread, and work moved off it to the store's writer
process leaves the total as it was but the loop's count lower.

Prints instructions per item and the ratios floor / onex; writes ``bench/results/instructions.json``. Skips (exit 0)
when Valgrind is not installed.

    .venv/bin/python bench/instructions.py [--items N] [--base M] [--jobs J]

About 7 minutes with the defaults (2,500 and 500 items, two runs at a time); ``run(**options) -> dict`` is the
entry point for ``bench/run.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from onex.runtime import run_main, tune_process

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for `bench.e2e` when run as a script

from bench import e2e  # noqa: E402 - needs ROOT on sys.path

RESULTS = ROOT / "bench" / "results"
RUNS = {  # what a child runs, and how the table names it
    "ceiling": "onex ceiling (writes discarded)",
    "ceiling_no_checkpoints": "onex ceiling without checkpoints",
    "persisted": "onex, every row persisted (SQLite)",
    "persisted_behind": "the same, checkpoints written behind",
    "floor": "raw floor (blake3 + executemany)",
}
_COLLECTED = re.compile(rb"Collected : (\d+)")


def child(kind: str, items: int) -> None:
    """In the process Valgrind counts: one run of ``kind`` over ``items`` items."""
    data = e2e.make_items(items)
    tune_process()
    with tempfile.TemporaryDirectory(prefix="onex-bench-") as tmp:
        try:
            run_kind(kind, data, Path(tmp))
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None


def run_kind(kind: str, data: list[str], directory: Path) -> None:
    """One run of ``kind`` (``RUNS``) over ``data``, its database in ``directory``; SystemExit (``e2e.check_rows``)
    when a row or a workflow was lost. ``bench/calls.py`` profiles the same runs."""
    if kind == "floor":
        e2e.run_raw(data, directory / "raw.db")
        return
    _, counts = run_main(  # on the loop a command runs on (ONEX_EVENT_LOOP's default)
        e2e.run_onex(
            data,
            f"sqlite:///{directory}/onex.db",
            discard=kind.startswith("ceiling"),
            checkpoints=kind != "ceiling_no_checkpoints",
            synchronous=kind != "persisted_behind",
        )
    )
    # Every table of a persisted run, as bench/e2e.py checks its own; the ceilings' store keeps nothing.
    e2e.check_rows(kind, counts, len(data), stored=kind.startswith("persisted"))


class Counted(NamedTuple):
    """What callgrind counted in one run: every thread and process (``total``), and the event loop's thread alone
    (``loop``: the first thread of the run's own process, where the nodes run and which bounds the run's speed)."""

    total: int
    loop: int


def count(kind: str, items: int) -> Counted:
    """Instructions a child process running ``kind`` over ``items`` items executed, as callgrind counts them."""
    with tempfile.TemporaryDirectory(prefix="onex-callgrind-") as out:
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}/callgrind.%p",
            "--separate-threads=yes",  # a file a thread: the event loop's is counted apart (loop_count)
            "--trace-children=yes",  # the SQLite store's writer process: its instructions are the persisted run's too
            sys.executable,
            __file__,
            "--child",
            kind,
            "--items",
            str(items),
        ]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, capture_output=True, env=env, cwd=ROOT, check=False)
        found = _COLLECTED.findall(done.stderr)  # one a process: this run's and its writer process's, if it started one
        if done.returncode or not found:
            tail = done.stderr.decode(errors="replace")[-2000:]
            raise RuntimeError(f"{kind} over {items} items failed (exit {done.returncode}):\n{tail}")
        return Counted(sum(int(n) for n in found), loop_count(Path(out)))


def loop_count(out: Path) -> int:
    """The instructions of the run's first thread, from callgrind's files in ``out`` (``callgrind.PID-NN``, one a
    thread of each process): the thread numbered 1 of the process whose command is this script's child."""
    for path in sorted(out.glob("callgrind.*-01")):
        text = path.read_text(errors="replace")
        if "--child" in _field(text, "cmd") and _field(text, "thread") == "1":
            return int(_field(text, "totals"))
    raise RuntimeError(f"no event loop's thread among callgrind's files in {out}")


def _field(text: str, name: str) -> str:
    """The value of a callgrind file's header line ``name: value``; "" where it has none."""
    found = re.search(rf"^{name}: *(.*)$", text, re.MULTILINE)
    return found.group(1) if found else ""


def run(*, items: int = 2_500, base: int = 500, jobs: int = 2) -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        return {"benchmark": "instructions", "skipped": "valgrind is not installed"}
    if not 0 < base < items:
        raise ValueError(f"--base {base} must be above 0 and below --items {items}")
    work = [(kind, n) for kind in RUNS for n in (base, items)]
    print(f"counting {len(work)} runs under valgrind, {jobs} at a time...", flush=True)
    with ThreadPoolExecutor(jobs) as pool:
        counted = dict(zip(work, pool.map(lambda job: count(*job), work), strict=True))
    per_item = {kind: (counted[kind, items].total - counted[kind, base].total) / (items - base) for kind in RUNS}
    loop = {kind: (counted[kind, items].loop - counted[kind, base].loop) / (items - base) for kind in RUNS}
    result = {
        "benchmark": "instructions",
        "items": items,
        "base_items": base,
        "instructions_per_item": {kind: round(value) for kind, value in per_item.items()},
        "event_loop_instructions_per_item": {kind: round(value) for kind, value in loop.items()},
        "ratio_floor_over_ceiling": round(per_item["floor"] / per_item["ceiling"], 3),
        "ratio_floor_over_persisted": round(per_item["floor"] / per_item["persisted"], 3),
        "ratio_floor_over_persisted_behind": round(per_item["floor"] / per_item["persisted_behind"], 3),
        "checkpoints_share_of_ceiling": round(1 - per_item["ceiling_no_checkpoints"] / per_item["ceiling"], 3),
        "instructions": {f"{kind}/{n}": value.total for (kind, n), value in counted.items()},
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
        "at": datetime.now(UTC).isoformat(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "instructions.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=2_500)
    parser.add_argument("--base", type=int, default=500, help="the smaller run, subtracted (default 500)")
    parser.add_argument("--jobs", type=int, default=2, help="runs under valgrind at a time (default 2)")
    parser.add_argument("--child", choices=sorted(RUNS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.items)
        return 0
    result = run(items=args.items, base=args.base, jobs=args.jobs)
    if "skipped" in result:
        print(f"skipped: {result['skipped']}")
        return 0
    per_item = result["instructions_per_item"]
    loop = result["event_loop_instructions_per_item"]
    print(f"\nInstructions per item (callgrind; {args.items:,} items minus {args.base:,})    all   event loop")
    for kind, label in RUNS.items():
        print(f"  {label:<44}{per_item[kind]:>12,}{loop[kind]:>13,}")
    print(f"  {'ratio floor / onex ceiling':<44}{result['ratio_floor_over_ceiling']:>12}")
    print(f"  {'ratio floor / onex persisted':<44}{result['ratio_floor_over_persisted']:>12}")
    print(f"  {'ratio floor / onex persisted, behind':<44}{result['ratio_floor_over_persisted_behind']:>12}")
    print(f"  {'checkpoints, share of the ceiling':<44}{result['checkpoints_share_of_ceiling']:>12.1%}")
    print("  -> bench/results/instructions.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
