"""The census: records every NODE_INTROSPECTION it receives, as (node id, reason)."""

from __future__ import annotations

from typing import Any

from onex.envelope import ModelNodeIntrospection
from onex.nodes import ComputeNode, Event


class NodeCensus(ComputeNode):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[str, str]] = []

    async def handle_introspection(self, event: Event) -> None:
        info: ModelNodeIntrospection = event.payload
        self.seen.append((info.node_id, info.reason))
