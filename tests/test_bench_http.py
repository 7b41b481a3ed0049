"""bench/http.py's raw baseline: a stamp's work over HTTP without onex, the rows of ``bench/e2e.py``'s raw floor."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from blake3 import blake3
from onex.http import PREFIX

from bench import e2e
from bench.http import _per_request, _server_usage, gateway, raw_server, raw_stamp_app

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


REQUESTS = 20  # enough CPU for the clock's ticks (/proc counts 10 ms at a time) to see it


async def test_the_gateway_counts_what_a_request_cost_the_server() -> None:
    async with gateway("onex-test-gateway-") as (url, settle, runtime), httpx.AsyncClient(base_url=url) as client:
        before = _server_usage(runtime)
        for n in range(REQUESTS):  # one at a time: each request has batches and a checkpoint of its own
            answer = await client.post(f"{PREFIX}/stamp", json={"content": f"{n}\n", "file_path": f"{n}.txt"})
            assert answer.status_code == 200, answer.text
        await settle()
        spent = _per_request(before, runtime, REQUESTS)
    # The orchestrator's two batches (the request, the result), the stamping effect's, the reducer's and the database
    # adapter's at least; the checkpoint that each answer waited for, committed before the next request.
    assert spent["handler_calls"] >= 5
    assert spent["transactions"] >= 1
    assert spent["cpu_us_main"] > 0
    assert 0 < spent["loop_busy"] <= 1.5  # CPU seconds of one thread a second (the clocks' ticks, so a little over 1)
