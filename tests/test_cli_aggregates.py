"""``onex aggregates``: the aggregation windows in the store, through the real ``onex`` in a subprocess (stdout a pipe,
never a terminal), over a SQLite store whose rows the test wrote through ``Store.apply``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from onex.store import AggregateWindowRow, WriteBatch
from onex.stores import open_store

ROOT = Path(__file__).resolve().parents[1]
ONEX = Path(sys.executable).with_name("onex")
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
LONG = "n" * 150  # a namespace far wider than the pipe's default 80 columns


def onex(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed ``onex`` with no ONEX_* variable and no COLUMNS: a pipe of the default width."""
    command = [str(ONEX)] if ONEX.exists() else [sys.executable, "-m", "onex.cli"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ONEX_") and k != "COLUMNS"}
    return subprocess.run(
        [*command, "--root", str(ROOT), *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def window(
    namespace: str | None, start: datetime | None, *, aggregation: str = "namespace_stats", **fields: object
) -> AggregateWindowRow:
    values: dict[str, object] = {
        "node": "reducer",
        "aggregation": aggregation,
        "group": {} if namespace is None else {"namespace": namespace},
        "window_id": start.isoformat() if start else "",
        "window_start": start,
        "window_end": start + MINUTE if start else None,
        "closed": False,
        "items": 2,
        "values": {"count": 2, "mean_size": 10.5},
        "state": {"sum": 21.0},
        "version": 1,
    }
    values.update(fields)
    return AggregateWindowRow(**values)  # type: ignore[arg-type]


ROWS = [
    window("a", T0, closed=True, items=5, values={"count": 5}),
    window("a", T0 + MINUTE),
    window("b", T0 + 2 * MINUTE, node="other"),
    window("a", None, aggregation="totals", items=7, values={"count": 7}),
    window(LONG, T0 + 3 * MINUTE, values={"note": "v" * 120}),
]


@pytest.fixture
def url(tmp_path: Path) -> str:
    """A SQLite store holding ``ROWS``, written through ``Store.apply``."""
    url = f"sqlite:///{tmp_path / 'onex.db'}"

    async def write() -> None:
        async with open_store(url) as store:
            await store.upgrade()
            await store.apply(WriteBatch(aggregate_windows=ROWS))

    asyncio.run(write())
    return url


def listed(url: str, cwd: Path, *args: str) -> list[dict[str, object]]:
    result = onex("aggregates", "--store", url, "-o", "json", *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def test_json_lists_every_field_newest_window_first(tmp_path: Path, url: str) -> None:
    rows = listed(url, tmp_path)

    assert [(r["group"], r["window_start"]) for r in rows] == [
        ({"namespace": LONG}, (T0 + 3 * MINUTE).isoformat()),
        ({"namespace": "b"}, (T0 + 2 * MINUTE).isoformat()),
        ({"namespace": "a"}, (T0 + MINUTE).isoformat()),
        ({"namespace": "a"}, T0.isoformat()),
        ({"namespace": "a"}, None),  # the running total, last
    ]
    first = rows[-2]
    assert set(first) == {
        "node", "aggregation", "group", "window_id", "window_start", "window_end", "closed", "items", "values",
        "state", "version", "updated_at",
    }  # fmt: skip
    assert (first["closed"], first["items"], first["values"], first["version"]) == (True, 5, {"count": 5}, 1)
    assert first["window_end"] == (T0 + MINUTE).isoformat()
    assert rows[0]["state"] == {"sum": 21.0}


def test_the_filters_narrow_the_list(tmp_path: Path, url: str) -> None:
    def groups(*args: str) -> list[tuple[object, object]]:
        return [(r["group"], r["window_start"]) for r in listed(url, tmp_path, *args)]

    assert groups("--namespace", "a") == [
        ({"namespace": "a"}, (T0 + MINUTE).isoformat()),
        ({"namespace": "a"}, T0.isoformat()),
        ({"namespace": "a"}, None),
    ]
    assert groups("--namespace", "a", "--aggregation", "totals") == [({"namespace": "a"}, None)]
    assert groups("--node", "other") == [({"namespace": "b"}, (T0 + 2 * MINUTE).isoformat())]
    assert groups("--closed") == [({"namespace": "a"}, T0.isoformat())]
    assert len(groups("--open")) == 4
    assert groups("--namespace", "a", "--open", "--limit", "1") == [({"namespace": "a"}, (T0 + MINUTE).isoformat())]
    assert groups("--namespace", "nowhere") == []
    lines = onex("aggregates", "--store", url, "-o", "jsonl", "--namespace", "a", cwd=tmp_path).stdout.splitlines()
    assert [json.loads(line)["items"] for line in lines] == [2, 5, 7]


def test_the_table_shows_each_window_compactly_and_whole_in_a_pipe(tmp_path: Path, url: str) -> None:
    result = onex("aggregates", "--store", url, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "aggregation" in line and "┃" in line)
    assert [cell.strip() for cell in header.strip("┃ ").split("┃")] == [
        "aggregation", "group", "window", "closed", "items", "values",
    ]  # fmt: skip
    rows = [[c.strip() for c in line.strip().strip("│").split("│")] for line in lines if line.startswith("│")]
    assert rows[0] == [
        "namespace_stats",
        f'{{"namespace":"{LONG}"}}',  # whole, though far wider than 80 columns
        f"{(T0 + 3 * MINUTE).isoformat()}\N{EN DASH}{(T0 + 4 * MINUTE).isoformat()}",
        "no",
        "2",
        f'{{"note":"{"v" * 120}"}}',
    ]
    assert rows[3] == [
        "namespace_stats",
        '{"namespace":"a"}',
        f"{T0.isoformat()}\N{EN DASH}{(T0 + MINUTE).isoformat()}",
        "yes",
        "5",
        '{"count":5}',
    ]
    assert rows[4] == ["totals", '{"namespace":"a"}', "running", "no", "7", '{"count":7}']
    assert "5 window(s)" in result.stdout


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--limit", "0"], "onex aggregates: Invalid value for '--limit'"),
        (["-o", "yaml"], "onex aggregates: Invalid value for '-o'"),
        (["--bogus"], "onex aggregates: No such option '--bogus'"),
    ],
)
def test_a_usage_error_is_one_line_and_exits_2(tmp_path: Path, args: list[str], line: str) -> None:
    result = onex("aggregates", "--store", f"sqlite:///{tmp_path / 'onex.db'}", *args, cwd=tmp_path)

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(line)


def test_a_store_without_the_schema_says_to_upgrade(tmp_path: Path) -> None:
    result = onex("aggregates", "--store", f"sqlite:///{tmp_path / 'onex.db'}", cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "onex db upgrade" in result.stderr
    assert "Traceback" not in result.stderr
