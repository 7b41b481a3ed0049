"""The typed contract: pydantic models of a contract, its six subcontracts and an orchestrator's steps.

Every model is frozen and forbids unknown keys. The loader builds them only after the JSON Schema
(``onex/schemas/*.schema.json``) accepted the document, so a user never sees a pydantic error for a mistake the
schema describes with its file position; ``tests/test_contracts.py`` checks that schema and models agree on every
field, its type and whether it is required.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from onex._model_reads import PlainReads


class NodeType(StrEnum):
    EFFECT = "EFFECT"
    COMPUTE = "COMPUTE"
    REDUCER = "REDUCER"
    ORCHESTRATOR = "ORCHESTRATOR"
    REGISTRY = "REGISTRY"


class _Model(PlainReads):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Condition(_Model):
    """A guard in the three-token grammar ``field operator value`` (``value`` absent for exists/not_exists)."""

    expression: str
    condition_name: str | None = None
    required: bool = True


class FsmState(_Model):
    state_name: str
    description: str | None = None
    is_terminal: bool = False
    entry_actions: tuple[str, ...] = ()
    exit_actions: tuple[str, ...] = ()
    timeout_ms: int | None = None


class FsmTransition(_Model):
    transition_name: str
    from_state: str | tuple[str, ...]  # '*' = any state
    to_state: str
    trigger: str
    conditions: tuple[Condition, ...] = ()
    actions: tuple[str, ...] = ()


class FsmSubcontract(_Model):
    subcontract_type: Literal["fsm"] = "fsm"
    version: str
    state_machine_name: str | None = None
    description: str | None = None
    initial_state: str
    states: tuple[FsmState, ...]
    transitions: tuple[FsmTransition, ...]
    terminal_states: tuple[str, ...] = ()
    error_states: tuple[str, ...] = ()


class EventSpec(_Model):
    """One event a node consumes or publishes.

    ``payload_model`` names a pydantic model (``nodes.models:ModelStampRequest``);
    ``payload_schema`` is an inline JSON Schema compiled once at load. At most one of them.
    """

    event_name: str  # e.g. STAMP_REQUESTED
    handler: str | None = None  # consumes: the node method handling it
    topic_class: Literal["evt", "cmd", "qrs", "dlt", "rty", "aud", "met"] = "evt"
    event_version: int = 1
    description: str | None = None
    payload_model: str | None = None
    payload_schema: dict[str, Any] | None = None
    partition_key: str | None = None  # payload field used as the Kafka key (e.g. namespace)
    batch: bool = False  # consumes: the handler takes a batch of envelopes
    # consumes, with batch: the most events one call takes (default 500); a handler's entries share one subscription,
    # which takes the largest they give.
    max_batch: int | None = Field(None, ge=1)
    # consumes: the event enters the node graph from outside (the CLI, another system), so no contract in the
    # set has to publish it; without this flag an unpublished consumed event is a load error.
    external: bool = False
    # consumes: this event's own resilience, key by key over the contract's (``Resilience.over``).
    resilience: Resilience | None = None


class EventTypeSubcontract(_Model):
    subcontract_type: Literal["event_type"] = "event_type"
    version: str
    consumes: tuple[EventSpec, ...] = ()
    publishes: tuple[EventSpec, ...] = ()


class AggregationFunction(_Model):
    """One value computed per group and window: ``count`` counts records, the others read ``field``."""

    name: str  # output name
    function: Literal["count", "sum", "min", "max", "avg", "unique_count", "histogram"]
    field: str | None = None  # dotted path into the record; required by every function but count
    buckets: tuple[int, ...] = ()  # histogram upper bounds, ascending


class Window(_Model):
    """Tumbling or sliding windows by event time (``*_ms``) or by count per group (``*_items``), or sessions."""

    type: Literal["tumbling", "sliding", "session"] = "tumbling"
    size_ms: int | None = None
    size_items: int | None = None
    slide_ms: int | None = None
    slide_items: int | None = None
    gap_ms: int | None = None  # session: closes after this long without a record of its group
    grace_ms: int = 0  # time windows: final once the clock passed end + grace_ms; later records are late


_AggregationType = Literal[
    "NAMESPACE_GROUPING", "TIME_WINDOW", "FILE_TYPE_GROUPING", "SIZE_BUCKETS", "WORKFLOW_GROUPING", "CUSTOM"
]


class Aggregation(_Model):
    """One aggregation: records grouped by ``group_by`` then its type's key, optionally windowed.

    ``onex.aggregation.Aggregator`` computes it; ``checks.py`` (``check_aggregation``) says what combinations are valid.
    """

    name: str  # unique within the subcontract; names the persisted rows
    type: _AggregationType
    group_by: tuple[str, ...] = ()
    field: str | None = None  # the type's key field (default by type), or SIZE_BUCKETS' measured field
    buckets: tuple[int, ...] = ()  # SIZE_BUCKETS upper bounds, ascending
    method: str | None = None  # CUSTOM: the node method returning a record's key (None skips the record)
    where: str | None = None  # a three-token guard: only records matching it are aggregated
    functions: tuple[AggregationFunction, ...] = ()
    window: Window | None = None  # none: running totals per group


class AggregationSubcontract(_Model):
    subcontract_type: Literal["aggregation"] = "aggregation"
    version: str
    aggregations: tuple[Aggregation, ...]


class RoutingTarget(_Model):
    """A service a routed command may go to (``onex.routing``)."""

    name: str
    service: str  # node (contract) name; the first target reads the event's topic, others `<topic>.<service>`
    weight: int = 1  # round_robin: turns per cycle; hash: share of the keys
    condition: str | None = None  # three-token guard, for strategy=conditional; none: matches anything


class RoutingSubcontract(_Model):
    """Which target each command a node publishes goes to: by ``strategy``, else to an available fallback."""

    subcontract_type: Literal["routing"] = "routing"
    version: str
    strategy: Literal["service", "round_robin", "hash", "conditional"] = "service"
    hash_key: str | None = None  # strategy=hash: the command field hashed onto the targets
    targets: tuple[RoutingTarget, ...] = ()
    fallbacks: tuple[str, ...] = ()  # services, first available first, for an unavailable pick or no match


class StateManagementSubcontract(_Model):
    """Which state a node keeps, where, how it is versioned and when it is written (``onex.state``).

    What each node kind can keep is the node class's ``state_support`` (``onex.state.StateSupport``); ``onex
    validate`` rejects a field or a choice the class cannot honour, so nothing here is silently ignored.
    """

    subcontract_type: Literal["state_management"] = "state_management"
    version: str
    state_fields: tuple[str, ...] = ()  # kept across processes; the others start afresh in every process
    storage: Literal["memory", "store"] = "store"  # memory: dies with the process
    versioning: Literal["none", "monotonic"] = "monotonic"  # monotonic: a stale writer never goes backwards
    checkpoint: Literal["per_batch", "per_window", "interval_ms"] = "per_batch"
    interval_ms: int | None = None  # checkpoint: interval_ms: how often


@dataclass(frozen=True)
class StateSupport:
    """What a node class can do with a ``state_management`` subcontract (its ``state_support`` attribute).

    ``onex validate`` reports a contract that asks for more (an unknown field, a checkpoint the node cannot honour)
    at its position; the runtime then does exactly what the subcontract says. ``fields`` empty: any names (a node
    whose keyed state is ``Node.state``, a dict of fields per key).
    """

    fields: tuple[str, ...] = ()
    required: tuple[str, ...] = ()  # without these the node cannot resume its work
    storages: tuple[str, ...] = ("memory", "store")
    versionings: tuple[str, ...] = ("monotonic", "none")
    # per_window only where the node closes windows (the reducer): it calls ``Node.checkpoint`` when one closes.
    checkpoints: tuple[str, ...] = ("per_batch", "interval_ms")
    why: str = ""  # said when a choice is refused: why this node cannot honour the others


class CacheInvalidation(_Model):
    """An event that invalidates a cache (``onex.cache``): every entry, or (``key``, a template over the event's
    payload fields) the entries of every cached lookup whose key starts with ``key`` rendered from the payload."""

    event: str
    key: str | None = None


class CachingSubcontract(_Model):
    """What a node (or the gateway) caches and how: read by ``onex.cache.open_cache``; docs/contracts.md, caching."""

    subcontract_type: Literal["caching"] = "caching"
    version: str
    cached: tuple[str, ...] = ()
    key_template: str = "{key}"
    ttl_ms: int | None = None
    max_entries: int = 1024
    backend: str = "memory"
    # An event name is short for {event: NAME}: `invalidate_on: [NODE_INTROSPECTION]`.
    invalidate_on: tuple[str | CacheInvalidation, ...] = ()

    def invalidations(self) -> tuple[CacheInvalidation, ...]:
        """``invalidate_on`` with every bare event name as a ``CacheInvalidation`` of every entry."""
        return tuple(CacheInvalidation(event=i) if isinstance(i, str) else i for i in self.invalidate_on)


class Subcontracts(_Model):
    fsm: FsmSubcontract | None = None
    event_type: EventTypeSubcontract | None = None
    aggregation: AggregationSubcontract | None = None
    routing: RoutingSubcontract | None = None
    state_management: StateManagementSubcontract | None = None
    caching: CachingSubcontract | None = None


class RetrySettings(_Model):
    """Attempts of a failing handler and the pauses between them (``onex.resilience.RetryPolicy``)."""

    max_attempts: int = 3
    backoff_ms: int = 50  # the pause after the first failed attempt, doubling after each further one ...
    max_backoff_ms: int = 5_000  # ... up to this
    jitter: Literal["full", "none"] = "full"  # full: uniformly in [0, the pause); none: the pause itself


class CircuitBreakerSettings(_Model):
    """When an effect node stops calling out (``onex.resilience.CircuitBreaker``)."""

    failure_threshold: int = 5
    reset_timeout_ms: int = 30_000


class Resilience(_Model):
    """How a node's handlers fail: per call timeout, retries, circuit breaker, dead letters (docs/contracts.md)."""

    timeout_ms: int = 30_000
    retry: RetrySettings = RetrySettings()
    circuit_breaker: CircuitBreakerSettings = CircuitBreakerSettings()
    dead_letter: bool = True

    def over(self, base: Resilience) -> Resilience:
        """``base`` with the keys this block sets on top, key by key (a ``consumes`` entry's partial override):
        ``{retry: {max_attempts: 1}}`` over the contract's block changes only ``max_attempts``."""
        changes: dict[str, Any] = {}
        for name in self.model_fields_set:
            value = getattr(self, name)
            if isinstance(value, BaseModel):
                inner = {key: getattr(value, key) for key in value.model_fields_set}
                changes[name] = getattr(base, name).model_copy(update=inner)
            else:
                changes[name] = value
        return base.model_copy(update=changes)

    def events_over(self, consumes: Sequence[EventSpec], key: str | None = None) -> dict[str, Resilience]:
        """The block of each consumed event that has one of its own (setting ``key``, if given), over this one."""
        return {
            spec.event_name: spec.resilience.over(self)
            for spec in consumes
            if spec.resilience and (key is None or key in spec.resilience.model_fields_set)
        }


class ExecutionTime(_Model):
    """How long one handler call may take (a batch handler's call is one call), over the evaluation window."""

    target_ms: float | None = None  # the `percentile` of the window's call durations must not exceed it
    max_ms: float | None = None  # any one call of the window over it is a breach
    percentile: float = 95.0


class MemoryUsage(_Model):
    """The resident set size of the process hosting the node (every node of a process shares it)."""

    max_mb: float


class PerformanceRequirements(_Model):
    """Service-level objectives the runtime measures while the node runs (``onex.slo``; docs/contracts.md).

    A breach makes the node's heartbeat DEGRADED, logs ``slo_breach`` and sets ``onex_slo_breached``.
    """

    execution_time: ExecutionTime | None = None
    # Minimum items handled per second, judged only over a window the node was saturated in (``onex.slo``).
    throughput_items_per_s: float | None = None
    memory_usage: MemoryUsage | None = None
    window_ms: int = 60_000  # the rolling window every objective but memory (a reading now) is measured over


class Step(_Model):
    """An orchestrator workflow step (``config.steps`` of an orchestrator contract)."""

    step_name: str
    depends_on: tuple[str, ...] = ()
    timeout_ms: int = Field(30_000, ge=1)
    max_attempts: int = Field(1, ge=1)  # attempts in all, the first included
    optional: bool = False


class Contract(_Model):
    contract_version: str
    name: str
    version: str
    node_type: NodeType
    description: str = ""
    implementation: str | None = None  # "nodes.x.v1_0_0.node:NodeX"; default derived from name and version
    config: dict[str, Any] = Field(default_factory=dict)  # after ${ENV:default} interpolation
    subcontracts: Subcontracts = Subcontracts()
    resilience: Resilience = Resilience()
    performance_requirements: PerformanceRequirements = PerformanceRequirements()
    source: Path  # the file it was loaded from

    @property
    def implementation_path(self) -> str:
        if self.implementation:
            return self.implementation
        cls = "Node" + "".join(part.capitalize() for part in self.name.split("_"))
        return f"nodes.{self.name}.v{self.version.replace('.', '_')}.node:{cls}"

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.version.split("."))


Subcontract = (
    FsmSubcontract
    | EventTypeSubcontract
    | AggregationSubcontract
    | RoutingSubcontract
    | StateManagementSubcontract
    | CachingSubcontract
)

SUBCONTRACT_MODELS: dict[str, type[Subcontract]] = {
    "fsm": FsmSubcontract,
    "event_type": EventTypeSubcontract,
    "aggregation": AggregationSubcontract,
    "routing": RoutingSubcontract,
    "state_management": StateManagementSubcontract,
    "caching": CachingSubcontract,
}
SUBCONTRACT_TYPES: tuple[str, ...] = tuple(SUBCONTRACT_MODELS)


@dataclass(frozen=True)
class ContractSet:
    """The validated contracts of a project, sorted by name then version; several versions of a node coexist."""

    root: Path
    contracts: list[Contract]

    def __iter__(self) -> Iterator[Contract]:
        return iter(self.contracts)

    def __len__(self) -> int:
        return len(self.contracts)

    def names(self) -> list[str]:
        return sorted({contract.name for contract in self.contracts})

    def versions(self, name: str) -> list[str]:
        """The versions of ``name``, lowest first."""
        return [contract.version for contract in self.contracts if contract.name == name]

    def get(self, name: str, version: str | None = None) -> Contract:
        """The contract ``name`` at ``version``, or its highest version; ``LookupError`` names what exists."""
        candidates = [contract for contract in self.contracts if contract.name == name]
        if not candidates:
            raise LookupError(f"no contract named {name!r} (known: {', '.join(self.names()) or 'none'})")
        if version is None:
            return max(candidates, key=lambda contract: contract.version_tuple)
        for contract in candidates:
            if contract.version == version:
                return contract
        available = ", ".join(contract.version for contract in candidates)
        raise LookupError(f"contract {name!r} has no version {version} (available: {available})")
