"""The event bus seam: ``EventBus`` and the in-process ``MemoryBus``. ``KafkaBus`` lives in ``_kafka.py``.

Semantics, the same on every bus (``tests/test_bus_conformance.py`` runs against each):

- ``publish(topic, envelope)`` delivers to every consumer group subscribed to ``topic``; it waits (backpressure)
  while a group's bounded buffer is full.
- Within a group, each message goes to one member; messages with the same key are handled in publish order.
- At-least-once: a message is acknowledged only after its handler returned. A handler that raises is retried
  with backoff (``RetryPolicy``); after the last attempt the message goes to ``<topic>.dlq`` (see
  ``envelope.dead_letter``) and the consumer carries on.
- No task per event: each subscription has a fixed set of worker tasks that drain buffers in batches.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

from onex.envelope import OnexEnvelopeV1

Handler = Callable[[OnexEnvelopeV1], Awaitable[None]]
"""Handles one envelope; raising means "not handled" (retry, then dead letter)."""

BatchHandler = Callable[[Sequence[OnexEnvelopeV1]], Awaitable[None]]
"""Handles a batch of envelopes of one topic at once (for write-heavy consumers). If it raises, the bus falls back
to handing the batch's messages over one by one, so one poison message cannot hold the others back."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a failing handler is retried before its message is dead-lettered."""

    max_attempts: int = 3
    backoff_ms: float = 50.0
    backoff_multiplier: float = 2.0
    max_backoff_ms: float = 5_000.0

    def delay_s(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ms = min(self.backoff_ms * self.backoff_multiplier ** (attempt - 1), self.max_backoff_ms)
        return ms / 1000.0


@dataclass(frozen=True, slots=True)
class BusStatistics:
    published: int
    delivered: int
    retried: int
    dead_lettered: int
    buffered: int


class Subscription(abc.ABC):
    """A live subscription; ``aclose()`` stops its workers after the message in hand is acknowledged."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...


class EventBus(abc.ABC):
    """Base of every bus. An async context manager: ``async with MemoryBus() as bus: ...``."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop every subscription, letting in-flight handlers finish, and release resources."""

    @abc.abstractmethod
    async def publish(self, topic: str, envelope: OnexEnvelopeV1) -> None:
        """Publish one envelope; returns once the bus has accepted it (waits while buffers are full)."""

    async def publish_many(self, topic: str, envelopes: Sequence[OnexEnvelopeV1]) -> None:
        for envelope in envelopes:
            await self.publish(topic, envelope)

    @abc.abstractmethod
    async def subscribe(
        self,
        topics: Sequence[str],
        group: str,
        *,
        handler: Handler | None = None,
        batch_handler: BatchHandler | None = None,
        retry: RetryPolicy = RetryPolicy(),
        max_batch: int = 500,
    ) -> Subscription:
        """Subscribe ``group`` to ``topics`` with exactly one of ``handler`` / ``batch_handler``."""

    @abc.abstractmethod
    async def ensure_topics(self, topics: Sequence[str]) -> None:
        """Create topics that do not exist yet (a no-op where topics need no creation)."""

    @abc.abstractmethod
    def statistics(self) -> BusStatistics: ...

    async def __aenter__(self) -> EventBus:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
