"""Node base classes: ``Node`` and one subclass per kind (effect, compute, reducer, orchestrator, registry).

A node gets its contract, bus, store and settings passed in (no service locator) and implements the handler and
action methods its contract names. The base class does the wiring:

- each ``consumes`` entry of the event_type subcontract becomes a subscription (consumer group
  ``{env}.{node name}``, shared by every replica) calling the named method; a payload is validated against the
  contract's model where it enters: on publish when a node hands a dict, on consume when it came off the wire (an
  envelope built in this process carries the validated model itself, passed on as it is); models are compiled once
  at load, never a schema per message; a payload that does not validate is dead-lettered at once, without retries;
- ``publish(event_name, payload)`` builds the envelope and topic from the contract;
- FSM transitions are published after the handler that caused them returns, before the message is acknowledged:
  one STATE_TRANSITION event per handled batch, carrying the batch's transitions in order;
- lifecycle ``created -> starting -> running -> draining -> stopped`` (illegal moves raise); at start the node
  publishes its introspection, then a heartbeat every ``settings.heartbeat_interval_s``.

Handler signatures: ``async def h(self, event: Event) -> None`` or, for ``batch: true`` entries,
``async def h(self, events: Sequence[Event]) -> None``; ``Event`` pairs the envelope with the validated payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from onex._lifecycle import MOVES
from onex._lifecycle import Lifecycle as Lifecycle  # re-exported: node code imports it from onex.nodes
from onex._model_reads import PlainReads
from onex._workflow import _COMPLETED, _FAILED, _PENDING, _RUNNING, _SKIPPED, StepDeadlines

# Re-exported: an orchestrator's code imports the types of its workflows from onex.nodes.
from onex._workflow import StepRun as StepRun
from onex._workflow import StepStatus as StepStatus
from onex._workflow import Workflow as Workflow
from onex.bus import EventBus, Subscription
from onex.cache import node_cache

# Re-exported: node code finds what it handles in onex.nodes, as before the catalog had a module of its own.
from onex.catalog import Event as Event
from onex.catalog import EventCatalog as EventCatalog
from onex.catalog import PayloadCodec as PayloadCodec
from onex.catalog import Publication as Publication
from onex.catalog import readers_for
from onex.clock import SYSTEM_CLOCK, Clock
from onex.contracts import Contract, EventSpec, NodeType, StateSupport, Step, plan_stages
from onex.envelope import (
    CONTROL_EVENTS,
    NODE_HEARTBEAT,
    NODE_INTROSPECTION,
    REGISTRY_REQUEST_INTROSPECTION,
    RUNTIME_EVENTS,
    STATE_TRANSITION,
    IdSource,
    ModelNodeHeartbeat,
    ModelNodeIntrospection,
    ModelStateTransition,
    ModelStateTransitions,
    OnexEnvelopeV1,
    derived_after,
    derived_id,
    id_tail,
    new_id,
    topic_name,
)
from onex.exceptions import ContractError, ContractIssue, LifecycleError, OnexError, PayloadError
from onex.fsm import Entity, StateMachine, TransitionRecord
from onex.meters import DeadLetterAlert, NodeMeter
from onex.resilience import CircuitBreaker, circuit_breaker, held, holding, retry_policy
from onex.settings import Settings, whereabouts
from onex.slo import SloMonitor
from onex.state import KeyedState, StatePolicy, WritesUnderWay
from onex.store import Store, WorkflowRow, WriteBatch, maker

_log = logging.getLogger("onex.nodes")
_workflow_row = maker(WorkflowRow)  # a row, built at about half the cost of the class's call (onex.store.maker)
T = TypeVar("T")

# --- the base node -----------------------------------------------------------------------------------------------


class Node:
    """Base of every node; subclass one of the kind classes below."""

    node_type: ClassVar[NodeType]

    class Config(PlainReads):
        """Base of a node's config model: subclass it (or the kind's ``Config``) to declare a node's ``config:``.

        Typed and frozen; an unknown key is an error (``onex validate`` reports it as ``config-unknown``), since a
        misspelt setting would otherwise silently leave its default in force."""

        model_config = ConfigDict(extra="forbid", frozen=True)

    class OpenConfig(Config):
        """The config of a node class that declares no ``config_model``: any keys, unchecked (``model_extra``).

        A node written before config models existed keeps working; declaring a model is what turns the checks on.
        """

        model_config = ConfigDict(extra="allow")

    # The model ``contract.config`` is validated against: by ``onex validate`` at the offending key or value, and
    # here when the node is built. ``self.config`` is the instance (``contract.config`` stays the raw dict).
    config_model: ClassVar[type[Node.Config]] = OpenConfig
    config: Config
    # What a state_management subcontract gives this class (onex.state); default ``self.state``: state_fields by key.
    state_support: ClassVar[StateSupport] = StateSupport()
    # Whether a batch handler's call may hold several consumed topics' events (``EventBus.subscribe``'s
    # ``join_topics``): one flush and one write a call, which a node whose output nobody waits on (a sink) gains.
    join_topics: ClassVar[bool] = True
    # What `onex validate` holds a contract to (field-unread): the subcontracts this class reads, the lookups its
    # cache serves and the fields each passes (None: undeclared), the events it routes and the fields a route reads.
    subcontracts_read: ClassVar[frozenset[str]] = frozenset({"fsm", "event_type", "state_management", "caching"})
    cached_lookups: ClassVar[Mapping[str, frozenset[str]] | None] = None
    routes: ClassVar[Mapping[str, frozenset[str]]] = {}
    # Set by Runtime.reload on a node that replaces another in this process: the bus still holds the messages of
    # the work it takes over (on the memory bus too), so nothing loaded from a checkpoint is lost in transit.
    takes_over = False

    def __init__(
        self,
        contract: Contract,
        *,
        bus: EventBus,
        store: Store,
        settings: Settings,
        clock: Clock | None = None,
        ids: IdSource | None = None,
    ) -> None:
        self.contract = contract
        try:
            self.config = self.config_model.model_validate(contract.config)
        except ValidationError as exc:
            # The loader reports these at their file:line:col when it checks implementations; a contract built
            # without that (by hand, or loaded with check_implementations=False) gets them here, by file only.
            model = f"{type(self).__name__}.config_model ({self.config_model.__name__})"
            codes = {"extra_forbidden": "config-unknown", "missing": "config-missing"}
            issues = [
                ContractIssue(
                    str(contract.source),
                    1,
                    1,
                    codes.get(error["type"], "config-type"),
                    f"config.{'.'.join(map(str, error['loc']))}: {error['msg']}, got {error['input']!r} ({model})",
                )
                for error in exc.errors()
            ]
            raise ContractError(issues) from None
        self.bus = bus
        self.store = store
        self.settings = settings
        self.clock: Clock = clock or SYSTEM_CLOCK  # every timer of the node reads and waits through it
        self.ids: IdSource = ids or new_id  # ids not derived from another event's (onex.envelope.derived_id)
        self.node_id = f"{contract.name}-{contract.version}-{settings.instance}"
        self.group = f"{settings.env}.{contract.name}"
        self.lifecycle = Lifecycle.CREATED
        self.active_operations = 0
        self.meter = NodeMeter()
        self.cache = node_cache(contract, settings, self.clock)  # onex.cache; None without a caching subcontract
        # onex.state: what the state_management subcontract asks; ``state`` holds a generic node's keyed state.
        self.state_policy = StatePolicy.of(
            contract.subcontracts.state_management, self.state_support, checkpoints=settings.checkpoints
        )
        self.state: KeyedState | None = None
        if contract.subcontracts.state_management is not None and not self.state_support.fields:
            self.state = KeyedState(contract.name, self.state_policy, store, hold=self.hold_store, clock=self.clock)
        self._checkpointer: asyncio.Task[None] | None = None
        self.dlq_alert = DeadLetterAlert(
            settings.dlq_alert_threshold, settings.dlq_alert_window_s, clock=self.clock.monotonic
        )
        self._started_at = self.clock.monotonic()
        self._subscriptions: list[Subscription] = []
        self._heartbeat: asyncio.Task[None] | None = None
        self._pending_transitions: list[TransitionRecord] = []
        self._publications: dict[str, Publication] = {}
        self._consumed: dict[str, tuple[str, PayloadCodec]] = {}  # event name -> (topic, codec)
        for name in RUNTIME_EVENTS:
            self._publications[name] = Publication.runtime(name, settings)
        events = contract.subcontracts.event_type
        for spec in events.publishes if events else ():
            self._publications[spec.event_name] = Publication.of(spec, settings)
        for spec in events.consumes if events else ():
            consumed = Publication.of(spec, settings)
            self._consumed[spec.event_name] = (consumed.topic, consumed.codec)
        own = contract.resilience.events_over(events.consumes if events else ())  # consumed events' own blocks
        self.retry_policy = retry_policy(contract.resilience, self.clock, own)  # the one policy both buses apply
        self.fsm: StateMachine | None = None
        if contract.subcontracts.fsm is not None:
            self.fsm = StateMachine(
                contract.subcontracts.fsm,
                entity_type=contract.name,
                actions=self._action,
                on_transition=self._pending_transitions.append,
                now=self.clock.now,
            )
        self.slo = SloMonitor(contract.performance_requirements, self.clock, node=self.node_id)  # onex.slo

    # -- naming --
    def topic(self, event_name: str, cls: str = "evt", major: int = 1) -> str:
        return topic_name(event_name, env=self.settings.env, tenant=self.settings.tenant, cls=cls, major=major)

    def topic_of(self, event_name: str) -> str:
        """The topic this node publishes ``event_name`` on."""
        return self._publications[event_name].topic

    def consume_from(self, event_name: str, topic: str) -> None:
        """Read ``event_name`` from ``topic`` instead of the event's own: a command routed to this service on a topic
        of its own (``onex.routing``). Call before ``start``."""
        self._consumed[event_name] = (topic, self._consumed[event_name][1])

    def _action(self, name: str) -> Callable[[Entity], None]:
        method = getattr(self, name, None)
        if not callable(method):
            raise OnexError(f"node {self.contract.name}: FSM action {name!r} is not a method of {type(self).__name__}")
        return method  # type: ignore[no-any-return]

    # -- lifecycle --
    def _move(self, target: Lifecycle) -> None:
        if target not in MOVES[self.lifecycle]:
            raise LifecycleError(self.node_id, self.lifecycle, target)
        self.lifecycle = target

    async def start(self) -> None:
        """Subscribe to what the contract consumes and run ``on_start``. Call ``announce`` once all nodes started."""
        self._move(Lifecycle.STARTING)
        await self.on_start()
        by_handler: dict[str, list[EventSpec]] = {}
        events = self.contract.subcontracts.event_type
        for spec in events.consumes if events else ():
            if spec.handler:
                by_handler.setdefault(spec.handler, []).append(spec)
        topics = [p.topic for p in self._publications.values()] + [t for t, _ in self._consumed.values()]
        await self.bus.ensure_topics(sorted(set(topics)))
        retry = self.retry_policy

        async def subscribe(handler_name: str, specs: list[EventSpec]) -> None:
            method = getattr(self, handler_name)
            topics = [self._consumed[s.event_name][0] for s in specs]
            handling: dict[str, Any] = (
                {"batch_handler": self._batch_wrapper(method)}
                if any(s.batch for s in specs)
                else {"handler": self._single_wrapper(method)}
            )
            if limits := [s.max_batch for s in specs if s.max_batch is not None]:
                handling["max_batch"] = max(limits)  # the contract's (``max_batch``); else the bus's default, 500
            sub = await self.bus.subscribe(
                topics,
                self.group,
                retry=retry,
                on_assign=self._assigned,
                background=all(s.event_name in CONTROL_EVENTS for s in specs),  # the registry's heartbeats, say
                readers=readers_for(self._consumed[s.event_name] for s in specs),
                join_topics=self.join_topics,
                **handling,
            )
            self._subscriptions.append(sub)

        async def answer_introspection() -> None:
            # Every instance answers the registry's introspection requests: a group of its own.
            request_topic = self.topic(REGISTRY_REQUEST_INTROSPECTION)
            await self.bus.ensure_topics([request_topic])
            self._subscriptions.append(
                await self.bus.subscribe(
                    [request_topic], f"{self.node_id}.introspection", handler=self._on_request, background=True
                )
            )

        # All at once: on Kafka a join waits seconds for the broker, and each member joining a group sends the members
        # before it to join again, so one after another a node with three subscriptions took 20 s to start on tansu.
        # A subscription made before one failed is in _subscriptions, which drain() closes.
        joins = [asyncio.ensure_future(subscribe(name, specs)) for name, specs in by_handler.items()]
        joins.append(asyncio.ensure_future(answer_introspection()))
        if self.cache is not None and self.cache.events:  # every instance hears what invalidates its cache
            known = {n: p.topic for n, p in self._publications.items()} | {n: t for n, (t, _) in self._consumed.items()}
            heard = self.cache.listen(self.bus, f"{self.node_id}.cache", known, self.topic, into=self._subscriptions)
            joins.append(asyncio.ensure_future(heard))
        try:
            await asyncio.gather(*joins)
        except BaseException:
            for join in joins:
                join.cancel()
            await asyncio.gather(*joins, return_exceptions=True)
            raise
        self._move(Lifecycle.RUNNING)
        if self.state_policy.interval_s is not None and self.state_policy.durable:
            self._checkpointer = asyncio.create_task(self._checkpoint_loop(), name=f"checkpoints:{self.node_id}")

    async def announce(self) -> None:
        """Publish the introspection and start the heartbeat loop."""
        await self.publish_introspection("startup")
        if self._heartbeat is None and self.settings.heartbeat_interval_s > 0:
            self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name=f"heartbeat:{self.node_id}")

    async def drain(self) -> None:
        """Stop taking new messages, finish the ones in hand, then run ``on_drain``."""
        if self.lifecycle not in (Lifecycle.STARTING, Lifecycle.RUNNING):
            return  # never started (nothing to drain), or already draining/stopped
        self._move(Lifecycle.DRAINING)
        for sub in self._subscriptions:
            await sub.aclose()
        self._subscriptions.clear()
        await self._stop_checkpointer()
        await self.on_drain()
        await self.flush()
        if self.state_policy.checkpoint != "per_batch":
            await self.checkpoint()  # a clean stop loses nothing, whatever the policy

    async def stop(self) -> None:
        if self.lifecycle is Lifecycle.STOPPED:
            return
        started = self.lifecycle is not Lifecycle.CREATED
        await self.drain()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        if started:  # tell the registry; a node that never started was never registered
            with contextlib.suppress(Exception):  # the bus may already be closed at shutdown
                await self.publish_heartbeat("STOPPED")
        await self.on_stop()
        if self.cache is not None:
            await self.cache.aclose()
        self._move(Lifecycle.STOPPED)

    # hooks for subclasses
    @classmethod
    def contract_problems(cls, contract: Contract) -> list[tuple[tuple[str | int, ...], str]]:
        """What ``onex validate`` reports of ``contract`` for this class beyond the generic checks: ``(path in the
        contract, message)`` pairs, reported at the path's position (``node-contract``). None by default."""
        return []

    async def on_start(self) -> None:
        """Called while starting, before subscriptions exist."""

    async def on_drain(self) -> None:
        """Called after the last message in hand was handled: flush what is buffered."""

    async def on_stop(self) -> None:
        """Called last; release resources."""

    async def _assigned(self, assigned: frozenset[tuple[str, int]]) -> None:
        if self.state is not None:
            topics = {topic for topic, _ in assigned}
            self.state.forget(lambda key: any((t, self.bus.partition_of(t, key)) in assigned for t in topics))
        await self.on_partitions(assigned)

    async def on_partitions(self, assigned: frozenset[tuple[str, int]]) -> None:
        """Called with the ``(topic, partition)`` pairs one of this node's subscriptions owns, whenever they change
        (see ``onex.bus.Assignment``); nodes that keep state per key load and drop it here."""

    async def hold_store(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, tried again with capped backoff while the store is unavailable and the node is starting or
        running: an unreachable store is no reason to fail (and so dead-letter) the messages in hand; they stay
        unacknowledged. While draining or stopped the error is raised, so the bus gets them back."""
        with holding():  # above the store's own retries, the one layer (README); timeout_ms does not run out
            return await held(
                call,
                self.clock,
                lambda: self.lifecycle in (Lifecycle.STARTING, Lifecycle.RUNNING),
                lambda exc: _log.warning("%s: store unavailable, holding and retrying: %s", self.node_id, exc),
            )

    def capabilities(self) -> dict[str, Any]:
        events = self.contract.subcontracts.event_type
        caps: dict[str, Any] = {
            "consumes": [s.event_name for s in events.consumes] if events else [],
            "publishes": [s.event_name for s in events.publishes] if events else [],
        }
        if self.contract.subcontracts.fsm is not None:
            caps["fsm_states"] = [s.state_name for s in self.contract.subcontracts.fsm.states]
        return caps

    def health(self) -> str:
        """HEALTHY while running, DEGRADED while starting or while ``degraded_reasons()`` has one."""
        if self.lifecycle is Lifecycle.RUNNING:
            return "DEGRADED" if self.degraded_reasons() else "HEALTHY"
        return {Lifecycle.DRAINING: "DRAINING", Lifecycle.STOPPED: "STOPPED"}.get(self.lifecycle, "DEGRADED")

    def degraded_reasons(self) -> list[str]:
        """Why a running node is DEGRADED (/readyz says so): the dead-letter alert while it stands, and each
        performance objective (``onex.slo``) breached at the last heartbeat."""
        reasons = [self.dlq_alert.describe()] if self.dlq_alert.raised() else []
        return reasons + [objective.describe() for objective in self.slo.last.breaches()]

    # -- publishing --
    def envelope(
        self,
        event_name: str,
        payload: BaseModel | Mapping[str, Any],
        *,
        correlation_id: uuid.UUID | None = None,
        causation: OnexEnvelopeV1 | None = None,
        partition_key: str | None = None,
        index: int = 0,
        event_id: uuid.UUID | None = None,
    ) -> OnexEnvelopeV1:
        """Build (and validate) the envelope of an event this node's contract publishes.

        Its id is derived from ``causation`` (the event being handled), this node's name, ``event_name`` and
        ``index`` (tell apart several events of one name caused by one event), so that handling an event again
        after a crash publishes the same ids; without a causation it is ``event_id`` or a new random id."""
        publication = self._publications.get(event_name)
        if publication is None:
            raise OnexError(f"node {self.contract.name} does not publish {event_name!r} (not in its contract)")
        data = publication.codec.encode(payload)
        if partition_key is None and publication.partition_key is not None:
            name = publication.partition_key
            value = getattr(data, name, None) if isinstance(data, BaseModel) else data.get(name)
            partition_key = None if value is None else str(value)
        if correlation_id is None and causation is not None:
            correlation_id = causation.correlation_id
        if event_id is None and causation is not None:
            event_id = derived_after(causation.event_id, id_tail(self.contract.name, event_name, index))
        elif event_id is None:
            event_id = self.ids()
        # The payload was validated by the codec (or is a model built from validated ones), the rest is ours.
        return OnexEnvelopeV1.built(
            event_id=event_id,
            event_timestamp=self.clock.now(),
            event_type=event_name,
            source_node_id=self.node_id,
            source_service=self.contract.name,
            source_version=self.contract.version,
            source_instance=self.settings.instance,
            correlation_id=correlation_id,
            causation_id=causation.event_id if causation is not None else None,
            environment=self.settings.env,
            region=self.settings.region,
            partition_key=partition_key,
            payload=data,
        )

    async def publish(
        self,
        event_name: str,
        payload: BaseModel | Mapping[str, Any],
        *,
        correlation_id: uuid.UUID | None = None,
        causation: OnexEnvelopeV1 | None = None,
        partition_key: str | None = None,
        index: int = 0,
        event_id: uuid.UUID | None = None,
    ) -> OnexEnvelopeV1:
        env = self.envelope(
            event_name,
            payload,
            correlation_id=correlation_id,
            causation=causation,
            partition_key=partition_key,
            index=index,
            event_id=event_id,
        )
        await self.bus.publish(self._publications[event_name].topic, env)
        return env

    async def publish_envelopes(self, event_name: str, envelopes: Sequence[OnexEnvelopeV1]) -> None:
        """Publish envelopes built with ``envelope()`` in one call (batched on buses that batch)."""
        if envelopes:
            await self.bus.publish_many(self._publications[event_name].topic, envelopes)

    async def flush(self) -> None:
        """Publish what handling produced (called after every handler, before the message is acknowledged), then
        checkpoint the state if the policy says ``per_batch``.

        The base publishes recorded FSM transitions; nodes that collect events during a batch extend it."""
        await self.flush_transitions()
        if self.state_policy.checkpoint == "per_batch":
            await self.checkpoint()

    async def checkpoint(self) -> None:
        """Write the state changed since the last checkpoint (``onex.state``): after each batch, when a window
        closes or on a timer, as the state_management subcontract says, and when draining. Nodes with state of
        their own extend it."""
        if self.state is not None:
            await self.state.checkpoint()

    async def written(self) -> None:
        """Wait until what this node writes behind its batches is written (the orchestrator's checkpoints with
        ``synchronous_checkpoints`` off): ``onex.testing.Harness.settle`` waits for it as for the bus."""

    async def _checkpoint_loop(self) -> None:
        assert self.state_policy.interval_s is not None
        while True:
            await self.clock.sleep(self.state_policy.interval_s)
            try:
                await self.checkpoint()
            except OnexError as exc:  # written with the next one
                _log.warning(
                    "%s: checkpoint failed, trying again in %.3g s: %s", self.node_id, self.state_policy.interval_s, exc
                )

    async def _stop_checkpointer(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer
            self._checkpointer = None

    async def flush_transitions(self) -> None:
        """Publish the FSM transitions recorded since the last flush, in order."""
        if not self._pending_transitions:
            return
        records, self._pending_transitions[:] = list(self._pending_transitions), []
        batch = ModelStateTransitions.built(  # the state machine's typed values: not validated again
            transitions=tuple(ModelStateTransition.built(**r.to_model_fields()) for r in records)
        )
        # One event for the batch, keyed by this node: its transitions stay in order on one partition. Its id is
        # derived from the transitions it holds (themselves derived), so publishing the same ones again is recognised.
        try:
            await self.publish(
                STATE_TRANSITION,
                batch,
                correlation_id=records[0].correlation_id if len(records) == 1 else None,
                partition_key=self.node_id,
                event_id=derived_id(records[0].id, records[-1].id, len(records)),
            )
        except OnexError:  # the bus refused it: kept, ahead of newer ones, for the next flush (every one is persisted)
            self._pending_transitions[:0] = records
            raise

    async def publish_introspection(self, reason: str) -> None:
        await self.publish(
            NODE_INTROSPECTION,
            ModelNodeIntrospection(
                node_id=self.node_id,
                node_name=self.contract.name,
                node_type=self.contract.node_type.value,
                node_version=self.contract.version,
                capabilities=self.capabilities(),
                endpoints={"bus": self.settings.bus},
                # Where it runs (`onex ps`), and its health now: an answer to a registry's request must not overwrite
                # the DEGRADED its last heartbeat recorded (the bridge's metadata is free-form).
                metadata={"contract": str(self.contract.source), "instance": self.settings.instance, **whereabouts()}
                | {"health_status": self.health(), "health_reason": "; ".join(self.degraded_reasons())},
                reason=reason,
            ),
            partition_key=self.node_id,
        )

    async def publish_heartbeat(self, status: str | None = None) -> None:
        await self.publish(
            NODE_HEARTBEAT,
            ModelNodeHeartbeat(
                node_id=self.node_id,
                node_type=self.contract.node_type.value,
                node_version=self.contract.version,
                health_status=status or self.health(),
                health_reason="" if status else "; ".join(self.degraded_reasons()),
                uptime_seconds=round(self.clock.monotonic() - self._started_at, 3),
                active_operations=self.active_operations,
            ),
            partition_key=self.node_id,
        )

    async def _heartbeat_loop(self) -> None:
        while True:
            await self.clock.sleep(self.settings.heartbeat_interval_s)
            self.slo.check()  # the objectives over the window ending now: what this heartbeat's health says
            try:
                await self.publish_heartbeat()
            except OnexError:
                continue  # a closed or failing bus must not kill the heartbeat; the registry marks us stale

    async def _on_request(self, envelope: OnexEnvelopeV1) -> None:
        if self.lifecycle is Lifecycle.RUNNING:
            await self.publish_introspection("requested")

    # -- consuming --
    def _decode(self, envelope: OnexEnvelopeV1) -> Event:
        consumed = self._consumed.get(envelope.event_type)
        if consumed is None:
            raise PayloadError(
                str(envelope.event_id),
                envelope.event_type,
                f"node {self.contract.name} does not consume this event type",
            )
        return Event(envelope, consumed[1].decode(envelope))

    @staticmethod
    def _count(tally: Callable[[str, int, float], None], envelopes: Sequence[OnexEnvelopeV1], seconds: float) -> None:
        """Count a handled batch per event type: one call for the usual batch of a single type."""
        first = envelopes[0].event_type if envelopes else ""
        if all(e.event_type == first for e in envelopes):
            tally(first, len(envelopes), seconds)
            return
        for event_type, count in Counter(e.event_type for e in envelopes).items():
            tally(event_type, count, seconds)

    # A PayloadError from _decode leaves the wrapper: the bus dead-letters it at once, to the dead-letter topic of
    # the topic it came from (only the bus knows which), without retrying what no retry can fix.
    def _single_wrapper(
        self, method: Callable[[Event], Awaitable[None]]
    ) -> Callable[[OnexEnvelopeV1], Awaitable[None]]:
        handle = self._batch_wrapper(lambda events: method(events[0]))
        return lambda envelope: handle((envelope,))

    def _batch_wrapper(
        self, method: Callable[[Sequence[Event]], Awaitable[None]]
    ) -> Callable[[Sequence[OnexEnvelopeV1]], Awaitable[None]]:
        async def handle(envelopes: Sequence[OnexEnvelopeV1]) -> None:
            # One undecodable envelope fails the whole batch before anything is handled; the bus then hands the
            # envelopes over one at a time, so only that one is dead-lettered.
            events = [self._decode(envelope) for envelope in envelopes]
            self.active_operations += len(events)
            started = self.clock.monotonic()
            try:
                await method(events)
                await self.flush()
            except BaseException:
                ended = self.clock.monotonic()
                self._count(self.meter.failed, envelopes, ended - started)
                self.slo.record(ended - started, 0, at=ended)  # one call, however many events
                raise
            else:
                ended = self.clock.monotonic()
                self._count(self.meter.handled, envelopes, ended - started)
                self.slo.record(ended - started, len(envelopes), at=ended)
            finally:
                self.active_operations -= len(events)

        return handle


# --- kinds -------------------------------------------------------------------------------------------------------


class ComputeNode(Node):
    """Pure transformation: no I/O of its own beyond the events it consumes and publishes."""

    node_type = NodeType.COMPUTE


class EffectNode(Node):
    """External I/O, guarded by the contract's circuit breaker; retries come from the bus (contract resilience)."""

    node_type = NodeType.EFFECT
    uses_breaker: ClassVar[bool | None] = None  # whether its code calls a breaker; None: `onex validate` reads its code

    def __init__(self, contract: Contract, **kwargs: Any) -> None:  # Node's keywords: bus, store, settings, ...
        super().__init__(contract, **kwargs)
        events = contract.subcontracts.event_type  # an event whose block sets circuit_breaker gets a breaker of its own
        own = contract.resilience.events_over(events.consumes if events else (), "circuit_breaker")
        self.breaker = circuit_breaker(contract.resilience.circuit_breaker, self.clock.monotonic)
        self._breakers = {name: circuit_breaker(r.circuit_breaker, self.clock.monotonic) for name, r in own.items()}

    def breaker_for(self, event_type: str) -> CircuitBreaker:
        """The breaker guarding the handling of ``event_type``: its ``consumes`` entry's own, else the node's."""
        return self._breakers.get(event_type, self.breaker)

    def breakers(self) -> list[CircuitBreaker]:
        """The node's breaker, then each ``consumes`` entry's own: what health, /readyz and the metrics look at."""
        return [self.breaker, *self._breakers.values()]

    def health(self) -> str:
        base = super().health()
        return "DEGRADED" if base == "HEALTHY" and not all(b.allow() for b in self.breakers()) else base


class ReducerNode(Node):
    """Streaming aggregation. Pure: it publishes intents (events) that effect nodes carry out."""

    node_type = NodeType.REDUCER
    subcontracts_read = Node.subcontracts_read | {"aggregation"}


class RegistryNode(Node):
    """Node introspection, heartbeats, health and discovery."""

    node_type = NodeType.REGISTRY


# --- orchestration -----------------------------------------------------------------------------------------------


class OrchestratorNode(Node):
    """Runs workflows on the contract's FSM; steps come from ``config.steps`` and run in dependency stages.

    A subclass implements ``run_step(workflow, run)``: return a dict to complete the step at once, or ``None`` when
    the step was dispatched over the bus, and later call ``complete_step`` / ``fail_step`` when its result event
    arrives. Timeouts are enforced by one sweeper task over a deadline heap, never a task per workflow.
    A failed step is retried up to its ``max_attempts``; an optional step that fails is marked skipped.
    ``on_workflow_done(workflow)`` is called when every step finished or a required step failed.

    Durability. A workflow's state (FSM state and sequence, every step's status, attempts and wall-clock deadline, and
    what the subclass keeps in ``save_context``) is checkpointed in its ``workflow_executions`` row by ``flush()``, one
    write per handled batch (group commit) for every workflow the batch changed. The write begins before anything the
    batch produced is published, and an outcome (``send_outcome``) goes out once its workflow's checkpoint is stored:
    nobody hears of a workflow the store has not got. Where messages are kept (Kafka) a batch is acknowledged once the
    writes begun before its end are stored, so a crash in between redoes the work with the same derived event ids
    (dedup makes the replay a no-op); on the memory bus, whose messages die with the process, the batch does not wait.

    Ownership. Everything a workflow's orchestrator consumes is keyed by the workflow id, and one subscription takes
    it all, so whoever owns partition p of the request topic owns the workflows keyed to p. When the bus assigns
    partitions (start, a replica joining or leaving) the orchestrator drops the workflows it no longer owns and loads
    the unfinished ones it now owns from the store; their deadlines still hold, so the sweeper retries or fails a
    step whose result was lost. On a bus whose messages die with the process (the memory bus) nothing can still be
    on its way to a loaded workflow: its running steps are failed at once as interrupted (and so retried while
    attempts remain), and a workflow stored without a checkpoint is failed with that reason.
    """

    node_type = NodeType.ORCHESTRATOR
    # A call a topic: joined, a batch's commands waited for the results handled in the same call (five processes on
    # Kafka at 64 in flight: 5 % fewer stamps/s in five pairs of six; issue 12's thirty-seventh part).
    join_topics = False
    # A workflow resumes from its FSM state and its steps; ``context`` is what ``save_context`` keeps. Versioned by
    # the FSM's sequence (``state_seq``: a row never goes back to an earlier state), and there are no windows.
    state_support = StateSupport(
        fields=("state", "steps", "context"),
        required=("state", "steps"),
        versionings=("monotonic",),
        checkpoints=("per_batch", "interval_ms"),
        why="an orchestrator's workflows are versioned by their FSM sequence and have no windows",
    )
    sweep_interval_s = 0.05  # how often the sweeper looks for steps past their deadline
    step_names: ClassVar[frozenset[str] | None] = None  # the steps run_step runs (None: any), for onex validate
    required_steps: ClassVar[frozenset[str]] = frozenset()  # and the steps no workflow of it can finish without

    class Config(Node.Config):
        """An orchestrator's config: its steps and dedupe window; a subclass's model extends this one."""

        steps: tuple[Step, ...] = Field((), description="The workflow's steps, run in dependency stages.")
        dedupe_window: int = Field(
            200_000, gt=0, description="How many finished workflows are remembered, so a redelivery does not rerun."
        )

    class OpenConfig(Config):
        """The config of an orchestrator class that declares no ``config_model``: steps typed, other keys free."""

        model_config = ConfigDict(extra="allow")

    config_model: ClassVar[type[Node.Config]] = OpenConfig
    config: Config

    def __init__(
        self,
        contract: Contract,
        *,
        bus: EventBus,
        store: Store,
        settings: Settings,
        clock: Clock | None = None,
        ids: IdSource | None = None,
    ) -> None:
        super().__init__(contract, bus=bus, store=store, settings=settings, clock=clock, ids=ids)
        self.steps = list(self.config.steps)
        # `advance` starts each step once its own dependencies finished; this only refuses steps that could never
        # all run (an unknown dependency, a cycle), for contracts not built by the loader, which checks the same.
        plan_stages(self.steps)
        fsm = contract.subcontracts.fsm
        self.workflow_type = (fsm.state_machine_name if fsm is not None else None) or contract.name
        self.workflows: dict[uuid.UUID, Workflow] = {}
        self._dirty: dict[int, Workflow] = {}  # by the workflow id's int: UUID.__hash__ is Python, run per step
        self._deadlines = StepDeadlines()  # the running steps', for the sweeper
        self._sweeper: asyncio.Task[None] | None = None
        self._interrupted: list[Workflow] = []
        self._failed_rows: list[WorkflowRow] = []
        self.writes_behind = not self.settings.synchronous_checkpoints and not self.bus.retains_messages
        self._behind: asyncio.Task[None] | None = None  # the task writing checkpoints behind (see ``checkpoint``)
        self._writes = WritesUnderWay()  # a checkpoint waits for those begun before it (``checkpoint``)
        self._outcomes: defaultdict[str, list[OnexEnvelopeV1]] = defaultdict(list)  # ``send_outcome``, by event
        self._held: set[asyncio.Future[None]] = set()  # the checkpoint writes the outcomes wait for
        # Finished recently: a redelivered request (at-least-once) runs no workflow again, a rebalance loads none whose
        # outcome is not stored yet; ``config.dedupe_window`` of them (later, it runs again: idempotent in the store).
        # By the ids' ints: the garbage collector tracks a UUID, not an int (200,000 UUIDs slowed every collection).
        self._finished: OrderedDict[int, None] = OrderedDict()
        self.dedupe_window = self.config.dedupe_window
        # Outcomes published and not seen stored yet: (when to look, workflow, event name, outcome); ``expect_stored``.
        self._unconfirmed: deque[tuple[float, uuid.UUID, str, OnexEnvelopeV1]] = deque()
        self.confirm_after_s = min((s.timeout_ms for s in self.steps), default=30_000) / 1000
        events = contract.subcontracts.event_type
        self.request_topic = self._consumed[events.consumes[0].event_name][0] if events and events.consumes else ""

    @property
    def workflows_by_state(self) -> Mapping[str, int]:
        """How many workflows are in each FSM state (the gateway's ``onex_workflows`` gauge). Here: those held in
        memory, the unfinished ones; a subclass that counts finished workflows too may say so instead."""
        return dict(Counter(workflow.state for workflow in self.workflows.values()))

    async def on_start(self) -> None:
        if not self.settings.synchronous_checkpoints and self.bus.retains_messages:
            _log.info("%s: synchronous_checkpoints off has no effect on Kafka", self.node_id)
        self._sweeper = asyncio.create_task(self._sweep(), name=f"step-timeouts:{self.node_id}")

    async def on_stop(self) -> None:
        for task in (self._sweeper, self._behind):  # the writer is done by now: draining waited for it
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def run_step(self, workflow: Workflow, run: StepRun) -> dict[str, Any] | None:  # to implement, as the next
        raise NotImplementedError

    async def on_workflow_done(self, workflow: Workflow) -> None:
        raise NotImplementedError

    def save_context(self, workflow: Workflow) -> dict[str, Any]:
        """What of ``workflow.context`` to checkpoint, as JSON values (``restore_context`` reads it back)."""
        return {}

    def restore_context(self, workflow: Workflow, saved: Mapping[str, Any]) -> None:
        """Rebuild ``workflow.context`` (and ``workflow.request`` if needed) from what ``save_context`` returned."""

    def durable(self, workflow: Workflow) -> bool:
        """Whether ``workflow`` is recorded in the store at all (a dry run is not: it writes nothing)."""
        return True

    def row_fields(self, workflow: Workflow) -> dict[str, Any]:
        """Columns of the workflow's ``workflow_executions`` row besides state and checkpoint (namespace, ...)."""
        return {}

    # durability
    def track(self, workflow: Workflow) -> None:
        """Start running ``workflow`` (already attached to the FSM and started) and checkpoint it with this batch."""
        self.workflows[workflow.cid] = workflow
        self._dirty[workflow.cid.int] = workflow

    def send_outcome(self, workflow: Workflow, event_name: str, outcome: OnexEnvelopeV1) -> None:
        """Publish ``outcome``, the workflow's final event, with this batch's outcomes (``flush``), and watch that it
        gets stored (``expect_stored``)."""
        self._outcomes[event_name].append(outcome)
        if workflow.stored is not None:
            self._held.add(workflow.stored)  # one write holds the workflows of a batch
        self.expect_stored(workflow, event_name, outcome)

    async def publish_commands(self) -> None:
        """Publish the commands the batch collected, if it does: ``flush`` calls it once its checkpoint has begun."""

    async def flush(self) -> None:
        """The batch's checkpoint begins, its commands go out, then its outcomes once their workflows' checkpoints
        are stored, then its transitions; on Kafka, and when draining, the batch then waits for the writes begun
        (class docstring). Written behind (``writes_behind``) or not durable: nothing waits."""
        waits = self.state_policy.durable and not (self.writes_behind and self.lifecycle is Lifecycle.RUNNING)
        earlier = self._writes.under_way()  # taken before this batch's write
        own = self._begin_write() if waits and self.state_policy.checkpoint == "per_batch" else ()
        await self.publish_commands()
        outcomes, self._outcomes, held, self._held = self._outcomes, defaultdict(list), self._held, set()
        try:
            await self._writes.wait(held if waits else ())
            for event_name in list(outcomes):
                await self.publish_envelopes(event_name, outcomes[event_name])
                del outcomes[event_name]
        except BaseException:  # what is not out goes with the next flush, which does not wait again for a failed write
            for event_name, envelopes in outcomes.items():  # ahead of newer ones; a copy that went out is recognised
                self._outcomes[event_name][:0] = envelopes
            raise
        if not waits:
            await super().flush()  # transitions, then ``checkpoint`` (behind: a task writes what is dirty)
        else:
            await self.flush_transitions()
            if self.bus.retains_messages or self.lifecycle is not Lifecycle.RUNNING:
                await self._writes.wait((*earlier, *own))

    def expect_stored(self, workflow: Workflow, event_name: str, outcome: OnexEnvelopeV1) -> None:
        """Watch that ``outcome`` (the workflow's final event, which whoever persists outcomes writes) gets stored.

        A broker that loses what it held (tansu with memory storage, restarted) may lose an outcome after this
        orchestrator acknowledged the result that finished the workflow: nothing would finish its row. So a workflow
        whose row says it is running ``confirm_after_s`` after its outcome was published gets the same outcome (same
        id) published again until the store shows it finished. Not on the memory bus (nothing is lost in process).
        """
        if self.bus.retains_messages and self.settings.checkpoints and self.durable(workflow):
            deadline = self.clock.time() + self.confirm_after_s
            self._unconfirmed.append((deadline, workflow.cid, event_name, outcome))  # the object: no second encoding

    async def _confirm_stored(self, now: float) -> None:
        due: list[tuple[float, uuid.UUID, str, OnexEnvelopeV1]] = []
        while self._unconfirmed and self._unconfirmed[0][0] <= now and len(due) < 1_000:
            due.append(self._unconfirmed.popleft())
        if not due:
            return
        assert self.fsm is not None
        try:
            states = await self.store.workflow_states([cid for _, cid, _, _ in due])
        except OnexError:  # the store is away: look again later
            self._unconfirmed.extend((now + self.confirm_after_s, cid, name, data) for _, cid, name, data in due)
            return
        terminal = self.fsm.terminal_states
        lost = [(cid, name, data) for _, cid, name, data in due if states.get(cid) not in terminal]
        if not lost:
            return
        _log.warning(
            "%s: %d workflow outcome(s) not stored %.0f s after they were published (lost by the broker?): "
            "publishing them again",
            self.node_id,
            len(lost),
            self.confirm_after_s,
        )
        self._unconfirmed.extend((now + self.confirm_after_s, *watch) for watch in lost)  # first: a refusal keeps them
        for _, name, outcome in lost:
            await self.publish_envelopes(name, [outcome])

    def known(self, cid: uuid.UUID) -> bool:
        """Whether workflow ``cid`` runs here or finished here recently."""
        return cid in self.workflows or cid.int in self._finished

    def _is_finished(self, workflow: Workflow) -> bool:
        return self.fsm is not None and workflow.state in self.fsm.terminal_states

    def _row(self, workflow: Workflow) -> WorkflowRow:
        finished = self._is_finished(workflow)
        checkpoint = None if finished else workflow.checkpoint(self.state_policy.fields, self.save_context)
        return _workflow_row(
            correlation_id=workflow.cid,
            workflow_type=self.workflow_type,
            current_state=workflow.state,
            state_seq=workflow.seq,
            error_message=workflow.context.get("error"),
            checkpoint=checkpoint,
            **self.row_fields(workflow),
        )

    async def checkpoint(self) -> None:
        """Write the checkpoints of the workflows changed since the last one (``flush`` calls it with the default
        ``checkpoint: per_batch``; a timer with ``interval_ms``). It returns once every workflow changed before the
        call is written, those a checkpoint under way took included (``WritesUnderWay``).

        A finished workflow is not written here: its outcome is, by whoever persists it (the database adapter
        writes the final state with the steps and the stamp in one transaction). Until then its row says it is
        running, so after a crash that lost the outcome the workflow is resumed, never left half-recorded.

        With ``synchronous_checkpoints`` off on the memory bus (``writes_behind``) this returns at once and one task
        at a time writes what is dirty: a workflow finished meanwhile is never written, and a crash loses what is not
        written yet (an outcome a client was told of included); draining writes everything first.
        """
        if not self.state_policy.durable:  # storage: memory (or ``settings.checkpoints`` off)
            self._dirty = {}
            return
        if self.writes_behind and self.lifecycle is Lifecycle.RUNNING:
            if self._behind is None or self._behind.done():
                self._behind = asyncio.create_task(self._write_behind(), name=f"checkpoints:{self.node_id}")
            return
        await self._write_dirty()

    async def written(self) -> None:
        while self._behind is not None and not self._behind.done():
            await asyncio.shield(self._behind)  # a waiter cancelled must not cancel the write
        if under_way := self._writes.under_way():  # the batches' own writes (``flush``); a failed one is logged
            await asyncio.wait(under_way)

    async def _write_behind(self) -> None:
        while self._dirty and self.lifecycle is Lifecycle.RUNNING:
            try:
                await self._write_dirty()
            except Exception:  # logged by ``_begin_write``; the workflows are dirty again: written with the next flush
                return

    async def _write_dirty(self) -> None:
        await self._writes.wait((*self._writes.under_way(), *self._begin_write()))

    def _begin_write(self) -> tuple[asyncio.Future[None], ...]:
        """Begin writing the workflows changed since the last write (if any); one that fails leaves them dirty."""
        dirty, self._dirty = self._dirty, {}
        written = [w for w in dirty.values() if not self._is_finished(w) and self.durable(w)]
        if not written:
            return ()
        batch = WriteBatch(consumer=self.contract.name, workflows=[self._row(w) for w in written])

        def failed(exc: BaseException) -> None:
            _log.warning("%s: checkpoint failed, written with the next flush: %s", self.node_id, exc)
            self._dirty = {**dirty, **self._dirty}  # what changed since is newer

        write = functools.partial(self.hold_store, functools.partial(self.store.apply, batch))
        began = self._writes.begin(write, failed)
        for workflow in written:
            workflow.stored = began
        return (began,)

    def restore(self, row: WorkflowRow) -> Workflow | None:
        """The workflow of a stored unfinished row, as its checkpoint left it (before migration 7: in ``metadata``)."""
        saved: Any = row.checkpoint if row.checkpoint is not None else row.metadata.get("checkpoint")
        if (workflow := Workflow.restored(row.correlation_id, self.steps, saved)) is None:
            return None
        for run in workflow.steps.values():
            if run.status is StepStatus.RUNNING and run.deadline is not None:
                self._deadlines.push(workflow, run)
        self.restore_context(workflow, saved.get("context") or {})
        return workflow

    async def on_partitions(self, assigned: frozenset[tuple[str, int]]) -> None:
        owned = {partition for topic, partition in assigned if topic == self.request_topic}

        def mine(cid: uuid.UUID) -> bool:
            return self.bus.partition_of(self.request_topic, str(cid)) in owned

        for cid in [cid for cid in self.workflows if not mine(cid)]:
            self.workflows.pop(cid)  # its new owner loads it from the checkpoint written with the last batch
            self._dirty.pop(cid.int, None)
        rows: list[WorkflowRow] = []
        assert self.fsm is not None
        unfinished = sorted({s.state_name for s in self.fsm.fsm.states} - self.fsm.terminal_states)
        for state in unfinished if self.state_policy.durable else ():  # storage: memory: nothing to take over
            rows += await self.hold_store(functools.partial(self.store.list_workflows, state=state, limit=10**9))
        adopted = 0
        for row in rows:
            if (
                row.workflow_type != self.workflow_type
                or self.known(row.correlation_id)
                or not mine(row.correlation_id)
            ):
                continue
            adopted += 1
            workflow = self.restore(row)
            if workflow is None:
                self._fail_unrestorable(row)
                continue
            self.workflows[workflow.cid] = workflow
            if not self.bus.retains_messages and not self.takes_over:
                self._interrupted.append(workflow)
        if self._failed_rows:
            failed, self._failed_rows = self._failed_rows, []
            await self.hold_store(functools.partial(self.store.apply, WriteBatch(workflows=failed)))
        if adopted:
            _log.info("%s: took over %d unfinished workflow(s) of partitions %s", self.node_id, adopted, sorted(owned))
        if self.lifecycle is Lifecycle.RUNNING:
            await self.resume_interrupted()

    async def announce(self) -> None:
        await super().announce()
        await self.resume_interrupted()  # now that every node of this process consumes: nothing sent is lost

    async def resume_interrupted(self) -> None:
        """Fail, as interrupted, the running steps of workflows loaded from a bus that lost their messages (the
        step is retried while attempts remain); checkpoint whatever loading changed."""
        interrupted, self._interrupted = self._interrupted, []
        for workflow in interrupted:
            for run in list(workflow.steps.values()):
                if run.status is StepStatus.RUNNING:
                    await self.fail_step(workflow, run.step.step_name, "interrupted: the process running it stopped")
            await self.advance(workflow)
        await self.flush()

    def _fail_unrestorable(self, row: WorkflowRow) -> None:
        """A stored unfinished workflow without a usable checkpoint: fail it, with the reason, so it ends."""
        assert self.fsm is not None
        workflow = Workflow(row.correlation_id, self.steps)
        workflow.state, workflow.seq = row.current_state, row.state_seq
        workflow.context["error"] = "no checkpoint to resume from (stored by an older version of onex)"
        self.fsm.trigger(workflow, "fail", error=workflow.context["error"])
        self._failed_rows.append(self._row(workflow))  # no outcome can be built: its final row is written directly

    # engine
    async def advance(self, workflow: Workflow) -> None:
        """Start every step whose dependencies finished; finish the workflow when nothing is left to run."""
        # Plain loops, not any() and all() over generators: this runs twice for every workflow on the hot path.
        steps = workflow.steps
        runs = steps.values()
        progressed = True
        while progressed:
            progressed = False
            # An optional step that fails is SKIPPED, so FAILED always means a required step: once one has failed,
            # nothing else may start (deeper steps would otherwise see a skipped dependency and run).
            failed = _FAILED in [r.status for r in runs]
            for run in runs:
                if run.status is not _PENDING:
                    continue
                skip, ready = failed, True
                for name in run.step.depends_on:
                    status = steps[name].status
                    skip = skip or status is _FAILED
                    ready = ready and (status is _COMPLETED or status is _SKIPPED)
                if skip:
                    run.status, run.error = _SKIPPED, "not run: a required step failed"
                    progressed = True
                elif ready:
                    await self._start_step(workflow, run)
                    progressed = True
        self._dirty[workflow.cid.int] = workflow
        finished = True  # unless a step is still to run, and no required one failed
        for run in runs:
            if run.status is _FAILED and not run.step.optional:
                finished = True
                break
            if run.status is _PENDING or run.status is _RUNNING:
                finished = False
        if finished and self.workflows.pop(workflow.cid, None) is not None:
            self._finished[workflow.cid.int] = None
            if len(self._finished) > self.dedupe_window:
                self._finished.popitem(last=False)
            try:
                await self.on_workflow_done(workflow)
            except Exception:  # off the running ones already: a redelivery finds it finished, so it is said here
                _log.exception("%s: on_workflow_done failed: workflow %s has no outcome", self.node_id, workflow.cid)
                raise

    async def _start_step(self, workflow: Workflow, run: StepRun) -> None:
        run.status = _RUNNING
        run.attempts += 1
        run.started = self.clock.time()
        run.deadline = run.started + run.step.timeout_ms / 1000
        self._deadlines.push(workflow, run)
        try:
            result = await self.run_step(workflow, run)
        except OnexError as exc:
            self._finish_step(workflow, run, error=str(exc))
            return
        if result is not None and run.status is _RUNNING:
            self._finish_step(workflow, run, data=result)

    def _finish_step(
        self,
        workflow: Workflow,
        run: StepRun,
        *,
        data: dict[str, Any] | None = None,
        error: str | None = None,
        skipped: bool = False,
        final: bool = False,
    ) -> bool:
        """Record a step's outcome; returns True when the step should be retried instead (never when ``final``: an
        error no retry can mend, whose attempts stay those made)."""
        run.elapsed_ms = round(e * 1e6) / 1000 if (e := self.clock.time() - run.started) > 0 else 0.0  # round(ms, 3)
        run.deadline = None
        self._deadlines.spend()
        self._dirty[workflow.cid.int] = workflow
        if error is not None and not skipped and not final and run.attempts < run.step.max_attempts:
            run.status = _PENDING
            run.error = error
            return True
        if skipped or (error is not None and run.step.optional):
            run.status = _SKIPPED
        elif error is not None:
            run.status = _FAILED
        else:
            run.status = _COMPLETED
        run.error = error
        run.data = data or {}
        return False

    async def complete_step(self, workflow: Workflow, step_name: str, data: dict[str, Any]) -> None:
        run = workflow.steps[step_name]
        if run.status is _RUNNING:
            self._finish_step(workflow, run, data=data)
            await self.advance(workflow)

    async def fail_step(self, workflow: Workflow, step_name: str, error: str, *, retryable: bool = True) -> None:
        run = workflow.steps[step_name]
        if run.status is not StepStatus.RUNNING:
            return
        self._finish_step(workflow, run, error=error, final=not retryable)
        await self.advance(workflow)

    async def skip_step(self, workflow: Workflow, step_name: str, reason: str) -> dict[str, Any]:
        """For ``run_step``: mark the step skipped (e.g. an optional service is not configured)."""
        run = workflow.steps[step_name]
        self._finish_step(workflow, run, error=reason, skipped=True)
        return {"skipped": reason}

    async def _sweep(self) -> None:
        refused = False  # the last sweep's flush: what it kept (commands, outcomes) goes out with this one's
        while True:
            await self.clock.sleep(self.sweep_interval_s)
            now = self.clock.time()
            due = self._deadlines.due(now, self.workflows)
            try:
                await self._confirm_stored(now)
            except OnexError as exc:
                _log.warning("%s: could not publish unconfirmed outcomes again: %s", self.node_id, exc)
            if not due and not refused:
                continue
            try:
                await self._forget_finished_elsewhere([w for w, _ in due if w.adopted])
            except OnexError as exc:  # the store refused: the same deadlines are due again in a second
                for workflow, step_name in due:
                    self._deadlines.push(workflow, workflow.steps[step_name], at=now + 1.0)
                _log.warning("%s: could not look up workflows taken over, for step timeouts: %s", self.node_id, exc)
                continue
            try:
                for workflow, step_name in due:
                    run = workflow.steps[step_name]
                    # Still this process's, and still the attempt that timed out (not one a result began meanwhile).
                    if workflow.cid in self.workflows and run.deadline is not None and run.deadline <= now:
                        await self.fail_step(
                            workflow, step_name, f"step {step_name} timed out after {run.step.timeout_ms} ms"
                        )
                await self.flush()
                refused = False
            except OnexError as exc:  # the store or bus is away: flushed again at the next sweep
                refused = True
                _log.warning("%s: could not act on step timeouts: %s", self.node_id, exc)

    async def _forget_finished_elsewhere(self, adopted: Sequence[Workflow]) -> None:
        """Drop the workflows taken over from another process whose outcome that process published before it
        stopped (the store has their final state by now): their steps did not time out, their results were used."""
        if not adopted:
            return
        states = await self.hold_store(functools.partial(self.store.workflow_states, [w.cid for w in adopted]))
        assert self.fsm is not None
        for cid, state in states.items():
            if state in self.fsm.terminal_states:
                self.workflows.pop(cid, None)
