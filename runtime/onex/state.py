"""A node's state, as its ``state_management`` subcontract says: which fields, where, versioned how, written when.

``StatePolicy`` is the subcontract read once (or the node's defaults, without one). Every node kind honours it for
the state it keeps: the orchestrator for its in-flight workflows (``workflow_executions``), the reducer for its
namespace totals (``bridge_states``) and its open aggregation windows (``aggregate_windows``), any other node for
``Node.state``, a ``KeyedState`` in ``node_states``. What a node class can honour is its ``state_support``
(``onex.contracts.StateSupport``); ``onex validate`` refuses a subcontract asking for more.

- ``state_fields``: what a new process restores. ``Node.state`` holds exactly these (setting another is a
  ``StateError``); the orchestrator and the reducer still keep a field not listed, but each process counts it from
  zero (the orchestrator's checkpoint leaves it out; see ``OrchestratorNode.state_support`` for what it needs).
- ``storage: store`` writes checkpoints and restores them on start and on partition takeover (a key is loaded the
  first time the node sees it, so a key that moved here continues from what its previous owner wrote);
  ``storage: memory`` writes nothing and restores nothing.
- ``versioning: monotonic``: every checkpoint of a key is one version higher and the store refuses an older one (a
  replica that lost its partition cannot overwrite its successor); ``none``: the last write wins.
- ``checkpoint``: ``per_batch`` after each handled batch, before its messages are acknowledged (nothing acknowledged
  is lost); ``per_window`` when an aggregation window closes; ``interval_ms`` on a timer. The last two write less and
  acknowledge messages whose effect on the state is not written yet: a crash loses it, unless the node can recover it
  (the reducer does: see its ``_reconcile``). Draining always writes what is pending.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from onex.clock import Clock
from onex.contracts import StateManagementSubcontract, StateSupport
from onex.exceptions import StateError, StoreError
from onex.resilience import holding
from onex.store import NodeStateRow, Store, WriteBatch

__all__ = ["KeyedState", "StatePolicy", "StateSupport", "WritesUnderWay"]

_log = logging.getLogger("onex.state")

T = TypeVar("T")
Checkpoint = Literal["per_batch", "per_window", "interval_ms"]


@dataclass(frozen=True)
class StatePolicy:
    """What a node does with its state: read from its ``state_management`` subcontract, else its defaults."""

    fields: frozenset[str]  # kept across processes
    durable: bool  # storage: store, and the process checkpoints at all (``settings.checkpoints``)
    monotonic: bool
    checkpoint: Checkpoint
    interval_s: float | None = None
    declared: bool = False  # the contract has a state_management subcontract

    @classmethod
    def of(
        cls, subcontract: StateManagementSubcontract | None, support: StateSupport, *, checkpoints: bool = True
    ) -> StatePolicy:
        """The policy of a subcontract; without one, the node keeps everything it can, in the store, per batch."""
        if subcontract is None:
            return cls(frozenset(support.fields), checkpoints, True, "per_batch")
        interval = subcontract.interval_ms / 1000 if subcontract.interval_ms else None
        return cls(
            frozenset(subcontract.state_fields),
            checkpoints and subcontract.storage == "store",
            subcontract.versioning == "monotonic",
            subcontract.checkpoint,
            interval if subcontract.checkpoint == "interval_ms" else None,
            declared=True,
        )

    def keeps(self, name: str) -> bool:
        """Whether ``name`` is written and restored."""
        return self.durable and name in self.fields

    def next_version(self, version: int) -> int:
        """The version a key's next checkpoint carries: one higher, or 0 (always overwrites) without versioning."""
        return version + 1 if self.monotonic else 0


class WritesUnderWay:
    """A node's checkpoint writes under way. ``write(call)`` runs ``call`` (a write of what its checkpoint took as
    changed; None when nothing was), then waits for the writes begun before it: those took what had changed by then,
    some of which the caller's batch may have changed (another partition's worker, another consumer's handler), and
    that batch must not be acknowledged before it is stored; a write of theirs that failed fails the caller too. The
    writes themselves do not wait for each other: the store may write them together (SQLite's group commit).

    ``begin(call)`` starts a write without waiting for it, ``under_way()`` is what is under way now, and
    ``wait(writes)`` waits for some of them: the orchestrator publishes an outcome once its workflow's checkpoint is
    stored, without the batch that wrote it waiting (``OrchestratorNode.flush``)."""

    __slots__ = ("_futures",)

    def __init__(self) -> None:
        self._futures: set[asyncio.Future[None]] = set()

    def under_way(self) -> tuple[asyncio.Future[None], ...]:
        return tuple(self._futures)

    def begin(
        self, call: Callable[[], Coroutine[Any, Any, object]], failed: Callable[[BaseException], None]
    ) -> asyncio.Future[None]:
        """Start ``call`` in a task of its own, under way from now (before this returns), and return the task.
        ``failed(exc)`` is called if it fails; whoever waits for it raises the error too."""
        task: asyncio.Future[Any] = asyncio.create_task(call())
        self._futures.add(task)

        def done(task: asyncio.Future[None]) -> None:
            self._futures.discard(task)
            if not task.cancelled() and (error := task.exception()) is not None:  # retrieved: no warning at exit
                failed(error)

        task.add_done_callback(done)
        return task

    async def write(self, call: Callable[[], Awaitable[object]] | None) -> None:
        earlier = self.under_way()  # before the first await: the caller took what is dirty just before this
        if call is not None:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._futures.add(done)
            try:
                await call()
            except BaseException as exc:
                done.set_exception(exc)
                done.exception()  # retrieved: whoever waits for it raises it
                raise
            else:
                done.set_result(None)
            finally:
                self._futures.discard(done)
        await self.wait(earlier)

    @staticmethod
    async def wait(writes: Iterable[asyncio.Future[None]]) -> None:
        """Wait until ``writes`` are done; the error of one that failed (``StoreError`` for one cancelled)."""
        writes = tuple(writes)
        if not all(write.done() for write in writes):
            with holding():  # waiting for a write held by a store outage is holding too
                await asyncio.wait(writes)
        for write in writes:
            error = asyncio.CancelledError() if write.cancelled() else write.exception()
            if isinstance(error, asyncio.CancelledError):  # its node stops
                raise StoreError("a checkpoint write holding this batch's changes was cancelled")
            if error is not None:
                raise copy.copy(error)


class KeyedState:
    """The state a node keeps per key (``Node.state``), as rows of ``node_states`` with ``storage: store``.

    ``await get(key)`` returns the key's fields, loading them from the store the first time this process sees the key
    (on start, and when the key's partition moved here); ``set(key, **fields)`` changes them (only fields the
    subcontract lists; anything else raises ``StateError``); ``checkpoint()`` writes the keys changed since the last
    one, in one transaction. The node calls ``checkpoint`` as its policy says (``Node.checkpoint``).
    """

    def __init__(
        self,
        node: str,
        policy: StatePolicy,
        store: Store,
        *,
        hold: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]],
        clock: Clock,
    ) -> None:
        self.node = node
        self.policy = policy
        self.store = store
        self._hold = hold
        self._clock = clock
        self._values: dict[str, dict[str, Any]] = {}
        self._versions: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._writes = WritesUnderWay()
        self.checkpoints = 0  # transactions written

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def keys(self) -> list[str]:
        return list(self._values)

    async def get(self, key: str) -> Mapping[str, Any]:
        """The fields of ``key`` (empty for a new key), loaded from the store the first time it is seen here."""
        if key not in self._values:
            await self.load([key])
        return self._values[key]

    async def load(self, keys: Iterable[str]) -> None:
        """Load the keys not held yet, in one read."""
        missing = [key for key in dict.fromkeys(keys) if key not in self._values]
        if not missing:
            return
        rows: list[NodeStateRow] = []
        if self.policy.durable:
            rows = await self._hold(lambda: self.store.get_node_states(self.node, missing))
        for key in missing:
            self._values.setdefault(key, {})
            self._versions.setdefault(key, 0)
        for row in rows:
            if row.key in self._dirty:
                continue  # set while the read was under way: this process's value is newer
            # A field the subcontract no longer lists is not restored.
            self._values[row.key] = {name: value for name, value in row.fields.items() if name in self.policy.fields}
            self._versions[row.key] = row.version

    def set(self, key: str, **fields: Any) -> None:
        """Change fields of ``key`` (loaded or new); written by the next checkpoint."""
        unknown = sorted(name for name in fields if name not in self.policy.fields)
        if unknown:
            kept = ", ".join(sorted(self.policy.fields)) or "none"
            raise StateError(
                f"node {self.node}: state field(s) {', '.join(unknown)} not in its state_management "
                f"state_fields (kept: {kept})"
            )
        self._values.setdefault(key, {}).update(fields)
        self._versions.setdefault(key, 0)
        self._dirty.add(key)

    def version(self, key: str) -> int:
        return self._versions.get(key, 0)

    def forget(self, keep: Callable[[str], bool]) -> None:
        """Drop the keys ``keep`` refuses (their partition moved away): loaded afresh if they come back."""
        for key in [k for k in self._values if not keep(k)]:
            del self._values[key]
            self._versions.pop(key, None)
            self._dirty.discard(key)

    async def checkpoint(self) -> int:
        """Write the keys changed since the last checkpoint; returns how many. Nothing with ``storage: memory``.

        It returns once every key changed before the call is written, those a checkpoint under way took included
        (``WritesUnderWay``)."""
        dirty, self._dirty = self._dirty, set()
        if not self.policy.durable:
            return 0
        now = self._clock.now()
        rows = []
        for key in sorted(dirty):
            if key not in self._values:
                continue  # forgotten meanwhile
            version = self.policy.next_version(self._versions[key])
            self._versions[key] = version
            rows.append(
                NodeStateRow(node=self.node, key=key, version=version, fields=dict(self._values[key]), updated_at=now)
            )
        write = None  # nothing taken: only the writes under way are waited for
        if rows:
            write = functools.partial(self._hold, functools.partial(self.store.apply, WriteBatch(node_states=rows)))
        try:
            await self._writes.write(write)
        except BaseException:
            self._dirty |= dirty  # written with the next checkpoint
            raise
        self.checkpoints += bool(rows)
        return len(rows)
