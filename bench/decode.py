"""Micro-benchmark: what reading a stamp's Kafka records costs its consumers, against parsing the bytes alone.

The records are the envelopes of one stamp of a real in-process run (every node on a memory bus, SQLite in a
temporary directory), serialised as ``KafkaBus`` sends them: STAMP_REQUESTED (read by the orchestrator), STAMP_FILE
(the stamping effect), STAMP_CREATED (the orchestrator) and WORKFLOW_COMPLETED (the reducer, the database adapter
and the client: three reads). Each is read ``--count`` times three ways:

- onex: the topic's ``typed_reader`` (what the nodes and the client subscribe with): the payload validated into its
  model inside the parse of the JSON;
- two passes: ``OnexEnvelopeV1.from_json`` then the consuming codec's validation of the payload dict (how every
  record was read before the readers);
- raw floor: ``orjson.loads`` of the same bytes (a parse into dicts, nothing validated, nothing typed).

Prints microseconds per record and per stamp, and the ratios; writes ``bench/results/decode.json``.

    .venv/bin/python bench/decode.py [--count N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from onex.bus import MemoryBus
from onex.client import StampClient
from onex.envelope import OnexEnvelopeV1, typed_reader
from onex.runtime import Runtime
from onex.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
READS = {"STAMP_REQUESTED": 1, "STAMP_FILE": 1, "STAMP_CREATED": 1, "WORKFLOW_COMPLETED": 3}  # consumers per stamp


class _Keeping(MemoryBus):
    """A memory bus that keeps the last envelope of each event type."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: dict[str, OnexEnvelopeV1] = {}

    async def publish(self, topic: str, envelope: OnexEnvelopeV1) -> None:
        self.kept[envelope.event_type] = envelope
        await super().publish(topic, envelope)

    async def publish_many(self, topic: str, envelopes: Sequence[OnexEnvelopeV1]) -> None:  # how nodes publish
        for envelope in envelopes:
            self.kept[envelope.event_type] = envelope
        await super().publish_many(topic, envelopes)


async def one_stamp(tmp: str) -> tuple[dict[str, OnexEnvelopeV1], dict[str, Any]]:
    settings = Settings.load(environ={}, root=str(ROOT), store=f"sqlite:///{tmp}/onex.db").with_(heartbeat_interval_s=0)
    async with _Keeping() as bus, Runtime(settings, bus=bus) as runtime:
        async with StampClient(bus, runtime.contracts, settings) as client:
            cid = await client.submit({"content": "item " + "x" * 1010 + "\n", "file_path": "item.txt"})
            await client.outcome(cid, timeout=60)
        await runtime.drain()
        return bus.kept, {e: client.catalog.events[e].codec for e in READS}


def per_call(function: Callable[[bytes], Any], data: bytes, count: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(count):
            function(data)
        best = min(best, time.perf_counter() - start)
    return best / count * 1e6


def run(*, count: int = 20_000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        kept, codecs = asyncio.run(one_stamp(tmp))
    rows: dict[str, dict[str, float]] = {}
    for event, codec in codecs.items():
        data = kept[event].to_json()
        assert codec.model is not None
        read = typed_reader(event, codec.model)
        assert type(read(data).payload) is codec.model  # the reader does what the nodes rely on

        def two_passes(data: bytes, codec: Any = codec) -> Any:
            return codec.decode(OnexEnvelopeV1.from_json(data))

        rows[event] = {
            "bytes": len(data),
            "onex_us": per_call(read, data, count),
            "two_passes_us": per_call(two_passes, data, count),
            "raw_us": per_call(orjson.loads, data, count),
        }
    stamp = {k: sum(rows[e][k] * n for e, n in READS.items()) for k in ("onex_us", "two_passes_us", "raw_us")}
    result = {
        "benchmark": "decode",
        "count": count,
        "records": rows,
        "per_stamp": stamp,
        "ratio_raw_over_onex": round(stamp["raw_us"] / stamp["onex_us"], 3),
        "ratio_onex_over_two_passes": round(stamp["onex_us"] / stamp["two_passes_us"], 3),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "decode.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    r = run(count=parser.parse_args().count)
    print(f"Reading a stamp's Kafka records, microseconds per record (best of 3 x {r['count']:,})")
    print(f"  {'record':22s} {'bytes':>6s} {'onex':>8s} {'two passes':>11s} {'orjson.loads':>13s}")
    for event, row in r["records"].items():
        print(
            f"  {event:22s} {row['bytes']:>6,} {row['onex_us']:>8.2f} {row['two_passes_us']:>11.2f}"
            f" {row['raw_us']:>13.2f}"
        )
    s = r["per_stamp"]
    print(f"  {'per stamp (outcome x3)':29s} {s['onex_us']:>8.2f} {s['two_passes_us']:>11.2f} {s['raw_us']:>13.2f}")
    print(f"  ratio raw / onex {r['ratio_raw_over_onex']:.3f}; onex / two passes {r['ratio_onex_over_two_passes']:.3f}")
    print("  -> bench/results/decode.json")


if __name__ == "__main__":
    main()
