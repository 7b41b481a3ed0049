"""A drain held for ever ends at ONEX_SHUTDOWN_TIMEOUT_S: ``onex run`` says why and exits 1, as a crash would.

The nodes hold a store outage (their messages stay unacknowledged until the store is back), and draining waits for
them: with PostgreSQL down for good, SIGTERM used to leave ``onex run`` draining until the supervisor's SIGKILL.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from onex.http import PREFIX

from tests.fixtures.deployment import spawn_onex, upgrade_schema
from tests.fixtures.faults import ThrowawayPostgres
from tests.fixtures.http import served_url

pytestmark = pytest.mark.postgres


@pytest.fixture
def postgres_cluster() -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL of this test's own, which it stops: never the machine's shared server."""
    with ThrowawayPostgres() as cluster:
        yield cluster


def test_a_drain_a_store_outage_holds_ends_at_the_shutdown_deadline(
    postgres_cluster: ThrowawayPostgres, tmp_path: Path
) -> None:
    upgrade_schema(postgres_cluster.dsn)
    log = tmp_path / "onex-run.log"
    settings = {"ONEX_API_KEY": "k", "ONEX_HTTP_TIMEOUT_S": "1", "ONEX_SHUTDOWN_TIMEOUT_S": "2", "COLUMNS": "300"}
    proc = spawn_onex(["run", "--store", postgres_cluster.dsn, "--http", "127.0.0.1:0"], env=settings, log=log)
    try:
        url = served_url(proc, log)
        with httpx.Client(base_url=url + PREFIX, headers={"Authorization": "Bearer k"}, timeout=30) as c:
            assert c.post("/stamp", json={"content": "a\n", "file_path": "a.txt"}).status_code == 200
            postgres_cluster.halt("immediate")
            # Its workflow is held: the orchestrator cannot write its checkpoint, so no outcome comes.
            assert c.post("/stamp", json={"content": "b\n", "file_path": "b.txt"}).status_code == 504

        proc.send_signal(signal.SIGTERM)

        try:
            code = proc.wait(timeout=60)  # the deadline is 2 s: this only bounds a drain that never ends
        except subprocess.TimeoutExpired:
            pytest.fail(f"still draining 60 s after SIGTERM:\n{log.read_text()[-3000:]}")
        said = log.read_text()
        assert code == 1, said[-3000:]
        assert "shutdown did not finish within 2 s (ONEX_SHUTDOWN_TIMEOUT_S): exiting as a crash would" in said
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
