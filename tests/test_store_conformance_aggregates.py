"""The store contract for aggregation windows and nodes' keyed state (issue 14), run against every ``Store``
(``tests/fixtures/stores.py``: SQLite and PostgreSQL), as ``tests/test_store_conformance.py`` is.

Pinned here: ``aggregate_windows`` and ``node_states`` round trips, the version guard (monotonic; a node state of
version 0 always overwrites), the filters and order of ``list_aggregate_windows``, what a restarting reducer reads
back, JSON that survives both stores, and the upgrade of a database written at schema version 3.
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from onex import _postgres, _sqlite
from onex.exceptions import StoreError
from onex.store import (
    TABLES,
    AggregateWindowRow,
    BridgeStateRow,
    DeadLetterRow,
    NodeStateRow,
    Store,
    WriteBatch,
    group_key,
)
from onex.stores import open_store

from tests.fixtures.stores import MakeStore

pytestmark = pytest.mark.anyio

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def window(
    group: dict[str, Any],
    start: datetime | None,
    *,
    version: int = 1,
    node: str = "reducer",
    aggregation: str = "namespace_stats",
    closed: bool = False,
    items: int = 1,
    values: dict[str, Any] | None = None,
    state: dict[str, Any] | None = None,
    window_id: str | None = None,
    updated_at: datetime | None = None,
) -> AggregateWindowRow:
    return AggregateWindowRow(
        node=node,
        aggregation=aggregation,
        group=group,
        window_id=(start.isoformat() if start is not None else "") if window_id is None else window_id,
        window_start=start,
        window_end=start + MINUTE if start is not None else None,
        closed=closed,
        items=items,
        values={"count": items} if values is None else values,
        state={} if state is None else state,
        version=version,
        updated_at=updated_at,
    )


def stored(row: AggregateWindowRow) -> AggregateWindowRow:
    """``row`` without the time of its write, to compare with what was written."""
    return dataclasses.replace(row, updated_at=None)


def bare(rows: list[NodeStateRow]) -> list[NodeStateRow]:
    return [dataclasses.replace(r, updated_at=None) for r in rows]


# --- round trips ---------------------------------------------------------------------------------------------------


async def test_an_aggregate_window_round_trips(store: Store) -> None:
    row = window(
        {"namespace": "ns", "file_type": "python"},
        T0,
        closed=True,
        items=3,
        values={"count": 3, "total_size": 300, "mean": 100.5},
        state={"sum": 301.5, "seen": ["a", "b"]},
        version=7,
    )
    await store.apply(WriteBatch(aggregate_windows=[row]))

    [got] = await store.list_aggregate_windows()
    assert stored(got) == row
    assert got.updated_at is not None
    assert got.updated_at.utcoffset() == timedelta(0)
    assert isinstance(got.closed, bool)
    assert await store.get_aggregate_windows("reducer", open_only=False) == [got]
    assert await store.count("aggregate_windows") == 1


async def test_a_window_without_group_or_window_round_trips(store: Store) -> None:
    row = window({}, None, values={}, state={})
    await store.apply(WriteBatch(aggregate_windows=[row]))
    [got] = await store.get_aggregate_windows("reducer")
    assert stored(got) == row
    assert (got.window_id, got.window_start, got.window_end, got.group) == ("", None, None, {})


async def test_a_node_state_round_trips(store: Store) -> None:
    row = NodeStateRow("registry", "node-1", 3, {"health": "HEALTHY", "seen": 2})
    await store.apply(WriteBatch(node_states=[row]))
    [got] = await store.get_node_states("registry", ["node-1"])
    assert dataclasses.replace(got, updated_at=None) == row
    assert got.updated_at is not None
    assert got.updated_at.utcoffset() == timedelta(0)
    assert await store.count("node_states") == 1


async def test_the_write_time_fills_a_missing_updated_at_and_a_given_one_is_kept(store: Store) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    given = T0 - timedelta(days=1)
    await store.apply(
        WriteBatch(
            aggregate_windows=[window({"namespace": "a"}, T0), window({"namespace": "b"}, T0, updated_at=given)],
            node_states=[NodeStateRow("n", "k", 1, {})],
        )
    )
    by_ns = {w.group["namespace"]: w.updated_at for w in await store.list_aggregate_windows()}
    assert by_ns["b"] == given
    assert by_ns["a"] is not None
    assert by_ns["a"] >= before
    [state] = await store.list_node_states("n")
    assert state.updated_at is not None
    assert state.updated_at >= before

    # An update is written at its own time too, and only when it is applied.
    await store.apply(
        WriteBatch(
            aggregate_windows=[window({"namespace": "b"}, T0, version=2, updated_at=given + MINUTE)],
            node_states=[NodeStateRow("n", "k", 2, {}, updated_at=given)],
        )
    )
    await store.apply(WriteBatch(aggregate_windows=[window({"namespace": "b"}, T0, version=1, updated_at=T0)]))
    [b] = await store.list_aggregate_windows(namespace="b")
    assert b.updated_at == given + MINUTE
    [state] = await store.list_node_states("n")
    assert state.updated_at == given


# --- versions ------------------------------------------------------------------------------------------------------


async def test_a_window_is_replaced_only_by_a_higher_version(store: Store) -> None:
    group = {"namespace": "ns"}
    await store.apply(WriteBatch(aggregate_windows=[window(group, T0, version=5, items=5)]))
    for stale in (4, 5, 0):  # older, equal (a redelivery), and 0: windows are always monotonic
        await store.apply(WriteBatch(aggregate_windows=[window(group, T0, version=stale, items=99, closed=True)]))
    [got] = await store.list_aggregate_windows()
    assert (got.version, got.items, got.closed) == (5, 5, False)

    await store.apply(WriteBatch(aggregate_windows=[window(group, T0, version=6, items=6, closed=True)]))
    [got] = await store.list_aggregate_windows()
    assert (got.version, got.items, got.closed, got.values) == (6, 6, True, {"count": 6})


async def test_a_node_state_is_replaced_only_by_a_higher_version(store: Store) -> None:
    await store.apply(WriteBatch(node_states=[NodeStateRow("n", "k", 5, {"v": 5})]))
    await store.apply(WriteBatch(node_states=[NodeStateRow("n", "k", 4, {"v": 4})]))
    await store.apply(WriteBatch(node_states=[NodeStateRow("n", "k", 5, {"v": "again"})]))
    assert bare(await store.get_node_states("n", ["k"])) == [NodeStateRow("n", "k", 5, {"v": 5})]
    await store.apply(WriteBatch(node_states=[NodeStateRow("n", "k", 9, {"v": 9})]))
    assert bare(await store.get_node_states("n", ["k"])) == [NodeStateRow("n", "k", 9, {"v": 9})]


async def test_a_node_state_of_version_0_always_overwrites(store: Store) -> None:
    # versioning: none writes version 0, and the last write wins, over a versioned row too.
    await store.apply(WriteBatch(node_states=[NodeStateRow("n", "k", 8, {"v": 8})]))
    await store.apply(WriteBatch(node_states=[NodeStateRow("n", "k", 0, {"v": "first"})]))
    assert bare(await store.get_node_states("n", ["k"])) == [NodeStateRow("n", "k", 0, {"v": "first"})]
    await store.apply(WriteBatch(node_states=[NodeStateRow("n", "k", 0, {"v": "second"})]))
    assert bare(await store.get_node_states("n", ["k"])) == [NodeStateRow("n", "k", 0, {"v": "second"})]
    await store.apply(WriteBatch(node_states=[NodeStateRow("n", "k", 1, {"v": 1})]))  # and versions start again
    assert bare(await store.get_node_states("n", ["k"])) == [NodeStateRow("n", "k", 1, {"v": 1})]


async def test_several_rows_of_one_key_in_one_batch_apply_in_order(store: Store) -> None:
    # 40 rows: past PostgresStore's bulk_min_rows, so its set-based path (rounds per key) is the one exercised.
    groups = [{"namespace": f"ns{i}"} for i in range(10)]
    rows = [window(g, T0, version=v, items=v) for v in (1, 3, 2, 4) for g in groups]
    states = [NodeStateRow("n", f"k{i}", v, {"v": v}) for v in (2, 1, 0, 3) for i in range(10)]
    await store.apply(WriteBatch(aggregate_windows=rows, node_states=states))
    assert {(w.group["namespace"], w.version, w.items) for w in await store.list_aggregate_windows()} == {
        (g["namespace"], 4, 4) for g in groups
    }
    # 2, then 1 refused, then 0 overwrites, then 3 is higher than 0.
    assert {(s.key, s.version) for s in await store.list_node_states("n")} == {(f"k{i}", 3) for i in range(10)}


async def test_a_group_is_one_key_whatever_the_order_of_its_fields(store: Store) -> None:
    first = window({"namespace": "ns", "file_type": "py"}, T0, version=1, items=1)
    second = window({"file_type": "py", "namespace": "ns"}, T0, version=2, items=2)
    await store.apply(WriteBatch(aggregate_windows=[first]))
    await store.apply(WriteBatch(aggregate_windows=[second]))
    [got] = await store.list_aggregate_windows()
    assert (got.items, got.group) == (2, {"namespace": "ns", "file_type": "py"})
    assert group_key(second.group) == group_key(first.group) == '{"file_type":"py","namespace":"ns"}'


# --- queries -------------------------------------------------------------------------------------------------------


@pytest.fixture
def windows() -> list[AggregateWindowRow]:
    """Windows of two namespaces, two aggregations, two nodes; open and closed; one running total per namespace."""
    return [
        window({"namespace": "a"}, T0, closed=True),
        window({"namespace": "a"}, T0 + MINUTE),
        window({"namespace": "a", "file_type": "py"}, T0 + MINUTE),
        window({"namespace": "a"}, None, aggregation="totals"),
        window({"namespace": "b"}, T0 + 2 * MINUTE),
        window({"namespace": "b"}, T0, closed=True, aggregation="totals"),
        window({"file_type": "py"}, T0 + 3 * MINUTE),  # no namespace in its group
        window({"namespace": "a"}, T0 + 5 * MINUTE, node="other"),
    ]


def keys(rows: list[AggregateWindowRow]) -> list[tuple[str, str, str, datetime | None]]:
    return [(r.node, r.aggregation, group_key(r.group), r.window_start) for r in rows]


async def test_windows_are_listed_newest_first_then_by_group_running_totals_last(
    store: Store, windows: list[AggregateWindowRow]
) -> None:
    await store.apply(WriteBatch(aggregate_windows=windows[::-1]))
    expected = sorted(
        windows,
        key=lambda w: (
            w.window_start is None,
            -(w.window_start - T0).total_seconds() if w.window_start else 0,
            group_key(w.group),
            w.node,
            w.aggregation,
        ),
    )
    assert keys(await store.list_aggregate_windows()) == keys(expected)
    assert keys(await store.list_aggregate_windows(limit=3)) == keys(expected[:3])
    assert await store.list_aggregate_windows(limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        await store.list_aggregate_windows(limit=-1)


async def test_windows_are_filtered_by_every_filter_given(store: Store, windows: list[AggregateWindowRow]) -> None:
    await store.apply(WriteBatch(aggregate_windows=windows))

    async def found(**filters: Any) -> set[tuple[str, str, str, datetime | None]]:
        return set(keys(await store.list_aggregate_windows(**filters)))

    def where(keep: Any) -> set[tuple[str, str, str, datetime | None]]:
        return set(keys([w for w in windows if keep(w)]))

    assert await found(namespace="a") == where(lambda w: w.group.get("namespace") == "a")
    assert await found(namespace="nowhere") == set()
    assert await found(aggregation="totals") == where(lambda w: w.aggregation == "totals")
    assert await found(node="other") == where(lambda w: w.node == "other")
    assert await found(closed=True) == where(lambda w: w.closed)
    assert await found(closed=False) == where(lambda w: not w.closed)
    since = T0 + MINUTE
    assert await found(since=since) == where(lambda w: w.window_start is not None and w.window_start >= since)
    assert await found(namespace="a", aggregation="namespace_stats", node="reducer", closed=False, since=since) == (
        where(
            lambda w: (
                (w.group.get("namespace"), w.aggregation, w.node, w.closed)
                == ("a", "namespace_stats", "reducer", False)
                and w.window_start is not None
                and w.window_start >= since
            )
        )
    )
    assert len(await found(namespace="a", closed=False, since=since)) == 3


@pytest.fixture
def local_zone_not_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run in a local time zone 5:30 east of UTC, so that "naive means local time" would show."""
    monkeypatch.setenv("TZ", "ONEX-05:30")  # a POSIX TZ string: needs no tz database
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("local_zone_not_utc")
async def test_naive_times_are_utc(store: Store, windows: list[AggregateWindowRow]) -> None:
    naive = window({"namespace": "naive"}, (T0 + 9 * MINUTE).replace(tzinfo=None))
    await store.apply(WriteBatch(aggregate_windows=[*windows, naive]))
    [got] = await store.list_aggregate_windows(namespace="naive")
    assert (got.window_start, got.window_end) == (T0 + 9 * MINUTE, T0 + 10 * MINUTE)
    assert got.window_start is not None
    assert got.window_start.utcoffset() == timedelta(0)

    since = (T0 + 2 * MINUTE).replace(tzinfo=None)
    zoned = (T0 + 2 * MINUTE).astimezone(timezone(timedelta(hours=-5)))
    expected = keys(await store.list_aggregate_windows(since=T0 + 2 * MINUTE))
    assert len(expected) == 4
    assert keys(await store.list_aggregate_windows(since=since)) == expected
    assert keys(await store.list_aggregate_windows(since=zoned)) == expected


async def test_a_restarting_reducer_reads_back_its_open_windows(
    store: Store, windows: list[AggregateWindowRow]
) -> None:
    await store.apply(WriteBatch(aggregate_windows=windows))
    mine = [w for w in windows if w.node == "reducer"]
    order = sorted(mine, key=lambda w: (w.aggregation, group_key(w.group), w.window_id))
    assert [stored(w) for w in await store.get_aggregate_windows("reducer", open_only=False)] == order
    assert [stored(w) for w in await store.get_aggregate_windows("reducer")] == [w for w in order if not w.closed]
    assert [stored(w) for w in await store.get_aggregate_windows("other")] == [windows[-1]]
    assert await store.get_aggregate_windows("nobody") == []


async def test_node_states_are_read_by_key_and_listed_by_key(store: Store) -> None:
    rows = [NodeStateRow("n", f"k{i:04d}", i + 1, {"i": i}) for i in range(1_234)]  # more than one IN list
    await store.apply(WriteBatch(node_states=[*rows[::-1], NodeStateRow("other", "k0001", 1, {"other": True})]))

    wanted = [r.key for r in rows[::-1]] + ["missing"]
    got = bare(await store.get_node_states("n", wanted))
    assert sorted(got, key=lambda r: r.key) == rows
    assert await store.get_node_states("n", []) == []
    assert bare(await store.get_node_states("other", ["k0001", "k0002"])) == [
        NodeStateRow("other", "k0001", 1, {"other": True})
    ]
    assert bare(await store.list_node_states("n", limit=5)) == rows[:5]
    assert bare(await store.list_node_states("n")) == rows[:1000]  # the default limit
    with pytest.raises(ValueError, match="limit"):
        await store.list_node_states("n", limit=-1)


# --- values --------------------------------------------------------------------------------------------------------

ODD_JSON: dict[str, Any] = {
    "nested": {"deeper": {"list": [1, 2.5, None, "x", {"k": False}]}, "empty": {}},
    "float": 0.1,
    "negative": -1234.5678,
    "small": 1e-7,
    "big_int": 2**62,
    "none": None,
    "bool": True,
    "text": "ünïcödé 名前 ✓ 🚀 \"quoted\" 'single' \\ back",
    "empty_list": [],
}


async def test_json_values_survive_the_store(store: Store) -> None:
    group = {"namespace": "O'Brien's \"ns\"", "bucket": 3, "flag": None}
    row = window(group, T0, values=ODD_JSON, state={"state": ODD_JSON})
    node_state = NodeStateRow("n", "O'Brien; DROP TABLE node_states; --", 1, ODD_JSON)
    await store.apply(WriteBatch(aggregate_windows=[row], node_states=[node_state]))
    [got] = await store.list_aggregate_windows(namespace="O'Brien's \"ns\"")
    assert stored(got) == row
    assert got.values["float"] == 0.1
    assert isinstance(got.values["negative"], float)
    assert bare(await store.get_node_states("n", [node_state.key])) == [node_state]


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"values": {"mean": math.nan}}, id="nan-value"),
        pytest.param({"state": {"x": math.inf}}, id="infinite-state"),
        pytest.param({"group": {"namespace": "ns", "x": math.nan}}, id="nan-group"),
        pytest.param({"values": {"when": object()}}, id="not-json"),
    ],
)
async def test_a_window_json_cannot_hold_fails_the_whole_batch(store: Store, bad: dict[str, Any]) -> None:
    good = window({"namespace": "ok"}, T0)
    broken = dataclasses.replace(window({"namespace": "bad"}, T0), **bad)
    with pytest.raises(StoreError, match="aggregate_windows"):
        await store.apply(
            WriteBatch(
                aggregate_windows=[good, broken],
                node_states=[NodeStateRow("n", "k", 1, {})],
                bridge_states=[BridgeStateRow("ok", 1, 1, 1, 1, 1, "idle")],
            )
        )
    assert {t: await store.count(t) for t in ("aggregate_windows", "node_states", "bridge_states")} == dict.fromkeys(
        ("aggregate_windows", "node_states", "bridge_states"), 0
    )


def test_the_batch_counts_the_new_rows() -> None:
    batch = WriteBatch(aggregate_windows=[window({}, None)] * 2, node_states=[NodeStateRow("n", "k", 0, {})])
    assert len(batch) == 3


# --- migration from schema version 3 -------------------------------------------------------------------------------


async def test_a_database_at_schema_3_with_rows_upgrades_and_keeps_them(store_url: str, make_store: MakeStore) -> None:
    letter = DeadLetterRow(uuid.uuid4(), "t.dlq", "t", "E", "ValueError", "boom", 3, {"payload": {}})
    with pytest.MonkeyPatch.context() as patch:
        module: Any = _sqlite if store_url.startswith("sqlite:") else _postgres
        shipped = module._migrations()
        assert shipped[3].name == "0004_aggregates_and_node_state"
        patch.setattr(module, "_migrations", lambda: shipped[:3])  # the onex before this schema
        async with open_store(store_url) as old:
            assert [m[:4] for m in await old.upgrade()] == ["0001", "0002", "0003"]
            # Its workflow rows are not written by this onex, whose rows have a later column (migration 0007).
            await old.apply(WriteBatch(bridge_states=[BridgeStateRow("ns", 4, 1, 1, 10, 1, "idle")]))
            await old.add_dead_letters([letter])
            with pytest.raises(StoreError):  # the table is not there yet
                await old.count("aggregate_windows")

    store = await make_store(upgrade=False)
    with pytest.raises(StoreError, match=r"0004_aggregates_and_node_state.*onex db upgrade"):
        await store.list_aggregate_windows()
    assert (await store.upgrade())[0] == "0004_aggregates_and_node_state"  # and the later ones
    assert await store.upgrade() == []

    bridge = await store.get_bridge_state("ns")
    assert bridge is not None
    assert bridge.version == 4
    assert [d.event_id for d in await store.list_dead_letters()] == [letter.event_id]
    assert {t: await store.count(t) for t in TABLES} == {
        **dict.fromkeys(TABLES, 0),
        "bridge_states": 1,
        "dead_letters": 1,
    }

    row = window({"namespace": "ns"}, T0)
    await store.apply(WriteBatch(aggregate_windows=[row], node_states=[NodeStateRow("n", "k", 1, {})]))
    assert [stored(w) for w in await store.list_aggregate_windows(namespace="ns")] == [row]
    assert (await store.count("aggregate_windows"), await store.count("node_states")) == (1, 1)


# --- PostgreSQL's three write paths agree on the new tables ----------------------------------------------------------


@pytest.mark.parametrize("method", ["unnest", "json", "copy", "executemany"])
async def test_every_postgres_bulk_method_writes_windows_and_node_states(postgres_dsn: str, method: str) -> None:
    # bulk_min_rows=1: set-based even for few rows; COPY names the quoted "values" and "key" columns.
    url = f"{postgres_dsn}&bulk_method={method}&bulk_min_rows=1"
    rows = [
        window({"namespace": "ns", "i": i}, T0, version=v, items=v, values=ODD_JSON) for v in (2, 1) for i in range(3)
    ]
    states = [NodeStateRow("n", f"k{i}", v, {"v": v}) for v in (3, 0, 1) for i in range(3)]
    async with open_store(url) as store:
        await store.upgrade()
        await store.apply(WriteBatch(aggregate_windows=rows, node_states=states))
        await store.apply(WriteBatch(aggregate_windows=rows, node_states=states))  # redelivered
        got = await store.list_aggregate_windows(namespace="ns")
        assert sorted((w.group["i"], w.version, w.items, w.values == ODD_JSON) for w in got) == [
            (i, 2, 2, True) for i in range(3)
        ]
        # 3, then 0 overwrites, then 1 is higher than 0: redelivered, the same again.
        assert {(s.key, s.version) for s in await store.list_node_states("n")} == {(f"k{i}", 1) for i in range(3)}
