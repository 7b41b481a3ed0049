"""Contracts: load, resolve ``$ref``, validate (JSON Schema + semantic checks) and type them.

``load_contracts(root)`` is the entry point: every ``contracts/**/*.yaml`` and ``subcontracts/**/*.yaml`` of a
project, checked as a whole, every problem raised at once as one :class:`~onex.exceptions.ContractError` whose
issues name file, line, column and a code (the codes are listed in ``loader.py``).

================  =====================================================================================================
module            what it holds
================  =====================================================================================================
``models``        the typed contract: ``Contract``, the six subcontracts, ``Step``, ``ContractSet``
``yaml``          safe YAML that remembers every node's file:line:column, and ``_Where`` to find them again
``schema``        the shipped JSON Schemas (``onex/schemas/*.schema.json``) and how their errors are worded
``imports``       importing ``implementation`` classes and ``payload_model`` models from the project's ``nodes``
``checks``        semantic checks (FSM, steps, payloads, handlers, what the node class reads, the set); ``plan_stages``
``grammar``       small languages inside contracts: guards (``parse_condition``), key templates, payload ``$ref``s
``aggregations``  what makes an aggregation meaningless (``aggregation_problems``)
``code``          node code read with ``ast``: triggers and events it names, the ``self`` attributes it uses
``loader``        the session that takes each file through the pipeline, and ``load_contract(s)``
================  =====================================================================================================

Everything public is re-exported here; import it from ``onex.contracts``. Names starting with ``_`` are shared
between these modules and private to the package. The package imports nothing of ``onex`` beyond
``onex.exceptions`` and ``onex.envelope``, so every other module may import it (``tests/test_layering.py``).
"""

from __future__ import annotations

from onex.contracts.aggregations import AGGREGATION_KEY_FIELDS, aggregation_problems
from onex.contracts.checks import CONTRACT_LANGUAGE_MAJOR, plan_stages
from onex.contracts.grammar import CONDITION_OPERATORS, Pattern, parse_condition, template_fields, unresolved_refs
from onex.contracts.imports import load_payload_model, resolve_implementation
from onex.contracts.loader import (
    ISSUE_CODES,
    MAX_FILE_BYTES,
    find_contract_files,
    find_subcontract_files,
    load_contract,
    load_contracts,
    load_subcontract,
)
from onex.contracts.models import (
    SUBCONTRACT_MODELS,
    SUBCONTRACT_TYPES,
    Aggregation,
    AggregationFunction,
    AggregationSubcontract,
    CacheInvalidation,
    CachingSubcontract,
    CircuitBreakerSettings,
    Condition,
    Contract,
    ContractSet,
    EventSpec,
    EventTypeSubcontract,
    ExecutionTime,
    FsmState,
    FsmSubcontract,
    FsmTransition,
    MemoryUsage,
    NodeType,
    PerformanceRequirements,
    Resilience,
    RetrySettings,
    RoutingSubcontract,
    RoutingTarget,
    StateManagementSubcontract,
    StateSupport,
    Step,
    Subcontract,
    Subcontracts,
    Window,
)
from onex.contracts.schema import bundled_schema, schemas
from onex.contracts.yaml import MAX_YAML_NODES

__all__ = [
    "AGGREGATION_KEY_FIELDS",
    "CONDITION_OPERATORS",
    "CONTRACT_LANGUAGE_MAJOR",
    "ISSUE_CODES",
    "MAX_FILE_BYTES",
    "MAX_YAML_NODES",
    "SUBCONTRACT_MODELS",
    "SUBCONTRACT_TYPES",
    "Aggregation",
    "AggregationFunction",
    "AggregationSubcontract",
    "CacheInvalidation",
    "CachingSubcontract",
    "CircuitBreakerSettings",
    "Condition",
    "Contract",
    "ContractSet",
    "EventSpec",
    "EventTypeSubcontract",
    "ExecutionTime",
    "FsmState",
    "FsmSubcontract",
    "FsmTransition",
    "MemoryUsage",
    "NodeType",
    "Pattern",
    "PerformanceRequirements",
    "Resilience",
    "RetrySettings",
    "RoutingSubcontract",
    "RoutingTarget",
    "StateManagementSubcontract",
    "StateSupport",
    "Step",
    "Subcontract",
    "Subcontracts",
    "Window",
    "aggregation_problems",
    "bundled_schema",
    "find_contract_files",
    "find_subcontract_files",
    "load_contract",
    "load_contracts",
    "load_payload_model",
    "load_subcontract",
    "parse_condition",
    "plan_stages",
    "resolve_implementation",
    "schemas",
    "template_fields",
    "unresolved_refs",
]
