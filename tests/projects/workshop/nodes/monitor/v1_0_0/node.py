"""The monitor: watches pulses (heartbeat-shaped payloads) of other nodes, relays them, alerts on overload."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from onex.envelope import ModelNodeHeartbeat
from onex.fsm import Entity
from onex.nodes import ComputeNode, Event


class NodeMonitor(ComputeNode):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pulses: list[Event] = []
        self.bursts: list[Sequence[Event]] = []
        self.notes: list[Any] = []
        self.watched: dict[str, Entity] = {}
        self.alarms: list[str] = []
        # Bus publish counts when handle_pulse began and when it returned, per pulse.
        self.published_during_handler: list[int] = []

    def _watched(self, node_id: str, event: Event) -> Entity:
        entity = self.watched.get(node_id)
        if entity is None:
            assert self.fsm is not None
            entity = Entity(entity_id=node_id, correlation_id=event.envelope.correlation_id)
            self.fsm.attach(entity)
            self.watched[node_id] = entity
        return entity

    # -- FSM entry action --
    def raise_alarm(self, entity: Entity) -> None:
        self.alarms.append(entity.entity_id)

    # -- handlers --
    async def handle_pulse(self, event: Event) -> None:
        assert self.fsm is not None
        published_before = self.bus.statistics().published
        beat: ModelNodeHeartbeat = event.payload
        self.pulses.append(event)
        entity = self._watched(beat.node_id, event)
        entity.context["active_operations"] = beat.active_operations
        self.fsm.trigger(entity, "see")
        if beat.active_operations > 10:
            self.fsm.trigger(entity, "alarm")
        self.published_during_handler.append(self.bus.statistics().published - published_before)

    async def handle_burst(self, events: Sequence[Event]) -> None:
        self.bursts.append(events)

    async def handle_note(self, event: Event) -> None:
        self.notes.append(event.payload)
