"""Service-level objectives: a contract's ``performance_requirements``, measured while its node runs.

Each node owns an ``SloMonitor`` (``Node.slo``). Its handler wrappers call ``record(seconds, items)`` after every
handler call (a batch handler's call is one call), on the node's clock; each heartbeat calls ``check()``, which
evaluates the objectives over the rolling window, logs ``slo_breach`` (WARNING) when an objective starts being
breached and ``slo_recovered`` (INFO) when it stops, and keeps the report the heartbeat's health reads
(``Node.health()`` says DEGRADED while ``last`` is breached). ``/metrics`` evaluates afresh when scraped
(``onex_slo_breached``, ``onex_slo_measured``, ``onex_slo_target``), as the dead-letter alert's gauge is.

The objectives, named after the contract keys they come from:

- ``execution_time.target_ms``: the ``percentile`` (nearest rank) of the window's call durations, in ms, must not
  exceed ``target_ms``; judged once the window holds enough calls for the percentile not to be simply the longest
  one (20 for p95, ``ceil(100 / (100 - percentile))``): fewer calls, a cold start's say, are ``max_ms``'s to judge.
- ``execution_time.max_ms``: the longest call of the window, in ms, must not exceed ``max_ms``.
- ``throughput_items_per_s``: items handled (successfully) per second over the window must reach the minimum;
  judged only when the node was saturated: some handler call was in progress for at least ``SATURATED`` of a full
  window. A saturated node had work waiting all along (the bus hands it the next message as soon as a call
  returns), so its rate is what it can do; a node idle part of the window kept up with what arrived, and a low
  rate then says nothing against it. The consumer lag (``EventBus.lag()``) is not used: it is one reading at the
  heartbeat (a burst that just arrived lags, yet the window's rate is low for want of work, not of speed), and the
  memory bus reports none.
- ``memory_usage.max_mb``: the resident set size of the whole process, in MB (2**20 bytes), read at evaluation;
  every node the process hosts shares it.

Memory stays bounded and ``record`` stays O(1): the window is kept as ``SLOTS`` time slots of ``window_ms /
SLOTS`` each, reused in a ring. A slot holds the calls, items, busy seconds and longest call that ended in it and,
when ``target_ms`` is set, a histogram of durations in fixed geometric buckets (ratio 2**(1/8), about 9 %) with
``target_ms`` itself as a bucket bound. Buckets rather than a ring of the last N samples: a busy node makes tens of
thousands of calls a minute, and a ring of N would judge the last few seconds, not the window; with the target as
a bound, whether the percentile is within the target is decided exactly, and only the measured value reported is
rounded up to its bucket's bound (never above the longest call). The window slides a slot at a time: it covers
between ``SLOTS - 1`` and ``SLOTS`` slots, and the rate is computed over exactly the time it covers.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass

from onex.clock import Clock
from onex.contracts import PerformanceRequirements
from onex.logs import event

__all__ = [
    "EXECUTION_TIME",
    "EXECUTION_TIME_MAX",
    "MEMORY",
    "SATURATED",
    "SLOTS",
    "THROUGHPUT",
    "Objective",
    "SloMonitor",
    "SloReport",
    "min_calls",
    "rank",
    "rss_mb",
]

_log = logging.getLogger("onex.slo")

SLOTS = 60
# The share of a full window a node's handlers must have been busy for its throughput to be judged: not 1.0, as the
# bus's own work between two calls (taking the next message, committing) is idle time to the node even with a
# backlog; a node keeping up at 90 % utilisation or more is within 11 % of its capacity.
SATURATED = 0.9

EXECUTION_TIME = "execution_time.target_ms"
EXECUTION_TIME_MAX = "execution_time.max_ms"
THROUGHPUT = "throughput_items_per_s"
MEMORY = "memory_usage.max_mb"

# Duration bucket bounds in seconds: 1 us to about 1.3 hours in steps of 2**(1/8); the targets are added to them.
_BOUNDS: tuple[float, ...] = tuple(1e-6 * 2 ** (i / 8) for i in range(260))
_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 4096 / 2**20


def rss_mb() -> float:
    """The resident set size of this process in MB (2**20 bytes): now, from ``/proc/self/statm`` where it exists;
    elsewhere the peak (``getrusage``), the closest the platform tells."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_MB
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def rank(percentile: float, calls: int) -> int:
    """Which of ``calls`` durations, shortest first, is their ``percentile`` (nearest rank, from 1)."""
    return max(1, math.ceil(percentile / 100 * calls - 1e-9))  # 99.9 % of 1000 is 999, not 999.0000000000001


def min_calls(percentile: float) -> int:
    """The fewest calls whose ``percentile`` is not simply the longest of them: 20 for p95; 1 for p100."""
    if percentile >= 100:
        return 1
    calls = max(1, math.floor(100 / (100 - percentile)))
    while rank(percentile, calls) >= calls:
        calls += 1
    return calls


@dataclass(frozen=True, slots=True)
class Objective:
    """One objective as evaluated: ``measured`` against ``target`` in ``unit``.

    ``judged`` is False when the window gave nothing to judge (no call, or for throughput a node that was not
    saturated); such an objective is never breached. ``minimum`` says the measure must reach the target rather than
    stay within it (throughput); ``statistic`` says what was measured (``p95``, ``max``), if anything needs saying.
    """

    name: str
    target: float
    measured: float
    unit: str
    judged: bool
    breached: bool
    minimum: bool = False
    statistic: str = ""

    def describe(self) -> str:
        """``execution_time.target_ms: p95 130 ms > 100 ms``: words for a log line, a heartbeat or /readyz."""
        sign = {(False, False): "<=", (False, True): ">", (True, False): ">=", (True, True): "<"}[
            (self.minimum, self.breached)
        ]
        what = f"{self.statistic} " if self.statistic else ""
        if not self.judged:  # no call in the window, or a node that was not saturated
            return f"{self.name}: {what}{self.measured:.4g} {self.unit}, not judged"
        return f"{self.name}: {what}{self.measured:.4g} {self.unit} {sign} {self.target:g} {self.unit}"


@dataclass(frozen=True, slots=True)
class SloReport:
    """The objectives of one node at one evaluation."""

    node: str
    objectives: tuple[Objective, ...] = ()

    @property
    def breached(self) -> bool:
        return any(o.breached for o in self.objectives)

    def breaches(self) -> tuple[Objective, ...]:
        return tuple(o for o in self.objectives if o.breached)

    @property
    def reason(self) -> str:
        """One line naming every breached objective with its measure and target; empty when none is."""
        return "; ".join(o.describe() for o in self.objectives if o.breached)


class SloMonitor:
    """Measures one node's handler calls against its contract's ``performance_requirements`` (module docstring).

    ``clock`` is the node's: durations given to ``record`` must be measured on it. ``node`` names the node in the
    log lines. ``rss`` reads the process's resident set size in MB (``rss_mb``).
    """

    __slots__ = (
        "_bins",
        "_bounds",
        "_busy",
        "_calls",
        "_covered_to",
        "_created",
        "_index",
        "_items",
        "_longest",
        "_off",
        "_slot",
        "_slot_s",
        "_target_bin",
        "clock",
        "last",
        "node",
        "requirements",
        "rss",
    )

    def __init__(
        self,
        requirements: PerformanceRequirements,
        clock: Clock,
        *,
        node: str = "",
        rss: Callable[[], float] = rss_mb,
    ) -> None:
        self.requirements = requirements
        self.clock = clock
        self.node = node
        self.rss = rss
        self.last = SloReport(node)  # the report of the last check(): what the heartbeat's health reads
        self._off = not self.active  # most contracts set no objective: their calls cost one test here
        self._slot_s = requirements.window_ms / 1000 / SLOTS
        self._created = clock.monotonic()
        self._slot = int(self._created // self._slot_s)
        self._index = self._slot % SLOTS
        self._calls = [0] * SLOTS
        self._items = [0] * SLOTS
        self._busy = [0.0] * SLOTS
        self._longest = [0.0] * SLOTS
        self._covered_to = self._created  # busy time is counted once when calls overlap: up to here it was
        timing = requirements.execution_time
        target_ms = timing.target_ms if timing is not None else None
        self._bounds: tuple[float, ...] = ()
        self._target_bin = 0
        self._bins: list[list[int]] | None = None
        if target_ms is not None:
            target_s = target_ms / 1000
            self._bounds = tuple(sorted({*_BOUNDS, target_s}))
            self._target_bin = self._bounds.index(target_s)  # calls <= target are in bins [0, _target_bin]
            self._bins = [[0] * (len(self._bounds) + 1) for _ in range(SLOTS)]

    @property
    def active(self) -> bool:
        """Whether the contract sets any objective; a monitor without one ignores ``record`` and reports none."""
        r = self.requirements
        return r.execution_time is not None or r.throughput_items_per_s is not None or r.memory_usage is not None

    def record(self, seconds: float, items: int, *, at: float | None = None) -> None:
        """Count one handler call of ``seconds`` (on the node's clock) that handled ``items`` (0 when it failed),
        ending now (or at ``at``, a reading of the clock the caller already made). O(1), allocates nothing."""
        if self._off:
            return
        now = self.clock.monotonic() if at is None else at
        slot = int(now // self._slot_s)
        if slot != self._slot:
            self._advance(slot)
        i = self._index
        self._calls[i] += 1
        self._items[i] += items
        if seconds > self._longest[i]:
            self._longest[i] = seconds
        start = now - seconds
        covered = self._covered_to
        if now > covered:
            self._busy[i] += now - (start if start > covered else covered)
            self._covered_to = now
        if self._bins is not None:
            self._bins[i][bisect.bisect_left(self._bounds, seconds)] += 1

    def _advance(self, slot: int) -> None:
        """Make ``slot`` the current one, emptying the slots between (the ones that left the window)."""
        if slot <= self._slot:
            return  # a clock read before another was recorded after it: count it in the current slot
        for k in range(self._slot + 1, self._slot + 1 + min(slot - self._slot, SLOTS)):
            i = k % SLOTS
            self._calls[i] = self._items[i] = 0
            self._busy[i] = self._longest[i] = 0.0
            if self._bins is not None:
                bins = self._bins[i]
                for b in range(len(bins)):
                    bins[b] = 0
        self._slot = slot
        self._index = slot % SLOTS

    def evaluate(self) -> SloReport:
        """Every objective the contract sets, measured over the window ending now; logs nothing."""
        now = self.clock.monotonic()
        self._advance(int(now // self._slot_s))
        req = self.requirements
        calls = sum(self._calls)
        objectives: list[Objective] = []
        timing = req.execution_time
        if timing is not None and timing.target_ms is not None:
            assert self._bins is not None
            enough = calls > 0 and calls >= min_calls(timing.percentile)
            measured, breached = self._percentile(timing.percentile, calls)
            p = f"p{timing.percentile:g}"
            objectives.append(
                Objective(EXECUTION_TIME, timing.target_ms, measured, "ms", enough, enough and breached, False, p)
            )
        if timing is not None and timing.max_ms is not None:
            longest = max(self._longest) * 1000
            over = longest > timing.max_ms
            objectives.append(
                Objective(EXECUTION_TIME_MAX, timing.max_ms, longest, "ms", calls > 0, over, False, "max")
            )
        if req.throughput_items_per_s is not None:
            window_start = max((self._slot - SLOTS + 1) * self._slot_s, self._created)
            span = now - window_start
            rate = sum(self._items) / span if span > 0 else 0.0
            # Judged on a full window only: a node that just started has not shown what it does when saturated.
            full = now - self._created >= req.window_ms / 1000
            saturated = full and span > 0 and sum(self._busy) >= SATURATED * span
            target = req.throughput_items_per_s
            objectives.append(
                Objective(THROUGHPUT, target, rate, "items/s", saturated, saturated and rate < target, True)
            )
        if req.memory_usage is not None:
            mb = self.rss()
            objectives.append(Objective(MEMORY, req.memory_usage.max_mb, mb, "MB", True, mb > req.memory_usage.max_mb))
        return SloReport(self.node, tuple(objectives))

    def _percentile(self, percentile: float, calls: int) -> tuple[float, bool]:
        """(the ``percentile`` of the window's durations in ms, rounded up to its bucket's bound but never above
        the longest call; whether it exceeds the target, decided exactly since the target is a bound)."""
        if calls == 0:
            return 0.0, False
        assert self._bins is not None
        nth = rank(percentile, calls)  # the nth shortest call
        merged = [sum(column) for column in zip(*self._bins, strict=True)]
        within = sum(merged[: self._target_bin + 1])
        seen, bucket = 0, len(self._bounds)
        for b, count in enumerate(merged):
            seen += count
            if seen >= nth:
                bucket = b
                break
        longest = max(self._longest)
        bound = self._bounds[bucket] if bucket < len(self._bounds) else longest
        return min(bound, longest) * 1000, within < nth

    def check(self) -> SloReport:
        """``evaluate()``, kept as ``last``; logs ``slo_breach`` for each objective breached now and not at the
        last check, ``slo_recovered`` for each breached then and not now. The heartbeat calls it."""
        report = self.evaluate()
        before = {o.name for o in self.last.objectives if o.breached}
        now = {o.name for o in report.objectives if o.breached}
        for o in report.objectives:
            if o.name in now - before:
                event(
                    _log,
                    logging.WARNING,
                    "slo_breach",
                    f"service-level objective breached: {o.describe()}",
                    node=self.node,
                    objective=o.name,
                    measured=round(o.measured, 4),
                    target=o.target,
                )
            elif o.name in before - now:
                event(
                    _log,
                    logging.INFO,
                    "slo_recovered",
                    f"service-level objective met again: {o.describe()}",
                    node=self.node,
                    objective=o.name,
                    measured=round(o.measured, 4),
                    target=o.target,
                )
        self.last = report
        return report
