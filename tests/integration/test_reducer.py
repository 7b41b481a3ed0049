"""The reducer inside whole stamping workflows (``onex.testing.Harness``): its histogram of file sizes, its windows
closing by item count and by time, and its own aggregation_lifecycle FSM per namespace.

Windows are made small by copying the shipped contracts with another ``config.window_items`` / ``window_ms`` (and
``flush_interval_ms`` through the contract's own ``${ONEX_REDUCER_FLUSH_MS}`` interpolation); everything else is the
shipped node graph.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from onex.contracts import ContractSet, load_contracts
from onex.envelope import OnexEnvelopeV1
from onex.testing import Harness

ROOT = Path(__file__).resolve().parents[2]
NS = "it.reducer"
ENTITY = f"namespace:{NS}"
# One window: opened by its first item, closed, its intent emitted, back to idle.
WINDOW_CYCLE = [
    ("idle", "aggregating", "item"),
    ("aggregating", "flushing", "close_window"),
    ("flushing", "idle", "flushed"),
]

pytestmark = pytest.mark.anyio


def with_window(*, size_items: int, size_ms: int, flush_ms: int = 500) -> ContractSet:
    """The shipped contracts, the reducer's intent window replaced and its timer ticking every ``flush_ms``."""
    shipped = load_contracts(ROOT, env={"ONEX_REDUCER_FLUSH_MS": str(flush_ms)})
    reducer = shipped.get("reducer")
    # The namespace totals' window: config.window_items and config.window_ms (whichever is reached first).
    config = {**reducer.config, "window_items": size_items, "window_ms": size_ms}
    changed = reducer.model_copy(update={"config": config})
    return ContractSet(shipped.root, [changed if c is reducer else c for c in shipped.contracts])


def histogram_buckets(contracts: ContractSet) -> tuple[int, ...]:
    """The upper bounds of the reducer's histogram: its SIZE_BUCKETS aggregation's buckets."""
    aggregation = contracts.get("reducer").subcontracts.aggregation
    assert aggregation is not None
    [sizes] = [a for a in aggregation.aggregations if a.type == "SIZE_BUCKETS"]
    return sizes.buckets


def bucket_of(size: int, bounds: Sequence[int]) -> str:
    """The bucket a size falls in: the first upper bound it does not exceed, or above the last one."""
    i = bisect.bisect_left(bounds, size)
    return f"<={bounds[i]}" if i < len(bounds) else f">{bounds[-1]}"


def request(path: Path) -> dict[str, object]:
    return {"file_path": str(path), "namespace": NS}


def intents(h: Harness) -> list[OnexEnvelopeV1]:
    return [e for e in h.of("STATE_AGGREGATION_COMPLETED") if e.payload["namespace"] == NS]


def totals(h: Harness) -> list[tuple[int, int]]:
    """(version, items aggregated) of every intent for the namespace, in the order they were published."""
    return [(e.payload["version"], e.payload["total_items_aggregated"]) for e in intents(h)]


def aggregated(n: int) -> Callable[[OnexEnvelopeV1], bool]:
    """A ``wait_for`` predicate: an aggregate of ``n`` items from ``n`` workflows."""
    return lambda e: (e.payload["total_items_aggregated"], e.payload["total_workflows_processed"]) == (n, n)


def small_files(directory: Path, count: int) -> list[Path]:
    """``count`` small Python files of distinct content."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"f{i}.py" for i in range(count)]
    for i, path in enumerate(paths):
        path.write_text(f"x = {i}\n")
    return paths


async def stamp_one_by_one(h: Harness, paths: Sequence[Path]) -> list[list[tuple[int, int]]]:
    """Stamp the files one workflow at a time; the (version, items) of the intents published so far after each."""
    seen = []
    for path in paths:
        await h.publish("STAMP_REQUESTED", request(path))
        await h.settle()
        seen.append(totals(h))
    return seen


def files_of_sizes(directory: Path, sizes: Sequence[int]) -> list[Path]:
    """One file of each size: text up to 64 KiB (stamped in place), sparse zeros above (binaries, with a sidecar)."""
    directory.mkdir()
    paths = []
    for i, size in enumerate(sizes):
        if size <= 64 * 1024:
            path = directory / f"text{i}.txt"
            path.write_bytes((b"a" * 63 + b"\n") * (size // 64) + b"b" * (size % 64))
        else:
            path = directory / f"blob{i}.bin"
            with path.open("wb") as f:
                f.truncate(size)  # costs no disk however large
        assert path.stat().st_size == size
        paths.append(path)
    return paths


# --- the size histogram ---------------------------------------------------------------------------------------------


async def test_size_buckets_count_each_file_in_the_contracts_histogram_bucket(tmp_path: Path) -> None:
    contracts = load_contracts(ROOT)
    bounds = histogram_buckets(contracts)
    assert len(bounds) >= 2  # the sizes below straddle every bound, and the overflow bucket
    # Each bound exactly (inclusive) and one byte over it (the next bucket), plus the empty file.
    sizes = [0, *(size for bound in bounds for size in (bound, bound + 1))]
    paths = files_of_sizes(tmp_path / "tree", sizes)

    async with Harness(root=ROOT, contracts=contracts) as h:
        for path in paths:
            await h.publish("STAMP_REQUESTED", request(path))
        await h.settle()
        await h.runtime.drain()

        assert len(h.of("WORKFLOW_COMPLETED")) == len(sizes)
        aggregate = await h.store.get_bridge_state(NS)
        assert aggregate is not None
        expected = Counter(bucket_of(size, bounds) for size in sizes)
        assert len(expected) == len(bounds) + 1  # every bucket, the overflow one included, has files
        assert aggregate.aggregation_metadata["size_buckets"] == dict(expected)
        assert aggregate.total_size_bytes == sum(sizes)
        assert intents(h)[-1].payload["size_buckets"] == dict(expected)


async def test_a_restarted_reducer_continues_versions_and_buckets_from_the_store(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path}/onex.db"
    bounds = histogram_buckets(load_contracts(ROOT))
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    small.write_bytes(b"s\n")
    large.write_bytes(b"L" * (bounds[0] + 1))

    async with Harness(root=ROOT, store_url=store_url) as h:
        await h.publish("STAMP_REQUESTED", request(small))
        await h.settle()
        await h.runtime.drain()
        first = await h.store.get_bridge_state(NS)
    assert first is not None

    async with Harness(root=ROOT, store_url=store_url) as h:
        await h.publish("STAMP_REQUESTED", request(large))
        await h.settle()
        await h.runtime.drain()
        assert intents(h)[0].payload["version"] == first.version + 1
        second = await h.store.get_bridge_state(NS)

    assert second is not None
    assert second.version > first.version
    assert (second.total_workflows_processed, second.total_items_aggregated) == (2, 2)
    assert second.total_size_bytes == 2 + bounds[0] + 1
    assert second.aggregation_metadata["size_buckets"] == {bucket_of(2, bounds): 1, bucket_of(bounds[0] + 1, bounds): 1}


# --- windows ---------------------------------------------------------------------------------------------------------


async def test_a_window_closes_when_it_holds_size_items_stamps(tmp_path: Path) -> None:
    # A window no timer closes during the test: only the item count (or the drain) can close it.
    async with Harness(root=ROOT, contracts=with_window(size_items=3, size_ms=600_000)) as h:
        seen = await stamp_one_by_one(h, small_files(tmp_path / "tree", 7))

        # Every handled batch (here: every stamp) is checkpointed as a new version of the namespace's totals; a
        # window's intent carries the version it closed at.
        assert seen[:2] == [[], []]  # two stamps: the window stays open
        assert seen[2] == [(3, 3)]  # the third closes it
        assert seen[3:5] == [[(3, 3)]] * 2
        assert seen[5] == [(3, 3), (6, 6)]  # the sixth closes the next one
        assert seen[6] == seen[5]

        await h.runtime.drain()  # closes the last, partial window
        published = intents(h)
        versions = [e.payload["version"] for e in published]
        assert versions == [3, 6, 7]
        last = published[-1].payload
        assert (last["total_items_aggregated"], last["total_workflows_processed"]) == (7, 7)
        aggregate = await h.store.get_bridge_state(NS)
        assert aggregate is not None
        assert (aggregate.version, aggregate.total_items_aggregated) == (versions[-1], 7)


async def test_a_window_closes_after_size_ms_without_a_drain(tmp_path: Path) -> None:
    # A window no item count closes: only its age can, checked by the reducer's timer every 20 ms.
    async with Harness(root=ROOT, contracts=with_window(size_items=1_000_000, size_ms=50, flush_ms=20)) as h:
        for n, path in enumerate(small_files(tmp_path / "tree", 2), start=1):
            await h.publish("STAMP_REQUESTED", request(path))
            await h.wait_for("STATE_AGGREGATION_COMPLETED", aggregated(n), timeout=10)
        await h.settle()

        versions = [v for v, _ in totals(h)]
        assert versions == sorted(set(versions))
        items = [i for _, i in totals(h)]
        assert items == sorted(items)
        aggregate = await h.store.get_bridge_state(NS)
        assert aggregate is not None
        assert (aggregate.version, aggregate.total_items_aggregated, aggregate.total_workflows_processed) == (
            versions[-1],
            2,
            2,
        )


# --- the reducer's own FSM -------------------------------------------------------------------------------------------


async def test_the_namespace_goes_idle_aggregating_flushing_idle_once_per_window(tmp_path: Path) -> None:
    async with Harness(root=ROOT, contracts=with_window(size_items=3, size_ms=600_000)) as h:
        await stamp_one_by_one(h, small_files(tmp_path / "tree", 6))
        await h.runtime.drain()
        windows = len(intents(h))
        assert windows >= 2

        published = [t for e in h.of("STATE_TRANSITION") for t in e.payload["transitions"] if t["entity_id"] == ENTITY]
        assert [(t["from_state"], t["to_state"], t["trigger"]) for t in published] == WINDOW_CYCLE * windows
        assert {t["entity_type"] for t in published} == {"reducer"}
        stored = await h.store.list_transitions(ENTITY)
        assert [(t.from_state, t.to_state, t.transition_event) for t in stored] == WINDOW_CYCLE * windows
        assert [t.id for t in stored] == [t["transition_id"] for t in published]
