"""The circuit breaker (``onex.resilience``), with an injected clock instead of sleeps."""

from __future__ import annotations

import asyncio

import pytest
from onex.exceptions import CircuitOpenError
from onex.resilience import BreakerState, CircuitBreaker


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, reset_timeout_s=10.0, clock=clock)


def test_the_breaker_opens_after_threshold_consecutive_failures(breaker: CircuitBreaker) -> None:
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()

    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()


def test_a_success_resets_the_count_of_consecutive_failures(breaker: CircuitBreaker) -> None:
    for _ in range(2):
        breaker.record_failure()
    breaker.record_success()
    for _ in range(2):
        breaker.record_failure()

    assert breaker.state is BreakerState.CLOSED


def test_the_breaker_is_half_open_once_the_reset_timeout_passed(breaker: CircuitBreaker, clock: Clock) -> None:
    for _ in range(3):
        breaker.record_failure()

    clock.advance(9.999)
    assert breaker.state is BreakerState.OPEN
    clock.advance(0.001)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()


def test_a_success_while_half_open_closes_the_breaker(breaker: CircuitBreaker, clock: Clock) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.advance(10)

    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    # Closed for real: it takes a full threshold of failures to open it again.
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED


def test_a_failure_while_half_open_opens_the_breaker_for_another_reset_timeout(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.advance(10)

    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.advance(9.9)
    assert breaker.state is BreakerState.OPEN
    clock.advance(0.1)
    assert breaker.state is BreakerState.HALF_OPEN


@pytest.mark.anyio
async def test_call_raises_circuit_open_error_while_open_without_calling(breaker: CircuitBreaker, clock: Clock) -> None:
    calls = 0

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    for _ in range(3):
        with pytest.raises(ConnectionError):
            await breaker.call(failing)
    assert breaker.state is BreakerState.OPEN

    with pytest.raises(CircuitOpenError, match="3 consecutive failures"):
        await breaker.call(failing)
    assert calls == 3


@pytest.mark.anyio
async def test_call_lets_a_trial_through_when_half_open_and_its_outcome_decides(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    async def ok() -> str:
        return "sent"

    async def failing() -> str:
        raise ConnectionError("still down")

    for _ in range(3):
        with pytest.raises(ConnectionError):
            await breaker.call(failing)
    clock.advance(10)
    with pytest.raises(ConnectionError):
        await breaker.call(failing)  # the trial fails: open again
    assert breaker.state is BreakerState.OPEN

    clock.advance(10)
    assert await breaker.call(ok) == "sent"  # the trial succeeds: closed
    assert breaker.state is BreakerState.CLOSED


@pytest.mark.anyio
async def test_only_the_errors_named_failures_count_against_the_dependency(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    async def refused() -> None:
        raise ValueError("a row the dependency refuses: it answered")

    async def down() -> None:
        raise ConnectionError("down")

    for _ in range(5):  # more than the threshold of 3
        with pytest.raises(ValueError, match="refuses"):
            await breaker.call(refused, failures=(ConnectionError,))
    assert breaker.state is BreakerState.CLOSED

    # An answer also resets the count: two outages, an answer, two more outages, still closed.
    for fn in (down, down, refused, down, down):
        with pytest.raises((ConnectionError, ValueError)):
            await breaker.call(fn, failures=(ConnectionError,))
    assert breaker.state is BreakerState.CLOSED
    with pytest.raises(ConnectionError):
        await breaker.call(down, failures=(ConnectionError,))
    assert breaker.state is BreakerState.OPEN

    clock.advance(10)  # half-open: a trial that gets an answer, even an error, closes the breaker
    with pytest.raises(ValueError, match="refuses"):
        await breaker.call(refused, failures=(ConnectionError,))
    assert breaker.state is BreakerState.CLOSED


@pytest.mark.anyio
async def test_while_half_open_only_one_trial_call_is_let_through_at_a_time(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.advance(10)
    release = asyncio.Event()
    calls: list[str] = []

    async def slow_trial() -> str:
        calls.append("trial")
        await release.wait()
        return "recovered"

    async def other() -> str:
        calls.append("other")
        return "other"

    trial = asyncio.create_task(breaker.call(slow_trial))
    await asyncio.sleep(0)  # let the trial start: it is now waiting on `release`
    assert calls == ["trial"]

    try:
        with pytest.raises(CircuitOpenError, match="trial"):
            await breaker.call(other)  # a second caller while the trial is in flight
    finally:
        release.set()

    assert await trial == "recovered"
    assert calls == ["trial"]
    assert breaker.state is BreakerState.CLOSED
    assert await breaker.call(other) == "other"  # closed: everyone goes through again
