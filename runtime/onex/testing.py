"""Public test harness: host nodes on a ``MemoryBus`` with a throwaway SQLite store, in a few lines.

    async with Harness(root=project_root) as h:
        sent = await h.publish("STAMP_REQUESTED", {"file_path": str(tmp_path / "a.py"), "namespace": "ns"})
        done = await h.wait_for("WORKFLOW_COMPLETED", lambda e: e.correlation_id == sent.correlation_id)
        assert [t["to_state"] for t in h.transitions(done.correlation_id)] == ["processing", "completed"]

Every event published on any topic of the contracts is recorded (``events``), on a routed service's own topic
(``onex.routing``) too, with the dead letters of all of them, and ``settle()`` waits until the in-process graph is
quiescent. ``of``, ``wait_for`` and ``publish`` refuse (``OnexError``) a name no contract declares (``of`` and
``wait_for`` accept DEAD_LETTER), so a misspelt name fails instead of matching nothing. A ``wait_for`` whose
predicate raises raises that exception. One that times out raises ``WaitTimeout`` (a ``TimeoutError``) whose message
says what did arrive for the correlation ids involved, every dead letter with its error, and the last FSM
transitions.
``Harness(clock=ManualClock())`` runs every timer of the hosted nodes (step timeouts, reducer windows, heartbeats,
circuit breakers) on a clock the test moves: ``await h.clock.advance(0.2)`` fires what falls due, then ``await
h.settle()`` waits for what that published.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import BaseModel

from onex.bus import MemoryBus, Subscription
from onex.clock import SYSTEM_CLOCK, Clock, ManualClock
from onex.contracts import ContractSet, load_contracts
from onex.envelope import DEAD_LETTER_EVENT, STATE_TRANSITION, IdSource, OnexEnvelopeV1, dlq_topic, new_id
from onex.exceptions import OnexError, WaitTimeout
from onex.nodes import EventCatalog
from onex.routing import service_topics
from onex.runtime import Runtime
from onex.settings import Settings
from onex.store import Store
from onex.stores import store_for

__all__ = ["Harness", "ManualClock", "SequentialIds", "WaitTimeout"]


class SequentialIds:
    """Predictable ids for tests: version 4 UUIDs numbered from ``start`` (``00000000-0000-4000-8000-000000000001``,
    ...), so a test can name the id of the n-th event a node or the harness made."""

    def __init__(self, start: int = 1) -> None:
        self.next = start

    def __call__(self) -> uuid.UUID:
        value, self.next = self.next, self.next + 1
        return uuid.UUID(int=(value & ((1 << 62) - 1)) | (0x4000 << 64) | (0x8000 << 48))


Predicate = Callable[[OnexEnvelopeV1], bool]

# How much of each section a wait_for timeout lists: enough to see what happened, few enough to read in a test report.
_SHOWN_EVENTS = 20
_SHOWN_DEAD_LETTERS = 10
_SHOWN_TRANSITIONS = 10


def _describe_predicate(predicate: Predicate | None) -> str:
    """``<lambda at test_x.py:12>`` rather than ``<function <lambda> at 0x7f...>``: where to look, not an address."""
    if predicate is None:
        return ""
    code = getattr(predicate, "__code__", None)
    name = getattr(predicate, "__qualname__", None) or repr(predicate)
    if code is None:
        return f" matching {predicate!r}"
    return f" matching <{name.rsplit('.', 1)[-1].strip('<>')} at {Path(code.co_filename).name}:{code.co_firstlineno}>"


def _clock_time(envelope: OnexEnvelopeV1) -> str:
    return envelope.event_timestamp.strftime("%H:%M:%S.%f")[:-3]


def _one_line(text: object, limit: int = 300) -> str:
    """``text`` on one line of at most ``limit`` characters: a pydantic error alone spans several lines."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _bounded(lines: list[str], limit: int, what: str) -> list[str]:
    """The last ``limit`` lines, after a line saying how many earlier ones were left out."""
    if len(lines) <= limit:
        return lines
    return [f"  ... {len(lines) - limit} earlier {what} not shown", *lines[-limit:]]


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
            self.store: Store = store_for(self.settings)
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
        # The names ``of`` and ``wait_for`` accept: every event of the contracts, those routed to a service's own
        # topic, and DEAD_LETTER. Filled on entering, with the topics.
        self._names: set[str] = set()
        # Correlation ids of what the test published since the last wait_for returned: what a timeout reports on.
        self._sent: list[uuid.UUID] = []

    async def __aenter__(self) -> Harness:
        try:
            await self.store.open()
            await self.store.upgrade()
            await self.bus.start()
            catalog = EventCatalog(self.contracts.contracts, self.settings)
            self._topics = {name: publication.topic for name, publication in catalog.events.items()}
            # A command routed to a target other than the routing's first travels on that service's own topic
            # (onex.routing): recorded too, or its events and its dead letters would be missing from the record.
            routed = {
                topic: name
                for events in service_topics(self.contracts.contracts, self.settings).values()
                for name, topic in events.items()
            }
            self._names = {*self._topics, *routed.values(), DEAD_LETTER_EVENT}
            topics = {*self._topics.values(), *routed}
            watched = sorted({*topics, *(dlq_topic(t) for t in topics)})
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
        # Each step runs whatever the ones before did: a node whose on_stop raises must not leave the bus's workers
        # and the store's threads running. The first error is raised, with the later ones noted on it.
        errors: list[BaseException] = []

        async def attempt(step: Callable[[], Awaitable[None]]) -> bool:
            try:
                await step()
            except BaseException as error:
                errors.append(error)
                return False
            return True

        try:
            # Record what stopping published (STOPPED heartbeats) before the recorder goes. Not after a failed stop:
            # messages for a node that left its groups halfway stay pending, and join() would wait for them forever.
            if await attempt(self.runtime.stop):
                await attempt(self.bus.join)
            if self._recorder is not None:
                await attempt(self._recorder.aclose)
            await attempt(self.bus.aclose)
            await attempt(self.store.aclose)
        finally:
            for _, _, future in self._waiters:
                future.cancel()
            if self._tmp is not None:
                self._tmp.cleanup()
        if errors:
            for later in errors[1:]:
                errors[0].add_note(f"while closing the harness, also: {later!r}")
            raise errors[0]

    async def _record(self, envelope: OnexEnvelopeV1) -> None:
        # Never raises: the bus would retry a raising handler (recording the event again) and then dead-letter the
        # message, a dead letter no node caused. A predicate's exception goes to the wait_for that passed it.
        self.events.append((envelope.event_type, envelope))
        for waiter in list(self._waiters):
            name, predicate, future = waiter
            if future.done():
                self._waiters.remove(waiter)
                continue
            if name is not None and envelope.event_type != name:
                continue
            try:
                matched = predicate is None or predicate(envelope)
            except Exception as error:
                failure = error
                if isinstance(error, StopIteration):  # a future refuses it; a coroutine makes it a RuntimeError too
                    failure = RuntimeError(f"the predicate raised {error!r}")
                    failure.__cause__ = error
                future.set_exception(failure)
                self._waiters.remove(waiter)
                continue
            if matched:
                future.set_result(envelope)
                self._waiters.remove(waiter)

    def topic(self, event_name: str) -> str:
        """The topic ``event_name`` is published on; OnexError when no hosted contract declares it."""
        try:
            return self._topics[event_name]
        except KeyError:
            raise self._unknown(event_name, self._topics) from None

    def _unknown(self, event_name: str, known: Iterable[str]) -> OnexError:
        # Most often the harness was pointed at the wrong root (a fresh directory has no contracts at all), or the
        # name is misspelt.
        listed = ", ".join(sorted(known)[:20]) or "none"
        return OnexError(
            f"{event_name!r} is not an event of the contracts under {self.settings.root} (the harness's root); "
            f"known: {listed}"
        )

    def _check(self, event_name: str) -> None:
        """OnexError unless ``event_name`` can be recorded: a misspelt name would match nothing, silently."""
        if event_name not in self._names:
            raise self._unknown(event_name, self._names)

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
        if envelope.correlation_id is not None and envelope.correlation_id not in self._sent:
            self._sent.append(envelope.correlation_id)
        return envelope

    async def wait_for(
        self, event_name: str | None, predicate: Predicate | None = None, *, timeout: float = 10.0
    ) -> OnexEnvelopeV1:
        """The first recorded event (past or future) named ``event_name`` matching ``predicate``.

        After ``timeout`` seconds raises ``WaitTimeout`` (a ``TimeoutError``) whose message says what arrived instead:
        the events of the correlation ids involved (those the test published since the last wait returned, then those of
        events of the awaited name that the predicate refused), every dead letter with its error, and the last FSM
        transitions. OnexError when ``event_name`` is not an event of the contracts (nor DEAD_LETTER).
        """
        if event_name is not None:
            self._check(event_name)
        for name, envelope in self.events:
            if (event_name is None or name == event_name) and (predicate is None or predicate(envelope)):
                self._sent.clear()
                return envelope
        future: asyncio.Future[OnexEnvelopeV1] = asyncio.get_running_loop().create_future()
        waiter = (event_name, predicate, future)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                found = await future
        except TimeoutError:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            raise self._timed_out(event_name, predicate, timeout) from None
        self._sent.clear()
        return found

    def _timed_out(self, event_name: str | None, predicate: Predicate | None, timeout: float) -> WaitTimeout:
        """The error of a wait that timed out, with what the harness recorded that may explain it."""
        awaited = event_name or "any event"
        lines = [f"waited {timeout:g} s for {awaited}{_describe_predicate(predicate)}; it did not arrive"]
        # The correlation ids involved: what the test sent since its last wait, then those of events of the
        # awaited name (they arrived, but the predicate refused them).
        cids = list(self._sent)
        near = [e for name, e in self.events if event_name is not None and name == event_name]
        for envelope in near:
            if envelope.correlation_id is not None and envelope.correlation_id not in cids:
                cids.append(envelope.correlation_id)
        if near:
            lines.append(f"{len(near)} {event_name} event(s) arrived but did not match the predicate")
        if not cids:
            lines.append(
                "no correlation id to report on: nothing was published through the harness since the last wait"
            )
        for cid in cids[:5]:
            arrived = [e for _, e in self.events if e.correlation_id == cid]
            lines.append(f"arrived for correlation id {cid} ({len(arrived)} event(s)):")
            shown = [f"  {_clock_time(e)} {e.event_type} from {e.source_node_id}" for e in arrived]
            lines += _bounded(shown, _SHOWN_EVENTS, "events") or ["  (nothing)"]
        if len(cids) > 5:
            lines.append(f"... and {len(cids) - 5} more correlation ids")
        dead = self.dead_letters()
        lines.append(f"dead letters: {len(dead)}" + (":" if dead else ""))
        shown = []
        for letter in dead:
            original = letter.payload.get("original") or {}
            other = "" if letter.correlation_id in cids else " (another correlation id)"
            shown.append(
                f"  {original.get('event_type', '?')} correlation id {letter.correlation_id}{other}: "
                f"{letter.payload.get('error_type')}: {_one_line(letter.payload.get('error'))} "
                f"(after {letter.payload.get('attempts')} attempt(s))"
            )
        lines += _bounded(shown, _SHOWN_DEAD_LETTERS, "dead letters")
        transitions = [t for e in self.of(STATE_TRANSITION) for t in e.payload["transitions"]]
        lines.append(f"FSM transitions: {len(transitions)}" + (", the last:" if transitions else ""))
        shown = [
            f"  {t.get('entity_type')} {t.get('entity_id')}: {t.get('from_state')} -> {t.get('to_state')} "
            f"({t.get('trigger')}) correlation id {t.get('correlation_id')}"
            for t in transitions
        ]
        lines += _bounded(shown, _SHOWN_TRANSITIONS, "transitions")
        return WaitTimeout("\n".join(lines))

    async def settle(self) -> None:
        """Wait until every published message has been handled, including those published meanwhile, and what the
        nodes write behind their batches is written."""
        await self.bus.join()
        for node in self.runtime.nodes:
            await node.written()

    def of(self, event_name: str) -> list[OnexEnvelopeV1]:
        """The recorded events named ``event_name``, in order; OnexError when it is not an event of the contracts (nor
        DEAD_LETTER), so that ``assert not h.of("WORKFLOW_FAILD")`` cannot pass on a typo."""
        self._check(event_name)
        return [e for name, e in self.events if name == event_name]

    def dead_letters(self) -> list[OnexEnvelopeV1]:
        return [e for name, e in self.events if name == DEAD_LETTER_EVENT]

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
