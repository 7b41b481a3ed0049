from typing import Any

from onex.envelope import NODE_HEARTBEAT
from onex.nodes import EffectNode

STAMP_FAILED = "STAMP_FAILED"


class NodeWidget(EffectNode):
    async def stamp(self, payload: dict[str, Any]) -> None:
        await self.publish("STAMP_CRATED", payload)
        await self.publish_envelopes(STAMP_FAILED, [self.envelope("STAMP_CREATED", payload)])
        await self.publish(event_name="STAMPED", payload=payload)

    async def fine(self, payload: dict[str, Any], event_name: str) -> None:
        await self.publish("STAMP_CREATED", payload)
        await self.publish(NODE_HEARTBEAT, payload)  # the runtime's own events are always allowed
        await self.publish(event_name, payload)  # not a literal: not checked
