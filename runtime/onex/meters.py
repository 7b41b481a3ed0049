"""Meters: the plain counters nodes and stores keep while they work, read by ``onex.metrics`` when scraped.

Counting stays off the hot path's allocations: each node owns a ``NodeMeter`` of plain integers per event type,
updated once per handled batch (or message), each store a ``CommitMeter`` and each cache a ``CacheMeter``. Nothing
here knows Prometheus beyond the one family type ``Histogram.add_to`` fills, nor the runtime that hosts them, so
every layer may count (``tests/test_layering.py``).
"""

from __future__ import annotations

import bisect
import collections
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.core import HistogramMetricFamily

__all__ = [
    "BATCH_BUCKETS",
    "DURATION_BUCKETS",
    "CacheMeter",
    "CommitMeter",
    "DeadLetterAlert",
    "Histogram",
    "NodeMeter",
]

# Seconds; a handled batch of the shipped nodes takes from well under a millisecond to a few hundred.
DURATION_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """Observations filed into fixed buckets, in plain numbers: ``observe(value)`` costs a bisect and three adds."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.bounds = bounds
        self.count = 0
        self.total = 0.0
        self.counts = [0] * (len(bounds) + 1)

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.counts[bisect.bisect_left(self.bounds, value)] += 1

    def add_to(self, family: HistogramMetricFamily, labels: list[str]) -> None:
        """Add this histogram's cumulative buckets to ``family`` under ``labels``."""
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append((_bound(bound), cumulative))
        family.add_metric(labels, buckets, self.total)


# Rows per committed store batch: a heartbeat alone is 1, a busy adapter's group commit a few thousand.
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


class CommitMeter:
    """A store's committed batches: rows per batch and seconds from ``apply()`` to the commit (retries included)."""

    __slots__ = ("rows", "seconds")

    def __init__(self) -> None:
        self.rows = Histogram(BATCH_BUCKETS)
        self.seconds = Histogram()

    def committed(self, rows: int, seconds: float) -> None:
        self.rows.observe(rows)
        self.seconds.observe(seconds)


class _Tally:
    """One event type's numbers: handled, failed, and the handler-duration histogram (per call, not per event)."""

    __slots__ = ("durations", "failed", "handled")

    def __init__(self) -> None:
        self.handled = 0
        self.failed = 0
        self.durations = Histogram()


class NodeMeter:
    """A node's counters per event type: ``handled(type, n, seconds)`` / ``failed(...)`` after each handler call."""

    __slots__ = ("tallies",)

    def __init__(self) -> None:
        self.tallies: dict[str, _Tally] = {}

    def _tally(self, event_type: str) -> _Tally:
        tally = self.tallies.get(event_type)
        if tally is None:
            tally = self.tallies[event_type] = _Tally()
        return tally

    def handled(self, event_type: str, count: int, seconds: float) -> None:
        tally = self._tally(event_type)
        tally.handled += count
        tally.durations.observe(seconds)

    def failed(self, event_type: str, count: int, seconds: float) -> None:
        tally = self._tally(event_type)
        tally.failed += count
        tally.durations.observe(seconds)

    def totals(self) -> tuple[int, int]:
        """(handled, failed) over every event type."""
        return sum(t.handled for t in self.tallies.values()), sum(t.failed for t in self.tallies.values())


class CacheMeter:
    """A cache's hits and misses per cached lookup (``onex.cache``), for ``onex_cache_hits_total`` / ``_misses_``."""

    __slots__ = ("hits", "misses")

    def __init__(self) -> None:
        self.hits: collections.Counter[str] = collections.Counter()
        self.misses: collections.Counter[str] = collections.Counter()

    def lookups(self) -> list[tuple[str, int, int]]:
        """``(lookup, hits, misses)`` for every lookup counted, by name."""
        return [(name, self.hits[name], self.misses[name]) for name in sorted(self.hits.keys() | self.misses.keys())]


class DeadLetterAlert:
    """A node's dead letters in a sliding window: raised while more than ``threshold`` fell within ``window_s``.

    ``record()`` is called per dead letter and says whether that one raised the alert; ``raised()`` says whether it
    still stands (a window that empties clears it). ``clock`` is monotonic seconds; tests may pass their own.
    """

    __slots__ = ("_times", "clock", "threshold", "window_s")

    def __init__(self, threshold: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.window_s = window_s
        self.clock = clock
        self._times: collections.deque[float] = collections.deque()

    def _prune(self) -> int:
        horizon = self.clock() - self.window_s
        times = self._times
        while times and times[0] <= horizon:
            times.popleft()
        return len(times)

    def raised(self) -> bool:
        return self._prune() > self.threshold

    def record(self) -> bool:
        """Count one dead letter now; True if it is the one that raised the alert."""
        before = self._prune()
        self._times.append(self.clock())
        if len(self._times) > self.threshold + 1:
            self._times.popleft()  # only whether the window holds more than the threshold matters: keep it bounded
        return before == self.threshold

    def describe(self) -> str:
        return f"more than {self.threshold} dead letters in the last {self.window_s:g} s"


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
