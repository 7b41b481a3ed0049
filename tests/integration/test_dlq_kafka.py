"""``onex dlq list|show|replay`` on Kafka (the tansu broker) with PostgreSQL recording the replays, through the real
CLI in a subprocess.

A consumer group refuses every envelope the first time it sees it (``PayloadError``: dead-lettered at once) and
takes it the second time; a record that is not JSON is dead-lettered by the bus itself. Replayed, each original must
be on its topic again exactly once (read back from the log), the envelope handled by the consumer again, and the
replays recorded so that ``list`` shows them and a second ``--all`` replays nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from onex import dlq
from onex._kafka import KafkaBus
from onex.dlq import list_dead_letters
from onex.envelope import UNDECODABLE, OnexEnvelopeV1, dead_letter, dlq_topic
from onex.exceptions import PayloadError
from onex.settings import Settings
from onex.stores import open_store

from tests.fixtures.kafka import TEST_CONSUMER_OPTIONS

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.anyio]

ROOT = Path(__file__).resolve().parents[2]
ONEX = Path(sys.executable).with_name("onex")
KEY = b"one-partition"
RAW = b"{this is not JSON"


async def onex(*args: str, cwd: Path, code: int = 0) -> Any:
    """``onex ARGS -o json`` in a subprocess (stdout a pipe), its JSON answer; fails the test on another exit code."""
    command = [str(ONEX)] if ONEX.exists() else [sys.executable, "-m", "onex.cli"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ONEX_")}

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, "--root", str(ROOT), *args, "-o", "json"],
            cwd=cwd,
            env=environ,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    result = await anyio.to_thread.run_sync(run)
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr  # an uncaught exception exits 1 too
    return json.loads(result.stdout)


@dataclass
class Picky:
    """A consumer group that refuses each envelope the first time, and what it and the dead-letter topics saw."""

    handled: list[uuid.UUID] = field(default_factory=list)
    letters: list[OnexEnvelopeV1] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)

    async def handle(self, envelope: OnexEnvelopeV1) -> None:
        first = envelope.event_id not in self.handled
        self.handled.append(envelope.event_id)
        self.changed.set()
        if first:
            raise PayloadError(str(envelope.event_id), envelope.event_type, "refused the first time")

    async def letter(self, envelope: OnexEnvelopeV1) -> None:
        self.letters.append(envelope)
        self.changed.set()

    async def until(self, condition: Callable[[], bool], seconds: float = 20.0) -> None:
        with anyio.fail_after(seconds):
            while not condition():
                self.changed = anyio.Event()
                await self.changed.wait()


async def read_topic(bus: KafkaBus, topic: str) -> list[Any]:
    """Every record of ``topic`` (created by ``bus``) as it is now, without a consumer group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bus.bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(bus.partitions)]
        consumer.assign(partitions)
        end = await consumer.end_offsets(partitions)
        for tp, offset in (await consumer.beginning_offsets(partitions)).items():
            consumer.seek(tp, offset)
        records: list[Any] = []
        left = {tp for tp in partitions if end[tp] > 0}
        with anyio.fail_after(20):
            while left:
                batch = await consumer.getmany(*left, timeout_ms=500)
                for found in batch.values():
                    records += found
                left = {tp for tp in left if await consumer.position(tp) < end[tp]}
        return records
    finally:
        await consumer.stop()


@dataclass
class Scenario:
    bootstrap: str
    topic: str  # a raw record and an envelope are dead-lettered here
    other: str  # one envelope is dead-lettered here
    flags: list[str]
    picky: Picky
    bus: KafkaBus


@pytest.fixture
async def scenario(kafka_bootstrap: str, postgres_dsn: str) -> AsyncIterator[Scenario]:
    async with open_store(postgres_dsn) as store:
        await store.upgrade()
    env = f"dlq{uuid.uuid4().hex[:8]}"
    topic, other = f"{env}.test.onex.cmd.picky.v1", f"{env}.test.onex.cmd.other.v1"
    picky = Picky()
    async with KafkaBus(kafka_bootstrap, consumer_options=TEST_CONSUMER_OPTIONS) as bus:
        await bus.ensure_topics([topic, other])
        await bus.subscribe([topic, other], f"{env}.picky", handler=picky.handle)
        await bus.subscribe([dlq_topic(topic), dlq_topic(other)], f"{env}.watch", handler=picky.letter)
        flags = ["--bus", f"kafka://{kafka_bootstrap}", "--store", postgres_dsn]
        yield Scenario(kafka_bootstrap, topic, other, flags, picky, bus)


def envelope() -> OnexEnvelopeV1:
    return OnexEnvelopeV1(
        event_type="PICKY_THING", source_node_id="test-dlq", partition_key=KEY.decode(), payload={"n": 1}
    )


async def test_list_show_and_replay_on_kafka_record_the_replay_and_deliver_the_original_once(
    scenario: Scenario, tmp_path: Path
) -> None:
    s, picky = scenario, scenario.picky
    producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(s.topic, value=RAW, key=KEY)
    finally:
        await producer.stop()
    refused = envelope()
    await s.bus.publish(s.topic, refused)
    await s.bus.flush()
    await picky.until(lambda: len(picky.letters) == 2)

    page = await onex("dlq", "list", "--topic", s.topic, *s.flags, cwd=tmp_path)
    letters = page["items"]
    assert (page["total"], page["limit"], page["offset"]) == (2, 100, 0)
    by_type = {r["event_type"]: r for r in letters}
    assert set(by_type) == {UNDECODABLE, "PICKY_THING"}
    assert len(letters) == 2
    raw, env = by_type[UNDECODABLE], by_type["PICKY_THING"]
    assert raw["original_event_id"] is None
    assert raw["topic"] == dlq_topic(s.topic)
    assert env["original_event_id"] == str(refused.event_id)
    assert env["error_type"] == "PayloadError"
    assert all(r["replays"] == 0 and r["replayed_at"] is None for r in letters)
    # --topic takes the .dlq name too; without it, every .dlq topic is read.
    assert (await onex("dlq", "list", "--topic", dlq_topic(s.topic), *s.flags, cwd=tmp_path))["items"] == letters
    everywhere = (await onex("dlq", "list", "--limit", "100000", *s.flags, cwd=tmp_path))["items"]
    assert {r["event_id"] for r in letters} <= {r["event_id"] for r in everywhere}

    [shown] = await onex("dlq", "show", raw["event_id"], *s.flags, cwd=tmp_path)
    assert shown["letter"]["payload"]["original_raw"] == RAW.decode()
    [shown] = await onex("dlq", "show", str(refused.event_id), *s.flags, cwd=tmp_path)
    assert OnexEnvelopeV1.model_validate(shown["letter"]["payload"]["original"]) == refused

    replayed = await onex("dlq", "replay", raw["event_id"], str(refused.event_id), *s.flags, cwd=tmp_path)
    assert sorted((r["event_id"], r["status"]) for r in replayed) == sorted(
        [(raw["event_id"], "replayed"), (env["event_id"], "replayed")]
    )

    # On the topic again, each exactly once more (replay returned once the broker had them).
    records = await read_topic(s.bus, s.topic)
    assert sum(r.value == RAW for r in records) == 2
    assert [r.key for r in records if r.value == RAW] == [KEY, KEY]
    assert sum(r.value == refused.to_json() for r in records) == 2
    # The consumer took the envelope the second time; the bus dead-lettered the raw record again.
    await picky.until(lambda: picky.handled.count(refused.event_id) == 2 and len(picky.letters) == 3)
    assert picky.handled.count(refused.event_id) == 2

    listed_after = await onex("dlq", "list", "--topic", s.topic, *s.flags, cwd=tmp_path)
    after = {r["event_id"]: r for r in listed_after["items"]}
    assert len(after) == 3
    assert after[raw["event_id"]]["replays"] == 1
    assert after[raw["event_id"]]["replayed_at"]
    assert after[env["event_id"]]["replays"] == 1
    [new] = [r for r in after.values() if r["event_id"] not in (raw["event_id"], env["event_id"])]
    assert new["event_type"] == UNDECODABLE
    assert new["replays"] == 0

    # Named again: skipped, not replayed.
    again = await onex("dlq", "replay", env["event_id"], *s.flags, cwd=tmp_path)
    assert [r["status"] for r in again] == ["skipped"]


async def test_replay_all_twice_replays_nothing_the_second_time(scenario: Scenario, tmp_path: Path) -> None:
    s, picky = scenario, scenario.picky
    refused = envelope()
    await s.bus.publish(s.other, refused)
    await s.bus.flush()
    await picky.until(lambda: len(picky.letters) == 1)

    first = await onex("dlq", "replay", "--all", "--topic", s.other, *s.flags, cwd=tmp_path)
    assert [(r["original_event_id"], r["status"]) for r in first] == [(str(refused.event_id), "replayed")]
    await picky.until(lambda: picky.handled.count(refused.event_id) == 2)

    assert await onex("dlq", "replay", "--all", "--topic", s.other, *s.flags, cwd=tmp_path) == []
    [letter] = (await onex("dlq", "list", "--topic", s.other, *s.flags, cwd=tmp_path))["items"]
    assert letter["replays"] == 1
    records = await read_topic(s.bus, s.other)
    assert sum(r.value == refused.to_json() for r in records) == 2


async def test_a_replay_the_producer_refuses_fails_alone_and_the_others_are_recorded(
    scenario: Scenario, tmp_path: Path
) -> None:
    """An original that ``send()`` refuses (here larger than the producer's ``max_request_size``, 1 MiB; a topic
    without metadata, on a broker that does not create topics, is refused the same way) fails on its own: the
    command names it and exits 1, without a traceback, and the replays that went out are recorded, so the next
    ``--all`` takes only the failed one again."""
    s, picky = scenario, scenario.picky
    large, small = envelope(), envelope()
    large = large.model_copy(update={"payload": {"pad": "x" * (1024 * 1024 + 1)}})
    producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap, acks="all", max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:  # the refused one first: the one after it still goes out
        letter = dead_letter(large, topic=s.other, error="refused", attempts=1)
        await producer.send_and_wait(dlq_topic(s.other), letter.to_json(), key=KEY)
    finally:
        await producer.stop()
    await s.bus.publish(s.other, small)
    await s.bus.flush()
    await picky.until(lambda: len(picky.letters) == 2)

    first = await onex("dlq", "replay", "--all", "--topic", s.other, *s.flags, cwd=tmp_path, code=1)
    by_original = {r["original_event_id"]: r for r in first}
    assert (by_original[str(small.event_id)]["status"], by_original[str(large.event_id)]["status"]) == (
        "replayed",
        "failed",
    )
    assert by_original[str(large.event_id)]["detail"].startswith(f"not delivered to {s.other}: ")
    assert "MessageSizeTooLargeError" in by_original[str(large.event_id)]["detail"]
    await picky.until(lambda: picky.handled.count(small.event_id) == 2)  # taken the second time: no new letter

    listed = (await onex("dlq", "list", "--topic", s.other, *s.flags, cwd=tmp_path))["items"]
    assert sorted((r["original_event_id"], r["replays"]) for r in listed) == sorted(
        [(str(small.event_id), 1), (str(large.event_id), 0)]
    )
    again = await onex("dlq", "replay", "--all", "--topic", s.other, *s.flags, cwd=tmp_path, code=1)
    assert [(r["original_event_id"], r["status"]) for r in again] == [(str(large.event_id), "failed")]


async def test_listing_counts_every_letter_of_a_record_batch_in_its_progress(
    kafka_bootstrap: str, postgres_dsn: str
) -> None:
    """The progress total is every letter on the topic: tansu gives a partition's end (ListOffsets) as its last record
    batch's first offset plus one, which counted three letters sent in one batch as one."""
    topic = f"dlq{uuid.uuid4().hex[:8]}.test.onex.cmd.batched.v1"
    letters = [dead_letter(envelope(), topic=topic, error="refused", attempts=1) for _ in range(3)]
    async with KafkaBus(kafka_bootstrap) as bus:
        await bus.ensure_topics([dlq_topic(topic)])
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=100)
    await producer.start()
    try:
        sent = [await producer.send(dlq_topic(topic), letter.to_json(), key=KEY) for letter in letters]
        offsets = [(await future).offset for future in sent]
    finally:
        await producer.stop()
    assert offsets == list(range(offsets[0], offsets[0] + 3))  # one record batch
    settings = Settings.load(environ={}, root=str(ROOT), bus=f"kafka://{kafka_bootstrap}", store=postgres_dsn)
    seen: list[tuple[int, int]] = []

    found = await list_dead_letters(settings, topic=topic, progress=lambda done, total: seen.append((done, total)))

    assert sorted(r.event_id for r in found.rows) == sorted(letter.event_id for letter in letters)
    assert (seen[0], seen[-1]) == ((0, 3), (3, 3))


async def test_replays_acknowledged_in_time_are_recorded_when_another_is_not_acknowledged(
    scenario: Scenario, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker acknowledges one replay and not the other (its acknowledgement lost, injected into the producer):
    the acknowledged one is recorded, so the next ``--all`` does not send it again, and the other fails, saying it
    may have gone out. Before, the timeout was the whole call's: an error, and nothing recorded."""
    s, picky = scenario, scenario.picky
    acknowledged, lost = envelope(), envelope()
    for one in (acknowledged, lost):
        await s.bus.publish(s.other, one)
    await s.bus.flush()
    await picky.until(lambda: len(picky.letters) == 2)
    send = AIOKafkaProducer.send

    async def losing(self: AIOKafkaProducer, topic: str, value: bytes, *args: Any, **kwargs: Any) -> Any:
        if value == lost.to_json():
            return asyncio.get_running_loop().create_future()  # never acknowledged
        return await send(self, topic, value, *args, **kwargs)

    monkeypatch.setattr(AIOKafkaProducer, "send", losing)
    monkeypatch.setattr(dlq, "PUBLISH_TIMEOUT_S", 1.0)
    settings = Settings.load(environ={}, root=str(ROOT), bus=f"kafka://{s.bootstrap}", store=postgres_dsn)

    results = await dlq.replay(settings, replay_all=True, topic=s.other)

    by_original = {r.original_event_id: r for r in results}
    assert (by_original[acknowledged.event_id].status, by_original[lost.event_id].status) == ("replayed", "failed")
    assert by_original[acknowledged.event_id].recorded
    assert "did not acknowledge it within 1 s (it may have gone out)" in by_original[lost.event_id].detail
    monkeypatch.undo()
    again = await dlq.replay(settings, replay_all=True, topic=s.other)
    assert [(r.original_event_id, r.status) for r in again] == [(lost.event_id, "replayed")]
