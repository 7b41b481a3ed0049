"""Semantic checks, beyond what a JSON Schema can say: FSMs, guards, orchestrator steps, payloads, handlers, and
the set of contracts as a whole (duplicate versions, events no one publishes).

Each check reports at the position of the node at fault and goes on, so one load lists every problem. The step
planner (``plan_stages``) is also what the runtime uses: the orchestrator refuses the steps it refuses. Guards, key
templates and payload ``$ref``s are parsed by ``grammar.py``, aggregations judged by ``aggregations.py``, node code
read by ``code.py``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema.exceptions
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError

from onex.contracts.aggregations import aggregation_problems
from onex.contracts.code import _NODE_BASES, _node_code, _runtime_bases, _self_attributes
from onex.contracts.generated import generated_models, models_path, schema_digest
from onex.contracts.grammar import parse_condition, template_fields, unresolved_refs
from onex.contracts.imports import _PAYLOAD_MODEL_RE, _implementation_problem, _load_class
from onex.contracts.models import (
    SUBCONTRACT_TYPES,
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
)
from onex.contracts.yaml import _Pos, _Where
from onex.envelope import RUNTIME_EVENTS
from onex.exceptions import OnexError

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


def _breaker_blocks(contract: Contract) -> list[tuple[str | int, ...]]:
    """Where ``contract`` sets ``circuit_breaker``: its resilience block, and each consumed event's own."""
    events = contract.subcontracts.event_type
    blocks: list[tuple[Resilience | None, tuple[str | int, ...]]] = [(contract.resilience, ("resilience",))]
    blocks += [
        (spec.resilience, ("subcontracts", "event_type", "consumes", index, "resilience"))
        for index, spec in enumerate(events.consumes if events is not None else ())
    ]
    return [steps for block, steps in blocks if block is not None and "circuit_breaker" in block.model_fields_set]


def _node_type_of(base: str) -> str:
    return next(str(kind) for kind, name in _NODE_BASES.items() if name == base)


def _suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
    return f"; did you mean {close[0]!r}?" if close else ""


# --- the checks -------------------------------------------------------------------------------------------------

# The major version of the contract language onex reads (``contract_version``; docs/contracts.md).
CONTRACT_LANGUAGE_MAJOR = 2
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
        elif isinstance(subcontract, CachingSubcontract):
            self.check_cache_templates(subcontract, where)

    def check_cache_templates(self, caching: CachingSubcontract, where: _Where) -> None:
        """``key_template`` and each ``invalidate_on[].key`` are templates ``onex.cache`` can render
        (``template_fields``): otherwise building the cache or every invalidation fails at run time."""
        templates: list[tuple[str, tuple[str | int, ...]]] = []
        if "key_template" in caching.model_fields_set:
            templates.append((caching.key_template, ("key_template",)))
        for index, entry in enumerate(caching.invalidate_on):
            if not isinstance(entry, str) and entry.key is not None:
                templates.append((entry.key, ("invalidate_on", index, "key")))
        for template, steps in templates:
            try:
                template_fields(template)
            except ValueError as exc:
                label = ".".join(str(step) if isinstance(step, str) else f"[{step}]" for step in steps)
                self.report(where.at(*steps), "cache-template", f"{label.replace('.[', '[')} {template!r}: {exc}")

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
        first: dict[str, int] = {}  # handler -> its first consumes entry: one subscription, so one batch setting
        for index, spec in enumerate(events.consumes):
            if spec.handler is None:
                continue
            earlier = first.setdefault(spec.handler, index)
            if spec.batch != events.consumes[earlier].batch:
                other = events.consumes[earlier]
                self.report(
                    where.at("consumes", index, "batch" if "batch" in spec.model_fields_set else "handler"),
                    "event-batch",
                    f"event {spec.event_name}: batch is {str(spec.batch).lower()} but {other.event_name} "
                    f"(consumes[{earlier}]) has batch: {str(other.batch).lower()} for the same handler "
                    f"{spec.handler!r}; one handler is one subscription, so its entries must agree",
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
        if routing.strategy != "service" and not routing.targets:
            self.report(
                where.at("strategy"),
                "routing-strategy",
                f"strategy {routing.strategy} needs targets to choose between; with none every command goes to the "
                "node's default service (give targets, or strategy: service with fallbacks)",
            )
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
        major = contract.contract_version.split(".")[0]
        if major != str(CONTRACT_LANGUAGE_MAJOR):
            self.report(
                where.at("contract_version"),
                "contract-version",
                f"contract_version {contract.contract_version}: onex reads contract language "
                f"{CONTRACT_LANGUAGE_MAJOR}.x.y only (write contract_version: {CONTRACT_LANGUAGE_MAJOR}.0.0)",
            )
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
        self.check_reads(contract, cls, where)
        self.check_routes(contract, cls, where)
        self.check_cache_lookups(contract, cls, where)
        self.check_class_breakers(contract, cls, where)
        self.check_step_names(contract, cls, where)
        problems = getattr(cls, "contract_problems", None)
        for steps, message in problems(contract) if callable(problems) else ():
            self.report(where.at(*steps), "node-contract", message)

    def check_breakers(self, contract: Contract, where: _Where) -> None:
        """``circuit_breaker`` only on effect nodes: ``EffectNode`` is the one kind that builds a breaker."""
        if contract.node_type is NodeType.EFFECT:
            return
        for steps in _breaker_blocks(contract):
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
        for index, state in enumerate(fsm.states):
            if state.exit_actions and state.state_name in terminal:
                self.report(
                    where.at("states", index, "exit_actions", key=True),
                    "field-unread",
                    f"state {state.state_name!r}: exit_actions never run on a terminal state (no transition leaves "
                    "it); make them entry_actions",
                )
        for t_index, transition in enumerate(fsm.transitions):
            for c_index, condition in enumerate(transition.conditions):
                for name, why in (
                    ("condition_name", "nothing reads a guard's name (write a YAML comment)"),
                    ("required", "every guard is required (required: false would drop it; remove the guard)"),
                ):
                    if name in condition.model_fields_set:
                        self.report(
                            where.at("transitions", t_index, "conditions", c_index, name, key=True),
                            "field-unread",
                            f"transition {transition.transition_name!r}: conditions[{c_index}].{name}: {why}",
                        )
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
                        continue
                    for path, message in unresolved_refs(spec.payload_schema):
                        pos = where.at(direction, index, "payload_schema", *path, "$ref")
                        self.report(pos, "event-payload", f"event {spec.event_name}: payload_schema: {message}")
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

    def check_reads(self, contract: Contract, cls: type, where: _Where) -> None:
        """Each subcontract is one the class reads: its ``subcontracts_read``, and ``routing`` only where it
        ``routes`` events (``onex.routing`` moves the targets' subscriptions whether anyone routes or not)."""
        read = getattr(cls, "subcontracts_read", None)
        if not isinstance(read, frozenset):
            return  # not a node class: check_node_code reports that
        owner = contract.implementation_path
        for kind in SUBCONTRACT_TYPES:
            if getattr(contract.subcontracts, kind) is None:
                continue
            if kind == "routing" and not getattr(cls, "routes", None):
                why = f"{owner} routes no event (a node class routes the events its `routes` declares)"
            elif kind != "routing" and kind not in read:
                why = f"{owner} reads no {kind} subcontract (it reads: {', '.join(sorted(read))})"
            else:
                continue
            self.report(where.at("subcontracts", kind, key=True), "field-unread", f"subcontracts.{kind}: {why}")

    def check_routes(self, contract: Contract, cls: type, where: _Where) -> None:
        """A ``hash_key`` or a target's condition reads a field the class puts in the route context (its ``routes``):
        a missing field hashes every command to the first target, or never matches."""
        routing, routes = contract.subcontracts.routing, getattr(cls, "routes", None)
        if routing is None or not isinstance(routes, Mapping) or not routes:
            return
        fields = sorted({name for names in routes.values() for name in names})
        events = ", ".join(sorted(routes))
        here = where.child("subcontracts", "routing")
        if routing.strategy == "hash" and routing.hash_key and routing.hash_key not in fields:
            self.report(
                here.at("hash_key"),
                "routing-strategy",
                f"hash_key {routing.hash_key!r}: {events} has no such field to route by (fields: {', '.join(fields)})"
                + _suggest(routing.hash_key, fields),
            )
        if routing.strategy != "conditional":
            return
        for index, target in enumerate(routing.targets):
            try:
                name = parse_condition(target.condition)[0].split(".")[0] if target.condition else None
            except ValueError:
                continue  # check_routing reported it
            if name is not None and name not in fields:
                self.report(
                    here.at("targets", index, "condition"),
                    "routing-condition",
                    f"target {target.name!r}: condition reads {name!r}, which {events} has no field of "
                    f"(fields: {', '.join(fields)})" + _suggest(name, fields),
                )

    def check_cache_lookups(self, contract: Contract, cls: type, where: _Where) -> None:
        """``cached`` names lookups the class makes and ``key_template`` reads fields they pass (its
        ``cached_lookups``); a class that never reads ``self.cache`` caches nothing at all."""
        caching = contract.subcontracts.caching
        read = getattr(cls, "subcontracts_read", None)
        if caching is None or not isinstance(read, frozenset) or "caching" not in read:
            return
        here = where.child("subcontracts", "caching")
        owner = contract.implementation_path
        lookups = getattr(cls, "cached_lookups", None)
        if lookups is None:
            attributes = _self_attributes(cls, self.root)
            if attributes is None or "cache" in attributes:
                return  # looks things up with names we cannot see: undeclared, so unchecked
            lookups = {}
        if not lookups:
            self.report(
                where.at("subcontracts", "caching", key=True),
                "field-unread",
                f"subcontracts.caching: {owner} looks nothing up through self.cache, so nothing would be cached",
            )
            return
        known = sorted(lookups)
        for index, name in enumerate(caching.cached):
            if name not in lookups:
                self.report(
                    here.at("cached", index),
                    "field-unread",
                    f"cached {name!r}: {owner} makes no such lookup (it looks up: {', '.join(known)})"
                    + _suggest(name, known),
                )
        try:
            used = template_fields(caching.key_template)
        except ValueError:
            return  # check_cache_templates reported it
        for name in dict.fromkeys(caching.cached):
            passed = sorted(lookups.get(name, ()))
            for field_name in used:
                if name in lookups and field_name not in passed:
                    self.report(
                        here.at("key_template") if "key_template" in caching.model_fields_set else here.at(),
                        "cache-template",
                        f"key_template {caching.key_template!r}: lookup {name!r} passes no field {field_name!r} "
                        f"(it passes: {', '.join(passed) or 'none'})" + _suggest(field_name, passed),
                    )

    def check_class_breakers(self, contract: Contract, cls: type, where: _Where) -> None:
        """``circuit_breaker`` only on an effect class that calls its breaker (``uses_breaker``, else its code names
        ``self.breaker`` or ``self.breaker_for``): ``EffectNode`` builds one but guards no handler with it."""
        if contract.node_type is not NodeType.EFFECT:
            return  # check_breakers reports it on other kinds
        uses = getattr(cls, "uses_breaker", None)
        if uses is None:
            attributes = _self_attributes(cls, self.root)
            uses = attributes is None or bool(attributes & {"breaker", "breaker_for"})
        if uses:
            return
        for steps in _breaker_blocks(contract):
            self.report(
                where.at(*steps, "circuit_breaker", key=True),
                "field-unread",
                f"circuit_breaker: {contract.implementation_path} never calls a circuit breaker "
                "(self.breaker / self.breaker_for), so nothing would trip it",
            )

    def check_step_names(self, contract: Contract, cls: type, where: _Where) -> None:
        """An orchestrator's steps are ones its class runs (``step_names``), and include those it needs
        (``required_steps``): an unknown step is skipped at run time, and without a required one no workflow ends."""
        raw = contract.config.get("steps") if contract.node_type is NodeType.ORCHESTRATOR else None
        if not isinstance(raw, list):
            return
        names, required = getattr(cls, "step_names", None), getattr(cls, "required_steps", None)
        owner = contract.implementation_path
        given = [item.get("step_name") if isinstance(item, Mapping) else None for item in raw]
        if isinstance(names, frozenset):
            runs = sorted(names)
            for index, name in enumerate(given):
                if isinstance(name, str) and name not in names:
                    self.report(
                        where.at("config", "steps", index, "step_name"),
                        "steps",
                        f"step {name!r}: {owner} runs no such step (it runs: {', '.join(runs)})" + _suggest(name, runs),
                    )
        for name in sorted(required) if isinstance(required, frozenset) else ():
            if name not in given:
                self.report(
                    where.at("config", "steps"),
                    "steps",
                    f"config.steps: no step {name!r}; {owner} finishes no workflow without it (add a step named "
                    f"{name!r})",
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
