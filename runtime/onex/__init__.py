"""onex: a runtime for contract-driven ONEX nodes.

The public names are re-exported here; modules starting with ``_`` are implementations behind the seams.
"""

from __future__ import annotations

from onex.bus import EventBus, MemoryBus, RetryPolicy
from onex.contracts import Contract, ContractSet, NodeType, load_contract, load_contracts
from onex.envelope import OnexEnvelopeV1, dlq_topic, topic_name
from onex.exceptions import (
    BusError,
    ContractError,
    ContractIssue,
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
    Lifecycle,
    Node,
    OrchestratorNode,
    ReducerNode,
    RegistryNode,
)
from onex.runtime import Runtime
from onex.settings import Settings
from onex.store import Store, WriteBatch, open_store

__version__ = "0.1.0"

__all__ = [
    "BusError",
    "ComputeNode",
    "Contract",
    "ContractError",
    "ContractIssue",
    "ContractSet",
    "EffectNode",
    "Entity",
    "Event",
    "EventBus",
    "Lifecycle",
    "MemoryBus",
    "Node",
    "NodeType",
    "OnexEnvelopeV1",
    "OnexError",
    "OrchestratorNode",
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
    "StoreUnavailable",
    "TransitionError",
    "TransitionRecord",
    "WriteBatch",
    "__version__",
    "dlq_topic",
    "load_contract",
    "load_contracts",
    "open_store",
    "topic_name",
]
