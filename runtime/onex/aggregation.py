"""Aggregation: the functions, groups and windows of an aggregation subcontract, computed over records.

``Aggregator`` is pure: it takes records with their event time (``add``) and hands back results
(``WindowResult``) when asked; it neither publishes nor persists, and reads time only from the injected clock. One
``Aggregator`` computes every aggregation of a subcontract, each independently over every record:

- **where** (a guard in the grammar of ``contracts.parse_condition``, evaluated by ``onex.fsm``'s ``Guard``) picks
  the records an aggregation sees.
- **group**: the ``group_by`` fields, then the type's key: ``namespace`` (NAMESPACE_GROUPING), ``stamp.file_type``
  (FILE_TYPE_GROUPING), ``workflow_id`` (WORKFLOW_GROUPING), the bucket label of ``stamp.file_size`` (SIZE_BUCKETS,
  under ``bucket``), what the node method ``method`` returns (CUSTOM, under ``key``; ``None`` skips the record),
  nothing (TIME_WINDOW). ``field`` overrides the key field. Fields are dotted paths reading keys of mappings and
  attributes of anything else; a missing key field (or a ``None`` on the way) groups under ``None``. Values that
  are not JSON scalars group by their JSON-able form: enums by value, datetimes in ISO 8601, anything else ``str``.
  Values are told apart by type as JSON tells them: ``1``, ``1.0`` and ``True`` are three groups (and three values
  of ``unique_count``), though Python finds them equal.
- **functions**: ``count`` counts every record of the group; ``sum``, ``min``, ``max``, ``avg``, ``unique_count``
  and ``histogram`` read ``field`` and skip a record where it is missing or ``None`` (``sum``, ``avg`` and
  ``histogram`` also skip non-numbers, ``min``/``max`` values that do not compare with the others). ``min`` and
  ``max`` compare and keep numbers and strings as they are, anything else in its JSON-able form: datetimes as UTC
  ISO 8601 text at a fixed width (``onex.clock.utc_text``, so text order is time order), enums by value, the rest
  as ``str``. ``avg`` of nothing is ``None``; ``histogram`` is ``{label: count}`` over every bucket, in order.
- **windows**, per group: tumbling or sliding by event time (``[k*slide, k*slide+size)`` in ms since the epoch;
  tumbling slides by its size) or by count (window ``k`` holds the group's records ``k*slide`` to
  ``k*slide+size-1``), sessions (extended while records arrive within ``gap_ms`` of one). Without a window each
  group has one running total (window id ``""``), never closed.

Time windows are final once the clock passed their end + ``grace_ms`` (sessions: their last record + ``gap_ms`` +
``grace_ms``); a record arriving for a final window is dropped and counted in ``late`` (a sliding record only if
every window it belongs to is final; it still counts in those that are not). A session record joins the open
session it falls in or within ``gap_ms`` of, however old the record; without one it is late if a session of its
own would already be final. Count windows are final when full. An event time without a timezone is read as UTC.
``close_due`` hands out final windows and forgets them; ``dirty`` the open windows changed since it was last
called, for checkpoints; ``restore`` continues from checkpointed results exactly. ``savepoint`` then ``rollback``
undoes every ``add`` since (a batch that failed midway), ``release`` keeps them.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from onex.clock import UNIX_EPOCH, Clock, epoch_ms, utc_text
from onex.contracts import (
    AGGREGATION_KEY_FIELDS,
    Aggregation,
    AggregationFunction,
    AggregationSubcontract,
    aggregation_problems,
)
from onex.fsm import Guard, parse_guard

__all__ = ["Aggregator", "WindowResult", "bucket_label"]

_MISSING: Any = object()
_SCALARS = frozenset({str, int, float, bool, type(None)})
_FAST_NUMBERS = frozenset({int, float})  # the exact types; subclasses (not bool) take isinstance
# Group key parts and unique_count values taken as they are: types no other JSON type equals. A bool or float (True
# == 1 == 1.0 in Python) is tagged with its type (``_key``), so each is a group of its own, as its JSON text is.
_KEYS = frozenset({str, int, type(None)})
_ORDERED = frozenset({int, float, str, bool})  # what min/max keep as it is (``_comparable``)

# Window modes.
_TOTAL, _TUMBLE_TIME, _SLIDE_TIME, _TUMBLE_COUNT, _SLIDE_COUNT, _SESSION = range(6)
_TIME_MODES = frozenset({_TUMBLE_TIME, _SLIDE_TIME, _SESSION})
_COUNT_MODES = frozenset({_TUMBLE_COUNT, _SLIDE_COUNT})


@dataclass(frozen=True, slots=True)
class WindowResult:
    """One group's window of one aggregation: its values now, and the state to continue it elsewhere."""

    aggregation: str  # the aggregation's name
    group: dict[str, Any]  # group_by field -> value, then the type's key (its field, "bucket" or "key"); JSON-able
    window_id: str  # "" (no window), "t:<start ms>", "n:<index>" (count), "s:<first record's ms>" (session)
    window_start: datetime | None  # time windows: bounds; others: the first and last record's event time
    window_end: datetime | None
    closed: bool  # final: no further record changes it
    items: int  # records aggregated into it
    values: dict[str, Any]  # function name -> value, JSON-able
    state: dict[str, Any]  # the accumulators, JSON-able: what ``Aggregator.restore`` continues from


def bucket_label(value: float, bounds: tuple[int, ...]) -> str:
    """The label of the bucket ``value`` falls in: ``<=bound`` for the first bound not below it, else ``>last``."""
    index = bisect.bisect_left(bounds, value)
    return f"<={bounds[index]}" if index < len(bounds) else (f">{bounds[-1]}" if bounds else "all")


def _jsonable(value: Any) -> Any:
    if type(value) in _SCALARS:
        return value
    if isinstance(value, Enum):
        return _jsonable(value.value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _key(value: Any) -> Any:
    """A group key part or unique_count value: its JSON-able form, a bool or float tagged with its type."""
    value = _jsonable(value)
    kind = type(value)
    return (kind, value) if kind is bool or kind is float else value


def _plain(part: Any) -> Any:
    """What ``_key`` made of a value, as its JSON-able form again."""
    return part[1] if type(part) is tuple else part


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)  # naive: UTC, as utc_text reads it


def _comparable(value: Any) -> Any:
    """The one form min/max compare and keep a value in: JSON-able, so a checkpoint stores it and a restored one
    compares with new values as it did before (a datetime kept as such would be neither)."""
    while isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, datetime):
        return utc_text(value)  # fixed width, in UTC: text order is time order
    return _jsonable(value)


@dataclass(frozen=True, slots=True)
class _Function:
    name: str
    kind: str
    slot: int | None  # where the record's ``field`` is in the values ``Aggregator.add`` reads once per record
    bounds: tuple[int, ...]
    labels: tuple[str, ...]

    def fresh(self) -> Any:
        kind = self.kind
        if kind in ("count", "sum"):
            return 0
        if kind == "avg":
            return [0, 0]
        if kind == "unique_count":
            return set()
        if kind == "histogram":
            return [0] * len(self.labels)
        return None  # min, max

    def value(self, acc: Any) -> Any:
        kind = self.kind
        if kind == "avg":
            return acc[0] / acc[1] if acc[1] else None
        if kind == "unique_count":
            return len(acc)
        if kind == "histogram":
            return dict(zip(self.labels, acc, strict=True))
        if kind in ("min", "max"):
            return acc if acc is None or type(acc) in _ORDERED else _comparable(acc)  # an int subclass, say
        return _jsonable(acc)

    def dump(self, acc: Any) -> Any:
        if self.kind == "unique_count":
            # Never compares values of different types.
            return sorted(map(_plain, acc), key=lambda v: (type(v).__name__, v))
        if self.kind in ("avg", "histogram"):
            return list(acc)
        return acc

    def load(self, saved: Any) -> Any:
        if self.kind == "unique_count":
            return {v if type(v) in _KEYS else _key(v) for v in saved}
        if self.kind == "avg":
            return list(saved)
        if self.kind == "histogram":
            return list(saved) if len(saved) == len(self.labels) else self.fresh()  # other buckets: start again
        return saved


def _function(spec: AggregationFunction, slot: Callable[[str], int]) -> _Function:
    bounds = spec.buckets
    labels = (*(f"<={b}" for b in bounds), f">{bounds[-1]}") if bounds else ()
    return _Function(spec.name, spec.function, slot(spec.field) if spec.field else None, bounds, labels)


class _Win:
    """One open window of one group (or the group's running total)."""

    __slots__ = (
        "accs",
        "closed",
        "dirty",
        "end_ms",
        "first_at",
        "items",
        "key",
        "last_at",
        "mark",
        "start_ms",
        "window_id",
    )

    def __init__(self, key: tuple[Any, ...], window_id: str, accs: list[Any], start_ms: int, end_ms: int) -> None:
        self.key = key
        self.window_id = window_id
        self.accs = accs
        self.start_ms = start_ms  # time windows: bounds [start, end); sessions: first and last record's ms
        self.end_ms = end_ms
        self.first_at: datetime | None = None
        self.last_at: datetime | None = None
        self.items = 0
        self.dirty = False
        self.closed = False  # handed out (or forgotten): dirty() skips it
        self.mark: object = None  # ``Aggregator._mark`` when last touched: unlike it, the window is touched anew


class _Compiled:
    """One aggregation, its fields and guard compiled once, and its open windows.

    Fields are read once per record for all aggregations (the compiled ``Aggregator.add``); ``slot`` gives a path's
    index among them (the shipped reducer's four aggregations read 6 paths, not 17).
    """

    def __init__(
        self, spec: Aggregation, methods: Mapping[str, Callable[[Any], Any]], slot: Callable[[str], int]
    ) -> None:
        self.name = spec.name
        self.where: Guard | None = None
        self.guard_slot = 0
        if spec.where is not None:
            self.where = parse_guard(spec.where)
            self.guard_slot = slot(self.where.field)
        self.group_slots = tuple(slot(path) for path in spec.group_by)
        names = list(spec.group_by)
        self.key_kind = spec.type
        self.key_slot: int | None = None
        self.key_method: Callable[[Any], Any] | None = None
        self.bounds = spec.buckets
        if spec.type == "CUSTOM":
            method = spec.method or ""
            if method not in methods:
                raise ValueError(f"aggregation {spec.name!r}: no method {method!r} was given for its CUSTOM key")
            self.key_method = methods[method]
            names.append("key")
        elif spec.type == "SIZE_BUCKETS":
            self.key_slot = slot(spec.field or AGGREGATION_KEY_FIELDS[spec.type])
            names.append("bucket")
        elif spec.type != "TIME_WINDOW":
            path = spec.field or AGGREGATION_KEY_FIELDS[spec.type]
            self.key_slot = slot(path)
            names.append(path)
        self.names = tuple(names)
        self.functions = tuple(_function(f, slot) for f in spec.functions)
        # The accumulators a savepoint copies, not only refers to.
        self.mutable = tuple(j for j, f in enumerate(self.functions) if f.kind in ("avg", "histogram", "unique_count"))
        window = spec.window
        self.size = self.slide = self.gap = self.grace = 0
        if window is None:
            self.mode = _TOTAL
        elif window.type == "session":
            self.mode, self.gap, self.grace = _SESSION, window.gap_ms or 0, window.grace_ms
        elif window.size_ms is not None:
            self.mode = _TUMBLE_TIME if window.type == "tumbling" else _SLIDE_TIME
            self.size, self.grace = window.size_ms, window.grace_ms
            self.slide = window.size_ms if window.type == "tumbling" else (window.slide_ms or window.size_ms)
        else:
            self.mode = _TUMBLE_COUNT if window.type == "tumbling" else _SLIDE_COUNT
            self.size = window.size_items or 1
            self.slide = self.size if window.type == "tumbling" else (window.slide_items or self.size)
        self.windows: dict[tuple[tuple[Any, ...], str], _Win] = {}
        self.counters: dict[tuple[Any, ...], int] = {}  # count windows: records seen per group
        self.sessions: dict[tuple[Any, ...], list[_Win]] = {}

    def open(self, key: tuple[Any, ...], window_id: str, start_ms: int = 0, end_ms: int = 0) -> _Win:
        win = self.windows.get((key, window_id))
        if win is None:
            win = self.windows[(key, window_id)] = _Win(
                key, window_id, [f.fresh() for f in self.functions], start_ms, end_ms
            )
        return win

    def group(self, key: tuple[Any, ...]) -> dict[str, Any]:
        return dict(zip(self.names, map(_plain, key), strict=True))

    def final(self, win: _Win, now_ms: int) -> bool:
        if self.mode == _SESSION:
            return now_ms > win.end_ms + self.gap + self.grace
        return now_ms > win.end_ms + self.grace

    def result(self, win: _Win, *, closed: bool) -> WindowResult:
        if self.mode in (_TUMBLE_TIME, _SLIDE_TIME):
            start: datetime | None = UNIX_EPOCH + timedelta(milliseconds=win.start_ms)
            end: datetime | None = UNIX_EPOCH + timedelta(milliseconds=win.end_ms)
        else:
            start, end = win.first_at, win.last_at
        functions = self.functions
        return WindowResult(
            aggregation=self.name,
            group=self.group(win.key),
            window_id=win.window_id,
            window_start=start,
            window_end=end,
            closed=closed,
            items=win.items,
            values={f.name: f.value(acc) for f, acc in zip(functions, win.accs, strict=True)},
            state={
                "acc": {f.name: f.dump(acc) for f, acc in zip(functions, win.accs, strict=True)},
                "first": win.first_at.isoformat() if win.first_at else None,
                "last": win.last_at.isoformat() if win.last_at else None,
            },
        )


class Aggregator:
    """All aggregations of one aggregation subcontract, over records, on an injected clock.

    ``methods`` maps each CUSTOM aggregation's ``method`` to the callable returning a record's key (the node's
    bound method). A subcontract the load-time checks would refuse (``contracts.checks.aggregation_problems``) is a
    ``ValueError`` here too. Not thread-safe: one task adds and collects.
    """

    add: Callable[[Any, datetime], None]
    """``add(record, at)``: aggregate ``record``, whose event time is ``at`` (naive: UTC), into every aggregation it
    passes. Written out for this subcontract and compiled once (``_compile_add``)."""

    def __init__(
        self,
        subcontract: AggregationSubcontract,
        *,
        methods: Mapping[str, Callable[[Any], Any]] | None = None,
        clock: Clock,
    ) -> None:
        problems = [
            f"aggregation {spec.name!r}: {'.'.join(map(str, steps))}: {message}"
            for spec in subcontract.aggregations
            for steps, _, message in aggregation_problems(spec)
        ]
        names = [spec.name for spec in subcontract.aggregations]
        problems += [
            f"aggregation {name!r} is declared twice" for name in sorted({n for n in names if names.count(n) > 1})
        ]
        if problems:
            raise ValueError("; ".join(problems))
        self._clock = clock
        paths: dict[str, int] = {}

        def slot(path: str) -> int:
            return paths.setdefault(path, len(paths))

        self._aggs = [_Compiled(spec, methods or {}, slot) for spec in subcontract.aggregations]
        self._by_name = {agg.name: agg for agg in self._aggs}
        self._timed = any(agg.mode in _TIME_MODES for agg in self._aggs)
        self._dirty: list[tuple[_Compiled, _Win]] = []
        self._ready: list[WindowResult] = []  # count windows that filled up, until close_due hands them out
        self._late = 0
        # Windows whose ``mark`` is not this one are touched anew by ``add`` (``_touch``): made dirty again after
        # ``dirty``, copied once after ``savepoint``. A new object at each of those.
        self._mark = object()
        self._saved: list[tuple[Any, ...]] | None = None  # per window touched since the savepoint: what it was
        self._saved_counters: dict[tuple[_Compiled, tuple[Any, ...]], int] = {}
        self._saved_lengths = (0, 0, 0)  # of _dirty and _ready, and _late, at the savepoint
        self.add = _compile_add(self, paths)

    @property
    def counted(self) -> tuple[str, ...]:
        """The aggregations with count windows: a restart must ``restore`` their latest closed windows too, or their
        numbering starts again at ``n:0``."""
        return tuple(agg.name for agg in self._aggs if agg.mode in _COUNT_MODES)

    @property
    def late(self) -> int:
        """Records dropped because every window they belonged to was already final."""
        return self._late

    # -- records --

    def _session(self, agg: _Compiled, key: tuple[Any, ...], t: int, now_ms: int) -> _Win | None:
        """The session of ``key`` a record at ``t`` goes in, None if it is late."""
        sessions = agg.sessions.get(key)
        if sessions:
            for win in sessions:
                # An open session takes the record however old it is: the session, not the record, is final or not.
                if win.start_ms - agg.gap <= t <= win.end_ms + agg.gap and not agg.final(win, now_ms):
                    if win.mark is not self._mark:
                        self._touch(agg, win)  # before its bounds move: a savepoint copies them
                    win.start_ms, win.end_ms = min(win.start_ms, t), max(win.end_ms, t)
                    return win
        if now_ms > t + agg.gap + agg.grace:
            return None  # a session of its own would be final already
        # Out of order by more than the gap: a session of its own (sessions are not merged when one bridges two).
        win = agg.open(key, f"s:{t}", t, t)
        agg.sessions.setdefault(key, []).append(win)
        return win

    def _touch(self, agg: _Compiled, win: _Win) -> None:
        """``add`` touches ``win`` first since the last ``dirty`` or ``savepoint``: mark it dirty, and keep what it
        was for a rollback."""
        win.mark = self._mark
        saved = self._saved
        if saved is not None:
            accs = list(win.accs)
            for j in agg.mutable:
                accs[j] = accs[j].copy()
            saved.append((agg, win, accs, win.items, win.first_at, win.last_at, win.start_ms, win.end_ms, win.dirty))
            if agg.mode in _COUNT_MODES:  # the key's first record since the savepoint counted already
                self._saved_counters.setdefault((agg, win.key), agg.counters[win.key] - 1)
        if not win.dirty:
            win.dirty = True
            self._dirty.append((agg, win))

    # -- savepoints --

    def savepoint(self) -> None:
        """Remember the state now, for ``rollback``: only ``add`` may be called until ``rollback`` or ``release``.

        What it costs is one copy of each window's accumulators the first time an ``add`` touches it."""
        self._saved, self._saved_counters = [], {}
        self._saved_lengths = (len(self._dirty), len(self._ready), self._late)
        self._mark = object()

    def release(self) -> None:
        """Keep what was added since ``savepoint``."""
        self._saved, self._saved_counters = None, {}

    def rollback(self) -> None:
        """Undo every ``add`` since ``savepoint``, including one that raised midway: the windows, counters,
        sessions, dirty and ready windows and the late count are what they were."""
        saved, self._saved = self._saved, None
        if saved is None:
            raise RuntimeError("rollback without a savepoint")
        for agg, win, accs, items, first, last, start_ms, end_ms, dirty in reversed(saved):
            slot = (win.key, win.window_id)
            if not items:  # opened since: every window holds a record once add is done with it
                if agg.windows.get(slot) is win:
                    del agg.windows[slot]
                sessions = agg.sessions.get(win.key)
                if sessions is not None and win in sessions:
                    sessions.remove(win)
                    if not sessions:
                        del agg.sessions[win.key]
                win.closed = True
                continue
            win.accs, win.items, win.first_at, win.last_at = accs, items, first, last
            win.start_ms, win.end_ms, win.dirty, win.closed = start_ms, end_ms, dirty, False
            agg.windows[slot] = win  # a count window that filled up since is open again
        for (agg, key), count in self._saved_counters.items():
            if count:
                agg.counters[key] = count
            else:
                agg.counters.pop(key, None)
        self._saved_counters = {}
        dirty, ready, self._late = self._saved_lengths
        del self._dirty[dirty:], self._ready[ready:]
        self._mark = object()

    # -- results --

    def close_due(self) -> list[WindowResult]:
        """Every window that became final (count windows that filled up; time windows and sessions the clock
        passed), as closed results; they are forgotten."""
        closed, self._ready = self._ready, []
        if not self._timed:
            return closed
        now_ms = epoch_ms(self._clock.now())
        for agg in self._aggs:
            if agg.mode not in _TIME_MODES:
                continue
            for slot, win in list(agg.windows.items()):
                if agg.final(win, now_ms):
                    del agg.windows[slot]
                    win.closed = True
                    closed.append(agg.result(win, closed=True))
                    if agg.mode == _SESSION:
                        sessions = agg.sessions[win.key]
                        sessions.remove(win)
                        if not sessions:
                            del agg.sessions[win.key]
        return closed

    def dirty(self) -> list[WindowResult]:
        """The open windows changed since the last call (``closed=False``), for a checkpoint."""
        found = [agg.result(win, closed=False) for agg, win in self._dirty if not win.closed]
        for _, win in self._dirty:
            win.dirty = False
        self._dirty = []
        self._mark = object()  # the next add to any window makes it dirty again
        return found

    def close_all(self) -> list[WindowResult]:
        """Drain: what ``close_due`` returns, then every window still open with ``closed=False``, and forget all.

        Open windows are not made final: a time window or session goes on when a restarted aggregator ``restore``s
        it, and a running total or a partly filled count window is never final before it is due.
        """
        results = self.close_due()
        for agg in self._aggs:
            for win in agg.windows.values():
                win.closed = True
                results.append(agg.result(win, closed=False))
            agg.windows.clear()
            agg.sessions.clear()
            agg.counters.clear()
        self._dirty = []
        return results

    def restore(self, results: Iterable[WindowResult]) -> None:
        """Continue the open windows of checkpointed results from their ``state``.

        Closed results are not reopened; a closed count window still tells which window of its group comes next,
        so pass each group's latest closed count window too (or its numbering starts again at ``n:0``). Results of
        aggregations the subcontract no longer has, or whose window kind changed, are ignored.
        """
        for result in results:
            agg = self._by_name.get(result.aggregation)
            if agg is None:
                continue
            prefix, _, number = result.window_id.partition(":")
            expected = {_TOTAL: "", _SESSION: "s"}.get(agg.mode, "n" if agg.mode in _COUNT_MODES else "t")
            if prefix != expected or (expected and not number.lstrip("-").isdigit()):
                continue
            key = tuple(_key(result.group.get(name)) for name in agg.names)
            if agg.mode in _COUNT_MODES:
                k = int(number)
                seen = k * agg.slide + (agg.size if result.closed else result.items)
                agg.counters[key] = max(agg.counters.get(key, 0), seen)
            if result.closed:
                continue
            state = result.state
            saved = state.get("acc", {})
            accs = [f.load(saved[f.name]) if f.name in saved else f.fresh() for f in agg.functions]
            first = _aware(datetime.fromisoformat(state["first"])) if state.get("first") else None
            last = _aware(datetime.fromisoformat(state["last"])) if state.get("last") else None
            if agg.mode in (_TUMBLE_TIME, _SLIDE_TIME):
                start_ms, end_ms = int(number), int(number) + agg.size
            elif agg.mode == _SESSION:
                start_ms = epoch_ms(first) if first else int(number)
                end_ms = epoch_ms(last) if last else start_ms
            else:
                start_ms = end_ms = 0
            win = _Win(key, result.window_id, accs, start_ms, end_ms)
            win.items, win.first_at, win.last_at = result.items, first, last
            agg.windows[(key, result.window_id)] = win
            if agg.mode == _SESSION:
                agg.sessions.setdefault(key, []).append(win)

    def forget(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Drop every window and counter of the groups whose group dict ``keep`` refuses (their partition moved
        away); nothing of them is returned."""
        for agg in self._aggs:
            verdicts: dict[tuple[Any, ...], bool] = {}  # one call of keep per group, not per window
            for key in {*(win.key for win in agg.windows.values()), *agg.counters, *agg.sessions}:
                verdicts[key] = keep(agg.group(key))
            for slot, win in list(agg.windows.items()):
                if not verdicts[win.key]:
                    del agg.windows[slot]
                    win.closed = True  # dirty() skips it
            for key in [k for k in agg.counters if not verdicts[k]]:
                del agg.counters[key]
            for key in [k for k in agg.sessions if not verdicts[k]]:
                del agg.sessions[key]
        self._ready = [result for result in self._ready if keep(dict(result.group))]


# --- the compiled add ---------------------------------------------------------------------------------------------


def _compile_add(aggregator: Aggregator, paths: Mapping[str, int]) -> Callable[[Any, datetime], None]:
    """``Aggregator.add`` for ``aggregator``'s subcontract: the Python one would write by hand for it, compiled once.

    Every record passes every aggregation, so the generic loop (per aggregation: its guard, its key, its window, then
    each function by kind) cost about 9 us a record for the shipped reducer's four; written out, each path is read
    once (a shared prefix such as ``stamp`` of ``stamp.file_size`` too), ``exists`` guards are a comparison, and each
    function is the one statement of its kind. Window ids, window bounds and what is late are as the module's
    docstring says; ``tests/test_aggregation_compiled.py`` checks every kind against a plain reading of it.
    """
    scope: dict[str, Any] = {
        "_MISSING": _MISSING,
        "_SCALARS": _SCALARS,
        "_KEYS": _KEYS,
        "_ORDERED": _ORDERED,
        "_FAST_NUMBERS": _FAST_NUMBERS,
        "_NUMBER": (int, float),
        "_Mapping": Mapping,
        "_key": _key,
        "_comparable": _comparable,
        "_UTC": UTC,
        "_ms": epoch_ms,
        "_bisect": bisect.bisect_left,
        "_bucket_label": bucket_label,
        "A": aggregator,
        "clock": aggregator._clock,
    }
    lines = ["def add(record, at):"]

    def emit(depth: int, text: str) -> None:
        lines.append("    " * depth + text)

    emit(1, "if at.tzinfo is None:")  # naive: UTC, as onex.clock.utc_text reads it
    emit(2, "at = at.replace(tzinfo=_UTC)")
    if aggregator._timed:
        emit(1, "now_ms = _ms(clock.now())")
        emit(1, "t = _ms(at)")
    emit(1, "late = False")
    emit(1, "mark = A._mark")  # add never changes it

    local: dict[str, str] = {}  # path -> the local holding its value

    def read(path: str) -> str:
        if path in local:
            return local[path]
        parent, _, part = path.rpartition(".")
        source = read(parent) if parent else "record"
        var = local[path] = f"v{len(local)}"
        emit(1, f"if {source} is None:" if source == "record" else f"if {source} is _MISSING or {source} is None:")
        emit(2, f"{var} = _MISSING")
        emit(1, f"elif type({source}) is dict:")  # a dict or a model, nearly always: no Mapping ABC test for a dict
        emit(2, f"{var} = {source}.get({part!r}, _MISSING)")
        emit(1, "else:")
        emit(2, f"{var} = getattr({source}, {part!r}, _MISSING)")
        emit(2, f"if {var} is _MISSING and isinstance({source}, _Mapping):")
        emit(3, f"{var} = {source}.get({part!r}, _MISSING)")
        return var

    slots = {index: read(path) for path, index in paths.items()}

    def jsonable(var: str) -> str:  # a group key part: a str or int as it is (the usual), anything else by _key
        return f"(None if {var} is _MISSING else {var} if type({var}) in _KEYS else _key({var}))"

    def number(var: str) -> str:
        return f"type({var}) in _FAST_NUMBERS or (isinstance({var}, _NUMBER) and not isinstance({var}, bool))"

    def window(depth: int, i: int, wid: str, bounds: str = "") -> None:
        emit(depth, f"win = W{i}.get((key, {wid}))")
        emit(depth, "if win is None:")
        emit(depth + 1, f"win = G{i}.open(key, {wid}{bounds})")

    def extremes(depth: int, value: str, functions: list[tuple[int, _Function]]) -> None:
        for j, function in functions:
            emit(depth, "try:")  # a value that does not compare with what came before is skipped
            emit(depth + 1, f"if accs[{j}] is None or {value} {'<' if function.kind == 'min' else '>'} accs[{j}]:")
            emit(depth + 2, f"accs[{j}] = {value}")
            emit(depth, "except TypeError:")
            emit(depth + 1, "pass")

    def update(depth: int, i: int, agg: _Compiled) -> None:
        # Before any change: a savepoint copies the window as it was (and a window's first change makes it dirty).
        emit(depth, "if win.mark is not mark:")
        emit(depth + 1, f"A._touch(G{i}, win)")
        emit(depth, "accs = win.accs")
        # Functions grouped by the field they read, so each field is tested once (present, then a number) per window.
        by_slot: dict[int, list[tuple[int, _Function]]] = {}
        for j, function in enumerate(agg.functions):
            if function.kind == "count":
                emit(depth, f"accs[{j}] += 1")
            elif function.slot is not None:  # a function that reads no field sees no value
                by_slot.setdefault(function.slot, []).append((j, function))
        for slot, functions in by_slot.items():
            var = slots[slot]
            emit(depth, f"if {var} is not _MISSING and {var} is not None:")
            inner = depth + 1
            numeric = [(j, f) for j, f in functions if f.kind in ("sum", "avg", "histogram")]
            ordered = [(j, f) for j, f in functions if f.kind in ("min", "max")]
            for j, function in functions:
                if function.kind == "unique_count":
                    emit(inner, f"accs[{j}].add({var} if type({var}) in _KEYS else _key({var}))")
            if numeric:
                emit(inner, f"if {number(var)}:")
                for j, function in numeric:
                    if function.kind == "sum":
                        emit(inner + 1, f"accs[{j}] += {var}")
                    elif function.kind == "avg":
                        emit(inner + 1, f"accs[{j}][0] += {var}")
                        emit(inner + 1, f"accs[{j}][1] += 1")
                    else:  # histogram
                        scope[f"H{i}_{j}"] = function.bounds
                        emit(inner + 1, f"accs[{j}][_bisect(H{i}_{j}, {var})] += 1")
                # min/max of a number as it is, under the test the field's other functions made anyway; anything
                # else in the form min/max keep (``_comparable``).
                extremes(inner + 1, var, ordered)
                if ordered:
                    emit(inner, "else:")
                    emit(inner + 1, f"c = _comparable({var})")
                    extremes(inner + 1, "c", ordered)
            elif ordered:
                emit(inner, f"c = {var} if type({var}) in _ORDERED else _comparable({var})")
                extremes(inner, "c", ordered)
        emit(depth, "win.items += 1")
        if agg.mode == _SESSION:
            emit(depth, "if win.first_at is None or at < win.first_at:")
            emit(depth + 1, "win.first_at = at")
            emit(depth, "if win.last_at is None or at > win.last_at:")
            emit(depth + 1, "win.last_at = at")
        else:
            emit(depth, "if win.first_at is None:")
            emit(depth + 1, "win.first_at = at")
            emit(depth, "win.last_at = at")

    for i, agg in enumerate(aggregator._aggs):
        scope[f"G{i}"], scope[f"W{i}"], scope[f"C{i}"] = agg, agg.windows, agg.counters
        depth = 1
        if agg.where is not None:
            var = slots[agg.guard_slot]
            if agg.where.operator == "exists":
                emit(depth, f"if {var} is not _MISSING and {var} is not None:")
            elif agg.where.operator == "not_exists":
                emit(depth, f"if {var} is _MISSING or {var} is None:")
            else:
                scope[f"Q{i}"] = dataclasses.replace(agg.where, field="value")
                emit(depth, f"if Q{i}({{}} if {var} is _MISSING else {{'value': {var}}}):")
            depth += 1
        parts = [jsonable(slots[index]) for index in agg.group_slots]
        if agg.key_method is not None:
            scope[f"M{i}"] = agg.key_method
            emit(depth, f"k = M{i}(record)")
            emit(depth, "if k is not None:")  # a CUSTOM method's None skips the record
            depth += 1
            parts.append(jsonable("k"))
        elif agg.key_slot is not None:
            var = slots[agg.key_slot]
            if agg.key_kind == "SIZE_BUCKETS":
                scope[f"B{i}"] = agg.bounds
                parts.append(f"(_bucket_label({var}, B{i}) if {number(var)} else None)")
            else:
                parts.append(jsonable(var))
        emit(depth, f"key = ({''.join(part + ', ' for part in parts)})")
        size, slide, reach = int(agg.size), int(agg.slide), int(agg.size) + int(agg.grace)
        if agg.mode == _TOTAL:
            window(depth, i, "''")
            update(depth, i, agg)
        elif agg.mode == _TUMBLE_TIME:  # a record is in one window: [t // size * size, ... + size)
            emit(depth, f"start = t // {size} * {size}")
            emit(depth, f"if now_ms > start + {reach}:")
            emit(depth + 1, "late = True")
            emit(depth, "else:")
            emit(depth + 1, 'wid = f"t:{start}"')
            window(depth + 1, i, "wid", f", start, start + {size}")
            update(depth + 1, i, agg)
        elif agg.mode == _SLIDE_TIME:  # late only when every window it belongs to is final
            emit(depth, "entered = False")
            emit(depth, f"for n in range((t - {size}) // {slide} + 1, t // {slide} + 1):")
            emit(depth + 1, f"start = n * {slide}")
            emit(depth + 1, f"if now_ms > start + {reach}:")
            emit(depth + 2, "continue")
            emit(depth + 1, 'wid = f"t:{start}"')
            window(depth + 1, i, "wid", f", start, start + {size}")
            update(depth + 1, i, agg)
            emit(depth + 1, "entered = True")
            emit(depth, "if not entered:")
            emit(depth + 1, "late = True")
        elif agg.mode == _SESSION:  # late only without an open session to join (``Aggregator._session``)
            emit(depth, f"win = A._session(G{i}, key, t, now_ms)")
            emit(depth, "if win is None:")
            emit(depth + 1, "late = True")
            emit(depth, "else:")
            update(depth + 1, i, agg)
        else:  # by count: window n holds the group's records n * slide to n * slide + size - 1; final when full
            emit(depth, f"index = C{i}.get(key, 0)")
            emit(depth, f"C{i}[key] = index + 1")
            emit(depth, f"for n in range(max(0, (index - {size}) // {slide} + 1), index // {slide} + 1):")
            emit(depth + 1, 'wid = f"n:{n}"')
            window(depth + 1, i, "wid")
            update(depth + 1, i, agg)
            emit(depth + 1, f"if win.items >= {size}:")
            emit(depth + 2, f"del W{i}[(key, wid)]")
            emit(depth + 2, "win.closed = True")
            emit(depth + 2, f"A._ready.append(G{i}.result(win, closed=True))")
    emit(1, "if late:")
    emit(2, "A._late += 1")
    source = "\n".join(lines) + "\n"
    exec(compile(source, "<onex.aggregation add>", "exec"), scope)
    add: Callable[[Any, datetime], None] = scope["add"]
    return add
