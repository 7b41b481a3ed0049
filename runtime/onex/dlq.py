"""Dead letters for operators: list them, show one, replay them (``onex dlq``; the CLI is a thin layer over this).

Where dead letters are
    On Kafka, in the ``<topic>.dlq`` topics. They are read without a consumer group: nothing is committed, no group
    appears on the broker, and reading never moves a deployment's offsets. Every partition of every ``*.dlq`` topic
    (or of the one ``--topic`` names) is assigned, read from its beginning up to the end offset taken when the read
    started, and the read gives up after ``READ_TIMEOUT_S`` (a ``BusError`` naming what was left) rather than wait
    for records that will not come. Replays are recorded in the store; the store's records are joined to what the
    topics hold when the store answers, and the listing says so when it does not. A record in a ``.dlq`` topic that
    is no dead-letter envelope is skipped (and logged).

    On the memory bus dead letters die with the process, so the runtime keeps each one in the store's
    ``dead_letters`` table (``Runtime.start``); the same commands read them from there.

Replay
    Republishes the original to its original topic, and records it (``replayed_at``, ``replays + 1``) in the store,
    after the broker acknowledged it: a crash in between replays it again on the next ``--all`` (at least once, as
    everything on the bus). An envelope goes out as the bus publishes one (same bytes, key and CloudEvents headers,
    plus an ``onex-replay-of`` header naming the dead letter); a record that was no envelope goes out as the raw bytes
    the dead letter holds (UTF-8 or base64 decoded) with its original key, and is refused when the dead letter holds
    only its first 256 KiB (``original_raw_truncated``). Like any record on the topic, a replay reaches *every*
    consumer group of the topic, not only the one that gave up; so an original given up on by several groups (several
    dead letters of one event id) is republished once per replay and every one of its letters is recorded replayed.

    On the memory bus a replay runs the nodes: every node of the project is hosted in this process on the store
    (as ``onex stamp`` does), the originals are published, and the runtime stops once the bus is idle. A replayed
    message that fails again is dead-lettered again: a new dead letter, not replayed yet.

    A dead letter already replayed is skipped unless ``force``; ``--all`` replays every letter not replayed yet.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import ValidationError

from onex.envelope import DEAD_LETTER_EVENT, OnexEnvelopeV1, dlq_topic
from onex.exceptions import BusError, OnexError, StoreError, error_text
from onex.settings import Settings, redact_url
from onex.store import DeadLetterRow, Store, dead_letter_row
from onex.stores import store_for

__all__ = [
    "Letters",
    "Replay",
    "dead_letter_row",
    "dlq_name",
    "find_dead_letters",
    "list_dead_letters",
    "replay",
]

CONNECT_TIMEOUT_S: Final = 15.0  # to reach the broker and learn its topics
READ_TIMEOUT_S: Final = 120.0  # to read every dead-letter partition up to the end it had when the read started
PUBLISH_TIMEOUT_S: Final = 60.0  # for the broker to acknowledge the replays

Progress = Callable[[int, int], None]
"""Told ``(records read, records to read)`` while the dead-letter topics are read."""

_log = logging.getLogger("onex.dlq")


@dataclass(frozen=True, slots=True)
class Letters:
    """Dead letters found (``rows``) of ``total`` that matched, and a ``note`` when replays could not be joined."""

    rows: list[DeadLetterRow]
    total: int
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Replay:
    """What became of one id given to ``replay`` (or of one letter of ``--all``).

    ``status``: ``replayed``, ``skipped`` (replayed before, no ``force``), ``not-found`` or ``failed``;
    ``recorded`` is False when the replay went out but the store could not record it.
    """

    requested: str
    status: str
    event_id: uuid.UUID | None = None  # the dead letter's
    original_event_id: uuid.UUID | None = None
    original_topic: str | None = None
    detail: str = ""
    recorded: bool = True

    @property
    def ok(self) -> bool:
        return self.status in ("replayed", "skipped") and self.recorded


def dlq_name(topic: str) -> str:
    """The dead-letter topic ``topic`` names: itself when it ends in ``.dlq``, else its dead-letter topic."""
    return topic if topic.endswith(".dlq") else dlq_topic(topic)


# --- reading -----------------------------------------------------------------------------------------------------


async def list_dead_letters(
    settings: Settings, *, topic: str | None = None, limit: int = 100, progress: Progress | None = None
) -> Letters:
    """The newest dead letters first (at most ``limit``), of ``topic`` only when given (its name or its ``.dlq``)."""
    dlq = dlq_name(topic) if topic else None
    if _on_kafka(settings):
        rows, note = await _with_replays(settings, await _read_kafka(settings, dlq, progress))
        return Letters(_newest_first(rows)[:limit], len(rows), note)
    async with _store(settings) as store:
        return Letters(await store.list_dead_letters(topic=dlq, limit=limit), await store.count_dead_letters(topic=dlq))


async def find_dead_letters(settings: Settings, event_id: uuid.UUID, *, progress: Progress | None = None) -> Letters:
    """The dead letters whose own id or whose original's id is ``event_id``, oldest first."""
    if _on_kafka(settings):
        found = [
            r for r in await _read_kafka(settings, None, progress) if event_id in (r.event_id, r.original_event_id)
        ]
        rows, note = await _with_replays(settings, found)
        return Letters(rows, len(rows), note)
    async with _store(settings) as store:
        rows = await store.find_dead_letters(event_id)
    return Letters(rows, len(rows))


def _on_kafka(settings: Settings) -> bool:
    return settings.bus.startswith("kafka:")


def _newest_first(rows: list[DeadLetterRow]) -> list[DeadLetterRow]:
    # Read order is oldest first within a partition: reversed, a stable sort keeps the later of equal times first.
    never = datetime.min.replace(tzinfo=UTC)
    return sorted(reversed(rows), key=lambda r: r.dead_lettered_at or never, reverse=True)


@contextlib.asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[Store]:
    """The settings' store, open; an embedded SQLite database is migrated, as ``onex run`` does, but never created:
    a mistyped path is an error (``no SQLite database at PATH``), not an empty database left there."""
    async with store_for(settings, create=False) as store:
        if settings.store_url().startswith("sqlite:"):
            await store.upgrade()
        yield store


async def _with_replays(settings: Settings, rows: list[DeadLetterRow]) -> tuple[list[DeadLetterRow], str | None]:
    """``rows`` with the replays the store recorded; unchanged, with a note saying why, when it cannot tell."""
    try:
        async with _store(settings) as store:
            return await _join(store, rows), None
    except (StoreError, OSError) as exc:
        return rows, f"replays unknown: the store {redact_url(settings.store_url())} did not answer ({exc})"


async def _join(store: Store, rows: list[DeadLetterRow]) -> list[DeadLetterRow]:
    if not rows:
        return rows
    stored = {r.event_id: r for r in await store.get_dead_letters([r.event_id for r in rows])}
    joined: list[DeadLetterRow] = []
    for row in rows:
        known = stored.get(row.event_id)
        if known is not None:
            row = dataclasses.replace(
                row, replayed_at=known.replayed_at, replays=known.replays, group_name=row.group_name or known.group_name
            )
        joined.append(row)
    return joined


async def _read_kafka(settings: Settings, dlq: str | None, progress: Progress | None) -> list[DeadLetterRow]:
    """Every dead letter in the ``.dlq`` topics (or in ``dlq``), in partition order, without a consumer group."""
    from aiokafka.errors import KafkaError

    from onex._kafka import KafkaBus
    from onex.poke import high_watermarks

    bus = KafkaBus.from_url(settings.bus)
    partitions = await bus.topic_partitions(timeout_s=CONNECT_TIMEOUT_S)
    wanted = [tp for tp in partitions if tp.topic.endswith(".dlq") and (dlq is None or tp.topic == dlq)]
    if not wanted:
        return []
    consumer = bus.reader()
    rows: list[DeadLetterRow] = []
    left: dict[Any, int] = {}
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            await consumer.start()
            consumer.assign(wanted)
            begin = await consumer.beginning_offsets(wanted)
            end = await high_watermarks(consumer, wanted)  # tansu's end_offsets would make the total too low
            left = {tp: end[tp] for tp in wanted if end[tp] > begin[tp]}
            total, read = sum(end[tp] - begin[tp] for tp in left), 0
            consumer.pause(*(tp for tp in wanted if tp not in left))
            for tp in left:
                consumer.seek(tp, begin[tp])
            if progress is not None:
                progress(0, total)
            while left:
                batch = await consumer.getmany(*left, timeout_ms=1_000)
                for records in batch.values():
                    for record in records:
                        read += 1
                        row = _parse(record)
                        if row is not None:
                            rows.append(row)
                for tp in list(left):
                    if await consumer.position(tp) >= left[tp]:
                        del left[tp]
                        consumer.pause(tp)
                if progress is not None:
                    progress(read, max(total, read))
    except TimeoutError as exc:
        unread = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in left) or "the topics' metadata"
        raise BusError(f"reading the dead letters from Kafka at {bus.bootstrap} timed out; not read: {unread}") from exc
    except KafkaError as exc:
        raise BusError(f"cannot read the dead letters from Kafka at {bus.bootstrap}: {exc}") from exc
    finally:
        await consumer.stop()
    return rows


def _parse(record: Any) -> DeadLetterRow | None:
    try:
        letter = OnexEnvelopeV1.from_json(record.value or b"")
    except ValidationError:
        letter = None
    if letter is None or letter.event_type != DEAD_LETTER_EVENT:
        _log.warning("%s[%d]@%d is no dead letter; skipped", record.topic, record.partition, record.offset)
        return None
    return dead_letter_row(letter, topic=record.topic)


# --- replaying ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Outgoing:
    """One record to republish, and the dead letters it replays."""

    topic: str
    value: bytes
    key: bytes | None
    envelope: OnexEnvelopeV1 | None  # None for a record that was no envelope
    letters: list[DeadLetterRow]


async def replay(
    settings: Settings,
    event_ids: Sequence[uuid.UUID] = (),
    *,
    replay_all: bool = False,
    topic: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> list[Replay]:
    """Replay the dead letters named by ``event_ids`` (their own ids or their originals'), or with ``replay_all`` every
    one not replayed yet; only those of ``topic`` when given. One ``Replay`` per id given or letter taken."""
    if replay_all == bool(event_ids):
        raise ValueError("name dead letters or ask for all of them, not both and not neither")
    dlq = dlq_name(topic) if topic else None
    async with _store(settings) as store:
        if _on_kafka(settings):
            known = await _join(store, await _read_kafka(settings, dlq, progress))
        else:
            known = await store.list_dead_letters(topic=dlq, limit=await store.count_dead_letters(topic=dlq))
            known.reverse()  # oldest first, as read from Kafka
        results, chosen = _choose(known, event_ids, replay_all=replay_all, force=force, dlq=dlq)
        outgoing, refused = _outgoing(chosen, kafka=_on_kafka(settings))
        results += refused
        if not outgoing:
            return results
        if _on_kafka(settings):
            sent, failed = await _publish_kafka(settings, outgoing)
        else:
            sent, failed = await _publish_memory(settings, store, outgoing), []
        results += failed
        letters = [letter for out in sent for letter in out.letters]
        recorded, why = True, ""
        try:
            await store.record_replay(letters, datetime.now(UTC))
        except StoreError as exc:
            recorded, why = False, f"replayed, but the store could not record it: {exc}"
            _log.error("replays of %s not recorded: %s", ", ".join(str(r.event_id) for r in letters), exc)
        for out in sent:
            first = out.letters[0]
            for letter in out.letters:
                detail = why or (f"the same original as {first.event_id}" if letter is not first else "")
                results.append(_result(letter, "replayed", detail, recorded=recorded))
    return results


def _result(letter: DeadLetterRow, status: str, detail: str = "", *, recorded: bool = True) -> Replay:
    return Replay(
        requested=str(letter.event_id),
        status=status,
        event_id=letter.event_id,
        original_event_id=letter.original_event_id,
        original_topic=letter.original_topic,
        detail=detail,
        recorded=recorded,
    )


def _choose(
    known: list[DeadLetterRow], event_ids: Sequence[uuid.UUID], *, replay_all: bool, force: bool, dlq: str | None
) -> tuple[list[Replay], list[DeadLetterRow]]:
    """(the results decided already: not found, skipped; the letters to replay, oldest first, each once)."""
    if replay_all:
        return [], [r for r in known if r.replays == 0]
    results: list[Replay] = []
    chosen: dict[uuid.UUID, DeadLetterRow] = {}
    for wanted in dict.fromkeys(event_ids):
        matches = [r for r in known if wanted in (r.event_id, r.original_event_id)]
        if not matches:
            where = f" in {dlq}" if dlq else ""
            results.append(Replay(str(wanted), "not-found", detail=f"no dead letter{where} has this id or original id"))
            continue
        for letter in matches:
            if letter.event_id in chosen:
                continue
            if letter.replays and not force:
                at = letter.replayed_at.isoformat(timespec="seconds") if letter.replayed_at else "?"
                detail = f"replayed {letter.replays} time(s) already, last at {at}; --force replays it again"
                results.append(dataclasses.replace(_result(letter, "skipped", detail), requested=str(wanted)))
            else:
                chosen[letter.event_id] = letter
    return results, list(chosen.values())


def _outgoing(letters: list[DeadLetterRow], *, kafka: bool) -> tuple[list[_Outgoing], list[Replay]]:
    """The records to republish (one per original, however many letters it has), and the letters refused."""
    by_original: dict[uuid.UUID, _Outgoing] = {}
    refused: list[Replay] = []
    for letter in letters:
        try:
            out = _record_of(letter, kafka=kafka)
        except ValueError as exc:
            refused.append(_result(letter, "failed", str(exc)))
            continue
        key = letter.original_event_id or letter.event_id
        if key in by_original:
            by_original[key].letters.append(letter)
        else:
            by_original[key] = out
    return list(by_original.values()), refused


def _record_of(letter: DeadLetterRow, *, kafka: bool) -> _Outgoing:
    """What to republish for ``letter``; ValueError saying why it cannot be replayed."""
    payload = letter.letter.get("payload") or {}
    topic = letter.original_topic
    if not topic:
        raise ValueError("the dead letter names no original topic")
    original = payload.get("original")
    if isinstance(original, dict):
        try:
            envelope = OnexEnvelopeV1.model_validate(original)
        except ValidationError as exc:
            raise ValueError(f"the original it holds is no valid envelope: {exc.errors()[0]['msg']}") from None
        return _Outgoing(topic, envelope.to_json(), envelope.key.encode(), envelope, [letter])
    if "original_raw" not in payload:
        raise ValueError("the dead letter holds no original (neither an envelope nor a raw record)")
    if not kafka:
        raise ValueError("a record that was no envelope can only be replayed to Kafka")
    if payload.get("original_raw_truncated"):
        raise ValueError("the dead letter holds only the first 256 KiB of the record (original_raw_truncated)")
    raw = str(payload["original_raw"])
    if payload.get("original_raw_encoding") == "base64":
        try:
            value = base64.b64decode(raw, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"original_raw is not valid base64: {exc}") from None
    else:
        value = raw.encode()
    key = payload.get("original_key")
    return _Outgoing(topic, value, None if key is None else str(key).encode(), None, [letter])


async def _publish_kafka(settings: Settings, outgoing: list[_Outgoing]) -> tuple[list[_Outgoing], list[Replay]]:
    """Send every record and wait for the broker's acknowledgements: (the ones it has, failures)."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    from onex._kafka import KafkaBus

    bus = KafkaBus.from_url(settings.bus)
    producer = AIOKafkaProducer(**bus.producer_kwargs())
    sent: list[_Outgoing] = []
    failed: list[Replay] = []
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await producer.start()
    except (KafkaError, TimeoutError, OSError) as exc:
        await producer.stop()
        raise BusError(f"cannot connect to Kafka at {bus.bootstrap}: {error_text(exc)}") from exc
    try:
        enqueued: list[tuple[_Outgoing, asyncio.Future[Any]]] = []
        for out in outgoing:
            try:
                enqueued.append((out, await producer.send(out.topic, out.value, out.key, headers=_headers(out))))
            except KafkaError as exc:  # this record only (too large, no metadata for its topic in time): the rest go on
                failed += _undelivered(out, exc)
        if enqueued:  # the ones acknowledged in time are recorded even when others were not
            await asyncio.wait([delivery for _, delivery in enqueued], timeout=PUBLISH_TIMEOUT_S)
    finally:
        await producer.stop()
    unacknowledged = (
        f"Kafka at {bus.bootstrap} did not acknowledge it within {PUBLISH_TIMEOUT_S:g} s (it may have gone out)"
    )
    for out, delivery in enqueued:
        if not delivery.done() or delivery.cancelled():
            failed += [_result(letter, "failed", unacknowledged) for letter in out.letters]
        elif (error := delivery.exception()) is not None:
            failed += _undelivered(out, error)
        else:
            sent.append(out)
    return sent, failed


def _undelivered(out: _Outgoing, exc: BaseException) -> list[Replay]:
    return [_result(letter, "failed", f"not delivered to {out.topic}: {error_text(exc)}") for letter in out.letters]


def _headers(out: _Outgoing) -> list[tuple[str, bytes]]:
    """The headers ``KafkaBus.publish`` gives an envelope, and ``onex-replay-of``: the dead letter replayed."""
    from onex._kafka_records import record_headers

    replay_of = ("onex-replay-of", str(out.letters[0].event_id).encode())
    return [replay_of] if out.envelope is None else [*record_headers(out.envelope), replay_of]


async def _publish_memory(settings: Settings, store: Store, outgoing: list[_Outgoing]) -> list[_Outgoing]:
    """Host every node here on ``store``, publish the originals, and stop once the bus is idle."""
    from onex.bus import MemoryBus
    from onex.runtime import Runtime

    async with Runtime(settings, store=store) as runtime:
        bus = runtime.bus
        for out in outgoing:
            if out.envelope is None:  # _record_of refuses these on the memory bus
                raise OnexError(f"dead letter {out.letters[0].event_id}: no envelope to publish")
            await bus.publish(out.topic, out.envelope)
        if isinstance(bus, MemoryBus):
            await bus.join()
    return outgoing
