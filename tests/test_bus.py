"""``onex.bus``: what only the in-process ``MemoryBus`` promises (the shared contract is in test_bus_conformance).

join(), latest-offset groups, rebalancing, closing, statistics, the bounds on publishers, and argument checks.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Sequence

import anyio
import anyio.lowlevel
import pytest
from onex.bus import BusStatistics, Handler, MemoryBus, RetryPolicy, Subscription
from onex.clock import ManualClock
from onex.envelope import OnexEnvelopeV1, dlq_topic, topic_name
from onex.exceptions import BusError, StoreUnavailable

from tests.fixtures.buses import close_within_deadline

pytestmark = pytest.mark.anyio

TOPIC = topic_name("probe")
TIMEOUT_S = 10.0
FAST_RETRY = RetryPolicy(max_attempts=3, backoff_ms=1.0)


def probe(key: str = "key", seq: int = 0, **payload: object) -> OnexEnvelopeV1:
    return OnexEnvelopeV1(event_type="PROBE", source_node_id="test", partition_key=key, payload={"seq": seq, **payload})


def key_in_partition(partition: int, partitions: int = 4) -> str:
    """A key that the bus puts in ``partition`` (crc32 of its UTF-8 bytes modulo the partition count)."""
    return next(k for i in range(1_000) if zlib.crc32((k := f"key-{i}").encode()) % partitions == partition)


@pytest.fixture
async def bus() -> AsyncIterator[MemoryBus]:
    bus = MemoryBus()
    await bus.start()
    yield bus
    await close_within_deadline(bus)


async def until(event: asyncio.Event) -> None:
    with anyio.fail_after(TIMEOUT_S):
        await event.wait()


async def join(bus: MemoryBus) -> None:
    with anyio.fail_after(TIMEOUT_S):
        await bus.join()


class Gate:
    """A handler that records each message, and holds the first one until ``open()``."""

    def __init__(self) -> None:
        self.seen: list[OnexEnvelopeV1] = []
        self.entered = asyncio.Event()
        self._gate = asyncio.Event()
        self.running = 0
        self.max_running = 0

    def open(self) -> None:
        self._gate.set()

    async def handler(self, envelope: OnexEnvelopeV1) -> None:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            self.entered.set()
            await self._gate.wait()
            self.seen.append(envelope)
        finally:
            self.running -= 1


# --- join ----------------------------------------------------------------------------------------------------------


async def test_join_returns_at_once_when_nothing_is_pending(bus: MemoryBus) -> None:
    await join(bus)
    await bus.subscribe([TOPIC], "g", handler=Gate().handler)
    await join(bus)


async def test_join_waits_for_what_handlers_publish_too(bus: MemoryBus) -> None:
    first, second, third = topic_name("first"), topic_name("second"), topic_name("third")
    finished: list[OnexEnvelopeV1] = []

    def forward(to: str) -> Handler:
        async def handle(envelope: OnexEnvelopeV1) -> None:
            await anyio.lowlevel.checkpoint()  # hand over to join() in between, as a real handler's I/O would
            await bus.publish(to, probe(envelope.key, envelope.payload["seq"]))

        return handle

    async def finish(envelope: OnexEnvelopeV1) -> None:
        await anyio.lowlevel.checkpoint()
        finished.append(envelope)

    await bus.subscribe([first], "a", handler=forward(second))
    await bus.subscribe([second], "b", handler=forward(third))
    await bus.subscribe([third], "c", handler=finish)
    await bus.publish_many(first, [probe(f"key-{i}", i) for i in range(100)])

    await join(bus)

    assert len(finished) == 100
    assert bus.statistics() == BusStatistics(published=300, delivered=300, retried=0, dead_lettered=0, buffered=0)


async def test_join_is_released_by_aclose() -> None:
    """A message still buffered when the bus closes is never handled: ``join()`` must not wait for it forever."""
    gate = Gate()
    async with MemoryBus() as bus:
        await bus.subscribe([TOPIC], "g", handler=gate.handler)
        await bus.publish(TOPIC, probe(seq=0))
        await bus.publish(TOPIC, probe(seq=1))  # same key: queued behind the first, which the gate holds
        await until(gate.entered)
        joined = asyncio.Event()

        async def wait_for_join() -> None:
            await join(bus)  # fails the test after TIMEOUT_S if aclose() does not release it
            joined.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_join)
            await anyio.wait_all_tasks_blocked()
            assert not joined.is_set()  # two messages pending: join() waits
            tg.start_soon(bus.aclose)  # lets the message in hand finish, drops the buffered one
            await anyio.wait_all_tasks_blocked()
            gate.open()
        assert joined.is_set()
        assert [e.payload["seq"] for e in gate.seen] == [0]  # the buffered one was dropped, not handled


# --- groups and members ----------------------------------------------------------------------------------------------


async def test_a_group_receives_only_what_is_published_after_it_subscribed(bus: MemoryBus) -> None:
    early, late = Gate(), Gate()
    early.open()
    late.open()
    await bus.subscribe([TOPIC], "early", handler=early.handler)
    before = probe(seq=1)
    await bus.publish(TOPIC, before)
    await bus.subscribe([TOPIC], "late", handler=late.handler)
    after = probe(seq=2)
    await bus.publish(TOPIC, after)

    await join(bus)

    assert early.seen == [before, after]
    assert late.seen == [after]


async def test_nothing_is_handled_before_the_assignment_was_told(bus: MemoryBus) -> None:
    """``on_assign`` is told before the workers start, as Kafka's rebalance listener is: a node loading what its
    partitions own (the orchestrator's running workflows) sees no message of them before it has loaded it."""
    gate, witness, during = Gate(), Gate(), list[bool]()
    gate.open()
    witness.open()
    sent = [probe(key_in_partition(p), seq=p) for p in range(4)]
    seen_by_witness = asyncio.Event()

    async def witnessed(envelope: OnexEnvelopeV1) -> None:
        await witness.handler(envelope)
        if len(witness.seen) == len(sent):
            seen_by_witness.set()

    await bus.subscribe([TOPIC], "witness", handler=witnessed)  # started: it takes what is published at once

    async def on_assign(assigned: frozenset[tuple[str, int]]) -> None:
        for envelope in sent:  # buffered for the group, which has its member
            await bus.publish(TOPIC, envelope)
        # Woken by the same publishes, a started worker of this group would have taken them by now.
        await until(seen_by_witness)
        during.append(gate.entered.is_set())

    await bus.subscribe([TOPIC], "g", handler=gate.handler, on_assign=on_assign)
    await join(bus)

    assert during == [False]
    assert sorted(e.payload["seq"] for e in gate.seen) == [0, 1, 2, 3]


async def test_a_subscription_whose_assignment_failed_is_closed(bus: MemoryBus) -> None:
    gate = Gate()
    gate.open()

    async def on_assign(assigned: frozenset[tuple[str, int]]) -> None:
        raise RuntimeError("cannot load")

    with pytest.raises(RuntimeError, match="cannot load"):
        await bus.subscribe([TOPIC], "g", handler=gate.handler, on_assign=on_assign)
    await bus.publish(TOPIC, probe())
    await join(bus)  # nobody is in the group: nothing waits to be handled

    assert gate.seen == []


async def test_partitions_are_dealt_round_robin_over_the_members(bus: MemoryBus) -> None:
    # Stable partitioning (crc32, not Python's salted hash()): partition p goes to member p % 2.
    a, b = Gate(), Gate()
    a.open()
    b.open()
    await bus.subscribe([TOPIC], "g", handler=a.handler)
    await bus.subscribe([TOPIC], "g", handler=b.handler)
    keys = [key_in_partition(p) for p in range(4)]
    await bus.publish_many(TOPIC, [probe(k) for k in keys])

    await join(bus)

    assert [e.key for e in a.seen] == [keys[0], keys[2]]
    assert [e.key for e in b.seen] == [keys[1], keys[3]]


async def test_a_partition_moves_to_a_new_member_in_order_and_never_concurrently(bus: MemoryBus) -> None:
    key = key_in_partition(1)  # partition 1 moves from the first member to the second when it joins
    seen: list[tuple[str, int]] = []
    running = 0
    overlapped = False
    gate, entered = asyncio.Event(), asyncio.Event()

    def member(name: str) -> Handler:
        async def handle(envelope: OnexEnvelopeV1) -> None:
            nonlocal running, overlapped
            running += 1
            overlapped = overlapped or running > 1
            entered.set()
            await gate.wait()
            await anyio.lowlevel.checkpoint()
            seen.append((name, envelope.payload["seq"]))
            running -= 1

        return handle

    await bus.subscribe([TOPIC], "g", handler=member("first"))
    await bus.publish_many(TOPIC, [probe(key, i) for i in range(50)])
    await until(entered)  # the first member holds message 0 and has the other 49 in its batch
    await bus.subscribe([TOPIC], "g", handler=member("second"))
    await bus.publish_many(TOPIC, [probe(key, i) for i in range(50, 100)])
    gate.set()

    await join(bus)

    assert [seq for _, seq in seen] == list(range(100))
    assert not overlapped
    # The first member finished the message in hand and handed the rest of its batch over.
    assert seen[0] == ("first", 0)
    assert {name for name, _ in seen[1:]} == {"second"}


async def test_a_leaving_member_hands_its_partitions_to_the_others(bus: MemoryBus) -> None:
    first, second = Gate(), Gate()
    second.open()
    leaving = await bus.subscribe([TOPIC], "g", handler=first.handler)
    await bus.subscribe([TOPIC], "g", handler=second.handler)
    key = key_in_partition(0)  # the first member's
    await bus.publish_many(TOPIC, [probe(key, i) for i in range(20)])
    await until(first.entered)

    async with anyio.create_task_group() as tg:
        tg.start_soon(leaving.aclose)
        await anyio.wait_all_tasks_blocked()  # aclose() waits for the message in hand
        first.open()

    await join(bus)
    assert [e.payload["seq"] for e in first.seen] == [0]
    assert [e.payload["seq"] for e in second.seen] == list(range(1, 20))


async def test_a_group_without_members_keeps_its_buffer_for_the_next_member(bus: MemoryBus) -> None:
    gate = Gate()
    sub = await bus.subscribe([TOPIC], "g", handler=gate.handler)
    await bus.publish_many(TOPIC, [probe("k", i) for i in range(10)])
    await until(gate.entered)
    async with anyio.create_task_group() as tg:
        tg.start_soon(sub.aclose)
        await anyio.wait_all_tasks_blocked()
        gate.open()

    # Nobody is there to handle the other nine: join() must not wait for them, statistics show them.
    await join(bus)
    assert bus.statistics().buffered == 9
    await bus.publish(TOPIC, probe("k", 99))  # not for this group: it has no member now
    assert bus.statistics().buffered == 9

    again = Gate()
    again.open()
    await bus.subscribe([TOPIC], "g", handler=again.handler)
    await join(bus)
    assert [e.payload["seq"] for e in again.seen] == list(range(1, 10))
    assert bus.statistics().buffered == 0


async def test_a_subscription_covers_several_topics(bus: MemoryBus) -> None:
    gate = Gate()
    gate.open()
    other = topic_name("other")
    await bus.subscribe([TOPIC, other, TOPIC], "g", handler=gate.handler)
    await bus.publish(TOPIC, probe(seq=1))
    await bus.publish(other, probe(seq=2))
    await join(bus)
    assert sorted(e.payload["seq"] for e in gate.seen) == [1, 2]


async def test_batches_are_at_most_max_batch(bus: MemoryBus) -> None:
    sizes: list[int] = []

    async def batch_handler(envelopes: Sequence[OnexEnvelopeV1]) -> None:
        sizes.append(len(envelopes))

    await bus.subscribe([TOPIC], "g", batch_handler=batch_handler, max_batch=7)
    await bus.publish_many(TOPIC, [probe("k", i) for i in range(50)])
    await join(bus)
    assert sizes == [7] * 7 + [1]


class Batches:
    """A batch handler that records each call, fails a call that holds a poison message, and, after ``hold(n)``,
    holds its call number ``n`` (from 0) until ``open()``."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.calls: list[list[OnexEnvelopeV1]] = []
        self.handled: list[OnexEnvelopeV1] = []
        self.entered = asyncio.Event()
        self._gate = asyncio.Event()
        self._holding: int | None = None

    def hold(self, call: int = 0) -> None:
        self._holding = call

    def open(self) -> None:
        self._gate.set()

    async def handler(self, envelopes: Sequence[OnexEnvelopeV1]) -> None:
        self.calls.append(list(envelopes))
        if len(self.calls) - 1 == self._holding:
            self.entered.set()
            await self._gate.wait()
        if any(e.payload.get("poison") for e in envelopes):
            raise RuntimeError("poison")
        self.handled.extend(envelopes)


def across_partitions(per_partition: int, partitions: int = 4, **payload: object) -> list[list[OnexEnvelopeV1]]:
    """``per_partition`` messages for each partition, one key each, numbered in publish order within the key."""
    return [[probe(key_in_partition(p), i, **payload) for i in range(per_partition)] for p in range(partitions)]


async def test_a_small_batch_takes_in_what_waits_in_the_members_other_partitions(bus: MemoryBus) -> None:
    batches = Batches()
    await bus.subscribe([TOPIC], "g", batch_handler=batches.handler)
    sent = [e for part in across_partitions(2) for e in part]

    await bus.publish_many(TOPIC, sent)
    await join(bus)

    # The first partition's worker took its own two and what the three others held: one call, not four.
    assert batches.calls == [sent]


OTHER = topic_name("other-probe")


def other(key: str, seq: int, **payload: object) -> OnexEnvelopeV1:
    """A message of another event type, for ``OTHER``."""
    return probe(key, seq, **payload).model_copy(update={"event_type": "OTHER_PROBE"})


async def test_a_small_batch_takes_in_what_waits_on_its_subscriptions_other_topics(bus: MemoryBus) -> None:
    batches = Batches()
    await bus.subscribe([TOPIC, OTHER], "g", batch_handler=batches.handler)
    mine = [probe(key_in_partition(p), 0) for p in range(2)]
    theirs = [other(key_in_partition(p), i) for p in (1, 3) for i in range(2)]

    await bus.publish_many(TOPIC, mine)
    await bus.publish_many(OTHER, theirs)
    await join(bus)

    # An outcome and its transitions, published together on two topics, are one call: one write, one flush.
    assert batches.calls == [mine + theirs]


async def test_a_subscription_that_keeps_a_call_a_topic_takes_in_its_own_topics_partitions_only(bus: MemoryBus) -> None:
    batches = Batches()
    await bus.subscribe([TOPIC, OTHER], "g", batch_handler=batches.handler, join_topics=False)
    mine = [probe(key_in_partition(p), 0) for p in range(2)]
    theirs = [other(key_in_partition(p), 0) for p in range(2)]

    await bus.publish_many(TOPIC, mine)
    await bus.publish_many(OTHER, theirs)
    await join(bus)

    assert sorted(batches.calls, key=lambda call: call[0].event_type) == [theirs, mine]


async def test_a_failed_batch_over_two_topics_dead_letters_the_poison_to_its_own_topics_dead_letter_topic(
    bus: MemoryBus,
) -> None:
    batches, letters = Batches(), Batches("letters")
    await bus.subscribe([TOPIC, OTHER], "g", batch_handler=batches.handler, retry=FAST_RETRY)
    await bus.subscribe([dlq_topic(TOPIC), dlq_topic(OTHER)], "dlq", batch_handler=letters.handler)
    mine = [probe(key_in_partition(0), 0)]
    poison = other(key_in_partition(1), 0, poison=True)

    await bus.publish_many(TOPIC, mine)
    await bus.publish(OTHER, poison)
    await join(bus)

    assert batches.calls[0] == [*mine, poison]
    assert batches.handled == mine
    [letter] = letters.handled
    assert letter.payload["original_topic"] == OTHER


async def test_a_batch_takes_in_no_other_topic_whose_events_have_a_policy_of_their_own(bus: MemoryBus) -> None:
    batches = Batches()
    own = RetryPolicy(max_attempts=1, timeout_ms=5_000)
    retry = FAST_RETRY.with_events({"OTHER_PROBE": own})
    await bus.subscribe([TOPIC, OTHER], "g", batch_handler=batches.handler, retry=retry)
    mine, theirs = probe(key_in_partition(0), 0), other(key_in_partition(1), 0)

    await bus.publish(TOPIC, mine)
    await bus.publish(OTHER, theirs)
    await join(bus)

    # One policy times a call: the two go in calls of their own.
    assert sorted(batches.calls, key=len) == [[mine], [theirs]]


async def test_a_partition_held_by_another_partitions_batch_is_handled_after_it_in_order(bus: MemoryBus) -> None:
    batches = Batches()
    batches.hold()
    await bus.subscribe([TOPIC], "g", batch_handler=batches.handler)
    first = across_partitions(1)
    await bus.publish_many(TOPIC, [part[0] for part in first])
    await until(batches.entered)  # one call holds every partition
    later = [probe(key_in_partition(p), 1) for p in range(4)]
    await bus.publish_many(TOPIC, later)
    await anyio.wait_all_tasks_blocked()
    assert len(batches.calls) == 1  # the held partitions' own workers wait for the call
    batches.open()

    await join(bus)

    assert batches.calls[0] == [part[0] for part in first]
    [again] = batches.calls[1:]  # whichever worker came first took the others' too
    assert sorted(again, key=later.index) == later
    assert bus.statistics().delivered == 8


async def test_a_failed_batch_over_several_partitions_is_handed_over_one_by_one_in_order(bus: MemoryBus) -> None:
    batches = Batches()
    await bus.subscribe([TOPIC], "g", batch_handler=batches.handler, retry=FAST_RETRY)
    parts = across_partitions(2)
    poison = parts[2][0] = probe(key_in_partition(2), 0, poison=True)
    sent = [e for part in parts for e in part]

    await bus.publish_many(TOPIC, sent)
    await join(bus)

    assert batches.calls[0] == sent
    # One by one, each partition's in order; the poison alone as often as the policy allows, then dead-lettered.
    assert batches.calls[1:] == [[e] for e in sent[:4]] + [[poison]] * FAST_RETRY.max_attempts + [[e] for e in sent[5:]]
    assert batches.handled == [e for e in sent if e is not poison]
    assert bus.statistics().dead_lettered == 1


async def test_a_batch_over_several_partitions_hands_each_to_its_new_owner(bus: MemoryBus) -> None:
    first, second = Batches("first"), Batches("second")
    first.hold()
    await bus.subscribe([TOPIC], "g", batch_handler=first.handler, retry=FAST_RETRY)
    parts = across_partitions(2)
    parts[0][0] = probe(key_in_partition(0), 0, poison=True)  # fails the batch, so it is handed over one by one
    await bus.publish_many(TOPIC, [e for part in parts for e in part])
    await until(first.entered)
    # Partitions 1 and 3 move to the second member while the first member's batch holds them.
    joined = await bus.subscribe([TOPIC], "g", batch_handler=second.handler)
    assert {p for _, p in joined.assignment()} == {1, 3}
    first.open()

    await join(bus)

    def partitions(handled: list[OnexEnvelopeV1]) -> dict[int, list[int]]:
        seqs: dict[int, list[int]] = {}
        for envelope in handled:
            assert envelope.key is not None
            seqs.setdefault(bus.partition_of(TOPIC, envelope.key), []).append(envelope.payload["seq"])
        return seqs

    # The first member kept what it still owns; the second got the rest, in order, once the batch let go of them.
    assert partitions(first.handled) == {0: [1], 2: [0, 1]}
    assert partitions(second.handled) == {1: [0, 1], 3: [0, 1]}
    assert bus.statistics().dead_lettered == 1


@pytest.mark.parametrize("held", ["batch", "first one by one"])
async def test_a_cancelled_batch_over_several_partitions_goes_back_to_each(bus: MemoryBus, held: str) -> None:
    stuck = Batches()
    stuck.hold(0 if held == "batch" else 1)  # never opened
    leaving = await bus.subscribe([TOPIC], "g", batch_handler=stuck.handler, retry=FAST_RETRY)
    parts = across_partitions(2)
    if held != "batch":  # the batch fails, and the first message handed over alone is held
        parts[0][0] = probe(key_in_partition(0), 0, poison=True)
    sent = [e for part in parts for e in part]
    await bus.publish_many(TOPIC, sent)
    await until(stuck.entered)
    assert stuck.calls[0] == sent

    with anyio.move_on_after(0.05):  # a shutdown deadline, not synchronisation
        await leaving.aclose()
    assert bus.statistics().buffered == len(sent)

    # Two new members: each must get its own partitions' messages, in order, so each went back where it came from.
    a, b = Batches("a"), Batches("b")
    sub_a = await bus.subscribe([TOPIC], "g", batch_handler=a.handler, retry=FAST_RETRY)
    sub_b = await bus.subscribe([TOPIC], "g", batch_handler=b.handler, retry=FAST_RETRY)
    await join(bus)
    for batches, sub in ((a, sub_a), (b, sub_b)):
        owned = {p for _, p in sub.assignment()}
        mine = [e for e in sent if e.key is not None and bus.partition_of(TOPIC, e.key) in owned]
        assert batches.handled == [e for e in mine if not e.payload.get("poison")]


# --- failures ------------------------------------------------------------------------------------------------------


async def test_dead_lettering_does_not_wait_for_a_full_dead_letter_buffer() -> None:
    # max_pending high: the stuck dead-letter reader would otherwise hold the outside publisher back (by design).
    async with MemoryBus(buffer_size=2, max_pending=1_000) as bus:
        dlq_reader = Gate()  # holds the dead-letter topic's consumer: its buffer fills at once
        await bus.subscribe([dlq_topic(TOPIC)], "dlq", handler=dlq_reader.handler)
        handled = Gate()
        handled.open()

        async def fussy(envelope: OnexEnvelopeV1) -> None:
            if envelope.payload.get("poison"):
                raise RuntimeError("no")
            await handled.handler(envelope)

        await bus.subscribe([TOPIC], "g", handler=fussy, retry=FAST_RETRY)
        await bus.publish_many(TOPIC, [probe("k", i, poison=True) for i in range(10)])
        await bus.publish(TOPIC, probe("k", 10))

        await until(handled.entered)  # behind the ten poison messages in the same partition
        assert bus.statistics().dead_lettered == 10
        dlq_reader.open()
        await join(bus)
        assert len(dlq_reader.seen) == 10


async def test_statistics_count_retries_and_dead_letters(bus: MemoryBus) -> None:
    calls = 0

    async def failing(envelope: OnexEnvelopeV1) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("always")

    await bus.subscribe([TOPIC], "g", handler=failing, retry=RetryPolicy(max_attempts=4, backoff_ms=0))
    await bus.publish(TOPIC, probe())
    await join(bus)
    assert calls == 4
    # The dead letter was published too, to a topic nobody reads.
    assert bus.statistics() == BusStatistics(published=2, delivered=0, retried=3, dead_lettered=1, buffered=0)


class NotingClock(ManualClock):
    """A ``ManualClock`` that notes how long each sleep on it is."""

    def __init__(self) -> None:
        super().__init__()
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await super().sleep(seconds)


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999999])
async def test_a_message_a_store_outage_left_unacknowledged_comes_again_after_an_equally_jittered_pause(
    bus: MemoryBus, draw: float
) -> None:
    # Every replica meets the outage at once: an unjittered pause brings them all back to the recovering store
    # together. Half of it stays fixed (equal jitter), whatever the policy's jitter, so that it is never ~0.
    clock = NotingClock()
    retry = RetryPolicy(max_attempts=1, backoff_ms=100.0, jitter="none", clock=clock, random=lambda: draw)
    calls = 0
    handled = asyncio.Event()

    async def needs_the_store(envelope: OnexEnvelopeV1) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StoreUnavailable("connection refused")
        handled.set()

    await bus.subscribe([TOPIC], "store", handler=needs_the_store, retry=retry)
    await bus.publish(TOPIC, probe())
    with anyio.fail_after(TIMEOUT_S):
        while not clock.sleepers:
            await anyio.lowlevel.checkpoint()
    assert clock.slept == [pytest.approx(0.05 + draw * 0.05)]
    await clock.advance(0.1)
    await until(handled)
    assert (calls, bus.statistics().retried, bus.statistics().dead_lettered) == (2, 0, 0)


# --- closing -------------------------------------------------------------------------------------------------------


async def test_aclose_lets_the_handler_in_hand_finish_and_keeps_the_rest_buffered() -> None:
    gate = Gate()
    bus = MemoryBus()
    await bus.start()
    await bus.subscribe([TOPIC], "g", handler=gate.handler)
    await bus.publish_many(TOPIC, [probe("k", i) for i in range(5)])
    await until(gate.entered)

    async with anyio.create_task_group() as tg:
        tg.start_soon(bus.aclose)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(BusError, match="memory bus is closing"):
            await bus.publish(TOPIC, probe())
        gate.open()

    assert [e.payload["seq"] for e in gate.seen] == [0]
    assert bus.statistics().buffered == 4
    assert bus.statistics().delivered == 1
    with pytest.raises(BusError, match="memory bus is closed"):
        await bus.publish(TOPIC, probe())
    await bus.aclose()  # twice is fine


async def test_aclose_fails_a_publisher_that_waits_for_room() -> None:
    gate = Gate()
    bus = MemoryBus(partitions=1, buffer_size=2)
    await bus.start()
    await bus.subscribe([TOPIC], "g", handler=gate.handler, max_batch=1)
    failure: list[BaseException] = []

    async def publish_many() -> None:
        try:
            await bus.publish_many(TOPIC, [probe("k", i) for i in range(10)])
        except BusError as exc:
            failure.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(publish_many)
        await until(gate.entered)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(bus.aclose)
        await anyio.wait_all_tasks_blocked()
        gate.open()

    assert len(failure) == 1
    assert "publish interrupted" in str(failure[0])


async def test_a_cancelled_aclose_cancels_a_stuck_handler_without_losing_its_message() -> None:
    never = asyncio.Event()
    entered = asyncio.Event()

    async def stuck(envelope: OnexEnvelopeV1) -> None:
        entered.set()
        await never.wait()

    bus = MemoryBus()
    await bus.start()
    await bus.subscribe([TOPIC], "g", handler=stuck)
    await bus.publish_many(TOPIC, [probe("k", i) for i in range(3)])
    await until(entered)

    with anyio.move_on_after(0.05):  # a shutdown deadline, not synchronisation
        await bus.aclose()

    # The worker was cancelled mid-handler (CancelledError went through it); nothing was acknowledged.
    assert bus.statistics().buffered == 3
    assert bus.statistics().delivered == 0


async def test_aclose_from_a_handler_does_not_wait_for_itself() -> None:
    done = asyncio.Event()
    bus = MemoryBus()
    await bus.start()

    async def shut_down(envelope: OnexEnvelopeV1) -> None:
        await bus.aclose()
        done.set()

    await bus.subscribe([TOPIC], "g", handler=shut_down)
    await bus.publish(TOPIC, probe())
    await until(done)
    with pytest.raises(BusError):
        await bus.publish(TOPIC, probe())


async def test_a_subscription_cannot_close_itself_from_its_handler(bus: MemoryBus) -> None:
    errors: list[BaseException] = []
    subs: list[Subscription] = []

    async def leave(envelope: OnexEnvelopeV1) -> None:
        try:
            await subs[0].aclose()
        except BusError as exc:
            errors.append(exc)

    subs.append(await bus.subscribe([TOPIC], "g", handler=leave))
    await bus.publish(TOPIC, probe())
    await join(bus)
    assert "from its own handler" in str(errors[0])


# --- bounds --------------------------------------------------------------------------------------------------------


async def test_max_pending_bounds_the_whole_bus_for_outside_publishers() -> None:
    gate = Gate()
    accepted = 0
    async with MemoryBus(partitions=4, buffer_size=100, max_pending=10) as bus:
        await bus.subscribe([TOPIC], "g", handler=gate.handler)

        async def publish_all() -> None:
            nonlocal accepted
            for i in range(50):
                await bus.publish(TOPIC, probe(f"key-{i}", i))  # spread over every partition
                accepted += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(publish_all)
            await until(gate.entered)
            await anyio.wait_all_tasks_blocked()
            assert accepted == 10
            gate.open()
        await join(bus)
        assert len(gate.seen) == 50


async def test_handlers_publish_past_full_buffers() -> None:
    gate = Gate()
    async with MemoryBus(partitions=1, buffer_size=2) as bus:
        sink = topic_name("sink")
        await bus.subscribe([sink], "sink", handler=gate.handler)
        fanned_out = asyncio.Event()

        async def fan_out(envelope: OnexEnvelopeV1) -> None:
            await bus.publish_many(sink, [probe("k", i) for i in range(20)])
            fanned_out.set()

        await bus.subscribe([TOPIC], "g", handler=fan_out)
        await bus.publish(TOPIC, probe())
        await until(fanned_out)  # 20 into a buffer of 2 whose consumer is stuck: a handler does not wait
        gate.open()
        await join(bus)
        assert len(gate.seen) == 20


async def test_a_handlers_publish_many_reaches_every_group_in_order(bus: MemoryBus) -> None:
    # From a handler publish_many takes its one-pass path: each envelope to each group, in order per key, counted.
    sink = topic_name("sink")
    seen: dict[str, list[tuple[str, int]]] = {"x": [], "y": []}

    def record(group: str) -> Handler:
        async def handle(envelope: OnexEnvelopeV1) -> None:
            seen[group].append((envelope.key, envelope.payload["seq"]))

        return handle

    async def fan_out(envelope: OnexEnvelopeV1) -> None:
        await bus.publish_many(sink, [probe(f"key-{i % 5}", i) for i in range(40)])
        await bus.publish_many(sink, [])
        await bus.publish_many(topic_name("nobody"), [probe("k", 0)])

    for group in seen:
        await bus.subscribe([sink], group, handler=record(group))
    await bus.subscribe([TOPIC], "g", handler=fan_out)
    await bus.publish(TOPIC, probe())
    await join(bus)

    for got in seen.values():
        assert sorted(got, key=lambda pair: pair[1]) == [(f"key-{i % 5}", i) for i in range(40)]
        for key in {k for k, _ in got}:
            assert [s for k, s in got if k == key] == [i for i in range(40) if f"key-{i % 5}" == key]
    assert bus.statistics() == BusStatistics(published=42, delivered=81, retried=0, dead_lettered=0, buffered=0)


async def test_a_handlers_publish_many_does_not_go_through_publish() -> None:
    # The one pass is the point (no call per envelope); a subclass that wraps publish() sees only what is published
    # outside a handler, one at a time.
    class Counting(MemoryBus):
        calls = 0

        async def publish(self, topic: str, envelope: OnexEnvelopeV1) -> None:
            Counting.calls += 1
            await super().publish(topic, envelope)

    async with Counting() as bus:
        sink = topic_name("sink")

        async def drop(envelope: OnexEnvelopeV1) -> None: ...

        await bus.subscribe([sink], "sink", handler=drop)

        fanned_out = asyncio.Event()

        async def fan_out(envelope: OnexEnvelopeV1) -> None:
            await bus.publish_many(sink, [probe("k", i) for i in range(10)])
            fanned_out.set()

        await bus.subscribe([TOPIC], "g", handler=fan_out)
        await bus.publish_many(TOPIC, [probe()])
        await until(fanned_out)
        assert bus.statistics().published == 11
        assert Counting.calls == 1  # the outside publish_many's one envelope; none of the handler's ten


# --- arguments and lifecycle ---------------------------------------------------------------------------------------


async def test_subscribe_checks_its_arguments(bus: MemoryBus) -> None:
    handler = Gate().handler

    async def batch(envelopes: Sequence[OnexEnvelopeV1]) -> None: ...

    with pytest.raises(ValueError, match="exactly one"):
        await bus.subscribe([TOPIC], "g")
    with pytest.raises(ValueError, match="exactly one"):
        await bus.subscribe([TOPIC], "g", handler=handler, batch_handler=batch)
    with pytest.raises(TypeError, match="not one string"):
        await bus.subscribe(TOPIC, "g", handler=handler)
    with pytest.raises(ValueError, match="at least one topic"):
        await bus.subscribe([], "g", handler=handler)
    with pytest.raises(ValueError, match="max_batch"):
        await bus.subscribe([TOPIC], "g", handler=handler, max_batch=0)


async def test_the_bus_must_be_started_once() -> None:
    bus = MemoryBus()
    with pytest.raises(BusError, match="memory bus is created"):
        await bus.publish(TOPIC, probe())
    with pytest.raises(BusError, match="memory bus is created"):
        await bus.subscribe([TOPIC], "g", handler=Gate().handler)
    await bus.start()
    with pytest.raises(BusError, match="cannot start: the memory bus is running"):
        await bus.start()
    await bus.aclose()
    await MemoryBus().aclose()  # never started: nothing to do


def test_sizes_must_be_positive() -> None:
    for kwargs in ({"partitions": 0}, {"buffer_size": 0}, {"max_pending": 0}):
        with pytest.raises(ValueError, match="at least 1"):
            MemoryBus(**kwargs)


def test_retry_policy_backs_off_exponentially_up_to_a_cap() -> None:
    policy = RetryPolicy(max_attempts=5, backoff_ms=100, backoff_multiplier=2, max_backoff_ms=300)
    assert [policy.delay_s(a) for a in range(1, 5)] == [0.1, 0.2, 0.3, 0.3]


def test_retry_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="backoff"):
        RetryPolicy(backoff_ms=-1)
