"""Semantic checks, beyond what a JSON Schema can say: FSMs, guards, orchestrator steps, payloads, handlers, and
the set of contracts as a whole (duplicate versions, events no one publishes).

Each check reports at the position of the node at fault and goes on, so one load lists every problem. The guard
grammar (``parse_condition``) and the step planner (``plan_stages``) are also what the runtime uses: the FSM
evaluates guards with the one, the orchestrator refuses steps the other refuses.
"""

from __future__ import annotations

import ast
import difflib
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema.exceptions
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError

from onex.contracts.generated import generated_models, models_path, schema_digest
from onex.contracts.imports import _PAYLOAD_MODEL_RE, _implementation_problem, _load_class
from onex.contracts.models import (
    SUBCONTRACT_TYPES,
    Aggregation,
    AggregationSubcontract,
    CachingSubcontract,
    Contract,
    EventSpec,
    EventTypeSubcontract,
    FsmSubcontract,
    NodeType,
    Resilience,
    RoutingSubcontract,
    StateManagementSubcontract,
    StateSupport,
    Step,
    Subcontract,
    Window,
)
from onex.contracts.yaml import _Pos, _Where
from onex.envelope import RUNTIME_EVENTS
from onex.exceptions import OnexError

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


# --- orchestrator steps -----------------------------------------------------------------------------------------


def plan_stages(steps: Sequence[Step]) -> list[list[Step]]:
    """Group steps into stages: a step runs once every step it depends on has finished. Cycles are an error.

    The orchestrator's engine starts each step as soon as its own dependencies finished, which runs the steps of a
    stage in parallel; planning the stages up front is how a contract's steps are proved runnable at all: every
    dependency names a step, and no step waits on itself through others (``OnexError`` says which).
    """
    by_name = {s.step_name: s for s in steps}
    for s in steps:
        for dep in s.depends_on:
            if dep not in by_name:
                raise OnexError(f"step {s.step_name!r} depends on unknown step {dep!r}")
    done: set[str] = set()
    stages: list[list[Step]] = []
    remaining = list(steps)
    while remaining:
        ready = [s for s in remaining if set(s.depends_on) <= done]
        if not ready:
            raise OnexError(f"steps {[s.step_name for s in remaining]} depend on each other in a cycle")
        stages.append(ready)
        done.update(s.step_name for s in ready)
        remaining = [s for s in remaining if s.step_name not in done]
    return stages


# --- aggregations -----------------------------------------------------------------------------------------------

# The key field each aggregation type groups by, unless ``field`` overrides it (TIME_WINDOW has no key of its own;
# CUSTOM's key is what its method returns).
AGGREGATION_KEY_FIELDS: dict[str, str] = {
    "NAMESPACE_GROUPING": "namespace",
    "FILE_TYPE_GROUPING": "stamp.file_type",
    "SIZE_BUCKETS": "stamp.file_size",
    "WORKFLOW_GROUPING": "workflow_id",
}

_AggregationProblem = tuple[tuple[str | int, ...], str, str]  # (path below the aggregation, issue code, message)


def _window_problems(window: Window) -> Iterator[_AggregationProblem]:
    def only(allowed: set[str]) -> Iterator[_AggregationProblem]:
        for name in ("size_ms", "size_items", "slide_ms", "slide_items", "gap_ms"):
            if name not in allowed and getattr(window, name) is not None:
                yield ("window", name), "aggregation-window", f"{name} means nothing to a {description} window"

    if window.type == "session":
        description = "session"
        if window.gap_ms is None:
            yield ("window", "type"), "aggregation-window", "a session window needs gap_ms"
        yield from only({"gap_ms"})
        return
    by_time, by_count = window.size_ms is not None, window.size_items is not None
    description = f"{window.type} {'count' if by_count else 'time'}"
    if by_time == by_count:
        yield ("window", "type"), "aggregation-window", f"a {window.type} window needs one of size_ms or size_items"
        return
    if window.type == "tumbling":
        yield from only({"size_ms", "size_items"})
    elif by_time:
        yield from only({"size_ms", "slide_ms"})
        if window.slide_ms is None:
            yield ("window", "type"), "aggregation-window", "a sliding window by time needs slide_ms"
        elif window.size_ms is not None and window.slide_ms > window.size_ms:
            yield ("window", "slide_ms"), "aggregation-window", "slide_ms must not exceed size_ms"
    else:
        yield from only({"size_items", "slide_items"})
        if window.slide_items is None:
            yield ("window", "type"), "aggregation-window", "a sliding window by count needs slide_items"
        elif window.size_items is not None and window.slide_items > window.size_items:
            yield ("window", "slide_items"), "aggregation-window", "slide_items must not exceed size_items"
    if by_count and window.grace_ms:
        yield ("window", "grace_ms"), "aggregation-window", "grace_ms applies to time windows, not count windows"


def _bucket_problems(buckets: Sequence[int], at: tuple[str | int, ...]) -> Iterator[_AggregationProblem]:
    for index in range(1, len(buckets)):
        if buckets[index] <= buckets[index - 1]:
            message = f"buckets must be ascending: {buckets[index]} follows {buckets[index - 1]}"
            yield (*at, index), "aggregation-buckets", message


def aggregation_problems(aggregation: Aggregation) -> Iterator[_AggregationProblem]:
    """What makes one aggregation meaningless, beyond its schema: the engine (``onex.aggregation``) refuses the same.

    Every field must change what is computed, so a field its type or function does not read is a problem too.
    """
    kind = aggregation.type
    if aggregation.where is not None:
        try:
            parse_condition(aggregation.where)
        except ValueError as exc:
            yield ("where",), "aggregation-condition", f"guard {aggregation.where!r}: {exc}"
    for index, path in enumerate(aggregation.group_by):
        if not _FIELD_RE.match(path):
            yield ("group_by", index), "aggregation-field", f"group_by {path!r} is not a dotted field name"
    if aggregation.field is not None:
        if kind in ("TIME_WINDOW", "CUSTOM"):
            yield ("field",), "aggregation-field", f"{kind} has no key field: field means nothing to it"
        elif not _FIELD_RE.match(aggregation.field):
            yield ("field",), "aggregation-field", f"field {aggregation.field!r} is not a dotted field name"
    if kind == "CUSTOM" and not aggregation.method:
        yield ("type",), "aggregation-method", "a CUSTOM aggregation needs method: the node method returning its key"
    if kind != "CUSTOM" and aggregation.method is not None:
        yield ("method",), "aggregation-method", f"method is read by CUSTOM aggregations only, not {kind}"
    if kind == "SIZE_BUCKETS" and not aggregation.buckets:
        yield ("type",), "aggregation-buckets", "a SIZE_BUCKETS aggregation needs buckets (upper bounds, ascending)"
    if kind != "SIZE_BUCKETS" and aggregation.buckets:
        yield ("buckets",), "aggregation-buckets", f"buckets are read by SIZE_BUCKETS aggregations only, not {kind}"
    yield from _bucket_problems(aggregation.buckets, ("buckets",))
    if kind == "TIME_WINDOW" and aggregation.window is None:
        yield ("type",), "aggregation-window", "a TIME_WINDOW aggregation needs a window"
    if aggregation.window is not None:
        yield from _window_problems(aggregation.window)
    names: dict[str, int] = {}
    for index, function in enumerate(aggregation.functions):
        at: tuple[str | int, ...] = ("functions", index)
        if function.name in names:
            message = f"function name {function.name!r} is taken (by functions[{names[function.name]}])"
            yield (*at, "name"), "aggregation-duplicate", message
        names.setdefault(function.name, index)
        if function.function == "count" and function.field is not None:
            yield (*at, "field"), "aggregation-function", "count counts records: it reads no field"
        elif function.function != "count" and function.field is None:
            yield (*at, "function"), "aggregation-function", f"{function.function} needs field: the value it reads"
        elif function.field is not None and not _FIELD_RE.match(function.field):
            yield (*at, "field"), "aggregation-field", f"field {function.field!r} is not a dotted field name"
        if function.function == "histogram" and not function.buckets:
            yield (*at, "function"), "aggregation-buckets", "histogram needs buckets (upper bounds, ascending)"
        if function.function != "histogram" and function.buckets:
            message = f"buckets are read by histogram only, not {function.function}"
            yield (*at, "buckets"), "aggregation-buckets", message
        yield from _bucket_problems(function.buckets, (*at, "buckets"))


# --- node code --------------------------------------------------------------------------------------------------

# The runtime's base class for each node kind (``onex.nodes``), by name: contracts sit below the nodes module and must
# not import it (tests/test_layering.py), so a class's kind is read from the names in its MRO.
_NODE_BASES: dict[NodeType, str] = {
    NodeType.EFFECT: "EffectNode",
    NodeType.COMPUTE: "ComputeNode",
    NodeType.REDUCER: "ReducerNode",
    NodeType.ORCHESTRATOR: "OrchestratorNode",
    NodeType.REGISTRY: "RegistryNode",
}
_NODES_MODULE = "onex.nodes"
# `self.<method>(event_name, ...)`: the node methods whose first argument is an event the contract must publish.
_PUBLISHING = frozenset({"publish", "envelope", "publish_envelopes"})


@dataclass(frozen=True)
class _Literal:
    """A name node code passes as a string: a trigger fired on ``self.fsm`` or an event published."""

    kind: str  # "trigger" or "event"
    name: str
    call: str  # how the code calls it, for the message: `self.fsm.trigger`, `self.publish`
    pos: _Pos


def _runtime_bases(cls: type) -> set[str]:
    return {base.__name__ for base in cls.__mro__ if base.__module__ == _NODES_MODULE}


def _column(lines: Sequence[str], line: int, offset: int) -> int:
    """The 1-based character column of ``ast``'s UTF-8 byte ``offset`` into ``line``."""
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    return len(text.encode("utf-8")[:offset].decode("utf-8", errors="ignore")) + 1


def _class_def(tree: ast.Module, qualname: str) -> ast.ClassDef | None:
    body: list[ast.stmt] = tree.body
    found: ast.ClassDef | None = None
    for part in qualname.split("."):
        found = next((n for n in body if isinstance(n, ast.ClassDef) and n.name == part), None)
        if found is None:
            return None  # defined in a function (`<locals>`) or built dynamically: nothing to read
        body = found.body
    return found


def _is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "self"


def _argument(call: ast.Call, index: int, keyword: str) -> ast.expr | None:
    if len(call.args) > index and not any(isinstance(a, ast.Starred) for a in call.args[: index + 1]):
        return call.args[index]
    return next((k.value for k in call.keywords if k.arg == keyword), None)


def _strings(node: ast.expr, module: Mapping[str, Any], local: set[str]) -> Iterator[tuple[str, ast.expr]]:
    """The string values ``node`` certainly has: a literal, either branch of ``a if c else b``, or a module-level
    constant (``STAMP_CREATED``, ``events.STAMP_CREATED``) read from the imported module; nothing otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value, node
    elif isinstance(node, ast.IfExp):
        yield from _strings(node.body, module, local)
        yield from _strings(node.orelse, module, local)
    elif isinstance(node, ast.Name) and node.id not in local and isinstance(module.get(node.id), str):
        yield module[node.id], node
    elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id not in local:
        owner = module.get(node.value.id)
        value = getattr(owner, node.attr, None) if isinstance(owner, ModuleType) else None
        if isinstance(value, str):
            yield value, node


def _local_names(function: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """Names a function binds (parameters, assignments): a module constant of that name is shadowed there."""
    names: set[str] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return names


def _literals(definition: ast.ClassDef, module: Mapping[str, Any], file: Path, lines: Sequence[str]) -> list[_Literal]:
    found: list[_Literal] = []
    for function in definition.body:
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        local = _local_names(function)
        for call in ast.walk(function):
            if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Attribute):
                continue
            method, receiver = call.func.attr, call.func.value
            if method in _PUBLISHING and _is_self(receiver):
                kind, name, argument = "event", f"self.{method}", _argument(call, 0, "event_name")
            elif method == "trigger" and isinstance(receiver, ast.Attribute) and receiver.attr == "fsm":
                if not _is_self(receiver.value):
                    continue
                kind, name, argument = "trigger", "self.fsm.trigger", _argument(call, 1, "trigger")
            else:
                continue
            for value, node in _strings(argument, module, local) if argument is not None else ():
                pos = _Pos(file, node.lineno, _column(lines, node.lineno, node.col_offset))
                found.append(_Literal(kind, value, name, pos))
    return found


def _project_file(module: ModuleType, root: Path) -> Path | None:
    """The source file of a module of the project's ``nodes`` package, named under ``root``; ``None`` for others."""
    module_name = module.__name__
    if module_name.startswith("_onex_project_"):  # a root imported under its private alias (see imports.py)
        module_name = module_name.partition(".")[2]
    file = getattr(module, "__file__", None)
    if module_name.split(".")[0] != "nodes" or not file or not file.endswith(".py"):
        return None
    real, real_root = os.path.realpath(file), os.path.realpath(root)
    if not real.startswith(real_root.rstrip(os.sep) + os.sep):
        return None
    return root / os.path.relpath(real, real_root)  # as the session names files, so issues read root-relative


def _node_code(cls: type, root: Path) -> tuple[_Pos | None, list[_Literal]]:
    """Where ``cls`` is defined, and the triggers and events that it and its project base classes name in code.

    The source is read with ``ast``, never run; only module-level constants are taken from the already imported
    module. A class whose source cannot be read contributes nothing.
    """
    where: _Pos | None = None
    found: list[_Literal] = []
    for klass in cls.__mro__:
        module = sys.modules.get(klass.__module__)
        file = None if module is None else _project_file(module, root)
        if module is None or file is None:  # the runtime's bases, builtins: not the project's code
            continue
        try:
            source = file.read_text(encoding="utf-8")
            tree = ast.parse(source, filename=str(file))
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            continue
        definition = _class_def(tree, klass.__qualname__)
        if definition is None:
            continue
        lines = source.split("\n")  # as ast counts lines (str.splitlines also splits at \f and others)
        if klass is cls:
            where = _Pos(file, definition.lineno, _column(lines, definition.lineno, definition.col_offset))
        found.extend(_literals(definition, vars(module), file, lines))
    return where, found


def _node_type_of(base: str) -> str:
    return next(str(kind) for kind, name in _NODE_BASES.items() if name == base)


def _suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
    return f"; did you mean {close[0]!r}?" if close else ""


# --- the checks -------------------------------------------------------------------------------------------------

# The fields of an ``EventSpec`` only a consumer reads (``max_batch`` too, reported as ``event-batch``).
_CONSUMER_FIELDS = ("handler", "batch", "external", "resilience")
# The strategies that read a routing target's ``weight`` (``onex.routing.Router``).
_WEIGHTED = frozenset({"round_robin", "hash"})


@dataclass
class _Loaded:
    """A contract that passed every per-file stage, and where its data came from (for the set checks)."""

    contract: Contract
    where: _Where


@dataclass(frozen=True)
class _Unloaded:
    """A contract file that failed a per-file stage: what the set checks can still read of its raw YAML.

    ``None`` is what cannot be read (the file did not parse, ``event_type`` is a ``$ref`` that failed, a value has
    the wrong type): a set check that would need it reports nothing the failed file could have supplied, so one
    broken contract yields only its own problems. Events are ``(event_name, event_version, topic_class)``, ``None``
    where that value is unreadable.
    """

    name: str | None
    publishes: tuple[tuple[str, int | None, str | None], ...] | None
    consumes: tuple[tuple[str, int | None, str | None], ...] | None


@dataclass
class _Checks:
    """The semantic checks of one load, reporting through the session's ``report``."""

    report: Callable[[_Pos, str, str], None]
    root: Path
    check_implementations: bool
    display: Callable[[Path], str]  # a file as issues name it

    def check_subcontract(self, subcontract: Subcontract, where: _Where) -> None:
        if isinstance(subcontract, FsmSubcontract):
            self.check_fsm(subcontract, where)
            self.check_transitions(subcontract, where)
        elif isinstance(subcontract, RoutingSubcontract):
            self.check_routing(subcontract, where)
        elif isinstance(subcontract, EventTypeSubcontract):
            self.check_payloads(subcontract, where)
            self.check_batch_limits(subcontract, where)
        elif isinstance(subcontract, StateManagementSubcontract):
            interval = subcontract.checkpoint == "interval_ms"
            if interval != (subcontract.interval_ms is not None):
                self.report(
                    where.at("interval_ms" if subcontract.interval_ms is not None else "checkpoint"),
                    "state-checkpoint",
                    "checkpoint: interval_ms needs interval_ms (milliseconds between checkpoints)"
                    if interval
                    else f"interval_ms is only read with checkpoint: interval_ms (here: {subcontract.checkpoint})",
                )
        elif isinstance(subcontract, AggregationSubcontract):
            self.check_aggregation(subcontract, where)

    def check_batch_limits(self, events: EventTypeSubcontract, where: _Where) -> None:
        """``max_batch`` sizes a batch handler's calls: on any other entry nothing would read it. The other fields
        of a consumer (``handler``, ``batch``, ``external``, ``resilience``) mean nothing on a published event, and a
        consumed event without ``handler`` is never subscribed to."""
        for direction in ("consumes", "publishes"):
            for index, spec in enumerate(getattr(events, direction)):
                if spec.max_batch is not None and (direction == "publishes" or not spec.batch):
                    self.report(
                        where.at(direction, index, "max_batch"),
                        "event-batch",
                        f"event {spec.event_name}: max_batch is only read on a consumed event with batch: true",
                    )
        for index, spec in enumerate(events.publishes):
            for name in _CONSUMER_FIELDS:
                if name in spec.model_fields_set:
                    self.report(
                        where.at("publishes", index, name, key=True),
                        "field-unread",
                        f"event {spec.event_name}: {name} is only read on a consumed event, not a published one",
                    )
        for index, spec in enumerate(events.consumes):
            if spec.handler is None:
                self.report(
                    where.at("consumes", index),
                    "handler-missing",
                    f"consumes {spec.event_name} has no handler: nothing would subscribe to it "
                    "(name the node method that handles it)",
                )

    def check_aggregation(self, aggregation: AggregationSubcontract, where: _Where) -> None:
        """Names unique, and each aggregation meaningful (``aggregation_problems``); a CUSTOM method is checked
        against the node class with the handlers."""
        names: dict[str, int] = {}
        for index, item in enumerate(aggregation.aggregations):
            if item.name in names:
                self.report(
                    where.at("aggregations", index, "name"),
                    "aggregation-duplicate",
                    f"aggregation {item.name!r} is declared twice (first as aggregations[{names[item.name]}])",
                )
            names.setdefault(item.name, index)
            for steps, code, message in aggregation_problems(item):
                self.report(where.at("aggregations", index, *steps), code, f"aggregation {item.name!r}: {message}")

    def check_routing(self, routing: RoutingSubcontract, where: _Where) -> None:
        """Guards parse; a strategy has what it needs (``hash`` a ``hash_key``, ``conditional`` a condition somewhere);
        a target's condition (``conditional``) or weight (``round_robin``, ``hash``) is given only where its strategy
        reads it, and ``service``, which always picks the first target, has no other."""
        for index, target in enumerate(routing.targets):
            if target.condition is not None:
                self._check_guard(target.condition, where.at("targets", index, "condition"), "routing-condition")
        if routing.strategy == "hash" and not routing.hash_key:
            self.report(where.at("strategy"), "routing-strategy", "strategy hash needs hash_key: the field to hash")
        if routing.strategy != "hash" and routing.hash_key:
            self.report(
                where.at("hash_key"),
                "routing-strategy",
                f"hash_key is only read by strategy hash, not {routing.strategy}",
            )
        if routing.strategy == "conditional" and routing.targets and all(t.condition is None for t in routing.targets):
            self.report(
                where.at("strategy"),
                "routing-strategy",
                "strategy conditional needs a condition on at least one target (a target without one matches all)",
            )
        for index, target in enumerate(routing.targets):
            if "weight" in target.model_fields_set and routing.strategy not in _WEIGHTED:
                self.report(
                    where.at("targets", index, "weight"),
                    "routing-strategy",
                    f"target {target.name!r}: weight is only read by strategy round_robin or hash, "
                    f"not {routing.strategy}",
                )
            if index and routing.strategy == "service":
                self.report(
                    where.at("targets", index),
                    "routing-strategy",
                    f"target {target.name!r} would get no command: strategy service always picks the first target "
                    f"({routing.targets[0].name!r}); choose round_robin, hash or conditional, or make it a fallback",
                )
        if routing.strategy != "conditional":
            for index, target in enumerate(routing.targets):
                if target.condition is not None:
                    self.report(
                        where.at("targets", index, "condition"),
                        "routing-strategy",
                        f"target {target.name!r}: a condition is only read by strategy conditional, "
                        f"not {routing.strategy}",
                    )

    def check_routing_services(self, loaded: Sequence[_Loaded], unloaded: Sequence[_Unloaded] = ()) -> None:
        """Every service a routing names (targets, fallbacks) is a node of the project, and every node consuming an
        event a routing routes is named by it: the first target reads the event's own topic (``onex.routing``), so
        a consumer left out would get that target's commands too. A contract that did not load is a node by the
        name its YAML gives; one whose name cannot be read could be any service."""
        names = {item.contract.name for item in loaded} | {failed.name for failed in unloaded if failed.name}
        anonymous = any(failed.name is None for failed in unloaded)
        known = ", ".join(sorted(names))
        for item in loaded:
            routing = item.contract.subcontracts.routing
            if routing is None or not routing.targets:
                continue
            where = item.where.child("subcontracts", "routing")
            named: list[tuple[tuple[str | int, ...], str]] = [
                (("targets", i, "service"), t.service) for i, t in enumerate(routing.targets)
            ]
            named += [(("fallbacks", i), service) for i, service in enumerate(routing.fallbacks)]
            for steps, service in named:
                if service not in names and not anonymous:
                    self.report(
                        where.at(*steps),
                        "routing-service",
                        f"routing names service {service!r}, which is not a node of this project (nodes: {known})",
                    )
            # What it routes: the events it publishes that the services it names consume.
            services = {service for _, service in named}
            published = item.contract.subcontracts.event_type
            routed = {spec.event_name for spec in published.publishes} if published is not None else set()
            routed &= {
                spec.event_name
                for other in loaded
                if other.contract.name in services and other.contract.subcontracts.event_type is not None
                for spec in other.contract.subcontracts.event_type.consumes
            }
            for other in loaded:
                events = other.contract.subcontracts.event_type
                if other.contract.name in services or events is None:
                    continue
                for index, spec in enumerate(events.consumes):
                    if spec.event_name in routed:
                        self.report(
                            other.where.at("subcontracts", "event_type", "consumes", index, "event_name"),
                            "routing-service",
                            f"{other.contract.name} consumes {spec.event_name}, which {item.contract.name} routes, "
                            f"but its routing does not name it: it would also get {routing.targets[0].service}'s "
                            "commands (add it as a target or fallback)",
                        )

    def check_contract(self, contract: Contract, where: _Where) -> None:
        for kind in SUBCONTRACT_TYPES:
            subcontract = getattr(contract.subcontracts, kind)
            if subcontract is not None:
                self.check_subcontract(subcontract, where.child("subcontracts", kind))
        self.check_breakers(contract, where)
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
        self.check_generated_models(contract, where)
        try:
            cls = _load_class(spec, self.root)
        except LookupError as exc:
            derived = "" if contract.implementation else " (derived from name and version)"
            self.report(spec_pos, "implementation-missing", f"implementation {spec}{derived} not found: {exc}")
            return
        self.check_handlers(contract, cls, where)
        self.check_config(contract, cls, where)
        self.check_node_code(contract, cls, where)
        self.check_state(contract, cls, where)
        problems = getattr(cls, "contract_problems", None)
        for steps, message in problems(contract) if callable(problems) else ():
            self.report(where.at(*steps), "node-contract", message)

    def check_breakers(self, contract: Contract, where: _Where) -> None:
        """``circuit_breaker`` only on effect nodes: ``EffectNode`` is the one kind that builds a breaker."""
        if contract.node_type is NodeType.EFFECT:
            return
        events = contract.subcontracts.event_type
        blocks: list[tuple[Resilience | None, tuple[str | int, ...]]] = [(contract.resilience, ("resilience",))]
        blocks += [
            (spec.resilience, ("subcontracts", "event_type", "consumes", index, "resilience"))
            for index, spec in enumerate(events.consumes if events is not None else ())
        ]
        for block, steps in blocks:
            if block is not None and "circuit_breaker" in block.model_fields_set:
                self.report(
                    where.at(*steps, "circuit_breaker", key=True),
                    "field-unread",
                    f"circuit_breaker is only read by effect nodes; node_type {contract.node_type} builds no breaker",
                )

    def check_config(self, contract: Contract, cls: type, where: _Where) -> None:
        """``config`` against the class's ``config_model``: a wrong value at the value, an unknown key at the key.

        A value that ``${VAR:default}`` put there is reported at the placeholder, naming the variable. An
        orchestrator's ``steps`` are left to ``check_steps``, which checks them even when node code is not imported
        (the runtime validates them with the same ``Step`` model), so each problem is reported once.
        """
        model = getattr(cls, "config_model", None)
        if not isinstance(model, type) or not issubclass(model, BaseModel):
            return  # not a node class: check_node_code reports that
        try:
            model.model_validate(contract.config)
        except ValidationError as exc:
            errors = exc.errors()
        else:
            return
        # Plain words for the types contract authors write; pydantic's own message for constraints and the rest.
        expected = {
            "int_parsing": "an integer",
            "int_type": "an integer",
            "int_from_float": "an integer (no fraction)",
            "float_parsing": "a number",
            "float_type": "a number",
            "bool_parsing": "a boolean (true/false, yes/no, on/off, 1/0)",
            "bool_type": "a boolean (true/false, yes/no, on/off, 1/0)",
            "string_type": "a string (quote it)",
            "list_type": "a list",
            "tuple_type": "a list",
            "dict_type": "a mapping",
            "model_type": "a mapping",
            "model_attributes_type": "a mapping",
        }
        config = where.child("config")
        owner = f"{cls.__name__}.config_model ({model.__name__})"
        steps_checked = contract.node_type is NodeType.ORCHESTRATOR and "steps" in contract.config
        for error in errors:
            loc = [step for step in error["loc"] if isinstance(step, str | int)]
            if steps_checked and loc[:1] == ["steps"]:
                continue
            label = "config" + "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in loc)
            if error["type"] == "extra_forbidden":
                known = list(model.model_fields) if len(loc) == 1 else []
                declared = f" (declared: {', '.join(known) or 'none'})" if len(loc) == 1 else ""
                self.report(
                    config.at(*loc, key=True),
                    "config-unknown",
                    f"{label}: unknown key, not a field of {owner}{declared}" + _suggest(str(loc[-1]), known),
                )
            elif error["type"] == "missing":
                given = isinstance(where.data, dict) and "config" in where.data
                self.report(
                    config.at(*loc[:-1]) if given else where.at("name"),
                    "config-missing",
                    f"{label}: required by {owner} and not given",
                )
            else:
                pos = config.at(*loc)
                origin = self._interpolated(pos, error)
                if origin is None:
                    continue  # a placeholder left unresolved: the env check reported it
                shown = repr(error["input"])
                shown = shown if len(shown) <= 80 else shown[:77] + "..."
                wanted = expected.get(error["type"])
                problem = f"expected {wanted}" if wanted else error["msg"].removeprefix("Input ")
                self.report(pos, "config-type", f"{label}: {problem}, got {shown}{origin}")

    def _interpolated(self, pos: _Pos, error: Mapping[str, Any]) -> str | None:
        """`` (from ...)`` naming the variable of a ``${VAR:default}`` placeholder written at ``pos``; "" for none,
        ``None`` when the wrong value is the placeholder itself, left in place because it could not be resolved.

        Interpolation replaced the placeholder by its value before any check runs, so the file's text is what
        still says where a value came from; it is read only for a value already found wrong.
        """
        try:
            lines = pos.file.read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError):
            return ""
        text = lines[pos.line - 1][pos.column - 1 :] if 0 < pos.line <= len(lines) else ""
        # The scalar at pos: up to its closing quote, or (plain) up to a flow indicator or comment outside `${...}`.
        if text[:1] in ("'", '"'):
            scalar = text[1:].split(text[0], 1)[0]
        else:
            plain = re.match(r"(?:\$\{[^}]*\}|[^,\]}#])*", text)
            scalar = plain.group(0) if plain else ""
        found = re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}", scalar)
        if not found:
            return ""
        if any(f"${{{name}" in str(error["input"]) for name, _ in found):
            return None
        if len(found) > 1:
            return f" (from the environment variables {', '.join(name for name, _ in found)})"
        name, default = found[0]
        if f"${{{name}:" in scalar and default == str(error["input"]):
            return f" (the default of ${{{name}:{default}}})"
        return f" (from the environment variable {name})"

    def check_steps(self, raw: Any, where: _Where) -> None:
        """An orchestrator's ``config.steps``: each a valid step, dependencies known, no cycle."""
        if not isinstance(raw, list):
            self.report(where.at(), "steps", "config.steps must be a list of steps")
            return
        steps: list[Step] = []
        for index, item in enumerate(raw):
            try:
                steps.append(Step.model_validate(item))
            except ValidationError as exc:
                for error in exc.errors():
                    field = ".".join(str(p) for p in error["loc"])
                    self.report(where.at(index, *error["loc"]), "steps", f"step {index}: {field}: {error['msg']}")
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

    def check_transitions(self, fsm: FsmSubcontract, where: _Where) -> None:
        """What an FSM declares that could never happen: a state's ``timeout_ms`` (nothing acts when it passes), a
        transition name given twice, and a transition an earlier one without a guard always takes first (the machine
        tries a trigger's transitions from a state in order; '*' is every non-terminal state, as ``onex.fsm`` reads it).
        """
        for index, state in enumerate(fsm.states):
            if state.timeout_ms is not None:
                self.report(
                    where.at("states", index, "timeout_ms", key=True),
                    "field-unread",
                    f"state {state.state_name!r}: state timeouts are not supported, nothing happens when timeout_ms "
                    "passes (an orchestrator's steps have timeout_ms: config.steps)",
                )
        terminal = {s.state_name for s in fsm.states if s.is_terminal} | set(fsm.terminal_states)
        everywhere = [s.state_name for s in fsm.states if s.state_name not in terminal]
        names: dict[str, int] = {}
        taken: dict[tuple[str, str], int] = {}  # (state, trigger) -> the first transition without a guard taking it
        for index, transition in enumerate(fsm.transitions):
            name = transition.transition_name
            if name in names:
                self.report(
                    where.at("transitions", index, "transition_name"),
                    "fsm-transition",
                    f"transition name {name!r} is taken (by transitions[{names[name]}])",
                )
            names.setdefault(name, index)
            given = [transition.from_state] if isinstance(transition.from_state, str) else list(transition.from_state)
            wildcard = "*" in given
            sources = everywhere if wildcard else given
            shadowed = [source for source in sources if (source, transition.trigger) in taken]
            # '*' reads "from every other state": shadowed from some states it still fires from the rest.
            if shadowed and (not wildcard or len(shadowed) == len(sources)):
                first = taken[(shadowed[0], transition.trigger)]
                self.report(
                    where.at("transitions", index, "trigger"),
                    "fsm-transition",
                    f"transition {name!r} can never fire from {', '.join(map(repr, shadowed))}: transitions[{first}] "
                    f"({fsm.transitions[first].transition_name!r}) takes trigger {transition.trigger!r} there first "
                    "and has no guard",
                )
            if not any(condition.required for condition in transition.conditions):
                for source in sources:
                    taken.setdefault((source, transition.trigger), index)

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

    def check_generated_models(self, contract: Contract, where: _Where) -> None:
        """A model ``onex codegen models`` generated from an event's ``payload_schema`` that changed since.

        The module is found by convention (``nodes/<name>/v<version>/models.py``) and read with ``ast``, not
        imported (``onex.contracts.generated``); no module, or no generated class for an event, is nothing to report.
        """
        events = contract.subcontracts.event_type
        file = models_path(self.root, contract.name, contract.version)
        if events is None or not file.is_file():
            return
        try:
            generated = generated_models(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            return
        for direction in ("consumes", "publishes"):
            for index, spec in enumerate(getattr(events, direction)):
                if spec.payload_schema is None or spec.event_name not in generated:
                    continue
                cls, digest = generated[spec.event_name]
                if digest != schema_digest(spec.payload_schema):
                    self.report(
                        where.at("subcontracts", "event_type", direction, index, "payload_schema", key=True),
                        "model-stale",
                        f"{cls} in {self.display(file)} was generated from an older payload_schema of "
                        f"{spec.event_name}: run onex codegen models {self.display(contract.source)}",
                    )

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
        if subcontracts.aggregation is not None:
            aggregations = where.child("subcontracts", "aggregation")
            for index, item in enumerate(subcontracts.aggregation.aggregations):
                if item.type == "CUSTOM" and item.method:
                    role = f"method {{name}} (aggregation {item.name!r})"
                    require(item.method, aggregations.at("aggregations", index, "method"), role)
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

    def check_state(self, contract: Contract, cls: type, where: _Where) -> None:
        """A state_management subcontract asks only what the class can honour (its ``state_support``)."""
        subcontract = contract.subcontracts.state_management
        support = getattr(cls, "state_support", None)
        if subcontract is None or not isinstance(support, StateSupport):
            return
        here = where.child("subcontracts", "state_management")
        owner = contract.implementation_path
        because = f" ({support.why})" if support.why else ""
        if support.fields:
            for index, name in enumerate(subcontract.state_fields):
                if name not in support.fields:
                    self.report(
                        here.at("state_fields", index),
                        "state-field",
                        f"{owner} keeps no state field {name!r} (it keeps: {', '.join(support.fields)})"
                        + _suggest(name, support.fields),
                    )
            missing = [name for name in support.required if name not in subcontract.state_fields]
            if missing and subcontract.storage == "store":
                self.report(
                    here.at("state_fields") if "state_fields" in subcontract.model_fields_set else here.at(),
                    "state-field",
                    f"state_fields must include {', '.join(missing)}: {owner} cannot resume its work without them",
                )
        for key, allowed in (
            ("storage", support.storages),
            ("versioning", support.versionings),
            ("checkpoint", support.checkpoints),
        ):
            value = getattr(subcontract, key)
            if value not in allowed:
                self.report(
                    here.at(key) if key in subcontract.model_fields_set else here.at(),
                    "state-choice",
                    f"{owner} cannot honour {key}: {value}; it supports {' | '.join(allowed)}{because}",
                )

    def check_node_code(self, contract: Contract, cls: type, where: _Where) -> None:
        """The class is a node of the contract's kind; the triggers and events its code names are the contract's.

        Each of these fails only at run time otherwise: a class without the node base cannot even be built
        (``NodeX() takes no arguments``), and an unknown trigger or an undeclared event raises while an event is
        handled, which is retried and then dead-lettered.
        """
        owner = contract.implementation_path
        defined, literals = _node_code(cls, self.root)
        wanted = _NODE_BASES[contract.node_type]
        bases = _runtime_bases(cls)
        if "Node" not in bases:
            self.report(
                defined or where.at("implementation" if contract.implementation else "name"),
                "not-a-node",
                f"{owner} is not a node: it must subclass onex.nodes.{wanted} (node_type {contract.node_type}); "
                f"without a node base class the runtime cannot build it ({cls.__name__}() takes no arguments)",
            )
        elif wanted not in bases:
            kinds = [name for name in _NODE_BASES.values() if name in bases]
            actual = f"a {kinds[0]}" if kinds else "a plain Node"
            self.report(
                where.at("node_type"),
                "node-kind-mismatch",
                f"node_type is {contract.node_type} but {owner} is {actual}: subclass onex.nodes.{wanted}"
                + (f" or set node_type: {_node_type_of(kinds[0])}" if kinds else ""),
            )
        fsm = contract.subcontracts.fsm
        triggers = list(dict.fromkeys(t.trigger for t in fsm.transitions)) if fsm is not None else []
        events = contract.subcontracts.event_type
        declared = [spec.event_name for spec in events.publishes] if events is not None else []
        for literal in literals:
            if literal.kind == "trigger" and literal.name not in triggers:
                if fsm is None:
                    problem = f"{contract.name} has no fsm subcontract, so self.fsm is None"
                else:
                    problem = (
                        f"the fsm of {contract.name} has no such trigger (triggers: {', '.join(triggers) or 'none'})"
                        + _suggest(literal.name, triggers)
                    )
                self.report(literal.pos, "trigger-unknown", f"{literal.call}(..., {literal.name!r}): {problem}")
            elif literal.kind == "event" and literal.name not in declared and literal.name not in RUNTIME_EVENTS:
                self.report(
                    literal.pos,
                    "event-undeclared",
                    f"{literal.call}({literal.name!r}): {contract.name} does not declare it in "
                    f"subcontracts.event_type.publishes (declared: {', '.join(declared) or 'none'})"
                    + _suggest(literal.name, declared),
                )

    def check_set(
        self,
        loaded: Sequence[_Loaded],
        *,
        events: bool,
        unloaded: Sequence[_Unloaded] = (),
        caches: Sequence[tuple[CachingSubcontract, _Where]] = (),
    ) -> None:
        """Across contracts: versions, routed services, every consumed event published on its topic class, caches
        invalidated by events that exist (``caches``: the standalone caching files; the contracts' own are added).

        A contract that failed to load (``unloaded``) counts with what its raw YAML says; where that cannot be read,
        a finding it could have prevented is not made, so one broken file yields only its own problems.
        """
        first: dict[tuple[str, str], Path] = {}
        for item in loaded:
            key = (item.contract.name, item.contract.version)
            if key in first:
                self.report(
                    item.where.at("version"),
                    "duplicate-version",
                    f"{key[0]} {key[1]} is already defined in {self.display(first[key])}",
                )
            else:
                first[key] = item.contract.source
        if not events:
            return
        self.check_routing_services(loaded, unloaded)
        # The runtime publishes its own events (introspection, heartbeats, transitions) for every hosted node.
        publishers: list[tuple[str, int | None, str | None, str]] = [
            (name, 1, topic_class, "the runtime") for name, topic_class in RUNTIME_EVENTS.items()
        ]
        consumed: set[str] = set()
        for item in loaded:
            if item.contract.subcontracts.event_type is not None:
                for spec in item.contract.subcontracts.event_type.publishes:
                    publishers.append((spec.event_name, spec.event_version, spec.topic_class, item.contract.name))
                consumed |= {spec.event_name for spec in item.contract.subcontracts.event_type.consumes}
        for failed in unloaded:
            publishers += [(*event, failed.name or "a contract that did not load") for event in failed.publishes or ()]
            consumed |= {event[0] for event in failed.consumes or ()}
        unreadable = any(failed.publishes is None or failed.consumes is None for failed in unloaded)
        if not unreadable:  # a contract that did not load may name any event
            self.check_cache_events(loaded, caches, {p[0] for p in publishers} | consumed)
        if any(failed.publishes is None for failed in unloaded):
            return
        for item in loaded:
            event_type = item.contract.subcontracts.event_type
            if event_type is None:
                continue
            here = item.where.child("subcontracts", "event_type", "consumes")
            for index, spec in enumerate(event_type.consumes):
                if spec.external:
                    continue
                same = [p for p in publishers if p[0] == spec.event_name and p[1] in (spec.event_version, None)]
                if any(p[2] in (spec.topic_class, None) for p in same):
                    continue
                if same:
                    classes = sorted({str(p[2]) for p in same})
                    self.report(
                        here.at(index, "topic_class" if "topic_class" in spec.model_fields_set else "event_name"),
                        "event-topic",
                        f"{spec.event_name} v{spec.event_version} is consumed on {spec.topic_class} but published on "
                        f"{' and '.join(classes)} (by {', '.join(dict.fromkeys(p[3] for p in same))}): "
                        f"{item.contract.name} would never receive it (consume it with topic_class: {classes[0]}, or "
                        f"publish it on {spec.topic_class})",
                    )
                    continue
                version = "" if spec.event_version == 1 else f" v{spec.event_version}"
                self.report(
                    here.at(index, "event_name"),
                    "event-unpublished",
                    f"{item.contract.name} consumes {spec.event_name}{version} but no contract publishes it "
                    "(publish it from a node, or mark it `external: true`)",
                )

    def check_cache_events(
        self, loaded: Sequence[_Loaded], caches: Sequence[tuple[CachingSubcontract, _Where]], known: set[str]
    ) -> None:
        """Every event a cache is invalidated on is one the project publishes or consumes: the cache subscribes to
        its topic, so a misspelt name waits on a topic nothing writes and the cache is never invalidated."""
        every = list(caches) + [
            (item.contract.subcontracts.caching, item.where.child("subcontracts", "caching"))
            for item in loaded
            if item.contract.subcontracts.caching is not None
        ]
        for caching, where in every:
            for index, entry in enumerate(caching.invalidate_on):
                name = entry if isinstance(entry, str) else entry.event
                if name not in known:
                    self.report(
                        where.at("invalidate_on", index, *(() if isinstance(entry, str) else ("event",))),
                        "cache-event",
                        f"invalidate_on {name}: no contract publishes or consumes it, so it would never invalidate "
                        "the cache" + _suggest(name, sorted(known)),
                    )
