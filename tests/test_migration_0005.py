"""Migration 0005: the O.N.E. v0.1 columns of ``metadata_stamps`` (issue 16), on SQLite and on PostgreSQL.

A database is built at the previous schema (migrations 0001-0004 only) and filled the way the 0004-era code wrote
it: plain rows in the columns it had, a file stamped three times (one of them at the same instant as another), a
workflow whose intelligence step answered, a stamp without a workflow. It is then upgraded, and the backfill is
checked column by column. Then the rows written after the upgrade: numbered by the store (restamps of a file in
one batch and across batches, on each PostgreSQL write path), their intelligence data filled whichever of the stamp
and the step is stored first.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from onex import _sqlite
from onex._postgres import PostgresSettings
from onex.settings import DEFAULT_METADATA_VERSION, DEFAULT_PROTOCOL_VERSION
from onex.store import StampRow, StepRow, Store, WriteBatch
from onex.stores import open_store

from tests.fixtures.stores import MakeStore, upgrade_before

pytestmark = pytest.mark.anyio

T0 = datetime(2025, 9, 28, 10, 30, tzinfo=UTC)
ANSWER = {"context": "automated_processing", "priority": "high"}  # the seed's example intelligence_data

# What the 0004-era database adapter wrote: one stamp row per STAMP_CREATED / outcome, in the 0001 columns.
OLD_COLUMNS = (
    "id",
    "file_hash",
    "file_path",
    "file_size",
    "namespace",
    "stamp_type",
    "file_type",
    "workflow_id",
    "stamp_data",
    "created_at",
)


def _old_rows(ops: Sequence[uuid.UUID]) -> list[tuple[Any, ...]]:
    """Stamps at schema 4: a.py stamped three times (the second and third at the same instant, so their order
    is the order stored), b.md once, and a.py in another namespace (its own file)."""
    a, b, c, d, e = ops
    return [
        (uuid.uuid4(), "1" * 64, "src/a.py", 10, "ns", "lightweight", "python", a, {"uid": "x"}, T0),
        (uuid.uuid4(), "2" * 64, "src/a.py", 12, "ns", "lightweight", "python", b, {}, T0 + timedelta(seconds=5)),
        (uuid.uuid4(), "3" * 64, "src/a.py", 14, "ns", "rich", "python", c, {}, T0 + timedelta(seconds=5)),
        (uuid.uuid4(), "4" * 64, "docs/b.md", 99, "ns", "lightweight", "markdown", d, {}, T0),
        (uuid.uuid4(), "1" * 64, "src/a.py", 10, "other", "lightweight", "python", None, {}, T0),
        (uuid.uuid4(), "5" * 64, "pic.png", 2048, "ns", "sidecar", "image", e, {}, T0),
    ]


def _old_steps(ops: Sequence[uuid.UUID]) -> list[tuple[Any, ...]]:
    """workflow_steps at schema 4: op d's intelligence step answered; op a's was skipped; op e's failed."""
    a, _, _, d, e = ops
    return [
        (a, "intelligence", 1, "skipped", {"skipped": "no intelligence service configured"}, T0),
        (d, "intelligence", 1, "completed", ANSWER, T0),
        (e, "intelligence", 1, "failed", {"partial": True}, T0),
    ]


def _sqlite_ts(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _write_old_sqlite(path: str, ops: Sequence[uuid.UUID]) -> None:
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.executemany(
                f"INSERT INTO metadata_stamps ({', '.join(OLD_COLUMNS)}) VALUES ({', '.join('?' * len(OLD_COLUMNS))})",
                [
                    (str(i), h, p, s, ns, st, ft, None if w is None else str(w), json.dumps(sd), _sqlite_ts(t))
                    for i, h, p, s, ns, st, ft, w, sd, t in _old_rows(ops)
                ],
            )
            conn.executemany(
                "INSERT INTO workflow_steps (workflow_id, step_name, step_order, status, step_data, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (str(w), n, o, st, json.dumps(d), _sqlite_ts(t), _sqlite_ts(t))
                    for w, n, o, st, d, t in _old_steps(ops)
                ],
            )
    finally:
        conn.close()


async def _write_old_postgres(url: str, ops: Sequence[uuid.UUID]) -> None:
    settings = PostgresSettings.from_url(url)
    conn = await asyncpg.connect(settings.dsn, server_settings={"search_path": settings.schema})
    try:
        async with conn.transaction():
            await conn.executemany(
                f"INSERT INTO metadata_stamps ({', '.join(OLD_COLUMNS)}) "
                f"VALUES ({', '.join(f'${n}' for n in range(1, len(OLD_COLUMNS) + 1))})",
                [(*r[:8], json.dumps(r[8]), r[9]) for r in _old_rows(ops)],
            )
            await conn.executemany(
                "INSERT INTO workflow_steps (workflow_id, step_name, step_order, status, step_data, created_at) "
                "VALUES ($1, $2, $3, $4, $5::jsonb, $6)",
                [(w, n, o, st, json.dumps(d), t) for w, n, o, st, d, t in _old_steps(ops)],
            )
    finally:
        await conn.close()


async def _at_schema_4(store_url: str, ops: Sequence[uuid.UUID]) -> None:
    await upgrade_before(store_url, "0005_one_v01_stamp_columns")
    if store_url.startswith("sqlite:"):
        _write_old_sqlite(_sqlite.database_path(store_url), ops)
    else:
        await _write_old_postgres(store_url, ops)


async def _by_file(store: Store, namespace: str = "ns") -> dict[tuple[str, str], StampRow]:
    return {(r.file_path, r.file_hash[:1]): r for r in await store.list_stamps(namespace)}


async def test_an_upgrade_fills_the_new_columns_of_existing_rows(store_url: str, make_store: MakeStore) -> None:
    ops = [uuid.uuid4() for _ in range(5)]
    await _at_schema_4(store_url, ops)

    store = await make_store(upgrade=False)
    assert "0005_one_v01_stamp_columns" in await store.upgrade()
    rows = await _by_file(store)
    a1, a2, a3, b, png = (rows[k] for k in [("src/a.py", "1"), ("src/a.py", "2"), ("src/a.py", "3"),
                                             ("docs/b.md", "4"), ("pic.png", "5")])  # fmt: skip

    # version: per (namespace, file_path), by created_at, then the order stored; another namespace is another file.
    assert [a1.version, a2.version, a3.version, b.version, png.version] == [1, 2, 3, 1, 1]
    (other,) = await store.list_stamps("other")
    assert other.version == 1
    # op_id: the workflow's id; none without a workflow.
    assert [a1.op_id, a2.op_id, a3.op_id, b.op_id, png.op_id, other.op_id] == [*ops, None]
    # intelligence_data: only an intelligence step that completed; skipped or failed leave {}.
    assert b.intelligence_data == ANSWER
    assert a1.intelligence_data == png.intelligence_data == a2.intelligence_data == {}
    # The settings' defaults: a migration cannot read the settings.
    assert (
        {(r.protocol_version, r.metadata_version) for r in (*rows.values(), other)}
        == {(DEFAULT_PROTOCOL_VERSION, DEFAULT_METADATA_VERSION)}
        == {("1.0", "0.1")}
    )
    # file_metadata: type and size from the row; the mode of a file stamped before 0005 was never recorded.
    assert a3.file_metadata == {"file_type": "python", "size": 14, "mode": None}
    assert png.file_metadata == {"file_type": "image", "size": 2048, "mode": None}
    # updated_at: the row's created_at; nothing else of the rows changed.
    assert all(r.updated_at == r.created_at for r in (*rows.values(), other))
    assert (a1.created_at, a1.stamp_data, a3.stamp_type) == (T0, {"uid": "x"}, "rich")
    assert await store.count("metadata_stamps") == 6


async def test_after_the_upgrade_new_rows_are_numbered_by_the_store(store_url: str, make_store: MakeStore) -> None:
    ops = [uuid.uuid4() for _ in range(5)]
    await _at_schema_4(store_url, ops)
    store = await make_store()

    def restamp(file_hash: str, path: str = "src/a.py", **fields: Any) -> StampRow:
        return StampRow(uuid.uuid4(), file_hash, path, 1, "ns", "lightweight", "python", **fields)

    # Two restamps of a.py in one batch (one statement on SQLite, one unnest on PostgreSQL), a new file, and a
    # row that conflicts with a stored one (same namespace, path and hash): dropped, and no version is used up.
    await store.apply(
        WriteBatch(stamps=[restamp("6" * 64), restamp("1" * 64), restamp("7" * 64), restamp("8" * 64, "new.py")])
    )
    await store.apply(WriteBatch(stamps=[restamp("9" * 64, version=42)]))  # a version given is kept
    await store.apply(WriteBatch(stamps=[restamp("a" * 64)]))
    rows = await _by_file(store)
    assert [rows["src/a.py", h].version for h in ["6", "7", "9", "a"]] == [4, 5, 42, 43]
    assert rows["src/a.py", "1"].version == 1  # the stored one, unchanged
    assert rows["new.py", "8"].version == 1


async def test_intelligence_data_is_filled_whichever_is_stored_first(store_url: str, make_store: MakeStore) -> None:
    store = await make_store()
    early, late, same_batch = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    def stamp(op: uuid.UUID, path: str) -> StampRow:
        return StampRow(uuid.uuid4(), "b" * 64, path, 1, "ns", "lightweight", "text", workflow_id=op, op_id=op)

    def answered(op: uuid.UUID, data: dict[str, Any] = ANSWER) -> StepRow:
        return StepRow(op, "intelligence", 1, "completed", step_data=data)

    # The step first (a stamp whose STAMP_CREATED came late), then the stamp: filled on insert.
    await store.apply(WriteBatch(steps=[answered(early)]))
    await store.apply(WriteBatch(stamps=[stamp(early, "early.txt")]))
    # The stamp first (the usual order: STAMP_CREATED before the outcome), then the step: filled by the step.
    await store.apply(WriteBatch(stamps=[stamp(late, "late.txt")]))
    await store.apply(WriteBatch(steps=[StepRow(late, "intelligence", 1, "running")]))
    await store.apply(WriteBatch(steps=[answered(late, {"score": 0.5})]))
    # Both in one batch (steps are written before stamps).
    await store.apply(WriteBatch(stamps=[stamp(same_batch, "same.txt")], steps=[answered(same_batch)]))
    # A skipped step fills nothing.
    skipped = uuid.uuid4()
    await store.apply(WriteBatch(stamps=[stamp(skipped, "skipped.txt")]))
    await store.apply(WriteBatch(steps=[StepRow(skipped, "intelligence", 1, "skipped", step_data={"skipped": "x"})]))

    got = {r.file_path: r.intelligence_data for r in await store.list_stamps("ns")}
    assert got == {"early.txt": ANSWER, "late.txt": {"score": 0.5}, "same.txt": ANSWER, "skipped.txt": {}}


@pytest.mark.parametrize("method", ["unnest", "json", "copy", "executemany"])
async def test_every_postgres_write_path_numbers_restamps_in_batch_order(postgres_dsn: str, method: str) -> None:
    url = f"{postgres_dsn}&bulk_method={method}&bulk_min_rows=1"
    rows = [StampRow(uuid.uuid4(), f"{i:064x}", "f.py", i, "ns", "lightweight", "python") for i in range(5)]
    async with open_store(url) as store:
        await store.upgrade()
        await store.apply(WriteBatch(stamps=rows[:3]))
        await store.apply(WriteBatch(stamps=rows[3:]))
        stored = await store.list_stamps("ns")
    assert [(r.file_size, r.version) for r in stored] == [(i, i + 1) for i in range(5)]
