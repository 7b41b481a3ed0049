"""onex: a runtime for contract-driven ONEX nodes.

The public names are re-exported here; modules starting with ``_`` are implementations behind the seams.
"""

from __future__ import annotations

from onex.bus import BusStatistics, EventBus, MemoryBus, MemorySubscription, RetryPolicy, Subscription
from onex.clock import Clock, SystemClock
from onex.contracts import Contract, ContractSet, FsmSubcontract, NodeType, Step, load_contract, load_contracts
from onex.envelope import OnexEnvelopeV1, Payload, dlq_topic, topic_name
from onex.exceptions import (
    BusError,
    CircuitOpenError,
    ContractError,
    ContractIssue,
    LifecycleError,
    OnexError,
    PayloadError,
    StampError,
    StateError,
    StoreError,
    StoreUnavailable,
    TransitionError,
    WaitTimeout,
)
from onex.fsm import Entity, StateMachine, TransitionRecord
from onex.nodes import (
    ComputeNode,
    EffectNode,
    Event,
    EventCatalog,
    Lifecycle,
    Node,
    OrchestratorNode,
    ReducerNode,
    RegistryNode,
    StepRun,
    StepStatus,
    Workflow,
)
from onex.resilience import CircuitBreaker
from onex.runtime import Runtime
from onex.settings import Settings
from onex.state import KeyedState, StatePolicy
from onex.store import (
    AggregateWindowRow,
    BridgeStateRow,
    DeadLetterRow,
    EventLogRow,
    HeartbeatRow,
    NodeStateRow,
    RegistrationRow,
    StampRow,
    StepRow,
    Store,
    StoreHealth,
    TransitionRow,
    WorkflowRow,
    WriteBatch,
)
from onex.stores import open_store

__version__ = "0.1.0"

__all__ = [
    "AggregateWindowRow",
    "BridgeStateRow",
    "BusError",
    "BusStatistics",
    "CircuitBreaker",
    "CircuitOpenError",
    "Clock",
    "ComputeNode",
    "Contract",
    "ContractError",
    "ContractIssue",
    "ContractSet",
    "DeadLetterRow",
    "EffectNode",
    "Entity",
    "Event",
    "EventBus",
    "EventCatalog",
    "EventLogRow",
    "FsmSubcontract",
    "HeartbeatRow",
    "KeyedState",
    "Lifecycle",
    "LifecycleError",
    "MemoryBus",
    "MemorySubscription",
    "Node",
    "NodeStateRow",
    "NodeType",
    "OnexEnvelopeV1",
    "OnexError",
    "OrchestratorNode",
    "Payload",
    "PayloadError",
    "ReducerNode",
    "RegistrationRow",
    "RegistryNode",
    "RetryPolicy",
    "Runtime",
    "Settings",
    "StampError",
    "StampRow",
    "StateError",
    "StateMachine",
    "StatePolicy",
    "Step",
    "StepRow",
    "StepRun",
    "StepStatus",
    "Store",
    "StoreError",
    "StoreHealth",
    "StoreUnavailable",
    "Subscription",
    "SystemClock",
    "TransitionError",
    "TransitionRecord",
    "TransitionRow",
    "WaitTimeout",
    "Workflow",
    "WorkflowRow",
    "WriteBatch",
    "__version__",
    "dlq_topic",
    "load_contract",
    "load_contracts",
    "open_store",
    "topic_name",
]
