"""Node code, read with ``ast`` and never run: where a node class is defined, the triggers and events its methods
name as strings, and the attributes of ``self`` it uses. The checks compare them with the contract
(``checks.py``: ``check_node_code``, ``check_cache_lookups``, ``check_class_breakers``).
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from onex.contracts.models import NodeType
from onex.contracts.yaml import _Pos

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


def _self_attributes(cls: type, root: Path) -> set[str] | None:
    """The attributes of ``self`` that ``cls`` and its project base classes name in their code (``self.cache``,
    ``self.breaker_for``), read with ``ast``; ``None`` when the source of ``cls`` itself cannot be read (defined in a
    function, or outside the project's ``nodes``), so that nothing is concluded from code not seen."""
    names: set[str] = set()
    for klass in cls.__mro__:
        module = sys.modules.get(klass.__module__)
        file = None if module is None else _project_file(module, root)
        definition = None
        if file is not None:
            try:
                definition = _class_def(ast.parse(file.read_text(encoding="utf-8")), klass.__qualname__)
            except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
                definition = None
        if definition is None:
            if klass is cls:
                return None
            continue
        names |= {n.attr for n in ast.walk(definition) if isinstance(n, ast.Attribute) and _is_self(n.value)}
    return names
