"""A small HTTP/1.1 load generator: keep-alive connections over raw asyncio streams, one process, JSON out.

Used by ``bench/http.py`` from a second process, so the load it makes does not share an event loop (or a GIL) with
the server it measures. Two modes:

- ``--rate R``: open loop. Request *i* is due at ``start + i / R`` whatever happened before; a free connection takes
  it, and its latency is measured **from when it was due**, so a server that falls behind shows the queueing it
  caused instead of hiding it (no coordinated omission).
- ``--rate 0``: closed loop (saturation). Every connection sends its next request as soon as the previous response
  arrived; latency is from send to response.

Each request POSTs JSON to ``--path`` with ``--size`` bytes of distinct text (a counter in it, so no two requests
stamp the same content), or ``--body``: a JSON template whose ``{n}`` becomes the request's number (another route's
body). Requests are numbered from ``--first``: a caller that runs the generator several times against one server
(``bench/http.py``) passes the number of requests sent before, so that no run stamps the same file and content as an
earlier one (an unchanged file's stamp row is not written again). Responses are read by ``Content-Length``; anything
but 200 counts as an error. Requests due during the first ``--warmup`` seconds are sent but not measured. Prints one
JSON object: ``{requests, sent, errors, statuses, duration_s, rps, p50_ms, p95_ms, p99_ms, max_ms, mean_ms}``
(``sent``: the warm-up's requests too; ``ok``: the
200s among them, the warm-up's too; ``rps``: the measured responses a second from the window's start to the last of
them, in the open loop too, so a server that cannot keep up with ``--rate`` shows a lower rate than the target).

    python bench/loadgen.py --url http://127.0.0.1:8053 --rate 500 --duration 10 --connections 32
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank: the smallest value with at least q % of the values at or below it
    (of 1..100, p95 is 95; of 1..20, 19); 0.0 for no values. The benchmarks' one percentile (``bench/e2e.py`` and
    ``bench/metastore.py`` import it), so that their p95s mean the same."""
    if not values:
        return 0.0
    ordered = sorted(values)
    # q * n first: an exact product for whole q, so 95 * 100 / 100 is 95, not 95.00000000000001 (one rank high).
    index = math.ceil(q * len(ordered) / 100) - 1
    return ordered[max(0, min(len(ordered) - 1, index))]


class Target:
    def __init__(self, url: str, path: str, size: int, namespace: str, body: str = "", first: int = 0) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = path
        self.namespace = namespace
        self.filler = "x" * max(size - 19, 0)  # "item NNNNNNNNNNNN " + filler + "\n" = size bytes
        self.template = body
        self.first = first
        self.counter = itertools.count(first)  # less ``first``: how many requests were made, the warm-up's included

    def request(self) -> bytes:
        n = next(self.counter)
        if self.template:
            body = self.template.replace("{n}", str(n)).encode()
        else:
            extra = f',"namespace":"{self.namespace}"' if self.namespace else ""
            body = f'{{"content":"item {n:012d} {self.filler}\\n","file_path":"item-{n}.txt"{extra}}}'.encode()
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        return head + body


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def exchange(self, request: bytes) -> int:
        """Send one request, read its whole response; returns the status code."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
                break
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


async def connect(target: Target) -> Connection:
    reader, writer = await asyncio.open_connection(target.host, target.port, limit=1 << 20)
    return Connection(reader, writer)


async def run(
    url: str,
    path: str,
    *,
    rate: float,
    duration: float,
    connections: int,
    size: int,
    warmup: float,
    namespace: str,
    body: str = "",
    first: int = 0,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> dict[str, Any]:
    """One load (module docstring). ``clock`` and ``sleep`` are the time it keeps (a test's fake clock)."""
    target = Target(url, path, size, namespace, body, first)
    pool = [await connect(target) for _ in range(connections)]
    latencies: list[float] = []
    statuses: Counter[int] = Counter()  # the measured responses'
    ok = 0  # 200s of every response, the warm-up's too
    last = 0.0  # when the last measured response arrived
    start = clock()
    measure_from = start + warmup
    end = measure_from + duration

    async def closed_loop(conn: Connection) -> None:
        nonlocal ok
        while (now := clock()) < end:
            status = await conn.exchange(target.request())
            done = clock()
            ok += status == 200
            if now >= measure_from:
                latencies.append(done - now)
                statuses[status] += 1

    async def open_loop(conn: Connection, due: asyncio.Queue[float | None]) -> None:
        nonlocal last, ok
        while (at := await due.get()) is not None:
            status = await conn.exchange(target.request())
            ok += status == 200
            if at >= measure_from:
                last = clock()
                latencies.append(last - at)
                statuses[status] += 1

    try:
        if rate <= 0:
            await asyncio.gather(*(closed_loop(conn) for conn in pool))
        else:
            due: asyncio.Queue[float | None] = asyncio.Queue()
            workers = [asyncio.create_task(open_loop(conn, due)) for conn in pool]
            total = int((warmup + duration) * rate)
            for i in range(total):
                at = start + i / rate
                delay = at - clock()
                if delay > 0:
                    await sleep(delay)
                due.put_nowait(at)
            for _ in pool:
                due.put_nowait(None)
            await asyncio.gather(*workers)
    finally:
        for conn in pool:
            conn.close()
    # The rate achieved: the measured responses over the time from the window's start to the last of them. In the
    # open loop too, not the target: a server that cannot keep up answers the window's requests late, over a longer
    # time, and shows a lower rate (requests due / duration would always equal the target).
    elapsed = max((clock() if rate <= 0 else last) - measure_from, 1e-9)
    ms = [s * 1000 for s in latencies]
    count = len(ms)
    return {
        "mode": "closed" if rate <= 0 else "open",
        "target_rate": rate,
        "connections": connections,
        "requests": count,
        "sent": next(target.counter) - target.first,  # every request made, those of the warm-up included
        "ok": ok,  # 200s of every request sent, the warm-up's too: what a caller checks the rows stored against
        "errors": count - statuses.get(200, 0),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "duration_s": round(elapsed, 3),
        "rps": round(count / elapsed, 1),
        "p50_ms": round(percentile(ms, 50), 3),
        "p95_ms": round(percentile(ms, 95), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms, default=0.0), 3),
        "mean_ms": round(statistics.fmean(ms), 3) if ms else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", required=True, help="http://HOST:PORT of the server")
    parser.add_argument("--path", default="/api/v1/metadata-stamping/stamp")
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s (open loop); 0: as fast as possible")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--size", type=int, default=1024, help="bytes of content per request")
    parser.add_argument("--namespace", default="bench.http", help="'' to send none (for routes that take none)")
    parser.add_argument("--body", default="", help="JSON body template, {n} = the request's number (replaces content)")
    parser.add_argument("--first", type=int, default=0, help="the first request's number")
    args = parser.parse_args(argv)
    result = asyncio.run(
        run(args.url, args.path, rate=args.rate, duration=args.duration, connections=args.connections,
            size=args.size, warmup=args.warmup, namespace=args.namespace, body=args.body, first=args.first)
    )  # fmt: skip
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
