"""Poke a node graph by event name: build and publish one envelope, and read envelopes as they arrive (the logic of
``onex publish`` and ``onex tail``; the CLI is a thin layer over this).

Events are known by the names the project's contracts declare (published or consumed) and the runtime's own
(``EventCatalog``); the topic, the payload model or schema and the partition-key field come from there.

Publishing (``build`` then ``publish_kafka`` or ``poke_memory``)
    The payload is validated by the event's codec before anything is built (``PayloadError`` names the field). The
    envelope's key is the one given, else the payload's ``partition_key`` field as the contract names it, else its
    correlation id. On Kafka it goes out as a node publishes one (``KafkaBus.publish``: same bytes, key, partition
    and headers; the topic is created if missing) and ``publish_kafka`` returns once the broker acknowledged it.

    On the memory bus a separate process reaches no node, so ``poke_memory`` is a one-shot in-process poke: every
    node of the project is hosted here on the settings' store (as ``onex stamp`` does), the envelope is published,
    and once the bus is idle (or ``timeout`` passed) the envelopes that resulted from it are returned and the nodes
    stop. "Resulted" means caused by it, directly or down a chain of causation ids, or carrying its correlation id;
    dead letters included (published on ``<topic>.dlq``).

Reading (``tail``)
    Kafka only: the events' topics are read without a consumer group (partitions assigned, nothing committed, no
    group appears on the broker), from their end when the read starts or from their beginning.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import BaseModel, ValidationError

from onex.catalog import EventCatalog, Publication
from onex.contracts import ContractSet
from onex.envelope import OnexEnvelopeV1, dlq_topic, new_id
from onex.exceptions import BusError, error_text
from onex.settings import Settings

__all__ = [
    "Arrival",
    "Poke",
    "Poked",
    "build",
    "parse_payload",
    "poke_memory",
    "publish_kafka",
    "tail",
    "unknown",
]

CONNECT_TIMEOUT_S: Final = 15.0  # to reach the broker and learn (or create) its topics
PUBLISH_TIMEOUT_S: Final = 60.0  # for the broker to acknowledge the envelope
SOURCE: Final = "onex-cli"


def unknown(catalog: EventCatalog, names: Sequence[str]) -> str | None:
    """Why some of ``names`` are no declared event (with the closest names, and every name there is), or None."""
    missing = [n for n in names if n not in catalog.events]
    if not missing:
        return None
    known = sorted(catalog.events)
    close = [m for name in missing for m in difflib.get_close_matches(name.upper(), known, n=3, cutoff=0.6)]
    hint = f"; did you mean {' or '.join(dict.fromkeys(close))}?" if close else ""
    what = ", ".join(repr(n) for n in missing)
    return f"no contract declares the event {what}{hint} Known events: {', '.join(known)}"


def parse_payload(text: str) -> dict[str, Any]:
    """The JSON object ``text`` holds; ValueError (one line) when it is not JSON or not an object."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the payload is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, dict):
        raise ValueError(f"the payload must be a JSON object, not {type(data).__name__}")
    return data


@dataclass(frozen=True, slots=True)
class Poke:
    """An envelope ready to publish, and the topic it goes to."""

    envelope: OnexEnvelopeV1
    topic: str

    @property
    def key(self) -> str:
        return self.envelope.key


def build(
    catalog: EventCatalog,
    settings: Settings,
    event_name: str,
    payload: Mapping[str, Any],
    *,
    key: str | None = None,
    correlation_id: uuid.UUID | None = None,
) -> Poke:
    """The envelope of ``event_name`` carrying ``payload``, validated against the event's model or schema first.

    ``PayloadError`` names the field that does not fit; ``KeyError`` for an event the catalog does not know (check
    with ``unknown`` first). The envelope always has a correlation id (``correlation_id`` or a new one), so that
    what it causes can be traced (``onex trace``).
    """
    publication: Publication = catalog.events[event_name]
    correlation_id = correlation_id or new_id()
    envelope = OnexEnvelopeV1(
        event_type=event_name,
        source_node_id=f"{SOURCE}-{settings.instance}",
        source_service=SOURCE,
        source_instance=settings.instance,
        correlation_id=correlation_id,
        environment=settings.env,
        region=settings.region,
        payload=dict(payload),
    )
    # Validated as a consumer validates it off the wire (decode): its error names the field's path, for a model's
    # payload and an inline schema's alike.
    data = publication.codec.decode(envelope)
    if key is None and publication.partition_key is not None:
        name = publication.partition_key
        value = getattr(data, name, None) if isinstance(data, BaseModel) else data.get(name)
        key = None if value is None else str(value)
    return Poke(envelope.model_copy(update={"partition_key": key, "payload": data}), publication.topic)


async def publish_kafka(settings: Settings, poke: Poke) -> None:
    """Publish ``poke`` to the Kafka bus of ``settings`` and return once the broker acknowledged it (``BusError``
    when it cannot be reached in ``CONNECT_TIMEOUT_S`` or does not acknowledge in ``PUBLISH_TIMEOUT_S``)."""
    from aiokafka.errors import KafkaError

    from onex._kafka import KafkaBus

    bus = KafkaBus.from_url(settings.bus)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await bus.start()
    except (KafkaError, TimeoutError, OSError) as exc:
        raise BusError(f"cannot connect to Kafka at {bus.bootstrap}: {error_text(exc)}") from exc
    try:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await bus.ensure_topics([poke.topic])
        except TimeoutError as exc:
            raise BusError(f"Kafka at {bus.bootstrap} did not create or describe {poke.topic} in time") from exc
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await bus.publish(poke.topic, poke.envelope)
                await bus.flush()  # BusError when the broker refused it
        except TimeoutError as exc:
            raise BusError(
                f"Kafka at {bus.bootstrap} did not acknowledge {poke.envelope.event_id} in {PUBLISH_TIMEOUT_S:g}s"
            ) from exc
        except KafkaError as exc:
            raise BusError(f"cannot publish to {poke.topic} on Kafka at {bus.bootstrap}: {exc}") from exc
    finally:
        await bus.aclose()


@dataclass(slots=True)
class Poked:
    """What an in-process poke caused: the envelopes in the order they were seen, and whether the graph settled
    (the bus went idle) before the timeout."""

    resulted: list[OnexEnvelopeV1] = field(default_factory=list)
    settled: bool = True


def _caused_by(origin: OnexEnvelopeV1, seen: Sequence[OnexEnvelopeV1]) -> list[OnexEnvelopeV1]:
    """Those of ``seen`` that ``origin`` caused (down causation ids, whatever the order they were seen in) or that
    carry its correlation id."""
    ids = {origin.event_id}
    chosen: dict[uuid.UUID, OnexEnvelopeV1] = {}
    grew = True
    while grew:  # a handler's output may be seen before its cause on another topic: close over causation
        grew = False
        for envelope in seen:
            if envelope.event_id in chosen or envelope.event_id == origin.event_id:
                continue
            if envelope.causation_id in ids or (
                origin.correlation_id is not None and envelope.correlation_id == origin.correlation_id
            ):
                chosen[envelope.event_id] = envelope
                ids.add(envelope.event_id)
                grew = True
    return [e for e in seen if e.event_id in chosen]


async def poke_memory(
    settings: Settings,
    contracts: ContractSet,
    catalog: EventCatalog,
    poke: Poke,
    *,
    timeout: float,
) -> Poked:
    """Host every node of the project here (memory bus, the settings' store), publish ``poke``, wait until the bus is
    idle or ``timeout`` seconds passed, stop the nodes, and return what resulted (``Poked.settled`` False on the
    timeout)."""
    from onex.bus import MemoryBus
    from onex.runtime import Runtime

    seen: list[OnexEnvelopeV1] = []

    async def watch(envelope: OnexEnvelopeV1) -> None:
        seen.append(envelope)

    settled = True
    async with Runtime(settings, contracts=contracts) as runtime:
        bus = runtime.bus
        if not isinstance(bus, MemoryBus):
            raise BusError(f"poke_memory needs the memory bus, not {settings.bus!r}")
        topics = sorted({p.topic for p in catalog.events.values()} | {poke.topic})
        # A group of its own on every event topic and dead-letter topic, joined before publishing: the memory bus
        # delivers to a group only what is published after it joined.
        watcher = await bus.subscribe([*topics, *(dlq_topic(t) for t in topics)], f"{SOURCE}.watch", handler=watch)
        try:
            await bus.publish(poke.topic, poke.envelope)
            try:
                async with asyncio.timeout(timeout):
                    await bus.join()
            except TimeoutError:
                settled = False
        finally:
            await watcher.aclose()
    return Poked(_caused_by(poke.envelope, seen), settled)


@dataclass(frozen=True, slots=True)
class Arrival:
    """One record read by ``tail``: its envelope (None when the record is no envelope: ``error`` says why), where it
    was, and its key."""

    topic: str
    partition: int
    offset: int
    key: str | None
    envelope: OnexEnvelopeV1 | None
    error: str | None = None


async def tail(
    settings: Settings,
    topics: Sequence[str],
    *,
    from_beginning: bool = False,
    on_ready: Callable[[int], None] | None = None,
) -> AsyncGenerator[Arrival, None]:
    """Every record of ``topics`` on the Kafka bus of ``settings`` as it arrives, without a consumer group.

    The topics are created if missing (as a node consuming them would), so that a tail started before the first
    publish reads it. Reads from the end each partition has when the read starts, or from its beginning.
    ``on_ready`` is called with the number of partitions once they are assigned and positioned: what is published
    after that is read. Runs until the caller stops iterating (close it: ``contextlib.aclosing``).
    """
    from aiokafka.errors import KafkaError

    from onex._kafka import KafkaBus

    bus = KafkaBus.from_url(settings.bus)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S), bus:
            await bus.ensure_topics(topics)
    except (KafkaError, TimeoutError, OSError) as exc:
        raise BusError(f"cannot read the topics of Kafka at {bus.bootstrap}: {error_text(exc)}") from exc
    partitions = await bus.topic_partitions(topics, timeout_s=CONNECT_TIMEOUT_S)
    if not partitions:
        raise BusError(f"Kafka at {bus.bootstrap} has no partitions for {', '.join(topics)}")
    consumer = bus.reader()  # every partition is positioned explicitly below
    try:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await consumer.start()
                consumer.assign(partitions)
                start = await (
                    consumer.beginning_offsets(partitions) if from_beginning else high_watermarks(consumer, partitions)
                )
                for tp in partitions:
                    consumer.seek(tp, start[tp])
        except (KafkaError, TimeoutError, OSError) as exc:
            raise BusError(f"cannot read {', '.join(topics)} on Kafka at {bus.bootstrap}: {exc}") from exc
        if on_ready is not None:
            on_ready(len(partitions))
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=500)
            except KafkaError as exc:
                raise BusError(f"reading {', '.join(topics)} on Kafka at {bus.bootstrap} failed: {exc}") from exc
            for records in batch.values():
                for record in records:
                    yield _arrival(record)
    finally:
        await consumer.stop()


async def high_watermarks(consumer: Any, partitions: Sequence[Any]) -> dict[Any, int]:
    """Each of ``partitions``' end now (a fresh aiokafka consumer that has them assigned; its positions move): the high
    watermark, as a fetch from the partition's last record gives it. ``end_offsets`` (ListOffsets) alone is not
    enough: tansu answers it with its last record batch's first offset plus one, so a tail from the end printed the
    rest of that batch as new, ``onex dlq``'s progress counted it as one letter and ``bench/multiprocess.py`` as one
    record."""
    listed = await consumer.end_offsets(partitions)
    for tp in partitions:
        consumer.seek(tp, max(listed[tp] - 1, 0))
    while any(consumer.highwater(tp) is None for tp in partitions):
        await consumer.getmany(*partitions, timeout_ms=100)  # the records it returns are older: dropped
    return {tp: max(listed[tp], consumer.highwater(tp)) for tp in partitions}


def _arrival(record: Any) -> Arrival:
    key = None if record.key is None else record.key.decode(errors="replace")
    try:
        envelope = OnexEnvelopeV1.from_json(record.value or b"")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "record"
        return Arrival(
            record.topic, record.partition, record.offset, key, None, f"no envelope: {where}: {first['msg']}"
        )
    return Arrival(record.topic, record.partition, record.offset, key, envelope)
