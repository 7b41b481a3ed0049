"""Micro-benchmark: onex stamping and hashing vs raw BLAKE3 on the same bytes.

For each size (default 1 KiB, 64 KiB, 1 MiB, 64 MiB) the content is Python source text, so stamps go in place
(the common path). Timed, each as the median of several runs (``time.perf_counter``):

- ``raw``: ``blake3(data).hexdigest()``, single-threaded, the baseline of every row;
- ``stamp_bytes``: stamping the unstamped content in memory (parse the head, hash, build the new bytes);
- ``verify_bytes``: the hash path on the stamped content (find the stamp, hash around it, compare);
- ``stamp_file``: stamping a real file in a temporary directory (read, hash, write a temporary file, fsync,
  rename, fsync the directory); the file is rewritten unstamped, untimed, before every run;
- ``hash_file``: streaming hash of the stamped file from the page cache.

``ratio`` is onex time / raw time: 2.0 means onex costs twice raw BLAKE3. From ``THREADS_FROM`` (8 MiB) onex
hashes with BLAKE3's threads, so it can beat the single-threaded baseline there; the JSON also records the
threaded raw rate (``raw_mt_mb_s``) for those sizes. Results go to ``bench/results/stamps.json``.

    .venv/bin/python bench/stamps.py [--sizes 1024,65536,...] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from blake3 import blake3

from onex import stamps

SIZES = (1024, 64 * 1024, 1024 * 1024, 64 * 1024 * 1024)
RESULTS = Path(__file__).parent / "results" / "stamps.json"
LINE = b"    total = sum(value * weight for value, weight in zip(values, weights, strict=True))  # noqa\n"


def source(size: int) -> bytes:
    """``size`` bytes of plausible Python source, with a shebang so the stamp has a prefix to respect."""
    head = b"#!/usr/bin/env python3\n"
    body = LINE * ((size - len(head)) // len(LINE) + 1)
    return (head + body)[:size]


def median_time(fn: Callable[[], object], repeat: int, setup: Callable[[], object] | None = None) -> float:
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def repeats(size: int, base: int) -> int:
    # Enough runs for a stable median on small inputs without spending minutes on large ones.
    return max(5, min(base, (256 * 1024 * 1024) // max(size, 1)))


def run(sizes: Sequence[int] = SIZES, repeat: int = 200) -> list[dict[str, object]]:
    """Benchmark every size; return one row per (size, operation)."""
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="onex-bench-") as tmp:
        path = Path(tmp, "bench.py")
        for size in sizes:
            data = source(size)
            n = repeats(size, repeat)
            stamped, _ = stamps.stamp_bytes(data, file_name="bench.py")
            raw = median_time(lambda: blake3(data).hexdigest(), n)
            raw_mt = median_time(lambda: blake3(data, max_threads=blake3.AUTO).hexdigest(), n)
            timings = {
                "stamp_bytes": median_time(lambda: stamps.stamp_bytes(data, file_name="bench.py"), n),
                "verify_bytes": median_time(lambda: stamps.verify_bytes(stamped, file_name="bench.py"), n),
                "stamp_file": median_time(
                    lambda: stamps.stamp_file(path), max(5, n // 4), setup=lambda: path.write_bytes(data)
                ),
            }
            path.write_bytes(stamped)
            timings["hash_file"] = median_time(lambda: stamps.hash_file(path), n)
            assert stamps.hash_file(path) == blake3(data).hexdigest()
            for op, seconds in timings.items():
                rows.append(
                    {
                        "size": size,
                        "op": op,
                        "seconds": seconds,
                        "raw_seconds": raw,
                        "raw_mb_s": size / raw / 1e6,
                        "onex_mb_s": size / seconds / 1e6,
                        "ratio": seconds / raw,
                        **({"raw_mt_mb_s": size / raw_mt / 1e6} if size >= stamps.THREADS_FROM else {}),
                    }
                )
    return rows


def human(size: int) -> str:
    return f"{size // (1024 * 1024)} MiB" if size >= 1024 * 1024 else f"{size // 1024} KiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    rows = run([int(s) for s in args.sizes.split(",")], args.repeat)
    print(f"{'size':>8}  {'operation':<13} {'raw MB/s':>10} {'onex MB/s':>10} {'ratio':>7}  {'onex time':>10}")
    for row in rows:
        size, seconds = int(str(row["size"])), float(str(row["seconds"]))
        print(
            f"{human(size):>8}  {row['op']!s:<13} {float(str(row['raw_mb_s'])):>10,.0f} "
            f"{float(str(row['onex_mb_s'])):>10,.0f} {float(str(row['ratio'])):>7.2f}  {seconds * 1e3:>8.3f}ms"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
