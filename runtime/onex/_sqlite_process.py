"""``WriterProcess``: the SQLite store's writes in a process of their own, driven from the event loop.

Why. Python's ``sqlite3`` releases the interpreter lock while SQLite runs a statement and takes it back afterwards,
so a writer thread asks for the lock once a statement, and once a merged metadata row (``onex_json_merge`` is
Python); while the event loop's thread runs the nodes, each of those waits lasts up to a switch interval, and the
hand-overs themselves (a futex, another core to wake) are slow on a busy small machine. Issue 12's twenty-ninth part
measured it at half of the HTTP benchmark's saturation: an orchestrator's checkpoint, which its outcome and so the
HTTP answer waits for, took 5-8 ms from ``apply`` to stored at the median where SQLite spent 0.15 ms on a group. In a
process of its own SQLite runs without those waits; the event loop hands it a group and is woken by the answer.

How. ``python -I onex/_sqlite_exec.py`` (isolated: neither the script's directory, which holds modules named as the
standard library's, nor ``PYTHON*`` variables; it imports nothing of onex but the JSON text, so it starts in tens of
milliseconds), its stdin and stdout two pipes, started by the store's first ``apply``. Its connection is set up as the
store's writer's is (WAL, the pragmas, no automatic checkpoints: the store's checkpointer thread runs them). The store
encodes each batch on the event loop's thread (as its writer thread did, under the same lock; the ids as ints, which
the process formats: ``_sqlite_exec.with_texts``), packs it (``_sqlite_exec.packed``) and ``submit``s it; one
group is in the process at a time, and what is submitted meanwhile (or in the same turn of the loop) waits and goes as
the next group, written as one transaction (group commit, as ``onex._group_commit`` does for the thread): batches of
workflow rows alone, an orchestrator's checkpoints, go ahead as a group of their own. The answer is read when the pipe
is readable (``add_reader``), so no thread is involved; both ends of the pipes are non-blocking on this side, and a
group larger than the pipe holds is written as the process reads it (``add_writer``), so that the event loop's thread
never waits for the process: a writer process that stopped reading (stopped, stuck, gone wrong) once held that thread
in ``write()``, its signal handlers and the shutdown deadline with it. A process that ended is waited for on a thread.

When the process ends unexpectedly (killed, out of memory), the batches it held and those waiting fail with a
``StoreError`` saying so, which the nodes treat as any failed write (retried, never reported done), and the next
``submit`` starts a new process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Final

from onex import _sqlite_exec

if sys.platform != "win32":
    import fcntl
from onex._group_commit import deliver, split_first
from onex._sqlite_exec import LENGTH, Config, Failure, Sql
from onex.exceptions import StoreError, StoreUnavailable

_log = logging.getLogger("onex.store")

SCRIPT: Final = str(Path(_sqlite_exec.__file__).resolve())
PIPE_SIZE: Final = 1 << 20  # bytes of the pipe to the process (``start``): Linux's default pipe-max-size
_SETPIPE_SZ: Final[int | None] = getattr(fcntl, "F_SETPIPE_SZ", None) if sys.platform != "win32" else None
STOP_TIMEOUT_S: Final = 30.0  # how long closing waits for the process to close its connection (a checkpoint may run)

Waiting = tuple[tuple[bytes, bool], "asyncio.Future[None]"]  # a packed batch, whether it is a checkpoint, its caller
_checkpoint: Final = operator.itemgetter(1)  # of a waiting batch: goes ahead of the others (``split_first``)


class WriterProcess:
    """The writer process of one database file (module docstring). ``submit`` from the event loop's thread only."""

    def __init__(self, path: str, writers: tuple[Sql, ...]) -> None:
        self.path = path
        self.writers = writers
        self.transactions = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buffer = bytearray()
        self._waiting: list[Waiting] = []
        self._sent: list[Waiting] | None = None  # the group in the process
        self._idle: asyncio.Future[None] | None = None  # set once nothing is sent or waiting
        self._starting: asyncio.Future[None] | None = None  # start() running for the first submit()
        self._started = False  # once a process ran: the next one replaces it (logged)
        self._due = False  # a _send_due is scheduled
        self._unsent: memoryview | None = None  # what the pipe could not take yet of the group sent (``_send``)
        self._writing: asyncio.AbstractEventLoop | None = None  # where _writable waits for the pipe, meanwhile
        self._stopping: set[asyncio.Future[None]] = set()  # ended processes being waited for off the loop's thread

    @property
    def pid(self) -> int | None:
        """The running process's, for tests and logs."""
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        """Start the process and wait until its connection is open (blocking: call it off the event loop's thread).
        ``StoreError`` when it cannot open the database."""
        proc = subprocess.Popen(
            [sys.executable, "-I", SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            _sqlite_exec.send(proc.stdin.fileno(), Config(self.path, self.writers, _sqlite_exec.BUSY_TIMEOUT_S))
            opened: Failure | None = _sqlite_exec.receive(proc.stdout.fileno())
        except (EOFError, OSError) as exc:
            _stop(proc)
            raise StoreError(f"the SQLite writer process for {self.path} did not start: {exc!r}") from None
        if opened is not None:
            _stop(proc)
            raise raised(opened)
        os.set_blocking(proc.stdout.fileno(), False)
        # Its input too: a group larger than the pipe holds is written as the process reads it (``_send``), never by
        # the event loop's thread waiting in write() for a process that may not read (stuck, or gone wrong).
        os.set_blocking(proc.stdin.fileno(), False)
        if _SETPIPE_SZ is not None:  # Linux: a pipe of 1 MiB (its default maximum) rather than 64 KiB, so a group goes
            # in one write: what is left for _writable waits for the loop's next turn, and the process idles meanwhile
            with contextlib.suppress(OSError):
                fcntl.fcntl(proc.stdin.fileno(), _SETPIPE_SZ, PIPE_SIZE)
        self._proc = proc

    async def submit(self, batch: bytes, first: bool) -> None:
        """Write one encoded batch (``_sqlite_exec.packed``) with the group it falls into; ``first``: a checkpoint,
        written ahead of the batches waiting with it. Its error, if it gets one. A caller that is cancelled does not
        take its batch back: it is written all the same."""
        loop = asyncio.get_running_loop()
        if self._proc is None:
            await self._start()
        future: asyncio.Future[None] = loop.create_future()
        self._waiting.append(((batch, first), future))
        if self._sent is None and not self._due:
            # Sent once the loop's turn is over: the batches the other nodes submit in the same turn go with it.
            self._due = True
            loop.call_soon(self._send_due)
        await future

    def _send_due(self) -> None:
        self._due = False
        if self._sent is None and self._waiting and self._proc is not None:
            self._send()

    async def _start(self) -> None:
        """Start the process (the first ``submit``'s, or one after the last ended), once for every caller waiting."""
        loop = asyncio.get_running_loop()
        if self._starting is None:
            if self._started:
                _log.warning("SQLite writer process for %s: starting a new one", self.path)
            self._starting = loop.run_in_executor(None, self.start)
        starting = self._starting
        try:
            await asyncio.shield(starting)
        finally:
            if self._starting is starting and starting.done():
                self._starting = None
        if self._loop is None and self._proc is not None:
            assert self._proc.stdout is not None
            self._loop, self._started = loop, True
            loop.add_reader(self._proc.stdout.fileno(), self._readable)
        if self._proc is None:  # ended again before this caller got here
            await self._start()

    async def idle(self) -> None:
        """Return once every batch submitted so far is written (or failed)."""
        if self._starting is not None:
            with contextlib.suppress(Exception):  # its callers get the error
                await asyncio.shield(self._starting)
        while self._sent is not None or self._waiting:
            if self._idle is None:
                self._idle = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._idle)
        if self._stopping:  # a process that ended, still being waited for
            await asyncio.gather(*self._stopping, return_exceptions=True)

    def close(self) -> None:
        """End the process once ``idle``: it closes its connection and exits (blocking: off the loop's thread)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _stop(proc)

    def detach(self) -> None:
        """On the event loop's thread, before ``close``: stop listening to the process."""
        if self._loop is not None and self._proc is not None and self._proc.stdout is not None:
            self._loop.remove_reader(self._proc.stdout.fileno())
        if self._proc is not None and self._proc.stdin is not None:
            self._stop_writing(self._proc.stdin.fileno())
        self._unsent = None
        self._loop = None

    # -- on the event loop's thread --

    def _send(self) -> None:
        group, *rest = split_first(self._waiting, _checkpoint)
        self._sent, self._waiting = group, [waiting for part in rest for waiting in part]
        proc = self._proc
        assert proc is not None
        assert proc.stdin is not None
        fd = proc.stdin.fileno()
        try:
            self._unsent = _sqlite_exec.send(fd, ({i: batch[0] for i, (batch, _) in enumerate(group)}, len(group)))
        except OSError as exc:  # the process is gone: its end of the pipe is closed
            self._ended(f"{exc.strerror or exc}")
            return
        if self._unsent is not None:  # the pipe is full: the rest once the process has read some (_writable)
            # The running loop's, not self._loop, which the first submit() sets only once its start() returned:
            # another caller's batch may be sent before that.
            self._writing = asyncio.get_running_loop()
            self._writing.add_writer(fd, self._writable)

    def _writable(self) -> None:
        proc, rest = self._proc, self._unsent
        if proc is None or proc.stdin is None or rest is None:
            return
        fd = proc.stdin.fileno()
        try:
            self._unsent = _sqlite_exec.write_some(fd, rest)
        except OSError as exc:
            self._ended(f"{exc.strerror or exc}")
            return
        if self._unsent is None:
            self._stop_writing(fd)

    def _stop_writing(self, fd: int) -> None:
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.remove_writer(fd)

    def _readable(self) -> None:
        proc = self._proc
        assert proc is not None
        assert proc.stdout is not None
        try:
            data = os.read(proc.stdout.fileno(), 1 << 16)
        except BlockingIOError:
            return
        except OSError as exc:
            self._ended(f"{exc.strerror or exc}")
            return
        if not data:
            self._ended("its output ended")
            return
        buffer = self._buffer
        buffer += data
        while len(buffer) >= LENGTH.size:
            (length,) = LENGTH.unpack_from(buffer)
            if len(buffer) < LENGTH.size + length:
                return
            answer = pickle.loads(buffer[LENGTH.size : LENGTH.size + length])
            del buffer[: LENGTH.size + length]
            self._answered(*answer)

    def _answered(self, failures: list[Failure | None], transactions: int) -> None:
        group, self._sent = self._sent, None
        assert group is not None
        self.transactions += transactions
        deliver(group, [None if failed is None else raised(failed) for failed in failures])
        if self._waiting:
            self._send()
        else:
            self._wake_idle()

    def _ended(self, why: str) -> None:
        """The process is gone: fail what it held and what waits; the next ``submit`` starts another."""
        proc = self._proc
        code = None if proc is None else proc.poll()
        loop = asyncio.get_running_loop()  # on the loop's thread: in its callbacks
        self.detach()
        self._proc = None
        if proc is not None:
            # Waited for off the loop's thread: a process that does not exit at once (STOP_TIMEOUT_S, then killed)
            # must not stop the loop, its signal handlers and its shutdown deadline with it.
            stopping = loop.run_in_executor(None, _stop, proc)
            self._stopping.add(stopping)
            stopping.add_done_callback(self._stopping.discard)
        message = (
            f"the SQLite writer process for {self.path} ended ({why}; exit code {code}); the batch was not written"
        )
        _log.error("%s", message)
        lost = [*(self._sent or ()), *self._waiting]
        self._sent, self._waiting, self._buffer = None, [], bytearray()
        deliver(lost, [StoreError(message)] * len(lost))
        self._wake_idle()

    def _wake_idle(self) -> None:
        idle, self._idle = self._idle, None
        if idle is not None and not idle.done():
            idle.set_result(None)


def raised(failed: Failure) -> StoreError:
    """The exception for a ``Failure`` (``onex._sqlite_exec.failure``): ``StoreUnavailable`` or ``StoreError``."""
    unavailable, message = failed
    return (StoreUnavailable if unavailable else StoreError)(message)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Close the process's input (it then closes its connection and exits) and wait for it; kill it past
    ``STOP_TIMEOUT_S``."""
    with contextlib.suppress(OSError):
        if proc.stdin is not None:
            proc.stdin.close()
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
