"""Importing what contracts name: node classes (``implementation``) and payload models (``payload_model``).

``implementation`` must name ``nodes.<...>:<Class>`` in the project's own ``nodes`` package, and the project is the
``root`` passed in, not whatever ``nodes`` happens to be importable. The first root whose ``nodes/`` package owns
the name ``nodes`` in this process (the usual case: ``onex`` run from the project) is imported normally, after
putting the root at the front of ``sys.path``, so classes are the same objects everywhere. Any other root (a second
project, a test corpus) is imported under a private parent package, ``_onex_project_<hash of root>.nodes...``,
whose ``__path__`` is that root: module identity stays per root, relative imports inside it work, and
``sys.modules['nodes']`` is never purged or replaced (that would break every class already imported from it). The
one limitation: under such an alias, a node module's *absolute* ``import nodes.x`` still means the canonical
project's package; node modules should import their siblings relatively.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import re
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from onex.contracts.models import Contract
from onex.contracts.yaml import _display
from onex.exceptions import ContractError, ContractIssue

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
