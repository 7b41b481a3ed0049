"""Health and metrics of a process that hosts nodes: ``/healthz``, ``/readyz`` and Prometheus ``/metrics``.

Counting stays off the hot path's allocations: each node owns a ``NodeMeter`` of plain integers per event type,
updated once per handled batch (or message); the bus counts retries and dead letters per group and event type.
Nothing is pushed into ``prometheus_client`` while handling: a custom collector reads those numbers when
``/metrics`` is scraped, into a registry of the runtime's own (the process collectors included), so two runtimes in
one process (the tests) never share a metric.

``onex run --metrics HOST:PORT`` serves the three endpoints from a small Starlette app on uvicorn of their own,
whether or not the process serves the HTTP API.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from onex.runtime import Runtime

__all__ = ["DURATION_BUCKETS", "NodeMeter", "RuntimeCollector", "create_app", "readiness", "registry_for", "serving"]

# Seconds; a handled batch of the shipped nodes takes from well under a millisecond to a few hundred.
DURATION_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# How long /readyz waits for the store before it calls it unavailable.
STORE_TIMEOUT_S = 2.0


class _Tally:
    """One event type's numbers: handled, failed, and the handler-duration histogram (per call, not per event)."""

    __slots__ = ("buckets", "calls", "failed", "handled", "seconds")

    def __init__(self) -> None:
        self.handled = 0
        self.failed = 0
        self.calls = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)


class NodeMeter:
    """A node's counters per event type: ``handled(type, n, seconds)`` / ``failed(...)`` after each handler call."""

    __slots__ = ("tallies",)

    def __init__(self) -> None:
        self.tallies: dict[str, _Tally] = {}

    def _tally(self, event_type: str) -> _Tally:
        tally = self.tallies.get(event_type)
        if tally is None:
            tally = self.tallies[event_type] = _Tally()
        return tally

    def handled(self, event_type: str, count: int, seconds: float) -> None:
        tally = self._tally(event_type)
        tally.handled += count
        self._observe(tally, seconds)

    def failed(self, event_type: str, count: int, seconds: float) -> None:
        tally = self._tally(event_type)
        tally.failed += count
        self._observe(tally, seconds)

    @staticmethod
    def _observe(tally: _Tally, seconds: float) -> None:
        tally.calls += 1
        tally.seconds += seconds
        tally.buckets[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1

    def totals(self) -> tuple[int, int]:
        """(handled, failed) over every event type."""
        return sum(t.handled for t in self.tallies.values()), sum(t.failed for t in self.tallies.values())


class RuntimeCollector(Collector):
    """Reads a runtime's nodes, bus and store into Prometheus metric families when scraped."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        labels = ["node", "event_type"]
        handled = CounterMetricFamily("onex_events_handled", "Events whose handler returned.", labels=labels)
        failed = CounterMetricFamily("onex_events_failed", "Events whose handler raised (each attempt).", labels=labels)
        retried = CounterMetricFamily("onex_events_retried", "Handler attempts after a failure.", labels=labels)
        dead = CounterMetricFamily("onex_events_dead_lettered", "Events sent to a dead-letter topic.", labels=labels)
        duration = HistogramMetricFamily(
            "onex_handler_duration_seconds", "Handler calls (one per message or batch).", labels=labels
        )
        in_flight = GaugeMetricFamily("onex_in_flight_events", "Events a node's handlers hold now.", labels=["node"])
        workflows = GaugeMetricFamily("onex_in_flight_workflows", "Workflows an orchestrator runs.", labels=["node"])
        breaker = GaugeMetricFamily(
            "onex_circuit_breaker_open", "1 while a node's circuit breaker is open or half-open.", labels=["node"]
        )
        by_group = _bus_counts(rt)
        for node in rt.nodes:
            name = node.contract.name
            for event_type, tally in sorted(node.meter.tallies.items()):
                handled.add_metric([name, event_type], tally.handled)
                failed.add_metric([name, event_type], tally.failed)
                cumulative, buckets = 0, []
                for bound, count in zip((*DURATION_BUCKETS, float("inf")), tally.buckets, strict=True):
                    cumulative += count
                    buckets.append((_bound(bound), cumulative))
                duration.add_metric([name, event_type], buckets, tally.seconds)
            for (group, event_type), (retries, letters) in sorted(by_group.items()):
                if group == node.group:
                    retried.add_metric([name, event_type], retries)
                    dead.add_metric([name, event_type], letters)
            in_flight.add_metric([name], node.active_operations)
            running = getattr(node, "workflows", None)
            if isinstance(running, dict):
                workflows.add_metric([name], len(running))
            node_breaker = getattr(node, "breaker", None)
            if node_breaker is not None:
                breaker.add_metric([name], 0 if node_breaker.state == "closed" else 1)
        yield from (handled, failed, retried, dead, duration, in_flight, workflows, breaker)
        lag = GaugeMetricFamily(
            "onex_consumer_lag", "Records not yet committed (Kafka).", labels=["group", "topic", "partition"]
        )
        for (group, topic, partition), behind in sorted(_lag(rt).items()):
            lag.add_metric([group, topic, str(partition)], behind)
        yield lag
        store = rt.store
        store_breaker = getattr(store, "_breaker", None)
        if store_breaker is not None:
            yield GaugeMetricFamily(
                "onex_store_circuit_breaker_open",
                "1 while the store's circuit breaker is open or half-open.",
                value=0 if store_breaker.state == "closed" else 1,
            )


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _bus_counts(rt: Runtime) -> dict[tuple[str, str], tuple[int, int]]:
    counts: dict[tuple[str, str], tuple[int, int]] = {}
    retried = getattr(rt.bus, "retried_by", {})
    dead = getattr(rt.bus, "dead_lettered_by", {})
    for key in set(retried) | set(dead):
        counts[key] = (retried.get(key, 0), dead.get(key, 0))
    return counts


def _lag(rt: Runtime) -> dict[tuple[str, str, int], int]:
    lag = getattr(rt.bus, "lag", None)
    return dict(lag()) if callable(lag) else {}


def registry_for(runtime: Runtime) -> CollectorRegistry:
    """A registry holding the runtime's metrics and this process's (CPU, memory, file descriptors, Python)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(runtime))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


async def readiness(runtime: Runtime) -> str | None:
    """None when every hosted node runs and consumes and the store answers; else why not."""
    if runtime.phase != "running":
        return runtime.phase
    for node in runtime.nodes:
        if node.lifecycle.value != "running":
            return f"{node.node_id} is {node.lifecycle.value}"
        node_breaker = getattr(node, "breaker", None)
        if node_breaker is not None and node_breaker.state == "open":
            return f"{node.node_id}: circuit open"
    store_breaker = getattr(runtime.store, "_breaker", None)  # PostgreSQL's, open while the server fails
    if store_breaker is not None and store_breaker.state == "open":
        return "store unavailable: circuit open"
    try:
        health = await asyncio.wait_for(runtime.store.health(), STORE_TIMEOUT_S)
    except Exception as exc:
        return f"store unavailable: {exc!r}"
    if health.status != "ok":
        return f"store unavailable: {health.status} {health.detail}".rstrip()
    return None


def create_app(runtime: Runtime, registry: CollectorRegistry | None = None) -> Starlette:
    """``/healthz`` (200 while the event loop answers), ``/readyz`` (200 or 503 with the reason), ``/metrics``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    registry = registry or registry_for(runtime)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        reason = await readiness(runtime)
        if reason is None:
            return PlainTextResponse("ready\n")
        return PlainTextResponse(f"not ready: {reason}\n", status_code=503)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    routes = [Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]
    return Starlette(routes=routes)


@contextlib.asynccontextmanager
async def serving(runtime: Runtime, sock: socket.socket) -> AsyncIterator[str]:
    """Serve the endpoints on ``sock`` (``onex.http.bind``) while the block runs; yields the base URL."""
    from onex.http import base_url, quiet_server

    server = quiet_server(create_app(runtime), grace_s=2)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="onex-metrics")
    try:
        yield base_url(sock)
    finally:
        server.should_exit = True
        await task
