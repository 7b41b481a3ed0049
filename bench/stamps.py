"""Micro-benchmark: onex stamping and hashing vs raw BLAKE3 on the same bytes.

For each size (default 1 KiB, 64 KiB, 1 MiB, 64 MiB) the content is Python source text, so stamps go in place
(the common path). Timed, each as the median of several runs (``time.perf_counter``):

- ``raw``: ``blake3(data).hexdigest()``, single-threaded, the baseline of every row;
- ``stamp_bytes``: stamping the unstamped content in memory (parse the head, hash, build the new bytes);
- ``verify_bytes``: the hash path on the stamped content (find the stamp, hash around it, compare);
- ``stamp_file``: stamping a real file in a temporary directory (read, hash, write a temporary file, fsync,
  rename, fsync the directory); the file is rewritten unstamped, untimed, before every run;
- ``hash_file``: streaming hash of the stamped file from the page cache.

``ratio`` is onex time / raw time (the median over runs that alternate the two): 2.0 means onex costs twice
raw BLAKE3. From ``THREADS_FROM`` (8 MiB) onex
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


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired(
    fn: Callable[[], object], raw: Callable[[], object], repeat: int, setup: Callable[[], object] | None = None
) -> tuple[float, float, float]:
    """Medians of ``fn``'s and ``raw``'s times and of their ratio, run alternately.

    Alternating puts both under the same load at the same moment (this machine is shared), and the median of
    the per-pair ratios is steadier than the ratio of two medians taken minutes apart.
    """
    ours, base, ratios = [], [], []
    for _ in range(repeat):
        if setup is not None:
            setup()
        t = timed(fn)
        r = timed(raw)
        ours.append(t)
        base.append(r)
        ratios.append(t / r)
    return statistics.median(ours), statistics.median(base), statistics.median(ratios)


def repeats(size: int, base: int) -> int:
    # Enough runs for a stable median on small inputs without spending minutes on large ones.
    return max(5, min(base, (256 * 1024 * 1024) // max(size, 1)))


def measure(size: int, path: Path, repeat: int) -> list[dict[str, object]]:
    """All operations on ``size`` bytes; ``path`` is a scratch file."""
    data = source(size)
    n = repeats(size, repeat)
    stamped, _ = stamps.stamp_bytes(data, file_name=path.name)

    def raw() -> str:
        return blake3(data).hexdigest()

    warm_raw = statistics.median(timed(raw) for _ in range(n))
    raw_mt = statistics.median(timed(lambda: blake3(data, max_threads=blake3.AUTO).hexdigest()) for _ in range(n))
    timings = {
        "stamp_bytes": paired(lambda: stamps.stamp_bytes(data, file_name=path.name), raw, n),
        "verify_bytes": paired(lambda: stamps.verify_bytes(stamped, file_name=path.name), raw, n),
    }
    # File operations are compared with the warm, tight-loop raw time: right after an fsync the raw hash runs
    # slower too, and pairing would flatter onex.
    file_ops: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "stamp_file": (lambda: stamps.stamp_file(path), lambda: path.write_bytes(data)),
        "hash_file": (lambda: stamps.hash_file(path), lambda: None),
    }
    path.write_bytes(stamped)
    for op, (fn, setup) in file_ops.items():
        times = []
        for _ in range(max(5, n // 4)):
            setup()
            times.append(timed(fn))
        seconds = statistics.median(times)
        timings[op] = (seconds, warm_raw, seconds / warm_raw)
        path.write_bytes(stamped)
    assert stamps.hash_file(path) == blake3(data).hexdigest()
    assert stamps.verify_file(path).status == "valid"
    return [
        {
            "size": size,
            "op": op,
            "seconds": seconds,
            "raw_seconds": raw_seconds,
            "raw_mb_s": size / raw_seconds / 1e6,
            "onex_mb_s": size / seconds / 1e6,
            "ratio": ratio,
            **({"raw_mt_mb_s": size / raw_mt / 1e6} if size >= stamps.THREADS_FROM else {}),
        }
        for op, (seconds, raw_seconds, ratio) in timings.items()
    ]


def run(sizes: Sequence[int] = SIZES, repeat: int = 200) -> list[dict[str, object]]:
    """Benchmark every size; return one row per (size, operation)."""
    with tempfile.TemporaryDirectory(prefix="onex-bench-") as tmp:
        return [row for size in sizes for row in measure(size, Path(tmp, "bench.py"), repeat)]


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
