"""The contract every ``EventBus`` keeps, run against each implementation (``tests/fixtures/buses.py``).

Written for a bus that may be a real broker: every test uses its own topics and groups, waits for outcomes with
a deadline instead of sleeping, and tolerates at-least-once redelivery (duplicates are compared by ``event_id``)
except where nothing should cause one. A bus's ``subscribe()`` must return only once the member receives what is
published next (for Kafka: after the group join and partition assignment): a group that starts at the latest
offset must not miss what is published right after it subscribed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import anyio
import anyio.lowlevel
import pytest
from onex.bus import EventBus, GroupStart, Handler, RetryPolicy
from onex.clock import ManualClock
from onex.envelope import DEAD_LETTER_EVENT, OnexEnvelopeV1, dlq_topic, topic_name
from onex.exceptions import PayloadError, StoreUnavailable
from onex.resilience import Jitter

from tests.fixtures.buses import BusKind, MakeBus

pytestmark = pytest.mark.anyio

TIMEOUT_S = 30.0  # generous for a broker; a memory bus finishes every test in milliseconds
FAST_RETRY = RetryPolicy(max_attempts=3, backoff_ms=1.0)


def new_topic(label: str) -> str:
    return topic_name(f"conformance-{label}", tenant=f"t{uuid.uuid4().hex[:12]}")


def new_group(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


def probe(key: str, seq: int = 0, **payload: object) -> OnexEnvelopeV1:
    return OnexEnvelopeV1(
        event_type="CONFORMANCE_PROBE", source_node_id="conformance", partition_key=key, payload={"seq": seq, **payload}
    )


async def prepare(bus: EventBus, *topics: str) -> None:
    """Create the topics and their dead-letter topics (a broker may not auto-create them)."""
    await bus.ensure_topics([t for topic in topics for t in (topic, dlq_topic(topic))])


class Inbox:
    """What handlers received, in arrival order, tagged by handler; tests wait on it with a deadline."""

    def __init__(self) -> None:
        self.received: list[tuple[str, OnexEnvelopeV1]] = []
        self.batches: list[list[OnexEnvelopeV1]] = []
        self._changed = asyncio.Event()

    def handler(self, tag: str = "") -> Handler:
        async def handle(envelope: OnexEnvelopeV1) -> None:
            self.record(tag, [envelope])

        return handle

    async def batch_handler(self, envelopes: Sequence[OnexEnvelopeV1]) -> None:
        self.batches.append(list(envelopes))
        self.record("", envelopes)

    def record(self, tag: str, envelopes: Sequence[OnexEnvelopeV1]) -> None:
        self.received.extend((tag, e) for e in envelopes)
        self._changed.set()

    def envelopes(self, tag: str | None = None) -> list[OnexEnvelopeV1]:
        return [e for t, e in self.received if tag is None or t == tag]

    def ids(self, tag: str | None = None) -> set[uuid.UUID]:
        return {e.event_id for e in self.envelopes(tag)}

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        with anyio.fail_after(TIMEOUT_S):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    async def wait_for_ids(self, ids: set[uuid.UUID]) -> None:
        await self.wait_for(lambda: ids <= self.ids())


def first_occurrences(envelopes: list[OnexEnvelopeV1]) -> list[OnexEnvelopeV1]:
    """Drop redeliveries, keeping the order in which messages were first seen."""
    seen: set[uuid.UUID] = set()
    firsts = []
    for envelope in envelopes:
        if envelope.event_id not in seen:
            seen.add(envelope.event_id)
            firsts.append(envelope)
    return firsts


async def test_a_published_envelope_reaches_the_subscriber_unchanged(bus: EventBus) -> None:
    topic = new_topic("round-trip")
    await prepare(bus, topic)
    inbox = Inbox()
    await bus.subscribe([topic], new_group("g"), handler=inbox.handler())
    sent = OnexEnvelopeV1(
        event_type="STAMP_CREATED",
        source_node_id="conformance",
        correlation_id=uuid.uuid4(),
        payload={"path": "a/b.py", "size": 3, "tags": ["x"], "nested": {"ok": True}},
        metadata={"trace": "1"},
    )

    await bus.publish(topic, sent)

    await inbox.wait_for(lambda: len(inbox.received) >= 1)
    assert inbox.envelopes()[0] == sent
    assert bus.statistics().published >= 1


async def test_every_group_receives_every_message(bus: EventBus) -> None:
    topic = new_topic("fan-out")
    await prepare(bus, topic)
    first, second = Inbox(), Inbox()
    await bus.subscribe([topic], new_group("first"), handler=first.handler())
    await bus.subscribe([topic], new_group("second"), handler=second.handler())
    sent = [probe(f"key-{i % 7}", i) for i in range(50)]

    await bus.publish_many(topic, sent)

    ids = {e.event_id for e in sent}
    await first.wait_for_ids(ids)
    await second.wait_for_ids(ids)


async def test_members_of_one_group_share_the_messages(bus: EventBus) -> None:
    topic = new_topic("share")
    await prepare(bus, topic)
    inbox = Inbox()
    group = new_group("shared")
    await bus.subscribe([topic], group, handler=inbox.handler("a"))
    await bus.subscribe([topic], group, handler=inbox.handler("b"))
    sent = [probe(f"key-{i}", i) for i in range(200)]

    await bus.publish_many(topic, sent)

    await inbox.wait_for_ids({e.event_id for e in sent})
    # Nothing fails and nobody joins or leaves while messages flow, so not even Kafka has a reason to redeliver.
    assert len(inbox.received) == len(sent)
    # 200 keys spread over the partitions, which are split between the two members.
    assert inbox.envelopes("a")
    assert inbox.envelopes("b")


async def publish_one_at_a_time(bus: EventBus, topic: str, envelopes: Sequence[OnexEnvelopeV1]) -> None:
    """Publish and flush each envelope on its own: held by the bus, each in a batch of its own (tansu answers
    "where is the end" with the last batch's first offset + 1; see the ``_kafka`` module docstring)."""
    for envelope in envelopes:
        await bus.publish(topic, envelope)
        await bus.flush()


@pytest.mark.parametrize("start", ["earliest", "latest"])
async def test_a_new_group_gets_everything_published_after_it_subscribed_whatever_its_start(
    bus: EventBus, start: GroupStart
) -> None:
    topic = new_topic(f"start-{start}")
    await prepare(bus, topic)
    inbox = Inbox()
    await bus.subscribe([topic], new_group(start), handler=inbox.handler(), start=start)
    sent = [probe(f"key-{i % 7}", i) for i in range(20)]

    await bus.publish_many(topic, sent)
    await bus.flush()

    await inbox.wait_for_ids({e.event_id for e in sent})


async def test_a_new_group_starting_at_latest_gets_nothing_published_before_it_subscribed(bus: EventBus) -> None:
    topic = new_topic("latest")
    await prepare(bus, topic)
    before = [probe("one-key", i) for i in range(3)]
    after = [probe("one-key", i) for i in range(3, 6)]
    await publish_one_at_a_time(bus, topic, before)
    inbox = Inbox()

    await bus.subscribe([topic], new_group("latest"), handler=inbox.handler(), start="latest")
    await publish_one_at_a_time(bus, topic, after)

    # One key, so one partition handled in order: had the group read anything from before, it would have come first.
    await inbox.wait_for_ids({e.event_id for e in after})
    assert [e.payload["seq"] for e in first_occurrences(inbox.envelopes())] == [3, 4, 5]


async def test_a_new_group_starting_at_earliest_gets_what_the_bus_retained_from_before_it_existed(
    bus: EventBus,
) -> None:
    topic = new_topic("earliest")
    await prepare(bus, topic)
    before = [probe("one-key", i) for i in range(3)]
    after = [probe("one-key", i) for i in range(3, 6)]
    await publish_one_at_a_time(bus, topic, before)
    inbox = Inbox()

    await bus.subscribe([topic], new_group("earliest"), handler=inbox.handler(), start="earliest")
    await publish_one_at_a_time(bus, topic, after)

    await inbox.wait_for_ids({e.event_id for e in after})
    # A broker keeps the log, so a new group reads it from the start; the memory bus keeps nothing for a group
    # before it exists, so there the oldest message a new group can get is the first one after it subscribed.
    expected = [0, 1, 2, 3, 4, 5] if bus.retains_messages else [3, 4, 5]
    assert [e.payload["seq"] for e in first_occurrences(inbox.envelopes())] == expected


async def test_start_must_be_earliest_or_latest(bus: EventBus) -> None:
    topic = new_topic("bad-start")
    await prepare(bus, topic)
    with pytest.raises(ValueError, match="start must be 'earliest' or 'latest', not 'now'"):
        await bus.subscribe([topic], new_group("g"), handler=Inbox().handler(), start="now")  # type: ignore[arg-type]


@pytest.mark.parametrize("batches", [False, True], ids=["handler", "batch_handler"])
async def test_messages_with_one_key_are_handled_in_publish_order(bus: EventBus, batches: bool) -> None:
    topic = new_topic("order")
    await prepare(bus, topic)
    inbox = Inbox()
    group = new_group("ordered")

    def yielding(tag: str) -> Handler:
        record = inbox.handler(tag)

        async def handle(envelope: OnexEnvelopeV1) -> None:
            # Give other partitions' handlers a chance to run in between, so keys interleave on arrival too.
            await anyio.lowlevel.checkpoint()
            await record(envelope)

        return handle

    async def yielding_batch(envelopes: Sequence[OnexEnvelopeV1]) -> None:
        # Small batches, which may hold several partitions' messages (the memory bus takes idle partitions in).
        await anyio.lowlevel.checkpoint()
        inbox.record("", envelopes)

    for tag in "ab":
        if batches:
            await bus.subscribe([topic], group, batch_handler=yielding_batch, max_batch=16)
        else:
            await bus.subscribe([topic], group, handler=yielding(tag))
    keys = [f"key-{k}" for k in range(37)]
    sent = [probe(keys[i % len(keys)], i // len(keys)) for i in range(1_000)]

    await bus.publish_many(topic, sent)

    await inbox.wait_for_ids({e.event_id for e in sent})
    by_key: defaultdict[str, list[int]] = defaultdict(list)
    for envelope in first_occurrences(inbox.envelopes()):
        assert envelope.partition_key is not None
        by_key[envelope.partition_key].append(envelope.payload["seq"])
    assert set(by_key) == set(keys)
    for key, seqs in by_key.items():
        assert seqs == sorted(seqs), f"{key} handled out of order"


async def test_a_failing_handler_is_retried_until_it_succeeds(bus: EventBus) -> None:
    topic = new_topic("retry")
    await prepare(bus, topic)
    attempts: Counter[uuid.UUID] = Counter()
    inbox = Inbox()
    record = inbox.handler()

    async def flaky(envelope: OnexEnvelopeV1) -> None:
        attempts[envelope.event_id] += 1
        if attempts[envelope.event_id] < 3:
            raise ConnectionError(f"attempt {attempts[envelope.event_id]} failed")
        await record(envelope)

    await bus.subscribe([topic], new_group("flaky"), handler=flaky, retry=FAST_RETRY)
    sent = probe("key")

    await bus.publish(topic, sent)

    await inbox.wait_for_ids({sent.event_id})
    assert attempts[sent.event_id] == 3
    statistics = bus.statistics()
    assert statistics.retried >= 2
    # The third attempt succeeded; dead-lettering would have come only after it failed.
    assert statistics.dead_lettered == 0


async def test_a_message_that_always_fails_is_dead_lettered_once_and_the_rest_are_handled(bus: EventBus) -> None:
    topic = new_topic("poison")
    await prepare(bus, topic)
    attempts: Counter[uuid.UUID] = Counter()
    handled, dead = Inbox(), Inbox()
    record = handled.handler()

    async def picky(envelope: OnexEnvelopeV1) -> None:
        attempts[envelope.event_id] += 1
        if envelope.payload.get("poison"):
            raise ValueError("cannot digest this one")
        await record(envelope)

    await bus.subscribe([dlq_topic(topic)], new_group("dlq-reader"), handler=dead.handler())
    await bus.subscribe([topic], new_group("picky"), handler=picky, retry=FAST_RETRY)
    poison = probe("key", 0, poison=True)
    # Same key: these queue behind the poison message, so their handling proves the consumer moved past it.
    good = [probe("key", i) for i in range(1, 4)]

    await bus.publish_many(topic, [poison, *good])

    await handled.wait_for_ids({e.event_id for e in good})
    await dead.wait_for(lambda: len(dead.received) >= 1)
    assert attempts[poison.event_id] == FAST_RETRY.max_attempts
    assert bus.statistics().dead_lettered == 1
    [letter] = first_occurrences(dead.envelopes())
    assert letter.event_type == DEAD_LETTER_EVENT
    assert letter.causation_id == poison.event_id
    assert letter.payload["original_topic"] == topic
    assert letter.payload["original"] == poison.model_dump(mode="json")
    assert OnexEnvelopeV1.model_validate(letter.payload["original"]) == poison
    assert letter.payload["error_type"] == "ValueError"
    assert letter.payload["error"] == "cannot digest this one"
    assert letter.payload["attempts"] == FAST_RETRY.max_attempts


class PauseRecorder:
    """A ``Clock`` whose ``sleep`` records how long it was asked to wait and returns at once: the pauses a bus takes
    between attempts, read without waiting them out."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    def time(self) -> float:
        return 0.0

    def monotonic(self) -> float:
        return 0.0

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        await asyncio.sleep(0)


@pytest.mark.parametrize(
    ("jitter", "draws", "pauses"),
    [
        # The capped exponential backoff: 100 ms, 200 ms, then the 300 ms cap, not 400 ms.
        ("none", [], [0.1, 0.2, 0.3, 0.3]),
        # Full jitter: each pause is the draw (in [0, 1)) times that ceiling, never more.
        ("full", [0.5, 0.25, 0.999, 0.0001], [0.05, 0.05, 0.2997, 0.00003]),
    ],
)
async def test_retries_pause_the_capped_jittered_exponential_backoff_then_dead_letter(
    bus: EventBus, jitter: Jitter, draws: list[float], pauses: list[float]
) -> None:
    topic = new_topic(f"backoff-{jitter}")
    await prepare(bus, topic)
    clock = PauseRecorder()
    source = iter(draws)
    retry = RetryPolicy(
        max_attempts=5,
        backoff_ms=100.0,
        max_backoff_ms=300.0,
        jitter=jitter,
        clock=clock,
        random=lambda: next(source),
    )
    attempts: list[int] = []
    dead = Inbox()

    async def failing(envelope: OnexEnvelopeV1) -> None:
        attempts.append(len(clock.pauses))  # how many pauses were taken before this attempt
        raise ConnectionError(f"attempt {len(attempts)} failed")

    await bus.subscribe([dlq_topic(topic)], new_group("dlq-reader"), handler=dead.handler())
    await bus.subscribe([topic], new_group("failing"), handler=failing, retry=retry)
    sent = probe("key")

    await bus.publish(topic, sent)

    await dead.wait_for(lambda: len(dead.received) >= 1)
    assert attempts == [0, 1, 2, 3, 4]  # one pause before every attempt but the first
    assert clock.pauses == pytest.approx(pauses)
    [letter] = first_occurrences(dead.envelopes())
    assert letter.causation_id == sent.event_id
    assert letter.payload["error"] == "attempt 5 failed"
    assert letter.payload["attempts"] == retry.max_attempts


async def test_a_handler_slower_than_the_timeout_is_cancelled_and_retried(bus: EventBus) -> None:
    topic = new_topic("timeout")
    await prepare(bus, topic)
    clock = ManualClock()
    retry = RetryPolicy(max_attempts=2, backoff_ms=0.0, timeout_ms=1_000.0, clock=clock)
    started, cancelled = asyncio.Event(), asyncio.Event()
    attempts = 0
    inbox = Inbox()
    record = inbox.handler()

    async def slow_then_fast(envelope: OnexEnvelopeV1) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            started.set()
            try:
                await asyncio.Event().wait()  # never set: only the timeout ends this attempt
            except asyncio.CancelledError:
                cancelled.set()
                raise
        await record(envelope)

    await bus.subscribe([topic], new_group("slow"), handler=slow_then_fast, retry=retry)
    sent = probe("key")
    await bus.publish(topic, sent)
    with anyio.fail_after(TIMEOUT_S):
        await started.wait()
        while clock.sleepers == 0:  # the attempt's timer is armed on the clock
            await anyio.lowlevel.checkpoint()

    await clock.advance(0.999)
    assert not cancelled.is_set()  # not yet: the timeout is 1 s of the policy's clock
    await clock.advance(0.001)

    await inbox.wait_for_ids({sent.event_id})
    assert cancelled.is_set()
    assert attempts == 2
    assert bus.statistics().retried >= 1
    assert bus.statistics().dead_lettered == 0


async def test_a_handler_that_always_times_out_is_dead_lettered_with_a_timeout_error(bus: EventBus) -> None:
    topic = new_topic("timeout-dead")
    await prepare(bus, topic)
    clock = ManualClock()
    retry = RetryPolicy(max_attempts=2, backoff_ms=0.0, timeout_ms=500.0, clock=clock)
    dead = Inbox()
    attempts = 0

    async def hangs(envelope: OnexEnvelopeV1) -> None:
        nonlocal attempts
        attempts += 1
        await asyncio.Event().wait()

    await bus.subscribe([dlq_topic(topic)], new_group("dlq-reader"), handler=dead.handler())
    await bus.subscribe([topic], new_group("hangs"), handler=hangs, retry=retry)
    sent = probe("key")
    await bus.publish(topic, sent)

    with anyio.fail_after(TIMEOUT_S):
        while not dead.received:
            if clock.sleepers:
                await clock.advance(0.5)  # expires the attempt in hand
            await anyio.lowlevel.checkpoint()
    assert attempts == 2
    [letter] = first_occurrences(dead.envelopes())
    assert letter.causation_id == sent.event_id
    assert (letter.payload["error_type"], letter.payload["attempts"]) == ("TimeoutError", 2)


async def test_without_dead_letters_a_message_that_exhausts_its_attempts_is_dropped_and_counted(
    bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    topic = new_topic("drop")
    await prepare(bus, topic)
    retry = RetryPolicy(max_attempts=2, backoff_ms=0.0, dead_letter=False)
    attempts: Counter[uuid.UUID] = Counter()
    handled = Inbox()
    record = handled.handler()

    async def picky(envelope: OnexEnvelopeV1) -> None:
        attempts[envelope.event_id] += 1
        if envelope.payload.get("poison"):
            raise ValueError("cannot digest this one")
        await record(envelope)

    await bus.subscribe([topic], new_group("picky"), handler=picky, retry=retry)
    poison = probe("key", 0, poison=True)
    good = probe("key", 1)  # same key: handled only once the consumer moved past the poison

    with caplog.at_level(logging.WARNING):
        await bus.publish_many(topic, [poison, good])
        await handled.wait_for_ids({good.event_id})

    assert attempts[poison.event_id] == retry.max_attempts
    statistics = bus.statistics()
    assert (statistics.dropped, statistics.dead_lettered) == (1, 0)
    assert sum(bus.dropped_by.values()) == 1
    assert bus.dead_lettered_by == {}
    [line] = [r for r in caplog.records if getattr(r, "onex", {}).get("event") == "drop"]
    assert line.levelno == logging.WARNING
    assert str(poison.event_id) in line.getMessage()


async def test_a_store_outage_is_no_failed_attempt_and_is_never_dead_lettered(bus: EventBus) -> None:
    topic = new_topic("outage")
    await prepare(bus, topic)
    retry = RetryPolicy(max_attempts=1, backoff_ms=1.0)  # one failure would dead-letter at once
    outages = 3
    calls = 0
    inbox = Inbox()
    record = inbox.handler()

    async def needs_the_store(envelope: OnexEnvelopeV1) -> None:
        nonlocal calls
        calls += 1
        if calls <= outages:
            raise StoreUnavailable("connection refused")
        await record(envelope)

    await bus.subscribe([topic], new_group("store"), handler=needs_the_store, retry=retry)
    sent = probe("key")
    await bus.publish(topic, sent)

    await inbox.wait_for_ids({sent.event_id})
    assert calls == outages + 1
    statistics = bus.statistics()
    assert (statistics.retried, statistics.dead_lettered, statistics.dropped) == (0, 0, 0)


async def test_an_event_types_own_policy_wins_over_the_subscriptions(bus: EventBus) -> None:
    topic = new_topic("per-event")
    await prepare(bus, topic)
    retry = RetryPolicy(max_attempts=3, backoff_ms=0.0).with_events(
        {"SPECIAL": RetryPolicy(max_attempts=1, dead_letter=False)}
    )
    attempts: Counter[str] = Counter()
    dead = Inbox()

    async def failing(envelope: OnexEnvelopeV1) -> None:
        attempts[envelope.event_type] += 1
        raise ConnectionError("no")

    await bus.subscribe([dlq_topic(topic)], new_group("dlq-reader"), handler=dead.handler())
    await bus.subscribe([topic], new_group("failing"), handler=failing, retry=retry)
    special = probe("key").model_copy(update={"event_type": "SPECIAL"})
    ordinary = probe("key", 1)  # after the special one, same key: handled once that one was given up on

    await bus.publish_many(topic, [special, ordinary])

    await dead.wait_for(lambda: len(dead.received) >= 1)
    assert attempts == {"SPECIAL": 1, ordinary.event_type: 3}
    assert [letter.causation_id for letter in first_occurrences(dead.envelopes())] == [ordinary.event_id]
    assert bus.statistics().dropped == 1


async def test_a_payload_error_is_dead_lettered_at_once_from_single_and_batch_handlers(bus: EventBus) -> None:
    topic = new_topic("payload")
    await prepare(bus, topic)
    attempts: Counter[uuid.UUID] = Counter()
    handled, dead = Inbox(), Inbox()

    def check(envelopes: Sequence[OnexEnvelopeV1]) -> None:
        for envelope in envelopes:
            attempts[envelope.event_id] += 1
        for envelope in envelopes:
            if envelope.payload.get("bad"):
                raise PayloadError(str(envelope.event_id), envelope.event_type, "payload.bad: not accepted")

    async def single(envelope: OnexEnvelopeV1) -> None:
        check([envelope])
        handled.record("single", [envelope])

    async def batch(envelopes: Sequence[OnexEnvelopeV1]) -> None:
        check(envelopes)
        handled.record("batch", envelopes)

    retry = RetryPolicy(max_attempts=5, backoff_ms=1.0)
    await bus.subscribe([dlq_topic(topic)], new_group("dlq-reader"), handler=dead.handler())
    await bus.subscribe([topic], new_group("single"), handler=single, retry=retry)
    await bus.subscribe([topic], new_group("batch"), batch_handler=batch, retry=retry)
    bad = probe("key", 0, bad=True)
    good = [probe("key", i) for i in range(1, 4)]

    await bus.publish_many(topic, [bad, *good])

    await handled.wait_for(lambda: {e.event_id for e in good} <= handled.ids("single") & handled.ids("batch"))
    await dead.wait_for(lambda: len(first_occurrences(dead.envelopes())) >= 2)
    letters = first_occurrences(dead.envelopes())
    assert len(letters) == 2  # one per group
    assert all(letter.causation_id == bad.event_id for letter in letters)
    assert {letter.payload["error_type"] for letter in letters} == {"PayloadError"}
    assert {letter.payload["attempts"] for letter in letters} == {1}
    assert {letter.payload["original_topic"] for letter in letters} == {topic}
    # Not retried: once by the single handler, and by the batch handler once in its batch and once alone.
    assert attempts[bad.event_id] <= 3
    assert bus.statistics().retried == 0


class GatedBatches(Inbox):
    """A batch handler that holds its first call until ``gate`` opens, so later messages pile up behind it."""

    def __init__(self, fail_if: Callable[[OnexEnvelopeV1], bool] = lambda e: False) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.calls: list[list[OnexEnvelopeV1]] = []
        self._fail_if = fail_if

    async def batch_handler(self, envelopes: Sequence[OnexEnvelopeV1]) -> None:
        self.calls.append(list(envelopes))
        self.entered.set()
        await self.gate.wait()
        if any(self._fail_if(e) for e in envelopes):
            raise ValueError("batch contains poison")
        await super().batch_handler(envelopes)


async def test_a_batch_handler_receives_what_accumulated_as_one_batch(bus: EventBus) -> None:
    topic = new_topic("batch")
    await prepare(bus, topic)
    inbox = GatedBatches()
    await bus.subscribe([topic], new_group("batcher"), batch_handler=inbox.batch_handler, max_batch=500)
    warm_up = probe("key", 0)
    await bus.publish(topic, warm_up)
    with anyio.fail_after(TIMEOUT_S):
        await inbox.entered.wait()
    rest = [probe("key", i) for i in range(1, 101)]

    await bus.publish_many(topic, rest)
    inbox.gate.set()

    await inbox.wait_for_ids({e.event_id for e in [warm_up, *rest]})
    assert max(len(batch) for batch in inbox.batches) > 1
    assert all(len(batch) <= 500 for batch in inbox.calls)


async def test_a_poison_message_in_a_batch_is_dead_lettered_alone(bus: EventBus) -> None:
    topic = new_topic("batch-poison")
    await prepare(bus, topic)
    inbox = GatedBatches(fail_if=lambda e: bool(e.payload.get("poison")))
    dead = Inbox()
    await bus.subscribe([dlq_topic(topic)], new_group("dlq-reader"), handler=dead.handler())
    await bus.subscribe([topic], new_group("batcher"), batch_handler=inbox.batch_handler, retry=FAST_RETRY)
    warm_up = probe("key", 0)
    await bus.publish(topic, warm_up)
    with anyio.fail_after(TIMEOUT_S):
        await inbox.entered.wait()
    rest = [probe("key", i, poison=(i == 7)) for i in range(1, 21)]
    poison = rest[6]

    await bus.publish_many(topic, rest)
    inbox.gate.set()

    good = [e for e in [warm_up, *rest] if e is not poison]
    await inbox.wait_for_ids({e.event_id for e in good})
    await dead.wait_for(lambda: len(dead.received) >= 1)
    assert poison.event_id not in inbox.ids()
    # The poison arrived in a batch with others, which failed as a whole; alone it failed max_attempts times.
    assert any(len(call) > 1 and poison in call for call in inbox.calls)
    assert sum(call == [poison] for call in inbox.calls) == FAST_RETRY.max_attempts
    [letter] = first_occurrences(dead.envelopes())
    assert letter.payload["original"] == poison.model_dump(mode="json")
    assert letter.payload["attempts"] == FAST_RETRY.max_attempts
    assert bus.statistics().dead_lettered == 1


async def test_a_slow_consumer_holds_a_bounded_backlog_and_then_gets_everything(
    bus_kind: BusKind, make_bus: MakeBus
) -> None:
    buffer_size = 8
    bus = await make_bus(buffer_size=buffer_size)
    topic = new_topic("backpressure")
    await prepare(bus, topic)
    gate, entered, all_accepted = asyncio.Event(), asyncio.Event(), asyncio.Event()
    inbox = Inbox()
    record = inbox.handler()

    async def slow(envelope: OnexEnvelopeV1) -> None:
        entered.set()
        await gate.wait()
        await record(envelope)

    await bus.subscribe([topic], new_group("slow"), handler=slow, max_batch=1)
    sent = [probe("one-key", i) for i in range(100)]  # one key: one partition, one buffer
    accepted = 0

    async def publish_all() -> None:
        nonlocal accepted
        for envelope in sent:
            await bus.publish(topic, envelope)
            accepted += 1
        all_accepted.set()

    with anyio.fail_after(TIMEOUT_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(publish_all)
            await entered.wait()
            if bus_kind.publisher_backpressure:
                # Everything is now waiting for something: the handler for the gate, so the publisher for room.
                await anyio.wait_all_tasks_blocked()
                # Room for a full buffer plus what the consumer holds; nowhere near all 100.
                assert accepted <= 2 * buffer_size
            else:
                # The log holds the backlog: the publisher is not held back...
                await all_accepted.wait()
            # ...and either way the consumer's side holds only a bounded part of it in memory.
            assert bus.statistics().buffered <= 2 * buffer_size
            gate.set()
        assert accepted == len(sent)
        await inbox.wait_for_ids({e.event_id for e in sent})
    assert [e.payload["seq"] for e in first_occurrences(inbox.envelopes())] == list(range(100))


async def test_no_task_is_spawned_per_event(bus: EventBus) -> None:
    topic = new_topic("tasks")
    await prepare(bus, topic)
    gate, entered = asyncio.Event(), asyncio.Event()
    inbox = Inbox()
    record = inbox.handler()
    task_counts: list[int] = []

    async def gated(envelope: OnexEnvelopeV1) -> None:
        task_counts.append(len(asyncio.all_tasks()))
        entered.set()
        await gate.wait()
        await record(envelope)

    await bus.subscribe([topic], new_group("counted"), handler=gated)
    await bus.publish(topic, probe("warm-up"))
    with anyio.fail_after(TIMEOUT_S):
        await entered.wait()
    baseline = len(asyncio.all_tasks())
    sent = [probe(f"key-{i}", i) for i in range(1_000)]

    await bus.publish_many(topic, sent)
    while_buffered = len(asyncio.all_tasks())
    gate.set()

    await inbox.wait_for_ids({e.event_id for e in sent})
    # A bus spawning a task per event would be ~1,000 over; a broker client may start a few of its own.
    assert while_buffered - baseline <= 25
    assert max(task_counts) - baseline <= 25
    assert len(asyncio.all_tasks()) - baseline <= 25


async def test_handlers_publishing_in_a_cycle_do_not_deadlock(make_bus: MakeBus) -> None:
    # The node graph has cycles (orchestrator -> effect -> orchestrator). With small buffers, handlers that waited
    # for room in each other's full buffer would wait forever.
    bus = await make_bus(buffer_size=8)
    ping, pong = new_topic("ping"), new_topic("pong")
    await prepare(bus, ping, pong)
    finished = Inbox()
    record = finished.handler()
    hops = 6

    def bounce(to: str) -> Handler:
        async def handle(envelope: OnexEnvelopeV1) -> None:
            hop = envelope.payload["hop"]
            if hop == hops:
                await record(envelope)
                return
            nxt = probe(envelope.partition_key or "", hop=hop + 1, origin=envelope.payload["origin"])
            await bus.publish(to, nxt)

        return handle

    await bus.subscribe([ping], new_group("ping"), handler=bounce(pong))
    await bus.subscribe([pong], new_group("pong"), handler=bounce(ping))
    origins = [f"origin-{i}" for i in range(200)]

    await bus.publish_many(ping, [probe(f"key-{i % 5}", hop=0, origin=o) for i, o in enumerate(origins)])

    await finished.wait_for(lambda: {e.payload["origin"] for e in finished.envelopes()} == set(origins))
