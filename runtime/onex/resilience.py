"""Resilience: ``RetryPolicy``, how a bus handles a message whose handler fails, and the ``CircuitBreaker``.

One layer each (README, "Design decisions"): a handler's failures are the bus's, under one ``RetryPolicy`` that
``onex.nodes`` builds once per consumed event from the contract's ``resilience:`` block; a store outage is the
store's (connection-level retries and its breaker) and then the node's, which holds its messages while the store
stays away (``holding()``). A policy is applied the same way by ``MemoryBus`` and ``KafkaBus``: each attempt runs
under ``run()`` (the timeout), ``delay_s()`` is the pause before the next one, ``dead_letter`` says what happens to
a message after the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, ClassVar, Literal, Protocol, TypeVar

from onex.clock import SYSTEM_CLOCK, Clock, SystemClock
from onex.exceptions import CircuitOpenError, StoreUnavailable

T = TypeVar("T")
A = TypeVar("A")

Jitter = Literal["full", "none"]
"""How a pause between attempts is spread: ``full`` (AWS "full jitter": uniformly between 0 and the capped
exponential delay), ``none`` (exactly the capped exponential delay)."""

# Jitter draws from a generator of its own, which ``random.seed()`` in a user's code does not make predictable
# across processes (every replica retrying in step is what jitter is for), seeded again in a forked child, which
# would otherwise draw its parent's pauses (as ``onex.envelope``'s ids are).
_JITTER_RANDOM = random.Random()
os.register_at_fork(after_in_child=lambda: _JITTER_RANDOM.seed(os.urandom(32)))


def _no_events() -> Mapping[str, RetryPolicy]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a bus handles a message whose handler fails: timeout, attempts, backoff, dead letter.

    - ``timeout_ms``: each attempt (one handler call: one message, or one batch for a batch handler) that runs
      longer is cancelled and counts as a failed attempt (``TimeoutError``). ``None``: no limit. Time the handler
      spends inside ``holding()`` (waiting on the store, which keeps its own deadlines) does not make it expire:
      when the timeout passes while it holds, it gets another ``timeout_ms``.
    - ``max_attempts``: attempts in all, the first included.
    - ``delay_s(n)``: the pause after failed attempt ``n``, ``backoff_ms * backoff_multiplier ** (n - 1)`` capped
      at ``max_backoff_ms``, then spread by ``jitter`` with ``random`` (a ``() -> float`` in [0, 1)).
    - ``dead_letter``: after the last attempt the message goes to ``<topic>.dlq``; with ``False`` it is dropped
      (acknowledged, counted in ``BusStatistics.dropped``, logged as a WARNING ``drop`` line naming the event id).
    - ``clock``: what the pauses and the timeout wait on (``ManualClock`` in tests).
    - ``by_event``: the policy of a consumed event type that has its own (``for_event``).

    A ``PayloadError`` is never retried (nothing can fix the message); a ``StoreUnavailable`` is never counted as an
    attempt (see the buses): the message stays unacknowledged and comes back after ``outage_s``. That pause is
    jittered even with ``jitter="none"``: every replica meets an outage at the same moment, and without it they
    would all come back to the recovering store together; and half of it is fixed, since full jitter's pause near 0
    would hand the message straight back to a store that is still away.
    """

    max_attempts: int = 3
    backoff_ms: float = 50.0
    backoff_multiplier: float = 2.0
    max_backoff_ms: float = 5_000.0
    jitter: Jitter = "none"
    timeout_ms: float | None = None
    dead_letter: bool = True
    clock: Clock = field(default=SYSTEM_CLOCK, compare=False)
    random: Callable[[], float] = field(default=_JITTER_RANDOM.random, compare=False)
    by_event: Mapping[str, RetryPolicy] = field(default_factory=_no_events, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if self.backoff_ms < 0 or self.max_backoff_ms < 0 or self.backoff_multiplier < 1:
            raise ValueError("backoff_ms and max_backoff_ms must be >= 0 and backoff_multiplier >= 1")
        if self.jitter not in ("full", "none"):
            raise ValueError(f"jitter must be 'full' or 'none', not {self.jitter!r}")
        if self.timeout_ms is not None and self.timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be positive, not {self.timeout_ms}")

    def for_event(self, event_type: str) -> RetryPolicy:
        """The policy for a message of ``event_type``: its own where it has one, else this one."""
        return self.by_event.get(event_type, self) if self.by_event else self

    def with_events(self, by_event: Mapping[str, RetryPolicy]) -> RetryPolicy:
        """This policy, with ``by_event`` as the policies of those event types."""
        return replace(self, by_event=MappingProxyType(dict(by_event)))

    def ceiling_s(self, attempt: int) -> float:
        """The capped exponential delay after failed attempt ``attempt`` (1-based), before jitter."""
        # The exponent is bounded so that a long run of redeliveries cannot overflow a float.
        ms = min(self.backoff_ms * self.backoff_multiplier ** min(attempt - 1, 64), self.max_backoff_ms)
        return ms / 1000.0

    def delay_s(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based): ``ceiling_s`` spread by ``jitter``."""
        ceiling = self.ceiling_s(attempt)
        if self.jitter == "full":
            return self.random() * ceiling
        return ceiling

    def outage_s(self, attempt: int) -> float:
        """Seconds to wait before messages a store outage left unacknowledged come again (the ``attempt``-th time):
        ``ceiling_s`` with ``equal_jitter`` drawn from ``random``, whatever ``jitter`` says (class docstring)."""
        return equal_jitter(self.ceiling_s(attempt), self.random)

    async def pause(self, attempt: int) -> None:
        """Wait ``delay_s(attempt)`` on the policy's clock."""
        await pause(self.clock, self.delay_s(attempt))

    async def run(self, call: Callable[[A], Awaitable[None]], arg: A) -> None:
        """``await call(arg)`` as one attempt: ``TimeoutError`` once it ran ``timeout_ms`` (class docstring)."""
        if self.timeout_ms is None:
            await call(arg)
            return
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        attempt = _Attempt(task, self.timeout_ms / 1000, self.clock, cancelling)
        token = _ATTEMPT.set(attempt)
        attempt.arm()
        try:
            await call(arg)
        except asyncio.CancelledError:
            if attempt.expired and task.uncancel() <= cancelling:
                raise TimeoutError(f"handler did not finish within {self.timeout_ms:g} ms") from None
            raise
        else:
            if attempt.expired:
                task.uncancel()  # it finished before the cancellation reached it
        finally:
            attempt.disarm()
            _ATTEMPT.reset(token)


def equal_jitter(seconds: float, draw: Callable[[], float]) -> float:
    """``seconds`` spread by "equal jitter" (AWS): half of it, plus ``draw()`` (in [0, 1)) times the other half.

    For the pauses of a wait for the store to come back: replicas that met the outage together come back apart,
    and no pause is near 0 (as full jitter's may be), which would only meet the outage again."""
    half = seconds / 2
    return half + draw() * half


async def held(
    call: Callable[[], Awaitable[T]],
    clock: Clock,
    holding_on: Callable[[], bool],
    outage: Callable[[StoreUnavailable], None],
    *,
    draw: Callable[[], float] = _JITTER_RANDOM.random,
) -> T:
    """``call()``, tried again with capped backoff (50 ms, doubling to 2 s, each pause spread by ``equal_jitter``
    with ``draw``) while it raises ``StoreUnavailable`` and ``holding_on()`` says so (a node starting or running);
    ``outage`` hears of the first such error."""
    ceiling = 0.05
    while True:
        try:
            return await call()
        except StoreUnavailable as exc:
            if not holding_on():
                raise
            if ceiling == 0.05:
                outage(exc)
            await pause(clock, equal_jitter(ceiling, draw))
            ceiling = min(ceiling * 2, 2.0)


async def pause(clock: Clock, seconds: float) -> None:
    """Wait ``seconds`` on ``clock``, from a long-lived task (a bus worker, a consumer loop).

    On a clock other than the system's the wait is a task of its own: ``ManualClock.advance`` waits for a sleeper it
    woke to sleep again or end, which a worker that goes on to wait for messages never does, but this task does.
    """
    if seconds <= 0:
        return
    if isinstance(clock, SystemClock):
        await asyncio.sleep(seconds)
    else:
        await asyncio.ensure_future(clock.sleep(seconds))


class RetryBlock(Protocol):
    """A contract's ``resilience.retry`` (``onex.contracts.RetrySettings``), as this module reads it."""

    @property
    def max_attempts(self) -> int: ...
    @property
    def backoff_ms(self) -> int: ...
    @property
    def max_backoff_ms(self) -> int: ...
    @property
    def jitter(self) -> Jitter: ...


class BreakerBlock(Protocol):
    """A contract's ``resilience.circuit_breaker`` (``onex.contracts.CircuitBreakerSettings``)."""

    @property
    def failure_threshold(self) -> int: ...
    @property
    def reset_timeout_ms(self) -> int: ...


class ResilienceBlock(Protocol):
    """A contract's ``resilience`` block (``onex.contracts.Resilience``); typed here, not imported: contracts sit
    above this module."""

    @property
    def timeout_ms(self) -> int: ...
    @property
    def retry(self) -> RetryBlock: ...
    @property
    def dead_letter(self) -> bool: ...


def retry_policy(
    block: ResilienceBlock, clock: Clock, by_event: Mapping[str, ResilienceBlock] | None = None
) -> RetryPolicy:
    """The ``RetryPolicy`` of a contract's ``resilience`` block, with ``by_event`` the blocks of consumed events that
    have their own; pauses and timeouts run on ``clock``."""

    def of(b: ResilienceBlock) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=b.retry.max_attempts,
            backoff_ms=float(b.retry.backoff_ms),
            max_backoff_ms=float(max(b.retry.max_backoff_ms, b.retry.backoff_ms)),
            jitter=b.retry.jitter,
            timeout_ms=float(b.timeout_ms),
            dead_letter=b.dead_letter,
            clock=clock,
        )

    return of(block).with_events({name: of(b) for name, b in by_event.items()}) if by_event else of(block)


def circuit_breaker(block: BreakerBlock, clock: Callable[[], float]) -> CircuitBreaker:
    """The ``CircuitBreaker`` of a contract's ``resilience.circuit_breaker`` block, timed by ``clock``."""
    return CircuitBreaker(
        failure_threshold=block.failure_threshold, reset_timeout_s=block.reset_timeout_ms / 1000, clock=clock
    )


class _Attempt:
    """The timeout of the handler call in progress (``RetryPolicy.run``)."""

    __slots__ = ("cancelling", "clock", "deadline", "expired", "holding", "outer", "seconds", "task", "timer", "watch")

    def __init__(self, task: asyncio.Task[Any], seconds: float, clock: Clock, cancelling: int) -> None:
        self.task = task
        self.cancelling = cancelling  # the task's pending cancellations when the attempt began
        self.seconds = seconds
        self.clock = clock
        self.holding = 0  # > 0 while inside holding()
        self.expired = False
        self.deadline = 0.0  # on the loop's clock (the system clock's attempts)
        self.timer: asyncio.Task[None] | None = None  # another clock's
        self.watch: _Watch | None = None  # the system clock's
        self.outer: _Attempt | None = None  # the attempt this one runs inside, if any

    def arm(self) -> None:
        if isinstance(self.clock, SystemClock):
            self.watch = watch = _Watch.of(self.task)
            self.outer, watch.attempt = watch.attempt, self
            self.deadline = watch.loop.time() + self.seconds
            watch.wake_by(self.deadline)
        else:
            # Another clock (a ManualClock in tests) can only be waited on by a task.
            self.timer = asyncio.ensure_future(self._wait())

    async def _wait(self) -> None:
        while True:
            await self.clock.sleep(self.seconds)
            if not self.holding:
                self._expire()
                return

    def _expire(self) -> None:
        self.expired = True
        self.task.cancel()

    def timed_out(self) -> bool:
        """Whether the cancellation under way is this attempt's expiry alone: not also another one (a shutdown)."""
        return self.expired and self.task.cancelling() <= self.cancelling + 1

    def disarm(self) -> None:
        if self.watch is not None:
            self.watch.attempt = self.outer
        elif self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _Watch:
    """The timeouts of the attempts a task runs one after another (a bus worker's handler calls), on one loop timer.

    An attempt sets its deadline and becomes the watch's current one; the timer, armed when there is none, fires at
    the deadline it was armed for and then looks at the current attempt: none (the last one ended), or one whose
    deadline is later (a newer attempt), and it is armed again for that; one past its deadline expires, unless it is
    holding (waiting on the store), which gets another full timeout. A loop timer armed and cancelled for every
    handler call was 7 % of the event loop's CPU a stamp one workflow at a time (issue 12's nineteenth part); this
    arms one timer a timeout, whatever the number of calls."""

    __slots__ = ("attempt", "loop", "timer")

    _of: ClassVar[dict[asyncio.Task[Any], _Watch]] = {}  # by task: a worker task keeps its watch as long as it runs

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.attempt: _Attempt | None = None
        self.timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, task: asyncio.Task[Any]) -> _Watch:
        watch = cls._of.get(task)
        if watch is None:
            watch = cls._of[task] = cls(task.get_loop())
            task.add_done_callback(cls._ended)
        return watch

    @classmethod
    def _ended(cls, task: asyncio.Task[Any]) -> None:
        watch = cls._of.pop(task, None)
        if watch is not None and watch.timer is not None:
            watch.timer.cancel()

    def wake_by(self, deadline: float) -> None:
        """Have the timer fire by ``deadline`` (an attempt's timeout may be shorter than the last one's)."""
        if self.timer is not None:
            if self.timer.when() <= deadline:
                return
            self.timer.cancel()
        self.timer = self.loop.call_at(deadline, self.due)

    def due(self) -> None:
        self.timer = None
        attempt = self.attempt
        if attempt is None:
            return
        now = self.loop.time()
        if now >= attempt.deadline:
            if not attempt.holding:
                attempt._expire()
                return
            attempt.deadline = now + attempt.seconds  # waiting on the store: another full timeout
        self.wake_by(attempt.deadline)  # or a later attempt than the one the timer was armed for


_ATTEMPT: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar("onex_attempt", default=None)


@contextlib.contextmanager
def holding() -> Iterator[None]:
    """Mark the handler call in progress as waiting on the store, whose outages are held, not failed.

    While inside, the handler's ``timeout_ms`` does not expire (``RetryPolicy``). A no-op outside a handler.
    """
    attempt = _ATTEMPT.get()
    if attempt is None:
        yield
        return
    attempt.holding += 1
    try:
        yield
    finally:
        attempt.holding -= 1


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures; lets one trial call through after ``reset_timeout_s``.

    ``clock`` is injectable so tests step time instead of sleeping.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        reset_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False  # a half-open trial call that has not returned yet

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.reset_timeout_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        return self.state is not BreakerState.OPEN

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None

    def record_failure(self) -> None:
        self._failures += 1
        if self._failures >= self.failure_threshold or self.state is BreakerState.HALF_OPEN:
            self._opened_at = self._clock()

    async def call(
        self, fn: Callable[[], Awaitable[T]], *, failures: tuple[type[BaseException], ...] = (Exception,)
    ) -> T:
        """Call ``fn`` through the breaker; ``CircuitOpenError`` without calling it while open, and while half-open
        for every caller but the one trial.

        Only the exceptions in ``failures`` count against the dependency. Any other exception is passed on but
        counts as an answer (a success): a store that refuses a bad row is up, and must not be cut off for it.

        A call cancelled because the handler call it runs in ran out of its ``timeout_ms`` (``RetryPolicy.run``) is
        a ``TimeoutError``, a failure if ``failures`` names it: a dependency that hangs must open the breaker too. Any
        other cancellation (a shutdown) says nothing of the dependency and counts as nothing; a trial call gives its
        place back either way (after a timeout, the breaker is open again).
        """
        state = self.state
        if state is BreakerState.OPEN:
            raise CircuitOpenError(f"circuit open after {self._failures} consecutive failures")
        trial = state is BreakerState.HALF_OPEN
        if trial:
            if self._trial_in_flight:
                raise CircuitOpenError("circuit half-open: a trial call is in flight")
            self._trial_in_flight = True
        try:
            result = await fn()
        except asyncio.CancelledError:
            attempt = _ATTEMPT.get()
            if attempt is not None and attempt.timed_out() and issubclass(TimeoutError, failures):
                self.record_failure()
            raise
        except Exception as exc:
            if isinstance(exc, failures):
                self.record_failure()
            else:
                self.record_success()
            raise
        finally:
            if trial:
                self._trial_in_flight = False
        self.record_success()
        return result
