"""Migration 0007: a workflow's checkpoint in a column of its own, on SQLite and on PostgreSQL.

A database is built at the previous schema (migrations 0001-0006) and filled the way the 0006-era code wrote it: the
checkpoint as the "checkpoint" key of ``metadata``, in a running workflow's row and, left there by the database
adapter's final row, in a finished one's. After the upgrade both rows read back as they were, with no checkpoint of
their own; the running one's next checkpoint goes to the new column, and its final row clears that.
(``tests/test_durability.py`` resumes such a running row through the orchestrator.) The README's statements that take
the old checkpoints out of finished rows are run as it gives them.
"""

from __future__ import annotations

import json
import re
import sqlite3
import uuid
from pathlib import Path

import asyncpg
import pytest
from onex import _sqlite
from onex._postgres import PostgresSettings
from onex.store import WorkflowRow, WriteBatch

from tests.fixtures.stores import MakeStore, upgrade_before

pytestmark = pytest.mark.anyio

CONTENT = "x" * 2_000  # the request's content, which the finished row kept
RUNNING = {"checkpoint": {"v": 1, "state": "processing", "seq": 1, "context": {"request": {"content": CONTENT}}}}
COLUMNS = "correlation_id, workflow_type, current_state, state_seq, namespace, metadata"
README = Path(__file__).resolve().parents[1] / "README.md"


def _cleanup(dialect: str) -> str:
    """The README's statement for ``dialect`` ("SQLite", "PostgreSQL"), under "Schema 7 and the workflows finished
    before it"."""
    text = README.read_text()
    block = text[text.index("**Schema 7 and the workflows finished before it.**") :].split("```sql\n", 1)[1]
    block = block.split("```", 1)[0]
    statements: dict[str, str] = dict(re.findall(r"^-- (\w+).*\n((?:[^-].*\n)+)", block, flags=re.MULTILINE))
    return statements[dialect]


async def _execute(store_url: str, sql: str) -> None:
    if store_url.startswith("sqlite:"):
        with sqlite3.connect(_sqlite.database_path(store_url)) as conn:
            conn.execute(sql)
        return
    settings = PostgresSettings.from_url(store_url)
    conn = await asyncpg.connect(settings.dsn, server_settings={"search_path": settings.schema})
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _at_schema_6(store_url: str, running: uuid.UUID, finished: uuid.UUID) -> None:
    await upgrade_before(store_url, "0007_workflow_checkpoint_column")
    rows = [(running, "processing", 1, json.dumps(RUNNING)), (finished, "completed", 2, json.dumps(RUNNING))]
    if store_url.startswith("sqlite:"):
        with sqlite3.connect(_sqlite.database_path(store_url)) as conn:
            conn.executemany(
                f"INSERT INTO workflow_executions ({COLUMNS}, created_at, updated_at)"
                " VALUES (?, 'stamp_workflow', ?, ?, 'ns', ?, '2026-12-01T00:00:00.000000+00:00',"
                " '2026-12-01T00:00:00.000000+00:00')",
                [(str(cid), state, seq, metadata) for cid, state, seq, metadata in rows],
            )
        return
    settings = PostgresSettings.from_url(store_url)
    conn = await asyncpg.connect(settings.dsn, server_settings={"search_path": settings.schema})
    try:
        await conn.executemany(
            f"INSERT INTO workflow_executions ({COLUMNS}) VALUES ($1, 'stamp_workflow', $2, $3, 'ns', $4::jsonb)", rows
        )
    finally:
        await conn.close()


async def test_an_upgrade_keeps_the_rows_and_later_rows_use_the_column(store_url: str, make_store: MakeStore) -> None:
    running, finished = uuid.uuid4(), uuid.uuid4()
    await _at_schema_6(store_url, running, finished)

    store = await make_store(upgrade=False)
    assert (await store.upgrade())[:1] == ["0007_workflow_checkpoint_column"]  # and any later one
    before = {r.correlation_id: r for r in await store.get_workflows([running, finished])}
    assert {cid: (r.current_state, r.metadata, r.checkpoint) for cid, r in before.items()} == {
        running: ("processing", RUNNING, None),  # where OrchestratorNode.restore still finds it
        finished: ("completed", RUNNING, None),
    }

    resumed = {"v": 1, "state": "processing", "seq": 1, "steps": {}}
    await store.apply(
        WriteBatch(workflows=[WorkflowRow(running, "stamp_workflow", "processing", 1, checkpoint=resumed)])
    )
    assert (await store.get_workflow(running)).checkpoint == resumed  # type: ignore[union-attr]
    await store.apply(WriteBatch(workflows=[WorkflowRow(running, "stamp_workflow", "completed", 2)]))
    after = await store.get_workflow(running)
    assert after is not None
    assert (after.current_state, after.checkpoint, after.metadata) == ("completed", None, RUNNING)


async def test_the_readmes_statements_take_old_checkpoints_out_of_finished_rows_only(
    store_url: str, make_store: MakeStore
) -> None:
    running, finished = uuid.uuid4(), uuid.uuid4()
    await _at_schema_6(store_url, running, finished)
    store = await make_store(upgrade=False)
    await store.upgrade()

    await _execute(store_url, _cleanup("SQLite" if store_url.startswith("sqlite:") else "PostgreSQL"))

    rows = {r.correlation_id: r for r in await store.get_workflows([running, finished])}
    assert (rows[running].metadata, rows[finished].metadata) == (RUNNING, {})
