"""``onex contract diff OLD NEW``: what changed between two versions of a contract, and what that breaks.

A change is *breaking* when something already running or stored relies on what the old version promised:

- an event no longer consumed (its producers' messages pile up unhandled) or no longer published (its consumers wait
  for nothing), or published on another topic class or event version;
- a payload that no longer accepts what it accepted (a field removed, a field's type narrowed or changed, a new
  required field, an inline schema or model that now refuses extra fields), or whose model cannot be compared;
- an FSM state removed or renamed (stored workflows and aggregates may be in it), a trigger removed, a state made
  terminal (workflows in it stop);
- another node kind.

Everything else is *compatible* and listed too: events, fields, states or triggers added, configuration, resilience,
routing, caching and the other subcontracts. ``onex validate`` runs the same comparison against the version
committed in git and warns when a contract changed incompatibly without a new major version.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from onex.contracts.imports import load_payload_model
from onex.contracts.loader import load_contract
from onex.contracts.models import Contract, EventSpec, FsmSubcontract
from onex.exceptions import OnexError

__all__ = ["Change", "committed_tree", "diff_contracts", "diff_files", "is_breaking", "unversioned_breaks"]

Verdict = Literal["compatible", "breaking"]


@dataclass(frozen=True, slots=True)
class Change:
    """One difference: where (``events.consumes.STAMP_FILE``), what happened, and whether it breaks."""

    where: str
    change: str
    verdict: Verdict
    reason: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def is_breaking(changes: Sequence[Change]) -> bool:
    return any(c.verdict == "breaking" for c in changes)


def diff_contracts(old: Contract, new: Contract, *, old_root: Path, new_root: Path) -> list[Change]:
    """Every change from ``old`` to ``new`` (their project roots resolve payload models), breaking ones first."""
    changes: list[Change] = []
    if old.name != new.name:
        changes.append(Change("name", f"{old.name} -> {new.name}", "breaking", "another node: its groups and topics"))
    if old.node_type != new.node_type:
        changes.append(Change("node_type", f"{old.node_type} -> {new.node_type}", "breaking", "another node kind"))
    if old.version != new.version:
        changes.append(Change("version", f"{old.version} -> {new.version}", "compatible"))
    changes += _events(old, new, old_root=old_root, new_root=new_root)
    changes += _fsm(old.subcontracts.fsm, new.subcontracts.fsm)
    changes += _plain("config", old.config, new.config)
    changes += _plain("resilience", old.resilience.model_dump(mode="json"), new.resilience.model_dump(mode="json"))
    changes += _plain(
        "performance_requirements",
        old.performance_requirements.model_dump(mode="json"),
        new.performance_requirements.model_dump(mode="json"),
    )
    for kind in ("aggregation", "routing", "state_management", "caching"):
        before, after = getattr(old.subcontracts, kind), getattr(new.subcontracts, kind)
        changes += _plain(
            kind,
            before.model_dump(mode="json") if before is not None else {},
            after.model_dump(mode="json") if after is not None else {},
        )
    return sorted(changes, key=lambda c: (c.verdict != "breaking", c.where))


# --- events and payloads ------------------------------------------------------------------------------------------


def _specs(contract: Contract, side: str) -> dict[str, EventSpec]:
    events = contract.subcontracts.event_type
    return {s.event_name: s for s in (getattr(events, side) if events is not None else ())}


def _events(old: Contract, new: Contract, *, old_root: Path, new_root: Path) -> list[Change]:
    changes: list[Change] = []
    for side, lost in (("consumes", "no longer consumed: its producers' messages go unhandled"),
                       ("publishes", "no longer published: its consumers wait for nothing")):  # fmt: skip
        before, after = _specs(old, side), _specs(new, side)
        for name in sorted(before.keys() - after.keys()):
            changes.append(Change(f"events.{side}.{name}", "removed", "breaking", lost))
        for name in sorted(after.keys() - before.keys()):
            changes.append(Change(f"events.{side}.{name}", "added", "compatible"))
        for name in sorted(before.keys() & after.keys()):
            a, b = before[name], after[name]
            where = f"events.{side}.{name}"
            for attribute in ("topic_class", "event_version"):
                if getattr(a, attribute) != getattr(b, attribute):
                    changes.append(
                        Change(
                            f"{where}.{attribute}",
                            f"{getattr(a, attribute)} -> {getattr(b, attribute)}",
                            "breaking",
                            "another topic: the other side still uses the old one",
                        )
                    )
            for attribute in ("handler", "partition_key", "batch", "max_batch", "external", "description"):
                if getattr(a, attribute) != getattr(b, attribute):
                    changes.append(
                        Change(
                            f"{where}.{attribute}", f"{getattr(a, attribute)} -> {getattr(b, attribute)}", "compatible"
                        )
                    )
            old_schema, old_problem = _payload_schema(a, old_root)
            new_schema, new_problem = _payload_schema(b, new_root)
            if old_problem or new_problem:
                changes.append(
                    Change(f"{where}.payload", "cannot be compared", "breaking", old_problem or new_problem or "")
                )
            elif old_schema != new_schema:
                changes += _schema_changes(f"{where}.payload", old_schema, new_schema, consumed=side == "consumes")
    return changes


def _payload_schema(spec: EventSpec, root: Path) -> tuple[dict[str, Any], str]:
    """The JSON Schema of an event's payload (inline, or its model's), with ``$defs`` references resolved."""
    if spec.payload_schema is not None:
        return _inline(spec.payload_schema, spec.payload_schema.get("$defs", {})), ""
    if spec.payload_model is None:
        return {}, ""
    try:
        model = load_payload_model(spec.payload_model, root=root)
        schema: dict[str, Any] = model.model_json_schema()
    except (LookupError, AttributeError) as exc:
        return {}, f"payload model {spec.payload_model}: {exc}"
    return _inline(schema, schema.get("$defs", {})), ""


def _inline(schema: Any, defs: Mapping[str, Any]) -> Any:
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs.get(ref.removeprefix("#/$defs/"), {}), defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k not in ("$defs", "title", "description")}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


def _types(schema: Mapping[str, Any]) -> frozenset[str]:
    """The JSON types a (property) schema accepts; empty when it says nothing about types (anything)."""
    found: set[str] = set()
    kind = schema.get("type")
    if isinstance(kind, str):
        found.add(kind)
    elif isinstance(kind, list):
        found.update(str(k) for k in kind)
    for branch in schema.get("anyOf", ()) or schema.get("oneOf", ()):
        if isinstance(branch, dict):
            inner = _types(branch)
            if not inner:
                return frozenset()
            found |= inner
    return frozenset(found)


def _accepts(read: frozenset[str], made: frozenset[str]) -> bool:
    """Whether a field typed ``read`` accepts every value of a field typed ``made`` (empty: any type)."""
    if not read:
        return True
    return bool(made) and all(t in read or (t == "integer" and "number" in read) for t in made)


def _schema_changes(where: str, old: Mapping[str, Any], new: Mapping[str, Any], *, consumed: bool) -> list[Change]:
    """The field changes of a payload schema. What breaks depends on the side: a consumed event's payloads were made
    under the old schema and are read under the new one; a published event's are made under the new one and read by
    consumers still on the old one. A change breaks when something made can be refused where it is read."""
    made, read = (old, new) if consumed else (new, old)
    who = "producers on the old schema" if consumed else "consumers on the old schema"
    made_props: Mapping[str, Any] = made.get("properties", {})
    read_props: Mapping[str, Any] = read.get("properties", {})
    made_required, read_required = set(made.get("required", ())), set(read.get("required", ()))
    closed = read.get("additionalProperties", True) is False  # the reader refuses fields it does not know
    changes: list[Change] = []
    old_props: Mapping[str, Any] = old.get("properties", {})
    new_props: Mapping[str, Any] = new.get("properties", {})
    for name in sorted(old_props.keys() | new_props.keys()):
        if name not in new_props:
            label = "field removed"
        elif name not in old_props:
            label = f"{'required' if name in set(new.get('required', ())) else 'optional'} field added"
        else:
            before, after = _types(old_props[name]), _types(new_props[name])
            label = (
                f"type {'/'.join(sorted(before)) or 'any'} -> {'/'.join(sorted(after)) or 'any'}"
                if before != after
                else ""
            )
            if not label and (name in new.get("required", ())) != (name in old.get("required", ())):
                label = "now required" if name in new.get("required", ()) else "now optional"
            if not label:
                continue
        reason = ""
        if name in made_props and name not in read_props and closed:
            reason = (
                f"{who} still send it, and the new schema refuses unknown fields"
                if consumed
                else f"{who} refuse a field they do not know"
            )
        elif name in read_required and name not in made_required:
            reason = f"{who} may leave it out" if consumed else f"{who} require it"
        elif (
            name in made_props
            and name in read_props
            and not _accepts(_types(read_props[name]), _types(made_props[name]))
        ):
            reason = f"{who} {'send' if consumed else 'refuse'} values of the other type"
        changes.append(Change(f"{where}.{name}", label, "breaking" if reason else "compatible", reason))
    if old.get("additionalProperties", True) is not False and new.get("additionalProperties", True) is False:
        changes.append(Change(where, "extra fields refused", "breaking" if consumed else "compatible",
                              f"{who} may send other fields" if consumed else ""))  # fmt: skip
    if not changes:
        changes.append(Change(where, "schema changed (constraints)", "compatible"))
    return changes


# --- the FSM ------------------------------------------------------------------------------------------------------


def _fsm(old: FsmSubcontract | None, new: FsmSubcontract | None) -> list[Change]:
    if old is None and new is None:
        return []
    if old is None or new is None:
        verdict: Verdict = "breaking" if new is None else "compatible"
        return [Change("fsm", "removed" if new is None else "added", verdict, "stored entities lose their machine")]
    changes: list[Change] = []
    old_states = {s.state_name: s for s in old.states}
    new_states = {s.state_name: s for s in new.states}
    for name in sorted(old_states.keys() - new_states.keys()):
        changes.append(
            Change(f"fsm.states.{name}", "removed", "breaking", "stored workflows and entities may be in this state")
        )
    for name in sorted(new_states.keys() - old_states.keys()):
        changes.append(Change(f"fsm.states.{name}", "added", "compatible"))
    old_terminal = set(old.terminal_states) | {n for n, s in old_states.items() if s.is_terminal}
    new_terminal = set(new.terminal_states) | {n for n, s in new_states.items() if s.is_terminal}
    for name in sorted((new_terminal - old_terminal) & old_states.keys()):
        changes.append(Change(f"fsm.states.{name}", "now terminal", "breaking", "entities in it stop moving"))
    old_triggers = {t.trigger for t in old.transitions}
    new_triggers = {t.trigger for t in new.transitions}
    for name in sorted(old_triggers - new_triggers):
        changes.append(Change(f"fsm.triggers.{name}", "removed", "breaking", "node code and stored history fire it"))
    for name in sorted(new_triggers - old_triggers):
        changes.append(Change(f"fsm.triggers.{name}", "added", "compatible"))
    if old.initial_state != new.initial_state:
        changes.append(Change("fsm.initial_state", f"{old.initial_state} -> {new.initial_state}", "compatible"))
    old_moves = {(t.trigger, str(t.from_state), t.to_state) for t in old.transitions}
    new_moves = {(t.trigger, str(t.from_state), t.to_state) for t in new.transitions}
    if old_moves != new_moves and old_triggers == new_triggers:
        changes.append(Change("fsm.transitions", "sources or destinations changed", "compatible"))
    return changes


def _plain(where: str, old: Any, new: Any) -> list[Change]:
    """Changes in configuration-like values: compatible, listed key by key."""
    if old == new:
        return []
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        changes: list[Change] = []
        for key in sorted(set(old) | set(new), key=str):
            if key not in new:
                changes.append(Change(f"{where}.{key}", "removed", "compatible"))
            elif key not in old:
                changes.append(Change(f"{where}.{key}", "added", "compatible"))
            else:
                changes += _plain(f"{where}.{key}", old[key], new[key])
        return changes
    return [Change(where, f"{old!r} -> {new!r}", "compatible")]


# --- the committed version ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def committed_tree(root: Path, ref: str) -> Iterator[Path]:
    """The project at git ``ref`` (contracts, subcontracts and nodes) in a temporary directory."""
    top = _git(root, "rev-parse", "--show-toplevel").strip()
    prefix = Path(root).resolve().relative_to(Path(top).resolve()).as_posix()
    paths = [
        p
        for p in ("contracts", "subcontracts", "nodes")
        if _git_ok(root, "cat-file", "-e", f"{ref}:{_join(prefix, p)}")
    ]
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", "--format=tar", ref, *(_join(prefix, p) for p in paths)],
        capture_output=True,
        check=False,
    )
    if archive.returncode:
        raise OnexError(f"git archive {ref}: {archive.stderr.decode(errors='replace').strip()}")
    tmp = Path(tempfile.mkdtemp(prefix="onex-contract-"))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tmp, filter="data")
        yield tmp / prefix if prefix != "." else tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def diff_files(old: str, new: Path, *, root: Path, env: Mapping[str, str] | None = None) -> list[Change]:
    """The changes from ``old`` (a contract file, or ``git:REF``: ``new`` as committed at REF) to the file ``new``.

    ``OnexError`` when ``old`` is ``git:REF`` and ``new`` is not under ``root``: git knows only the project's files."""
    if old.startswith("git:") and not new.resolve().is_relative_to(root.resolve()):
        raise OnexError(f"{new} is outside the project root {root}: {old} compares a file of the project")
    new_contract = load_contract(new, root=root, check_implementations=False, env=env)
    if not old.startswith("git:"):
        old_root = _project_of(Path(old), root)  # another checkout's file resolves its $refs in its own project
        old_contract = load_contract(old, root=old_root, check_implementations=False, env=env, checked=False)
        return diff_contracts(old_contract, new_contract, old_root=old_root, new_root=root)
    ref = old.removeprefix("git:") or "HEAD"
    relative = new.resolve().relative_to(root.resolve())
    with committed_tree(root, ref) as old_root:
        committed = old_root / relative
        if not committed.is_file():
            raise OnexError(f"{relative} is not in git at {ref}")
        old_contract = load_contract(committed, root=old_root, check_implementations=False, env=env, checked=False)
        return diff_contracts(old_contract, new_contract, old_root=old_root, new_root=root)


def unversioned_breaks(
    contracts: Sequence[Contract], *, root: Path, ref: str = "HEAD", env: Mapping[str, str] | None = None
) -> list[str]:
    """For ``onex validate``: a warning per contract that changed incompatibly since ``ref`` while its major version
    stayed the same. Nothing when ``root`` is not in a git work tree or a contract is new."""
    if not _git_ok(root, "rev-parse", "--verify", "--quiet", ref):
        return []
    warnings: list[str] = []
    with committed_tree(root, ref) as old_root:
        for contract in contracts:
            try:
                relative = contract.source.resolve().relative_to(root.resolve())
            except ValueError:
                continue
            committed = old_root / relative
            if not committed.is_file():
                continue
            try:
                old = load_contract(committed, root=old_root, check_implementations=False, env=env, checked=False)
            except OnexError:
                continue  # the committed version did not load: nothing to compare with
            breaking = [
                c for c in diff_contracts(old, contract, old_root=old_root, new_root=root) if c.verdict == "breaking"
            ]
            if breaking and old.version.split(".")[0] == contract.version.split(".")[0]:
                first = breaking[0]
                warnings.append(
                    f"{relative}: {len(breaking)} incompatible change(s) since {ref} "
                    f"(e.g. {first.where} {first.change}: {first.reason}) "
                    f"but version {old.version} -> {contract.version} keeps major "
                    f"{old.version.split('.')[0]}; see `onex contract diff git:{ref} {relative}`"
                )
    return warnings


def _project_of(path: Path, default: Path) -> Path:
    """The project a contract file belongs to: the nearest directory above it holding ``contracts/`` with the file
    under it, else ``default``."""
    resolved = path.resolve()
    for parent in resolved.parents:
        if (parent / "contracts").is_dir() and resolved.is_relative_to(parent / "contracts"):
            return parent
    return default


def _join(prefix: str, path: str) -> str:
    return path if prefix in ("", ".") else f"{prefix}/{path}"


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise OnexError(f"git {' '.join(args)}: {done.stderr.strip() or 'failed'}")
    return done.stdout


def _git_ok(root: Path, *args: str) -> bool:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, check=False).returncode == 0
