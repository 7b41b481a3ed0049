"""SqliteStore's writer process (``onex._sqlite_process``): a database file's writes go through a process of their
own, grouped while it is busy, checkpoints first; a process that dies fails what it held and is replaced."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from onex import _sqlite_exec, _sqlite_process, _sqlite_writes
from onex._sqlite import SqliteStore
from onex.exceptions import StoreError
from onex.runtime import Runtime
from onex.settings import Settings
from onex.store import WriteBatch

from tests.test_sqlite_store import (
    checkpoint,
    good_and_bad_batches,
    handed_over,
    only_the_bad_batches_failed,
    raw,
    stamp,
    url,
)

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def migrated(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore(url(tmp_path / "onex.db")) as store:
        assert isinstance(store, SqliteStore)
        await store.upgrade()
        yield store


@contextlib.contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Hold SQLite's write lock on ``path`` from a connection of this test's: the writer process's next statement
    waits for it (its busy timeout) until the block ends."""
    with raw(path) as conn:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("COMMIT")


async def test_a_database_files_writes_go_through_a_process_of_their_own(tmp_path: Path) -> None:
    async with migrated(tmp_path) as store:
        assert store.writer_pid is None  # started by the first write: a store that only reads needs none
        await store.apply(WriteBatch(stamps=[stamp(), stamp()]))
        pid = store.writer_pid
        assert pid is not None
        assert pid != os.getpid()
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:  # noqa: ASYNC230 - /proc: answered at once
            assert b"_sqlite_exec.py" in cmdline.read()
        assert await store.count("metadata_stamps") == 2
        assert store.transactions == 1
    # Closed: the process ended once its connection was closed, and the last connection checkpointed the WAL away.
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not (tmp_path / "onex.db-wal").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="F_GETPIPE_SZ is Linux's")
async def test_the_pipe_to_the_process_holds_a_large_group_in_one_write(tmp_path: Path) -> None:
    """A group the pipe cannot take whole is finished when the loop comes round to it (``add_writer``), and the
    process idles meanwhile: at 64 KiB, most of a busy run's groups, and 0.28-0.30 of the raw floor against 0.38."""
    import fcntl

    async with migrated(tmp_path) as store:
        await store.apply(WriteBatch(stamps=[stamp()]))
        process = store._process
        assert process is not None
        proc = process._proc
        assert proc is not None
        assert proc.stdin is not None
        size = fcntl.fcntl(proc.stdin.fileno(), fcntl.F_GETPIPE_SZ)
    assert size == _sqlite_process.PIPE_SIZE


async def test_a_memory_database_or_the_thread_writer_has_no_process(tmp_path: Path) -> None:
    async with SqliteStore("sqlite://:memory:") as memory, SqliteStore(url(tmp_path / "t.db"), writer="thread") as t:
        for store in (memory, t):
            assert isinstance(store, SqliteStore)
            await store.upgrade()
            await store.apply(WriteBatch(stamps=[stamp()]))
            assert store.writer_pid is None
            assert store.transactions == 1
    with pytest.raises(ValueError, match="writer must be one of process, thread, not 'fork'"):
        SqliteStore(url(tmp_path / "x.db"), writer="fork")


async def test_writes_made_while_the_process_is_busy_are_committed_together_checkpoints_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with migrated(tmp_path) as store:
        await store.apply(checkpoint())  # the process started
        workflows = next(w.sql.order for w in _sqlite_writes._WRITERS if w.field == "workflows")
        groups: list[list[set[int]]] = []  # each group sent: each batch's tables (their writers' indexes)

        def send(fd: int, value: object) -> None:
            if isinstance(value, tuple):
                groups.append([{index for index, _ in _sqlite_exec.unpacked(data)} for data in value[0].values()])
            real_send(fd, value)

        real_send = _sqlite_exec.send
        monkeypatch.setattr(_sqlite_exec, "send", send)  # onex._sqlite_process calls it through the module
        with write_locked(tmp_path / "onex.db"):
            calls = [asyncio.ensure_future(store.apply(WriteBatch(stamps=[stamp()])))]  # in the process, waiting
            await handed_over(store, 1)
            batches = [WriteBatch(stamps=[stamp()]), checkpoint(), WriteBatch(stamps=[stamp()]), checkpoint()]
            calls += [asyncio.ensure_future(store.apply(batch)) for batch in batches]
            await handed_over(store, 5)
            calls[3].cancel()  # its caller gives up: its batch is written all the same
            before = store.transactions
        await asyncio.gather(*calls[:3], calls[4])
        assert calls[3].cancelled()
        # The first alone (it was in the process), then the two checkpoints as a group, then the rest as one.
        stamps = next(w.sql.order for w in _sqlite_writes._WRITERS if w.field == "stamps")
        assert groups == [[{stamps}], [{workflows}, {workflows}], [{stamps}, {stamps}]]
        assert store.transactions - before == 3
        assert await store.count("metadata_stamps") == 3
        assert await store.count("workflow_executions") == 3


async def test_a_batch_that_fails_in_the_processs_group_is_rolled_back_alone(tmp_path: Path) -> None:
    async with migrated(tmp_path) as store:
        batches = good_and_bad_batches()
        await store.apply(checkpoint())  # the process started
        with write_locked(tmp_path / "onex.db"):
            first = asyncio.ensure_future(store.apply(checkpoint()))  # in the process, waiting for the lock
            await handed_over(store, 1)
            calls = [asyncio.ensure_future(store.apply(batch)) for batch in batches.values()]
            await handed_over(store, 6)  # the unencodable batch failed in its first step: the others wait
        await first
        errors = await asyncio.gather(*calls, return_exceptions=True)
        await only_the_bad_batches_failed(store, batches, [e if isinstance(e, BaseException) else None for e in errors])


class FileType(enum.StrEnum):  # a program's enum: the writer process cannot import this module
    PYTHON = "python"


class Size(enum.IntEnum):
    ONE = 1


@pytest.mark.parametrize("writer", ["process", "thread"])
async def test_values_sqlite_binds_as_their_base_type_are_stored_as_on_the_thread(tmp_path: Path, writer: str) -> None:
    async with SqliteStore(url(tmp_path / "onex.db"), writer=writer) as store:
        await store.upgrade()
        await store.apply(WriteBatch(stamps=[stamp(file_path="a.py", file_type=FileType.PYTHON, file_size=Size.ONE)]))
        await store.apply(WriteBatch(stamps=[stamp(file_path="b.py")]))  # the process, if any, lives on
        assert [(s.file_type, s.file_size) for s in await store.list_stamps("ns", limit=10)] == [("python", 1)] * 2
    with raw(tmp_path / "onex.db") as conn:
        assert conn.execute("SELECT DISTINCT typeof(file_type), typeof(file_size) FROM metadata_stamps").fetchall() == [
            ("text", "integer")
        ]


async def test_a_value_sqlite_cannot_bind_fails_its_batch_before_it_is_sent(tmp_path: Path) -> None:
    async with migrated(tmp_path) as store:
        await store.apply(checkpoint())
        pid = store.writer_pid
        with pytest.raises(
            StoreError, match=r"metadata_stamps row 1 cannot be stored: TypeError: type 'object' is not"
        ):
            await store.apply(WriteBatch(stamps=[stamp(), stamp(file_type=object())]))
        await store.apply(WriteBatch(stamps=[stamp()]))
        assert store.writer_pid == pid  # nothing reached the process that could end it
        assert await store.count("metadata_stamps") == 1


async def test_a_process_that_dies_fails_the_batch_it_held_and_the_next_write_starts_another(tmp_path: Path) -> None:
    async with migrated(tmp_path) as store:
        await store.apply(WriteBatch(stamps=[stamp(file_path="first.py")]))
        pid = store.writer_pid
        assert pid is not None
        with write_locked(tmp_path / "onex.db"):
            call = asyncio.ensure_future(store.apply(WriteBatch(stamps=[stamp(file_path="lost.py")])))
            await handed_over(store, 1)
            os.kill(pid, signal.SIGKILL)  # while it waits for the lock, the batch in hand
            with pytest.raises(StoreError, match=r"the SQLite writer process for .* ended .*the batch was not written"):
                await asyncio.wait_for(call, 30)
        assert store.writer_pid is None
        await store.apply(WriteBatch(stamps=[stamp(file_path="kept.py")]))
        assert store.writer_pid not in (None, pid)
        assert {s.file_path for s in await store.list_stamps("ns", limit=10)} == {"first.py", "kept.py"}


async def test_the_process_ignores_an_interrupt_meant_for_the_one_that_started_it(tmp_path: Path) -> None:
    # Ctrl-C reaches every process of the terminal's group: the runtime drains its writes, then ends this one.
    async with migrated(tmp_path) as store:
        await store.apply(WriteBatch(stamps=[stamp(file_path="a.py")]))
        pid = store.writer_pid
        assert pid is not None
        os.kill(pid, signal.SIGINT)
        os.kill(pid, signal.SIGTERM)
        for name in ("b.py", "c.py"):
            await store.apply(WriteBatch(stamps=[stamp(file_path=name)]))
        assert store.writer_pid == pid
        assert await store.count("metadata_stamps") == 3


def test_the_process_starts_without_onexs_package_pydantic_or_asyncio() -> None:
    # Half a second of imports at every store's first write, where the process needs sqlite3, pickle and the JSON text.
    done = subprocess.run(
        [sys.executable, "-I", "-X", "importtime", _sqlite_process.SCRIPT],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        check=True,
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.decode().splitlines() if "|" in line}
    assert {"onex._sqlite_exec", "onex._jsontext", "sqlite3", "pickle"} <= imported
    assert not {"onex.store", "onex.envelope", "pydantic", "asyncio", "onex.http"} & imported


@pytest.mark.parametrize(("environ", "writer"), [({}, "process"), ({"ONEX_SQLITE_WRITER": "thread"}, "thread")])
async def test_a_runtimes_store_writes_where_onex_sqlite_writer_says(
    tmp_path: Path, environ: dict[str, str], writer: str
) -> None:
    settings = Settings.load(environ=environ, root=str(ROOT), store=url(tmp_path / "onex.db"))
    async with Runtime(settings.with_(heartbeat_interval_s=0), nodes=[]) as runtime:
        store = runtime.store
        assert isinstance(store, SqliteStore)
        assert store.writer == writer
        await store.apply(WriteBatch(stamps=[stamp()]))
        assert (store.writer_pid is not None) == (writer == "process")
    with pytest.raises(ValueError, match="ONEX_SQLITE_WRITER"):
        Settings.load(environ={"ONEX_SQLITE_WRITER": "fork"}, root=str(ROOT))
