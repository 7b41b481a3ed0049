"""What ``onex codegen models`` leaves in a generated module, and how to find it again: the contract side of keeping
generated payload models in sync with their schemas.

``onex.codegen`` writes one model class per event with an inline ``payload_schema`` and records in it the event and
the digest of that schema (``__onex_event__``, ``__onex_schema_digest__``); ``onex validate`` reads them back here,
with ``ast`` (the module is never imported), and reports a model whose schema changed since (``model-stale``).
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def schema_digest(schema: Mapping[str, Any]) -> str:
    """The SHA-256 (hex) of ``schema`` as canonical JSON (sorted keys, no spaces): what a generated model records."""
    text = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def models_path(root: Path, name: str, version: str) -> Path:
    """Where a node's generated models live by convention: ``nodes/<name>/v<major_minor_patch>/models.py``."""
    return root / "nodes" / name / f"v{version.replace('.', '_')}" / "models.py"


def generated_models(source: str) -> dict[str, tuple[str, str]]:
    """Event name -> (class name, schema digest) of every generated model class in a module's ``source``.

    Read with ``ast``, never imported; a module that does not parse, or a class without both records, contributes
    nothing (a hand-written model is not this module's business).
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return {}
    found: dict[str, tuple[str, str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        records: dict[str, str] = {}
        for statement in node.body:
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(statement.value, ast.Constant)
                and isinstance(statement.value.value, str)
            ):
                records[statement.target.id] = statement.value.value
        if "__onex_event__" in records and "__onex_schema_digest__" in records:
            found[records["__onex_event__"]] = (node.name, records["__onex_schema_digest__"])
    return found
