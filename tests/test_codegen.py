"""``onex codegen models``: payload models generated from a contract's inline payload JSON Schemas, and kept in sync.

A generated model must accept exactly what its schema accepts (checked against jsonschema on chosen samples and on
hypothesis' payloads), pass ruff and mypy strict as written, and record the schema it came from so that
``onex validate`` reports it (``model-stale``) once the schema changes.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from onex import codegen
from onex.catalog import PayloadCodec
from onex.codegen import generate_models, generated_models, model_class_name, models_path, schema_digest
from onex.contracts import EventSpec, load_contract, load_contracts
from onex.exceptions import ContractError, OnexError
from pydantic import BaseModel, ValidationError

ROOT = Path(__file__).resolve().parent.parent
WORKSHOP = ROOT / "tests" / "projects" / "workshop"
MONITOR = "contracts/computes/monitor.yaml"
ONEX = Path(sys.executable).with_name("onex")

# Long enough that its field line must be wrapped as ruff format wraps it.
SKU = "The stock keeping unit: capital letters, then digits, as printed on the label of every box the warehouse ships."
# One schema with every supported feature, used by the agreement and tool tests.
RICH: dict[str, Any] = {
    "type": "object",
    "description": "A widget order, with every kind of field the generator supports.",
    "required": ["sku", "quantity", "tags", "address"],
    "additionalProperties": False,
    "properties": {
        "sku": {"type": "string", "minLength": 2, "maxLength": 8, "pattern": "^[A-Z]+[0-9]*$", "description": SKU},
        "quantity": {"type": "integer", "minimum": 1, "exclusiveMaximum": 100},
        "price": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
        "gift": {"type": "boolean", "default": False},
        "note": {"type": ["string", "null"], "maxLength": 5},
        "nothing": {"type": "null"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 3},
        "size": {"enum": ["S", "M", "L", None]},
        "kind": {"const": "order"},
        "priority": {"type": "integer", "enum": [1, 2, 3]},
        "address": {
            "type": "object",
            "required": ["city"],
            "additionalProperties": False,
            "properties": {"city": {"type": "string"}, "zip-code": {"type": "string", "pattern": "^[0-9]{5}$"}},
        },
        "lines": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "integer"}}}},
        "extra": {},
        "labels": {"type": "object"},
        "class": {"type": "string"},
    },
}


_imported = itertools.count()


def load_source(source: str, directory: Path, name: str = "generated_models") -> ModuleType:
    """Import generated ``source`` as a module written to ``directory`` (as a node imports its models.py)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    path.write_text(source, encoding="utf-8")
    # A name of its own per import: each test's models are a module of their own.
    spec = importlib.util.spec_from_file_location(f"_codegen_{next(_imported)}_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def model_for(schema: dict[str, Any], tmp_path: Path, event: str = "THING") -> type[BaseModel]:
    module = load_source(generate_models({event: schema}, contract="contracts/x.yaml", title="x 1.0.0"), tmp_path)
    model: type[BaseModel] = getattr(module, model_class_name(event))
    return model


def accepts(model: type[BaseModel], payload: Any) -> bool:
    try:
        model.model_validate(payload)
    except ValidationError:
        return False
    return True


def onex(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [str(ONEX)] if ONEX.exists() else [sys.executable, "-m", "onex.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONEX_")} | {"COLUMNS": "300"}
    return subprocess.run(
        [*command, "--root", str(cwd), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def workshop(tmp_path: Path) -> Path:
    root = tmp_path / "workshop"
    shutil.copytree(WORKSHOP, root)
    return root


# --- names, digests, where the module lives ---------------------------------------------------------------------


def test_class_names_are_model_and_the_pascal_case_event_name() -> None:
    assert model_class_name("STAMP_REQUESTED") == "ModelStampRequested"
    assert model_class_name("stamp.requested-v2") == "ModelStampRequestedV2"


def test_the_digest_is_of_the_canonical_schema_so_key_order_does_not_change_it() -> None:
    assert schema_digest({"type": "object", "required": ["a"]}) == schema_digest({"required": ["a"], "type": "object"})
    assert schema_digest({"type": "object", "required": ["a"]}) != schema_digest({"type": "object", "required": ["b"]})


def test_the_module_lives_next_to_the_node_by_convention(tmp_path: Path) -> None:
    assert models_path(tmp_path, "tally", "1.2.3") == tmp_path / "nodes/tally/v1_2_3/models.py"


def test_each_class_records_its_event_and_schema_digest(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"text": {"type": "string"}}}
    source = generate_models({"NOTE": schema}, contract="contracts/x.yaml", title="x 1.0.0")
    model = model_for(schema, tmp_path, "NOTE")

    assert generated_models(source) == {"NOTE": ("ModelNote", schema_digest(schema))}
    assert model.__onex_event__ == "NOTE"  # type: ignore[attr-defined]
    assert model.__onex_schema_digest__ == schema_digest(schema)  # type: ignore[attr-defined]
    assert source.startswith("# Generated by `onex codegen models` from contracts/x.yaml")
    assert "regenerate: onex codegen models contracts/x.yaml" in source


# --- each schema feature ----------------------------------------------------------------------------------------

# (property schema, required?, values the schema accepts, values it refuses): the model must agree on each.
FEATURES: dict[str, tuple[dict[str, Any], bool, list[Any], list[Any]]] = {
    "string": ({"type": "string"}, True, ["", "x"], [1, None, True, ["x"]]),
    "integer": ({"type": "integer"}, True, [0, -5, 10**20], ["1", 1.5, True, None]),
    "number": ({"type": "number"}, True, [1, 1.5, -0.25], ["1.5", True, None]),
    "boolean": ({"type": "boolean"}, True, [True, False], [0, 1, "true", None]),
    "null": ({"type": "null"}, True, [None], [0, "", False]),
    "nullable": ({"type": ["integer", "null"]}, True, [None, 3], ["3", 1.5]),
    "union": ({"type": ["integer", "string"]}, True, [3, "3"], [None, 1.5, True]),
    "array": ({"type": "array", "items": {"type": "integer"}}, True, [[], [1, 2]], [[1.5], ["1"], "12", None]),
    "array of anything": ({"type": "array"}, True, [[], [1, "a", None, {"b": [1]}]], [{}, "x"]),
    "array items constrained": (
        {"type": "array", "items": {"type": "string", "maxLength": 2}, "minItems": 1, "maxItems": 2},
        True,
        [["ab"], ["a", "b"]],
        [[], ["abc"], ["a", "b", "c"]],
    ),
    "enum": ({"enum": ["a", "b"]}, True, ["a", "b"], ["c", None, 1]),
    "enum with null": ({"enum": ["a", None]}, True, ["a", None], ["b"]),
    "integer enum": ({"type": "integer", "enum": [1, 2]}, True, [1, 2], [3, "1"]),
    # JSON Schema tells true from 1 (pydantic's Literal does not) and counts 1.0 as 1.
    "integer enum refuses booleans": ({"type": "integer", "enum": [0, 1]}, True, [0, 1, 1.0], [True, False]),
    "number enum": ({"type": "number", "enum": [1, 2]}, True, [1, 2.0], [True, 1.5]),
    "boolean const refuses numbers": ({"const": True}, True, [True], [1, 1.0, False]),
    "boolean and integer enum": ({"enum": [True, False, 0]}, True, [True, False, 0, 0.0], [1, 1.0, None]),
    "enum of booleans and numbers in a list": (
        {"type": "array", "items": {"enum": [0, True]}},
        True,
        [[0, True], [0.0]],
        [[False], [1]],
    ),
    "const": ({"const": "x"}, True, ["x"], ["y", None]),
    "optional": ({"type": "string"}, False, ["x", "absent"], [None, 1]),
    "optional nullable": ({"type": ["string", "null"]}, False, ["x", None, "absent"], [1]),
    "default": ({"type": "integer", "default": 7}, False, [1, "absent"], [None, "7"]),
    "string lengths": ({"type": "string", "minLength": 2, "maxLength": 3}, True, ["ab", "abc", "éé"], ["a", "abcd"]),
    "pattern (unanchored, as in JSON Schema)": ({"type": "string", "pattern": "[0-9]{2}"}, True, ["a12b"], ["a1b"]),
    "minimum/maximum": ({"type": "integer", "minimum": 1, "maximum": 3}, True, [1, 3], [0, 4]),
    "exclusive bounds": ({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}, True, [0.5], [0, 1]),
    "multipleOf": ({"type": "integer", "multipleOf": 5}, True, [0, 10, -5], [3]),
    "nested object": (
        {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}},
        True,
        [{"a": 1}, {"a": 1, "z": 0}],
        [{}, {"a": "1"}, [], None],
    ),
    "closed nested object": (
        {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False},
        True,
        [{"a": 1}, {}],
        [{"a": 1, "z": 0}],
    ),
    "free-form object": ({"type": "object"}, True, [{}, {"a": [1, None]}], [[], "x", None]),
    "empty schema": ({}, True, [None, 1, "x", [1], {"a": {}}], []),
    # `type: string`: a number (of seconds, as lax pydantic reads it) is not a date-time.
    "date-time": ({"type": "string", "format": "date-time"}, True, ["2026-12-02T14:00:00Z"], [0, 1.5, True, None]),
    "optional date-time": ({"type": "string", "format": "date-time"}, False, ["2026-12-02T14:00:00Z", "absent"], [0]),
    "nullable date-time": ({"type": ["string", "null"], "format": "date-time"}, True, [None], [1700000000]),
    "date-time items": (
        {"type": "array", "items": {"type": "string", "format": "date-time"}},
        True,
        [["2026-12-02T14:00:00Z"]],
        [[0]],
    ),
    "property name that is not an identifier": ({"type": "string"}, True, ["x"], [1]),
}


@pytest.mark.parametrize("feature", FEATURES)
def test_the_model_accepts_exactly_what_the_schema_accepts(feature: str, tmp_path: Path) -> None:
    prop, required, valid, invalid = FEATURES[feature]
    key = "zip-code" if feature.startswith("property name") else "value"
    schema = {"type": "object", "required": [key] if required else [], "properties": {key: prop}}
    validator = Draft202012Validator(schema)
    model = model_for(schema, tmp_path)

    for value in valid:
        payload = {} if value == "absent" else {key: value}
        assert validator.is_valid(payload), f"test data: the schema refuses {payload}"
        assert accepts(model, payload), f"{feature}: the model refuses {payload}"
        # What the model dumps is a payload its schema accepts (the codec validates published dicts with it).
        assert validator.is_valid(model.model_validate(payload).model_dump(mode="json")), payload
    for value in invalid:
        payload = {key: value}
        assert not validator.is_valid(payload), f"test data: the schema accepts {payload}"
        assert not accepts(model, payload), f"{feature}: the model accepts {payload}"


def test_additional_properties_false_forbids_extra_keys_and_open_schemas_keep_them(tmp_path: Path) -> None:
    closed = model_for({"type": "object", "additionalProperties": False, "properties": {}}, tmp_path / "a")
    opened = model_for({"type": "object", "properties": {}}, tmp_path / "b")

    assert not accepts(closed, {"extra": 1})
    assert opened.model_validate({"extra": 1}).model_dump() == {"extra": 1}


def test_models_are_frozen_and_formats_parse_to_datetime_and_uuid(tmp_path: Path) -> None:
    schema = {
        "type": "object",
        "required": ["at", "id"],
        "properties": {"at": {"type": "string", "format": "date-time"}, "id": {"type": "string", "format": "uuid"}},
    }
    model = model_for(schema, tmp_path)
    payload = model.model_validate({"at": "2026-12-02T14:00:00Z", "id": "12345678-1234-5678-1234-567812345678"})

    assert type(payload.at).__name__ == "datetime"  # type: ignore[attr-defined]
    assert type(payload.id).__name__ == "UUID"  # type: ignore[attr-defined]
    assert payload.model_dump(mode="json") == {
        "at": "2026-12-02T14:00:00Z",
        "id": "12345678-1234-5678-1234-567812345678",
    }
    assert not accepts(model, {"at": "yesterday", "id": "12345678-1234-5678-1234-567812345678"})
    assert not accepts(model, {"at": "2026-12-02T14:00:00Z", "id": "not-a-uuid"})
    with pytest.raises(ValidationError, match="frozen"):
        payload.at = None  # type: ignore[attr-defined]


def test_descriptions_become_field_descriptions_and_the_docstring(tmp_path: Path) -> None:
    model = model_for(RICH, tmp_path)

    assert model.model_fields["sku"].description == SKU
    assert model.__doc__ is not None
    assert "A widget order" in model.__doc__


# Descriptions whose quotes and backslashes would end or bend a docstring written as they are.
DOCSTRINGS = [
    'Raised when a node is "overloaded"',
    'Three quotes """ inside, and two at the end ""',
    "A backslash \\ inside and one at the end \\",
    'Control characters \x00 \x1b and a quote last"',
    "Long enough to wrap onto several lines, " * 5 + 'and it ends with a "quoted" word and a backslash \\"',
]


@pytest.mark.parametrize("description", DOCSTRINGS)
def test_a_description_becomes_a_docstring_that_reads_back_as_it(description: str, tmp_path: Path) -> None:
    schema = {"type": "object", "description": description, "properties": {}}
    module = load_source(generate_models({"THING": schema}, contract="c.yaml", title=description), tmp_path)

    if len(description) < 100:
        assert module.ModelThing.__doc__ == f"Payload of THING. {description}"
        assert module.__doc__ == f"Payload models of {description}, generated from the payload_schema of its events."
    else:  # wrapped: the same words, the same characters in them
        assert module.ModelThing.__doc__.split() == f"Payload of THING. {description}".split()


def test_a_long_description_with_a_single_quote_and_a_comma_is_wrapped_outside_its_string(tmp_path: Path) -> None:
    # It holds a double quote, so it is written in single quotes; a line too long is cut at its commas.
    description = 'it\'s "x", then y, ' + "and a long tail of words " * 5
    schema = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 3, "description": description}}}

    assert model_for(schema, tmp_path).model_fields["a"].description == description.strip()


def test_a_generated_module_that_does_not_compile_is_an_error_not_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The generator as it was: a description ending with a quote ended its docstring with four quotes.
    monkeypatch.setattr(codegen, "_docstring_text", lambda text: text)
    schema = {"type": "object", "description": 'Raised when a node is "overloaded"', "properties": {}}

    with pytest.raises(OnexError, match=r"not valid Python \(SyntaxError at line \d+: .*\): this is a bug in onex"):
        generate_models({"THING": schema}, contract="c.yaml", title="x 1.0.0")


def test_booleans_and_numbers_of_an_enum_keep_their_json_type(tmp_path: Path) -> None:
    schema = {"type": "object", "required": ["v"], "properties": {"v": {"enum": [1, True]}}}
    model = model_for(schema, tmp_path)

    # Both values stay (not merged as 1 == True), each validating to itself; 1.0 is the number 1.
    assert model.model_validate({"v": True}).v is True  # type: ignore[attr-defined]
    assert type(model.model_validate({"v": 1}).v) is int  # type: ignore[attr-defined]
    assert type(model.model_validate({"v": 1.0}).v) is int  # type: ignore[attr-defined]
    assert model.model_validate_json('{"v": true}').model_dump(mode="json") == {"v": True}
    assert not accepts(model, {"v": False})
    assert not accepts(model, {"v": 0})


def test_an_integral_float_default_is_an_int_where_the_schema_is_an_integer(tmp_path: Path) -> None:
    # Draft 2020-12 counts 1.0 as an integer; an `int` field holding 1.0 fails mypy and dumps 1.0.
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "default": 1.0},
            "level": {"type": "number", "enum": [1, 2], "default": 2.0},
            "ns": {"type": "array", "items": {"type": "integer"}, "default": [1.0, 2]},
            "x": {"type": "number", "default": 1.0},
        },
    }
    source = generate_models({"THING": schema}, contract="c.yaml", title="x 1.0.0")
    dumped = model_for(schema, tmp_path).model_validate({}).model_dump(mode="json")

    assert "    n: int = 1\n" in source
    assert dumped == {"n": 1, "level": 2, "ns": [1, 2], "x": 1.0}
    assert [type(dumped[k]) for k in ("n", "level", "x")] == [int, int, float]


# The payloads hypothesis tries against RICH: its keys (and one it does not declare) with any JSON-like values.
# Floats with an integral value are left out: JSON Schema counts 1.0 as an integer, a strict model does not.
_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 120)
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer())
    | st.sampled_from(["", "S", "AB", "AB1", "ab", "order", "12345", "ABCDEFGHI", "xy", "Paris"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["city", "zip-code", "n"]), inner),
    max_leaves=8,
)
_keys = st.sampled_from([*RICH["properties"], "undeclared"])
_payloads = st.dictionaries(_keys, _values, max_size=6) | st.fixed_dictionaries(
    {"sku": st.sampled_from(["AB", "AB1", "a"]), "quantity": st.integers(0, 101), "tags": st.just(["a"])},
    optional={"address": st.just({"city": "Paris"}) | _values, "price": _values, "size": _values, "priority": _values},
)


@settings(max_examples=300, deadline=None)
@given(payload=_payloads)
def test_hypothesis_payloads_are_accepted_by_the_model_exactly_when_the_schema_accepts_them(
    payload: dict[str, Any], rich_model: type[BaseModel]
) -> None:
    assert accepts(rich_model, payload) == Draft202012Validator(RICH).is_valid(payload), payload


@pytest.fixture(scope="module")
def rich_model(tmp_path_factory: pytest.TempPathFactory) -> type[BaseModel]:
    return model_for(RICH, tmp_path_factory.mktemp("rich"))


# --- what it cannot express is an error naming the event and the path --------------------------------------------

UNSUPPORTED: list[tuple[dict[str, Any], str]] = [
    ({"type": "string"}, "payload_schema: a payload schema must be `type: object`"),
    ({"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}]}}}, "/properties/a/anyOf: keyword"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}}, "/properties/a/$ref: keyword"),
    ({"type": "object", "additionalProperties": {"type": "string"}}, "/additionalProperties: only true or false"),
    ({"type": "object", "properties": {"a": {"type": "string", "format": "email"}}}, "/properties/a/format"),
    ({"type": "object", "properties": {"a": {"type": "integer", "minLength": 1}}}, "minLength does not apply"),
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "(?=x)"}}}, "/properties/a/pattern"),
    ({"type": "object", "properties": {"a": {"type": "integer", "default": "x"}}}, "/properties/a/default"),
    ({"type": "object", "properties": {"a": {"type": "array", "default": [{"b": 1}]}}}, "/properties/a/default: a"),
    ({"type": "object", "required": ["b"], "properties": {}}, "/required: 'b' is required but has no schema"),
    ({"type": "object", "properties": {"a": {"enum": [{"x": 1}]}}}, "/properties/a/enum"),
    ({"type": "object", "properties": {"a": {"type": "array", "items": {"oneOf": []}}}}, "/properties/a/items/oneOf"),
    ({"type": "object", "properties": {"a": {"type": ["string", "integer"], "minimum": 1}}}, "several types"),
    ({"type": "object", "properties": {"a-b": {}, "a_b": {}}}, "/properties/a_b: its Python name 'a_b'"),
]


@pytest.mark.parametrize(("schema", "message"), UNSUPPORTED)
def test_what_cannot_be_generated_is_an_error_naming_event_and_schema_path(
    schema: dict[str, Any], message: str
) -> None:
    with pytest.raises(OnexError) as raised:
        generate_models({"WIDGET_ORDERED": schema}, contract="contracts/x.yaml", title="x 1.0.0")

    assert str(raised.value).startswith("event WIDGET_ORDERED: payload_schema")
    assert message in str(raised.value)


# --- the generated code passes the project's tools ----------------------------------------------------------------


# What the generator escapes, wraps, validates beyond pydantic's defaults or converts, for the tools test.
TRICKY: dict[str, Any] = {
    "type": "object",
    "description": 'Raised when a node is "overloaded"',
    "properties": {
        "text": {"type": "string", "description": 'it\'s "x", then y, ' + "and a long tail of words " * 5},
        "flag": {"enum": [0, 1, True]},
        "at": {"type": "string", "format": "date-time"},
        "ats": {"type": "array", "items": {"type": ["string", "null"], "format": "date-time"}},
        "n": {"type": "integer", "default": 1.0},
        "level": {"type": "number", "enum": [1, 2], "default": 2.0},
        # Class docstrings of 110 to 113 characters ("Payload of TRICKY (properties/boxNNN). " is 39 of them): on one
        # line with its indent and quotes, 120 to 123 long.
        **{
            f"box{size}": {
                "type": "object",
                "description": ("word " * 30)[: size - 40] + ".",
                "properties": {"x": {"type": "integer"}},
            }
            for size in (110, 111, 112, 113)
        },
    },
}


@pytest.mark.parametrize(
    "schemas",
    [
        {"ORDER": RICH, "NOTE": {"type": "object", "properties": {"text": {"type": "string"}}}},
        {"TRICKY": TRICKY},
    ],
    ids=["rich", "tricky"],
)
def test_generated_code_is_ruff_clean_and_mypy_strict_clean(schemas: dict[str, Any], tmp_path: Path) -> None:
    source = generate_models(schemas, contract="contracts/x.yaml", title="x 1.0.0")
    path = tmp_path / "models.py"
    path.write_text(source, encoding="utf-8")
    venv = Path(sys.executable).parent
    config = str(ROOT / "pyproject.toml")

    tools = [
        [str(venv / "ruff"), "format", "--config", config, "--check", "--diff", str(path)],
        [str(venv / "ruff"), "check", "--config", config, "--no-cache", str(path)],
        [str(venv / "mypy"), "--config-file", config, "--strict", "--cache-dir", str(tmp_path / ".mypy"), str(path)],
    ]
    for tool in tools:
        done = subprocess.run(tool, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, f"{' '.join(tool[:2])}:\n{done.stdout}{done.stderr}"


# --- the command: a round trip through a project -----------------------------------------------------------------


def test_round_trip_generate_import_and_validate_payloads_in_a_project(workshop: Path) -> None:
    done = onex("codegen", "models", MONITOR, cwd=workshop)
    assert done.returncode == 0, done.stderr
    path = models_path(workshop, "monitor", "1.0.0")
    assert "wrote" in done.stdout
    assert "ModelNote, ModelAlert" in done.stdout
    module = load_source(path.read_text(encoding="utf-8"), path.parent, "models_copy")

    alert = module.ModelAlert.model_validate({"node_id": "n1", "level": "warn"})
    assert not accepts(module.ModelAlert, {"node_id": "n1", "level": "panic"})
    assert not accepts(module.ModelNote, {})
    # The contract keeps its payload_schema: publishing the model through the event's codec validates its dump.
    contract = load_contract(workshop / MONITOR, root=workshop, check_implementations=False)
    assert contract.subcontracts.event_type is not None
    [spec] = [s for s in contract.subcontracts.event_type.publishes if s.event_name == "ALERT"]
    assert PayloadCodec(spec, root=workshop).encode(alert) == {"node_id": "n1", "level": "warn"}
    # Generating again changes nothing, and says so.
    again = onex("codegen", "models", MONITOR, cwd=workshop)
    assert again.returncode == 0
    assert "up to date" in again.stdout


def test_a_description_ending_with_a_quote_writes_a_module_that_imports(workshop: Path) -> None:
    contract = workshop / MONITOR
    described = "required: [text]\n          description: 'Raised when a node is \"overloaded\"'"
    contract.write_text(contract.read_text().replace("required: [text]", described), encoding="utf-8")

    done = onex("codegen", "models", MONITOR, cwd=workshop)

    assert done.returncode == 0, done.stderr
    path = models_path(workshop, "monitor", "1.0.0")
    module = load_source(path.read_text(encoding="utf-8"), path.parent, "models_copy")
    assert module.ModelNote.__doc__ == 'Payload of NOTE. Raised when a node is "overloaded"'
    assert "is up to date" in onex("codegen", "models", MONITOR, "--check", cwd=workshop).stdout


def test_output_writes_elsewhere_and_a_contract_without_schemas_is_an_error(workshop: Path) -> None:
    done = onex("codegen", "models", MONITOR, "--output", "out/m.py", cwd=workshop)
    assert done.returncode == 0, done.stderr
    assert "class ModelAlert(BaseModel):" in (workshop / "out/m.py").read_text(encoding="utf-8")
    assert not models_path(workshop, "monitor", "1.0.0").exists()

    none = onex("codegen", "models", "contracts/computes/census.yaml", cwd=workshop)
    assert none.returncode == 1
    assert "declares no event with an inline payload_schema" in none.stderr


def test_check_exits_1_without_writing_when_the_file_would_change(workshop: Path) -> None:
    path = models_path(workshop, "monitor", "1.0.0")
    missing = onex("codegen", "models", MONITOR, "--check", cwd=workshop)
    assert missing.returncode == 1
    assert "is missing" in missing.stderr
    assert not path.exists()

    assert onex("codegen", "models", MONITOR, cwd=workshop).returncode == 0
    assert onex("codegen", "models", MONITOR, "--check", cwd=workshop).returncode == 0
    before = path.read_text(encoding="utf-8")
    contract = workshop / MONITOR
    contract.write_text(contract.read_text().replace("[info, warn]", "[info, warn, error]"), encoding="utf-8")

    stale = onex("codegen", "models", MONITOR, "--check", cwd=workshop)
    assert stale.returncode == 1
    assert "is out of date: run onex codegen models contracts/computes/monitor.yaml" in stale.stderr
    assert path.read_text(encoding="utf-8") == before


def test_a_hand_written_models_file_is_not_overwritten_without_force(workshop: Path) -> None:
    path = models_path(workshop, "monitor", "1.0.0")
    path.write_text("# written by hand\n", encoding="utf-8")

    refused = onex("codegen", "models", MONITOR, cwd=workshop)
    assert refused.returncode == 1
    assert "did not generate it (use --force)" in refused.stderr
    assert path.read_text(encoding="utf-8") == "# written by hand\n"
    assert onex("codegen", "models", MONITOR, "--force", cwd=workshop).returncode == 0
    assert "class ModelAlert" in path.read_text(encoding="utf-8")


def test_an_unsupported_schema_fails_the_command_naming_contract_event_and_path(workshop: Path) -> None:
    contract = workshop / MONITOR
    contract.write_text(contract.read_text().replace("text: {type: string}", "text: {anyOf: [{type: string}]}"))

    done = onex("codegen", "models", MONITOR, cwd=workshop)

    assert done.returncode == 1
    assert "contracts/computes/monitor.yaml: event NOTE: payload_schema/properties/text/anyOf" in done.stderr
    assert not models_path(workshop, "monitor", "1.0.0").exists()


# --- kept in sync: onex validate reports a stale model -------------------------------------------------------------


def test_validate_reports_a_model_generated_from_an_older_schema_at_the_payload_schema(workshop: Path) -> None:
    path = models_path(workshop, "monitor", "1.0.0")
    path.parent.mkdir(parents=True, exist_ok=True)
    schemas = {"NOTE": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}}
    schemas["ALERT"] = {"type": "object", "properties": {"node_id": {"type": "string"}}}  # older than the contract's
    path.write_text(generate_models(schemas, contract=MONITOR, title="monitor 1.0.0"), encoding="utf-8")

    with pytest.raises(ContractError) as raised:
        load_contracts(workshop, env={})

    [issue] = raised.value.issues
    assert (issue.path, issue.line, issue.column, issue.code) == (MONITOR, 26, 9, "model-stale")
    assert issue.message == (
        "ModelAlert in nodes/monitor/v1_0_0/models.py was generated from an older payload_schema of ALERT: "
        "run onex codegen models contracts/computes/monitor.yaml"
    )
    # The real command, as a user runs it: the same line, and exit 1; regenerating makes it pass.
    validate = onex("validate", cwd=workshop)
    assert validate.returncode == 1
    assert "contracts/computes/monitor.yaml:26:9: ModelAlert in nodes/monitor/v1_0_0/models.py" in validate.stdout
    assert onex("codegen", "models", MONITOR, cwd=workshop).returncode == 0
    load_contracts(workshop, env={})


def test_no_module_a_hand_written_module_or_no_class_for_the_event_is_nothing_to_report(workshop: Path) -> None:
    load_contracts(workshop, env={})  # no models.py for monitor at all
    path = models_path(workshop, "monitor", "1.0.0")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("from pydantic import BaseModel\n\n\nclass ModelAlert(BaseModel):\n    node_id: str\n")
    load_contracts(workshop, env={})
    only_note = {"NOTE": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}}
    path.write_text(generate_models(only_note, contract=MONITOR, title="monitor 1.0.0"), encoding="utf-8")
    load_contracts(workshop, env={})


def test_the_stale_check_runs_only_when_implementations_are_checked(workshop: Path) -> None:
    path = models_path(workshop, "monitor", "1.0.0")
    path.parent.mkdir(parents=True, exist_ok=True)
    old = {"ALERT": {"type": "object"}}
    path.write_text(generate_models(old, contract=MONITOR, title="monitor 1.0.0"), encoding="utf-8")

    load_contracts(workshop, check_implementations=False, env={})
    with pytest.raises(ContractError, match="model-stale"):
        load_contracts(workshop, check_implementations=True, env={})


def test_event_spec_schema_from_the_contract_matches_the_digest_codegen_records(workshop: Path) -> None:
    # The check compares what the loader typed (EventSpec.payload_schema) with what the command generated from.
    contract = load_contract(workshop / MONITOR, root=workshop, check_implementations=False)
    assert contract.subcontracts.event_type is not None
    specs: list[EventSpec] = [*contract.subcontracts.event_type.consumes, *contract.subcontracts.event_type.publishes]
    schemas = {s.event_name: s.payload_schema for s in specs if s.payload_schema is not None}
    recorded = generated_models(generate_models(schemas, contract=MONITOR, title="monitor 1.0.0"))
    assert recorded == {name: (model_class_name(name), schema_digest(schema)) for name, schema in schemas.items()}
