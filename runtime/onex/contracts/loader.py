"""Loading: one session per load, taking each file through the pipeline and collecting every issue.

::

    size limit -> safe YAML with positions (``yaml.py``) -> ``$ref`` resolution -> JSON Schema (``schema.py``)
    -> ``${ENV_VAR:default}`` in ``config`` -> pydantic models (``models.py``) -> semantic checks (``checks.py``)
    -> set checks (events, versions)

A stage that fails stops that file (later stages would only restate the error) while every other file is still
checked, and all problems are raised together as one :class:`~onex.exceptions.ContractError`. The set checks still
count a failed contract by what its raw YAML says (name, events), so it causes no false problems in other files.

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
    ref / ref-cycle            a ``$ref`` target that does not exist (or cannot be merged), or under
                               ``subcontracts.<type>`` a subcontract of another type / a ``$ref`` loop
    outside-root               a ``$ref``, or a file found by walking a directory, that resolves (symlinks resolved)
                               outside the project root; it is never read
    schema                     the JSON Schema rejects a node (every error, each at its own node)
    env                        ``${VAR}`` with VAR unset and no default, or a malformed placeholder
    fsm-no-initial             ``initial_state`` missing or not a declared state
    fsm-undeclared-state       a transition, ``terminal_states`` or ``error_states`` names an undeclared state
    fsm-duplicate-state        two states with one name
    fsm-unreachable            a state no path of transitions reaches from ``initial_state``
    fsm-terminal-outgoing      a terminal state is the ``from_state`` of a transition ('*' does not count)
    fsm-transition             a transition name given twice, or a transition that can never fire: an earlier one
                               without a guard takes its trigger from the same state first
    field-unread               a field nothing would read there: a consumer's ``handler``/``batch``/``external``/
                               ``resilience`` on a published event, ``circuit_breaker`` on a node other than an
                               effect or on an effect class that calls no breaker (``uses_breaker``), a state's
                               ``timeout_ms`` (state timeouts are not supported), ``exit_actions`` on a terminal
                               state, a condition's ``condition_name``/``required``, a subcontract the class does not
                               read (``subcontracts_read``; ``routing`` where it ``routes`` nothing), a caching
                               subcontract on a class that looks nothing up or a ``cached`` lookup it never makes
    fsm-condition              a guard outside the grammar ``field operator value`` (see ``parse_condition``)
    routing-condition          the same, in a routing target's ``condition``; or a condition reading a field the
                               routed event's route context lacks (the class's ``routes``)
    routing-strategy           a strategy without what it needs (``hash_key``, a condition, targets), a field it does
                               not read, or a ``hash_key`` the routed event's route context lacks
    routing-service            a service a routing names that is no node, or a consumer of a routed event it omits
    aggregation-duplicate      two aggregations, or two functions of one, with one name
    aggregation-window         TIME_WINDOW without a window; window fields that do not fit its type (one of
                               size_ms / size_items, slide_* for sliding, gap_ms for sessions, grace_ms by time)
    aggregation-buckets        buckets not ascending, missing (SIZE_BUCKETS, histogram) or where nothing reads them
    aggregation-function       a function other than count without ``field``, or count with one
    aggregation-method         CUSTOM without ``method``, or ``method`` on another type
    aggregation-field          a field path that is not a dotted name, or ``field`` on TIME_WINDOW / CUSTOM
    aggregation-condition      the same as fsm-condition, in an aggregation's ``where``
    event-payload              ``payload_model`` and ``payload_schema`` both set, an invalid ``payload_schema`` or
                               one with a ``$ref`` that resolves to nothing in it (at the ``$ref``), or a
                               ``payload_model`` that is not a pydantic model under ``nodes``
    event-batch                ``max_batch`` on a published event, or on a consumed one without ``batch: true``;
                               consumed entries sharing a handler (one subscription) that disagree on ``batch``
    implementation-forbidden   ``implementation`` outside the project's ``nodes`` package (checked always)
    implementation-missing     the implementation module or class cannot be imported
    handler-missing            a consumes entry without ``handler``, or a consumes handler, entry/exit action or
                               transition action the class lacks
    not-a-node                 the implementation does not subclass a node base class (reported at the class)
    node-kind-mismatch         the class's node kind (``EffectNode``, ...) is not the contract's ``node_type``
    trigger-unknown            node code fires ``self.fsm.trigger(entity, "name")`` with a trigger the FSM lacks
    event-undeclared           node code publishes (``self.publish``/``envelope``/``publish_envelopes``) an event
                               its contract's ``publishes`` does not declare (runtime events are always allowed)
    steps                      an orchestrator's ``config.steps``: a malformed step (every problem of it, such as a
                               ``timeout_ms`` or ``max_attempts`` below 1), an unknown dependency, a cycle, a step
                               its class does not run (``step_names``) or one it needs left out (``required_steps``)
    cache-template             a caching ``key_template`` or ``invalidate_on[].key`` onex cannot render (malformed,
                               a conversion, a format spec, a field that is not a plain name), or a field of it that
                               a cached lookup does not pass (the class's ``cached_lookups``)
    contract-version           a ``contract_version`` whose major is not the contract language onex reads (2)
    event-unpublished          a consumed event (name, version) that no contract in the set publishes
    event-topic                a consumed event published only on another ``topic_class`` (so on another topic)
    cache-event                a caching ``invalidate_on`` event that no contract publishes or consumes
    duplicate-version          two contracts with one (name, version), reported at the second
    config-type                a ``config`` value the node's ``config_model`` refuses (at the value)
    config-unknown             a ``config`` key the node's ``config_model`` does not declare (at the key)
    config-missing             a ``config`` key the node's ``config_model`` requires is absent
    state-field                a ``state_fields`` entry the node does not keep, or one it needs left out
    state-choice               a ``storage``/``versioning``/``checkpoint`` the node class cannot honour
    state-checkpoint           ``checkpoint: interval_ms`` without ``interval_ms``, or ``interval_ms`` without it
    node-contract              what the node class itself refuses (its ``contract_problems``)
    model-stale                a model ``onex codegen models`` generated (``nodes/<name>/v<version>/models.py``) from
                               an older ``payload_schema`` of the event (reported at its ``payload_schema``)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from onex.contracts.checks import _Checks, _Loaded, _Unloaded
from onex.contracts.models import (
    SUBCONTRACT_MODELS,
    SUBCONTRACT_TYPES,
    CachingSubcontract,
    Contract,
    ContractSet,
    Subcontract,
)
from onex.contracts.schema import _schema_issues
from onex.contracts.yaml import (
    MAX_YAML_NODES,
    _display,
    _Document,
    _Map,
    _parse_yaml,
    _plain,
    _Pos,
    _Problem,
    _Seq,
    _short,
    _type_name,
    _Where,
)
from onex.exceptions import ContractError, ContractIssue
from onex.settings import resolve_variable

MAX_FILE_BYTES = 1024 * 1024

# Grouped by stage: reading a file, the FSM, events and implementations, the set as a whole.
ISSUE_CODES: frozenset[str] = (
    frozenset({"io", "too-large", "yaml", "yaml-bomb", "ref", "ref-cycle", "outside-root", "schema", "env"})
    | frozenset({"fsm-no-initial", "fsm-undeclared-state", "fsm-duplicate-state", "fsm-unreachable"})
    | frozenset({"fsm-terminal-outgoing", "fsm-condition", "routing-condition", "event-payload", "event-batch"})
    | frozenset({"implementation-forbidden", "implementation-missing", "handler-missing"})
    | frozenset({"not-a-node", "node-kind-mismatch", "trigger-unknown", "event-undeclared"})
    | frozenset({"event-unpublished", "duplicate-version", "steps", "routing-service", "routing-strategy"})
    | frozenset({"aggregation-duplicate", "aggregation-window", "aggregation-buckets", "aggregation-function"})
    | frozenset({"aggregation-method", "aggregation-field", "aggregation-condition"})
    | frozenset({"config-type", "config-unknown", "config-missing", "state-field", "state-choice", "state-checkpoint"})
    | frozenset({"node-contract"})
    | frozenset({"model-stale"})
    | frozenset({"event-topic", "field-unread", "cache-event", "fsm-transition"})
    | frozenset({"cache-template", "contract-version"})
)

_M = TypeVar("_M", bound=BaseModel)

# `${NAME}` / `${NAME:default}`; `$${` is a literal `${`; a `${` without its `}` is an error, not text.
_ENV_RE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_ENV_NAME_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::(.*))?$", re.DOTALL)


@dataclass
class _Session:
    """One load: the root, settings, every issue found, and the parse cache shared by all files."""

    root: Path
    env: Mapping[str, str]
    max_bytes: int
    check_implementations: bool
    issues: list[ContractIssue] = field(default_factory=list)
    given: dict[Path, str] = field(default_factory=dict)
    unloaded: list[_Unloaded] = field(default_factory=list)  # contract files that failed, for the set checks
    caches: list[tuple[CachingSubcontract, _Where]] = field(default_factory=list)  # caching files checked alone
    _documents: dict[str, _Document | None] = field(default_factory=dict)
    checks: _Checks = field(init=False)

    def __post_init__(self) -> None:
        self.checks = _Checks(
            self.report, self.root, self.check_implementations, lambda file: _display(file, self.root, self.given)
        )

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
        data, pos = self._resolve(document.data, document.pos, (os.path.realpath(file),), failures, ())
        return None if failures else _Document(data, pos)

    def _resolve(
        self, value: Any, pos: _Pos, stack: tuple[str, ...], failures: list[bool], path: tuple[str, ...] = ()
    ) -> tuple[Any, _Pos]:
        """``path``: the keys leading to ``value`` in its document, so a ``$ref`` knows what it stands for."""
        if isinstance(value, _Map):
            if "$ref" in value and _is_file_ref(value["$ref"]):
                return self._resolve_ref(value, stack, failures, path)
            out = _Map(value.pos)
            for key, child in value.items():
                resolved, child_pos = self._resolve(child, value.value_pos[key], stack, failures, (*path, key))
                out.put(key, resolved, value.key_pos[key], child_pos)
            return out, out.pos
        if isinstance(value, _Seq):
            seq = _Seq(value.pos)
            for child, child_pos in zip(value, value.item_pos, strict=True):
                seq.add(*self._resolve(child, child_pos, stack, failures))
            return seq, seq.pos
        return value, pos

    def _resolve_ref(
        self, ref_map: _Map, stack: tuple[str, ...], failures: list[bool], path: tuple[str, ...] = ()
    ) -> tuple[Any, _Pos]:
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
        # `subcontracts: {fsm: {$ref: ...}}` must name an fsm file: another kind is one mistake, at the $ref, and the
        # (valid) file it names is not schema-checked as what it is not.
        found = document.data.get("subcontract_type") if isinstance(document.data, dict) else None
        under = path[1] if len(path) == 2 and path[0] == "subcontracts" else None
        if under in SUBCONTRACT_TYPES and isinstance(found, str) and found != under:
            failures.append(True)
            self.report(at, "ref", f"{under}: $ref {ref!r} names a {found} subcontract, not {under}")
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
        for pos, code, message in _schema_issues(schema, where, data):
            valid = False
            self.report(pos, code, message)
        return valid

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
            try:
                value = resolve_variable(name, self.env)  # an ONEX_* name must be a declared setting
            except ValueError as exc:
                self.report(pos, "env", str(exc))
                return whole
            if value is not None:
                return value
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

    # -- stage 7, semantic checks: ``self.checks`` (checks.py)

    # -- files

    def load_file(self, path: Path | str) -> _Loaded | Subcontract | None:
        """Check one file, a contract or (when it declares ``subcontract_type``) a subcontract."""
        file = self.file(path)
        document = self.parse(file)
        if document is None:
            self.unloaded.append(_unloaded(None))
            return None
        if isinstance(document.data, dict) and "subcontract_type" in document.data:
            return self.load_subcontract(file)
        resolved = self.resolve(document, file)
        if resolved is None:
            self.unloaded.append(_unloaded(document.data))
            return None
        where = _Where(resolved.data, resolved.pos)
        if not self.validate("contract", where, resolved.data):
            self.unloaded.append(_unloaded(resolved.data))
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
            self.unloaded.append(_unloaded(resolved.data))
            return None
        self.checks.check_contract(contract, where)
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
            self.checks.check_subcontract(subcontract, where)
        if isinstance(subcontract, CachingSubcontract):
            self.caches.append((subcontract, where))
        return subcontract


_Events = tuple[tuple[str, int | None, str | None], ...]


def _unloaded(data: Any) -> _Unloaded:
    """What the set checks can read of a contract that failed to load: its name and events, ``None`` where unreadable
    (``data`` is ``None`` when the file did not parse; an ``event_type`` still a ``$ref`` did not resolve)."""
    if not isinstance(data, dict):
        return _Unloaded(None, None, None)
    name = data.get("name")
    subcontracts = data.get("subcontracts", {})
    events = subcontracts.get("event_type", {}) if isinstance(subcontracts, dict) else None

    def entries(direction: str) -> _Events | None:
        items = events.get(direction, []) if isinstance(events, dict) and "$ref" not in events else None
        if not isinstance(items, list) or not all(
            isinstance(i, dict) and isinstance(i.get("event_name"), str) for i in items
        ):
            return None
        found = []
        for item in items:
            version, topic_class = item.get("event_version", 1), item.get("topic_class", "evt")
            readable = isinstance(version, int) and not isinstance(version, bool)
            found.append(
                (
                    item["event_name"],
                    version if readable else None,
                    topic_class if isinstance(topic_class, str) else None,
                )
            )
        return tuple(found)

    return _Unloaded(name if isinstance(name, str) else None, entries("publishes"), entries("consumes"))


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
    checked: bool = True,
) -> Contract:
    """Load and validate one contract file (and the files it ``$ref``s); ``ContractError`` lists every issue.

    Set-level checks (duplicate versions, unpublished events) need the whole set: see ``load_contracts``.
    ``checked=False``: the contract its files describe whatever the checks beyond its schema say (a field this onex
    refuses as unread, a contract language it does not read): ``onex contract diff``'s OLD side, written for the onex
    of its day. A file that does not load into a contract at all is still a ``ContractError``.
    """
    session = _session(root, env, max_bytes, check_implementations)
    result = session.load_file(path)
    if not checked and isinstance(result, _Loaded):
        return result.contract
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
    session.checks.check_set(loaded, events=paths is None, unloaded=session.unloaded, caches=session.caches)
    session.raise_if_issues()
    contracts = sorted((item.contract for item in loaded), key=lambda c: (c.name, c.version_tuple))
    return ContractSet(session.root, contracts)
