"""The tally: per key, how many TALLY events it handled and the sum of their amounts, kept in ``Node.state``."""

from __future__ import annotations

from collections.abc import Sequence

from onex.nodes import ComputeNode, Event


class NodeTally(ComputeNode):
    async def handle_tallies(self, events: Sequence[Event]) -> None:
        assert self.state is not None
        for _, payload in events:
            key = str(payload["key"])
            current = await self.state.get(key)
            self.state.set(
                key, count=int(current.get("count", 0)) + 1, total=int(current.get("total", 0)) + int(payload["amount"])
            )
