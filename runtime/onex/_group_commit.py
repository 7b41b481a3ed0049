"""``GroupCommit``: group commit for a store whose writes run on one thread (``SqliteStore``).

Callers ``submit`` items from the event loop. When no job is on the thread, one is handed to it; when it starts it
takes every item waiting as one group, and after writing it takes what came meanwhile as the next, up to ``ROUNDS``
groups, without a trip through the event loop in between (each costs a hand-off of the interpreter lock both ways,
2-3 ms on a busy loop); then calls queued behind it (``run_sync``; reads where the store has no reader thread) get
their turn. ``write(items)`` runs on the thread and returns each item's error, or None, so that one bad item fails
only its own caller. With small batches arriving often (a node's flush per handled batch, an HTTP request's
workflow) this replaces a transaction per caller, each queueing behind the others' commits, with one per group.

``first(item)``, when given, picks the items a caller is waiting on to answer someone (SQLite: an orchestrator's
checkpoints, whose outcomes wait for them): those of a group are written ahead of the rest, as a group of their own, and
their callers told before the rest is written.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


ROUNDS = 4  # groups one job on the thread writes back to back before the calls queued meanwhile get their turn


class GroupCommit(Generic[T]):
    __slots__ = ("_first", "_lock", "_waiting", "_write", "_writing")

    def __init__(
        self, write: Callable[[list[T]], list[BaseException | None]], first: Callable[[T], bool] | None = None
    ) -> None:
        self._write = write
        self._first = first
        self._lock = threading.Lock()  # around _waiting: the thread takes the next group itself
        self._waiting: list[tuple[T, asyncio.Future[None]]] = []
        self._writing: asyncio.Future[None] | None = None  # the job on the thread (touched on the loop's thread only)

    async def submit(self, thread: concurrent.futures.Executor, item: T) -> None:
        """Write ``item`` with the group it falls into; its error, if ``write`` gave it one. A caller that is
        cancelled does not take its item back: it is written all the same."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._waiting.append((item, done))
        if self._writing is None:
            self._next(thread)
        await done

    async def idle(self) -> None:
        """Return once every item submitted so far is written (each caller gets its own error)."""
        while self._writing is not None:
            await asyncio.wait([self._writing])

    def _next(self, thread: concurrent.futures.Executor) -> None:
        loop = asyncio.get_running_loop()
        self._writing = running = loop.run_in_executor(thread, self._drain, loop)

        def finished(_: asyncio.Future[None]) -> None:
            self._writing = None
            if self._waiting:  # came after the job's last look
                self._next(thread)

        running.add_done_callback(finished)

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the thread: write what waits, then what came meanwhile, up to ``ROUNDS`` groups; without going back to
        the event loop in between, which would cost a hand-off of the interpreter lock each way. What ``first`` picks
        is written ahead of the rest of its group, as a group of its own, and its callers told at once."""
        for _ in range(ROUNDS):
            with self._lock:
                group, self._waiting = self._waiting, []
            if not group:
                return
            parts = split_first(group, self._first)
            for index, part in enumerate(parts):
                try:
                    errors = self._write([item for item, _ in part])
                except BaseException as exc:  # the thread's own failure, not an item's: every caller left gets it
                    left = [waiting for later in parts[index:] for waiting in later]
                    loop.call_soon_threadsafe(deliver, left, [exc] * len(left))
                    return  # delivered: nobody reads the job's own result
                loop.call_soon_threadsafe(deliver, part, errors)


def split_first(
    group: list[tuple[T, asyncio.Future[None]]], first: Callable[[T], bool] | None
) -> list[list[tuple[T, asyncio.Future[None]]]]:
    """``group`` (items with their callers) as the groups to write one after the other: what ``first`` picks, then
    the rest (``GroupCommit``'s, and ``onex._sqlite_process.WriterProcess``'s)."""
    if first is None:
        return [group]
    ahead: list[tuple[T, asyncio.Future[None]]] = []
    rest: list[tuple[T, asyncio.Future[None]]] = []
    for waiting in group:
        (ahead if first(waiting[0]) else rest).append(waiting)
    return [ahead, rest] if ahead and rest else [group]


def deliver(group: list[tuple[T, asyncio.Future[None]]], errors: Sequence[BaseException | None]) -> None:
    """Tell each caller of ``group`` its item's outcome: its error, or None once written (a cancelled caller is
    left alone: its item was written all the same)."""
    for (_, caller), error in zip(group, errors, strict=True):
        if caller.done():  # cancelled
            continue
        if error is None:
            caller.set_result(None)
        else:
            caller.set_exception(error)
