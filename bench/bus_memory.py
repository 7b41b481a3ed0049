"""Micro-benchmark: messages/s through one MemoryBus subscription vs a bare asyncio.Queue.

Publishes ``--count`` envelopes (default 200,000) to one topic with one subscriber whose handler does nothing,
and waits until all are handled; the baseline moves the same envelopes through one ``asyncio.Queue`` of the same
total capacity to one consumer task that awaits the same handler. Envelopes are built before the clock starts
(the bus passes them by reference, so building them is not the bus's cost). Prints both rates and their ratio.

    .venv/bin/python bench/bus_memory.py [--count N] [--repeat R]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid

from onex.bus import MemoryBus
from onex.envelope import OnexEnvelopeV1, topic_name

TOPIC = topic_name("bench-event")
DISTINCT = 4096  # distinct envelopes, reused round-robin; every one has its own correlation id (key)


def envelopes(count: int) -> list[OnexEnvelopeV1]:
    distinct = [
        OnexEnvelopeV1(event_type="BENCH_EVENT", source_node_id="bench", correlation_id=uuid.uuid4(), payload={"i": i})
        for i in range(min(count, DISTINCT))
    ]
    return [distinct[i % len(distinct)] for i in range(count)]


async def noop(envelope: OnexEnvelopeV1) -> None:
    return None


async def run_bus(messages: list[OnexEnvelopeV1]) -> float:
    async with MemoryBus() as bus:
        await bus.subscribe([TOPIC], "bench", handler=noop)
        start = time.perf_counter()
        for envelope in messages:
            await bus.publish(TOPIC, envelope)
        await bus.join()
        elapsed = time.perf_counter() - start
        assert bus.statistics().delivered == len(messages)
    return elapsed


async def run_queue(messages: list[OnexEnvelopeV1]) -> float:
    queue: asyncio.Queue[OnexEnvelopeV1] = asyncio.Queue(maxsize=4 * 10_000)  # MemoryBus default capacity

    async def consume() -> None:
        while True:
            envelope = await queue.get()
            await noop(envelope)
            queue.task_done()

    consumer = asyncio.create_task(consume())
    start = time.perf_counter()
    for envelope in messages:
        await queue.put(envelope)
    await queue.join()
    elapsed = time.perf_counter() - start
    consumer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await consumer
    return elapsed


async def main(count: int, repeat: int) -> None:
    messages = envelopes(count)
    # Best of ``repeat``: the minimum is the least disturbed by the machine's other work.
    bus_s = min([await run_bus(messages) for _ in range(repeat)])
    queue_s = min([await run_queue(messages) for _ in range(repeat)])
    print(f"messages:        {count:,}")
    print(f"MemoryBus:       {count / bus_s:12,.0f} msg/s  ({bus_s / count * 1e6:.2f} us/msg)")
    print(f"asyncio.Queue:   {count / queue_s:12,.0f} msg/s  ({queue_s / count * 1e6:.2f} us/msg)")
    print(f"ratio bus/queue: {queue_s / bus_s:12.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.count, args.repeat))
