"""Contracts: load, resolve ``$ref``, validate (JSON Schema + semantic checks) and type them.

Each file goes through one pipeline; a stage that fails stops that file (later stages would only restate the
error) while every other file is still checked, and all problems are raised together as one
:class:`~onex.exceptions.ContractError`::

    size limit -> safe YAML, every key, value and item keeping its file:line:column -> ``$ref`` resolution
    -> JSON Schema (``runtime/onex/schemas/*.schema.json``, Draft 2020-12) -> ``${ENV_VAR:default}`` in ``config``
    -> pydantic models -> semantic checks (FSM, guards, implementation, handlers) -> set checks (events, versions)

A ``$ref`` is project-root-relative (then relative to the referring file) or, with a ``./``/``../`` prefix,
file-relative, and must resolve, symlinks resolved, to a file under the project root: ``../../etc/passwd``, an
absolute path elsewhere or a link leading out is an issue at the ``$ref`` (``outside-root``), and the file is
never opened, so no message can quote what is outside the project. The same holds for a file found by walking
``contracts/``, ``subcontracts/`` or a directory given (a link to ``/etc``, say). Files given to the loader
explicitly may live anywhere; what they reference may not.

Issue codes (``ContractIssue.code``)::

    io                         the file cannot be read
    too-large                  the file is larger than ``max_bytes`` (1 MiB by default)
    yaml                       not well-formed YAML, a duplicate key, a non-string key, an unsupported tag
    yaml-bomb                  alias expansion beyond ``MAX_YAML_NODES`` nodes, recursive aliases, absurd nesting
    ref / ref-cycle            a ``$ref`` target that does not exist (or cannot be merged) / a ``$ref`` loop
    outside-root               a ``$ref``, or a file found by walking a directory, that resolves (symlinks resolved)
                               outside the project root; it is never read
    schema                     the JSON Schema rejects a node (every error, each at its own node)
    env                        ``${VAR}`` with VAR unset and no default, or a malformed placeholder
    fsm-no-initial             ``initial_state`` missing or not a declared state
    fsm-undeclared-state       a transition, ``terminal_states`` or ``error_states`` names an undeclared state
    fsm-duplicate-state        two states with one name
    fsm-unreachable            a state no path of transitions reaches from ``initial_state``
    fsm-terminal-outgoing      a terminal state is the ``from_state`` of a transition ('*' does not count)
    fsm-condition              a guard outside the grammar ``field operator value`` (see ``parse_condition``)
    routing-condition          the same, in a routing target's ``condition``
    event-payload              ``payload_model`` and ``payload_schema`` both set, an invalid ``payload_schema``,
                               or a ``payload_model`` that is not a pydantic model under ``nodes``
    implementation-forbidden   ``implementation`` outside the project's ``nodes`` package (checked always)
    implementation-missing     the implementation module or class cannot be imported
    handler-missing            a consumes handler, entry/exit action or transition action the class lacks
    steps                      an orchestrator's ``config.steps``: a malformed step, an unknown dependency, a cycle
    event-unpublished          a consumed event (name, version) that no contract in the set publishes
    duplicate-version          two contracts with one (name, version), reported at the second

Importing implementations. ``implementation`` must name ``nodes.<...>:<Class>`` in the project's own ``nodes``
package, and the project is the ``root`` passed in, not whatever ``nodes`` happens to be importable. The first
root whose ``nodes/`` package owns the name ``nodes`` in this process (the usual case: ``onex`` run from the
project) is imported normally, after putting the root at the front of ``sys.path``, so classes are the same
objects everywhere. Any other root (a second project, a test corpus) is imported under a private parent package,
``_onex_project_<hash of root>.nodes...``, whose ``__path__`` is that root: module identity stays per root,
relative imports inside it work, and ``sys.modules['nodes']`` is never purged or replaced (that would break
every class already imported from it). The one limitation: under such an alias, a node module's *absolute*
``import nodes.x`` still means the canonical project's package; node modules should import their siblings
relatively.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.machinery
import importlib.resources
import importlib.util
import json
import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, TypeVar

import jsonschema.exceptions
import yaml
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from onex.envelope import RUNTIME_EVENTS
from onex.exceptions import ContractError, ContractIssue


class NodeType(StrEnum):
    EFFECT = "EFFECT"
    COMPUTE = "COMPUTE"
    REDUCER = "REDUCER"
    ORCHESTRATOR = "ORCHESTRATOR"
    REGISTRY = "REGISTRY"


class _Model(BaseModel):
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
    # consumes: the event enters the node graph from outside (the CLI, another system), so no contract in the
    # set has to publish it; without this flag an unpublished consumed event is a load error.
    external: bool = False


class EventTypeSubcontract(_Model):
    subcontract_type: Literal["event_type"] = "event_type"
    version: str
    consumes: tuple[EventSpec, ...] = ()
    publishes: tuple[EventSpec, ...] = ()


class AggregationFunction(_Model):
    name: str  # output name
    function: Literal["count", "sum", "min", "max", "avg", "unique_count", "histogram"]
    field: str | None = None
    buckets: tuple[int, ...] = ()  # histogram upper bounds


class Window(_Model):
    type: Literal["tumbling", "sliding", "session"] = "tumbling"
    size_ms: int | None = None
    size_items: int | None = None
    slide_ms: int | None = None
    gap_ms: int | None = None


class AggregationSubcontract(_Model):
    subcontract_type: Literal["aggregation"] = "aggregation"
    version: str
    group_by: tuple[str, ...] = ()
    functions: tuple[AggregationFunction, ...] = ()
    window: Window = Window()


class RoutingTarget(_Model):
    name: str
    service: str  # node name
    weight: int = 1
    condition: str | None = None  # three-token guard, for strategy=conditional


class RoutingSubcontract(_Model):
    subcontract_type: Literal["routing"] = "routing"
    version: str
    strategy: Literal["service", "round_robin", "hash", "conditional"] = "service"
    hash_key: str | None = None
    targets: tuple[RoutingTarget, ...] = ()
    fallbacks: tuple[str, ...] = ()


class StateManagementSubcontract(_Model):
    subcontract_type: Literal["state_management"] = "state_management"
    version: str
    state_fields: tuple[str, ...] = ()
    storage: Literal["memory", "store"] = "memory"
    table: str | None = None
    versioning: Literal["none", "monotonic"] = "none"


class CachingSubcontract(_Model):
    subcontract_type: Literal["caching"] = "caching"
    version: str
    cached: tuple[str, ...] = ()
    key_template: str = "{key}"
    ttl_ms: int | None = None
    max_entries: int = 1024


class Subcontracts(_Model):
    fsm: FsmSubcontract | None = None
    event_type: EventTypeSubcontract | None = None
    aggregation: AggregationSubcontract | None = None
    routing: RoutingSubcontract | None = None
    state_management: StateManagementSubcontract | None = None
    caching: CachingSubcontract | None = None


class RetrySettings(_Model):
    max_attempts: int = 3
    backoff_ms: int = 50


class CircuitBreakerSettings(_Model):
    failure_threshold: int = 5
    reset_timeout_ms: int = 30_000


class Resilience(_Model):
    timeout_ms: int = 30_000
    retry: RetrySettings = RetrySettings()
    circuit_breaker: CircuitBreakerSettings = CircuitBreakerSettings()
    dead_letter: bool = True


class Step(_Model):
    """An orchestrator workflow step (``config.steps`` of an orchestrator contract)."""

    step_name: str
    depends_on: tuple[str, ...] = ()
    timeout_ms: int = 30_000
    max_attempts: int = 1
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
    performance_requirements: dict[str, Any] = Field(default_factory=dict)
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

MAX_FILE_BYTES = 1024 * 1024
# Counted with every alias expanded: a real contract has a few hundred nodes, a billion-laughs file billions.
MAX_YAML_NODES = 100_000

# Grouped by stage: reading a file, the FSM, events and implementations, the set as a whole.
ISSUE_CODES: frozenset[str] = (
    frozenset({"io", "too-large", "yaml", "yaml-bomb", "ref", "ref-cycle", "outside-root", "schema", "env"})
    | frozenset({"fsm-no-initial", "fsm-undeclared-state", "fsm-duplicate-state", "fsm-unreachable"})
    | frozenset({"fsm-terminal-outgoing", "fsm-condition", "routing-condition", "event-payload"})
    | frozenset({"implementation-forbidden", "implementation-missing", "handler-missing"})
    | frozenset({"event-unpublished", "duplicate-version", "steps"})
)


# --- JSON Schemas -----------------------------------------------------------------------------------------------

_SCHEMA_NAMES: tuple[str, ...] = ("contract", *SUBCONTRACT_TYPES)


@cache
def _schema_text(name: str) -> str:
    return (importlib.resources.files("onex") / "schemas" / f"{name}.schema.json").read_text(encoding="utf-8")


def schemas() -> dict[str, dict[str, Any]]:
    """Every shipped JSON Schema by name: ``contract`` and one per subcontract type (``fsm``, ``routing``, ...).

    Each is the file ``<name>.schema.json``; the contract schema refers to the others by those file names, so
    written side by side in one directory they resolve for editors. ``bundled_schema()`` is the one-file form.
    """
    return {name: json.loads(_schema_text(name)) for name in _SCHEMA_NAMES}


def bundled_schema() -> dict[str, Any]:
    """The contract schema with every subcontract schema embedded, for tools that take a single file.

    Each embedded schema keeps its file name as ``$id``, so the contract schema's ``$ref: fsm.schema.json``
    resolves to the embedded copy without any rewriting.
    """
    all_schemas = schemas()
    bundle = all_schemas.pop("contract")
    defs = bundle.setdefault("$defs", {})
    for name, schema in all_schemas.items():
        schema.pop("$schema", None)
        defs[f"{name}.schema.json"] = {"$id": f"{name}.schema.json", **schema}
    return bundle


@cache
def _validator(name: str) -> Any:
    resources = [
        (f"{other}.schema.json", Resource.from_contents(json.loads(_schema_text(other)), DRAFT202012))
        for other in _SCHEMA_NAMES
    ]
    registry: Registry[Any] = Registry().with_resources(resources)
    return Draft202012Validator(json.loads(_schema_text(name)), registry=registry)


# Regular expressions the schemas use, with the words to say when a value does not match one.
_PATTERN_HINTS = {
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$": "a version MAJOR.MINOR.PATCH, e.g. 1.0.0",
    r"^[a-z][a-z0-9_]*$": "a lowercase identifier (a-z, 0-9, _), e.g. stamping_effect",
}


# --- YAML with positions ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Pos:
    """Where a node starts: the file it was read from (absolute), 1-based line and column."""

    file: Path
    line: int
    column: int


class _Map(dict[str, Any]):
    """A YAML mapping that remembers where it, each of its keys and each of its values start.

    A plain ``dict`` for everyone else (jsonschema, pydantic), so positions cost nothing downstream.
    """

    __slots__ = ("key_pos", "pos", "value_pos")

    def __init__(self, pos: _Pos) -> None:
        super().__init__()
        self.pos = pos
        self.key_pos: dict[str, _Pos] = {}
        self.value_pos: dict[str, _Pos] = {}

    def put(self, key: str, value: Any, key_pos: _Pos, value_pos: _Pos) -> None:
        self[key] = value
        self.key_pos[key] = key_pos
        self.value_pos[key] = value_pos


class _Seq(list[Any]):
    """A YAML sequence that remembers where it and each of its items start."""

    __slots__ = ("item_pos", "pos")

    def __init__(self, pos: _Pos) -> None:
        super().__init__()
        self.pos = pos
        self.item_pos: list[_Pos] = []

    def add(self, value: Any, pos: _Pos) -> None:
        self.append(value)
        self.item_pos.append(pos)


def _node_pos(value: Any, fallback: _Pos) -> _Pos:
    # A container's own start is more precise than its parent's record of it once `$ref` swapped it in from
    # another file; scalars only have the parent's record.
    return value.pos if isinstance(value, _Map | _Seq) else fallback


_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` building ``_Map``/``_Seq`` with positions; JSON-compatible values only.

    Dates stay strings (the timestamp resolver is dropped) and ``!!set``, ``!!omap``, ``!!pairs``, ``!!binary``
    are refused, because everything loaded must survive JSON Schema validation and ``onex schema`` editors.
    """

    # Copy the class-level table so that dropping timestamps does not change yaml.SafeLoader for everyone else.
    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, text: str, file: Path) -> None:
        super().__init__(text)
        self.file = file

    def pos(self, mark: yaml.Mark | None) -> _Pos:
        if mark is None:  # only nodes built by hand lack marks
            return _Pos(self.file, 1, 1)
        return _Pos(self.file, mark.line + 1, mark.column + 1)


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Iterator[_Map]:
    data = _Map(loader.pos(node.start_mark))
    # Yield the empty container first, as SafeConstructor does, so that aliases to it resolve while it fills.
    yield data
    explicit = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
    loader.flatten_mapping(node)  # `<<: *base` entries now come first; explicit keys after them win
    merged = len(node.value) - explicit
    seen: set[str] = set()
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"mapping keys must be strings, found {key!r} (quote it)", key_node.start_mark
            )
        if index >= merged:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        value = loader.construct_object(value_node)
        data.put(key, value, loader.pos(key_node.start_mark), loader.pos(value_node.start_mark))


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> Iterator[_Seq]:
    data = _Seq(loader.pos(node.start_mark))
    yield data
    for item_node in node.value:
        data.add(loader.construct_object(item_node), loader.pos(item_node.start_mark))


def _refuse(loader: _Loader, node: yaml.Node) -> Any:
    raise yaml.constructor.ConstructorError(
        None, None, f"tag {node.tag} is not supported in contracts (JSON-compatible YAML only)", node.start_mark
    )


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)
for _tag in ("set", "omap", "pairs", "binary", "timestamp"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse)


@dataclass(frozen=True, slots=True)
class _Document:
    """A parsed file: its data (``_Map``/``_Seq``/scalars) and where that data starts."""

    data: Any
    pos: _Pos


class _Problem(Exception):
    """One issue that ends the processing of a file; raised inside a stage, reported by the session."""

    def __init__(self, pos: _Pos, code: str, message: str) -> None:
        super().__init__(message)
        self.pos = pos
        self.code = code
        self.message = message


def _expanded_size(root: yaml.Node, limit: int, loader: _Loader) -> None:
    """Raise ``yaml-bomb`` when the document, with every alias expanded, has more than ``limit`` nodes.

    PyYAML shares one node per anchor, so parsing a billion-laughs file is cheap and the explosion only happens
    when something walks the result (``$ref`` resolution, JSON Schema, pydantic). Counting sizes memoised per
    node measures the expansion without performing it; the first node (in post-order) over the limit is named.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        known = sizes.get(key)
        if known is not None:
            return known
        if key in active:
            raise _Problem(loader.pos(node.start_mark), "yaml-bomb", "recursive alias: a node contains itself")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        sizes[key] = total
        if total > limit:
            raise _Problem(
                loader.pos(node.start_mark),
                "yaml-bomb",
                f"alias expansion makes this node {total:,} nodes large (limit {limit:,}): refusing a YAML bomb",
            )
        return total

    size(root)


def _parse_yaml(text: str, file: Path, max_nodes: int) -> _Document:
    loader = _Loader(text, file)
    try:
        node = loader.get_single_node()
        if node is None:
            return _Document(None, _Pos(file, 1, 1))
        _expanded_size(node, max_nodes, loader)
        return _Document(loader.construct_document(node), loader.pos(node.start_mark))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = ", ".join(part for part in (exc.context, exc.problem) if part) or "invalid YAML"
        raise _Problem(loader.pos(mark), "yaml", detail) from None
    except yaml.YAMLError as exc:  # unmarked (e.g. a reader error on a control character)
        raise _Problem(_Pos(file, 1, 1), "yaml", str(exc)) from None
    except RecursionError:
        raise _Problem(_Pos(file, 1, 1), "yaml-bomb", "nesting too deep to parse") from None
    finally:
        loader.dispose()


def _plain(value: Any) -> Any:
    """Positions off: plain dicts and lists, for the typed models and for callers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _label(steps: Sequence[str | int]) -> str:
    out = ""
    for step in steps:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def _locate(data: Any, start: _Pos, steps: Sequence[str | int], *, key: bool = False) -> tuple[_Pos, str]:
    """The position of the node at ``steps`` below ``data`` (or of its key), and a label naming it.

    Walks as far as the path exists, so a missing node is reported at its nearest existing parent. The label
    restarts whenever the walk enters another file's content, so a message about a node is the same whether
    its file was validated on its own or through a contract's ``$ref``, and identical issues collapse.
    """
    node, pos = data, start
    label: list[str | int] = []
    for index, step in enumerate(steps):
        if isinstance(node, _Map) and isinstance(step, str) and step in node:
            if key and index == len(steps) - 1:
                return node.key_pos[step], _label([*label, step])
            child, child_pos = node[step], node.value_pos[step]
        elif isinstance(node, _Seq) and isinstance(step, int) and 0 <= step < len(node):
            child, child_pos = node[step], node.item_pos[step]
        else:
            break
        child_pos = _node_pos(child, child_pos)
        if child_pos.file != pos.file:
            label = []
        else:
            label.append(step)
        node, pos = child, child_pos
    return pos, _label(label)


@dataclass(frozen=True, slots=True)
class _Where:
    """A view of a loaded document below ``prefix``: turns model paths back into file positions."""

    data: Any
    start: _Pos
    prefix: tuple[str | int, ...] = ()

    def child(self, *steps: str | int) -> _Where:
        return _Where(self.data, self.start, self.prefix + steps)

    def at(self, *steps: str | int, key: bool = False) -> _Pos:
        return _locate(self.data, self.start, self.prefix + steps, key=key)[0]

    def locate(self, steps: Sequence[str | int], *, key: bool = False) -> tuple[_Pos, str]:
        return _locate(self.data, self.start, self.prefix + tuple(steps), key=key)


# --- guards -----------------------------------------------------------------------------------------------------

CONDITION_OPERATORS: frozenset[str] = frozenset(
    {"equals", "not_equals", "==", "!=", "greater_than", "less_than", ">=", "<=", ">", "<"}
    | {"min_length", "max_length", "exists", "not_exists", "in", "not_in", "contains", "matches"}
)
_UNARY_OPERATORS = frozenset({"exists", "not_exists"})
_FIELD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*$")


def parse_condition(expression: str) -> tuple[str, str, str | None]:
    """Split a guard ``field operator value`` (``field exists``) into its tokens; ``ValueError`` says why not.

    The grammar is ONEX's: whitespace-separated tokens, never evaluated as Python. Fields are dotted names
    into the entity's context; names starting with ``_`` are private and refused. A ``matches`` value must be
    a valid regular expression.
    """
    tokens = expression.split()
    if len(tokens) == 2 and tokens[1] in _UNARY_OPERATORS:
        field_name, operator, value = tokens[0], tokens[1], None
    elif len(tokens) == 2 and tokens[1] in CONDITION_OPERATORS:
        raise ValueError(f"operator {tokens[1]!r} needs a value: `field {tokens[1]} value`")
    elif len(tokens) != 3:
        raise ValueError(f"expected `field operator value` (three tokens), found {len(tokens)}")
    else:
        field_name, operator, value = tokens
        if operator in _UNARY_OPERATORS:
            raise ValueError(f"operator {operator!r} takes no value: `field {operator}`")
    if operator not in CONDITION_OPERATORS:
        raise ValueError(f"unknown operator {operator!r}; expected one of {', '.join(sorted(CONDITION_OPERATORS))}")
    if field_name.startswith("_"):
        raise ValueError(f"field {field_name!r} is private: names starting with '_' cannot be tested")
    if not _FIELD_RE.match(field_name):
        raise ValueError(f"field {field_name!r} is not a dotted name")
    if operator == "matches" and value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from None
    return field_name, operator, value


# --- importing implementations ----------------------------------------------------------------------------------

_IMPLEMENTATION_RE = re.compile(r"^nodes(\.[A-Za-z_][A-Za-z0-9_]*)+:[A-Za-z_][A-Za-z0-9_]*$")
# Payload models may also come from the runtime itself (onex.envelope's models for the events every node publishes).
_PAYLOAD_MODEL_RE = re.compile(r"^(nodes|onex)(\.[A-Za-z_][A-Za-z0-9_]*)+:[A-Za-z_][A-Za-z0-9_]*$")
_import_lock = threading.Lock()


def _owns_nodes(locations: Iterable[str] | None, root: Path) -> bool:
    wanted = os.path.realpath(root / "nodes")
    return any(os.path.realpath(location) == wanted for location in locations or ())


def _package_prefix(root: Path) -> str:
    """The module-name prefix under which ``root``'s ``nodes`` package is imported (see the module docstring)."""
    existing = sys.modules.get("nodes")
    if existing is not None:
        if _owns_nodes(getattr(existing, "__path__", None), root):
            return ""
    elif (root / "nodes").is_dir():
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        spec = importlib.util.find_spec("nodes")
        if spec is not None and _owns_nodes(spec.submodule_search_locations, root):
            return ""
    alias = "_onex_project_" + hashlib.sha256(str(root).encode()).hexdigest()[:12]
    if alias not in sys.modules:
        spec = importlib.machinery.ModuleSpec(alias, None, is_package=True)
        spec.submodule_search_locations = [str(root)]
        sys.modules[alias] = importlib.util.module_from_spec(spec)
    return alias + "."


def _import_module(module_name: str, root: Path) -> ModuleType:
    root = Path(os.path.realpath(root))
    with _import_lock:
        # Files written since the last import (tests, generated nodes) are invisible to cached directory listings.
        importlib.invalidate_caches()
        prefix = _package_prefix(root)
        try:
            return importlib.import_module(prefix + module_name)
        except ModuleNotFoundError as exc:
            missing = (exc.name or "?").removeprefix(prefix)
            raise LookupError(f"no module named {missing!r}") from None
        except Exception as exc:
            # Node modules are the user's code: whatever breaks on import (SyntaxError, a failing top-level
            # statement) means the implementation cannot be loaded, and the user needs to see which error.
            raise LookupError(f"importing {module_name} failed: {type(exc).__name__}: {exc}") from None


def _import_object(spec: str, root: Path) -> Any:
    module_name, _, attribute = spec.partition(":")
    if module_name.split(".")[0] == "onex":  # the installed runtime, not part of the project root
        module = importlib.import_module(module_name)
    else:
        module = _import_module(module_name, root)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise LookupError(f"module {module_name} defines no {attribute!r}") from None


def load_payload_model(spec: str, *, root: Path) -> Any:
    """The object a ``payload_model`` names (``nodes.<...>:Model`` under ``root``, or ``onex.<...>:Model``), imported
    the same root-aware way as implementations; ``LookupError`` says why it cannot be had."""
    if not _PAYLOAD_MODEL_RE.match(spec):
        raise LookupError(f"{spec!r}: payload models must be 'nodes.<...>:Class' or 'onex.<...>:Class'")
    try:
        return _import_object(spec, root)
    except ImportError as exc:
        raise LookupError(f"cannot import {spec!r}: {exc}") from None


def _implementation_problem(spec: str) -> str | None:
    if _IMPLEMENTATION_RE.match(spec):
        return None
    return (
        f"implementation {spec!r} is not allowed: it must name a class in the project's nodes package, "
        "`nodes.<...>:<Class>`"
    )


def _load_class(spec: str, root: Path) -> type:
    """The class ``spec`` names, or ``LookupError`` saying why it cannot be had."""
    obj = _import_object(spec, root)
    if not isinstance(obj, type):
        raise LookupError(f"{spec.partition(':')[2]!r} is a {type(obj).__name__}, not a class")
    return obj


def resolve_implementation(contract: Contract, *, root: Path | str) -> type:
    """Import the class implementing ``contract`` from ``root``'s ``nodes`` package.

    Raises ``ContractError`` with code ``implementation-forbidden`` (not ``nodes.<...>:<Class>``) or
    ``implementation-missing`` (module or class not importable). The issue points at the contract file's first
    line: the loader, which knows positions, has normally reported these already.
    """
    root = Path(root)
    spec = contract.implementation_path
    path = _display(contract.source, Path(os.path.abspath(root)), {})
    problem = _implementation_problem(spec)
    if problem is not None:
        raise ContractError([ContractIssue(path, 1, 1, "implementation-forbidden", problem)])
    try:
        return _load_class(spec, root)
    except LookupError as exc:
        raise ContractError(
            [ContractIssue(path, 1, 1, "implementation-missing", f"implementation {spec} not found: {exc}")]
        ) from None


# --- the loading session ----------------------------------------------------------------------------------------

_M = TypeVar("_M", bound=BaseModel)

# `${NAME}` / `${NAME:default}`; `$${` is a literal `${`; a `${` without its `}` is an error, not text.
_ENV_RE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_ENV_NAME_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::(.*))?$", re.DOTALL)


def _display(file: Path, root: Path, given: Mapping[Path, str]) -> str:
    if file in given:
        return given[file]
    try:
        return file.relative_to(root).as_posix()
    except ValueError:
        return str(file)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(_plain(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


_JSON_TYPES = {dict: "mapping", list: "list", str: "string", bool: "boolean", int: "integer", float: "number"}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    for python_type, name in _JSON_TYPES.items():
        if isinstance(value, python_type):
            return name
    return type(value).__name__


# JSON Schema's words for what YAML authors call mappings and lists.
_YAML_WORDS = {"object": "mapping", "array": "list"}


def _schema_message(error: Any) -> str:
    """A one-line, position-free description of a JSON Schema error (the position is reported next to it)."""
    validator, instance, expected = error.validator, error.instance, error.validator_value
    if validator == "type":
        names: list[str] = expected if isinstance(expected, list) else [expected]
        wanted = " or ".join(_YAML_WORDS.get(name, name) for name in names)
        return f"expected {wanted}, found {_type_name(instance)} {_short(instance)}"
    if validator == "enum":
        return f"{_short(instance)} is not one of {', '.join(map(str, expected))}"
    if validator == "const":
        return f"expected {expected!r}, found {_short(instance)}"
    if validator == "pattern":
        return f"{_short(instance)} is not {_PATTERN_HINTS.get(expected, f'matching {expected!r}')}"
    if validator == "minItems" and expected == 1:
        return "must not be empty"
    if validator == "minLength" and expected == 1:
        return "must not be an empty string"
    if validator in ("anyOf", "oneOf") and "description" in error.schema:
        return f"{_short(instance)} is not valid here: {error.schema['description']}"
    message: str = error.message
    return message if len(message) <= 200 else message[:197] + "..."


@dataclass
class _Loaded:
    contract: Contract
    where: _Where


@dataclass
class _Session:
    """One load: the root, settings, every issue found, and the parse cache shared by all files."""

    root: Path
    env: Mapping[str, str]
    max_bytes: int
    check_implementations: bool
    issues: list[ContractIssue] = field(default_factory=list)
    given: dict[Path, str] = field(default_factory=dict)
    _documents: dict[str, _Document | None] = field(default_factory=dict)

    # -- reporting

    def report(self, pos: _Pos, code: str, message: str) -> None:
        self.issues.append(
            ContractIssue(_display(pos.file, self.root, self.given), pos.line, pos.column, code, message)
        )

    def raise_if_issues(self) -> None:
        if self.issues:
            # The same node can be checked twice (a subcontract on its own and through a contract's `$ref`);
            # _locate's labels make those issues identical, so they collapse here.
            raise ContractError(list(dict.fromkeys(self.issues)))

    def file(self, path: Path | str) -> Path:
        """``path`` as the session names it: absolute, lexically normalised, relative ones taken from the root."""
        candidate = Path(path)
        # Relative paths are the root's unless they exist only relative to the working directory.
        if not candidate.is_absolute() and ((self.root / candidate).exists() or not candidate.exists()):
            candidate = self.root / candidate
        absolute = Path(os.path.abspath(candidate))
        if not absolute.is_relative_to(self.root):  # shown as given, since no root-relative name exists
            self.given.setdefault(absolute, str(path))
        return absolute

    def confined(self, files: Iterable[Path], walked: Path) -> list[Path]:
        """``files`` found by walking ``walked``, less those leading (through links) out of both it and the root,
        which are reported and never read."""
        bounds = {os.path.realpath(self.root), os.path.realpath(walked)}
        kept: list[Path] = []
        for file in files:
            real = os.path.realpath(file)
            if any(_within(real, bound) for bound in bounds):
                kept.append(file)
            else:
                self.report(_Pos(file, 1, 1), "outside-root", f"resolves outside the project root ({real}); not read")
        return kept

    # -- stage 1 and 2: read and parse

    def parse(self, file: Path) -> _Document | None:
        """The parsed file (cached per real path), or ``None`` after reporting why it cannot be parsed."""
        key = os.path.realpath(file)
        if key not in self._documents:
            try:
                self._documents[key] = self._parse(file)
            except _Problem as problem:
                self.report(problem.pos, problem.code, problem.message)
                self._documents[key] = None
        return self._documents[key]

    def _parse(self, file: Path) -> _Document:
        top = _Pos(file, 1, 1)
        try:
            with file.open("rb") as stream:
                size = os.fstat(stream.fileno()).st_size
                # Check before reading, and read at most one byte more, so a huge file is never read whole.
                raw = b"" if size > self.max_bytes else stream.read(self.max_bytes + 1)
        except OSError as exc:
            raise _Problem(top, "io", f"cannot read: {exc.strerror or exc}") from None
        if size > self.max_bytes or len(raw) > self.max_bytes:
            raise _Problem(top, "too-large", f"{max(size, len(raw)):,} bytes is over the {self.max_bytes:,}-byte limit")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
            raise _Problem(_Pos(file, line, column), "yaml", "not UTF-8 text") from None
        return _parse_yaml(text, file, MAX_YAML_NODES)

    # -- stage 3: $ref

    def resolve(self, document: _Document, file: Path) -> _Document | None:
        """The document with every ``$ref`` replaced, or ``None`` after reporting the refs that failed."""
        failures: list[bool] = []
        data, pos = self._resolve(document.data, document.pos, (os.path.realpath(file),), failures)
        return None if failures else _Document(data, pos)

    def _resolve(self, value: Any, pos: _Pos, stack: tuple[str, ...], failures: list[bool]) -> tuple[Any, _Pos]:
        if isinstance(value, _Map):
            if "$ref" in value and _is_file_ref(value["$ref"]):
                return self._resolve_ref(value, stack, failures)
            out = _Map(value.pos)
            for key, child in value.items():
                resolved, child_pos = self._resolve(child, value.value_pos[key], stack, failures)
                out.put(key, resolved, value.key_pos[key], child_pos)
            return out, out.pos
        if isinstance(value, _Seq):
            seq = _Seq(value.pos)
            for child, child_pos in zip(value, value.item_pos, strict=True):
                seq.add(*self._resolve(child, child_pos, stack, failures))
            return seq, seq.pos
        return value, pos

    def _resolve_ref(self, ref_map: _Map, stack: tuple[str, ...], failures: list[bool]) -> tuple[Any, _Pos]:
        at = ref_map.key_pos["$ref"]
        ref = ref_map["$ref"]
        if not isinstance(ref, str) or not ref.strip():
            failures.append(True)
            self.report(at, "ref", f"$ref must be a file path, found {_short(ref)}")
            return None, at
        target, tried, outside = self._ref_target(ref, at.file)
        if outside is not None:
            # Never read, so that no message can quote a file outside the project (`../../etc/shadow`).
            failures.append(True)
            self.report(
                at,
                "outside-root",
                f"$ref {ref!r} resolves outside the project root ({outside}); "
                f"only files under {os.path.realpath(self.root)} can be referenced",
            )
            return None, at
        if target is None:
            failures.append(True)
            self.report(at, "ref", f"$ref {ref!r} not found (looked for {' and '.join(tried)})")
            return None, at
        key = os.path.realpath(target)
        if key in stack:
            failures.append(True)
            chain = [*stack[stack.index(key) :], key]
            shown = " -> ".join(_display(Path(p), Path(os.path.realpath(self.root)), {}) for p in chain)
            self.report(at, "ref-cycle", f"$ref cycle: {shown}")
            return None, at
        document = self.parse(target)
        if document is None:  # its own problem is reported at its own position
            failures.append(True)
            return None, at
        before = len(failures)
        value, pos = self._resolve(document.data, document.pos, (*stack, key), failures)
        if len(failures) > before:  # already reported further down; merging into nothing would only add noise
            return None, at
        siblings = _Map(ref_map.pos)
        for name, child in ref_map.items():
            if name != "$ref":
                resolved, child_pos = self._resolve(child, ref_map.value_pos[name], stack, failures)
                siblings.put(name, resolved, ref_map.key_pos[name], child_pos)
        if not siblings:
            return value, pos
        if not isinstance(value, _Map):
            failures.append(True)
            self.report(at, "ref", f"keys next to $ref {ref!r} need a mapping to merge into, found {_type_name(value)}")
            return None, at
        merged = _deep_merge(value, siblings)
        return merged, merged.pos

    def _ref_target(self, ref: str, referrer: Path) -> tuple[Path | None, list[str], str | None]:
        """The file ``ref`` names, else the candidates looked for, and the real path of the first candidate outside
        the root (symlinks resolved) when no candidate inside it exists.

        A candidate outside the root is never opened or even tested for existence: whether ``/etc/x`` exists is
        none of a contract's business.
        """
        relative = Path(ref)
        if relative.is_absolute():
            candidates = [relative]
        elif ref.startswith(("./", "../")):
            candidates = [referrer.parent / relative]
        else:
            # Project-root-relative first (`subcontracts/fsm/x.yaml` reads the same from any contract), then
            # relative to the referring file.
            candidates = [self.root / relative, referrer.parent / relative]
        normalised = [Path(os.path.abspath(c)) for c in candidates]
        real_root = os.path.realpath(self.root)
        inside: list[Path] = []
        outside: list[str] = []
        for candidate in normalised:
            real = os.path.realpath(candidate)
            if _within(real, real_root):
                if os.path.isfile(real):
                    return candidate, [], None
                inside.append(candidate)
            else:
                outside.append(real)
        if outside:
            return None, [], outside[0]
        return None, list(dict.fromkeys(_display(c, self.root, {}) for c in inside)), None

    # -- stage 4: JSON Schema

    def validate(self, schema: str, where: _Where, data: Any) -> bool:
        valid = True
        for error in _validator(schema).iter_errors(data):
            valid = False
            self._report_schema_error(error, where)
        return valid

    def _report_schema_error(self, error: Any, where: _Where) -> None:
        if error.validator in ("anyOf", "oneOf") and error.context:
            # Descend when one alternative got further (an item inside a list); keep the summary otherwise.
            deeper = jsonschema.exceptions.best_match(error.context)
            if len(deeper.absolute_path) > len(error.absolute_path):
                error = deeper
        steps = tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = error.schema.get("properties", {})
            for name in error.instance:
                if name not in known:
                    pos, label = where.locate((*steps, name), key=True)
                    close = difflib.get_close_matches(name, list(known), n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else f"; allowed: {', '.join(known)}"
                    self.report(pos, "schema", f"{label}: unknown key{hint}")
            return
        pos, label = where.locate(steps)
        code = "schema"
        if error.validator == "required":
            missing = re.match(r"^'(.+)' is a required property$", error.message)
            name = missing.group(1) if missing else "?"
            # A missing initial state is an FSM problem first; the schema merely notices it earliest.
            code = "fsm-no-initial" if name == "initial_state" else "schema"
            message = f"missing required key {name!r}"
        else:
            message = _schema_message(error)
        self.report(pos, code, f"{label}: {message}" if label else message)

    # -- stage 5: environment

    def interpolate(self, value: Any, pos: _Pos) -> Any:
        if isinstance(value, str):
            return self._interpolate_text(value, pos)
        if isinstance(value, _Map):
            out = _Map(value.pos)
            for key, child in value.items():
                out.put(key, self.interpolate(child, value.value_pos[key]), value.key_pos[key], value.value_pos[key])
            return out
        if isinstance(value, _Seq):
            seq = _Seq(value.pos)
            for child, child_pos in zip(value, value.item_pos, strict=True):
                seq.add(self.interpolate(child, child_pos), child_pos)
            return seq
        return value

    def _interpolate_text(self, text: str, pos: _Pos) -> str:
        def substitute(match: re.Match[str]) -> str:
            whole = match.group(0)
            if whole == "$${":
                return "${"
            if match.group(1) is None:
                self.report(
                    pos, "env", f"unterminated placeholder in {text!r}: expected ${{NAME}} or ${{NAME:default}}"
                )
                return whole
            parsed = _ENV_NAME_RE.match(match.group(1))
            if parsed is None:
                self.report(pos, "env", f"malformed placeholder {whole!r}: expected ${{NAME}} or ${{NAME:default}}")
                return whole
            name, default = parsed.group(1), parsed.group(2)
            if name in self.env:
                return self.env[name]
            if default is None:
                self.report(pos, "env", f"environment variable {name} is not set and {whole} has no default")
                return whole
            return default

        return _ENV_RE.sub(substitute, text)

    # -- stage 6: models

    def build(self, model: type[_M], where: _Where, data: Any, **extra: Any) -> _M | None:
        try:
            return model.model_validate({**_plain(data), **extra})
        except ValidationError as exc:
            # The JSON Schema should have caught everything; this is the backstop if schema and model drift.
            for error in exc.errors():
                pos, label = where.locate([step for step in error["loc"] if isinstance(step, str | int)])
                self.report(pos, "schema", f"{label}: {error['msg']}" if label else error["msg"])
            return None

    # -- files

    def load_file(self, path: Path | str) -> _Loaded | Subcontract | None:
        """Check one file, a contract or (when it declares ``subcontract_type``) a subcontract."""
        file = self.file(path)
        document = self.parse(file)
        if document is None:
            return None
        if isinstance(document.data, dict) and "subcontract_type" in document.data:
            return self.load_subcontract(file)
        resolved = self.resolve(document, file)
        if resolved is None:
            return None
        where = _Where(resolved.data, resolved.pos)
        if not self.validate("contract", where, resolved.data):
            return None
        data: _Map = resolved.data
        if "config" in data:
            data.put(
                "config",
                self.interpolate(data["config"], data.value_pos["config"]),
                data.key_pos["config"],
                data.value_pos["config"],
            )
        contract = self.build(Contract, where, data, source=file)
        if contract is None:
            return None
        self.check_contract(contract, where)
        return _Loaded(contract, where)

    def load_subcontract(self, path: Path | str) -> Subcontract | None:
        file = self.file(path)
        document = self.parse(file)
        if document is None:
            return None
        resolved = self.resolve(document, file)
        if resolved is None:
            return None
        where = _Where(resolved.data, resolved.pos)
        kind = resolved.data.get("subcontract_type") if isinstance(resolved.data, dict) else None
        if not isinstance(kind, str) or kind not in SUBCONTRACT_MODELS:
            found = "missing" if kind is None else _short(kind)
            self.report(
                where.at("subcontract_type"),
                "schema",
                f"subcontract_type: expected one of {', '.join(SUBCONTRACT_TYPES)}, found {found}",
            )
            return None
        if not self.validate(kind, where, resolved.data):
            return None
        subcontract = self.build(SUBCONTRACT_MODELS[kind], where, resolved.data)
        if subcontract is not None:
            self.check_subcontract(subcontract, where)
        return subcontract

    # -- stage 7: semantic checks

    def check_subcontract(self, subcontract: Subcontract, where: _Where) -> None:
        if isinstance(subcontract, FsmSubcontract):
            self.check_fsm(subcontract, where)
        elif isinstance(subcontract, RoutingSubcontract):
            for index, target in enumerate(subcontract.targets):
                if target.condition is not None:
                    self._check_guard(target.condition, where.at("targets", index, "condition"), "routing-condition")
        elif isinstance(subcontract, EventTypeSubcontract):
            self.check_payloads(subcontract, where)

    def check_contract(self, contract: Contract, where: _Where) -> None:
        for kind in SUBCONTRACT_TYPES:
            subcontract = getattr(contract.subcontracts, kind)
            if subcontract is not None:
                self.check_subcontract(subcontract, where.child("subcontracts", kind))
        if contract.node_type is NodeType.ORCHESTRATOR and "steps" in contract.config:
            self.check_steps(contract.config["steps"], where.child("config", "steps"))
        spec = contract.implementation_path
        spec_pos = where.at("implementation" if contract.implementation else "name")
        problem = _implementation_problem(spec)
        if problem is not None:
            self.report(spec_pos, "implementation-forbidden", problem)
            return
        if not self.check_implementations:
            return
        try:
            cls = _load_class(spec, self.root)
        except LookupError as exc:
            derived = "" if contract.implementation else " (derived from name and version)"
            self.report(spec_pos, "implementation-missing", f"implementation {spec}{derived} not found: {exc}")
            return
        self.check_handlers(contract, cls, where)

    def check_steps(self, raw: Any, where: _Where) -> None:
        """An orchestrator's ``config.steps``: each a valid step, dependencies known, no cycle."""
        from onex.exceptions import OnexError
        from onex.nodes import plan_stages  # nodes imports this module; the planner lives with the step engine

        if not isinstance(raw, list):
            self.report(where.at(), "steps", "config.steps must be a list of steps")
            return
        steps: list[Step] = []
        for index, item in enumerate(raw):
            try:
                steps.append(Step.model_validate(item))
            except ValidationError as exc:
                first = exc.errors()[0]
                field = ".".join(str(p) for p in first["loc"])
                self.report(where.at(index, *first["loc"]), "steps", f"step {index}: {field}: {first['msg']}")
        if len(steps) == len(raw):
            try:
                plan_stages(steps)
            except OnexError as exc:
                self.report(where.at(), "steps", str(exc))

    def check_fsm(self, fsm: FsmSubcontract, where: _Where) -> None:
        declared: dict[str, int] = {}
        for index, state in enumerate(fsm.states):
            if state.state_name in declared:
                self.report(
                    where.at("states", index, "state_name"),
                    "fsm-duplicate-state",
                    f"state {state.state_name!r} is declared twice (first as states[{declared[state.state_name]}])",
                )
            else:
                declared[state.state_name] = index
        known = ", ".join(declared)

        def undeclared(name: str, pos: _Pos, role: str) -> None:
            if name not in declared:
                self.report(pos, "fsm-undeclared-state", f"{role} {name!r} is not a declared state (states: {known})")

        initial_ok = fsm.initial_state in declared
        if not initial_ok:
            self.report(
                where.at("initial_state"),
                "fsm-no-initial",
                f"initial_state {fsm.initial_state!r} is not a declared state (states: {known})",
            )
        terminal = {s.state_name for s in fsm.states if s.is_terminal} | set(fsm.terminal_states)
        edges: dict[str, set[str]] = {}
        for t_index, transition in enumerate(fsm.transitions):
            sources = (transition.from_state,) if isinstance(transition.from_state, str) else transition.from_state
            for s_index, source in enumerate(sources):
                steps: tuple[str | int, ...] = ("transitions", t_index, "from_state")
                if not isinstance(transition.from_state, str):
                    steps += (s_index,)
                if source == "*":
                    edges.setdefault("*", set()).add(transition.to_state)
                    continue
                undeclared(source, where.at(*steps), f"transition {transition.transition_name!r} from_state")
                edges.setdefault(source, set()).add(transition.to_state)
                if source in terminal:
                    self.report(
                        where.at(*steps),
                        "fsm-terminal-outgoing",
                        f"terminal state {source!r} has an outgoing transition {transition.transition_name!r}",
                    )
            undeclared(
                transition.to_state,
                where.at("transitions", t_index, "to_state"),
                f"transition {transition.transition_name!r} to_state",
            )
            for c_index, condition in enumerate(transition.conditions):
                pos = where.at("transitions", t_index, "conditions", c_index, "expression")
                self._check_guard(condition.expression, pos, "fsm-condition")
        for list_name in ("terminal_states", "error_states"):
            for index, name in enumerate(getattr(fsm, list_name)):
                undeclared(name, where.at(list_name, index), f"{list_name} entry")
        if not initial_ok:
            return  # everything would be "unreachable"; the missing initial state is the one thing to fix
        reachable = {fsm.initial_state}
        # '*' transitions leave every state, so their targets are reachable as soon as anything is.
        frontier = [fsm.initial_state, *edges.get("*", ())]
        reachable.update(frontier)
        while frontier:
            for target in edges.get(frontier.pop(), ()):
                if target not in reachable:
                    reachable.add(target)
                    frontier.append(target)
        for name, index in declared.items():
            if name not in reachable:
                self.report(
                    where.at("states", index, "state_name"),
                    "fsm-unreachable",
                    f"state {name!r} cannot be reached from initial_state {fsm.initial_state!r}",
                )

    def _check_guard(self, expression: str, pos: _Pos, code: str) -> None:
        try:
            parse_condition(expression)
        except ValueError as exc:
            self.report(pos, code, f"guard {expression!r}: {exc}")

    def check_payloads(self, events: EventTypeSubcontract, where: _Where) -> None:
        for direction in ("consumes", "publishes"):
            for index, spec in enumerate(getattr(events, direction)):
                if spec.payload_schema is not None and spec.payload_model is not None:
                    self.report(
                        where.at(direction, index, "payload_schema", key=True),
                        "event-payload",
                        f"event {spec.event_name}: give payload_model or payload_schema, not both",
                    )
                elif spec.payload_schema is not None:
                    try:
                        Draft202012Validator.check_schema(spec.payload_schema)
                    except jsonschema.exceptions.SchemaError as exc:
                        pos = where.at(direction, index, "payload_schema", *exc.path)
                        self.report(
                            pos, "event-payload", f"event {spec.event_name}: invalid payload_schema: {exc.message}"
                        )
                elif spec.payload_model is not None:
                    self._check_payload_model(spec, where.at(direction, index, "payload_model"))

    def _check_payload_model(self, spec: EventSpec, pos: _Pos) -> None:
        model = spec.payload_model or ""
        if not _PAYLOAD_MODEL_RE.match(model):
            wanted = "`nodes.<...>:<Model>` or `onex.<...>:<Model>`"
            self.report(pos, "event-payload", f"event {spec.event_name}: payload_model {model!r} must be {wanted}")
            return
        if not self.check_implementations:
            return
        try:
            cls = _load_class(model, self.root)
        except LookupError as exc:
            self.report(pos, "event-payload", f"event {spec.event_name}: payload_model {model} not found: {exc}")
            return
        if not issubclass(cls, BaseModel):
            self.report(pos, "event-payload", f"event {spec.event_name}: payload_model {model} is not a pydantic model")

    def check_handlers(self, contract: Contract, cls: type, where: _Where) -> None:
        owner = contract.implementation_path

        def require(name: str, pos: _Pos, role: str) -> None:
            if not callable(getattr(cls, name, None)):
                self.report(pos, "handler-missing", f"{role.format(name=repr(name))} is not a method of {owner}")

        subcontracts = contract.subcontracts
        if subcontracts.event_type is not None:
            events = where.child("subcontracts", "event_type")
            for index, spec in enumerate(subcontracts.event_type.consumes):
                if spec.handler is not None:
                    role = f"handler {{name}} (consumes {spec.event_name})"
                    require(spec.handler, events.at("consumes", index, "handler"), role)
        if subcontracts.fsm is not None:
            fsm = where.child("subcontracts", "fsm")
            for s_index, state in enumerate(subcontracts.fsm.states):
                for list_name in ("entry_actions", "exit_actions"):
                    role = f"{list_name[:-1].replace('_', ' ')} {{name}} (state {state.state_name!r})"
                    for a_index, action in enumerate(getattr(state, list_name)):
                        require(action, fsm.at("states", s_index, list_name, a_index), role)
            for t_index, transition in enumerate(subcontracts.fsm.transitions):
                role = f"action {{name}} (transition {transition.transition_name!r})"
                for a_index, action in enumerate(transition.actions):
                    require(action, fsm.at("transitions", t_index, "actions", a_index), role)

    def check_set(self, loaded: Sequence[_Loaded], *, events: bool) -> None:
        first: dict[tuple[str, str], Path] = {}
        for item in loaded:
            key = (item.contract.name, item.contract.version)
            if key in first:
                self.report(
                    item.where.at("version"),
                    "duplicate-version",
                    f"{key[0]} {key[1]} is already defined in {_display(first[key], self.root, self.given)}",
                )
            else:
                first[key] = item.contract.source
        if not events:
            return
        # The runtime publishes its own events (introspection, heartbeats, transitions) for every hosted node.
        published = {(name, 1) for name in RUNTIME_EVENTS} | {
            (spec.event_name, spec.event_version)
            for item in loaded
            if item.contract.subcontracts.event_type is not None
            for spec in item.contract.subcontracts.event_type.publishes
        }
        for item in loaded:
            event_type = item.contract.subcontracts.event_type
            if event_type is None:
                continue
            for index, spec in enumerate(event_type.consumes):
                if spec.external or (spec.event_name, spec.event_version) in published:
                    continue
                version = "" if spec.event_version == 1 else f" v{spec.event_version}"
                self.report(
                    item.where.at("subcontracts", "event_type", "consumes", index, "event_name"),
                    "event-unpublished",
                    f"{item.contract.name} consumes {spec.event_name}{version} but no contract publishes it "
                    "(publish it from a node, or mark it `external: true`)",
                )


def _within(path: str, directory: str) -> bool:
    """Whether real path ``path`` is ``directory`` or below it (both resolved)."""
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _is_file_ref(value: Any) -> bool:
    # `#/$defs/x` and URLs are JSON Schema references (inside payload_schema), not files to inline.
    return not (isinstance(value, str) and (value.startswith("#") or "://" in value))


def _deep_merge(base: _Map, override: _Map) -> _Map:
    """``override``'s keys over ``base``'s, recursively for mappings; lists and scalars are replaced whole."""
    out = _Map(base.pos)
    for key, value in base.items():
        out.put(key, value, base.key_pos[key], base.value_pos[key])
    for key, value in override.items():
        current = out.get(key)
        if isinstance(current, _Map) and isinstance(value, _Map):
            merged = _deep_merge(current, value)
            out.put(key, merged, override.key_pos[key], merged.pos)
        else:
            out.put(key, value, override.key_pos[key], override.value_pos[key])
    return out


# --- public API -------------------------------------------------------------------------------------------------


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


def find_contract_files(root: Path | str) -> list[Path]:
    """``contracts/**/*.yaml`` under ``root``, sorted."""
    return sorted((Path(root) / "contracts").glob("**/*.yaml"))


def find_subcontract_files(root: Path | str) -> list[Path]:
    """``subcontracts/**/*.yaml`` under ``root``, sorted."""
    return sorted((Path(root) / "subcontracts").glob("**/*.yaml"))


def _session(root: Path | str, env: Mapping[str, str] | None, max_bytes: int, check_implementations: bool) -> _Session:
    return _Session(
        root=Path(os.path.abspath(root)),
        # The one place contracts read the environment; callers (and tests) may pass their own mapping.
        env=dict(os.environ) if env is None else env,
        max_bytes=max_bytes,
        check_implementations=check_implementations,
    )


def load_contract(
    path: Path | str,
    *,
    root: Path | str,
    check_implementations: bool = True,
    env: Mapping[str, str] | None = None,
    max_bytes: int = MAX_FILE_BYTES,
) -> Contract:
    """Load and validate one contract file (and the files it ``$ref``s); ``ContractError`` lists every issue.

    Set-level checks (duplicate versions, unpublished events) need the whole set: see ``load_contracts``.
    """
    session = _session(root, env, max_bytes, check_implementations)
    result = session.load_file(path)
    if result is not None and not isinstance(result, _Loaded):
        file = session.file(path)
        session.report(
            _Pos(file, 1, 1), "schema", "this is a subcontract file (it has subcontract_type), not a contract"
        )
    session.raise_if_issues()
    assert isinstance(result, _Loaded)  # no issues means the file loaded as a contract
    return result.contract


def load_subcontract(
    path: Path | str, *, root: Path | str, env: Mapping[str, str] | None = None, max_bytes: int = MAX_FILE_BYTES
) -> Subcontract:
    """Load and validate one subcontract file on its own (``subcontract_type`` picks its schema)."""
    session = _session(root, env, max_bytes, check_implementations=False)
    result = session.load_subcontract(path)
    session.raise_if_issues()
    assert result is not None  # no issues means it loaded
    return result


def load_contracts(
    root: Path | str,
    paths: Iterable[Path | str] | None = None,
    *,
    check_implementations: bool = True,
    env: Mapping[str, str] | None = None,
    max_bytes: int = MAX_FILE_BYTES,
) -> ContractSet:
    """Load and validate a project's contracts; ``ContractError`` lists every issue in every file.

    With ``paths=None`` this is the whole project: every ``contracts/**/*.yaml``, every
    ``subcontracts/**/*.yaml`` on its own (a broken shared subcontract is reported even when nothing uses it),
    and the set checks, including ``event-unpublished``. With ``paths`` (files or directories, relative ones
    taken from the root first), only those files and what they ``$ref``; ``event-unpublished`` is skipped,
    because a subset cannot tell who publishes an event. A file with ``subcontract_type`` is checked as a
    subcontract wherever it lives.
    """
    session = _session(root, env, max_bytes, check_implementations)
    if paths is None:
        files = session.confined(find_contract_files(session.root), session.root)
        extra = session.confined(find_subcontract_files(session.root), session.root)
    else:
        files = []
        for path in paths:
            file = session.file(path)
            files.extend(session.confined(sorted(file.glob("**/*.yaml")), file) if file.is_dir() else [file])
        extra = []
    loaded = [result for file in files if isinstance(result := session.load_file(file), _Loaded)]
    for file in extra:
        session.load_subcontract(file)
    session.check_set(loaded, events=paths is None)
    session.raise_if_issues()
    contracts = sorted((item.contract for item in loaded), key=lambda c: (c.name, c.version_tuple))
    return ContractSet(session.root, contracts)
