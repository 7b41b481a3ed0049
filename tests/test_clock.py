"""The injected clock: ``ManualClock`` fires sleeps in order when advanced and waits for what it woke."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from onex.clock import SYSTEM_CLOCK, ManualClock, utc_text
from onex.testing import Harness, SequentialIds

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]


async def test_sleeps_end_in_order_when_the_clock_passes_them_and_not_before() -> None:
    clock = ManualClock(start=1000.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("late", 3.0), ("early", 1.0), ("middle", 2.0))]
    await asyncio.sleep(0)  # let them start sleeping
    assert clock.sleepers == 3
    await clock.advance(1.5)
    assert woke == [("early", 1.0)]
    assert clock.time() == 1001.5
    await clock.advance(10)
    assert woke == [("early", 1.0), ("middle", 2.0), ("late", 3.0)]
    assert clock.monotonic() == 11.5
    await asyncio.gather(*tasks)


async def test_advance_returns_once_a_woken_loop_is_asleep_again() -> None:
    clock = ManualClock()
    ticks: list[float] = []

    async def loop() -> None:
        while True:
            await clock.sleep(1.0)
            await asyncio.sleep(0)  # work that yields to the event loop between two sleeps
            await asyncio.sleep(0)
            ticks.append(clock.monotonic())

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    await clock.advance(3.5)
    assert ticks == [1.0, 2.0, 3.0]  # every tick had done its work when advance returned
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await clock.advance(5)  # the cancelled sleep is skipped
    assert ticks == [1.0, 2.0, 3.0]


async def test_a_loop_that_ends_when_woken_does_not_hold_up_advance() -> None:
    clock = ManualClock()

    async def once() -> str:
        await clock.sleep(1)
        return "done"

    task = asyncio.create_task(once())
    await asyncio.sleep(0)
    await clock.advance(2)
    assert task.result() == "done"
    with pytest.raises(ValueError, match="does not go back"):
        await clock.advance(-1)


async def test_the_system_clock_is_the_default_and_a_harness_hands_its_clock_to_every_node() -> None:
    clock = ManualClock()
    async with Harness(["registry", "reducer"], root=ROOT, heartbeat_interval_s=5.0, clock=clock) as h:
        assert {node.clock for node in h.runtime.nodes} == {clock}
        registry = h.runtime.node("registry")
        beats = len(h.of("NODE_HEARTBEAT"))
        await clock.advance(5.0)  # every node's heartbeat falls due on the harness's clock, not the machine's
        await h.settle()
        assert len(h.of("NODE_HEARTBEAT")) == beats + 2
        assert registry.clock.now() == clock.now()
    async with Harness(["registry"], root=ROOT) as h:
        assert h.runtime.node("registry").clock is SYSTEM_CLOCK


async def test_ids_that_are_not_derived_come_from_the_injected_source() -> None:
    import random

    ids = SequentialIds(100)
    async with Harness(["registry"], root=ROOT, ids=ids) as h:
        random.seed(0)  # the default generator is private: a reseeded global generator changes nothing here
        sent = await h.publish("REGISTRY_REQUEST_INTROSPECTION", {"requested_by": "test"})
        answer = await h.wait_for(
            "NODE_INTROSPECTION", lambda e: e.causation_id is None and e.event_id != sent.event_id
        )
    numbered = {f"00000000-0000-4000-8000-{n:012x}" for n in range(100, ids.next)}
    assert str(sent.event_id) in numbered
    assert str(answer.event_id) in numbered  # the registry's own introspection, made by the node with the source


class _Moment(datetime):
    """A datetime subclass (pendulum's and others'): orjson refuses it, so utc_text must hand it to isoformat."""


@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30))
    | st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.timezones())
)
def test_utc_text_is_isoformat_in_utc_at_a_fixed_width(moment: datetime) -> None:
    """utc_text formats through orjson where it can: the text must be isoformat's, microseconds always present
    (a microsecond of 0 included, which orjson leaves out), a naive time read as UTC."""
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    expected = utc.isoformat(timespec="microseconds")
    assert utc_text(moment) == expected
    assert len(expected) == len("2026-12-04T12:33:30.352359+00:00")
    assert utc_text(_Moment.fromisoformat(expected)) == expected


def test_utc_text_of_a_whole_second_keeps_its_microseconds() -> None:
    assert utc_text(datetime(2026, 12, 4, 12, 0, 5, tzinfo=UTC)) == "2026-12-04T12:00:05.000000+00:00"
    assert utc_text(datetime(2026, 12, 4, 12, 0, 5, 7, tzinfo=UTC)) == "2026-12-04T12:00:05.000007+00:00"
