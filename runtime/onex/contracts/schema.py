"""The JSON Schemas contracts are checked against, and the words their errors are reported in.

The schemas (Draft 2020-12) ship as ``onex/schemas/<name>.schema.json``: ``contract`` and one per subcontract
type. They are written by hand rather than generated from the models, because they are what a user's mistakes are
reported by: a pattern has a hint (``a version MAJOR.MINOR.PATCH``), an optional field is ``type: [string, null]``
(``expected string or null, found integer 3``) where pydantic's generator writes an ``anyOf`` that can only say
"not valid under any of the given schemas", and editors show their descriptions. ``tests/test_contracts.py``
proves that they and ``onex.contracts.models`` agree on every field: its name, type, enum values, and whether it
is required.

The loader validates documents after ``$ref`` resolution, so the shipped schemas know nothing of ``$ref``. What
``onex schema`` prints for editors, which see files as written, is ``bundled_schema()``: one document built from
them, self-contained, accepting a ``$ref`` wherever a subcontract may stand.
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

from onex.contracts.models import SUBCONTRACT_MODELS, SUBCONTRACT_TYPES
from onex.contracts.yaml import _Pos, _short, _type_name, _Where

_SCHEMA_NAMES: tuple[str, ...] = ("contract", *SUBCONTRACT_TYPES)


@cache
def _schema_text(name: str) -> str:
    return (importlib.resources.files("onex") / "schemas" / f"{name}.schema.json").read_text(encoding="utf-8")


def schemas() -> dict[str, dict[str, Any]]:
    """Every shipped JSON Schema by name: ``contract`` and one per subcontract type (``fsm``, ``routing``, ...).

    Each is the file ``<name>.schema.json``, as the loader validates with it: after ``$ref`` resolution, so the
    contract schema's subcontract positions refer to the subcontract schemas by file name and accept no ``$ref``.
    ``bundled_schema()`` is the form for editors.
    """
    return {name: json.loads(_schema_text(name)) for name in _SCHEMA_NAMES}


_REF_DESCRIPTION = (
    "A shared subcontract file: `subcontracts/fsm/x.yaml` (project-root-relative) or `./x.yaml`, `../x.yaml` "
    "(relative to this file); keys next to `$ref` are merged over the file's."
)


def _ref_object(model: str, subcontract: dict[str, Any]) -> dict[str, Any]:
    """A ``{$ref: file, <sibling keys>...}`` standing for subcontract ``model``: the siblings are some of its keys,
    each checked only once the loader has merged them over the file (a partial subcontract is not a valid one)."""
    return {
        "type": "object",
        "description": _REF_DESCRIPTION,
        # `patternProperties`, not `properties: {$ref: ...}`: a schema with a key named `$ref` that is not a reference
        # trips tools that walk a schema looking for references.
        "patternProperties": {r"^\$ref$": {"type": "string", "minLength": 1, "description": _REF_DESCRIPTION}},
        "required": ["$ref"],
        "propertyNames": {"enum": ["$ref", *subcontract.get("properties", {})]},
        "title": f"$ref to a {model}",
    }


def bundled_schema(name: str = "contract") -> dict[str, Any]:
    """Schema ``name`` as one self-contained document for editors (what ``onex schema`` prints).

    Every ``$ref`` in it is a pointer into its own ``$defs``, so ``onex schema > contract.schema.json`` is all an
    editor needs. It describes the file as written, before ``$ref`` resolution: where a subcontract may stand
    (``subcontracts.fsm``, ...) it accepts the subcontract or ``{$ref: file}`` with sibling keys (``anyOf``).
    The loader validates the resolved document with the shipped schemas instead (``schemas()``), whose errors are
    precise where an ``anyOf`` could only say that no alternative matched.
    """
    if name not in _SCHEMA_NAMES:
        raise LookupError(f"no schema {name!r}; one of: {', '.join(_SCHEMA_NAMES)}")
    shipped = schemas()
    bundle = shipped[name]
    if name != "contract":
        return bundle  # a subcontract schema refers only to its own $defs
    defs: dict[str, Any] = bundle.setdefault("$defs", {})
    positions: dict[str, Any] = defs["Subcontracts"]["properties"]
    for kind, model in SUBCONTRACT_MODELS.items():
        subcontract = shipped[kind]
        del subcontract["$schema"]
        # Its definitions move up beside the contract's under the same names, so its `#/$defs/X` still resolve.
        for definition, body in subcontract.pop("$defs", {}).items():
            if defs.setdefault(definition, body) != body:
                raise RuntimeError(f"schemas contract and {kind} both define {definition!r}, differently")
        defs[model.__name__] = subcontract
        defs[f"{model.__name__}Ref"] = _ref_object(model.__name__, subcontract)
        positions[kind] = {
            "anyOf": [{"$ref": f"#/$defs/{model.__name__}"}, {"$ref": f"#/$defs/{model.__name__}Ref"}],
            "description": f"{subcontract.get('title', kind)}: inline, or a $ref to its file.",
        }
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
