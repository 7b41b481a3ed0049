"""Run every benchmark, each in its own process, and print what each measured against its raw baseline.

    .venv/bin/python bench/run.py [NAME ...]      # e.g. `bench/run.py e2e stamps`; default: all

Each benchmark prints its own table and writes ``bench/results/<name>.json``. Benchmarks that need a service that
is not there (PostgreSQL, the Kafka broker binary) say so and are skipped. Timings are not asserted anywhere: read
the ratios, which compare against a raw baseline measured in the same run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Cheapest first; the end-to-end runs last because it takes longest.
ORDER = (
    "stamps",
    "bus_memory",
    "decode",
    "store_sqlite",
    "store_postgres",
    "bus_kafka",
    "e2e",
    "e2e_postgres",
    "multiprocess",
    "metastore",
    "http",
    "calls",
    "instructions",
)
# Benchmarks that are another script with arguments.
VARIANTS = {
    "e2e_postgres": (
        "e2e.py",
        "--store",
        os.environ.get("ONEX_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"),
    ),
}


def main(argv: list[str]) -> int:
    def command(name: str) -> list[str] | None:
        script, *args = VARIANTS.get(name, (f"{name}.py",))
        return [sys.executable, str(HERE / script), *args] if (HERE / script).exists() else None

    wanted = argv or [name for name in ORDER if command(name)]
    failed = []
    for name in wanted:
        cmd = command(name)
        if cmd is None:
            print(f"== {name}: no such benchmark")
            failed.append(name)
            continue
        print(f"\n== {name} ==", flush=True)
        started = time.perf_counter()
        code = subprocess.call(cmd, cwd=HERE.parent)
        print(f"-- {name}: exit {code} in {time.perf_counter() - started:.1f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
