"""Service-level objectives (``onex.slo``): a contract's ``performance_requirements`` measured on the node's clock.

The monitor is driven on a ``ManualClock`` with recorded calls; the wiring (handler wrapper -> monitor -> heartbeat,
/readyz, /metrics, log lines) runs the workshop's monitor node on the memory bus, its contract given objectives, with
a handler call that takes half a second of the manual clock.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from onex.clock import ManualClock
from onex.contracts import ContractSet, ExecutionTime, MemoryUsage, PerformanceRequirements, load_contract
from onex.envelope import OnexEnvelopeV1
from onex.exceptions import ContractError
from onex.metrics import create_app
from onex.nodes import Event, Node
from onex.slo import EXECUTION_TIME, EXECUTION_TIME_MAX, MEMORY, THROUGHPUT, SloMonitor, min_calls, rss_mb
from onex.testing import Harness
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.anyio

# As in tests/test_nodes.py: the repository's `nodes` owns the name; the workshop is imported under an alias.
importlib.import_module("nodes")

ROOT = Path(__file__).resolve().parent / "projects" / "workshop"
WINDOW_S = 10.0


def monitor(clock: ManualClock, **requirements: Any) -> SloMonitor:
    return SloMonitor(
        PerformanceRequirements(window_ms=int(WINDOW_S * 1000), **requirements), clock, node="n1-1.0.0-host-1"
    )


def objective(m: SloMonitor, name: str) -> Any:
    (found,) = [o for o in m.evaluate().objectives if o.name == name]
    return found


# --- execution time ----------------------------------------------------------------------------------------------


async def test_the_percentile_of_the_windows_calls_is_held_against_target_ms() -> None:
    clock = ManualClock()
    m = monitor(clock, execution_time=ExecutionTime(target_ms=100))
    for _ in range(19):
        m.record(0.010, 1)
    m.record(0.500, 1)  # 1 slow call in 20: the 95th percentile (the 19th shortest) is still a fast one

    fast = objective(m, EXECUTION_TIME)
    m.record(0.500, 1)
    m.record(0.500, 1)  # 3 in 22: the 21st shortest is slow
    slow = objective(m, EXECUTION_TIME)

    assert (fast.judged, fast.breached) == (True, False)
    assert 10 <= fast.measured <= 11  # rounded up to its bucket's bound, about 9 % wide
    assert (slow.breached, slow.measured) == (True, 500.0)  # never above the longest call
    assert m.evaluate().reason == "execution_time.target_ms: p95 500 ms > 100 ms"


async def test_the_percentile_is_the_one_the_contract_names() -> None:
    clock = ManualClock()
    median = monitor(clock, execution_time=ExecutionTime(target_ms=100, percentile=50))
    p95 = monitor(clock, execution_time=ExecutionTime(target_ms=100))
    for m in (median, p95):
        for seconds in [0.01] * 12 + [0.5] * 8:  # 8 slow calls in 20
            m.record(seconds, 1)

    assert objective(median, EXECUTION_TIME).breached is False
    assert objective(p95, EXECUTION_TIME).breached is True


async def test_the_percentile_is_judged_once_the_window_holds_enough_calls_to_have_one() -> None:
    clock = ManualClock()
    m = monitor(clock, execution_time=ExecutionTime(target_ms=100))
    for _ in range(19):  # the 95th percentile of 19 calls is the longest: max_ms's business, a cold start's say
        m.record(0.5, 1)
    few = objective(m, EXECUTION_TIME)
    m.record(0.5, 1)

    assert (few.judged, few.breached, few.measured) == (False, False, 500.0)
    assert objective(m, EXECUTION_TIME).breached is True
    assert (min_calls(95), min_calls(99), min_calls(50), min_calls(100), min_calls(99.9)) == (20, 100, 2, 1, 1000)


async def test_a_call_taking_exactly_the_target_meets_it() -> None:
    clock = ManualClock()
    m = monitor(clock, execution_time=ExecutionTime(target_ms=100, percentile=100))
    m.record(0.1, 1)
    at_target = objective(m, EXECUTION_TIME)
    m.record(0.1001, 1)

    assert (at_target.breached, at_target.measured) == (False, 100.0)
    assert objective(m, EXECUTION_TIME).breached is True


async def test_any_one_call_over_max_ms_breaches_the_window() -> None:
    clock = ManualClock()
    m = monitor(clock, execution_time=ExecutionTime(max_ms=1000))
    for _ in range(1000):
        m.record(0.001, 1)
    within = objective(m, EXECUTION_TIME_MAX)
    m.record(1.5, 1)

    assert (within.breached, within.measured) == (False, 1.0)
    over = objective(m, EXECUTION_TIME_MAX)
    assert (over.breached, over.measured) == (True, 1500.0)
    assert m.evaluate().reason == "execution_time.max_ms: max 1500 ms > 1000 ms"


async def test_a_breach_lasts_while_its_calls_are_in_the_window_and_ends_when_they_leave_it() -> None:
    clock = ManualClock()
    m = monitor(clock, execution_time=ExecutionTime(target_ms=100, max_ms=1000, percentile=50))
    m.record(2.0, 1)
    m.record(2.0, 1)
    await clock.advance(WINDOW_S / 2)
    m.record(0.001, 1)
    half_way = m.evaluate()
    await clock.advance(WINDOW_S / 2 + WINDOW_S / 60)  # the slow call's slot leaves the window
    after = m.evaluate()

    assert [o.breached for o in half_way.objectives] == [True, True]  # the median of 3 calls is a slow one
    assert [o.breached for o in after.objectives] == [False, False]
    assert [o.measured for o in after.objectives] == [pytest.approx(1.0, rel=0.1), pytest.approx(1.0)]
    await clock.advance(WINDOW_S)
    empty = m.evaluate()
    assert [(o.judged, o.breached, o.measured) for o in empty.objectives] == [(False, False, 0.0)] * 2


# --- throughput --------------------------------------------------------------------------------------------------


# The window slides a slot (a sixtieth) at a time, and a call counts in the slot where it ended: a rate is exact to
# within a slot's worth of calls, hence rel=0.05 below.


async def saturate(clock: ManualClock, m: SloMonitor, seconds: float, *, call_s: float, items: int) -> None:
    """Calls of ``call_s`` back to back for ``seconds``, ``items`` each: a node that always had work waiting."""
    for _ in range(round(seconds / call_s)):
        await clock.advance(call_s)
        m.record(call_s, items)


async def test_a_saturated_node_below_its_throughput_breaches() -> None:
    clock = ManualClock()
    m = monitor(clock, throughput_items_per_s=100)
    await saturate(clock, m, WINDOW_S / 2, call_s=0.5, items=10)
    half_window = objective(m, THROUGHPUT)  # not judged before a whole window was seen
    await saturate(clock, m, WINDOW_S / 2, call_s=0.5, items=10)
    slow = objective(m, THROUGHPUT)

    assert (half_window.judged, half_window.breached) == (False, False)
    assert (slow.judged, slow.breached, slow.measured) == (True, True, pytest.approx(20.0, rel=0.05))
    assert m.evaluate().reason == f"throughput_items_per_s: {slow.measured:.4g} items/s < 100 items/s"


async def test_a_saturated_node_at_its_throughput_meets_it() -> None:
    clock = ManualClock()
    m = monitor(clock, throughput_items_per_s=100)
    await saturate(clock, m, WINDOW_S, call_s=0.5, items=60)

    fast = objective(m, THROUGHPUT)
    assert (fast.judged, fast.breached, fast.measured) == (True, False, pytest.approx(120.0, rel=0.05))


async def test_a_node_without_work_waiting_is_not_judged_on_its_throughput() -> None:
    clock = ManualClock()
    m = monitor(clock, throughput_items_per_s=100)
    for _ in range(20):  # a call of 0.1 s every 0.5 s: idle 80 % of the time, it kept up with what came
        await clock.advance(0.5)
        m.record(0.1, 1)
    light = objective(m, THROUGHPUT)
    await clock.advance(WINDOW_S)
    idle = objective(m, THROUGHPUT)

    assert (light.judged, light.breached, light.measured) == (False, False, pytest.approx(2.0, rel=0.05))
    assert (idle.judged, idle.breached, idle.measured) == (False, False, 0.0)


async def test_overlapping_calls_count_their_busy_time_once() -> None:
    clock = ManualClock()
    m = monitor(clock, throughput_items_per_s=100)
    for _ in range(int(WINDOW_S)):  # two workers, each busy half of every second, at the same time
        await clock.advance(1.0)
        m.record(0.5, 1)
        m.record(0.5, 1)

    assert objective(m, THROUGHPUT).judged is False  # busy half the window, not all of it


async def test_failed_calls_take_time_but_handle_no_items() -> None:
    clock = ManualClock()
    m = monitor(clock, throughput_items_per_s=1)
    await saturate(clock, m, WINDOW_S, call_s=1.0, items=0)

    failing = objective(m, THROUGHPUT)
    assert (failing.judged, failing.breached, failing.measured) == (True, True, 0.0)


# --- memory ------------------------------------------------------------------------------------------------------


async def test_memory_is_the_processs_resident_set_against_max_mb() -> None:
    clock = ManualClock()
    tiny = monitor(clock, memory_usage=MemoryUsage(max_mb=1))
    roomy = monitor(clock, memory_usage=MemoryUsage(max_mb=1_000_000))

    over = objective(tiny, MEMORY)
    assert (over.judged, over.breached) == (True, True)
    assert 1 < over.measured < 1_000_000
    assert objective(roomy, MEMORY).breached is False
    assert rss_mb() > 1


# --- reporting ---------------------------------------------------------------------------------------------------


async def test_check_logs_a_breach_once_when_it_starts_and_once_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    m = monitor(clock, execution_time=ExecutionTime(max_ms=100))
    caplog.set_level(logging.INFO, logger="onex.slo")
    m.check()
    m.record(0.2, 1)
    m.check()
    m.check()
    await clock.advance(WINDOW_S * 2)
    m.check()
    m.check()

    lines = [(r.levelno, r.onex["event"], r.onex["objective"], r.onex["measured"]) for r in caplog.records]  # type: ignore[attr-defined]
    assert lines == [
        (logging.WARNING, "slo_breach", EXECUTION_TIME_MAX, 200.0),
        (logging.INFO, "slo_recovered", EXECUTION_TIME_MAX, 0.0),
    ]
    assert caplog.records[0].onex == {  # type: ignore[attr-defined]
        "node": "n1-1.0.0-host-1",
        "event": "slo_breach",
        "objective": EXECUTION_TIME_MAX,
        "measured": 200.0,
        "target": 100.0,
    }
    assert m.last.breached is False


async def test_a_contract_without_requirements_measures_nothing() -> None:
    clock = ManualClock()
    m = SloMonitor(PerformanceRequirements(), clock)
    m.record(100.0, 1)

    assert (m.active, m.evaluate().objectives, m.evaluate().breached) == (False, (), False)


# --- the contract --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "where", "words"),
    [
        ("memory_usage: {target_mb: 128, max_mb: 512}", "6:18", "target_mb: unknown key"),
        ("execution_time: {percentile: 99}", "6:19", "set target_ms, max_ms or both"),
        ("execution_time: {target_ms: 0}", "6:31", "target_ms: 0 is less than or equal"),
        ("throughput: 5000", "6:3", "did you mean 'throughput_items_per_s'"),
    ],
)
async def test_the_schema_rejects_requirements_that_mean_nothing_at_their_line(
    tmp_path: Path, block: str, where: str, words: str
) -> None:
    path = tmp_path / "contracts" / "computes" / "n.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(
        f"contract_version: 2.0.0\nname: n\nversion: 1.0.0\nnode_type: COMPUTE\nperformance_requirements:\n  {block}\n"
    )

    with pytest.raises(ContractError) as caught:
        load_contract(path, root=tmp_path, check_implementations=False)

    (issue,) = caught.value.issues
    assert (f"{issue.line}:{issue.column}", issue.code) == (where, "schema")
    assert words in issue.message


async def test_the_seed_shape_loads_into_typed_requirements(tmp_path: Path) -> None:
    path = tmp_path / "contracts" / "computes" / "n.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(
        "contract_version: 2.0.0\nname: n\nversion: 1.0.0\nnode_type: COMPUTE\nperformance_requirements:\n"
        "  execution_time: {target_ms: 100, max_ms: 1000}\n  memory_usage: {max_mb: 512}\n"
    )

    requirements = load_contract(path, root=tmp_path, check_implementations=False).performance_requirements

    assert requirements == PerformanceRequirements(
        execution_time=ExecutionTime(target_ms=100, max_ms=1000, percentile=95),
        memory_usage=MemoryUsage(max_mb=512),
        window_ms=60_000,
    )


# --- wired into a node -------------------------------------------------------------------------------------------


def note(text: str = "hi") -> OnexEnvelopeV1:
    return OnexEnvelopeV1(
        event_type="NOTE",
        source_node_id="tests",
        event_id=uuid.uuid4(),
        correlation_id=uuid.uuid4(),
        payload={"text": text},
    )


def slo_harness(clock: ManualClock, requirements: PerformanceRequirements) -> Harness:
    """The workshop's monitor alone, its contract given ``requirements``, heartbeating every second of ``clock``."""
    from onex.contracts import load_contracts

    contract = load_contracts(ROOT, env={}).get("monitor")
    contract = contract.model_copy(update={"performance_requirements": requirements})
    return Harness(["monitor"], root=ROOT, contracts=ContractSet(ROOT, [contract]), clock=clock, heartbeat_interval_s=1)


async def call(node: Node, clock: ManualClock, seconds: float) -> None:
    """One call through the node's real handler wrapper (what the bus calls) of a handler taking ``seconds``."""

    async def handler(event: Event) -> None:
        await clock.sleep(seconds)

    handled = asyncio.ensure_future(node._single_wrapper(handler)(note()))
    await clock.advance(seconds)
    await handled


def gauges(text: str, name: str) -> dict[str, float]:
    return {
        s.labels["objective"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and s.labels["node"] == "monitor"
    }


async def test_a_slow_handler_makes_the_heartbeat_degraded_with_the_reason_until_the_window_passes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    requirements = PerformanceRequirements(execution_time=ExecutionTime(target_ms=100), window_ms=int(WINDOW_S * 1000))
    caplog.set_level(logging.INFO, logger="onex.slo")
    async with slo_harness(clock, requirements) as h:
        node = h.runtime.node("monitor")
        app = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(h.runtime)), base_url="http://onex")

        def beats() -> list[str]:
            return [e.payload["health_status"] for e in h.of("NODE_HEARTBEAT") if e.source_node_id == node.node_id]

        await clock.advance(1.0)
        await h.settle()
        healthy = beats()[-1]

        for _ in range(18):  # the real handler through the bus: calls of 0 s
            await h.publish("NOTE", {"text": "fast"})
        await h.settle()
        await call(node, clock, 0.25)  # 1.00 -> 1.25 s of the clock
        await call(node, clock, 0.25)  # 1.25 -> 1.50 s: the 95th percentile of 20 calls is the 19th, a slow one
        await clock.advance(0.5)  # the heartbeat at 2 s
        await h.settle()
        degraded, reasons = beats()[-1], node.degraded_reasons()
        said = [e.payload["health_reason"] for e in h.of("NODE_HEARTBEAT") if e.source_node_id == node.node_id][-1]
        ready = (await app.get("/readyz")).text
        metrics = (await app.get("/metrics")).text

        for _ in range(int(WINDOW_S)):  # fast calls only, two a second (never 20 for each slow one) ...
            for _ in range(2):
                await h.publish("NOTE", {"text": "fast"})
            await h.settle()
            await clock.advance(1.0)
            await h.settle()
        later = beats()[-int(WINDOW_S) :]
        after = (await app.get("/metrics")).text
        await app.aclose()

    assert (healthy, degraded) == ("HEALTHY", "DEGRADED")
    # ... until the slow calls, which ended 1.5 s into the clock, left the window: at the heartbeat of 12 s.
    assert later == ["DEGRADED"] * (int(WINDOW_S) - 1) + ["HEALTHY"]
    assert reasons == ["execution_time.target_ms: p95 250 ms > 100 ms"]
    assert said == "execution_time.target_ms: p95 250 ms > 100 ms"  # the heartbeat carries it (onex ps shows it)
    assert ready == f"ready (degraded: {node.node_id}: execution_time.target_ms: p95 250 ms > 100 ms)\n"
    assert gauges(metrics, "onex_slo_breached") == {EXECUTION_TIME: 1.0}
    assert gauges(metrics, "onex_slo_measured") == {EXECUTION_TIME: 250.0}
    assert gauges(metrics, "onex_slo_target") == {EXECUTION_TIME: 100.0}
    assert gauges(after, "onex_slo_breached") == {EXECUTION_TIME: 0.0}
    events = [(r.onex["event"], r.onex["node"]) for r in caplog.records if r.name == "onex.slo"]  # type: ignore[attr-defined]
    assert events == [("slo_breach", node.node_id), ("slo_recovered", node.node_id)]


async def test_a_node_whose_contract_sets_no_objective_stays_healthy_however_slow() -> None:
    clock = ManualClock()
    async with slo_harness(clock, PerformanceRequirements()) as h:
        node = h.runtime.node("monitor")
        await call(node, clock, 30.0)
        await clock.advance(1.0)
        await h.settle()
        metrics = (await create_app_client(h).get("/metrics")).text

    beats = [e.payload["health_status"] for e in h.of("NODE_HEARTBEAT") if e.source_node_id == node.node_id]
    assert set(beats[:-1]) == {"HEALTHY"}
    assert gauges(metrics, "onex_slo_breached") == {}


def create_app_client(h: Harness) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(h.runtime)), base_url="http://onex")


async def test_a_saturated_node_below_its_throughput_heartbeats_degraded() -> None:
    clock = ManualClock()
    requirements = PerformanceRequirements(throughput_items_per_s=100, window_ms=int(WINDOW_S * 1000))
    async with slo_harness(clock, requirements) as h:
        node = h.runtime.node("monitor")
        for _ in range(int(WINDOW_S * 2)):  # busy the whole window: 2 items a second
            await call(node, clock, 0.5)
        await clock.advance(1.0)
        await h.settle()
        reasons = node.degraded_reasons()

    beats = [e.payload["health_status"] for e in h.of("NODE_HEARTBEAT") if e.source_node_id == node.node_id]
    assert beats[-2] == "DEGRADED"  # the last is STOPPED
    assert [r.split(":")[0] for r in reasons] == [THROUGHPUT]


async def test_a_process_over_its_memory_heartbeats_degraded() -> None:
    clock = ManualClock()
    async with slo_harness(clock, PerformanceRequirements(memory_usage=MemoryUsage(max_mb=1))) as h:
        node = h.runtime.node("monitor")
        await clock.advance(1.0)
        await h.settle()
        reasons = node.degraded_reasons()

    beats = [e.payload["health_status"] for e in h.of("NODE_HEARTBEAT") if e.source_node_id == node.node_id]
    assert beats[0] == "DEGRADED"
    assert [r.split(":")[0] for r in reasons] == [MEMORY]


async def test_a_batch_handlers_call_is_one_call_handling_every_event_of_the_batch() -> None:
    clock = ManualClock()
    requirements = PerformanceRequirements(
        execution_time=ExecutionTime(max_ms=400), throughput_items_per_s=100, window_ms=int(WINDOW_S * 1000)
    )
    async with slo_harness(clock, requirements) as h:
        node = h.runtime.node("monitor")

        async def handler(events: Any) -> None:
            await clock.sleep(0.5)

        burst = [
            OnexEnvelopeV1(
                event_type="PULSE_BURST", source_node_id="tests", event_id=uuid.uuid4(), payload={"node_id": f"n{i}"}
            )
            for i in range(3)
        ]
        for _ in range(int(WINDOW_S * 2)):  # busy the whole window: calls of 0.5 s, 3 events each
            handled = asyncio.ensure_future(node._batch_wrapper(handler)(burst))
            await clock.advance(0.5)
            await handled
        report = node.slo.evaluate()

    longest, rate = report.objectives
    assert (longest.breached, longest.measured) == (True, 500.0)  # the call's time, not a share per event
    assert (rate.judged, rate.breached, rate.measured) == (True, True, pytest.approx(6.0, rel=0.05))
