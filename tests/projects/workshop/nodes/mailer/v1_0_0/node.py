"""The mailer: an effect that sends mail through its circuit breaker; addresses at bounce.test always fail."""

from __future__ import annotations

from typing import Any

from onex.nodes import EffectNode, Event


class NodeMailer(EffectNode):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outbox: list[str] = []
        self.attempts: list[str] = []

    async def handle_send(self, event: Event) -> None:
        to = event.payload["to"]

        async def send() -> None:
            self.attempts.append(to)
            if to.endswith("@bounce.test"):
                raise ConnectionError(f"mail server refused {to}")
            self.outbox.append(to)

        await self.breaker.call(send)
