"""Health and metrics of a process that hosts nodes: ``/healthz``, ``/readyz`` and Prometheus ``/metrics``.

Counting stays off the hot path's allocations: each node owns a ``NodeMeter`` of plain integers per event type,
updated once per handled batch (or message), and each store a ``CommitMeter`` (both in ``onex.meters``, re-exported
here); the bus counts retries and dead letters per group and event type. Nothing is pushed into
``prometheus_client`` while handling: a custom collector reads those numbers when ``/metrics`` is scraped, into a
registry of the runtime's own (the process collectors included), so two runtimes in one process (the tests) never
share a metric.

``onex run --metrics HOST:PORT`` serves the three endpoints from a small Starlette app on uvicorn of their own,
whether or not the process serves the HTTP API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from onex.meters import (
    BATCH_BUCKETS,
    DURATION_BUCKETS,
    CacheMeter,
    CommitMeter,
    DeadLetterAlert,
    Histogram,
    NodeMeter,
)

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from onex.runtime import Runtime

__all__ = [
    "BATCH_BUCKETS",
    "DURATION_BUCKETS",
    "CacheMeter",
    "CommitMeter",
    "DeadLetterAlert",
    "Histogram",
    "NodeMeter",
    "RuntimeCollector",
    "cache_families",
    "cache_text",
    "create_app",
    "readiness",
    "registry_for",
    "slo_families",
]

# How long /readyz waits for the store before it calls it unavailable.
STORE_TIMEOUT_S = 2.0


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
        dropped = CounterMetricFamily(
            "onex_events_dropped",
            "Events given up on without a dead letter (resilience dead_letter: false).",
            labels=labels,
        )
        duration = HistogramMetricFamily(
            "onex_handler_duration_seconds", "Handler calls (one per message or batch).", labels=labels
        )
        in_flight = GaugeMetricFamily("onex_in_flight_events", "Events a node's handlers hold now.", labels=["node"])
        workflows = GaugeMetricFamily("onex_in_flight_workflows", "Workflows an orchestrator runs.", labels=["node"])
        breaker = GaugeMetricFamily(
            "onex_circuit_breaker_open",
            "1 while one of a node's circuit breakers (its own, or a consumed event's) is open or half-open.",
            labels=["node"],
        )
        alert = GaugeMetricFamily(
            "onex_dead_letter_alert",
            "1 while a node dead-lettered more than ONEX_DLQ_ALERT_THRESHOLD messages in ONEX_DLQ_ALERT_WINDOW_S.",
            labels=["node"],
        )
        by_group = _bus_counts(rt)
        for node in rt.nodes:
            name = node.contract.name
            for event_type, tally in sorted(node.meter.tallies.items()):
                handled.add_metric([name, event_type], tally.handled)
                failed.add_metric([name, event_type], tally.failed)
                tally.durations.add_to(duration, [name, event_type])
            for (group, event_type), (retries, letters, drops) in sorted(by_group.items()):
                if group == node.group:
                    retried.add_metric([name, event_type], retries)
                    dead.add_metric([name, event_type], letters)
                    dropped.add_metric([name, event_type], drops)
            in_flight.add_metric([name], node.active_operations)
            alert.add_metric([name], 1 if node.dlq_alert.raised() else 0)
            running = getattr(node, "workflows", None)
            if isinstance(running, dict):
                workflows.add_metric([name], len(running))
            breakers = getattr(node, "breakers", None)  # an effect's: its own and its events' (EffectNode.breakers)
            if breakers is not None:
                breaker.add_metric([name], 0 if all(b.state == "closed" for b in breakers()) else 1)
        hashing = HistogramMetricFamily(
            "onex_blake3_hash_duration_seconds", "Reading and BLAKE3-hashing one file or content.", labels=["node"]
        )
        for node in rt.nodes:
            hash_durations = getattr(node, "hash_durations", None)
            if isinstance(hash_durations, Histogram):
                hash_durations.add_to(hashing, [node.contract.name])
        yield from (handled, failed, retried, dead, dropped, duration, in_flight, workflows, breaker, alert, hashing)
        yield from slo_families(rt)
        yield from cache_families((n.cache.name, n.cache.meter) for n in rt.nodes if n.cache is not None)
        lag = GaugeMetricFamily(
            "onex_consumer_lag", "Records not yet committed (Kafka).", labels=["group", "topic", "partition"]
        )
        for (group, topic, partition), behind in sorted(_lag(rt).items()):
            lag.add_metric([group, topic, str(partition)], behind)
        yield lag
        store = rt.store
        batch_rows = HistogramMetricFamily("onex_store_batch_rows", "Rows per committed store batch.", labels=[])
        store.commits.rows.add_to(batch_rows, [])
        commit = HistogramMetricFamily(
            "onex_store_commit_duration_seconds", "From a batch handed to the store to its commit.", labels=[]
        )
        store.commits.seconds.add_to(commit, [])
        yield from (batch_rows, commit)
        store_breaker = getattr(store, "_breaker", None)
        if store_breaker is not None:
            yield GaugeMetricFamily(
                "onex_store_circuit_breaker_open",
                "1 while the store's circuit breaker is open or half-open.",
                value=0 if store_breaker.state == "closed" else 1,
            )


def slo_families(rt: Runtime) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
    """``onex_slo_breached``, ``onex_slo_measured`` and ``onex_slo_target`` by ``node`` and ``objective`` (the
    contract key: ``execution_time.target_ms``, ...), each node's objectives evaluated now (``onex.slo``)."""
    labels = ["node", "objective"]
    breached = GaugeMetricFamily(
        "onex_slo_breached", "1 while a node breaches an objective of its performance_requirements.", labels=labels
    )
    measured = GaugeMetricFamily(
        "onex_slo_measured",
        "An objective's measure over its window, in its target's unit (ms, items/s, MB).",
        labels=labels,
    )
    target = GaugeMetricFamily("onex_slo_target", "An objective's target (performance_requirements).", labels=labels)
    for node in rt.nodes:
        for objective in node.slo.evaluate().objectives:
            at = [node.contract.name, objective.name]
            breached.add_metric(at, 1 if objective.breached else 0)
            measured.add_metric(at, objective.measured)
            target.add_metric(at, objective.target)
    return breached, measured, target


def cache_families(caches: Iterable[tuple[str, CacheMeter]]) -> tuple[CounterMetricFamily, CounterMetricFamily]:
    """``onex_cache_hits_total`` and ``onex_cache_misses_total`` by ``node`` (whose cache) and ``cache`` (the
    lookup) for ``(name, meter)`` pairs (``onex.cache.Cache.name`` and ``.meter``)."""
    labels = ["node", "cache"]
    hits = CounterMetricFamily("onex_cache_hits", "Cached lookups answered from the cache.", labels=labels)
    misses = CounterMetricFamily("onex_cache_misses", "Cached lookups that read through.", labels=labels)
    for name, meter in caches:
        for lookup, hit, missed in meter.lookups():
            hits.add_metric([name, lookup], hit)
            misses.add_metric([name, lookup], missed)
    return hits, misses


def cache_text(caches: Iterable[tuple[str, CacheMeter]]) -> str:
    """``cache_families`` in the Prometheus text format (0.0.4), for a page that writes its own (the gateway's)."""
    registry = CollectorRegistry(auto_describe=False)

    class _Caches(Collector):
        def collect(self) -> Iterator[Metric]:
            yield from cache_families(list(caches))

    registry.register(_Caches())
    return generate_latest(registry).decode()


def _bus_counts(rt: Runtime) -> dict[tuple[str, str], tuple[int, int, int]]:
    """(retried, dead-lettered, dropped) per (consumer group, event type)."""
    bus = rt.bus
    keys = set(bus.retried_by) | set(bus.dead_lettered_by) | set(bus.dropped_by)
    return {k: (bus.retried_by.get(k, 0), bus.dead_lettered_by.get(k, 0), bus.dropped_by.get(k, 0)) for k in keys}


def _lag(rt: Runtime) -> dict[tuple[str, str, int], int]:
    return dict(rt.bus.lag())


def registry_for(runtime: Runtime) -> CollectorRegistry:
    """A registry holding the runtime's metrics and this process's (CPU, memory, file descriptors, Python)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(runtime))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


async def readiness(runtime: Runtime) -> str | None:
    """None when every hosted node runs and consumes, the bus reaches its broker and the store answers; else why
    not."""
    if runtime.phase != "running":
        return runtime.phase
    for node in runtime.nodes:
        if node.lifecycle.value != "running":
            return f"{node.node_id} is {node.lifecycle.value}"
        breakers = getattr(node, "breakers", None)
        if breakers is not None and any(b.state == "open" for b in breakers()):
            return f"{node.node_id}: circuit open"
    if (unreachable := await runtime.bus.unreachable()) is not None:  # running, and only queueing what it publishes
        return f"bus unreachable: {unreachable}"
    if runtime.store.circuit_open:  # PostgreSQL's breaker, open while the server fails
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
            # Degraded is still ready: taking a node out of service would not stop what it dead-letters.
            degraded = [f"{n.node_id}: {'; '.join(why)}" for n in runtime.nodes if (why := n.degraded_reasons())]
            return PlainTextResponse(f"ready (degraded: {'; '.join(degraded)})\n" if degraded else "ready\n")
        return PlainTextResponse(f"not ready: {reason}\n", status_code=503)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    routes = [Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]
    return Starlette(routes=routes)
