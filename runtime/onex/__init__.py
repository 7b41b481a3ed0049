"""onex: a runtime for contract-driven ONEX nodes.

The public names are re-exported here; modules starting with ``_`` are implementations behind the seams.
"""

from __future__ import annotations

from onex.bus import BusStatistics, EventBus, MemoryBus, RetryPolicy
from onex.contracts import Contract, ContractSet, NodeType, load_contract, load_contracts
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
    StoreError,
    StoreUnavailable,
    TransitionError,
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
)
from onex.runtime import Runtime
from onex.settings import Settings
from onex.store import Store, StoreHealth, WorkflowRow, WriteBatch, open_store

__version__ = "0.1.0"

__all__ = [
    "BusError",
    "BusStatistics",
    "CircuitOpenError",
    "ComputeNode",
    "Contract",
    "ContractError",
    "ContractIssue",
    "ContractSet",
    "EffectNode",
    "Entity",
    "Event",
    "EventBus",
    "EventCatalog",
    "Lifecycle",
    "LifecycleError",
    "MemoryBus",
    "Node",
    "NodeType",
    "OnexEnvelopeV1",
    "OnexError",
    "OrchestratorNode",
    "Payload",
    "PayloadError",
    "ReducerNode",
    "RegistryNode",
    "RetryPolicy",
    "Runtime",
    "Settings",
    "StampError",
    "StateMachine",
    "Store",
    "StoreError",
    "StoreHealth",
    "StoreUnavailable",
    "TransitionError",
    "TransitionRecord",
    "WorkflowRow",
    "WriteBatch",
    "__version__",
    "dlq_topic",
    "load_contract",
    "load_contracts",
    "open_store",
    "topic_name",
]
