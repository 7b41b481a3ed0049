"""Migration 0008: a stamp of a file whose path is longer than a PostgreSQL btree entry holds, on both stores.

PostgreSQL keyed metadata_stamps by (namespace, file_path, file_hash), whose entry holds at most 2704 bytes: a
path of about 2.7 KB that does not compress was refused there and stored by SQLite. 0008 keys the path by itself up
to 1024 bytes and by its md5 beyond; on SQLite it changes nothing (the number is kept in step). Rows written at schema
7 keep their key and their versions numbering on: a duplicate is still dropped, the next version is the next number.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from onex import _postgres, _sqlite
from onex.store import StampRow, WriteBatch
from onex.stores import open_store

from tests.fixtures.stores import MakeStore, upgrade_before

pytestmark = pytest.mark.anyio


def stamp(path: str, file_hash: str, version: int | None) -> StampRow:
    return StampRow(uuid.uuid4(), file_hash, path, 1, "ns", "lightweight", "python", version=version)


async def test_rows_of_schema_7_keep_their_key_and_long_paths_are_stored_after(
    store_url: str, make_store: MakeStore
) -> None:
    await upgrade_before(store_url, "0008_long_file_paths")
    module: Any = _sqlite if store_url.startswith("sqlite:") else _postgres
    shipped = module._migrations()
    with pytest.MonkeyPatch.context() as patch:  # the onex of schema 7 writes the first rows
        patch.setattr(module, "_migrations", lambda: shipped[:-1])
        async with open_store(store_url) as old:
            await old.apply(WriteBatch(stamps=[stamp("/src/a.py", "h1", None)]))

    store = await make_store(upgrade=False)
    assert await store.upgrade() == ["0008_long_file_paths"]
    long = "/" + "/".join(uuid.uuid4().hex for _ in range(122))[:3_999]  # random: no compression brings it under
    await store.apply(WriteBatch(stamps=[stamp("/src/a.py", "h1", None), stamp("/src/a.py", "h2", None)]))
    await store.apply(WriteBatch(stamps=[stamp(long, "h1", None), stamp(long, "h1", None), stamp(long, "h2", None)]))
    assert [(s.file_path, s.file_hash, s.version) for s in await store.list_stamps("ns")] == [
        ("/src/a.py", "h1", 1),  # the duplicate of the schema-7 row was dropped
        ("/src/a.py", "h2", 2),
        (long, "h1", 1),
        (long, "h2", 2),
    ]
