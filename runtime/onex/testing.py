"""Public test harness: host nodes on a ``MemoryBus`` with a throwaway SQLite store, in a few lines.

    async with Harness(root=project_root) as h:
        await h.publish("STAMP_REQUESTED", {"file_path": "a.py", "namespace": "ns"})
        done = await h.wait_for("WORKFLOW_COMPLETED", lambda e: e.payload["file_path"] == "a.py")
        assert [t["to_state"] for t in h.transitions(done.correlation_id)] == ["processing", "completed"]

Every event published on any topic of the hosted contracts is recorded (``events``), and ``settle()`` waits
until the in-process graph is quiescent. ``Harness(clock=ManualClock())`` runs every timer of the hosted nodes
(step timeouts, reducer windows, heartbeats, circuit breakers) on a clock the test moves: ``await
h.clock.advance(0.2)`` fires what falls due, then ``await h.settle()`` waits for what that published.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import BaseModel

from onex.bus import MemoryBus, Subscription
from onex.clock import SYSTEM_CLOCK, Clock, ManualClock
from onex.contracts import ContractSet, load_contracts
from onex.envelope import STATE_TRANSITION, IdSource, OnexEnvelopeV1, dlq_topic, new_id
from onex.nodes import EventCatalog
from onex.runtime import Runtime
from onex.settings import Settings
from onex.store import Store
from onex.stores import open_store

__all__ = ["Harness", "ManualClock", "SequentialIds"]


class SequentialIds:
    """Predictable ids for tests: version 4 UUIDs numbered from ``start`` (``00000000-0000-4000-8000-000000000001``,
    ...), so a test can name the id of the n-th event a node or the harness made."""

    def __init__(self, start: int = 1) -> None:
        self.next = start

    def __call__(self) -> uuid.UUID:
        value, self.next = self.next, self.next + 1
        return uuid.UUID(int=(value & ((1 << 62) - 1)) | (0x4000 << 64) | (0x8000 << 48))


Predicate = Callable[[OnexEnvelopeV1], bool]


class Harness:
    """Hosts ``nodes`` (default: all) of the project at ``root`` in-process; an async context manager.

    ``**settings`` override ``Settings`` fields; ``stamp_roots`` defaults to ``/`` here (files anywhere may be
    stamped), not to the project root as in a deployment. ``clock`` is the hosted nodes' clock (``onex.clock``);
    ``ids`` is where the ids they and ``publish`` make come from (``SequentialIds`` for predictable ones).
    """

    def __init__(
        self,
        nodes: Sequence[str] | None = None,
        *,
        root: Path | None = None,
        contracts: ContractSet | None = None,
        store_url: str | None = None,
        heartbeat_interval_s: float = 0.0,
        clock: Clock | None = None,
        ids: IdSource | None = None,
        **settings: Any,
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if store_url is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="onex-harness-")
            store_url = f"sqlite:///{self._tmp.name}/onex.db"
        try:
            base = Settings.load(environ={}, root=str(root) if root else None, store=store_url)
            # Tests keep their files anywhere (pytest's tmp_path), so the stamping effect may touch any path here
            # unless a test passes stamp_roots=(...) to check confinement; deployments default to the project root.
            settings.setdefault("stamp_roots", (Path(os.sep),))
            self.settings = base.with_(heartbeat_interval_s=heartbeat_interval_s, **settings)
            self.contracts = contracts or load_contracts(self.settings.root)
            self.bus = MemoryBus(partitions=self.settings.partitions, buffer_size=self.settings.buffer_size)
            self.store: Store = open_store(self.settings.store_url())
            self.clock: Clock = clock or SYSTEM_CLOCK
            self.ids: IdSource = ids or new_id
            self.runtime = Runtime(
                self.settings,
                nodes=nodes,
                contracts=self.contracts,
                bus=self.bus,
                store=self.store,
                clock=self.clock,
                ids=self.ids,
            )
        except BaseException:
            if self._tmp is not None:  # an unknown node or a bad contract must not leave the temp dir behind
                self._tmp.cleanup()
            raise
        self.events: list[tuple[str, OnexEnvelopeV1]] = []
        self._waiters: list[tuple[str | None, Predicate | None, asyncio.Future[OnexEnvelopeV1]]] = []
        self._recorder: Subscription | None = None
        self._topics: dict[str, str] = {}

    async def __aenter__(self) -> Harness:
        try:
            await self.store.open()
            await self.store.upgrade()
            await self.bus.start()
            catalog = EventCatalog(self.contracts.contracts, self.settings)
            self._topics = {name: publication.topic for name, publication in catalog.events.items()}
            watched = sorted({*self._topics.values(), *(dlq_topic(t) for t in self._topics.values())})
            self._recorder = await self.bus.subscribe(watched, "onex.testing.recorder", handler=self._record)
            await self.runtime.start()
        except BaseException:
            # A node that fails to start must not leak the store's thread, the bus's workers or the temp dir.
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.runtime.stop()
            await self.bus.join()  # record what stopping published (STOPPED heartbeats) before the recorder goes
            if self._recorder is not None:
                await self._recorder.aclose()
            await self.bus.aclose()
            await self.store.aclose()
        finally:
            for _, _, future in self._waiters:
                future.cancel()
            if self._tmp is not None:
                self._tmp.cleanup()

    async def _record(self, envelope: OnexEnvelopeV1) -> None:
        self.events.append((envelope.event_type, envelope))
        for waiter in list(self._waiters):
            name, predicate, future = waiter
            if future.done():
                self._waiters.remove(waiter)
            elif (name is None or envelope.event_type == name) and (predicate is None or predicate(envelope)):
                future.set_result(envelope)
                self._waiters.remove(waiter)

    def topic(self, event_name: str) -> str:
        return self._topics[event_name]

    async def publish(
        self,
        event_name: str,
        payload: BaseModel | Mapping[str, Any],
        *,
        correlation_id: uuid.UUID | None = None,
        partition_key: str | None = None,
    ) -> OnexEnvelopeV1:
        """Publish an event as an outside client would (CLI, HTTP gateway); returns its envelope."""
        data = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else dict(payload)
        envelope = OnexEnvelopeV1(
            event_type=event_name,
            source_node_id="onex.testing",
            event_id=self.ids(),
            correlation_id=correlation_id or self.ids(),
            partition_key=partition_key,
            payload=data,
        )
        await self.bus.publish(self.topic(event_name), envelope)
        return envelope

    async def wait_for(
        self, event_name: str | None, predicate: Predicate | None = None, *, timeout: float = 10.0
    ) -> OnexEnvelopeV1:
        """The first recorded event (past or future) named ``event_name`` matching ``predicate``."""
        for name, envelope in self.events:
            if (event_name is None or name == event_name) and (predicate is None or predicate(envelope)):
                return envelope
        future: asyncio.Future[OnexEnvelopeV1] = asyncio.get_running_loop().create_future()
        self._waiters.append((event_name, predicate, future))
        async with asyncio.timeout(timeout):
            return await future

    async def settle(self) -> None:
        """Wait until every published message has been handled, including those published meanwhile."""
        await self.bus.join()

    def of(self, event_name: str) -> list[OnexEnvelopeV1]:
        return [e for name, e in self.events if name == event_name]

    def dead_letters(self) -> list[OnexEnvelopeV1]:
        return [e for name, e in self.events if name == "DEAD_LETTER"]

    def transitions(self, correlation_id: uuid.UUID | None) -> list[Any]:
        """The transitions of one workflow (by correlation id) as published (each STATE_TRANSITION event carries a
        handler batch's), in order: dicts of ``ModelStateTransition``'s fields."""
        if correlation_id is None:
            return []
        cid = str(correlation_id)
        return [
            t
            for e in self.of(STATE_TRANSITION)
            for t in e.payload["transitions"]
            if str(t.get("correlation_id")) == cid
        ]
