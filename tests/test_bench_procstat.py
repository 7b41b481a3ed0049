"""bench/procstat.py: the benchmarks' CPU figures count the processes they name."""

from __future__ import annotations

import os
import socket
import sys

import pytest

from bench.procstat import listener, postgres_parent, process_cpu, server_cpu

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
