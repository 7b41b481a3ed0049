"""The JSON Schemas contracts are checked against, and the words their errors are reported in.

The schemas (Draft 2020-12) ship as ``onex/schemas/<name>.schema.json``: ``contract`` and one per subcontract
type. They are written by hand rather than generated from the models, because they are what a user's mistakes are
reported by: a pattern has a hint (``a version MAJOR.MINOR.PATCH``), an optional field is ``type: [string, null]``
(``expected string or null, found integer 3``) where pydantic's generator writes an ``anyOf`` that can only say
"not valid under any of the given schemas", and editors show their descriptions. ``tests/test_contracts.py``
proves that they and ``onex.contracts.models`` agree on every field: its name, type, enum values, and whether it
is required.
"""

from __future__ import annotations

import difflib
import importlib.resources
import json
import re
from collections.abc import Iterator
from functools import cache
from typing import Any

import jsonschema.exceptions
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from onex.contracts.models import SUBCONTRACT_TYPES
from onex.contracts.yaml import _Pos, _short, _type_name, _Where

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


def _schema_issues(name: str, where: _Where, data: Any) -> Iterator[tuple[_Pos, str, str]]:
    """Every error schema ``name`` finds in ``data`` as (position, issue code, message); none when it is valid."""
    for error in _validator(name).iter_errors(data):
        yield from _issues(error, where)


def _issues(error: Any, where: _Where) -> Iterator[tuple[_Pos, str, str]]:
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
                yield pos, "schema", f"{label}: unknown key{hint}"
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
    yield pos, code, f"{label}: {message}" if label else message
