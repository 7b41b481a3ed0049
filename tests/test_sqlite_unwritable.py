"""A SQLite store that cannot be written: refused before any work (``probe_write``), an outage while running
(read-only, full, failing file system: ``StoreUnavailable``, held, never dead-lettered), and a writer process that
stops reading never stops the event loop with it. Also the SQLite URL's percent-decoding.

A read-only file is made with permissions where the tests do not run as root (root writes a file whatever its mode)
and with a read-only bind mount where they do and may mount; otherwise that test is skipped. A full database is
``PRAGMA max_page_count`` on the writing connection, and a read-only one ``PRAGMA query_only``: the same SQLite errors
(SQLITE_FULL, SQLITE_READONLY) without a file system to fill."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from onex import _sqlite_exec, _sqlite_process
from onex._sqlite import SqliteStore
from onex.exceptions import StoreError, StoreUnavailable
from onex.store import StampRow, WriteBatch

from tests.test_cli import make_tree, onex, snapshot

pytestmark = pytest.mark.anyio


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def stamp(path: str = "a.py", data: str = "") -> StampRow:
    return StampRow(uuid.uuid4(), uuid.uuid4().hex * 2, path, 1, "ns", "lightweight", "python", stamp_data={"d": data})


async def migrated(path: Path, writer: str = "process") -> SqliteStore:
    store = SqliteStore(url(path), writer=writer)
    await store.open()
    await store.upgrade()
    return store


# --- refused before the work -----------------------------------------------------------------------------------


async def test_the_write_probe_refuses_a_database_that_cannot_be_written_and_changes_nothing(tmp_path: Path) -> None:
    store = await migrated(tmp_path / "onex.db")
    try:
        await store.probe_write()  # writable: nothing to say
        await store.run_sync(lambda conn: conn.execute("PRAGMA query_only = ON"))  # SQLITE_READONLY from now on
        with pytest.raises(StoreError, match=r"onex\.db cannot be written: .*readonly") as refused:
            await store.probe_write()
        assert not isinstance(refused.value, StoreUnavailable)  # refused, not waited for
        await store.run_sync(lambda conn: conn.execute("PRAGMA query_only = OFF"))
        await store.probe_write()
        versions = await store.read_sync(lambda c: c.execute("SELECT version, name FROM schema_migrations").fetchall())
        assert len(versions) == len({v for v, _ in versions})  # the probe's write was rolled back
    finally:
        await store.aclose()


@contextlib.contextmanager
def read_only_copy(db: Path, where: Path) -> Iterator[Path]:
    """``db`` (with its WAL and shared-memory files) where it can be read but not written: the path of the copy."""
    source = where / "rw"
    source.mkdir()
    with contextlib.closing(sqlite3.connect(db)) as holder:  # open: its -wal and -shm stay for the copy
        holder.execute("SELECT count(*) FROM schema_migrations").fetchone()
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{db}{suffix}").exists():
                shutil.copy(f"{db}{suffix}", source / f"onex.db{suffix}")
    if os.geteuid() != 0:
        for path in source.iterdir():
            path.chmod(0o444)
        yield source / "onex.db"
        return
    target = where / "ro"
    target.mkdir()
    bound = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True, check=False)
    if bound.returncode != 0:
        pytest.skip(f"root, and no read-only bind mount here: {bound.stderr.decode().strip()}")
    try:
        remounted = subprocess.run(
            ["mount", "-o", "remount,ro,bind", str(target)], capture_output=True, check=False
        ).returncode
        if remounted != 0:
            pytest.skip("root, and the bind mount cannot be made read-only here")
        yield target / "onex.db"
    finally:
        subprocess.run(["umount", str(target)], check=False)


def test_onex_stamp_refuses_a_read_only_store_before_touching_a_file(tmp_path: Path) -> None:
    db = tmp_path / "onex.db"
    assert onex("db", "upgrade", "--store", url(db), cwd=tmp_path).returncode == 0
    tree = tmp_path / "tree"
    make_tree(tree)
    before = snapshot(tree)
    with read_only_copy(db, tmp_path) as read_only:
        result = onex("stamp", str(tree), "--store", url(read_only), cwd=tmp_path)
        assert result.returncode == 1, result.stdout + result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.stderr
        assert f"{read_only} cannot be written" in errors[0]
        assert "readonly" in errors[0]
        assert snapshot(tree) == before  # no file stamped
        with contextlib.closing(sqlite3.connect(f"file:{read_only}?mode=ro", uri=True)) as conn:
            assert conn.execute("SELECT count(*) FROM metadata_stamps").fetchone() == (0,)


# --- an outage while running ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pragma", "says"),
    [
        pytest.param("PRAGMA query_only = ON", "readonly", id="read-only"),
        # No page beyond those the file has: the next one a write needs is SQLITE_FULL, as on a full disk.
        pytest.param("PRAGMA max_page_count = 1", "full", id="full"),
    ],
)
async def test_a_database_that_cannot_be_written_is_an_outage_not_a_bad_batch(
    tmp_path: Path, pragma: str, says: str
) -> None:
    store = await migrated(tmp_path / "onex.db", writer="thread")  # the writes on the connection the test sets
    try:
        await store.apply(WriteBatch(stamps=[stamp()]))
        await store.run_sync(lambda conn: conn.execute(pragma))
        big = WriteBatch(stamps=[stamp(f"{i}.py", "x" * 2_000) for i in range(50)])
        with pytest.raises(StoreUnavailable, match=says):  # held by the node and retried, not dead-lettered
            await store.apply(big)
        assert await store.count("metadata_stamps") == 1  # the batch was rolled back whole
    finally:
        await store.aclose()


def sqlite_error(tmp_path: Path, kind: str) -> sqlite3.Error:
    """The error SQLite gives for ``kind``: a write to a full database, to a read-only one, a file it cannot open."""
    if kind == "cantopen":
        try:
            sqlite3.connect(tmp_path).execute("SELECT 1")  # a directory
        except sqlite3.Error as exc:
            return exc
    with contextlib.closing(sqlite3.connect(tmp_path / "t.db", isolation_level=None)) as conn:
        conn.execute("CREATE TABLE t (x TEXT)")
        conn.execute("PRAGMA max_page_count = 1" if kind == "full" else "PRAGMA query_only = ON")
        try:
            conn.execute("INSERT INTO t VALUES (?)", ("x" * 10_000,))
        except sqlite3.Error as exc:
            return exc
    raise AssertionError(f"no error for {kind}")


@pytest.mark.parametrize("kind", ["full", "readonly", "cantopen"])
def test_the_writer_process_reports_a_database_it_cannot_write_as_unavailable(tmp_path: Path, kind: str) -> None:
    """The writer process answers a group's errors as ``_sqlite_exec.failure`` makes them (the thread does too)."""
    unavailable, message = _sqlite_exec.failure(sqlite_error(tmp_path, kind), "apply: commit failed", "rolled back")
    assert unavailable, message
    constraint = sqlite3.IntegrityError("UNIQUE constraint failed: t.x")
    assert _sqlite_exec.failure(constraint, "apply") == (False, "apply: IntegrityError: UNIQUE constraint failed: t.x")


# --- the event loop never waits for the writer process -----------------------------------------------------------


async def test_a_writer_process_that_stops_reading_does_not_block_the_event_loop(tmp_path: Path) -> None:
    store = await migrated(tmp_path / "onex.db")
    try:
        await store.apply(WriteBatch(stamps=[stamp()]))  # the process started
        process = store._process
        assert process is not None
        assert process._proc is not None
        assert process._proc.stdin is not None
        assert not os.get_blocking(process._proc.stdin.fileno())
        pid = store.writer_pid
        assert pid is not None
        # Larger than the pipe holds (_sqlite_process.PIPE_SIZE where Linux sets it, else 64 KiB): written as the
        # process reads it. Each stamp carries over 2 KiB.
        count = 2 * _sqlite_process.PIPE_SIZE // 2048
        big = WriteBatch(stamps=[stamp(f"{i}.py", uuid.uuid4().hex * 64) for i in range(count)])
        os.kill(pid, signal.SIGSTOP)  # reads nothing until SIGCONT: a write() into its full pipe would wait as long
        try:
            writing = asyncio.ensure_future(store.apply(big))
            while process._unsent is None:  # the loop turns: the first part sent, the rest waits for the pipe
                assert not writing.done()
                await asyncio.sleep(0)
            assert not writing.done()
        finally:
            os.kill(pid, signal.SIGCONT)
        await writing
        assert process._unsent is None
        assert await store.count("metadata_stamps") == count + 1
    finally:
        await store.aclose()


# --- the URL ---------------------------------------------------------------------------------------------------------


async def test_a_sqlite_path_is_percent_decoded(tmp_path: Path) -> None:
    async with SqliteStore(f"sqlite:///{tmp_path}/sp%20ace%25.db") as store:
        assert isinstance(store, SqliteStore)
        assert store.path == f"{tmp_path}/sp ace%.db"
        await store.upgrade()
    assert (tmp_path / "sp ace%.db").exists()
    assert not (tmp_path / "sp%20ace%25.db").exists()
