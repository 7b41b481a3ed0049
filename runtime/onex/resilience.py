"""The circuit breaker, shared by effect nodes and stores (retries come from the bus and the stores)."""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from onex.exceptions import CircuitOpenError

T = TypeVar("T")


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
