"""A small node defining exactly the handler and action methods its test contract names."""

from __future__ import annotations

# Relative on purpose: under a test root this package is imported under a private alias (see onex.contracts),
# where an absolute `nodes.greeter` would mean the real project's package.
from onex.nodes import EffectNode

from .models import Greeted, GreetingRequested


class NodeGreeter(EffectNode):
    # Built bare: the tests only call its methods, where the runtime would pass a contract, bus, store and settings.
    def __init__(self) -> None:
        self.log: list[str] = []

    def handle_greeting_requested(self, payload: GreetingRequested) -> Greeted:
        return Greeted(greeting=f"hello, {payload.name}")

    def log_entered(self) -> None:
        self.log.append("entered")

    def log_exited(self) -> None:
        self.log.append("exited")

    def emit_greeted(self) -> None:
        self.log.append("greeted")
