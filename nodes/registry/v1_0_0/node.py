"""The registry: node introspection, heartbeats, staleness, and who is alive.

Every node is an entity on the node_registration FSM (unknown -> alive <-> stale -> deregistered). Introspection
registers a node (``node_registrations`` row replaced); a heartbeat refreshes it; a node whose last stored heartbeat
is older than ``stale_after_missed_heartbeats`` heartbeat intervals is marked stale by a sweeper (one task), and a
STOPPED heartbeat deregisters it. A node heard of again after it stopped (an introspection or a heartbeat under the
same node id: a container restarted in place, with the same HOSTNAME and PID) starts a new life as a new entity.
Several registries may run (one consumer group): each records the heartbeats it
receives, and staleness is decided on the store, so they agree on who is alive. At start the registry asks every
running node to introspect again, so a registry that (re)starts after the others still learns about them.

``alive_nodes`` answers from the store, which all replicas share, through the registry's cache
(subcontracts/caching/registry_lookups.yaml): a registry invalidates it once its own writes of introspections and
heartbeats committed and when its sweep marked nodes stale; every instance also hears those events (``onex.cache``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, get_args

from onex.envelope import (
    NODE_HEARTBEAT,
    NODE_INTROSPECTION,
    REGISTRY_REQUEST_INTROSPECTION,
    ModelNodeHeartbeat,
    ModelNodeIntrospection,
    random_id,
)
from onex.exceptions import OnexError
from onex.fsm import Entity
from onex.nodes import Event, RegistryNode
from onex.store import HeartbeatRow, RegistrationRow, WriteBatch

from .models import ModelRegistryConfig

_log = logging.getLogger(__name__)
# What a node's stored health_status is once it is no longer alive: missed heartbeats, or it said it stopped.
_NOT_ALIVE = frozenset({"STALE", "STOPPED"})
_NO_HEALTH = _NOT_ALIVE | {"UNKNOWN"}  # a stored status that says nothing of how a running node is
_HEALTH_SAID = frozenset(get_args(ModelNodeHeartbeat.model_fields["health_status"].annotation))
# The transitions a KnownNode keeps in memory (the latest): the audit log is the store's fsm_transitions.
HISTORY_KEPT = 8
# How long a node stays in ``known`` once it is stale or deregistered here: its row stays in the store, and a node
# heard of again afterwards is simply a new entity.
FORGET_AFTER_S = 3600.0


def _said_health(info: ModelNodeIntrospection) -> tuple[str, str] | None:
    """The (status, reason) an introspection's metadata gives (``Node.publish_introspection``), None without one."""
    status = info.metadata.get("health_status")
    if not isinstance(status, str) or status not in _HEALTH_SAID:
        return None
    return status, str(info.metadata.get("health_reason") or "")


@dataclass(eq=False)
class KnownNode(Entity):
    node_type: str = ""
    node_version: str = ""
    last_seen: float = 0.0
    health_status: str = "UNKNOWN"
    left_at: float = 0.0  # when it went stale or was deregistered here (monotonic): ``forget`` reads it


class NodeRegistry(RegistryNode):
    config_model = ModelRegistryConfig
    config: ModelRegistryConfig
    cached_lookups = {"alive_nodes": frozenset({"node_type"})}  # self.cache.lookup("alive_nodes", ..., node_type=)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.known: dict[str, KnownNode] = {}
        self.stale_after_s = self.config.stale_after_missed_heartbeats * self.settings.heartbeat_interval_s
        self.sweep_interval_s = self.config.sweep_interval_ms / 1000
        self._sweeper: asyncio.Task[None] | None = None
        self._pending = WriteBatch(consumer=self.contract.name)

    async def announce(self) -> None:
        await super().announce()
        await self.publish(REGISTRY_REQUEST_INTROSPECTION, {"requested_by": self.node_id})
        if self.stale_after_s > 0:
            self._sweeper = asyncio.create_task(self._sweep(), name=f"registry-sweep:{self.node_id}")

    async def on_stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        # The registry cannot hear its own STOPPED heartbeat once its subscriptions are closed: record it directly.
        self._pending.heartbeats.append(
            HeartbeatRow(node_id=self.node_id, health_status="STOPPED", at=self.clock.now())
        )
        await self._write()

    def _node(self, node_id: str, *, anew: bool = False) -> KnownNode:
        """The node known as ``node_id``; a new entity when there is none or ``anew`` (a new life after it stopped)."""
        node = self.known.get(node_id)
        if node is None or anew:
            assert self.fsm is not None
            # Transition ids derive from (entity type, node id, id_salt, seq) and seq starts at 0 with every entity:
            # a salt of this registry's own (its node id, which another replica's is not, and a random part, which a
            # restart of this one under the same id is not) keeps them apart from every other life's in the audit log.
            node = KnownNode(entity_id=node_id, id_salt=f"{self.node_id}/{random_id()}")
            self.fsm.attach(node)
            self.known[node_id] = node
        return node

    def _fire(self, node: KnownNode, trigger: str) -> None:
        assert self.fsm is not None
        self.fsm.trigger(node, trigger)
        del node.history[:-HISTORY_KEPT]  # the store keeps the whole log; a node may live for months here

    # -- FSM entry actions (subcontracts/fsm/node_registration.yaml) --
    def record_alive(self, entity: Entity) -> None:
        assert isinstance(entity, KnownNode)
        entity.health_status = entity.health_status if entity.health_status != "STALE" else "HEALTHY"

    def record_stale(self, entity: Entity) -> None:
        assert isinstance(entity, KnownNode)
        entity.health_status = "STALE"
        entity.left_at = self.clock.monotonic()

    # -- handlers --
    async def handle_introspection(self, events: Sequence[Event]) -> None:
        # An onex node's introspection says how it is (metadata health_status, health_reason). One from elsewhere (a
        # bridge node) does not: answering a request (not starting), it keeps the health its last heartbeat stored,
        # DEGRADED with its reason while its breaker is open, rather than HEALTHY until the next one. A bridge node
        # says no reason either (""): whether it starts or answers, it keeps its stored health too, unless that says
        # nothing of a running node (STALE, STOPPED); a restarted one is corrected by its first heartbeat. Read from
        # the store, which every replica writes heartbeats to (this one may not hear this node's).
        stored: dict[str, RegistrationRow] = {}
        if any(info.reason != "startup" and _said_health(info) is None for _, info in events):
            stored = {row.node_id: row for row in await self.hold_store(self.store.list_registrations)}
        for envelope, info in events:
            assert isinstance(info, ModelNodeIntrospection)
            node = self._node(info.node_id)
            if node.state == "deregistered":  # it stopped, and is back under the same id: a new life
                node = self._node(info.node_id, anew=True)
            status, reason = self._health(info, stored.get(info.node_id))
            node.node_type, node.node_version = info.node_type, info.node_version
            node.last_seen = self.clock.monotonic()
            node.health_status = status
            self._fire(node, "introspect")
            self._pending.registrations.append(
                RegistrationRow(
                    node_id=info.node_id,
                    node_type=info.node_type,
                    node_version=info.node_version,
                    health_status=status,
                    capabilities=info.capabilities,
                    endpoints=info.endpoints,
                    metadata={**info.metadata, "node_name": info.node_name, "health_reason": reason},
                    last_heartbeat=envelope.event_timestamp,
                    registered_at=envelope.event_timestamp,
                )
            )
        await self._write()
        if self.cache is not None:  # after the write: a lookup from here on reads what it wrote
            await self.cache.invalidate(NODE_INTROSPECTION)

    @staticmethod
    def _health(info: ModelNodeIntrospection, row: RegistrationRow | None) -> tuple[str, str]:
        """The health (status, reason) an introspection registers ``info``'s node with; ``row``: its stored one."""
        if (said := _said_health(info)) is not None:
            return said
        if info.reason == "startup":  # a new process: what its previous life heartbeated says nothing of it
            return "HEALTHY", ""
        if row is not None and row.health_status not in _NO_HEALTH:
            return row.health_status, str(row.metadata.get("health_reason") or "")
        return "HEALTHY", ""

    async def handle_heartbeat(self, events: Sequence[Event]) -> None:
        assert self.fsm is not None
        # Deregistered once their STOPPED row is written: deregistered is terminal, and a heartbeat redelivered
        # after a failed write must still write it (the node would otherwise stay alive in the store until the sweep
        # marks it STALE).
        stopping: dict[str, KnownNode] = {}
        for envelope, beat in events:
            assert isinstance(beat, ModelNodeHeartbeat)
            node = self._node(beat.node_id)
            if beat.node_id in stopping:
                continue
            if node.state == "deregistered":
                if beat.health_status == "STOPPED":  # already written
                    continue
                # Back under the same id (restarted in place), and its introspection went to another replica or
                # came before its previous life's STOPPED heartbeat: a new life.
                node = self._node(beat.node_id, anew=True)
            node.last_seen = self.clock.monotonic()
            node.health_status = beat.health_status
            if beat.health_status == "STOPPED":
                stopping[beat.node_id] = node
            elif node.state != "alive":  # only a change of state is a transition, not every heartbeat
                self._fire(node, "heartbeat")
            self._pending.heartbeats.append(
                HeartbeatRow(
                    node_id=beat.node_id,
                    health_status=beat.health_status,
                    at=envelope.event_timestamp,
                    metadata={
                        "uptime_seconds": beat.uptime_seconds,
                        "active_operations": beat.active_operations,
                        "health_reason": beat.health_reason,  # always written: the store merges metadata
                    },
                )
            )
        await self._write()
        for node in stopping.values():
            self._fire(node, "deregister")
            node.left_at = self.clock.monotonic()
        if self.cache is not None:
            await self.cache.invalidate(NODE_HEARTBEAT)

    async def _write(self) -> None:
        batch, self._pending = self._pending, WriteBatch(consumer=self.contract.name)
        if len(batch):
            # Held while the store is away, rather than failing (and so dead-lettering) the heartbeats in hand.
            await self.hold_store(functools.partial(self.store.apply, batch))

    # -- queries --
    def alive(self) -> list[str]:
        """Ids of the nodes currently alive (registered, heartbeating, not stale, not stopped)."""
        return sorted(n.entity_id for n in self.known.values() if n.state == "alive")

    async def alive_nodes(self, node_type: str | None = None) -> list[str]:
        """Ids of the nodes the store holds alive (registered, not stale, not stopped), of ``node_type`` or of every
        type: what every registry replica agrees on, unlike ``alive()`` (this replica's own view). Cached as
        ``alive_nodes`` under ``alive:{node_type}`` (``*``: every type)."""

        async def load() -> list[str]:
            rows = await self.store.list_registrations()
            return sorted(
                row.node_id
                for row in rows
                if row.health_status not in _NOT_ALIVE and (node_type is None or row.node_type == node_type)
            )

        if self.cache is None:
            return await load()
        found: list[str] = await self.cache.lookup("alive_nodes", load, node_type=node_type or "*")
        return found

    async def expire_stale(self, now: datetime | None = None) -> list[str]:
        """Mark nodes without a recent heartbeat stale, in the store and here; returns their ids.

        Staleness is decided on the store's ``last_heartbeat``, which every registry replica keeps up to date with
        the heartbeats it receives: replicas share one view, so a node whose heartbeats go to another replica (or
        moved there in a rebalance) is not marked stale here. ``last_heartbeat`` is not touched: it only ever holds
        the time of a heartbeat. The transitions are published by the caller (the sweeper flushes).
        """
        assert self.fsm is not None
        now = self.clock.now() if now is None else now
        expired = await self.store.mark_stale(now - timedelta(seconds=self.stale_after_s))
        for node_id in expired:
            node = self._node(node_id)
            if node.state == "unknown":
                node.state = "alive"  # registered and heartbeating, as far as the store knows
            if node.state == "alive":
                self._fire(node, "expire")
        if expired and self.cache is not None:
            await self.cache.clear()
        return expired

    def forget(self, now: float | None = None) -> list[str]:
        """Forget the nodes stale or deregistered here for over ``FORGET_AFTER_S`` (``now``: the clock's monotonic
        time), so that ``known`` holds what is alive or recently was, not every node id ever heard of; their rows stay
        in the store. Returns their ids. A forgotten node heard of again is a new entity, as after a restart."""
        now = self.clock.monotonic() if now is None else now
        gone = [
            node_id
            for node_id, node in self.known.items()
            if node.state in ("stale", "deregistered") and now - node.left_at > FORGET_AFTER_S
        ]
        for node_id in gone:
            del self.known[node_id]
        return gone

    async def _sweep(self) -> None:
        while True:
            await self.clock.sleep(self.sweep_interval_s)
            self.forget()
            try:
                if await self.expire_stale():
                    await self.flush()
            except OnexError as exc:  # the store is away: try again at the next sweep
                _log.warning("%s: could not sweep for stale nodes: %s", self.node_id, exc)
