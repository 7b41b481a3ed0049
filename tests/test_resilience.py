"""``onex.resilience``: the retry policy both buses apply, the contract block it comes from, and the circuit breaker;
with injected clocks and random sources instead of sleeps."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import uuid
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import anyio.lowlevel
import pytest
from onex.bus import MemoryBus
from onex.clock import ManualClock
from onex.contracts import Contract, EventSpec, Resilience, RetrySettings
from onex.envelope import OnexEnvelopeV1
from onex.exceptions import CircuitOpenError, StoreUnavailable
from onex.nodes import ComputeNode, EffectNode, Event
from onex.resilience import (
    BreakerState,
    CircuitBreaker,
    RetryPolicy,
    _Watch,
    circuit_breaker,
    held,
    holding,
    retry_policy,
)
from onex.settings import Settings
from onex.stores import open_store


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


# --- RetryPolicy: what a bus does with a failing handler -------------------------------------------------------------


async def armed(clock: ManualClock) -> None:
    """Return once the attempt's timer waits on ``clock``."""
    while clock.sleepers == 0:
        await anyio.lowlevel.checkpoint()


def test_the_pause_grows_exponentially_and_stops_at_max_backoff() -> None:
    policy = RetryPolicy(max_attempts=9, backoff_ms=100, backoff_multiplier=2, max_backoff_ms=1_000, jitter="none")
    assert [policy.delay_s(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert policy.delay_s(10_000) == 1.0  # no overflow, however many redeliveries


@pytest.mark.parametrize("draw", [0.0, 0.3, 0.999999])
def test_full_jitter_draws_each_pause_uniformly_below_the_capped_backoff(draw: float) -> None:
    policy = RetryPolicy(backoff_ms=100, max_backoff_ms=250, jitter="full", random=lambda: draw)
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.25), (4, 0.25)]:
        assert policy.ceiling_s(attempt) == ceiling
        assert policy.delay_s(attempt) == pytest.approx(draw * ceiling)
        assert 0 <= policy.delay_s(attempt) < ceiling


def test_a_policy_refuses_what_cannot_mean_anything() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter="half")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout_ms"):
        RetryPolicy(timeout_ms=0)


@pytest.mark.anyio
async def test_an_attempt_past_its_timeout_is_cancelled_as_a_timeout_error() -> None:
    clock = ManualClock()
    policy = RetryPolicy(timeout_ms=2_000, clock=clock)
    cancelled = asyncio.Event()

    async def slow(_: None) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    attempt = asyncio.ensure_future(policy.run(slow, None))
    await armed(clock)
    await clock.advance(1.999)
    assert not attempt.done()
    await clock.advance(0.001)
    with pytest.raises(TimeoutError, match="2000 ms"):
        await attempt
    assert cancelled.is_set()


@pytest.mark.anyio
async def test_an_attempt_within_its_timeout_returns_and_leaves_no_timer() -> None:
    clock = ManualClock()
    policy = RetryPolicy(timeout_ms=2_000, clock=clock)
    seen: list[int] = []

    async def quick(value: int) -> None:
        seen.append(value)

    await policy.run(quick, 7)
    assert seen == [7]
    await clock.advance(5)  # the disarmed timer fires nothing
    assert clock.sleepers == 0


@pytest.mark.anyio
async def test_waiting_on_the_store_does_not_run_the_timeout_out() -> None:
    clock = ManualClock()
    policy = RetryPolicy(timeout_ms=1_000, clock=clock)
    store_back = asyncio.Event()
    after_store = asyncio.Event()

    async def held(_: None) -> None:
        with holding():
            await store_back.wait()
        after_store.set()
        await asyncio.Event().wait()  # its own work, now: the timeout applies again

    attempt = asyncio.ensure_future(policy.run(held, None))
    await armed(clock)
    await clock.advance(3.0)  # three timeouts pass while it holds
    assert not attempt.done()
    store_back.set()
    await after_store.wait()
    await clock.advance(1.0)
    with pytest.raises(TimeoutError):
        await attempt


@pytest.mark.anyio
async def test_the_system_clock_times_an_attempt_with_a_loop_timer() -> None:
    policy = RetryPolicy(timeout_ms=1)  # SystemClock: no timer task

    async def hangs(_: None) -> None:
        await asyncio.Event().wait()

    with pytest.raises(TimeoutError):
        await policy.run(hangs, None)


async def _blocked(task: asyncio.Task[Any]) -> None:
    """Return once ``task`` waits (no timing: each checkpoint lets it run until it blocks)."""
    for _ in range(10):
        await anyio.lowlevel.checkpoint()
    assert not task.done()


@pytest.mark.anyio
async def test_handler_calls_one_after_another_share_one_loop_timer() -> None:
    # A timer armed and cancelled for every call cost 7 % of a lone stamp's event-loop CPU: one is armed a timeout.
    loop = asyncio.get_running_loop()
    armed: list[float] = []
    call_at = loop.call_at

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        armed.append(when)
        return call_at(when, callback, *args, **kwargs)

    loop.call_at = counting  # type: ignore[method-assign,assignment]
    try:
        policy = RetryPolicy(timeout_ms=60_000)

        async def calls() -> None:
            for _ in range(100):
                await policy.run(_quick, None)

        task = asyncio.ensure_future(calls())
        await task
    finally:
        del loop.call_at  # the class's again
    assert len(armed) == 1
    await anyio.lowlevel.checkpoint()  # the task's done callbacks run
    assert task not in _Watch._of  # the task ended: its timer is cancelled and its watch forgotten


async def _quick(_: None) -> None:
    return None


async def _hangs(_: None) -> None:
    await asyncio.Event().wait()


@pytest.mark.anyio
async def test_a_shorter_timeout_after_a_longer_one_is_armed_for_its_own_deadline() -> None:
    long, short = RetryPolicy(timeout_ms=60_000), RetryPolicy(timeout_ms=50)

    async def calls() -> None:
        await long.run(_quick, None)
        await short.run(_hangs, None)

    task = asyncio.ensure_future(calls())
    await _blocked(task)
    watch = _Watch._of[task]
    assert watch.attempt is not None
    assert watch.timer is not None
    assert watch.timer.when() == watch.attempt.deadline  # not the first call's, a minute later
    with pytest.raises(TimeoutError, match="50 ms"):
        await task


@pytest.mark.anyio
async def test_on_the_system_clock_a_call_holding_past_its_deadline_gets_another_timeout() -> None:
    policy = RetryPolicy(timeout_ms=60_000)
    store_back = asyncio.Event()

    async def held(_: None) -> None:
        with holding():
            await store_back.wait()
        await asyncio.Event().wait()

    task = asyncio.ensure_future(policy.run(held, None))
    await _blocked(task)
    watch = _Watch._of[task]
    attempt = watch.attempt
    assert attempt is not None
    attempt.deadline = watch.loop.time() - 1  # as if the timeout had passed: the timer's callback, called now
    watch.due()
    assert not attempt.expired
    assert watch.timer is not None
    assert attempt.deadline > watch.loop.time() + 59  # another full timeout
    store_back.set()
    await _blocked(task)
    attempt.deadline = watch.loop.time() - 1
    watch.due()  # not holding now: expired
    with pytest.raises(TimeoutError):
        await task


def test_holding_outside_a_handler_is_a_no_op() -> None:
    with holding():
        pass


# --- the breaker and the handler's timeout ------------------------------------------------------------------------


async def _hangs_on() -> None:
    await asyncio.Event().wait()


async def _answers() -> str:
    return "answer"


def _through(breaker: CircuitBreaker, **kwargs: Any) -> Callable[[None], Awaitable[None]]:
    """A handler whose dependency, called through ``breaker``, hangs."""

    async def handler(_: None) -> None:
        await breaker.call(_hangs_on, **kwargs)

    return handler


async def _timed_out(policy: RetryPolicy, handler: Callable[[None], Awaitable[None]]) -> None:
    """Run ``handler`` as one attempt of ``policy`` (on a ``ManualClock``) and let its timeout pass."""
    assert isinstance(policy.clock, ManualClock)
    assert policy.timeout_ms is not None
    attempt = asyncio.ensure_future(policy.run(handler, None))
    await armed(policy.clock)
    await policy.clock.advance(policy.timeout_ms / 1000)
    with pytest.raises(TimeoutError):
        await attempt


@pytest.mark.anyio
async def test_a_call_that_hangs_until_its_handlers_timeout_counts_against_the_breaker(breaker: CircuitBreaker) -> None:
    policy = RetryPolicy(timeout_ms=1_000, clock=ManualClock())
    for _ in range(3):  # the breaker's failure_threshold
        await _timed_out(policy, _through(breaker))
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError):
        await breaker.call(_answers)


@pytest.mark.anyio
async def test_on_the_system_clock_a_call_that_hangs_until_its_handlers_timeout_counts_too() -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    with pytest.raises(TimeoutError):
        await RetryPolicy(timeout_ms=1).run(_through(breaker), None)  # SystemClock: the loop timer's expiry
    assert breaker.state is BreakerState.OPEN


@pytest.mark.anyio
async def test_a_timeout_counts_only_where_failures_names_it(breaker: CircuitBreaker) -> None:
    policy = RetryPolicy(timeout_ms=1_000, clock=ManualClock())
    for _ in range(3):
        await _timed_out(policy, _through(breaker, failures=(ConnectionError,)))
    assert breaker.state is BreakerState.CLOSED


@pytest.mark.anyio
async def test_a_half_open_trial_that_times_out_opens_the_breaker_again(breaker: CircuitBreaker, clock: Clock) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.advance(10)
    assert breaker.state is BreakerState.HALF_OPEN

    await _timed_out(RetryPolicy(timeout_ms=1_000, clock=ManualClock()), _through(breaker))
    assert breaker.state is BreakerState.OPEN  # not another trial for the next caller at once
    with pytest.raises(CircuitOpenError, match="open after"):
        await breaker.call(_answers)
    clock.advance(10)
    assert await breaker.call(_answers) == "answer"  # the next trial, once the reset timeout passed again
    assert breaker.state is BreakerState.CLOSED


@pytest.mark.anyio
async def test_a_call_cancelled_by_a_shutdown_is_no_failure(breaker: CircuitBreaker) -> None:
    policy = RetryPolicy(timeout_ms=1_000, clock=ManualClock())
    assert isinstance(policy.clock, ManualClock)
    for _ in range(3):
        attempt = asyncio.ensure_future(policy.run(_through(breaker), None))
        await armed(policy.clock)
        attempt.cancel()  # before its timeout
        with pytest.raises(asyncio.CancelledError):
            await attempt

    async def shut_down_as_it_times_out() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # the runtime's own cancellation, arriving while the timeout's unwinds
            raise

    async def handler(_: None) -> None:
        await breaker.call(shut_down_as_it_times_out)

    for _ in range(3):
        attempt = asyncio.ensure_future(policy.run(handler, None))
        await armed(policy.clock)
        await policy.clock.advance(1.0)
        with pytest.raises(asyncio.CancelledError):  # a shutdown, not a timeout
            await attempt
    assert breaker.state is BreakerState.CLOSED


@pytest.mark.anyio
async def test_a_half_open_trial_cancelled_by_a_shutdown_gives_its_place_back(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.advance(10)
    trial = asyncio.ensure_future(breaker.call(_hangs_on))
    await _blocked(trial)
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    assert breaker.state is BreakerState.HALF_OPEN  # nothing learnt of the dependency
    assert await breaker.call(_answers) == "answer"  # the next caller is the trial
    assert breaker.state is BreakerState.CLOSED


# --- holding through a store outage --------------------------------------------------------------------------------


class NotingClock(ManualClock):
    """A ``ManualClock`` that notes how long each sleep on it is."""

    def __init__(self) -> None:
        super().__init__()
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await super().sleep(seconds)


async def _held_through(outages: int, clock: NotingClock, **kwargs: Any) -> list[float]:
    """The pauses of ``held`` through ``outages`` calls that find the store away."""
    calls = 0

    async def store_call() -> str:
        nonlocal calls
        calls += 1
        if calls <= outages:
            raise StoreUnavailable("connection refused")
        return "back"

    task = asyncio.ensure_future(held(store_call, clock, lambda: True, lambda exc: None, **kwargs))
    with anyio.fail_after(10):
        while not task.done():
            await clock.advance(2.0)  # the longest pause
    assert await task == "back"
    return clock.slept


CEILINGS = [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]  # 50 ms doubling to 2 s


@pytest.mark.anyio
@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999999])
async def test_holding_through_a_store_outage_pauses_with_equal_jitter(draw: float) -> None:
    pauses = await _held_through(len(CEILINGS), NotingClock(), draw=lambda: draw)
    assert pauses == pytest.approx([ceiling / 2 + draw * ceiling / 2 for ceiling in CEILINGS])


@pytest.mark.anyio
async def test_the_pauses_of_a_hold_are_not_those_of_another_process_seeded_alike() -> None:
    # Every replica meets an outage at once; random.seed() (Hypothesis, a library) must not put their pauses in step.
    random.seed(7)
    one = await _held_through(4, NotingClock())
    random.seed(7)
    other = await _held_through(4, NotingClock())
    assert one != other
    assert all(ceiling / 2 <= pause < ceiling for pause, ceiling in zip(one + other, CEILINGS[:4] * 2, strict=True))


def _send_a_pause(conn: Connection) -> None:
    conn.send(RetryPolicy(jitter="full").delay_s(1))
    conn.close()


def test_a_forked_process_draws_pauses_of_its_own() -> None:
    # A replica forked from another would otherwise draw its parent's pauses, one for one.
    context = multiprocessing.get_context("fork")
    ours, theirs = context.Pipe()
    child = context.Process(target=_send_a_pause, args=(theirs,))
    child.start()
    try:
        theirs.close()
        assert ours.recv() != RetryPolicy(jitter="full").delay_s(1)
    finally:
        child.join()
        ours.close()


# --- the contract's resilience block -> the policy -------------------------------------------------------------------

BLOCK = {
    "timeout_ms": 500,
    "retry": {"max_attempts": 4, "backoff_ms": 20, "max_backoff_ms": 80, "jitter": "none"},
    "circuit_breaker": {"failure_threshold": 2, "reset_timeout_ms": 1_000},
    "dead_letter": True,
}


def test_every_field_of_the_block_reaches_the_policy() -> None:
    clock = ManualClock()
    policy = retry_policy(Resilience.model_validate(BLOCK), clock)
    assert (policy.timeout_ms, policy.max_attempts, policy.backoff_ms, policy.max_backoff_ms) == (500, 4, 20, 80)
    assert (policy.jitter, policy.dead_letter, policy.clock) == ("none", True, clock)
    assert [policy.delay_s(n) for n in (1, 2, 3, 4)] == [0.02, 0.04, 0.08, 0.08]
    assert retry_policy(Resilience(), clock).jitter == "full"  # the default: AWS-style full jitter


def test_a_consumed_events_block_overrides_only_the_keys_it_sets() -> None:
    base = Resilience.model_validate(BLOCK)
    override = Resilience.model_validate({"retry": {"max_attempts": 1}, "dead_letter": False})
    merged = override.over(base)
    assert merged.retry == RetrySettings(max_attempts=1, backoff_ms=20, max_backoff_ms=80, jitter="none")
    assert (merged.timeout_ms, merged.dead_letter, merged.circuit_breaker) == (500, False, base.circuit_breaker)


def test_a_nodes_policy_carries_each_consumed_events_own_policy() -> None:
    clock = ManualClock()
    base = Resilience.model_validate(BLOCK)
    consumes = [
        EventSpec(event_name="PLAIN"),
        EventSpec.model_validate({"event_name": "FRAGILE", "resilience": {"timeout_ms": 50, "dead_letter": False}}),
        EventSpec.model_validate(
            {"event_name": "GUARDED", "resilience": {"circuit_breaker": {"failure_threshold": 9}}}
        ),
    ]
    policy = retry_policy(base, clock, base.events_over(consumes))
    assert policy.for_event("PLAIN") is policy
    fragile = policy.for_event("FRAGILE")
    assert (fragile.timeout_ms, fragile.dead_letter, fragile.max_attempts, fragile.clock) == (50, False, 4, clock)
    # Circuit breakers: only an event whose block sets circuit_breaker gets one of its own.
    [(name, guarded)] = base.events_over(consumes, "circuit_breaker").items()
    breaker = circuit_breaker(guarded.circuit_breaker, clock.monotonic)
    assert (name, breaker.failure_threshold, breaker.reset_timeout_s) == ("GUARDED", 9, 1.0)


def test_a_node_builds_its_policy_and_breakers_once_from_its_contract(tmp_path: Path) -> None:
    contract = Contract.model_validate(
        {
            "contract_version": "2.0.0",
            "name": "fetcher",
            "version": "1.0.0",
            "node_type": "EFFECT",
            "source": tmp_path / "fetcher.yaml",
            "resilience": BLOCK,
            "subcontracts": {
                "event_type": {
                    "version": "1.0.0",
                    "consumes": [
                        {"event_name": "FETCH", "handler": "fetch"},
                        {
                            "event_name": "FETCH_SLOWLY",
                            "handler": "fetch",
                            "resilience": {"timeout_ms": 60_000, "circuit_breaker": {"reset_timeout_ms": 9_000}},
                        },
                    ],
                }
            },
        }
    )
    clock = ManualClock()
    settings = Settings.load(environ={}, root=str(tmp_path))
    node = EffectNode(
        contract, bus=MemoryBus(), store=open_store(f"sqlite:///{tmp_path}/onex.db"), settings=settings, clock=clock
    )

    assert node.retry_policy.for_event("FETCH").timeout_ms == 500
    slow = node.retry_policy.for_event("FETCH_SLOWLY")
    assert (slow.timeout_ms, slow.max_attempts, slow.clock) == (60_000, 4, clock)
    assert node.breaker_for("FETCH") is node.breaker
    assert node.breaker_for("FETCH_SLOWLY").reset_timeout_s == 9.0
    assert node.breaker_for("FETCH_SLOWLY").failure_threshold == 2  # inherited from the contract's block


class NodeHeld(ComputeNode):
    """Handles PING after a store call that finds the store away ``outage`` times."""

    def __init__(self, *args: Any, outage: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outage = outage
        self.calls = 0
        self.handled: list[uuid.UUID] = []

    async def handle_ping(self, event: Event) -> None:
        async def store_call() -> None:
            self.calls += 1
            if self.calls <= self.outage:
                raise StoreUnavailable("connection refused")

        await self.hold_store(store_call)
        self.handled.append(event.envelope.event_id)


@pytest.mark.anyio
async def test_a_handler_held_by_a_store_outage_outlasts_its_timeout_without_a_failed_attempt(tmp_path: Path) -> None:
    contract = Contract.model_validate(
        {
            "contract_version": "2.0.0",
            "name": "held",
            "version": "1.0.0",
            "node_type": "COMPUTE",
            "source": tmp_path / "held.yaml",
            # One attempt of 100 ms: a timeout counted as a failure would dead-letter the message at once.
            "resilience": {"timeout_ms": 100, "retry": {"max_attempts": 1}},
            "subcontracts": {
                "event_type": {
                    "version": "1.0.0",
                    "consumes": [{"event_name": "PING", "handler": "handle_ping", "external": True}],
                }
            },
        }
    )
    clock = ManualClock()
    settings = Settings.load(environ={}, root=str(tmp_path), heartbeat_interval_s=0)
    async with MemoryBus() as bus:
        store = open_store(f"sqlite:///{tmp_path}/onex.db")
        node = NodeHeld(contract, bus=bus, store=store, settings=settings, clock=clock, outage=4)
        await node.start()
        try:
            sent = OnexEnvelopeV1(event_type="PING", source_node_id="test", payload={})
            await bus.publish(node.topic("PING"), sent)
            with anyio.fail_after(10):
                while not node.handled:
                    if clock.sleepers:
                        await clock.advance(0.05)  # the hold's pauses: 50, 100, 200, 400 ms, past the timeout
                    await anyio.lowlevel.checkpoint()
            assert clock.monotonic() > 0.1 * 3
            assert node.handled == [sent.event_id]
            assert node.calls == 5
            statistics = bus.statistics()
            assert (statistics.retried, statistics.dead_lettered, statistics.dropped) == (0, 0, 0)
        finally:
            await node.stop()
