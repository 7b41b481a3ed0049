"""The monitor: watches pulses (heartbeat-shaped payloads) of other nodes, relays them, alerts on overload."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from onex.envelope import ModelNodeHeartbeat
from onex.fsm import Entity
from onex.nodes import ComputeNode, Event, Lifecycle


class NodeMonitor(ComputeNode):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pulses: list[Event] = []
        self.bursts: list[Sequence[Event]] = []
        self.notes: list[Any] = []
        self.watched: dict[str, Entity] = {}
        self.alarms: list[str] = []
        # Per pulse: how many messages the bus accepted between the FSM trigger and the handler's return.
        self.published_during_handler: list[int] = []
        self.hooks: list[tuple[str, Lifecycle]] = []  # (hook, lifecycle state while it ran)

    def _watched(self, node_id: str, event: Event) -> Entity:
        entity = self.watched.get(node_id)
        if entity is None:
            assert self.fsm is not None
            entity = Entity(entity_id=node_id, correlation_id=event.envelope.correlation_id)
            self.fsm.attach(entity)
            self.watched[node_id] = entity
        return entity

    # -- lifecycle hooks --
    async def on_start(self) -> None:
        self.hooks.append(("on_start", self.lifecycle))

    async def on_drain(self) -> None:
        self.hooks.append(("on_drain", self.lifecycle))

    async def on_stop(self) -> None:
        self.hooks.append(("on_stop", self.lifecycle))

    # -- FSM entry action --
    def raise_alarm(self, entity: Entity) -> None:
        self.alarms.append(entity.entity_id)

    # -- handlers --
    async def handle_pulse(self, event: Event) -> None:
        assert self.fsm is not None
        beat: ModelNodeHeartbeat = event.payload
        self.pulses.append(event)
        entity = self._watched(beat.node_id, event)
        entity.context["active_operations"] = beat.active_operations
        published_before = self.bus.statistics().published
        self.fsm.trigger(entity, "see")
        if beat.active_operations > 10:
            self.fsm.trigger(entity, "alarm")
        # Work after the transition that gives the event loop a turn, as any awaited I/O would.
        await asyncio.sleep(0)
        await self.publish("RELAYED_PULSE", beat, causation=event.envelope)
        if entity.state == "alarmed":
            await self.publish("ALERT", {"node_id": beat.node_id, "level": "warn"}, causation=event.envelope)
        self.published_during_handler.append(self.bus.statistics().published - published_before)

    async def handle_burst(self, events: Sequence[Event]) -> None:
        self.bursts.append(events)

    async def handle_note(self, event: Event) -> None:
        self.notes.append(event.payload)
