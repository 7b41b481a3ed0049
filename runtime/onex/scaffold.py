"""``onex new node``: a complete, working node from templates, or from the seed's requirements shape.

``node_spec`` (or ``spec_from_requirements``) checks what the author asked for and returns a ``NodeSpec``;
``render(spec, root)`` returns the files to write (``GeneratedFile``: a path relative to the project root and its
text) and writes nothing; ``write(files, root, force=...)`` writes them, refusing to overwrite (``FileExistsError``
naming every file that exists) unless ``force``. The CLI (``onex._cli_author``) only parses options and prints.

Templates are Jinja2 files shipped in ``onex/templates/``. Jinja2 rather than ``string.Template``: a node has one
handler per consumed event, one publish per declared event, and optional FSM, caching and resilience parts, so the
templates need loops and conditionals; with ``string.Template`` that logic would move into Python string building
and the templates would no longer show what gets written. ``StrictUndefined`` makes a misspelt variable an error.

What a generated node does: each consumed event carries a ``key``; its handler moves the key's FSM entity one state
on (with ``--fsm``), and publishes every declared event with the key, the consumed event's name and
``config.label``. Reducers handle batches (one result per key and batch), effects deliver through their circuit
breaker, orchestrators start a workflow per request whose one step (``config.steps``) runs inline, and publish
when it is done.
"""

from __future__ import annotations

import importlib.machinery
import itertools
import json
import keyword
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jinja2
import yaml

from onex.envelope import RUNTIME_EVENTS
from onex.exceptions import ContractError, ContractIssue

__all__ = [
    "FEATURES",
    "KINDS",
    "TEMPLATES",
    "GeneratedFile",
    "NodeSpec",
    "ScaffoldEvent",
    "node_spec",
    "render",
    "spec_from_requirements",
    "write",
]

KINDS = ("effect", "compute", "reducer", "orchestrator")
_BASES = {
    "effect": "EffectNode",
    "compute": "ComputeNode",
    "reducer": "ReducerNode",
    "orchestrator": "OrchestratorNode",
}
_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
_VERSION_DIR_RE = re.compile(r"^v\d+_\d+_\d+$")  # a node's version package: nodes/<name>/v1_0_0
_EVENT_RE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")
# An FSM state becomes a trigger and an action name (``entered_<state>``); these would shadow what the transitions
# library or the Entity already define.
_RESERVED_STATES = frozenset({"state", "trigger", "context", "entity_id", "correlation_id", "to", "is"})
_DEFAULT_STATES = ("pending", "processing", "completed")

# requirements.yaml `features` -> the contract field that provides each (the table in docs_new_node.md).
FEATURES: Mapping[str, tuple[str, Any]] = {
    "retries": ("resilience.retry", {"max_attempts": 3, "backoff_ms": 100}),
    "circuit_breaker": ("resilience.circuit_breaker", {"failure_threshold": 5, "reset_timeout_ms": 30000}),
    "timeout": ("resilience.timeout_ms", 30000),
    "dead_letter": ("resilience.dead_letter", True),
    "caching": ("subcontracts.caching", None),
    "metrics": ("performance_requirements", {"execution_time": {"target_ms": 100, "percentile": 95}}),
    "state_machine": ("subcontracts.fsm", None),
}
# Other spellings authors use for the same features (after lower-casing, and spaces and dashes made underscores).
_FEATURE_ALIASES = {
    "retry": "retries",
    "circuit_breakers": "circuit_breaker",
    "timeouts": "timeout",
    "dead_letters": "dead_letter",
    "dlq": "dead_letter",
    "cache": "caching",
    "monitoring": "metrics",
    "performance": "metrics",
    "fsm": "state_machine",
}


@dataclass(frozen=True)
class ScaffoldEvent:
    """An event of the new node: its name, payload model and (consumed) handler.

    A consumed event the project already declares with a payload (``reused``) keeps that declaration: the node reads
    the payload other nodes publish, not a model of its own that the real events would not fit.
    """

    name: str
    model: str
    handler: str = ""
    command: bool = False  # consumed on a `cmd` topic (an operation of the requirements)
    external: bool = False  # consumed and published by nothing in the project
    payload_model: str = ""  # the contract's payload_model: this node's own model unless reused
    payload_schema: Mapping[str, Any] | None = None  # or the reused inline payload_schema
    reused: bool = False
    sample: str = ""  # reused: a Python literal of a payload, for the generated test
    sample_valid: bool = True  # whether ``sample`` validates (else the test says what to fill in)


@dataclass(frozen=True)
class NodeSpec:
    """What to generate; build it with ``node_spec`` or ``spec_from_requirements``, which check it."""

    name: str
    kind: str
    consumes: tuple[str, ...]
    publishes: tuple[str, ...]
    fsm_states: tuple[str, ...] = ()
    commands: frozenset[str] = frozenset()  # consumed events that are commands (topic_class cmd)
    description: str = ""
    resilience: Mapping[str, Any] = field(default_factory=dict)
    performance: Mapping[str, Any] = field(default_factory=dict)
    caching: bool = False
    todos: tuple[str, ...] = ()  # requested features no contract field provides

    @property
    def class_name(self) -> str:
        """``Node<Pascal>``, as ``Contract.implementation_path`` derives it."""
        return "Node" + _pascal(self.name)


@dataclass(frozen=True)
class GeneratedFile:
    path: Path  # relative to the project root
    text: str
    template: str  # the name of the template in onex/templates it was rendered from


def _pascal(snake: str) -> str:
    return "".join(part.capitalize() for part in snake.split("_"))


def _split(values: Iterable[str]) -> list[str]:
    """Repeatable options that may also hold comma lists: ``--consumes A,B --consumes C`` is A, B, C."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def node_spec(
    name: str,
    kind: str,
    *,
    consumes: Iterable[str] = (),
    publishes: Iterable[str] = (),
    fsm: Iterable[str] = (),
    **more: Any,
) -> NodeSpec:
    """Check the author's choices; ``ValueError`` (one line, a usage error) names what is wrong.

    Without ``consumes`` the node consumes ``<NAME>_REQUESTED``, without ``publishes`` it publishes
    ``<NAME>_COMPLETED``: a node with nothing to handle or nothing to show would have nothing to test. An
    orchestrator always gets an FSM (its workflows run on one): ``pending,processing,completed`` by default.
    """
    if not _NAME_RE.match(name) or keyword.iskeyword(name):
        raise ValueError(f"node name {name!r} is not snake_case (lower-case letters, digits, single underscores)")
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    consumed = _split(consumes) or [f"{name.upper()}_REQUESTED"]
    published = _split(publishes) or [f"{name.upper()}_COMPLETED"]
    for event in (*consumed, *published):
        if not _EVENT_RE.match(event):
            raise ValueError(f"event name {event!r} is not UPPER_SNAKE_CASE")
    for label, events in (("--consumes", consumed), ("--publishes", published)):
        twice = sorted({e for e in events if events.count(e) > 1})
        if twice:
            raise ValueError(f"{label} names {', '.join(twice)} more than once")
    if f"{name.upper()}_CONFIG" in (*consumed, *published):
        raise ValueError(f"event name {name.upper()}_CONFIG would share its model's name with the node's config model")
    both = sorted(set(consumed) & set(published))
    if both:
        raise ValueError(f"{', '.join(both)} both consumed and published: the node would handle its own output")
    states = _split(fsm)
    if not states and kind == "orchestrator":
        states = list(_DEFAULT_STATES)
    if states:
        if len(states) < 2:
            raise ValueError("--fsm needs at least two states (the first is the initial one, the last terminal)")
        for state in states:
            if not _NAME_RE.match(state) or state in _RESERVED_STATES or keyword.iskeyword(state):
                raise ValueError(f"FSM state {state!r} is not a snake_case name (or is reserved)")
        if len(set(states)) != len(states):
            raise ValueError(f"--fsm names a state more than once: {','.join(states)}")
    return NodeSpec(
        name=name,
        kind=kind,
        consumes=tuple(consumed),
        publishes=tuple(published),
        fsm_states=tuple(states),
        **more,
    )


# --- requirements.yaml ------------------------------------------------------------------------------------------


def _position(path: Path, text: str, steps: Sequence[str | int]) -> tuple[int, int]:
    """Line and column (1-based) of the node at ``steps`` in the YAML ``text``, or of the deepest one found."""
    try:
        node: yaml.Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return 1, 1
    found = (1, 1) if node is None else (node.start_mark.line + 1, node.start_mark.column + 1)
    for step in steps:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if getattr(k, "value", None) == step), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            child = node.value[step]
        if child is None:
            break
        node = child
        found = (node.start_mark.line + 1, node.start_mark.column + 1)
    return found


def spec_from_requirements(
    path: Path,
    name: str,
    *,
    kind: str | None = None,
    consumes: Iterable[str] = (),
    publishes: Iterable[str] = (),
    fsm: Iterable[str] = (),
) -> NodeSpec:
    """The ``NodeSpec`` of a requirements file (the seed's shape) for node ``name``.

    ``node_type`` gives the kind (``kind`` may only repeat it), each operation becomes a consumed command event
    ``<OPERATION>`` (``topic_class: cmd``) with handler ``handle_<operation>`` and a published
    ``<OPERATION>_COMPLETED``, and each feature the field in ``FEATURES`` (aliases allowed); a feature not in
    the table is kept in ``todos``. A malformed file raises ``ContractError`` naming file:line:col and the field;
    a bad name or option ``ValueError`` as ``node_spec`` does.
    """
    display = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ContractError([ContractIssue(display, 1, 1, "requirements-unreadable", str(exc))]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ContractError([ContractIssue(display, line, column, "requirements-yaml", problem)]) from None
    issues: list[ContractIssue] = []

    def bad(steps: Sequence[str | int], message: str) -> None:
        line, column = _position(path, text, steps)
        where = "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in steps).lstrip(".")
        issues.append(ContractIssue(display, line, column, "requirements-field", f"{where or 'file'}: {message}"))

    if not isinstance(data, dict):
        bad((), "a requirements file is a mapping (node_type, service_name, domain, operations, features, ...)")
        raise ContractError(issues)
    known = {"node_type", "service_name", "domain", "business_description", "operations", "features"}
    for key in data:
        if key not in known:
            bad((str(key),), f"unknown field (known: {', '.join(sorted(known))})")
    node_type = data.get("node_type")
    wanted = str(node_type).lower() if isinstance(node_type, str) else None
    if wanted not in KINDS:
        bad(("node_type",), f"must be one of {', '.join(k.upper() for k in KINDS)}, got {node_type!r}")
    for key in ("service_name", "domain", "business_description"):
        if key in data and not isinstance(data[key], str):
            bad((key,), f"must be a string, got {data[key]!r}")
    operations: list[str] = []
    raw_operations = data.get("operations", [])
    if not isinstance(raw_operations, list) or not raw_operations:
        bad(("operations",), "must be a non-empty list of operation names (snake_case), or of {name: ...}")
        raw_operations = []
    for index, item in enumerate(raw_operations):
        op = item.get("name") if isinstance(item, dict) else item
        if not isinstance(op, str) or not _NAME_RE.match(op):
            bad(("operations", index), f"an operation is a snake_case name (or {{name: ...}}), got {item!r}")
        elif op in operations:
            bad(("operations", index), f"operation {op!r} is listed twice")
        else:
            operations.append(op)
    features: list[str] = []
    raw_features = data.get("features", [])
    if not isinstance(raw_features, list):
        bad(("features",), "must be a list of feature names")
        raw_features = []
    for index, item in enumerate(raw_features):
        if not isinstance(item, str) or not item.strip():
            bad(("features", index), f"a feature is a name, got {item!r}")
        else:
            features.append(item.strip())
    if issues:
        raise ContractError(issues)
    assert wanted is not None
    if kind is not None and kind != wanted:
        raise ValueError(f"--kind {kind} contradicts node_type {node_type} in {display}")

    resilience: dict[str, Any] = {}
    performance: dict[str, Any] = {}
    caching = False
    state_machine = False
    todos: list[str] = []
    for feature in features:
        canonical = re.sub(r"[\s_-]+", "_", feature.lower())
        canonical = _FEATURE_ALIASES.get(canonical, canonical)
        if canonical not in FEATURES:
            todos.append(feature)
            continue
        if canonical == "circuit_breaker" and wanted != "effect":  # only an effect calls out; validation refuses it
            todos.append(f"{feature} (only an effect node has a circuit breaker)")
            continue
        target, value = FEATURES[canonical]
        if target.startswith("resilience."):
            resilience[target.removeprefix("resilience.")] = value
        elif target == "performance_requirements":
            performance.update(value)
        elif target == "subcontracts.caching":
            caching = True
        else:
            state_machine = True
    where = [f"{key} {data[key]}" for key in ("service_name", "domain") if data.get(key)]
    description = str(data.get("business_description") or f"The {name} node.").strip()
    if where:
        description += f" ({', '.join(where).replace('_name', '')})"
    states = _split(fsm) or (list(_DEFAULT_STATES) if state_machine else [])
    commands = [op.upper() for op in operations]
    return node_spec(
        name,
        wanted,
        consumes=[*commands, *_split(consumes)],
        publishes=_split(publishes) or [f"{op.upper()}_COMPLETED" for op in operations],
        fsm=states,
        commands=frozenset(commands),
        description=description,
        resilience=resilience,
        performance=performance,
        caching=caching,
        todos=tuple(todos),
    )


# --- rendering --------------------------------------------------------------------------------------------------

_environment = jinja2.Environment(
    loader=jinja2.PackageLoader("onex", "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,  # YAML and Python, never HTML
)
_environment.policies["json.dumps_kwargs"] = {"sort_keys": False}

TEMPLATES = (
    "contract.yaml.j2",
    "fsm.yaml.j2",
    "caching.yaml.j2",
    "nodes_package.py.j2",
    "package.py.j2",
    "init.py.j2",
    "models.py.j2",
    "node.py.j2",
    "test.py.j2",
)


def _contracts_dir(root: Path, kind: str) -> str:
    """``contracts/<kind>s``, or the spelling the project already uses for that kind (``compute``, ...)."""
    for candidate in (f"{kind}s", kind):
        if (root / "contracts" / candidate).is_dir():
            return f"contracts/{candidate}"
    return f"contracts/{kind}s"


def _declared_in(root: Path, *, skip: Path) -> tuple[set[str], dict[str, dict[str, Any]]]:
    """The event names the project's contracts and subcontracts publish, and per event name the first payload
    declaration (``payload_model`` or ``payload_schema``) made for it, a publisher's before a consumer's: the
    payload on the wire is the one its publisher builds. Read as plain YAML (the project need not validate yet): a
    file that does not parse declares nothing here; ``onex validate`` will say why."""

    def walk(value: Any) -> Iterable[tuple[str, dict[str, Any]]]:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("publishes", "consumes") and isinstance(item, list):
                    yield from ((key, e) for e in item if isinstance(e, dict) and isinstance(e.get("event_name"), str))
                else:
                    yield from walk(item)
        elif isinstance(value, list):
            for item in value:
                yield from walk(item)

    found: list[tuple[str, dict[str, Any]]] = []
    for folder in ("contracts", "subcontracts"):
        for path in sorted((root / folder).rglob("*.yaml")) if (root / folder).is_dir() else ():
            if path == skip:
                continue
            try:
                found += walk(yaml.safe_load(path.read_text(encoding="utf-8")))
            except (OSError, yaml.YAMLError, UnicodeDecodeError):
                continue
    payloads: dict[str, dict[str, Any]] = {}
    for _, event in sorted(found, key=lambda item: item[0] != "publishes"):  # stable: publishers first
        model, schema = event.get("payload_model"), event.get("payload_schema")
        if isinstance(model, str) and model:
            payloads.setdefault(event["event_name"], {"payload_model": model})
        elif isinstance(schema, dict):
            payloads.setdefault(event["event_name"], {"payload_schema": schema})
    return {event["event_name"] for key, event in found if key == "publishes"}, payloads


# --- a payload for the generated test of a node that consumes an existing event -----------------------------------

_SAMPLE_STRINGS = {
    "uuid": "00000000-0000-4000-8000-000000000001",
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "email": "someone@example.com",
    "uri": "https://example.com/",
}


def _sample(schema: Any, defs: Mapping[str, Any], depth: int = 0) -> Any:
    """A value for ``schema`` (JSON Schema) with every required field and nothing else: the smallest instance the
    common keywords allow. Best effort: the caller validates it (a ``pattern``, for one, is not followed)."""
    if not isinstance(schema, dict) or depth > 20:
        return None
    if isinstance(schema.get("$ref"), str):
        return _sample(defs.get(schema["$ref"].rpartition("/")[2]), defs, depth + 1)
    if "const" in schema:
        return schema["const"]
    if "default" in schema:
        return schema["default"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for combined in ("anyOf", "oneOf", "allOf"):
        options = [o for o in schema.get(combined) or () if isinstance(o, dict) and o.get("type") != "null"]
        if options:
            return _sample(options[0], defs, depth + 1)
    kind = schema.get("type")
    kind = next((k for k in kind if k != "null"), None) if isinstance(kind, list) else kind
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties") or {}
        return {name: _sample(properties.get(name), defs, depth + 1) for name in schema.get("required") or ()}
    if kind == "array":
        return [_sample(schema.get("items"), defs, depth + 1) for _ in range(int(schema.get("minItems", 0)))]
    if kind == "string":
        text = _SAMPLE_STRINGS.get(schema.get("format", ""), "x")
        return text.ljust(int(schema.get("minLength", 0)), "x")
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0) + (1 if "exclusiveMinimum" in schema else 0))
        return int(max(low, 0)) if kind == "integer" else float(max(low, 0))
    if kind == "boolean":
        return False
    return None


def _literal(value: Any, indent: int) -> str:
    """``value`` (JSON data) as Python source that ruff format leaves as it is: a non-empty dict or list one item a
    line with a trailing comma (which keeps it so), strings in double quotes."""
    pad = " " * (indent + 4)
    if isinstance(value, dict) and value:
        items = "".join(f"{pad}{json.dumps(str(k))}: {_literal(v, indent + 4)},\n" for k, v in value.items())
        return "{\n" + items + " " * indent + "}"
    if isinstance(value, list) and value:
        return "[\n" + "".join(f"{pad}{_literal(v, indent + 4)},\n" for v in value) + " " * indent + "]"
    if isinstance(value, bool) or value is None:
        return repr(value)
    return json.dumps(value)


def _reused(declared: Mapping[str, Any], root: Path) -> tuple[str, Mapping[str, Any] | None, Any, bool]:
    """For a consumed event the project already declares (``declared``): its payload_model, payload_schema, a sample
    payload and whether the sample validates (checked against the model, imported from the project, or the schema)."""
    model_spec: str = declared.get("payload_model", "")
    schema: Mapping[str, Any] | None = declared.get("payload_schema")
    sample: Any = {}
    valid = False
    try:
        if schema is not None:
            from jsonschema import Draft202012Validator

            sample = _sample(schema, schema.get("$defs") or {})
            valid = Draft202012Validator(schema).is_valid(sample)
        else:
            from onex.contracts.imports import load_payload_model

            model = load_payload_model(model_spec, root=root)
            full = model.model_json_schema()
            sample = _sample(full, full.get("$defs") or {})
            model.model_validate(sample)
            valid = True
    except Exception:  # whatever fails (the import, the model), the test gets a TODO instead of a payload
        valid = False
    return model_spec, schema, sample if isinstance(sample, dict) else {}, valid


def _shadowed_module(name: str, root: Path) -> str | None:
    """What in ``root``'s ``nodes`` package a new node ``name`` would hide: its package ``nodes/<name>/`` takes the
    import name ``nodes.<name>`` from a module ``nodes/<name>.py`` (or an extension), or joins a package there that is
    not a node's (no ``v<major>_<minor>_<patch>`` version directory); None when the name is free or a node's."""
    nodes = root / "nodes"
    for suffix in importlib.machinery.all_suffixes():
        if (nodes / f"{name}{suffix}").is_file():
            return f"nodes/{name}{suffix}"
    package = nodes / name
    children = [child for child in package.iterdir() if child.name != "__pycache__"] if package.is_dir() else []
    if children and not any(child.is_dir() and _VERSION_DIR_RE.match(child.name) for child in children):
        return f"nodes/{name}/"
    return None


def render(spec: NodeSpec, root: Path) -> list[GeneratedFile]:
    """The files of ``spec``'s node in the project at ``root`` (nothing is written).

    ``ValueError`` (a usage error) when the node's package ``nodes/<name>/`` would shadow a module of the project
    that is not a node (``nodes/models.py``: every contract importing from ``nodes.models`` would break).

    ``root`` is read for two things: the contracts directory name in use for the kind, and which events the
    project already publishes (a consumed event nothing publishes is marked ``external: true``).
    """
    shadowed = _shadowed_module(spec.name, root)
    if shadowed is not None:
        raise ValueError(f"node name {spec.name!r} would shadow {shadowed}, which is not a node: choose another name")
    contract_rel = f"{_contracts_dir(root, spec.kind)}/{spec.name}.yaml"
    package = f"nodes/{spec.name}/v1_0_0"
    # The contract being replaced (--force) does not count: it is the one being written.
    published, payloads = _declared_in(root, skip=root / contract_rel)
    published |= set(RUNTIME_EVENTS) | set(spec.publishes)
    consumes = []
    for event in spec.consumes:
        model = "Model" + _pascal(event.lower())
        own = ScaffoldEvent(
            name=event,
            model=model,
            handler="handle_" + event.lower(),
            command=event in spec.commands,
            external=event not in published,
            payload_model=f"{package.replace('/', '.')}.models:{model}",
        )
        if event not in payloads:
            consumes.append(own)
            continue
        payload_model, payload_schema, sample, valid = _reused(payloads[event], root)
        reused = replace(own, model=payload_model.rpartition(":")[2] or model, payload_model=payload_model)
        consumes.append(
            replace(reused, payload_schema=payload_schema, reused=True, sample=_literal(sample, 8), sample_valid=valid)
        )
    publishes = [
        ScaffoldEvent(name=event, model=model, payload_model=f"{package.replace('/', '.')}.models:{model}")
        for event, model in ((e, "Model" + _pascal(e.lower())) for e in spec.publishes)
    ]
    config_model = f"Model{_pascal(spec.name)}Config"
    orchestrator = spec.kind == "orchestrator"
    node_imports = sorted({_BASES[spec.kind], "Event", *(("StepRun", "Workflow") if orchestrator else ())})
    fsm_path = f"subcontracts/fsm/{spec.name}.yaml"
    caching_path = f"subcontracts/caching/{spec.name}.yaml"
    states = list(spec.fsm_states)
    context: dict[str, Any] = {
        "name": spec.name,
        "kind": spec.kind,
        "node_type": spec.kind.upper(),
        "description": spec.description or f"A {spec.kind} node (generated by onex new node).",
        "class_name": spec.class_name,
        "base_class": _BASES[spec.kind],
        "node_imports": node_imports,
        "config_model": config_model,
        # Sorted as ruff (isort, case-insensitive) sorts them: ModelAudited before ModelAuditLogConfig.
        "models": sorted({config_model, *(e.model for e in (*consumes, *publishes) if not e.reused)}, key=str.lower),
        "consumes": consumes,
        "publishes": publishes,
        "batch": spec.kind == "reducer",
        "orchestrator": orchestrator,
        "fsm_states": states,
        "fsm_pairs": list(itertools.pairwise(states)),
        # What one request does to the FSM: an orchestrator's workflow runs to the last state, any other node's
        # entity moves one state on per event.
        "expected_states": states[1:] if orchestrator else states[1:2],
        "fsm_path": fsm_path,
        "caching": spec.caching,
        "caching_path": caching_path,
        "resilience": dict(spec.resilience),
        "performance": dict(spec.performance),
        "todos": list(spec.todos),
        "contract_path": contract_rel,
    }
    plan: list[tuple[str, str, str]] = [  # (path, template, the `onex schema` name of the file)
        (contract_rel, "contract.yaml.j2", "contract"),
        (f"{package}/__init__.py", "init.py.j2", ""),
        (f"{package}/models.py", "models.py.j2", ""),
        (f"{package}/node.py", "node.py.j2", ""),
        (f"tests/test_{spec.name}.py", "test.py.j2", ""),
    ]
    if not (root / "nodes" / "__init__.py").is_file():
        plan.append(("nodes/__init__.py", "nodes_package.py.j2", ""))
    if not (root / "nodes" / spec.name / "__init__.py").is_file():
        plan.append((f"nodes/{spec.name}/__init__.py", "package.py.j2", ""))
    if states:
        plan.append((fsm_path, "fsm.yaml.j2", "fsm"))
    if spec.caching:
        plan.append((caching_path, "caching.yaml.j2", "caching"))
    files = []
    for path, template, schema in plan:
        text = _environment.get_template(template).render(context, schema_path=schema)
        files.append(GeneratedFile(Path(path), text, template))
    return files


def write(files: Sequence[GeneratedFile], root: Path, *, force: bool = False) -> list[Path]:
    """Write ``files`` under ``root`` (directories made as needed); the paths written.

    Without ``force`` nothing is written when any file exists: ``FileExistsError`` lists them all (relative).
    """
    existing = [str(f.path) for f in files if (root / f.path).exists()]
    if existing and not force:
        raise FileExistsError(", ".join(existing))
    written = []
    for generated in files:
        target = root / generated.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(generated.text, encoding="utf-8")
        written.append(target)
    return written
