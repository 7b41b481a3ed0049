"""The greeter, version 1.0.0: answers GREET_REQUESTED with GREETED ("hello, <name>")."""

from __future__ import annotations

from typing import Any

from onex.nodes import ComputeNode, Event


class NodeGreeter(ComputeNode):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.greeted: list[str] = []

    async def handle_greet(self, event: Event) -> None:
        name = event.payload["name"]
        self.greeted.append(name)
        await self.publish("GREETED", {"name": name, "greeting": f"hello, {name}"}, causation=event.envelope)
