"""The aggregation engine (``onex.aggregation``): functions, group keys, guards and windows over records, on a
``ManualClock``; checkpoints restored exactly; and the aggregation subcontract's shape as the loader takes it.

Every subcontract field is read by at least one test that would fail if the engine ignored it (noted in each
test's name or comment). The load-time checks of the subcontract are in the broken-contract corpus
(``tests/contracts_corpus/aggregation_*``).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from onex.aggregation import Aggregator, WindowResult, bucket_label
from onex.clock import ManualClock
from onex.contracts import AggregationSubcontract, load_contracts, load_subcontract
from onex.exceptions import ContractError

from nodes.models import ModelStampRecord, ModelWorkflowFinished

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)  # a whole minute: windows by time start on multiples of their slide
T0_MS = int(T0.timestamp()) * 1000

pytestmark = pytest.mark.anyio


class Color(enum.Enum):
    RED = "red"
    BLUE = 2


def at(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def subcontract(*aggregations: dict[str, Any]) -> AggregationSubcontract:
    return AggregationSubcontract.model_validate({"version": "2.0.0", "aggregations": list(aggregations)})


def aggregator(*aggregations: dict[str, Any], clock: ManualClock | None = None, **kwargs: Any) -> Aggregator:
    return Aggregator(subcontract(*aggregations), clock=clock or ManualClock(start=T0.timestamp()), **kwargs)


async def move_to(clock: ManualClock, ms: int) -> None:
    """Advance ``clock`` to ``T0 + ms``."""
    await clock.advance((T0_MS + ms) / 1000 - clock.time())


def by_group(results: Iterable[WindowResult]) -> dict[tuple[Any, ...], WindowResult]:
    return {(r.aggregation, *r.group.values(), r.window_id): r for r in results}


def rec(**fields: Any) -> dict[str, Any]:
    return {"namespace": "ns", **fields}


def outcome(size: int, file_type: str = "python", *, namespace: str = "ns", state: str = "completed") -> Any:
    """A reducer's record: a finished workflow with its stamp (pydantic models, read by attribute)."""
    workflow_id = uuid.uuid4()
    stamp = ModelStampRecord(
        stamp_id=uuid.uuid4(),
        file_path=f"/tmp/{workflow_id}.py",
        file_hash=f"hash-{size}",
        file_size=size,
        file_type=file_type,
        stamp_type="lightweight",
        status="stamped",
    )
    return ModelWorkflowFinished(
        workflow_id=workflow_id,
        state=state,
        state_seq=3,
        namespace=namespace,
        started_at=T0,
        completed_at=T0,
        execution_time_ms=12.5,
        stamp=stamp if state == "completed" else None,
    )


# --- functions ----------------------------------------------------------------------------------------------------

ALL_FUNCTIONS = [
    {"name": "n", "function": "count"},
    {"name": "total", "function": "sum", "field": "size"},
    {"name": "smallest", "function": "min", "field": "size"},
    {"name": "largest", "function": "max", "field": "size"},
    {"name": "mean", "function": "avg", "field": "size"},
    {"name": "distinct", "function": "unique_count", "field": "hash"},
    {"name": "sizes", "function": "histogram", "field": "size", "buckets": [10, 100]},
]


def test_each_function_computes_its_value_and_a_missing_field_is_skipped_but_counted() -> None:
    agg = aggregator({"name": "stats", "type": "NAMESPACE_GROUPING", "functions": ALL_FUNCTIONS})
    for size, file_hash in [(5, "a"), (50, "b"), (500, "a"), (None, None)]:  # None: as missing
        agg.add(rec(size=size, hash=file_hash), at(0))
    agg.add(rec(), at(0))  # neither field: counted, nothing else

    [result] = agg.dirty()

    assert result.aggregation == "stats"
    assert result.group == {"namespace": "ns"}
    assert result.items == 5
    assert result.values == {
        "n": 5,
        "total": 555,
        "smallest": 5,
        "largest": 500,
        "mean": 185.0,
        "distinct": 2,
        "sizes": {"<=10": 1, "<=100": 1, ">100": 1},
    }


def test_avg_of_nothing_is_none_and_sum_skips_what_is_not_a_number() -> None:
    agg = aggregator(
        {
            "name": "stats",
            "type": "NAMESPACE_GROUPING",
            "functions": [
                {"name": "mean", "function": "avg", "field": "size"},
                {"name": "total", "function": "sum", "field": "size"},
                {"name": "largest", "function": "max", "field": "size"},
            ],
        }
    )
    agg.add(rec(size="big"), at(0))
    [result] = agg.dirty()
    assert result.values == {"mean": None, "total": 0, "largest": "big"}


def test_min_and_max_of_datetimes_keep_utc_text_that_a_restored_aggregator_compares_with_new_datetimes() -> None:
    # A datetime kept as it came made the state unstorable (not JSON); restored as text, it no longer compared with
    # the datetimes that came next, so the max stayed where it was.
    spec = {
        "name": "m",
        "type": "NAMESPACE_GROUPING",
        "functions": [
            {"name": "latest", "function": "max", "field": "when"},
            {"name": "earliest", "function": "min", "field": "when"},
        ],
    }
    plus_two = timezone(timedelta(hours=2))
    first = aggregator(spec)
    first.add(rec(when=T0.astimezone(plus_two)), at(0))  # 14:00+02:00 is 12:00 UTC
    first.add(rec(when=Color.RED), at(0))  # an enum compares by its value: "red" is no time, but text
    [saved] = first.dirty()
    stored = json.loads(json.dumps(saved.state))
    assert saved.values == stored["acc"] == {"latest": "red", "earliest": "2026-12-02T12:00:00.000000+00:00"}

    second = aggregator(spec)
    second.restore([dataclasses.replace(saved, state=stored)])
    second.add(rec(when=T0 - timedelta(seconds=1)), at(1))
    second.add(rec(when=datetime(2026, 12, 2, 11, 59, 58)), at(1))  # naive: UTC
    [result] = second.dirty()
    assert result.values == {"latest": "red", "earliest": "2026-12-02T11:59:58.000000+00:00"}


def test_1_1_0_and_true_are_three_groups_and_three_unique_values_also_when_restored() -> None:
    # Python finds 1 == 1.0 == True, so all three fell in the group first seen and counted as one unique value.
    spec = {
        "name": "g",
        "type": "NAMESPACE_GROUPING",
        "group_by": ["k"],
        "functions": [{"name": "distinct", "function": "unique_count", "field": "v"}],
    }
    first = aggregator(spec)
    for k in (1, 1.0, True, "1", Color.BLUE):  # Color.BLUE's value is 2
        first.add(rec(k=k, v=k), at(0))
    first.add(rec(k=1.0, v=1), at(0))
    first.add(rec(k=1.0, v=True), at(0))
    saved = first.dirty()
    groups = {json.dumps(r.group["k"]): (r.items, r.values["distinct"]) for r in saved}
    assert groups == {"1": (1, 1), "1.0": (3, 3), "true": (1, 1), '"1"': (1, 1), "2": (1, 1)}

    second = aggregator(spec)
    second.restore([dataclasses.replace(r, state=json.loads(json.dumps(r.state))) for r in saved])
    second.add(rec(k=1.0, v=1.0), at(1))  # in its group already
    second.add(rec(k=True, v=1), at(1))  # not yet in true's
    again = {json.dumps(r.group["k"]): (r.items, r.values["distinct"]) for r in second.dirty()}
    assert again == {"1.0": (4, 3), "true": (2, 2)}


def test_an_event_time_without_a_timezone_is_utc() -> None:
    spec = {"name": "m", "type": "TIME_WINDOW", "group_by": ["namespace"], "window": {"size_ms": 60000}}
    agg = aggregator(spec, {"name": "s", "type": "NAMESPACE_GROUPING", "window": {"type": "session", "gap_ms": 10}})
    agg.add(rec(), T0.replace(tzinfo=None))
    agg.add(rec(), at(5))
    assert {(r.aggregation, r.window_id, r.items, r.window_start) for r in agg.dirty()} == {
        ("m", f"t:{T0_MS}", 2, T0),
        ("s", f"s:{T0_MS}", 2, T0),
    }


def test_histogram_labels_are_the_reducers() -> None:
    bounds = (1024, 65536)
    assert [bucket_label(v, bounds) for v in (0, 1024, 1025, 65536, 65537)] == [
        "<=1024",
        "<=1024",
        "<=65536",
        "<=65536",
        ">65536",
    ]


# --- types, group_by, field, method, where ------------------------------------------------------------------------


async def test_each_type_groups_by_its_own_key_after_group_by() -> None:
    records = [outcome(100, "python"), outcome(2000, "python"), outcome(70_000, "markdown", namespace="other")]
    count = [{"name": "files", "function": "count"}]
    agg = aggregator(
        {"name": "ns", "type": "NAMESPACE_GROUPING", "functions": count},
        {"name": "types", "type": "FILE_TYPE_GROUPING", "group_by": ["namespace"], "functions": count},
        {"name": "sizes", "type": "SIZE_BUCKETS", "buckets": [1024, 65536], "functions": count},
        {"name": "workflows", "type": "WORKFLOW_GROUPING", "functions": count},
        {"name": "all", "type": "TIME_WINDOW", "window": {"size_ms": 60000}, "functions": count},
    )
    for record in records:
        agg.add(record, at(0))

    found = {(r.aggregation, tuple(r.group.items())): r.values["files"] for r in agg.dirty()}

    expected: dict[tuple[str, tuple[tuple[str, Any], ...]], int] = {
        ("ns", (("namespace", "ns"),)): 2,
        ("ns", (("namespace", "other"),)): 1,
        ("types", (("namespace", "ns"), ("stamp.file_type", "python"))): 2,
        ("types", (("namespace", "other"), ("stamp.file_type", "markdown"))): 1,
        ("sizes", (("bucket", "<=1024"),)): 1,
        ("sizes", (("bucket", "<=65536"),)): 1,
        ("sizes", (("bucket", ">65536"),)): 1,
        **{("workflows", (("workflow_id", str(r.workflow_id)),)): 1 for r in records},
        ("all", ()): 3,
    }
    assert found == expected


def test_field_overrides_the_key_field_and_a_missing_key_groups_under_null() -> None:
    count = [{"name": "files", "function": "count"}]
    agg = aggregator(
        {"name": "by_owner", "type": "FILE_TYPE_GROUPING", "field": "owner", "functions": count},
        {"name": "by_weight", "type": "SIZE_BUCKETS", "field": "weight", "buckets": [10], "functions": count},
    )
    agg.add({"owner": "ann", "weight": 3, "stamp": {"file_type": "python"}}, at(0))
    agg.add({"weight": 30}, at(0))

    found = {(r.aggregation, *r.group.values()): r.items for r in agg.dirty()}

    assert found == {("by_owner", "ann"): 1, ("by_owner", None): 1, ("by_weight", "<=10"): 1, ("by_weight", ">10"): 1}


def test_custom_groups_by_what_its_method_returns_and_none_skips_the_record() -> None:
    def team(record: Any) -> str | None:
        return None if record["owner"] == "bot" else record["owner"][0]

    agg = aggregator(
        {"name": "teams", "type": "CUSTOM", "method": "team_of", "functions": [{"name": "n", "function": "count"}]},
        methods={"team_of": team, "other": lambda record: "x"},
    )
    for owner in ("ann", "al", "bob", "bot"):
        agg.add({"owner": owner}, at(0))

    assert {r.group["key"]: r.items for r in agg.dirty()} == {"a": 2, "b": 1}


def test_custom_without_its_method_given_is_refused() -> None:
    with pytest.raises(ValueError, match="no method 'team_of'"):
        aggregator({"name": "teams", "type": "CUSTOM", "method": "team_of"}, methods={"other": lambda r: r})


def test_where_aggregates_only_the_records_its_guard_accepts() -> None:
    agg = aggregator(
        {"name": "done", "type": "NAMESPACE_GROUPING", "where": "state equals completed"},
        {"name": "big", "type": "NAMESPACE_GROUPING", "where": "stamp.file_size >= 1000"},
        {"name": "stamped", "type": "NAMESPACE_GROUPING", "where": "stamp exists"},
    )
    for record in (outcome(10), outcome(5000), outcome(0, state="failed")):
        agg.add(record, at(0))

    assert {r.aggregation: r.items for r in agg.dirty()} == {"done": 2, "big": 1, "stamped": 2}


def test_an_invalid_subcontract_is_refused_by_the_engine_as_by_the_loader() -> None:
    with pytest.raises(ValueError, match="TIME_WINDOW aggregation needs a window"):
        aggregator({"name": "t", "type": "TIME_WINDOW"})
    with pytest.raises(ValueError, match="declared twice"):
        aggregator({"name": "t", "type": "NAMESPACE_GROUPING"}, {"name": "t", "type": "NAMESPACE_GROUPING"})


# --- windows by time ----------------------------------------------------------------------------------------------


async def test_tumbling_by_time_closes_each_window_once_the_clock_passed_its_end() -> None:
    clock = ManualClock(start=T0.timestamp())
    agg = aggregator(
        {"name": "t", "type": "TIME_WINDOW", "group_by": ["namespace"], "window": {"size_ms": 1000}}, clock=clock
    )
    for ms in (0, 400, 999, 1000, 2500):
        agg.add(rec(), at(ms))

    await move_to(clock, 1000)
    assert agg.close_due() == []  # [0, 1000) ends at 1000: not passed yet
    await move_to(clock, 1001)
    [first] = agg.close_due()
    assert (first.window_id, first.items, first.closed) == (f"t:{T0_MS}", 3, True)
    assert (first.window_start, first.window_end) == (at(0), at(1000))
    await move_to(clock, 3001)
    assert [(r.window_id, r.items) for r in agg.close_due()] == [(f"t:{T0_MS + 1000}", 1), (f"t:{T0_MS + 2000}", 1)]
    assert agg.close_due() == []  # handed out once, then forgotten
    assert agg.close_all() == []


async def test_grace_keeps_a_window_open_for_late_records_and_later_ones_are_dropped_and_counted() -> None:
    clock = ManualClock(start=T0.timestamp())
    agg = aggregator({"name": "t", "type": "TIME_WINDOW", "window": {"size_ms": 1000, "grace_ms": 500}}, clock=clock)
    agg.add(rec(), at(100))
    await move_to(clock, 1400)
    agg.add(rec(), at(200))  # within grace: still counted
    assert agg.close_due() == []
    await move_to(clock, 1501)
    [closed] = agg.close_due()
    assert closed.items == 2
    agg.add(rec(), at(300))  # its window is final: late
    agg.add(rec(), at(1600))  # the next window: on time

    assert agg.late == 1
    assert [(r.window_id, r.items) for r in agg.close_all()] == [(f"t:{T0_MS + 1000}", 1)]


async def test_without_grace_a_record_for_a_passed_window_is_late() -> None:
    clock = ManualClock(start=T0.timestamp())
    agg = aggregator({"name": "t", "type": "TIME_WINDOW", "window": {"size_ms": 1000}}, clock=clock)
    await move_to(clock, 1400)
    agg.add(rec(), at(200))
    assert agg.late == 1
    assert agg.dirty() == []


async def test_sliding_by_time_puts_a_record_in_every_window_containing_it() -> None:
    clock = ManualClock(start=T0.timestamp())
    agg = aggregator(
        {"name": "s", "type": "TIME_WINDOW", "window": {"type": "sliding", "size_ms": 1000, "slide_ms": 250}},
        clock=clock,
    )
    agg.add(rec(), at(600))
    agg.add(rec(), at(900))

    windows = {int(r.window_id[2:]) - T0_MS: r.items for r in agg.dirty()}
    assert windows == {-250: 1, 0: 2, 250: 2, 500: 2, 750: 1}
    await move_to(clock, 751)  # [-250, 750) passed
    assert [r.window_id for r in agg.close_due()] == [f"t:{T0_MS - 250}"]
    agg.add(rec(), at(700))  # [-250, 750) is final, the others still take it: not late
    assert agg.late == 0
    assert {int(r.window_id[2:]) - T0_MS: r.items for r in agg.dirty()} == {0: 3, 250: 3, 500: 3}


async def test_a_session_grows_while_records_arrive_within_the_gap_and_closes_after_it() -> None:
    clock = ManualClock(start=T0.timestamp())
    agg = aggregator(
        {"name": "s", "type": "NAMESPACE_GROUPING", "window": {"type": "session", "gap_ms": 100}}, clock=clock
    )
    for ms in (0, 80, 170):
        agg.add(rec(), at(ms))
    agg.add(rec(), at(300))  # 130 ms after the last: a new session
    agg.add(rec(namespace="b"), at(170))  # sessions are per group

    await move_to(clock, 270)
    assert agg.close_due() == []  # now = last + gap: not passed yet
    await move_to(clock, 271)
    closed = by_group(agg.close_due())
    assert {key: (r.items, r.window_start, r.window_end) for key, r in closed.items()} == {
        ("s", "ns", f"s:{T0_MS}"): (3, at(0), at(170)),
        ("s", "b", f"s:{T0_MS + 170}"): (1, at(170), at(170)),
    }
    await move_to(clock, 401)
    assert [(r.window_id, r.items) for r in agg.close_due()] == [(f"s:{T0_MS + 300}", 1)]
    agg.add(rec(), at(250))  # only a session already closed could have taken it
    assert agg.late == 1


async def test_an_old_record_joins_the_open_session_it_falls_in() -> None:
    # It was late when the clock had passed its own time + gap + grace, though its session was still open.
    clock = ManualClock(start=T0.timestamp())
    agg = aggregator(
        {"name": "s", "type": "NAMESPACE_GROUPING", "window": {"type": "session", "gap_ms": 50, "grace_ms": 10}},
        clock=clock,
    )
    for ms in range(100, 201, 20):
        await move_to(clock, ms)
        agg.add(rec(), at(ms))
    await move_to(clock, 255)  # the session is final after 200 + 50 + 10
    agg.add(rec(), at(150))  # in it
    agg.add(rec(), at(60))  # within the gap before it
    assert agg.late == 0
    assert [(r.window_id, r.items, r.window_start) for r in agg.dirty()] == [(f"s:{T0_MS + 100}", 8, at(60))]
    agg.add(rec(), at(0))  # more than the gap before it, and its own session would be final: late
    await move_to(clock, 261)
    agg.add(rec(), at(210))  # within the gap of a session now final: a session of its own
    assert agg.late == 1
    assert [(r.window_id, r.items) for r in agg.close_due()] == [(f"s:{T0_MS + 100}", 8)]
    assert [(r.window_id, r.items) for r in agg.dirty()] == [(f"s:{T0_MS + 210}", 1)]


# --- windows by count ---------------------------------------------------------------------------------------------


def test_tumbling_by_count_closes_each_groups_window_when_full() -> None:
    agg = aggregator(
        {
            "name": "c",
            "type": "NAMESPACE_GROUPING",
            "window": {"size_items": 2},
            "functions": [{"name": "total", "function": "sum", "field": "v"}],
        }
    )
    for namespace, value in [("a", 1), ("b", 10), ("a", 2), ("a", 3)]:
        agg.add(rec(namespace=namespace, v=value), at(value))

    [full] = agg.close_due()
    assert (full.group, full.window_id, full.values, full.closed) == ({"namespace": "a"}, "n:0", {"total": 3}, True)
    assert (full.window_start, full.window_end) == (at(1), at(2))
    open_ = {(r.group["namespace"], r.window_id): r.values["total"] for r in agg.dirty()}
    assert open_ == {("a", "n:1"): 3, ("b", "n:0"): 10}
    assert agg.close_due() == []


def test_sliding_by_count_starts_a_window_every_slide_items_records() -> None:
    agg = aggregator(
        {
            "name": "c",
            "type": "TIME_WINDOW",
            "window": {"type": "sliding", "size_items": 3, "slide_items": 2},
            "functions": [{"name": "seen", "function": "unique_count", "field": "i"}],
        }
    )
    for i in range(6):
        agg.add(rec(i=i), at(i))

    closed = [(r.window_id, r.state["acc"]["seen"]) for r in agg.close_due()]
    assert closed == [("n:0", [0, 1, 2]), ("n:1", [2, 3, 4])]
    assert [(r.window_id, r.state["acc"]["seen"]) for r in agg.dirty()] == [("n:2", [4, 5])]


# --- running totals, dirty, close_all --------------------------------------------------------------------------------


async def test_without_a_window_each_group_has_one_running_total_that_never_closes() -> None:
    clock = ManualClock(start=T0.timestamp())
    agg = aggregator({"name": "totals", "type": "NAMESPACE_GROUPING"}, clock=clock)
    agg.add(rec(), at(0))
    await clock.advance(3600)
    agg.add(rec(), at(10))

    assert agg.close_due() == []
    [result] = agg.close_all()
    assert (result.window_id, result.items, result.closed) == ("", 2, False)
    assert (result.window_start, result.window_end) == (at(0), at(10))


def test_dirty_returns_only_what_changed_since_it_was_last_called() -> None:
    agg = aggregator({"name": "t", "type": "NAMESPACE_GROUPING"})
    agg.add(rec(namespace="a"), at(0))
    agg.add(rec(namespace="b"), at(0))
    assert {r.group["namespace"] for r in agg.dirty()} == {"a", "b"}
    assert agg.dirty() == []
    agg.add(rec(namespace="b"), at(0))
    [changed] = agg.dirty()
    assert (changed.group, changed.items, changed.closed) == ({"namespace": "b"}, 2, False)


async def test_close_all_hands_out_due_windows_closed_and_open_ones_not_closed() -> None:
    clock = ManualClock(start=T0.timestamp())
    agg = aggregator({"name": "t", "type": "TIME_WINDOW", "window": {"size_ms": 1000}}, clock=clock)
    agg.add(rec(), at(0))
    agg.add(rec(), at(1500))
    await move_to(clock, 1200)

    drained = [(r.window_id, r.closed) for r in agg.close_all()]

    assert drained == [(f"t:{T0_MS}", True), (f"t:{T0_MS + 1000}", False)]
    assert agg.close_all() == []


# --- restore ------------------------------------------------------------------------------------------------------

RESTORED: list[dict[str, Any]] = [
    {"name": "totals", "type": "NAMESPACE_GROUPING", "functions": ALL_FUNCTIONS},
    {"name": "minute", "type": "TIME_WINDOW", "group_by": ["namespace"], "window": {"size_ms": 60000}},
    {
        "name": "slide",
        "type": "SIZE_BUCKETS",
        "buckets": [100],
        "field": "size",
        "window": {"type": "sliding", "size_ms": 1000, "slide_ms": 500},
        "functions": ALL_FUNCTIONS,
    },
    {
        "name": "counted",
        "type": "NAMESPACE_GROUPING",
        "window": {"type": "sliding", "size_items": 4, "slide_items": 3},
        "functions": ALL_FUNCTIONS,
    },
    {"name": "sessions", "type": "NAMESPACE_GROUPING", "window": {"type": "session", "gap_ms": 200}},
]


def records(n: int) -> list[tuple[dict[str, Any], datetime]]:
    return [(rec(namespace=f"n{i % 2}", size=i * 37 % 150, hash=f"h{i % 5}"), at(i * 70)) for i in range(n)]


def test_restore_continues_every_kind_of_window_exactly() -> None:
    everything = records(20)
    one = aggregator(*RESTORED)
    for record, when in everything:
        one.add(record, when)
    expected = sorted(one.close_due() + one.close_all(), key=repr)

    first = aggregator(*RESTORED)
    for record, when in everything[:9]:
        first.add(record, when)
    closed = first.close_due()
    checkpoint = first.dirty()
    second = aggregator(*RESTORED)
    second.restore(checkpoint + closed)
    for record, when in everything[9:]:
        second.add(record, when)
    resumed = sorted(closed + second.close_due() + second.close_all(), key=repr)

    assert {r.aggregation for r in expected} == {"totals", "minute", "slide", "counted", "sessions"}
    assert resumed == expected


def test_count_windows_keep_their_numbering_when_restored_from_a_closed_window() -> None:
    spec = {"name": "c", "type": "NAMESPACE_GROUPING", "window": {"size_items": 2}}
    first = aggregator(spec)
    first.add(rec(), at(0))
    first.add(rec(), at(1))
    [closed] = first.close_due()
    second = aggregator(spec)
    second.restore([closed])
    second.add(rec(), at(2))

    [next_window] = second.dirty()
    assert next_window.window_id == "n:1"


def test_the_state_of_a_result_is_json() -> None:
    import json

    agg = aggregator(*RESTORED)
    for record, when in records(10):
        agg.add(record, when)
    for result in agg.close_all():
        assert json.loads(json.dumps([result.group, result.values, result.state])) == [
            result.group,
            result.values,
            result.state,
        ]


async def test_a_rollback_puts_back_a_session_it_extended_and_a_count_window_that_filled() -> None:
    clock = ManualClock(start=T0.timestamp())
    agg = aggregator(
        {"name": "s", "type": "NAMESPACE_GROUPING", "window": {"type": "session", "gap_ms": 100}},
        {"name": "c", "type": "NAMESPACE_GROUPING", "window": {"size_items": 2}, "functions": ALL_FUNCTIONS},
        clock=clock,
    )
    agg.add(rec(size=5, hash="a"), at(0))
    agg.dirty()
    agg.savepoint()
    agg.add(rec(size=50, hash="b"), at(90))  # extends the session to 90, fills count window n:0
    agg.add(rec(size=7, hash="c"), at(300))  # a session and a count window of its own
    agg.rollback()
    assert agg.dirty() == []  # nothing changed since the last call, as before the savepoint
    await move_to(clock, 101)  # final only if the session ends at 0 again
    assert [(r.window_id, r.items) for r in agg.close_due()] == [(f"s:{T0_MS}", 1)]
    agg.add(rec(size=1, hash="d"), at(101))  # the second record of n:0, not the fourth
    [full] = [r for r in agg.close_due() if r.aggregation == "c"]
    assert (full.window_id, full.items) == ("n:0", 2)
    assert full.values == {
        "n": 2,
        "total": 6,
        "smallest": 1,
        "largest": 5,
        "mean": 3.0,
        "distinct": 2,
        "sizes": {"<=10": 2, "<=100": 0, ">100": 0},
    }


# --- forget -------------------------------------------------------------------------------------------------------


def test_forget_drops_the_groups_that_moved_away() -> None:
    agg = aggregator(
        {"name": "t", "type": "NAMESPACE_GROUPING"},
        {"name": "c", "type": "NAMESPACE_GROUPING", "window": {"size_items": 2}},
    )
    for namespace in ("a", "b", "b"):
        agg.add(rec(namespace=namespace), at(0))

    agg.forget(lambda group: group["namespace"] == "a")

    assert {(r.aggregation, r.group["namespace"]) for r in agg.dirty()} == {("t", "a"), ("c", "a")}
    assert agg.close_due() == []  # b's full count window went with it
    agg.add(rec(namespace="b"), at(0))
    assert [(r.window_id, r.items) for r in agg.dirty() if r.aggregation == "c"] == [("n:0", 1)]


# --- the shipped subcontract and its shape --------------------------------------------------------------------------


async def test_the_shipped_subcontract_aggregates_the_reducers_records() -> None:
    shipped = load_contracts(ROOT, env={}).get("reducer").subcontracts.aggregation
    assert shipped is not None
    clock = ManualClock(start=T0.timestamp())
    agg = Aggregator(shipped, clock=clock)
    for record in (outcome(100), outcome(100), outcome(5000, "markdown"), outcome(0, state="failed")):
        agg.add(record, at(1000))
    await move_to(clock, 65_001)

    closed = by_group(agg.close_due())
    found = by_group(agg.close_all())

    minute = closed[("per_minute", "ns", f"t:{T0_MS}")]
    assert minute.values == {
        "workflows": 4,
        "bytes": 5200,
        "mean_size": 5200 / 3,
        "largest": 5000,
        "sizes": {"<=1024": 2, "<=65536": 1, "<=1048576": 0, "<=67108864": 0, ">67108864": 0},
    }
    assert found[("by_file_type", "ns", "python", "")].values == {"files": 2, "bytes": 200}
    assert found[("size_buckets", "ns", "<=65536", "")].values == {"files": 1, "bytes": 5000}
    assert found[("outcomes", "failed", "ns", "")].values["workflows"] == 1


def test_the_old_top_level_fields_are_refused_as_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "subcontracts/aggregation/old.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(
        "subcontract_type: aggregation\nversion: 1.0.0\ngroup_by: [namespace]\n"
        "functions:\n  - {name: items, function: count}\nwindow: {type: tumbling, size_ms: 500}\n"
    )

    with pytest.raises(ContractError) as raised:
        load_subcontract(path, root=tmp_path)

    assert [(i.line, i.code) for i in raised.value.issues] == [
        (1, "schema"),
        (3, "schema"),
        (4, "schema"),
        (6, "schema"),
    ]
