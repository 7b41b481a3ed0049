"""``Aggregator.add`` is compiled per subcontract (``onex.aggregation._compile_add``): here it is checked against a
plain reading of the rules in ``onex.aggregation``'s docstring (``reference_add`` below, the engine's generic loop as
it was before it was compiled), over records Hypothesis makes: dicts, objects and other mappings, nested fields
missing or ``None``, values of every kind the rules tell apart (bools, numbers and their subclasses, enums, dates
with and without a timezone, strings, lists), records late and out of order, event times with and without a
timezone, and the clock moving on between them; and ``savepoint``/``rollback`` against never having added.

Every aggregation type, window kind, function and guard form is in ``SUBCONTRACT``; both aggregators must hand out
the same results (values, state, bounds, closed), the same dirty windows and the same count of late records.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import types
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onex.aggregation import Aggregator, WindowResult, bucket_label
from onex.clock import Clock
from onex.contracts import AGGREGATION_KEY_FIELDS, Aggregation, AggregationSubcontract
from onex.fsm import parse_guard

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MISSING: Any = object()

FUNCTIONS = [
    {"name": "n", "function": "count"},
    {"name": "total", "function": "sum", "field": "size"},
    {"name": "smallest", "function": "min", "field": "size"},
    {"name": "largest", "function": "max", "field": "tag"},
    {"name": "mean", "function": "avg", "field": "stamp.file_size"},
    {"name": "distinct", "function": "unique_count", "field": "tag"},
    {"name": "sizes", "function": "histogram", "field": "size", "buckets": [10, 100]},
]
SUBCONTRACT = AggregationSubcontract.model_validate(
    {
        "version": "2.0.0",
        "aggregations": [
            {"name": "by_ns", "type": "NAMESPACE_GROUPING", "group_by": ["state"], "functions": FUNCTIONS},
            {"name": "by_type", "type": "FILE_TYPE_GROUPING", "where": "stamp exists", "functions": FUNCTIONS},
            {"name": "by_wf", "type": "WORKFLOW_GROUPING", "where": "stamp not_exists", "functions": FUNCTIONS[:2]},
            {
                "name": "buckets",
                "type": "SIZE_BUCKETS",
                "buckets": [5, 50],
                "where": "state == done",
                "functions": FUNCTIONS[:3],
            },
            {"name": "custom", "type": "CUSTOM", "method": "parity", "where": "size > 3", "functions": FUNCTIONS[:2]},
            {
                "name": "keyed",
                "type": "NAMESPACE_GROUPING",
                "where": "tag != b",  # true for a tag that is None, false for one that is missing
                "field": "stamp.file_type",
                "group_by": ["meta.kind"],
                "functions": FUNCTIONS[:1],
            },
            {
                "name": "tumble",
                "type": "TIME_WINDOW",
                "group_by": ["namespace"],
                "window": {"type": "tumbling", "size_ms": 1000, "grace_ms": 200},
                "functions": FUNCTIONS,
            },
            {
                "name": "slide",
                "type": "TIME_WINDOW",
                "window": {"type": "sliding", "size_ms": 1000, "slide_ms": 400},
                "functions": FUNCTIONS[:3],
            },
            {
                "name": "session",
                "type": "TIME_WINDOW",
                "group_by": ["namespace"],
                "window": {"type": "session", "gap_ms": 300, "grace_ms": 100},
                "functions": FUNCTIONS,
            },
            {
                "name": "count_tumble",
                "type": "NAMESPACE_GROUPING",
                "window": {"type": "tumbling", "size_items": 3},
                "functions": FUNCTIONS,
            },
            {
                "name": "count_slide",
                "type": "TIME_WINDOW",
                "window": {"type": "sliding", "size_items": 4, "slide_items": 2},
                "functions": FUNCTIONS[:2],
            },
        ],
    }
)


def parity(record: Any) -> Any:
    """The CUSTOM key: None (the record is skipped) for a record without an int size."""
    size = record.get("size") if isinstance(record, Mapping) else getattr(record, "size", None)
    return None if type(size) is not int else ("even" if size % 2 == 0 else "odd")


class Color(enum.Enum):
    RED = "red"
    BLUE = 2


class Count(int):
    """An int subclass: a number to sum, not a bool."""


class Settable:
    """A clock whose time the test sets (``Aggregator`` only calls ``now``)."""

    def __init__(self) -> None:
        self.at = T0

    def now(self) -> datetime:
        return self.at


# --- the reference: the rules read plainly ------------------------------------------------------------------------


def read(record: Any, path: str) -> Any:
    value = record
    for part in path.split("."):
        if value is None:
            return MISSING
        if type(value) is dict:
            value = value.get(part, MISSING)
        else:
            found = getattr(value, part, MISSING)
            if found is MISSING and isinstance(value, Mapping):
                found = value.get(part, MISSING)
            value = found
        if value is MISSING:
            return MISSING
    return value


def jsonable(value: Any) -> Any:
    if value is MISSING or value is None:
        return None
    if type(value) in (str, int, float, bool):
        return value
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def key(value: Any) -> Any:
    """A group key part or unique value: its JSON form, told apart by JSON type (``1``, ``1.0``, ``true``)."""
    value = jsonable(value)
    return (type(value), value) if type(value) in (bool, float) else value


def comparable(value: Any) -> Any:
    """What min/max compare: numbers and strings as they are, datetimes as UTC text at a fixed width, enums by
    value, anything else as its JSON form."""
    if isinstance(value, enum.Enum):
        return comparable(value.value)
    if isinstance(value, int | float | str):
        return value
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat(timespec="microseconds")
    return jsonable(value)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def reference_add(aggregator: Aggregator, clock: Settable, record: Any, at: datetime) -> None:
    """The engine's generic loop, on ``aggregator``'s own windows."""
    at = at if at.tzinfo else at.replace(tzinfo=UTC)  # naive: UTC
    now_ms = (clock.now() - EPOCH) // timedelta(milliseconds=1)
    t = (at - EPOCH) // timedelta(milliseconds=1)
    late = False
    for agg, spec in zip(aggregator._aggs, SUBCONTRACT.aggregations, strict=True):
        if spec.where is not None:
            guard = parse_guard(spec.where)
            value = read(record, guard.field)
            if not dataclasses.replace(guard, field="value")({} if value is MISSING else {"value": value}):
                continue
        parts = [key(read(record, path)) for path in spec.group_by]
        if spec.type == "CUSTOM":
            value = parity(record)
            if value is None:
                continue
            parts.append(key(value))
        elif spec.type == "SIZE_BUCKETS":
            value = read(record, spec.field or AGGREGATION_KEY_FIELDS[spec.type])
            parts.append(bucket_label(value, spec.buckets) if is_number(value) else None)
        elif spec.type != "TIME_WINDOW":
            parts.append(key(read(record, spec.field or AGGREGATION_KEY_FIELDS[spec.type])))
        group = tuple(parts)
        values = [read(record, f.field) if f.field else None for f in spec.functions]
        window = spec.window
        if window is None:
            update(aggregator, agg, spec, agg.open(group, ""), values, at)
        elif window.type == "session":
            # The first open session (its last record + gap + grace not passed) the record is in or within gap of
            # takes it, however old the record; without one, it is late if a session of its own would be final.
            gap, grace = window.gap_ms or 0, window.grace_ms
            sessions = agg.sessions.setdefault(group, [])
            joined = next(
                (
                    s
                    for s in sessions
                    if s.start_ms - gap <= t <= s.end_ms + gap and not now_ms > s.end_ms + gap + grace
                ),
                None,
            )
            if joined is None and now_ms > t + gap + grace:
                late = True
                if not sessions:
                    del agg.sessions[group]
                continue
            if joined is None:
                joined = agg.open(group, f"s:{t}", t, t)
                sessions.append(joined)
            joined.start_ms, joined.end_ms = min(joined.start_ms, t), max(joined.end_ms, t)
            update(aggregator, agg, spec, joined, values, at)
        elif window.size_ms is not None:
            size = window.size_ms
            slide = size if window.type == "tumbling" else (window.slide_ms or size)
            entered = False
            for k in range((t - size) // slide + 1, t // slide + 1):
                start = k * slide
                if now_ms > start + size + window.grace_ms:
                    continue
                update(aggregator, agg, spec, agg.open(group, f"t:{start}", start, start + size), values, at)
                entered = True
            late = late or not entered
        else:
            size = window.size_items or 1
            slide = size if window.type == "tumbling" else (window.slide_items or size)
            index = agg.counters.get(group, 0)
            agg.counters[group] = index + 1
            for k in range(max(0, (index - size) // slide + 1), index // slide + 1):
                win = agg.open(group, f"n:{k}")
                update(aggregator, agg, spec, win, values, at)
                if win.items >= size:
                    del agg.windows[(group, win.window_id)]
                    win.closed = True
                    aggregator._ready.append(agg.result(win, closed=True))
    if late:
        aggregator._late += 1


def update(aggregator: Aggregator, agg: Any, spec: Aggregation, win: Any, values: list[Any], at: datetime) -> None:
    for i, function in enumerate(spec.functions):
        kind, value = function.function, values[i]
        if kind == "count":
            win.accs[i] += 1
        elif value is MISSING or value is None:
            continue
        elif kind == "unique_count":
            win.accs[i].add(key(value))
        elif kind in ("min", "max"):
            value = comparable(value)
            try:
                if win.accs[i] is None or (value < win.accs[i] if kind == "min" else value > win.accs[i]):
                    win.accs[i] = value
            except TypeError:
                pass
        elif not is_number(value):
            continue
        elif kind == "sum":
            win.accs[i] += value
        elif kind == "avg":
            win.accs[i][0] += value
            win.accs[i][1] += 1
        else:
            win.accs[i][bisect.bisect_left(function.buckets, value)] += 1
    win.items += 1
    if spec.window is not None and spec.window.type == "session":
        win.first_at = at if win.first_at is None or at < win.first_at else win.first_at
        win.last_at = at if win.last_at is None or at > win.last_at else win.last_at
    else:
        win.first_at = win.first_at or at
        win.last_at = at
    if not win.dirty:
        win.dirty = True
        aggregator._dirty.append((agg, win))


# --- records --------------------------------------------------------------------------------------------------------

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 200),
    st.floats(-5, 200, allow_nan=False),
    st.builds(Count, st.integers(0, 200)),
    st.sampled_from(["a", "b", "done", "7"]),
    st.sampled_from(list(Color)),
    st.sampled_from([T0, T0.replace(tzinfo=None), T0.astimezone(timezone(timedelta(hours=2))) + timedelta(seconds=1)]),
    st.lists(st.integers(0, 3), max_size=2),
)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A field that is absent, or present with a value of ``strategy``."""
    return st.one_of(st.just({}), strategy)


@st.composite
def records(draw: st.DrawFn) -> Any:
    fields: dict[str, Any] = {}
    for name in ("namespace", "state", "size", "tag", "workflow_id"):
        fields.update(draw(maybe(st.fixed_dictionaries({name: values}))))
    stamp = draw(
        st.one_of(
            st.none(),
            st.fixed_dictionaries({}, optional={"file_type": values, "file_size": values}),
            st.builds(types.SimpleNamespace, file_type=values, file_size=values),
        )
    )
    if draw(st.booleans()):
        fields["stamp"] = stamp
    if draw(st.booleans()):
        fields["meta"] = {"kind": draw(values)}
    shape = draw(st.sampled_from(["dict", "object", "mapping"]))
    if shape == "object":
        return types.SimpleNamespace(**fields)
    return fields if shape == "dict" else types.MappingProxyType(fields)


steps = st.lists(
    st.one_of(
        # Event time, ms after the clock's start; naive (UTC) or not.
        st.tuples(st.just("add"), records(), st.integers(-1500, 4000), st.booleans()),
        st.tuples(st.just("tick"), st.integers(0, 900)),  # the clock moves on
        st.tuples(st.just("collect")),  # close_due and dirty, compared
    ),
    max_size=40,
)


def results(found: list[WindowResult]) -> list[WindowResult]:
    return sorted(found, key=lambda r: (r.aggregation, repr(r.group), r.window_id))


@settings(max_examples=300, deadline=None)
@given(steps)
def test_the_compiled_add_computes_what_the_rules_say(plan: list[tuple[Any, ...]]) -> None:
    clock = Settable()
    compiled = Aggregator(SUBCONTRACT, methods={"parity": parity}, clock=cast(Clock, clock))
    reference = Aggregator(SUBCONTRACT, methods={"parity": parity}, clock=cast(Clock, clock))
    for step in plan:
        if step[0] == "add":
            at = clock.at + timedelta(milliseconds=step[2])
            at = at.replace(tzinfo=None) if step[3] else at
            compiled.add(step[1], at)
            reference_add(reference, clock, step[1], at)
        elif step[0] == "tick":
            clock.at += timedelta(milliseconds=step[1])
        else:
            assert results(compiled.close_due()) == results(reference.close_due())
            assert results(compiled.dirty()) == results(reference.dirty())
        assert compiled.late == reference.late
    assert results(compiled.close_all()) == results(reference.close_all())


def test_add_is_compiled_and_counts_a_record_as_the_reference_does() -> None:
    """The comparison above means something only if ``add`` is the compiled code; both count in one aggregator here."""
    clock = Settable()
    aggregator = Aggregator(SUBCONTRACT, methods={"parity": parity}, clock=cast(Clock, clock))
    assert aggregator.add.__code__.co_filename == "<onex.aggregation add>"
    reference_add(aggregator, clock, {"namespace": "ns", "size": 4, "stamp": {"file_size": 3}}, T0)
    aggregator.add({"namespace": "ns", "size": 4, "stamp": {"file_size": 3}}, T0)
    found = {(r.aggregation, r.window_id): r for r in aggregator.close_all()}
    assert found[("by_ns", "")].values["n"] == 2
    assert found[("custom", "")].group == {"key": "even"}
    assert found[("tumble", f"t:{(T0 - EPOCH) // timedelta(milliseconds=1)}")].values["mean"] == 3


def parity_or_raise(record: Any) -> Any:
    """``parity``, raising for a record with ``boom``: a CUSTOM method that fails, after the aggregations before
    its own took the record."""
    if read(record, "boom") is True:
        raise ValueError("boom")
    return parity(record)


during_steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), records(), st.integers(-1500, 4000), st.booleans()),
        st.tuples(st.just("tick"), st.integers(0, 900)),
    ),
    max_size=15,
)


@settings(max_examples=150, deadline=None)
@given(steps, during_steps, st.booleans(), steps)
def test_a_rollback_undoes_every_add_since_the_savepoint_one_that_raised_midway_too(
    before: list[tuple[Any, ...]], during: list[tuple[Any, ...]], raises: bool, after: list[tuple[Any, ...]]
) -> None:
    clock = Settable()
    rolled = Aggregator(SUBCONTRACT, methods={"parity": parity_or_raise}, clock=cast(Clock, clock))
    never = Aggregator(SUBCONTRACT, methods={"parity": parity_or_raise}, clock=cast(Clock, clock))

    def run(plan: list[tuple[Any, ...]], *aggregators: Aggregator) -> None:
        for step in plan:
            if step[0] == "add":
                at = clock.at + timedelta(milliseconds=step[2])
                for aggregator in aggregators:
                    aggregator.add(step[1], at.replace(tzinfo=None) if step[3] else at)
            elif step[0] == "tick":
                clock.at += timedelta(milliseconds=step[1])
            else:
                assert results(rolled.close_due()) == results(never.close_due())
                assert results(rolled.dirty()) == results(never.dirty())
            if len(aggregators) == 2:
                assert rolled.late == never.late

    run(before, rolled, never)
    rolled.savepoint()
    run(during, rolled)  # the clock moves on for both
    if raises:
        with pytest.raises(ValueError, match="boom"):
            rolled.add({"namespace": "ns", "state": "done", "size": 4, "tag": "a", "boom": True}, clock.at)
    rolled.rollback()
    assert rolled.late == never.late
    run(after, rolled, never)
    assert results(rolled.close_all()) == results(never.close_all())
