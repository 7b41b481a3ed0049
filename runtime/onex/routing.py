"""Routing: which service a routed command goes to, on which topic, and what counts as available.

A node with a ``routing`` subcontract (the orchestrator's stamp step) asks a ``Router`` for a target per command:

- ``service``: always the first target;
- ``round_robin``: the targets in turn, each ``weight`` times per cycle (smooth weighted round robin, so a 3:1
  split sends A A B A, not A A A B);
- ``hash``: the value of the command's ``hash_key`` field, hashed (BLAKE2b, not Python's salted ``hash``) onto the
  targets by weight, so one key always reaches the same target, in every process and after every restart;
- ``conditional``: the first target whose ``condition`` (the three-token guard grammar of ``onex.fsm``) holds for
  the command; a target without a condition matches anything. When none matches, the first available fallback.

When the target picked is unavailable, the first available service in ``fallbacks`` takes the command instead;
when none is, the pick keeps it (it may recover before the step times out, and the step's retry routes again).

**Topics.** A command reaches its target on a topic of that service's own: the first target keeps the event's topic
(``dev.omninode_bridge.onex.cmd.stamp-file.v1``), so a deployment with one target is what it was; every other
service a routing names reads ``<event topic>.<service>`` (``...cmd.stamp-file.v1.stamping_effect_archive``). No
consumer sees a command meant for another. ``service_topics`` derives, from the project's contracts, which services
read which event from a topic of their own; the runtime points those nodes' subscriptions there.

**Availability** is what the registry recorded: a service is unavailable when the store's ``node_registrations``
know instances of it and none of them is HEALTHY (its circuit breaker is open, so its heartbeats say DEGRADED; it
is STALE, DRAINING or STOPPED). A service the registry never heard of counts as available: without a registry
there is nothing to go on, and refusing every target would stop all work. The view is read at most once per
``LiveServices.refresh_s`` of the node's clock, and only by routers that have fallbacks.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from onex.clock import SYSTEM_CLOCK, Clock
from onex.contracts import Contract, RoutingSubcontract, RoutingTarget
from onex.envelope import topic_name
from onex.exceptions import OnexError
from onex.fsm import Guard, parse_guard
from onex.settings import Settings
from onex.store import Store

__all__ = ["LiveServices", "Route", "Router", "service_topic", "service_topics"]

_log = logging.getLogger("onex.routing")

LIVE_STATUSES = frozenset({"HEALTHY"})


def service_topic(topic: str, service: str) -> str:
    """The topic a command published on ``topic`` takes to ``service`` when that is not its routing's first target."""
    return f"{topic}.{service}"


@dataclass(frozen=True, slots=True)
class Route:
    """Where one command goes: the target's name (a fallback's is its service), its service, and why."""

    target: str
    service: str
    fallback: bool = False  # a fallback took it: the pick was unavailable, or no conditional target matched


class Router:
    """Picks a target per command from a routing subcontract; one per node, and stateful (round robin's turn).

    ``default_service`` is the single target when there is no routing subcontract or it names no target.
    """

    def __init__(self, routing: RoutingSubcontract | None, *, default_service: str) -> None:
        targets = routing.targets if routing is not None and routing.targets else ()
        self.strategy = routing.strategy if routing is not None and targets else "service"
        self.targets: tuple[RoutingTarget, ...] = targets or (
            RoutingTarget(name=default_service, service=default_service),
        )
        self.hash_key = routing.hash_key if routing is not None else None
        self.fallbacks: tuple[str, ...] = routing.fallbacks if routing is not None else ()
        self.default_service = self.targets[0].service
        self._guards: list[Guard | None] = [
            None if t.condition is None else parse_guard(t.condition) for t in self.targets
        ]
        self._total_weight = sum(t.weight for t in self.targets)
        self._current = [0] * len(self.targets)  # smooth weighted round robin: each target's running credit

    @property
    def fixed(self) -> bool:
        """Whether every command goes to the first target whatever it holds: one target, no condition, no fallback
        (the shipped deployment). The caller need not build a context or read availability."""
        return len(self.targets) == 1 and self._guards[0] is None and not self.fallbacks

    @property
    def needs_availability(self) -> bool:
        """Whether availability can change a route at all: only a router with fallbacks has somewhere else to go."""
        return bool(self.fallbacks)

    def services(self) -> list[str]:
        """Every service this router may send to, the first target's first."""
        return list(dict.fromkeys([*(t.service for t in self.targets), *self.fallbacks]))

    def topic(self, event_topic: str, service: str) -> str:
        """The topic that takes a command published on ``event_topic`` to ``service``."""
        return event_topic if service == self.default_service else service_topic(event_topic, service)

    def choose(self, context: Mapping[str, Any], available: Callable[[str], bool] = lambda _: True) -> Route | None:
        """The route of one command whose fields are ``context``; None when no conditional target matches it and
        there is no fallback."""
        pick = self._pick(context)
        if pick is not None and available(pick.service):
            return Route(pick.name, pick.service)
        for service in self.fallbacks:
            if available(service):
                return Route(service, service, fallback=True)
        if pick is not None:
            return Route(pick.name, pick.service)
        return Route(self.fallbacks[0], self.fallbacks[0], fallback=True) if self.fallbacks else None

    def _pick(self, context: Mapping[str, Any]) -> RoutingTarget | None:
        if self.strategy == "round_robin":
            return self.targets[self._next_turn()]
        if self.strategy == "hash":
            value = context.get(self.hash_key) if self.hash_key else None
            if value is None:
                return self.targets[0]
            digest = hashlib.blake2b(str(value).encode(), digest_size=8).digest()
            point = int.from_bytes(digest, "big") % self._total_weight
            for target in self.targets:
                if point < target.weight:
                    return target
                point -= target.weight
            raise AssertionError("unreachable: point < total weight")  # pragma: no cover
        if self.strategy == "conditional":
            for target, guard in zip(self.targets, self._guards, strict=True):
                if guard is None or guard(context):
                    return target
            return None
        return self.targets[0]

    def _next_turn(self) -> int:
        # nginx's smooth weighted round robin: every target gains its weight, the richest is picked and pays the
        # total. Over one cycle of `total weight` picks each target is picked `weight` times, spread out.
        best = 0
        for index, target in enumerate(self.targets):
            self._current[index] += target.weight
            if self._current[index] > self._current[best]:
                best = index
        self._current[best] -= self._total_weight
        return best


class LiveServices:
    """The registry's view of which services have a live instance, read from the store's ``node_registrations``.

    ``available(service)`` is False only for a service the registry knows and whose instances are all not
    HEALTHY. ``refresh()`` reads the store again once ``refresh_s`` passed on ``clock`` since the last read; a
    store that cannot answer leaves the last view in place.
    """

    def __init__(self, store: Store, *, clock: Clock | None = None, refresh_s: float = 1.0) -> None:
        self.store = store
        self.clock = clock or SYSTEM_CLOCK
        self.refresh_s = refresh_s
        self._statuses: dict[str, set[str]] = {}
        self._read_at: float | None = None

    async def refresh(self) -> None:
        now = self.clock.monotonic()
        if self._read_at is not None and now - self._read_at < self.refresh_s:
            return
        self._read_at = now
        try:
            rows = await self.store.list_registrations()
        except OnexError as exc:
            _log.warning("routing: cannot read node registrations, keeping the last view: %s", exc)
            return
        statuses: dict[str, set[str]] = {}
        for row in rows:
            name = row.metadata.get("node_name")
            if isinstance(name, str):
                statuses.setdefault(name, set()).add(row.health_status)
        self._statuses = statuses

    def available(self, service: str) -> bool:
        statuses = self._statuses.get(service)
        return statuses is None or bool(statuses & LIVE_STATUSES)


def service_topics(contracts: Iterable[Contract], settings: Settings) -> dict[str, dict[str, str]]:
    """``{service: {event name: topic}}`` for every service that reads a routed command from a topic of its own.

    A contract's routing routes the events it publishes that its target services consume. Every service it names
    except its first target reads such an event from ``service_topic(event topic, service)``.
    """
    contracts = list(contracts)
    consumed = {
        c.name: {spec.event_name for spec in c.subcontracts.event_type.consumes}
        for c in contracts
        if c.subcontracts.event_type is not None
    }
    routes: dict[str, dict[str, str]] = {}
    for contract in contracts:
        routing, events = contract.subcontracts.routing, contract.subcontracts.event_type
        if routing is None or not routing.targets or events is None:
            continue
        router = Router(routing, default_service=routing.targets[0].service)
        for spec in events.publishes:
            topic = topic_name(
                spec.event_name,
                env=settings.env,
                tenant=settings.tenant,
                cls=spec.topic_class,
                major=spec.event_version,
            )
            for service in router.services():
                if service != router.default_service and spec.event_name in consumed.get(service, ()):
                    routes.setdefault(service, {})[spec.event_name] = router.topic(topic, service)
    return routes
