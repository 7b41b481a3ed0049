"""The event bus seam: ``EventBus`` and the in-process ``MemoryBus``. ``KafkaBus`` lives in ``_kafka.py``.

Semantics, the same on every bus (``tests/test_bus_conformance.py`` runs against each):

- ``publish(topic, envelope)`` delivers to every consumer group subscribed to ``topic``; it waits (backpressure)
  while a group's bounded buffer is full.
- Within a group, each message goes to one member; messages with the same key are handled in publish order.
- At-least-once: a message is acknowledged only after its handler returned. Each handler call runs under the
  ``RetryPolicy`` of the message's event type (``onex.resilience``; a node builds it from its contract): a call past
  its ``timeout_ms`` is cancelled and fails, a handler that fails is retried with the policy's backoff, and after
  the last attempt the message goes to ``<topic>.dlq`` (see ``envelope.dead_letter``), or is dropped and counted
  when the policy says ``dead_letter=False``, and the consumer carries on. A handler that raises ``PayloadError``
  (the message does not fit what the consumer accepts: a bad payload, an event type it does not consume) is given
  up on at once, since no retry can fix it. A ``StoreUnavailable`` is no attempt: the message stays
  unacknowledged and comes again after a pause (store outages are held by the nodes, not retried by the bus).
- No task per event: each subscription has a fixed set of worker tasks that drain buffers in batches.
- A group that has no position yet starts where ``subscribe(..., start=...)`` says: ``"earliest"`` (the default),
  the oldest message the bus still holds for the topic; ``"latest"``, only what is published after ``subscribe()``
  returned. Everything published after ``subscribe()`` returned is delivered either way. Whether a bus holds
  messages for a group that did not exist yet is ``retains_messages``: a broker does, the memory bus does not, so
  on the memory bus both starts are the same. A group with a position (committed offsets; on the memory bus,
  messages buffered for it while it had no member) resumes from it, whatever ``start`` says.
- ``subscribe(..., background=True)`` marks a subscription whose latency does not matter (the control plane: a
  node answering introspection requests, the registry hearing heartbeats): it gets the same messages, and a bus may
  spend less on waiting for them. The memory bus makes no difference; ``KafkaBus`` lets the broker hold such a
  consumer's empty fetches longer (``background_fetch_max_wait_ms``), so an idle one does not poll every few ms.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import contextvars
import enum
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self, get_args
from zlib import crc32

from onex.envelope import OnexEnvelopeV1, Reader, dead_letter, dlq_topic
from onex.exceptions import BusError, PayloadError, StoreUnavailable
from onex.logs import dead_lettered, event, retried
from onex.resilience import RetryPolicy as RetryPolicy  # re-exported: where bus users have always found it

Handler = Callable[[OnexEnvelopeV1], Awaitable[None]]
"""Handles one envelope; raising means "not handled" (retry, then dead letter)."""

BatchHandler = Callable[[Sequence[OnexEnvelopeV1]], Awaitable[None]]
"""Handles a batch of envelopes at once (for write-heavy consumers). If it raises, the bus falls back to handing the
batch's messages over one by one, so one poison message cannot hold the others back. A batch may hold several
partitions' messages, of any of the subscription's topics (the memory bus joins small ones, Kafka a fetch's), each
partition's in order; their events share one retry policy, which times the call."""

Assignment = Callable[[frozenset[tuple[str, int]]], Awaitable[None]]
"""Told the whole set of ``(topic, partition)`` a subscription owns, when it gets it and whenever it changes. A node
that keeps state per key (the orchestrator's workflows) loads what the new partitions hold and drops the rest."""

DeadLetterListener = Callable[[str, str, OnexEnvelopeV1], Awaitable[None]]
"""Awaited with (consumer group, event type of the original, the dead letter) once a dead letter is enqueued."""

GroupStart = Literal["earliest", "latest"]
"""Where a consumer group without a position starts reading (``subscribe(..., start=...)``, module docstring)."""


def check_start(start: object) -> None:
    """``ValueError`` unless ``start`` is a ``GroupStart``: every bus's ``subscribe()`` checks it."""
    if start not in get_args(GroupStart):
        raise ValueError(f"start must be 'earliest' or 'latest', not {start!r}")


_log = logging.getLogger("onex.bus")
_DEFAULT_RETRY = RetryPolicy()


def dropped(
    logger: logging.Logger, envelope: OnexEnvelopeV1, error: BaseException, *, attempts: int, group: str, topic: str
) -> None:
    """The ``drop`` line of a bus: a message given up on under ``dead_letter: false``, named by its event id."""
    event(
        logger,
        logging.WARNING,
        "drop",
        f"dropped event {envelope.event_id} after {attempts} attempt(s) (dead_letter: false): {error!r}",
        event_id=str(envelope.event_id),
        event_type=envelope.event_type,
        correlation_id=None if envelope.correlation_id is None else str(envelope.correlation_id),
        attempts=attempts,
        group=group,
        topic=topic,
    )


@dataclass(frozen=True, slots=True)
class BusStatistics:
    """Counters since the bus started.

    ``published`` counts accepted ``publish()`` calls (dead letters included), ``delivered`` messages whose handler
    returned, ``retried`` handler attempts after a failure, ``dead_lettered`` messages given up on and sent to the
    dead-letter topic, ``dropped`` messages given up on under ``RetryPolicy(dead_letter=False)``, and ``buffered``
    messages accepted for a consumer group but not taken by a handler yet (after ``aclose()``: every message that
    was never handled).
    """

    published: int
    delivered: int
    retried: int
    dead_lettered: int
    buffered: int
    dropped: int = 0


class Subscription(abc.ABC):
    """A live subscription; ``aclose()`` stops its workers after the message in hand is acknowledged."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...


class EventBus(abc.ABC):
    """Base of every bus. An async context manager: ``async with MemoryBus() as bus: ...``."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop every subscription, letting in-flight handlers finish, and release resources."""

    @abc.abstractmethod
    async def publish(self, topic: str, envelope: OnexEnvelopeV1) -> None:
        """Publish one envelope; returns once the bus has accepted it (waits while buffers are full). ``BusError``
        when it cannot: the bus is not running, or (Kafka) a buffer stayed full or the topic unknown for the client's
        ``request_timeout_ms``."""

    async def publish_many(self, topic: str, envelopes: Sequence[OnexEnvelopeV1]) -> None:
        for envelope in envelopes:
            await self.publish(topic, envelope)

    @contextlib.asynccontextmanager
    async def handing_over(self) -> AsyncIterator[None]:
        """Within it, a consumer group whose last member leaves keeps what is published for it, for the member that
        joins next (``Runtime.reload``). A broker keeps it anyway: nothing to do."""
        yield

    @abc.abstractmethod
    async def flush(self) -> None:
        """Wait until everything published so far is held by the bus itself, where it outlives a client that exits
        now (a broker acknowledged it); ``BusError`` if something published outside a handler was lost.

        A no-op where ``publish()`` returning already means that (the memory bus).
        """

    async def unreachable(self) -> str | None:
        """Why what this bus publishes cannot reach anyone now (a Kafka broker that does not answer), or None.
        Readiness asks it: a running bus whose broker is gone only queues. The memory bus is always reachable."""
        return None

    @abc.abstractmethod
    async def subscribe(
        self,
        topics: Sequence[str],
        group: str,
        *,
        handler: Handler | None = None,
        batch_handler: BatchHandler | None = None,
        retry: RetryPolicy = _DEFAULT_RETRY,
        max_batch: int = 500,
        on_assign: Assignment | None = None,
        start: GroupStart = "earliest",
        background: bool = False,
        readers: Mapping[str, Reader] | None = None,
        join_topics: bool = True,
    ) -> Subscription:
        """Subscribe ``group`` to ``topics`` with exactly one of ``handler`` / ``batch_handler``.

        ``on_assign`` is awaited with the partitions this subscription owns before ``subscribe()`` returns, and
        again whenever they change (Kafka rebalances; the memory bus reports its one assignment).

        ``start``: where ``group`` reads a topic it has no position in yet (module docstring). ``"earliest"`` for a
        node, which must not miss what was published before it joined; ``"latest"`` for a group that wants only
        what is published from now on (a client awaiting the outcomes of its own requests, which would otherwise
        read a broker's whole history first). ``ValueError`` for anything else.

        ``background``: the subscription's latency does not matter (module docstring); what it receives is the same.

        ``readers``: per topic, how a record's bytes become an envelope where the bus carries bytes (Kafka):
        ``onex.envelope.typed_reader`` validates the payload into its model in the same pass. The default, and any
        topic not named, is ``OnexEnvelopeV1.from_json``. A bus that carries objects (the memory bus) reads nothing.

        ``join_topics``: a batch handler's call may hold what waits on several of ``topics`` (one flush, one write
        for what would be a call a topic). ``False`` keeps a call to one topic, for a handler whose output others
        wait on (an orchestrator's commands): one topic's call publishes without waiting for the other's work.
        """

    @abc.abstractmethod
    def partition_of(self, topic: str, key: str) -> int:
        """The partition of ``topic`` that a message keyed ``key`` goes to."""

    retains_messages: bool = False
    """Whether published messages outlive this process (a broker keeps them); on the memory bus they die with it."""

    # Per (consumer group, event type), for the metrics and the nodes' summary lines; set by each bus's __init__.
    retried_by: dict[tuple[str, str], int]
    dead_lettered_by: dict[tuple[str, str], int]
    _dead_lettered: int

    dropped_by: dict[tuple[str, str], int]
    _dropped: int

    def _dropped_one(self, group: str, event_type: str) -> None:
        """Count a message given up on without a dead letter (``RetryPolicy.dead_letter`` false)."""
        self._dropped += 1
        key = (group, event_type)
        self.dropped_by[key] = self.dropped_by.get(key, 0) + 1

    def on_dead_letter(self, listener: DeadLetterListener) -> None:
        """Await ``listener(group, event_type, letter)`` after each dead letter this process's subscriptions publish
        (the runtime keeps them in the store on the memory bus, and counts them for the dead-letter alert)."""
        self.__dict__.setdefault("_dead_letter_listeners", []).append(listener)

    async def _dead_lettered_one(self, group: str, event_type: str, letter: OnexEnvelopeV1) -> None:
        """Count a dead letter that was enqueued, and tell the listeners."""
        self._dead_lettered += 1
        key = (group, event_type)
        self.dead_lettered_by[key] = self.dead_lettered_by.get(key, 0) + 1
        for listener in self.__dict__.get("_dead_letter_listeners", ()):
            try:
                await listener(group, event_type, letter)
            except Exception:  # a listener's failure must not make the bus redeliver what it gave up on
                _log.exception("dead-letter listener failed for %s", letter.event_id)

    @abc.abstractmethod
    async def ensure_topics(self, topics: Sequence[str]) -> None:
        """Create topics that do not exist yet (a no-op where topics need no creation)."""

    @abc.abstractmethod
    def statistics(self) -> BusStatistics: ...

    def lag(self) -> dict[tuple[str, str, int], int]:
        """Messages not handled yet per (group, topic, partition) of this process's consumers, where the bus can tell
        (Kafka: end offset less committed offset); empty on a bus that cannot."""
        return {}

    @property
    @abc.abstractmethod
    def state(self) -> BusState:
        """Where the bus is in its lifecycle: ``RUNNING`` between ``start()`` and ``aclose()``."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


# --- MemoryBus ---------------------------------------------------------------------------------------------------
#
# Layout: a ``_Group`` per (topic, group name) owns ``partitions`` buffers (``_Partition``). Each ``subscribe()``
# adds one ``_Member`` per topic to that topic's group, and each member runs one ``_Worker`` task per partition.
# Partition i is owned by member i % len(members) (the "rebalance"); only the owner's worker drains it, and only
# while no other worker still holds a batch from it (``busy``), so a partition is handled by one worker at a time
# and per-key order survives a rebalance. A batch handler's worker whose batch is small also takes what waits in
# the other partitions its subscription's members own, on any of its topics, that no batch holds (``_take_idle``),
# holding them until the call returns: one call instead of several at a moderate load (an outcome and its
# transitions, published together on two topics, in one call), batches side by side under a backlog.
#
# Waiting is done on bare futures rather than asyncio.Event/Condition: an idle worker parks one future in
# ``data_waiter`` that publish() resolves, which keeps the per-message cost at a few attribute reads.


class BusState(enum.Enum):
    """Where a bus is in its lifecycle (``EventBus.state``); only the memory bus passes through ``CLOSING``."""

    CREATED = "created"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


_State = BusState  # the memory bus's own name for it
_RUNNING = BusState.RUNNING  # read once: a member read off its class takes EnumType's __getattr__ hook on 3.11


# Set inside every worker task of a MemoryBus. publish() called from a handler (this context) never waits for
# buffer space: the in-process node graph has cycles (orchestrator -> effect -> orchestrator), and two workers
# each waiting for room in the other's full buffer would deadlock, something Kafka's unbounded log never does.
# Memory stays bounded anyway: only publishers outside the bus wait, and each accepted message causes a bounded
# number of follow-up messages.
_HANDLING_ON: contextvars.ContextVar[MemoryBus | None] = contextvars.ContextVar("onex_bus_handling_on", default=None)


def _wake_all(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
    waiters.clear()


async def _park(waiters: list[asyncio.Future[None]], loop: asyncio.AbstractEventLoop) -> None:
    """Wait until ``_wake_all(waiters)``; a cancelled waiter takes its future out of the list."""
    waiter: asyncio.Future[None] = loop.create_future()
    waiters.append(waiter)
    try:
        await waiter
    except asyncio.CancelledError:
        if waiter in waiters:
            waiters.remove(waiter)
        raise


def _take(part: _Partition, batch: list[OnexEnvelopeV1], n: int) -> None:
    """Move up to ``n`` messages from the front of ``part``'s buffer to the end of ``batch``, and wake the
    publishers waiting for room there."""
    buffer = part.buffer
    if len(buffer) <= n:
        batch.extend(buffer)
        buffer.clear()
    else:
        batch.extend([buffer.popleft() for _ in range(n)])
    if part.space_waiters:
        _wake_all(part.space_waiters)


def _give_back(batch: list[OnexEnvelopeV1], spans: _Spans, first: int = 0) -> None:
    """Put the messages of ``spans[first:]`` back at the front of the partitions they came from (``_Spans``), ahead
    of anything published since, so order is kept."""
    start = spans[first - 1][2] if first else 0
    for part, _, end in spans[first:]:
        part.buffer.extendleft(reversed(batch[start:end]))
        start = end


class _Partition:
    __slots__ = ("buffer", "busy", "data_waiter", "owner", "space_waiters", "standby")

    def __init__(self) -> None:
        self.buffer: deque[OnexEnvelopeV1] = deque()
        self.owner: _Member | None = None
        self.busy = False  # a worker holds a batch taken from this partition
        self.data_waiter: asyncio.Future[None] | None = None  # the owner's idle worker
        self.standby: list[asyncio.Future[None]] = []  # workers waiting for ownership or for ``busy`` to clear
        self.space_waiters: list[asyncio.Future[None]] = []  # publishers waiting for room

    def wake_data_waiter(self) -> None:
        waiter = self.data_waiter
        if waiter is not None:
            self.data_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def wake_workers(self) -> None:
        self.wake_data_waiter()
        if self.standby:
            _wake_all(self.standby)


class _Group:
    """One consumer group on one topic."""

    __slots__ = ("counted", "members", "name", "partitions", "topic")

    def __init__(self, topic: str, name: str, partitions: int) -> None:
        self.topic = topic
        self.name = name
        self.partitions = [_Partition() for _ in range(partitions)]
        self.members: list[_Member] = []
        # Whether this group's buffered messages count towards MemoryBus._pending (join() waits for them). A group
        # without members keeps its buffers for a later member but must not hold join() up.
        self.counted = False

    def buffered(self) -> int:
        return sum(len(p.buffer) for p in self.partitions)

    def rebalance(self) -> None:
        members = self.members
        for i, part in enumerate(self.partitions):
            owner = members[i % len(members)] if members else None
            if part.owner is not owner:
                part.owner = owner
                part.wake_workers()


class _Member:
    """One subscription's membership of one group: its handler and one worker per partition."""

    __slots__ = (
        "batch_handler",
        "bus",
        "fellows",
        "group",
        "handler",
        "max_batch",
        "retry",
        "stop_signal",
        "stopping",
        "tasks",
    )

    def __init__(
        self,
        bus: MemoryBus,
        group: _Group,
        handler: Handler | None,
        batch_handler: BatchHandler | None,
        retry: RetryPolicy,
        max_batch: int,
    ) -> None:
        self.bus = bus
        self.group = group
        self.handler = handler
        self.batch_handler = batch_handler
        self.retry = retry
        self.max_batch = max_batch
        self.stopping = False
        self.stop_signal: asyncio.Future[None] = bus._loop().create_future()
        self.tasks: list[asyncio.Task[None]] = []
        self.fellows: list[_Member] = [self]  # its subscription's members, one a topic: they share the handler

    def start(self) -> None:
        loop = self.bus._loop()
        for i, part in enumerate(self.group.partitions):
            task = loop.create_task(
                _Worker(self, part).run(), name=f"onex-bus:{self.group.topic}:{self.group.name}:{i}"
            )
            task.add_done_callback(_report_crash)
            self.tasks.append(task)

    def stop(self) -> None:
        self.stopping = True
        if not self.stop_signal.done():
            self.stop_signal.set_result(None)
        for part in self.group.partitions:
            part.wake_workers()


def _report_crash(task: asyncio.Task[None]) -> None:
    # Handler errors never reach here; this is for bugs in the bus itself, which would otherwise stall a partition
    # silently.
    if not task.cancelled() and (exc := task.exception()) is not None:
        _log.error("event bus worker %s crashed", task.get_name(), exc_info=exc)


_SMALL_BATCH = 64
"""A batch handler's batch smaller than this takes in what waits in its subscription's idle partitions
(``_take_idle``): below it, a call's fixed cost (a group commit, a flush) is worth sharing; above it, batches run side
by side."""

# Where a batch's messages came from: each partition it drew on, the member owning it, and the end of its messages in
# the batch (they start where the span before ends).
_Spans = list[tuple["_Partition", "_Member", int]]


class _Worker:
    """Drains one partition for one member while that member owns it."""

    __slots__ = ("bus", "member", "part", "siblings")

    def __init__(self, member: _Member, part: _Partition) -> None:
        self.member = member
        self.part = part
        self.bus = member.bus
        # The other partitions of its subscription, each with the member that may own it: its own topic's first. Only
        # a batch handler's batch takes them in (``_take_idle``); a plain handler's worker has none.
        self.siblings = (
            [(p, m) for m in member.fellows for p in m.group.partitions if p is not part]
            if member.batch_handler is not None
            else []
        )

    async def run(self) -> None:
        _HANDLING_ON.set(self.bus)
        member, part = self.member, self.part
        loop = self.bus._loop()
        max_batch = member.max_batch
        small = min(_SMALL_BATCH, max_batch)  # a batch below it has room, and may take in its siblings' messages
        while True:
            while True:
                if member.stopping:
                    return
                if part.owner is member and not part.busy:
                    if part.buffer:
                        break
                    waiter: asyncio.Future[None] = loop.create_future()
                    part.data_waiter = waiter
                    await waiter
                else:
                    await _park(part.standby, loop)
            batch: list[OnexEnvelopeV1] = []
            _take(part, batch, max_batch)
            part.busy = True
            spans = None
            try:
                if member.batch_handler is not None:
                    if len(batch) < small and self.siblings:
                        spans = self._take_idle(batch, max_batch)
                    await self._deliver_batch(batch, member.batch_handler, spans)
                else:
                    assert member.handler is not None
                    await self._deliver_each(batch, member.handler, part, member)
            finally:
                part.busy = False
                # Workers only wait in ``standby`` for an ownership change, so wake them only after one.
                if part.owner is not member and part.standby:
                    _wake_all(part.standby)
                if spans is not None:
                    for other, _, _ in spans[1:]:
                        other.busy = False
                        other.wake_workers()  # its own worker, parked while this batch held the partition
            if part.buffer and not member.stopping:
                # Handlers that never suspend would otherwise keep the loop to themselves while the buffer refills.
                await asyncio.sleep(0)

    def _take_idle(self, batch: list[OnexEnvelopeV1], room: int) -> _Spans | None:
        """Add to a small batch what waits in the other partitions its subscription's members own, on any of its
        topics, that no batch holds, marking them held; returns the batch's spans, or None if it took nothing.

        One batch handler call then does what several would have (one group commit, one flush), while a partition
        still goes to one batch at a time, its messages in order, so per-key order and ownership hold as before. A
        partition whose next message has another retry policy than the batch's first (a consumed event with a
        ``resilience`` block of its own) is left to its own worker: one policy times a batch.
        """
        retry = self.member.retry
        policy = retry.for_event(batch[0].event_type)
        spans: _Spans | None = None
        for other, owner in self.siblings:
            if not other.buffer or other.busy or other.owner is not owner:
                continue
            if retry.by_event and retry.for_event(other.buffer[0].event_type) is not policy:
                continue
            if spans is None:
                spans = [(self.part, self.member, len(batch))]
            _take(other, batch, room - len(batch))
            other.busy = True
            spans.append((other, owner, len(batch)))
            if len(batch) >= room:
                break
        return spans

    async def _deliver_batch(
        self, batch: list[OnexEnvelopeV1], batch_handler: BatchHandler, spans: _Spans | None
    ) -> None:
        try:
            # One policy times the batch: what ``_take_idle`` adds shares the first message's.
            await self.member.retry.for_event(batch[0].event_type).run(batch_handler, batch)
        except Exception:
            # One poison message must not hold the others back: hand them over one at a time, each with its own
            # retries, so only the poison ends up in the dead-letter topic.
            async def one(envelope: OnexEnvelopeV1) -> None:
                await batch_handler([envelope])

            spans = spans or [(self.part, self.member, len(batch))]
            start = 0
            for i, (part, owner, end) in enumerate(spans):
                try:
                    await self._deliver_each(batch[start:end], one, part, owner)
                except BaseException:
                    _give_back(batch, spans, i + 1)  # the partitions not reached yet
                    raise
                start = end
        except BaseException:
            _give_back(batch, spans or [(self.part, self.member, len(batch))])
            raise
        else:
            self.bus._ack(len(batch), len(batch))

    async def _deliver_each(
        self, batch: list[OnexEnvelopeV1], handler: Handler, part: _Partition, member: _Member
    ) -> None:
        """Hand ``batch``, taken from ``part`` of ``member`` (this worker's, or a fellow's a batch took in), to
        ``handler`` one message at a time, retrying each; what is left unacknowledged goes back to ``part``."""
        done = 0  # acknowledged: handled or dead-lettered
        dead = 0
        try:
            for envelope in batch:
                # Stop between messages on a rebalance or close; the new owner picks the rest up in order.
                if member.stopping or part.owner is not member:
                    break
                policy = member.retry.for_event(envelope.event_type)
                try:
                    if policy.timeout_ms is None:
                        await handler(envelope)  # the hot path of a plain subscription: no wrapper coroutine
                    else:
                        await policy.run(handler, envelope)
                except Exception as exc:
                    outcome = await self._retry(envelope, handler, exc, member)
                    if outcome is None:
                        break
                    dead += outcome
                done += 1
        finally:
            if done < len(batch):
                # Unacknowledged messages go back to the front, ahead of anything published since, so order is kept.
                part.buffer.extendleft(reversed(batch[done:]))
            self.bus._ack(done, done - dead)

    async def _retry(self, envelope: OnexEnvelopeV1, handler: Handler, exc: Exception, member: _Member) -> int | None:
        """Retry a failed message of ``member``'s topic: 0 once handled, 1 once given up on (dead-lettered or
        dropped), None if it stays unacknowledged (the member stopped first, or the store is unavailable)."""
        bus = self.bus
        retry = member.retry.for_event(envelope.event_type)
        attempt = 1
        while attempt < retry.max_attempts and not isinstance(exc, (PayloadError, StoreUnavailable)):
            if not await self._backoff(retry, attempt, member):
                return None
            attempt += 1
            bus._retried += 1
            key = (member.group.name, envelope.event_type)
            bus.retried_by[key] = bus.retried_by.get(key, 0) + 1
            retried(_log, envelope, exc, attempt=attempt, group=member.group.name)
            try:
                await retry.run(handler, envelope)
            except Exception as again:
                exc = again
            else:
                return 0
        if isinstance(exc, StoreUnavailable):
            # Not the message's failure, and not the bus's to retry (README, "Design decisions"): it goes back to the
            # buffer unacknowledged after a pause (RetryPolicy.outage_s: jittered, so that replicas do not all come back
            # to the recovering store at once), and no attempt is counted.
            await self._backoff(retry, 1, member, outage=True)
            return None
        if member.stopping:
            return None
        topic = member.group.topic
        if not retry.dead_letter:
            bus._dropped_one(member.group.name, envelope.event_type)
            dropped(_log, envelope, exc, attempts=attempt, group=member.group.name, topic=topic)
            return 1
        try:
            await bus.publish(
                dlq_topic(topic), letter := dead_letter(envelope, topic=topic, error=exc, attempts=attempt)
            )
        except BusError:
            return None  # the bus is closing: leave the message unacknowledged
        await bus._dead_lettered_one(member.group.name, envelope.event_type, letter)
        dead_lettered(_log, envelope, exc, attempts=attempt, group=member.group.name, topic=topic)
        return 1

    async def _backoff(self, retry: RetryPolicy, attempt: int, member: _Member, *, outage: bool = False) -> bool:
        """Wait the pause after failed attempt ``attempt`` on the policy's clock, unless ``member`` is stopped
        first; returns whether to carry on."""
        if member.stopping:
            return False
        delay = retry.outage_s(attempt) if outage else retry.delay_s(attempt)
        if delay > 0:
            # The sleep is a task of its own (see onex.resilience.pause); asyncio.wait neither wraps futures in tasks
            # nor cancels them, so the shared stop_signal survives.
            timer = asyncio.ensure_future(retry.clock.sleep(delay))
            try:
                await asyncio.wait((timer, member.stop_signal), return_when=asyncio.FIRST_COMPLETED)
            finally:
                timer.cancel()
        return not member.stopping


class MemorySubscription(Subscription):
    """A ``MemoryBus`` subscription: one member of ``group`` on each of ``topics``."""

    def __init__(self, bus: MemoryBus, topics: tuple[str, ...], group: str) -> None:
        self.topics = topics
        self.group = group
        self._bus = bus
        self._members: list[_Member] = []
        self._closed = False

    def assignment(self) -> frozenset[tuple[str, int]]:
        """The ``(topic, partition)`` pairs this subscription's members own now."""
        return frozenset(
            (m.group.topic, i) for m in self._members for i, part in enumerate(m.group.partitions) if part.owner is m
        )

    async def aclose(self) -> None:
        """Leave the group: partitions go to the remaining members (or stay buffered for a later one).

        Returns once this subscription's handlers have returned. Raises ``BusError`` when called from one of its
        own handlers, which would wait for itself.
        """
        tasks = [t for m in self._members for t in m.tasks]
        if asyncio.current_task() in tasks:
            raise BusError(f"subscription of {self.group!r} to {', '.join(self.topics)} closed from its own handler")
        if not self._closed:
            self._closed = True
            self._bus._leave(self)
        await _wait_all(tasks)
        self._bus._settle(self)


async def _wait_all(tasks: list[asyncio.Task[None]]) -> None:
    if not tasks:
        return
    try:
        await asyncio.wait(tasks)
    except asyncio.CancelledError:
        # Whoever waits is being cancelled (a shutdown deadline): cancel the workers too, and wait until they have
        # put their unacknowledged messages back, however often the cancellation is repeated (anyio repeats it).
        while unfinished := [t for t in tasks if not t.done()]:
            for task in unfinished:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait(unfinished)
        raise


class MemoryBus(EventBus):
    """The in-process bus: bounded per-partition buffers, envelopes passed by reference (no serialization).

    Per (topic, group) there are ``partitions`` buffers; an envelope's partition is ``crc32(key) % partitions``.
    ``publish()`` waits while the target buffer holds ``buffer_size`` messages, or while the whole bus holds
    ``max_pending`` unacknowledged ones (default ``partitions * buffer_size``); ``publish()`` from inside a handler
    never waits (see ``_HANDLING_ON``), so a cyclic node graph cannot deadlock. A worker takes up to ``max_batch``
    messages off its buffer at a time, so up to twice ``buffer_size`` messages of a partition can be in memory.

    Subscriptions with the same group on the same topic share its partitions. A group that loses its last member
    keeps the messages it had buffered for a later member (they show in ``statistics().buffered``) but receives
    nothing published until one joins again. ``join()`` waits until everything published has been handled.
    """

    def __init__(self, *, partitions: int = 4, buffer_size: int = 10_000, max_pending: int | None = None) -> None:
        if partitions < 1 or buffer_size < 1:
            raise ValueError("partitions and buffer_size must be at least 1")
        self._partitions = partitions
        self._buffer_size = buffer_size
        self._max_pending = max_pending if max_pending is not None else partitions * buffer_size
        if self._max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self._state = _State.CREATED
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._groups: dict[tuple[str, str], _Group] = {}
        # topic -> the groups with members, replaced (never mutated) so publish() can iterate a snapshot.
        self._routes: dict[str, tuple[_Group, ...]] = {}
        self._subscriptions: list[MemorySubscription] = []
        self._handing_over = 0  # ``handing_over()`` blocks under way: groups left without members stay routed
        # Messages buffered or in flight in groups with members; join() waits for zero.
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._space_waiters: list[asyncio.Future[None]] = []  # publishers held back by max_pending
        self._published = 0
        self._delivered = 0
        self._retried = 0
        self._dead_lettered = 0
        # Per (consumer group, event type), for the metrics and the nodes' summary lines.
        self.retried_by: dict[tuple[str, str], int] = {}
        self.dead_lettered_by: dict[tuple[str, str], int] = {}
        self._dropped = 0
        self.dropped_by: dict[tuple[str, str], int] = {}

    def _loop(self) -> asyncio.AbstractEventLoop:
        assert self._event_loop is not None
        return self._event_loop

    def _require_running(self, action: str) -> None:
        if self._state is not _RUNNING:
            raise BusError(f"cannot {action}: the memory bus is {self._state.value}")

    async def start(self) -> None:
        if self._state is not _State.CREATED:
            raise BusError(f"cannot start: the memory bus is {self._state.value}")
        self._event_loop = asyncio.get_running_loop()
        self._state = _State.RUNNING

    async def aclose(self) -> None:
        """Refuse further publishes, let handlers in flight finish and stop every worker.

        Messages not handled yet stay in the buffers and are counted in ``statistics().buffered``. Publishers
        waiting for buffer space get ``BusError``. Safe to call twice, and from a handler (which then finishes
        after this returns).
        """
        if self._state is _State.CREATED:
            self._state = _State.CLOSED
            return
        if self._state is _State.RUNNING:
            self._state = _State.CLOSING
            for sub in self._subscriptions:
                for member in sub._members:
                    member.stop()
            for group in self._groups.values():
                for part in group.partitions:
                    _wake_all(part.space_waiters)
            _wake_all(self._space_waiters)
            self._idle.set()  # release join(): nothing more will be handled
        current = asyncio.current_task()
        await _wait_all([t for s in self._subscriptions for m in s._members for t in m.tasks if t is not current])
        self._state = _State.CLOSED

    async def publish(self, topic: str, envelope: OnexEnvelopeV1) -> None:
        """Hand ``envelope`` to every group subscribed to ``topic``; waits while a target buffer is full."""
        if self._state is not _RUNNING:
            raise BusError(f"cannot publish to {topic!r}: the memory bus is {self._state.value}")
        self._published += 1
        groups = self._routes.get(topic)
        if not groups:
            return  # nobody subscribed: like a Kafka topic no group reads
        index = crc32(envelope.key.encode()) % self._partitions if self._partitions > 1 else 0
        for group in groups:
            part = group.partitions[index]
            if (
                len(part.buffer) >= self._buffer_size or self._pending >= self._max_pending
            ) and _HANDLING_ON.get() is not self:
                await self._wait_for_space(part)
                if not group.members:
                    continue  # the group left while we waited
            part.buffer.append(envelope)
            if self._pending == 0:
                self._idle.clear()
            self._pending += 1
            if part.data_waiter is not None:
                part.wake_data_waiter()

    async def publish_many(self, topic: str, envelopes: Sequence[OnexEnvelopeV1]) -> None:
        """``publish()`` of each envelope in order. From a handler, where a publish never waits (a batch's events, on
        the hot path), in one pass: no coroutine per envelope, the routes and counters looked up once."""
        if _HANDLING_ON.get() is not self:
            for envelope in envelopes:
                await self.publish(topic, envelope)
            return
        self._require_running(f"publish to {topic!r}")  # once a batch: publish()'s own check, inline, is per envelope
        self._published += len(envelopes)
        groups = self._routes.get(topic)
        if not groups or not envelopes:
            return  # nobody subscribed: like a Kafka topic no group reads
        if self._pending == 0:
            self._idle.clear()
        self._pending += len(envelopes) * len(groups)
        partitions = self._partitions
        for envelope in envelopes:
            index = crc32(envelope.key.encode()) % partitions if partitions > 1 else 0
            for group in groups:
                part = group.partitions[index]
                part.buffer.append(envelope)
                if part.data_waiter is not None:
                    part.wake_data_waiter()

    async def _wait_for_space(self, part: _Partition) -> None:
        loop = self._loop()
        while True:
            if self._state is not _State.RUNNING:
                raise BusError(f"publish interrupted: the memory bus is {self._state.value}")
            if part.owner is None:
                return  # the group has no members left; publish() skips it
            if len(part.buffer) >= self._buffer_size:
                await _park(part.space_waiters, loop)
            elif self._pending >= self._max_pending:
                await _park(self._space_waiters, loop)
            else:
                return

    async def subscribe(
        self,
        topics: Sequence[str],
        group: str,
        *,
        handler: Handler | None = None,
        batch_handler: BatchHandler | None = None,
        retry: RetryPolicy = _DEFAULT_RETRY,
        max_batch: int = 500,
        on_assign: Assignment | None = None,
        start: GroupStart = "earliest",
        background: bool = False,
        readers: Mapping[str, Reader] | None = None,
        join_topics: bool = True,
    ) -> MemorySubscription:
        """Join ``group`` on each of ``topics``; the group receives what is published from now on.

        ``start`` is checked but changes nothing here: the memory bus holds no messages for a group before it
        exists, so its oldest message (``"earliest"``) is the first one published after this returns
        (``"latest"``). A group that had members keeps what was buffered for it and resumes with that. Nor does
        ``background``: delivery here costs no polling; nor ``readers``: nothing here is bytes.
        """
        check_start(start)
        if (handler is None) == (batch_handler is None):
            raise ValueError("pass exactly one of handler= and batch_handler=")
        if isinstance(topics, str):
            raise TypeError("topics must be a sequence of topic names, not one string")
        if not topics:
            raise ValueError("subscribe to at least one topic")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self._require_running(f"subscribe {group!r}")
        subscription = MemorySubscription(self, tuple(dict.fromkeys(topics)), group)
        for topic in subscription.topics:
            key = (topic, group)
            target = self._groups.get(key)
            if target is None:
                target = self._groups[key] = _Group(topic, group, self._partitions)
            member = _Member(self, target, handler, batch_handler, retry, max_batch)
            if join_topics:
                member.fellows = subscription._members  # the list filled by this loop
            target.members.append(member)
            if target not in self._routes.get(topic, ()):  # a group handed over is still there
                self._routes[topic] = (*self._routes.get(topic, ()), target)
            if not target.counted:
                target.counted = True
                self._add_pending(target.buffered())
            target.rebalance()
            subscription._members.append(member)
        self._subscriptions.append(subscription)
        if on_assign is not None:
            # One process owns the memory bus, and Runtime subscribes one member per group: the assignment is told
            # once. A later member of the same group takes partitions over without the earlier one being told. Told
            # before the workers start, as Kafka's rebalance listener is: what the partitions hold waits meanwhile
            # (a result handled before the orchestrator loaded its workflow would be taken for a late one).
            try:
                await on_assign(subscription.assignment())
            except BaseException:
                await subscription.aclose()
                raise
        for member in subscription._members:  # each worker knows its fellows' partitions (``_take_idle``)
            member.start()
        return subscription

    def partition_of(self, topic: str, key: str) -> int:
        return crc32(key.encode()) % self._partitions if self._partitions > 1 else 0

    @contextlib.asynccontextmanager
    async def handing_over(self) -> AsyncIterator[None]:
        """Within it, a group whose last member leaves keeps taking what is published for it, for the member that
        joins next (``Runtime.reload``: a node replaced by one of a new contract); a group still without members at
        the end stops, as it would have when its member left."""
        self._handing_over += 1
        try:
            yield
        finally:
            self._handing_over -= 1
            for group in self._groups.values() if not self._handing_over else ():
                if not group.members:
                    self._unroute(group)
                    if group.counted:
                        group.counted = False
                        self._ack(group.buffered(), 0)

    def _leave(self, subscription: MemorySubscription) -> None:
        for member in subscription._members:
            group = member.group
            group.members.remove(member)
            member.stop()
            group.rebalance()
            if not group.members and not self._handing_over:
                self._unroute(group)

    def _unroute(self, group: _Group) -> None:
        """A group without members: what is published from now on is not for it."""
        if group in self._routes.get(group.topic, ()):
            self._routes[group.topic] = tuple(g for g in self._routes[group.topic] if g is not group)
            for part in group.partitions:
                _wake_all(part.space_waiters)

    def _settle(self, subscription: MemorySubscription) -> None:
        """After a closed subscription's workers stopped: stop counting groups left without members."""
        for member in subscription._members:
            group = member.group
            if not group.members and group.counted and not self._handing_over:
                group.counted = False
                self._ack(group.buffered(), 0)
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    def _add_pending(self, n: int) -> None:
        if n:
            self._idle.clear()
            self._pending += n

    def _ack(self, n: int, delivered: int) -> None:
        self._delivered += delivered
        self._pending -= n
        if self._pending == 0:
            self._idle.set()
        if self._space_waiters and self._pending < self._max_pending:
            _wake_all(self._space_waiters)

    async def join(self) -> None:
        """Wait until every message published so far, and every message their handlers publish, was handled.

        Returns at once on a closed bus. Not from a handler: its own message would never count as handled.
        """
        while self._pending and self._state is _State.RUNNING:
            await self._idle.wait()

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        """A no-op: memory topics exist as soon as someone subscribes."""

    async def flush(self) -> None:
        """A no-op: a message is in the bus's buffers once ``publish()`` returned (and dies with the process)."""

    @property
    def state(self) -> BusState:
        return self._state

    def statistics(self) -> BusStatistics:
        return BusStatistics(
            published=self._published,
            delivered=self._delivered,
            retried=self._retried,
            dead_lettered=self._dead_lettered,
            buffered=sum(g.buffered() for g in self._groups.values()),
            dropped=self._dropped,
        )
