"""Time, injected: every timer of the runtime reads and waits through a ``Clock``.

``Runtime(clock=...)`` hands one clock to every node it hosts; the orchestrator's step deadlines and timeout sweeper,
the reducer's windows and flush loop, the registry's liveness sweep, the stamping effect's circuit breaker and every
heartbeat use it. Production runs on ``SystemClock``. Tests pass a ``ManualClock`` (``onex.testing.Harness(clock=
ManualClock())``) and move time by hand: ``await clock.advance(0.2)`` fires every timer due within those 0.2 s and
returns once the tasks it woke have gone back to sleep or ended, so a test of a timeout neither sleeps nor races.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

import orjson


class Clock(Protocol):
    """What the runtime asks of time."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch (deadlines that are checkpointed and read by another process)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (durations, windows, breaker timeouts)."""
        ...

    def now(self) -> datetime:
        """The wall clock as an aware UTC datetime."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


_dumps: Final = orjson.dumps
UNIX_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND: Final = timedelta(milliseconds=1)


def epoch_ms(moment: datetime) -> int:
    """``moment`` (aware) as whole milliseconds since the Unix epoch, rounded down: exact, unlike a float timestamp."""
    return (moment - UNIX_EPOCH) // _MILLISECOND


def utc_text(moment: datetime) -> str:
    """``moment`` in UTC as ISO-8601 text at a fixed width, microseconds always present
    (``2026-12-04T12:33:30.352359+00:00``), so that text order is time order; a naive ``moment`` is read as UTC.

    orjson writes the same text at about a quarter of the cost of ``isoformat`` (280 against 1,050 ns: the datetime
    module formats through ``PyUnicode_FromFormat`` and ``sprintf``), except that it leaves out a microsecond of 0,
    which ``isoformat`` then writes; a stamp's rows hold about five distinct times, written on the store's thread
    while it holds the interpreter lock. A subclass of datetime goes through ``isoformat`` too."""
    zone = moment.tzinfo
    if zone is None:
        moment = moment.replace(tzinfo=UTC)
    elif zone is not UTC:
        moment = moment.astimezone(UTC)
    if moment.microsecond and type(moment) is datetime:
        return _dumps(moment)[1:-1].decode()
    return moment.isoformat(timespec="microseconds")


class SystemClock:
    """The machine's clocks and ``asyncio.sleep``."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """A clock that moves only when told to (``advance``); for tests.

    ``sleep`` waits until the clock has been advanced past its end. ``advance(seconds)`` moves the clock in steps,
    one due sleeper at a time in the order their sleeps end, and after waking each it waits until the woken task is
    asleep on this clock again or has ended, so everything a timer does (a sweep, a flush, a heartbeat) has happened
    when ``advance`` returns. Work the woken task handed to others (events published on the bus) is theirs: wait
    for it with ``Harness.settle()``.
    """

    def __init__(self, start: float | None = None) -> None:
        self._start = time.time() if start is None else start  # wall time starts now, unless told otherwise
        self._mono = 0.0
        self._order = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future[None], asyncio.Task[object] | None]] = []
        self._asleep: dict[asyncio.Task[object], asyncio.Event] = {}

    def time(self) -> float:
        return self._start + self._mono

    def monotonic(self) -> float:
        return self._mono

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    @property
    def sleepers(self) -> int:
        """How many sleeps are waiting on this clock."""
        return sum(1 for *_, future, _ in self._sleepers if not future.done())

    async def sleep(self, seconds: float) -> None:
        task = asyncio.current_task()
        if task is not None and task in self._asleep:
            self._asleep.pop(task).set()  # the task advance() woke is asleep again
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + seconds, next(self._order), future, task))
        await future

    async def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward, firing every sleep that ends meanwhile (see the class docstring)."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        await asyncio.sleep(0)  # tasks already scheduled (a timer just started) reach their first sleep first
        end = self._mono + seconds
        while self._sleepers and self._sleepers[0][0] <= end:
            due, _, future, task = heapq.heappop(self._sleepers)
            if future.done():  # cancelled: its task was stopped
                continue
            self._mono = due
            if task is None:
                future.set_result(None)
                await asyncio.sleep(0)
                continue
            back = self._asleep[task] = asyncio.Event()
            future.set_result(None)
            ended = asyncio.ensure_future(task)  # completes when the task ends, whatever it returns or raises
            waiter = asyncio.ensure_future(back.wait())
            await asyncio.wait((waiter, ended), return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            self._asleep.pop(task, None)
        self._mono = end
