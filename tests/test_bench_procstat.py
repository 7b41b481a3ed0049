"""bench/procstat.py: the benchmarks' CPU figures count the processes they name."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from bench.procstat import children, listener, postgres_parent, postmaster_of, process_cpu, server_cpu
from tests.fixtures.postgres import run_async

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_the_listener_of_a_port_is_the_process_that_listens_on_it() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert listener(port) == os.getpid()
    assert listener(port) is None


def test_process_cpu_grows_with_the_work_done() -> None:
    before = process_cpu(os.getpid())
    assert before is not None
    spent = before
    for _ in range(10_000):  # at most a few seconds of CPU; the clock ticks every 10 ms or so
        sum(range(10_000))
        if (spent := process_cpu(os.getpid()) or 0.0) > before:
            break
    assert spent > before


def test_a_server_is_counted_only_through_a_postgres_backend() -> None:
    assert postgres_parent(os.getpid()) is None  # this process is no PostgreSQL backend
    assert server_cpu(None) is None


@pytest.mark.postgres
def test_a_server_on_this_machine_is_found_through_a_connections_backend(postgres_server: str) -> None:
    if urlsplit(postgres_server).hostname not in ("127.0.0.1", "localhost"):
        pytest.skip("the test server does not run on this machine")

    async def ask() -> tuple[int, int | None]:
        conn = await asyncpg.connect(postgres_server, timeout=10)
        try:
            return await conn.fetchval("SELECT pg_backend_pid()"), await postmaster_of(conn)
        finally:
            await conn.close()

    backend, postmaster = run_async(ask)
    assert postmaster is not None
    assert postmaster != backend
    assert Path(f"/proc/{postmaster}/comm").read_text().startswith("postgres")
    own, counted = process_cpu(postmaster), server_cpu(postmaster)
    assert own is not None
    assert counted is not None
    assert counted >= own  # its children's time counts too


def test_the_children_running_a_command_are_this_processs_live_ones_that_run_it() -> None:
    marker = "onex-procstat-child-marker"
    with subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()", marker], stdin=subprocess.PIPE
    ) as child:
        other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        try:
            assert children(os.getpid(), marker) == [child.pid]
        finally:
            for proc in (child, other):
                assert proc.stdin is not None
                proc.stdin.close()
                proc.wait(30)
    assert children(os.getpid(), marker) == []
