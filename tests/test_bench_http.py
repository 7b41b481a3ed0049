"""bench/http.py's raw baseline: a stamp's work over HTTP without onex, the rows of ``bench/e2e.py``'s raw floor."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from blake3 import blake3

from bench import e2e
from bench.http import raw_server, raw_stamp_app

pytestmark = pytest.mark.anyio


async def test_the_raw_stamp_answers_with_the_hash_once_its_rows_are_committed(tmp_path: Path) -> None:
    conn = e2e.raw_connection(tmp_path / "raw.db")
    transport = httpx.ASGITransport(app=raw_stamp_app(conn))
    async with httpx.AsyncClient(transport=transport, base_url="http://raw") as client:
        answer = await client.post("/stamp", json={"content": "hello\n", "file_path": "a.txt", "namespace": "ns"})
    assert answer.status_code == 200
    assert answer.json()["file_hash"] == blake3(b"hello\n").hexdigest()
    assert not conn.in_transaction  # committed before the answer
    counts = {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in e2e.RAW_INSERTS}
    assert counts == {"workflow_executions": 1, "metadata_stamps": 1, "fsm_transitions": 2, "workflow_steps": 2}
    assert conn.execute("SELECT id, file_path, namespace FROM metadata_stamps").fetchall() == [
        (answer.json()["stamp_id"], "a.txt", "ns")
    ]
    conn.close()


async def test_the_raw_server_serves_until_it_is_left() -> None:
    async with raw_server("onex-test-raw-") as (url, conn), httpx.AsyncClient(base_url=url) as client:
        for n in range(3):
            assert (await client.post("/stamp", json={"content": f"{n}", "file_path": f"{n}.txt"})).status_code == 200
        assert conn.execute("SELECT count(*) FROM metadata_stamps").fetchone()[0] == 3
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=url) as client:
            await client.post("/stamp", json={"content": "late", "file_path": "late.txt"})
