"""Benchmark: what one stamp costs in calls, counted by cProfile, onex against the raw floor of ``bench/e2e.py``.

Issue 12 counted, per item of the ceiling run, the calls that made the hot path slow: pydantic validations, models
built, random ids, envelopes, ``isinstance``. This counts them again, in the event loop's thread, for any commit: each
count is the difference between a run of ``--items`` and one of ``--base`` items, divided by the difference in items,
so that the start (imports, contracts, the runtime's start and stop) cancels out. The runs:

- onex ceiling: ``bench/e2e.py``'s ceiling run (every node in process on the memory bus, every store write discarded);
- onex, every row persisted: ``bench/e2e.py``'s onex run on SQLite (its writer process is another process, not
  counted: what the event loop's thread calls);
- raw floor: ``bench/e2e.py``'s floor (BLAKE3 and ``executemany`` of the same rows).

What a stamp costs, counted:

- calls: every call cProfile sees, of a Python function or of a builtin (C) function or method;
- Python calls: those of Python functions alone;
- validations: pydantic's (``SchemaValidator.validate_python``, ``validate_json``, ``validate_strings``);
- envelopes and payloads built without validation (``OnexEnvelopeV1.built``, ``Payload.built``);
- ids: time-ordered (``new_id``), random (``random_id`` and ``uuid.uuid4``), derived (``derived_from``,
  ``derived_at``, ``derived_after``);
- ``isinstance``.

The counts do not depend on the machine's speed, but the batches do (how many events a handler call takes depends on
how many wait together), so counts of what a batch does (calls, ``isinstance``) move by a few per cent between runs
and those of what a stamp does (validations, envelopes, ids) do not. onex runs as it does outside the test suite:
``onex.envelope.CHECK_BUILT`` off.

Prints the counts a stamp, the floor's calls an item and the ratio, and the functions called most a stamp in the
ceiling run; writes ``bench/results/calls.json``.

    .venv/bin/python bench/calls.py [--items N] [--base M] [--top K]

About a minute with the defaults (6,000 and 2,000 items); ``count(kind, items, base)`` is what a test calls, and
``run(**options) -> dict`` the entry point for ``bench/run.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import platform
import pstats
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onex.envelope
from onex.envelope import OnexEnvelopeV1, Payload
from onex.runtime import tune_process

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for `bench.e2e` when run as a script

from bench import e2e, instructions  # noqa: E402 - needs ROOT on sys.path

RESULTS = ROOT / "bench" / "results"
RUNS = ("ceiling", "persisted", "floor")  # three of bench/instructions.py's (the module docstring says what each is)
# A cProfile entry: (file, line, name); a builtin's file is "~".
Key = tuple[str, int, str]


def _key(function: Callable[..., Any]) -> Key:
    code = getattr(function, "__func__", function).__code__
    return code.co_filename, code.co_firstlineno, code.co_name


# What is counted by name (builtins, whose entries have no file) and by function (onex's own).
_BUILTINS = {
    "validations": tuple(
        f"<method '{m}' of 'pydantic_core._pydantic_core.SchemaValidator' objects>"
        for m in ("validate_python", "validate_json", "validate_strings")
    ),
    "isinstance": ("<built-in method builtins.isinstance>",),
}
_FUNCTIONS: dict[str, tuple[Callable[..., Any], ...]] = {
    "envelopes_built": (OnexEnvelopeV1.built,),
    "payloads_built": (Payload.built,),
    "new_ids": (onex.envelope.new_id,),
    "random_ids": (onex.envelope.random_id, uuid.uuid4),
    "derived_ids": (onex.envelope.derived_from, onex.envelope.derived_at, onex.envelope.derived_after),
}
COUNTED = ("calls", "python_calls", *_BUILTINS, *_FUNCTIONS)


@contextlib.contextmanager
def _as_deployed() -> Iterator[None]:
    """``CHECK_BUILT`` off, as onex runs outside the test suite (which turns it on: every envelope built unvalidated is
    validated again and compared, validations this must not count)."""
    checked, onex.envelope.CHECK_BUILT = onex.envelope.CHECK_BUILT, False
    try:
        yield
    finally:
        onex.envelope.CHECK_BUILT = checked


def profile(kind: str, items: int) -> pstats.Stats:
    """cProfile's statistics of one run of ``kind`` over ``items`` items (``bench/instructions.py``'s ``run_kind``),
    on this thread (only: the loop's)."""
    data = e2e.make_items(items)
    profiler = cProfile.Profile()
    with tempfile.TemporaryDirectory(prefix="onex-bench-") as tmp, _as_deployed():
        profiler.enable()
        try:
            instructions.run_kind(kind, data, Path(tmp))
        finally:
            profiler.disable()
    return pstats.Stats(profiler)


def tally(stats: pstats.Stats) -> Counter[str]:
    """What ``COUNTED`` names, and every function's calls (under its ``file:line(name)``), in ``stats``."""
    by_key: dict[Key, int] = {key: calls for key, (_, calls, *_) in stats.stats.items()}  # type: ignore[attr-defined]
    found: Counter[str] = Counter()
    found["calls"] = sum(by_key.values())
    found["python_calls"] = sum(calls for (file, _, _), calls in by_key.items() if file != "~")
    for name, builtins in _BUILTINS.items():
        found[name] = sum(by_key.get(("~", 0, builtin), 0) for builtin in builtins)
    for name, functions in _FUNCTIONS.items():
        found[name] = sum(by_key.get(_key(function), 0) for function in functions)
    for (file, line, name), calls in by_key.items():
        found[f"{Path(file).name}:{line}({name})" if file != "~" else name] += calls
    return found


def count(kind: str, items: int, base: int) -> dict[str, float]:
    """Each count of ``tally`` a stamp (an item, for the floor): the run of ``items`` minus that of ``base``."""
    if not 0 < base < items:
        raise ValueError(f"base {base} must be above 0 and below items {items}")
    profile(kind, base)  # first, unused: what a process does once (imports, caches filled) falls in this run
    small, large = tally(profile(kind, base)), tally(profile(kind, items))
    return {name: round((large[name] - small[name]) / (items - base), 2) for name in large.keys() | small.keys()}


def run(*, items: int = 6_000, base: int = 2_000, top: int = 15) -> dict[str, Any]:
    tune_process()  # as `onex stamp` / `onex run` do
    counted = {}
    for kind in RUNS:
        print(f"counting {kind}: {base:,} and {items:,} items...", flush=True)
        counted[kind] = count(kind, items, base)
    ceiling = counted["ceiling"]
    most = sorted((n for n in ceiling if n not in COUNTED), key=lambda n: -ceiling[n])[:top]
    result = {
        "benchmark": "calls",
        "items": items,
        "base_items": base,
        "per_stamp": {
            kind: {name: counted[kind].get(name, 0.0) for name in COUNTED} for kind in ("ceiling", "persisted")
        },
        "floor_calls_per_item": counted["floor"]["calls"],
        "ratio_floor_over_ceiling": round(counted["floor"]["calls"] / ceiling["calls"], 3),
        "ratio_floor_over_persisted": round(counted["floor"]["calls"] / counted["persisted"]["calls"], 3),
        "most_called_in_the_ceiling": {name: ceiling[name] for name in most},
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
        "at": datetime.now(UTC).isoformat(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "calls.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


LABELS = {
    "calls": "calls",
    "python_calls": "  of them Python functions",
    "validations": "pydantic validations",
    "envelopes_built": "envelopes built unvalidated",
    "payloads_built": "payloads built unvalidated",
    "new_ids": "ids: new (time-ordered)",
    "random_ids": "     random",
    "derived_ids": "     derived",
    "isinstance": "isinstance",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=6_000)
    parser.add_argument("--base", type=int, default=2_000, help="the smaller run, subtracted (default 2,000)")
    parser.add_argument("--top", type=int, default=15, help="the functions called most a stamp to list (default 15)")
    args = parser.parse_args()
    result = run(items=args.items, base=args.base, top=args.top)
    ceiling, persisted = result["per_stamp"]["ceiling"], result["per_stamp"]["persisted"]
    title = f"A stamp, in the event loop's thread (cProfile; {args.items:,} items minus {args.base:,})"
    print(f"\n{title:<44}   ceiling  persisted")
    for name, label in LABELS.items():
        print(f"  {label:<44}{ceiling[name]:>10,.2f}{persisted[name]:>11,.2f}")
    print(f"  {'raw floor: calls an item':<44}{result['floor_calls_per_item']:>10,.2f}")
    ratios = result["ratio_floor_over_ceiling"], result["ratio_floor_over_persisted"]
    print(f"  {'ratio floor / onex, calls':<44}{ratios[0]:>10}{ratios[1]:>11}")
    print("\nCalled most a stamp in the ceiling run:")
    for name, calls in result["most_called_in_the_ceiling"].items():
        print(f"  {calls:>8,.2f}  {name}")
    print("  -> bench/results/calls.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
