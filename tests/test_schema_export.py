"""``onex schema``: one self-contained JSON Schema per name, describing contract files as written (before ``$ref``
resolution), so that an editor given ``onex schema > contract.schema.json`` validates every contract the loader
accepts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from onex.contracts import SUBCONTRACT_TYPES, bundled_schema, schemas
from onex.contracts.schema import _validator
from onex.contracts.yaml import MAX_YAML_NODES, _parse_yaml, _plain
from referencing import Registry

ROOT = Path(__file__).resolve().parents[1]
ONEX = Path(sys.executable).with_name("onex")
NAMES = ["contract", *SUBCONTRACT_TYPES]
# Every contract and subcontract file the repository ships: the project's own and the test project's.
SHIPPED = sorted(
    path
    for project in (ROOT, ROOT / "tests/projects/workshop")
    for folder in ("contracts", "subcontracts")
    for path in (project / folder).glob("**/*.yaml")
)


def raw(path: Path) -> Any:
    """The file as an editor sees it: parsed as the loader parses YAML, nothing resolved or interpolated."""
    return _plain(_parse_yaml(path.read_text(encoding="utf-8"), path, MAX_YAML_NODES).data)


def validator(name: str) -> Draft202012Validator:
    # An empty registry: a reference to anything outside the document would fail to resolve instead of being fetched.
    return Draft202012Validator(bundled_schema(name), registry=Registry())


def references(node: Any, *, in_schema: bool = True) -> Iterator[str]:
    """Every ``$ref`` the schema ``node`` uses (keys of ``properties``-like maps are names, not keywords)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if in_schema and key == "$ref" and isinstance(value, str):
                yield value
            elif key in ("properties", "patternProperties", "$defs"):
                for child in value.values():
                    yield from references(child)
            elif key not in ("enum", "const", "required", "description", "title", "examples", "default"):
                yield from references(value)
    elif isinstance(node, list):
        for child in node:
            yield from references(child)


def pointer(document: Any, ref: str) -> Any:
    assert ref.startswith("#/"), ref
    for part in ref[2:].split("/"):
        document = document[part.replace("~1", "/").replace("~0", "~")]
    return document


@pytest.mark.parametrize("name", NAMES)
def test_the_export_is_self_contained(name: str) -> None:
    exported = bundled_schema(name)
    refs = list(references(exported))

    Draft202012Validator.check_schema(exported)
    assert [ref for ref in refs if not ref.startswith("#/")] == []  # nothing refers outside the document
    for ref in refs:
        assert isinstance(pointer(exported, ref), dict), ref  # and every pointer lands on a schema
    assert "$id" not in json.dumps(exported)


def test_the_contract_export_reaches_every_subcontract_through_its_defs() -> None:
    refs = set(references(bundled_schema()))

    assert {"#/$defs/FsmSubcontract", "#/$defs/FsmSubcontractRef", "#/$defs/FsmState"} <= refs
    assert not any(ref.endswith(".schema.json") for ref in refs)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_shipped_contract_file_validates_against_the_export_as_written(path: Path) -> None:
    data = raw(path)
    name = data.get("subcontract_type", "contract")

    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator(name).iter_errors(data)]

    assert errors == []


def test_the_shipped_files_include_contracts_that_use_ref() -> None:
    # Otherwise the test above would prove nothing about `$ref`.
    using_ref = [p.name for p in SHIPPED if "$ref" in json.dumps(raw(p))]

    assert "orchestrator.yaml" in using_ref


def test_the_loaders_own_schema_refuses_ref_because_it_runs_after_resolution() -> None:
    # The loader validates resolved documents with the shipped files, which keep the precise messages; the export is
    # for files as written. Both describe the same contract once `$ref` is resolved (tests/test_contracts.py).
    orchestrator = raw(ROOT / "contracts/orchestrators/orchestrator.yaml")

    refused = {tuple(e.absolute_path)[:2] for e in _validator("contract").iter_errors(orchestrator)}

    assert refused == {("subcontracts", "fsm"), ("subcontracts", "routing"), ("subcontracts", "state_management")}
    assert schemas()["contract"]["$defs"]["Subcontracts"]["properties"]["fsm"] == {"$ref": "fsm.schema.json"}
    assert list(validator("contract").iter_errors(orchestrator)) == []


def contract(**subcontracts: Any) -> dict[str, Any]:
    return {
        "contract_version": "2.0.0",
        "name": "widget",
        "version": "1.0.0",
        "node_type": "EFFECT",
        "subcontracts": subcontracts,
    }


FSM = {"version": "1.0.0", "initial_state": "a", "states": [{"state_name": "a"}], "transitions": []}


@pytest.mark.parametrize(
    "subcontracts",
    [
        {"fsm": FSM},
        {"fsm": {"$ref": "subcontracts/fsm/flow.yaml"}},
        {"fsm": {"$ref": "./flow.yaml", "initial_state": "b", "states": [{"state_name": "b"}]}},
        {"routing": {"$ref": "subcontracts/routing/r.yaml", "strategy": "hash"}},
    ],
)
def test_a_subcontract_may_be_inline_or_a_ref_with_sibling_keys(subcontracts: dict[str, Any]) -> None:
    assert list(validator("contract").iter_errors(contract(**subcontracts))) == []


@pytest.mark.parametrize(
    ("subcontracts", "path"),
    [
        ({"fsm": {"$ref": "x.yaml", "initial_stat": "b"}}, ["subcontracts", "fsm"]),  # not a key of an fsm
        ({"fsm": {"$ref": ""}}, ["subcontracts", "fsm", "$ref"]),
        ({"fsm": {"$ref": 3}}, ["subcontracts", "fsm", "$ref"]),
        ({"fsm": {"version": "1.0.0", "initial_state": "a"}}, ["subcontracts", "fsm"]),  # inline, incomplete
        ({"fsm": {**FSM, "states": [{"state_name": "a", "is_final": True}]}}, ["subcontracts", "fsm", "states", 0]),
    ],
)
def test_a_subcontract_that_is_neither_is_refused_where_it_stands(
    subcontracts: dict[str, Any], path: list[str | int]
) -> None:
    errors = list(validator("contract").iter_errors(contract(**subcontracts)))

    assert errors
    assert list(best_match(errors).absolute_path) == path


def test_onex_schema_prints_the_export(tmp_path: Path) -> None:
    command = [str(ONEX)] if ONEX.exists() else [sys.executable, "-m", "onex.cli"]
    printed = {
        name: subprocess.run(
            [*command, "schema", name], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True
        ).stdout
        for name in ("contract", "fsm")
    }

    assert {name: json.loads(text) for name, text in printed.items()} == {
        name: bundled_schema(name) for name in printed
    }
