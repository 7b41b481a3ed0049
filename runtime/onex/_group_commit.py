"""``GroupCommit``: group commit for a store whose writes run on one thread (``SqliteStore``).

Callers ``submit`` items from the event loop. When nothing is being written, an item goes to the thread at once, in
a group of its own; items submitted while a group is being written wait for it, then go to the thread together as
the next group. ``write(items)`` runs on the thread and returns each item's error, or None, so that one bad item
fails only its own caller. With small batches arriving often (a node's flush per handled batch, an HTTP request's
workflow) this replaces a transaction per caller, each queueing behind the others' commits, with one per group.
Everything but ``write`` runs on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class GroupCommit(Generic[T]):
    __slots__ = ("_waiting", "_write", "_writing")

    def __init__(self, write: Callable[[list[T]], list[BaseException | None]]) -> None:
        self._write = write
        self._waiting: list[tuple[T, asyncio.Future[None]]] = []
        self._writing: asyncio.Future[list[BaseException | None]] | None = None  # the group on the thread

    async def submit(self, thread: concurrent.futures.Executor, item: T) -> None:
        """Write ``item`` with the group it falls into; its error, if ``write`` gave it one. A caller that is
        cancelled does not take its item back: it is written all the same."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, done))
        if self._writing is None:
            self._next(thread)
        await done

    async def idle(self) -> None:
        """Return once every item submitted so far is written (each caller gets its own error)."""
        while self._writing is not None:
            await asyncio.wait([self._writing])

    def _next(self, thread: concurrent.futures.Executor) -> None:
        group, self._waiting = self._waiting, []
        self._writing = running = asyncio.get_running_loop().run_in_executor(
            thread, self._write, [item for item, _ in group]
        )

        def written(finished: asyncio.Future[list[BaseException | None]]) -> None:
            self._writing = None
            try:
                errors = finished.result()
            except BaseException as exc:  # the thread's own failure, not an item's: every caller gets it
                errors = [exc] * len(group)
            for (_, caller), error in zip(group, errors, strict=True):
                if caller.done():  # cancelled
                    continue
                if error is None:
                    caller.set_result(None)
                else:
                    caller.set_exception(error)
            if self._waiting:
                self._next(thread)

        running.add_done_callback(written)
