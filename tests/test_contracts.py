"""Contracts: how a project's contract files are loaded, resolved, validated and typed.

Happy paths are written into a temporary project root per test; every broken-contract case lives in
``tests/contracts_corpus/<case>/`` with the exact ``path:line:column: code`` lines it must produce.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema.exceptions
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from onex import contracts as contracts_module
from onex.contracts import (
    ISSUE_CODES,
    MAX_FILE_BYTES,
    SUBCONTRACT_MODELS,
    CachingSubcontract,
    Contract,
    ContractSet,
    FsmSubcontract,
    NodeType,
    RoutingSubcontract,
    bundled_schema,
    find_contract_files,
    load_contract,
    load_contracts,
    load_subcontract,
    parse_condition,
    resolve_implementation,
    schemas,
)
from onex.contracts.code import _NODE_BASES
from onex.contracts.yaml import _parse_yaml, _Pos, _Problem
from onex.exceptions import ContractError
from pydantic import BaseModel

TESTS = Path(__file__).resolve().parent
PROJECT = TESTS.parent
CORPUS = TESTS / "contracts_corpus"
NODE_FIXTURES = TESTS / "node_fixtures" / "nodes"

# The real project's `nodes` package owns the name `nodes` in this process, as it does under `onex run`. Every
# temporary root below is therefore imported under a private alias; importing it here, before any test runs,
# keeps that true whatever order tests run in.
importlib.import_module("nodes")


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def codes(error: ContractError) -> list[str]:
    return [f"{issue.path}:{issue.line}:{issue.column}: {issue.code}" for issue in error.issues]


GREETER = """\
    contract_version: 2.0.0
    name: greeter
    version: 1.0.0
    node_type: EFFECT
    description: Greets whoever asks.
    config:
      greeting: "${GREETING:hello}"
    subcontracts:
      fsm: {$ref: subcontracts/fsm/greeting.yaml}
      event_type: {$ref: ../../subcontracts/event_type/greeting.yaml}
    resilience: {timeout_ms: 500, retry: {max_attempts: 2}}
    """

GREETING_FSM = """\
    subcontract_type: fsm
    version: 1.0.0
    state_machine_name: greeting
    initial_state: waiting
    states:
      - {state_name: waiting, entry_actions: [log_entered], exit_actions: [log_exited]}
      - {state_name: greeted, is_terminal: true}
      - {state_name: failed, is_terminal: true}
    transitions:
      - transition_name: greet
        from_state: waiting
        to_state: greeted
        trigger: greet
        conditions: [{expression: name min_length 1}]
        actions: [emit_greeted]
      - {transition_name: fail, from_state: '*', to_state: failed, trigger: fail}
    terminal_states: [greeted, failed]
    error_states: [failed]
    """

GREETING_EVENTS = """\
    subcontract_type: event_type
    version: 1.0.0
    consumes:
      - event_name: GREETING_REQUESTED
        handler: handle_greeting_requested
        payload_model: nodes.greeter.v1_0_0.models:GreetingRequested
        external: true
    publishes:
      - event_name: GREETED
        payload_schema:
          type: object
          properties: {greeting: {$ref: "#/$defs/text"}}
          $defs: {text: {type: string}}
    """


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A small valid project: one contract, two shared subcontracts, and the node class they name."""
    shutil.copytree(NODE_FIXTURES, tmp_path / "nodes")
    write(tmp_path, "contracts/effects/greeter.yaml", GREETER)
    write(tmp_path, "subcontracts/fsm/greeting.yaml", GREETING_FSM)
    write(tmp_path, "subcontracts/event_type/greeting.yaml", GREETING_EVENTS)
    return tmp_path


# --- loading a valid project ------------------------------------------------------------------------------------


def test_a_valid_project_loads_into_typed_contracts(project: Path) -> None:
    loaded = load_contracts(project, env={})

    assert isinstance(loaded, ContractSet)
    assert loaded.names() == ["greeter"]
    greeter = loaded.get("greeter")
    assert greeter.node_type is NodeType.EFFECT
    assert greeter.source == project / "contracts/effects/greeter.yaml"
    assert greeter.resilience.timeout_ms == 500
    assert greeter.resilience.retry.max_attempts == 2
    assert greeter.resilience.retry.backoff_ms == 50  # defaults fill what the file leaves out
    assert greeter.implementation_path == "nodes.greeter.v1_0_0.node:NodeGreeter"


def test_ref_is_resolved_root_relative_first_and_file_relative_with_dot_prefix(project: Path) -> None:
    greeter = load_contracts(project, env={}).get("greeter")

    fsm = greeter.subcontracts.fsm
    assert isinstance(fsm, FsmSubcontract)  # `subcontracts/fsm/greeting.yaml`: relative to the project root
    assert [s.state_name for s in fsm.states] == ["waiting", "greeted", "failed"]
    assert fsm.transitions[1].from_state == "*"
    events = greeter.subcontracts.event_type
    assert events is not None  # `../../subcontracts/...`: relative to the contract file
    assert events.consumes[0].handler == "handle_greeting_requested"


def test_a_ref_without_dot_prefix_falls_back_to_the_referring_files_directory(tmp_path: Path) -> None:
    write(tmp_path, "contracts/effects/greeter_fsm.yaml", GREETING_FSM)
    write(tmp_path, "contracts/effects/greeter.yaml", GREETER.replace("subcontracts/fsm/greeting", "greeter_fsm"))
    write(tmp_path, "subcontracts/event_type/greeting.yaml", GREETING_EVENTS)

    greeter = load_contract("contracts/effects/greeter.yaml", root=tmp_path, check_implementations=False, env={})

    assert greeter.subcontracts.fsm is not None
    assert greeter.subcontracts.fsm.state_machine_name == "greeting"


def test_sibling_keys_deep_merge_over_the_referenced_document(project: Path) -> None:
    write(
        project,
        "contracts/effects/greeter.yaml",
        GREETER.replace(
            "  fsm: {$ref: subcontracts/fsm/greeting.yaml}",
            "  fsm:\n        $ref: subcontracts/fsm/greeting.yaml\n        state_machine_name: polite_greeting\n"
            "        terminal_states: [greeted]",
        ),
    )

    fsm = load_contracts(project, env={}).get("greeter").subcontracts.fsm

    assert fsm is not None
    assert fsm.state_machine_name == "polite_greeting"  # a sibling scalar replaces the referenced one
    assert fsm.terminal_states == ("greeted",)  # lists are replaced whole, not concatenated
    assert fsm.initial_state == "waiting"  # everything else comes from the referenced file


def test_nested_mappings_merge_key_by_key(tmp_path: Path) -> None:
    write(tmp_path, "shared/config.yaml", "limits: {rate: 5, burst: 10}\nregion: eu\n")
    write(tmp_path, "subcontracts/caching/base.yaml", "subcontract_type: caching\nversion: 1.0.0\nttl_ms: 100\n")
    write(
        tmp_path,
        "contracts/effects/cache.yaml",
        """\
        contract_version: 2.0.0
        name: cache
        version: 1.0.0
        node_type: EFFECT
        config:
          $ref: shared/config.yaml
          limits: {burst: 20}
        subcontracts:
          caching: {$ref: subcontracts/caching/base.yaml, max_entries: 10}
        """,
    )

    cache = load_contracts(tmp_path, check_implementations=False, env={}).get("cache")

    assert cache.config == {"limits": {"rate": 5, "burst": 20}, "region": "eu"}
    assert cache.subcontracts.caching == CachingSubcontract(version="1.0.0", ttl_ms=100, max_entries=10)


def test_config_interpolates_environment_variables_with_defaults(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        project,
        "contracts/effects/greeter.yaml",
        GREETER.replace(
            '  greeting: "${GREETING:hello}"',
            '  greeting: "${GREETING:hello}"\n'
            '      dsn: "postgresql://${DB_HOST:localhost}:${DB_PORT:5432}/onex"\n'
            '      token: "${GREETER_TOKEN}"\n'
            '      literal: "$${NOT_A_VARIABLE}"\n'
            "      hosts: ['${DB_HOST:localhost}', plain]\n"
            "      since: 2024-01-01",
        ),
    )
    monkeypatch.setenv("GREETER_TOKEN", "s3cret")
    monkeypatch.setenv("DB_HOST", "db.internal")
    monkeypatch.delenv("GREETING", raising=False)
    monkeypatch.delenv("DB_PORT", raising=False)

    config = load_contracts(project).get("greeter").config  # env=None reads os.environ

    assert config == {
        "greeting": "hello",
        "dsn": "postgresql://db.internal:5432/onex",
        "token": "s3cret",
        "literal": "${NOT_A_VARIABLE}",
        "hosts": ["db.internal", "plain"],
        "since": "2024-01-01",  # dates stay strings: contracts are JSON-compatible
    }


def test_interpolation_only_touches_config(project: Path) -> None:
    write(project, "contracts/effects/greeter.yaml", GREETER.replace("Greets whoever asks.", '"costs ${PRICE}"'))

    assert load_contracts(project, env={}).get("greeter").description == "costs ${PRICE}"


def test_highest_version_wins_unless_one_is_asked_for(project: Path) -> None:
    for version in ("1.2.0", "1.10.0"):
        write(project, f"contracts/effects/greeter_{version}.yaml", GREETER.replace("1.0.0", version, 1))

    loaded = load_contracts(project, check_implementations=False, env={})

    assert loaded.versions("greeter") == ["1.0.0", "1.2.0", "1.10.0"]  # numeric order, not string order
    assert loaded.get("greeter").version == "1.10.0"
    assert loaded.get("greeter", "1.2.0").version == "1.2.0"
    assert [c.version for c in loaded] == ["1.0.0", "1.2.0", "1.10.0"]
    assert len(loaded) == 3
    with pytest.raises(LookupError, match=r"no contract named 'nobody' \(known: greeter\)"):
        loaded.get("nobody")
    with pytest.raises(LookupError, match=r"no version 9.9.9 \(available: 1.0.0, 1.2.0, 1.10.0\)"):
        loaded.get("greeter", "9.9.9")


def test_find_contract_files_lists_yaml_under_contracts_sorted(project: Path) -> None:
    write(project, "contracts/reducers/a.yaml", "x: 1\n")
    write(project, "contracts/notes.txt", "not a contract\n")

    assert find_contract_files(project) == [
        project / "contracts/effects/greeter.yaml",
        project / "contracts/reducers/a.yaml",
    ]


def test_load_contract_checks_one_file_and_what_it_references(project: Path) -> None:
    contract = load_contract(project / "contracts/effects/greeter.yaml", root=project, env={})

    assert isinstance(contract, Contract)
    assert contract.name == "greeter"


def test_load_contract_refuses_a_subcontract_file(project: Path) -> None:
    with pytest.raises(ContractError) as raised:
        load_contract("subcontracts/fsm/greeting.yaml", root=project, env={})

    assert codes(raised.value) == ["subcontracts/fsm/greeting.yaml:1:1: schema"]
    assert "subcontract file" in raised.value.issues[0].message


def test_load_subcontract_validates_a_shared_file_on_its_own(project: Path) -> None:
    fsm = load_subcontract(project / "subcontracts/fsm/greeting.yaml", root=project)
    assert isinstance(fsm, FsmSubcontract)
    assert fsm.error_states == ("failed",)

    routing = write(
        project,
        "subcontracts/routing/by_namespace.yaml",
        """\
        subcontract_type: routing
        version: 1.0.0
        strategy: conditional
        targets: [{name: eu, service: greeter, condition: region equals eu}]
        """,
    )
    assert isinstance(load_subcontract(routing, root=project), RoutingSubcontract)


def test_paths_limit_the_check_to_those_files_and_skip_the_event_check(project: Path) -> None:
    write(
        project,
        "contracts/effects/listener.yaml",
        """\
        contract_version: 2.0.0
        name: listener
        version: 1.0.0
        node_type: EFFECT
        subcontracts:
          event_type:
            version: 1.0.0
            consumes: [{event_name: SOMETHING_ELSE, handler: on_it}]
        """,
    )
    write(project, "subcontracts/caching/broken.yaml", "subcontract_type: caching\n")

    with pytest.raises(ContractError) as everything:
        load_contracts(project, check_implementations=False, env={})
    assert codes(everything.value) == [
        "contracts/effects/listener.yaml:8:29: event-unpublished",
        "subcontracts/caching/broken.yaml:1:1: schema",
    ]

    subset = load_contracts(project, ["contracts/effects"], check_implementations=False, env={})
    assert subset.names() == ["greeter", "listener"]


PUBLISHER = """\
    contract_version: 2.0.0
    name: gadget
    version: 1.0.0
    node_type: EFFECT
    subcontracts:
      event_type:
        version: 1.0.0
        publishes: [{event_name: GADGET_BUILT, topic_class: cmd}]
    resilience: {timeout_ms: 30000}
    """


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        pytest.param("timeout_ms: 30000", "timeout_ms: 30s", "contracts/effects/gadget.yaml:9:26: schema", id="schema"),
        pytest.param(
            "version: 1.0.0\n    node", "version: one\n    node", "contracts/effects/gadget.yaml:3:10: schema"
        ),
        pytest.param("node_type: EFFECT", "node_type: [", "contracts/effects/gadget.yaml:6:13: yaml", id="yaml"),
    ],
)
def test_one_broken_contract_yields_only_its_own_problems(tmp_path: Path, old: str, new: str, problem: str) -> None:
    # The consumer, and the routing naming the broken publisher, are valid: the set checks must not blame them for
    # what only the broken file would have supplied (its name, the event it publishes on cmd).
    write(
        tmp_path,
        "contracts/effects/widget.yaml",
        """\
        contract_version: 2.0.0
        name: widget
        version: 1.0.0
        node_type: EFFECT
        subcontracts:
          event_type:
            version: 1.0.0
            consumes: [{event_name: GADGET_BUILT, handler: on_built, topic_class: cmd}]
            publishes: [{event_name: WIDGET_ORDERED}]
          routing:
            version: 1.0.0
            targets: [{name: build, service: gadget}]
        """,
    )
    write(tmp_path, "contracts/effects/gadget.yaml", PUBLISHER)
    assert load_contracts(tmp_path, check_implementations=False, env={}).names() == ["gadget", "widget"]

    write(tmp_path, "contracts/effects/gadget.yaml", PUBLISHER.replace(old, new))
    with pytest.raises(ContractError) as raised:
        load_contracts(tmp_path, check_implementations=False, env={})

    assert codes(raised.value) == [problem]


def test_a_ref_to_another_kind_of_subcontract_is_one_problem_at_the_ref(project: Path) -> None:
    write(project, "subcontracts/routing/greeting.yaml", "subcontract_type: routing\nversion: 1.0.0\n")
    write(project, "contracts/effects/greeter.yaml", GREETER.replace("fsm/greeting.yaml", "routing/greeting.yaml"))

    with pytest.raises(ContractError) as raised:
        load_contracts(project, env={})

    [issue] = raised.value.issues
    assert (issue.path, issue.line, issue.column, issue.code) == ("contracts/effects/greeter.yaml", 9, 9, "ref")
    assert issue.message == "fsm: $ref 'subcontracts/routing/greeting.yaml' names a routing subcontract, not fsm"


def test_without_implementation_checks_nothing_is_imported(tmp_path: Path) -> None:
    write(tmp_path, "contracts/effects/greeter.yaml", GREETER.split("subcontracts:")[0])

    loaded = load_contracts(tmp_path, check_implementations=False, env={})  # there is no nodes/ at all

    assert loaded.names() == ["greeter"]
    with pytest.raises(ContractError) as raised:
        load_contracts(tmp_path, env={})
    assert codes(raised.value) == ["contracts/effects/greeter.yaml:2:7: implementation-missing"]


def test_a_forbidden_implementation_is_reported_even_without_implementation_checks(tmp_path: Path) -> None:
    write(tmp_path, "contracts/effects/greeter.yaml", GREETER.split("subcontracts:")[0] + "implementation: os:system\n")

    with pytest.raises(ContractError) as raised:
        load_contracts(tmp_path, check_implementations=False, env={})

    assert codes(raised.value) == ["contracts/effects/greeter.yaml:8:17: implementation-forbidden"]


def test_max_batch_outside_a_consumed_batch_event_is_reported_at_its_value(project: Path) -> None:
    events = GREETING_EVENTS.replace("        external: true\n", "        external: true\n        max_batch: 10\n")
    events = events.replace("      - event_name: GREETED\n", "      - event_name: GREETED\n        max_batch: 5\n")
    write(project, "subcontracts/event_type/greeting.yaml", events)

    with pytest.raises(ContractError) as raised:
        load_contracts(project, env={})

    lines = textwrap.dedent(events).splitlines()
    at = [f"{i}:{line.index('max_batch') + 12}" for i, line in enumerate(lines, 1) if "max_batch" in line]
    assert codes(raised.value) == [f"subcontracts/event_type/greeting.yaml:{where}: event-batch" for where in at]
    assert "only read on a consumed event with batch: true" in raised.value.issues[0].message

    write(project, "subcontracts/event_type/greeting.yaml", events.replace("        max_batch: 5\n", "").replace(
        "max_batch: 10", "batch: true\n        max_batch: 10"))  # fmt: skip
    [consumed] = load_contracts(project, env={}).get("greeter").subcontracts.event_type.consumes  # type: ignore[union-attr]
    assert (consumed.batch, consumed.max_batch) == (True, 10)


def test_events_the_runtime_publishes_for_every_node_need_no_publishing_contract(tmp_path: Path) -> None:
    write(
        tmp_path,
        "contracts/registries/registry.yaml",
        """\
        contract_version: 2.0.0
        name: registry
        version: 1.0.0
        node_type: REGISTRY
        subcontracts:
          event_type:
            version: 1.0.0
            consumes:
              - {event_name: NODE_HEARTBEAT, payload_model: "onex.envelope:ModelNodeHeartbeat", handler: heard}
              - {event_name: NODE_INTROSPECTION, payload_model: "onex.envelope:ModelNodeIntrospection", handler: heard}
        """,
    )

    registry = load_contracts(tmp_path, check_implementations=False, env={}).get("registry")

    assert registry.subcontracts.event_type is not None
    assert [e.event_name for e in registry.subcontracts.event_type.consumes] == ["NODE_HEARTBEAT", "NODE_INTROSPECTION"]


def test_json_schema_refs_inside_payload_schemas_are_left_alone(project: Path) -> None:
    events = load_contracts(project, env={}).get("greeter").subcontracts.event_type

    assert events is not None
    assert events.publishes[0].payload_schema == {
        "type": "object",
        "properties": {"greeting": {"$ref": "#/$defs/text"}},
        "$defs": {"text": {"type": "string"}},
    }


def test_every_issue_reads_path_line_column_message_and_code(tmp_path: Path) -> None:
    write(tmp_path, "contracts/effects/x.yaml", "contract_version: 2.0.0\nname: x\nversion: 1.0.0\nnode_type: NOPE\n")

    with pytest.raises(ContractError) as raised:
        load_contracts(tmp_path, env={})

    assert str(raised.value) == (
        "contracts/effects/x.yaml:4:12: node_type: 'NOPE' is not one of EFFECT, COMPUTE, REDUCER, ORCHESTRATOR, "
        "REGISTRY [schema]"
    )


def test_files_outside_the_root_are_named_as_given(tmp_path: Path, project: Path) -> None:
    outside = write(tmp_path.parent / f"{tmp_path.name}_elsewhere", "broken.yaml", "name: [\n")

    with pytest.raises(ContractError) as raised:
        load_contracts(project, [outside], env={})

    assert raised.value.issues[0].path == str(outside)


@pytest.mark.skipif(not find_contract_files(PROJECT), reason="the project has no contracts yet")
def test_the_projects_own_contracts_are_valid() -> None:
    loaded = load_contracts(PROJECT, check_implementations=False, env={})

    assert loaded.names()


# --- positions --------------------------------------------------------------------------------------------------

_scalars = st.integers(min_value=-(10**6), max_value=10**6) | st.from_regex(r"\As[a-z]{0,8}\Z")
_keys = st.from_regex(r"\Ak[a-z0-9_]{0,6}\Z")
_documents = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, min_size=1, max_size=4) | st.dictionaries(_keys, children, min_size=1, max_size=4)
    ),
    max_leaves=25,
)


@given(document=st.dictionaries(_keys, _documents, min_size=1, max_size=4), flow=st.booleans())
def test_every_key_value_and_item_keeps_its_line_and_column(document: dict[str, Any], flow: bool) -> None:
    text = yaml.safe_dump(document, default_flow_style=flow, width=60)
    lines = text.splitlines()
    parsed = _parse_yaml(text, Path("/project/x.yaml"), 1000).data

    def at(pos: _Pos) -> str:
        assert pos.file == Path("/project/x.yaml")
        return lines[pos.line - 1][pos.column - 1 :]

    def check(node: Any, value: Any, pos: Any) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                assert at(node.key_pos[key]).startswith(key)
                check(node[key], child, node.value_pos[key])
        elif isinstance(value, list):
            for item, child, item_pos in zip(node, value, node.item_pos, strict=True):
                check(item, child, item_pos)
        else:
            assert at(pos).startswith(str(value))

    assert parsed == document
    check(parsed, document, parsed.pos)


# --- implementations --------------------------------------------------------------------------------------------


def test_resolve_implementation_imports_the_class_from_the_roots_nodes_package(project: Path) -> None:
    greeter = load_contracts(project, env={}).get("greeter")

    cls = resolve_implementation(greeter, root=project)

    assert cls.__name__ == "NodeGreeter"
    assert Path(sys.modules[cls.__module__].__file__ or "") == project / "nodes/greeter/v1_0_0/node.py"
    assert cls().handle_greeting_requested(_greeting_requested(cls, "ada")).greeting == "hello, ada"


def _greeting_requested(node_class: type, name: str) -> Any:
    models = sys.modules[node_class.__module__.rsplit(".", 1)[0] + ".models"]
    return models.GreetingRequested(name=name)


def test_two_roots_with_the_same_module_path_get_their_own_classes(
    project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = tmp_path_factory.mktemp("other_project")
    shutil.copytree(project, other, dirs_exist_ok=True)
    node_file = other / "nodes/greeter/v1_0_0/node.py"
    node_file.write_text(node_file.read_text().replace('f"hello, {payload.name}"', 'f"hi, {payload.name}"'))

    first = resolve_implementation(load_contracts(project, env={}).get("greeter"), root=project)
    second = resolve_implementation(load_contracts(other, env={}).get("greeter"), root=other)

    assert first is not second
    assert second().handle_greeting_requested(_greeting_requested(second, "bo")).greeting == "hi, bo"
    assert sys.modules["nodes"].__file__ == str(PROJECT / "nodes/__init__.py")


def test_resolve_implementation_names_forbidden_and_missing_classes(project: Path) -> None:
    greeter = load_contracts(project, env={}).get("greeter")

    with pytest.raises(ContractError) as forbidden:
        resolve_implementation(greeter.model_copy(update={"implementation": "os:system"}), root=project)
    assert [i.code for i in forbidden.value.issues] == ["implementation-forbidden"]

    with pytest.raises(ContractError) as missing:
        resolve_implementation(greeter.model_copy(update={"implementation": "nodes.gone.node:Gone"}), root=project)
    assert [i.code for i in missing.value.issues] == ["implementation-missing"]
    assert "no module named 'nodes.gone'" in missing.value.issues[0].message


def test_the_first_root_to_claim_nodes_is_imported_under_its_real_name(project: Path) -> None:
    # A fresh interpreter where `nodes` is not imported yet, as in `onex run` from a project directory.
    script = (
        "import sys; from onex.contracts import load_contracts, resolve_implementation\n"
        f"root = {str(project)!r}\n"
        "cls = resolve_implementation(load_contracts(root, env={}).get('greeter'), root=root)\n"
        "print(cls.__module__, sys.modules['nodes'].__file__)\n"
    )
    # Run from outside the root, where the editable install would otherwise find the real project's `nodes`.
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=project.parent, capture_output=True, text=True, check=True, timeout=60
    )

    module, nodes_file = result.stdout.split()
    assert module == "nodes.greeter.v1_0_0.node"
    assert Path(nodes_file) == project / "nodes/__init__.py"


# --- guards -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "tokens"),
    [
        ("status equals completed", ("status", "equals", "completed")),
        ("attempts < 3", ("attempts", "<", "3")),
        ("node_registry min_length 1", ("node_registry", "min_length", "1")),
        ("payload.namespace exists", ("payload.namespace", "exists", None)),
        ("name matches ^[a-z]+$", ("name", "matches", "^[a-z]+$")),
        ("  region   in   eu,us  ", ("region", "in", "eu,us")),
    ],
)
def test_parse_condition_accepts_the_three_token_grammar(expression: str, tokens: tuple[str, ...]) -> None:
    assert parse_condition(expression) == tokens


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("status", "three tokens"),
        ("a == b c", "three tokens"),
        ("a is b", "unknown operator 'is'"),
        ("_private exists", "private"),
        ("a exists b", "takes no value"),
        ("a ==", "needs a value"),
        ("a matches (", "not a regular expression RE2 can run"),
        ("a matches (?=b)b", "RE2 has no back-references or look-around"),  # what Python's re runs, but RE2 refuses
        (r"a matches (b)\1", "RE2 has no back-references or look-around"),
        ("1abc == 2", "not a dotted name"),
        ("__import__('os') == 1", "private"),
    ],
)
def test_parse_condition_rejects_everything_else(expression: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("(", r"\(")):
        parse_condition(expression)


# --- schemas ----------------------------------------------------------------------------------------------------


def test_schemas_are_draft_2020_12_and_ship_one_per_subcontract_type() -> None:
    shipped = schemas()

    assert set(shipped) == {"contract", "fsm", "event_type", "aggregation", "routing", "state_management", "caching"}
    for schema in shipped.values():
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        Draft202012Validator.check_schema(schema)
    schema_dir = Path(contracts_module.__file__).parent.parent / "schemas"
    assert {p.name for p in schema_dir.glob("*.schema.json")} == {f"{name}.schema.json" for name in shipped}


def _models_by_schema() -> list[tuple[str, str, dict[str, Any], type[BaseModel]]]:
    """(schema name, definition name, JSON Schema object, pydantic model) for every object the schemas define."""
    pairs = []
    roots = {"contract": "Contract", **{name: model.__name__ for name, model in SUBCONTRACT_MODELS.items()}}
    for name, schema in schemas().items():
        pairs.append((name, roots[name], schema, getattr(contracts_module, roots[name])))
        for definition, body in schema.get("$defs", {}).items():
            pairs.append((name, definition, body, getattr(contracts_module, definition)))
    return pairs


_SCHEMA_FILES = {f"{name}.schema.json": model.__name__ for name, model in SUBCONTRACT_MODELS.items()}
Shape = frozenset[tuple[Any, ...]]


def shape(node: dict[str, Any], defs: dict[str, Any]) -> Shape:
    """What a JSON Schema node accepts, in words both the shipped schemas and pydantic's generated ones reduce to.

    ``{"type": ["string", "null"]}`` and ``{"anyOf": [{"type": "string"}, {"type": "null"}]}`` are both
    ``{("string",), ("null",)}``; a reference to another object (``#/$defs/FsmState``, ``fsm.schema.json``) is
    ``("model", name)``; an enum or a const is its set of values, whether inline or a referenced enum.
    """
    if "$ref" in node:
        ref = node["$ref"]
        if ref in _SCHEMA_FILES:
            return frozenset({("model", _SCHEMA_FILES[ref])})
        name = ref.removeprefix("#/$defs/")
        if "enum" in defs[name]:
            return frozenset({("enum", frozenset(defs[name]["enum"]))})
        return frozenset({("model", name)})
    for combinator in ("anyOf", "oneOf"):
        if combinator in node:
            return frozenset().union(*(shape(alternative, defs) for alternative in node[combinator]))
    if "const" in node:
        return frozenset({("enum", frozenset({node["const"]}))})
    if "enum" in node:
        return frozenset({("enum", frozenset(node["enum"]))})
    if "type" not in node:
        return frozenset({("any",)})
    types = node["type"] if isinstance(node["type"], list) else [node["type"]]
    return frozenset(("array", shape(node.get("items", {}), defs)) if t == "array" else (t,) for t in types)


def shapes_agree(schema_shape: Shape, model_shape: Shape, model_default: Any) -> bool:
    # A field that defaults to None takes null too in the model, where absent and null mean the same; the schema
    # may accept only its absence (`subcontracts: {fsm: null}` says nothing a contract should say).
    if model_default is None and schema_shape == model_shape - {("null",)}:
        return True
    return schema_shape == model_shape


@pytest.mark.parametrize(("schema_name", "definition", "body", "model"), _models_by_schema())
def test_each_schema_object_has_exactly_its_models_fields(
    schema_name: str, definition: str, body: dict[str, Any], model: type[BaseModel]
) -> None:
    fields = {name for name in model.model_fields if name != "source"}  # `source` is set by the loader
    required = {name for name, info in model.model_fields.items() if info.is_required() and name != "source"}
    generated = model.model_json_schema()
    schema_defs = schemas()[schema_name].get("$defs", {})

    assert set(body["properties"]) == fields
    assert set(body["required"]) == required
    assert body["additionalProperties"] is False  # every model forbids extra keys
    disagreements = {
        name: (set(shape(body["properties"][name], schema_defs)), set(shape(field, generated.get("$defs", {}))))
        for name, field in generated["properties"].items()
        if name in fields
        and not shapes_agree(
            shape(body["properties"][name], schema_defs),
            shape(field, generated.get("$defs", {})),
            model.model_fields[name].default,
        )
    }
    assert disagreements == {}  # field: (what the schema accepts, what the model accepts)


def test_every_model_a_contract_is_built_from_has_its_schema_object() -> None:
    generated = Contract.model_json_schema()["$defs"]
    models = {"Contract"} | {name for name, body in generated.items() if "enum" not in body}

    assert {definition for _, definition, _, _ in _models_by_schema()} == models


def test_the_shape_comparison_notices_a_changed_type_enum_or_item() -> None:
    defs: dict[str, Any] = {"Kind": {"enum": ["a", "b"]}}

    assert shape({"type": ["integer", "null"]}, {}) == shape({"anyOf": [{"type": "integer"}, {"type": "null"}]}, {})
    assert shape({"enum": ["a", "b"]}, {}) == shape({"$ref": "#/$defs/Kind"}, defs)
    assert shape({"type": "integer"}, {}) != shape({"type": "string"}, {})
    assert shape({"enum": ["a", "b"]}, {}) != shape({"enum": ["a", "c"]}, {})
    assert shape({"type": "array", "items": {"type": "string"}}, {}) != shape({"type": "array"}, {})
    assert not shapes_agree(shape({"type": "string"}, {}), shape({"type": ["string", "null"]}, {}), "")


def test_the_bundled_schema_validates_a_contract_on_its_own(project: Path) -> None:
    validator = Draft202012Validator(bundled_schema())
    valid = {
        "contract_version": "2.0.0",
        "name": "greeter",
        "version": "1.0.0",
        "node_type": "EFFECT",
        "subcontracts": {
            "fsm": {"version": "1.0.0", "initial_state": "a", "states": [{"state_name": "a"}], "transitions": []}
        },
    }

    assert list(validator.iter_errors(valid)) == []
    invalid = json.loads(json.dumps(valid))
    invalid["subcontracts"]["fsm"]["states"][0]["is_final"] = True
    # The subcontract may also be a `$ref` (tests/test_schema_export.py): the inline alternative got furthest.
    errors = list(validator.iter_errors(invalid))
    assert list(jsonschema.exceptions.best_match(errors).absolute_path) == ["subcontracts", "fsm", "states", 0]


# --- the broken-contract corpus ---------------------------------------------------------------------------------


def _oversized(root: Path) -> None:
    # Generated rather than committed: a valid start, then a comment that pushes the file one byte over the limit.
    head = b"contract_version: 2.0.0\nname: huge\nversion: 1.0.0\nnode_type: EFFECT\n# "
    path = root / "contracts/effects/huge.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head + b"x" * (MAX_FILE_BYTES + 1 - len(head)))


SECRET = "password: hunter2-outside-the-root\n"


def _outside_root(root: Path) -> None:
    # Next to the copied case, so outside its root: the file its `$ref`s reach for, and a link inside the root to it.
    secret = root.parent / "outside_secret.yaml"
    secret.write_text(SECRET)
    link = root / "subcontracts/event_type/link_out.yaml"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(secret)


_GENERATED: dict[str, Callable[[Path], None]] = {"oversized_file": _oversized, "ref_outside_root": _outside_root}
CASES = sorted(p.name for p in CORPUS.iterdir() if p.is_dir())


def test_the_corpus_has_a_case_for_every_kind_of_mistake() -> None:
    assert len(CASES) >= 22
    covered = {
        line.split(": ")[-1]
        for case in CASES
        for line in (CORPUS / case / "expected.txt").read_text().split("\n")
        if line
    }
    assert covered == ISSUE_CODES - {"io"}  # unreadable files are covered below


@pytest.mark.parametrize("case", CASES)
def test_corpus(case: str, tmp_path: Path) -> None:
    # A copy, so that importing a case's nodes leaves no __pycache__ in the repository and generated files fit in.
    root = tmp_path / case
    shutil.copytree(CORPUS / case, root)
    if case in _GENERATED:
        _GENERATED[case](root)
    expected = sorted(line for line in (root / "expected.txt").read_text().splitlines() if line)

    with pytest.raises(ContractError) as raised:
        load_contracts(root, check_implementations=(root / "nodes").is_dir(), env={})

    assert sorted(codes(raised.value)) == expected
    assert all(issue.message.strip() for issue in raised.value.issues)


def test_a_ref_outside_the_root_is_refused_at_the_ref_and_its_content_never_quoted(tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(CORPUS / "ref_outside_root", root)
    _outside_root(root)

    with pytest.raises(ContractError) as raised:
        load_contracts(root, env={})

    messages = [issue.message for issue in raised.value.issues]
    assert {issue.code for issue in raised.value.issues} == {"outside-root"}
    assert all("resolves outside the project root" in m for m in messages)
    assert not any("hunter2" in m or "password" in m for m in messages)
    assert not any("root:" in m for m in messages)  # nothing of /etc/passwd either
    # The link's message names where it really leads, so the author can see why.
    assert any(str(tmp_path / "outside_secret.yaml") in m for m in messages)


def test_a_valid_subcontract_outside_the_root_is_still_refused(tmp_path: Path, project: Path) -> None:
    outside = write(tmp_path.parent / f"{tmp_path.name}_elsewhere", "fsm.yaml", GREETING_FSM)
    write(project, "contracts/effects/greeter.yaml", GREETER.replace("subcontracts/fsm/greeting.yaml", str(outside)))

    with pytest.raises(ContractError) as raised:
        load_contracts(project, env={})

    assert codes(raised.value) == ["contracts/effects/greeter.yaml:9:9: outside-root"]


def test_links_and_dot_dot_that_stay_inside_the_root_resolve(project: Path) -> None:
    (project / "contracts/effects/fsm_link.yaml").symlink_to(project / "subcontracts/fsm/greeting.yaml")
    write(
        project,
        "contracts/effects/greeter.yaml",
        GREETER.replace("subcontracts/fsm/greeting.yaml", "./fsm_link.yaml").replace(
            "../../subcontracts/event_type", "subcontracts/../subcontracts/event_type"
        ),
    )

    greeter = load_contracts(project, env={}).get("greeter")

    assert greeter.subcontracts.fsm is not None
    assert greeter.subcontracts.fsm.state_machine_name == "greeting"
    assert greeter.subcontracts.event_type is not None


def test_an_unreadable_path_is_an_io_issue(tmp_path: Path) -> None:
    with pytest.raises(ContractError) as raised:
        load_contracts(tmp_path, ["contracts/missing.yaml"], env={})

    assert codes(raised.value) == ["contracts/missing.yaml:1:1: io"]


def test_the_size_limit_is_a_parameter(project: Path) -> None:
    with pytest.raises(ContractError) as raised:
        load_contracts(project, env={}, max_bytes=100)

    assert {issue.code for issue in raised.value.issues} == {"too-large"}


# --- the package ------------------------------------------------------------------------------------------------


def test_the_package_exports_its_public_names_from_one_place() -> None:
    exported = contracts_module.__all__

    assert [name for name in exported if not hasattr(contracts_module, name)] == []
    assert {"Contract", "ContractSet", "load_contracts", "parse_condition", "plan_stages", "schemas"} <= set(exported)
    # Everything a submodule defines without a leading `_` is exported here: callers never reach into the modules.
    for module in ("models", "checks", "grammar", "aggregations", "code", "imports", "loader", "schema", "yaml"):
        source = Path(importlib.import_module(f"onex.contracts.{module}").__file__ or "").read_text()
        defined = set()
        for node in ast.parse(source).body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                defined.add(node.name)
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                defined |= {target.id for target in targets if isinstance(target, ast.Name)}
        assert sorted(name for name in defined - set(exported) if not name.startswith("_")) == [], module


def test_a_contract_may_read_only_declared_onex_settings_typed_as_onex_config_shows_them(project: Path) -> None:
    write(
        project,
        "contracts/effects/greeter.yaml",
        GREETER.replace(
            '  greeting: "${GREETING:hello}"',
            '  greeting: "${GREETING:hello}"\n      events: "${ONEX_LOG_EVENTS:false}"',
        ),
    )
    assert load_contracts(project, env={"ONEX_LOG_EVENTS": "on"}).get("greeter").config["events"] == "true"
    assert load_contracts(project, env={}).get("greeter").config["events"] == "false"  # the declared default

    write(
        project,
        "contracts/effects/greeter.yaml",
        GREETER.replace('  greeting: "${GREETING:hello}"', '  greeting: "${ONEX_GREETING:hello}"'),
    )
    with pytest.raises(ContractError) as info:
        load_contracts(project, env={})
    [issue] = info.value.issues
    assert issue.code == "env"
    assert "ONEX_GREETING is not an onex setting" in issue.message
    assert re.match(r"contracts/effects/greeter\.yaml:\d+:\d+: ONEX_GREETING is not an onex setting", str(issue))


# --- what node code and YAML mistakes are told (issue 14) -------------------------------------------------------


def corpus_issues(case: str, tmp_path: Path) -> dict[str, list[str]]:
    """The messages a corpus case produces, by ``path:line:column: code``."""
    root = tmp_path / case
    shutil.copytree(CORPUS / case, root)
    with pytest.raises(ContractError) as raised:
        load_contracts(root, check_implementations=(root / "nodes").is_dir(), env={})
    found: dict[str, list[str]] = {}
    for issue in raised.value.issues:
        found.setdefault(f"{issue.path}:{issue.line}:{issue.column}: {issue.code}", []).append(issue.message)
    return found


def test_the_node_kinds_named_by_contracts_are_the_runtimes_base_classes() -> None:
    # onex.contracts may not import onex.nodes (tests/test_layering.py), so it names the bases; the names must hold.
    nodes_module = importlib.import_module("onex.nodes")

    for kind, base in _NODE_BASES.items():
        assert getattr(nodes_module, base).node_type is kind
    assert set(_NODE_BASES) == set(NodeType)


def test_a_class_without_the_node_base_is_reported_at_the_class_with_the_base_to_use(tmp_path: Path) -> None:
    [message] = corpus_issues("not_a_node", tmp_path)["nodes/widget/v1_0_0/node.py:4:1: not-a-node"]

    assert "must subclass onex.nodes.EffectNode (node_type EFFECT)" in message
    assert "NodeWidget() takes no arguments" in message


def test_a_class_of_another_kind_is_reported_at_node_type_with_both_fixes(tmp_path: Path) -> None:
    [message] = corpus_issues("node_kind_mismatch", tmp_path)["contracts/effects/widget.yaml:4:12: node-kind-mismatch"]

    assert "node_type is EFFECT but nodes.widget.v1_0_0.node:NodeWidget is a ComputeNode" in message
    assert "subclass onex.nodes.EffectNode or set node_type: COMPUTE" in message


def test_unknown_triggers_are_reported_at_the_literal_with_the_closest_known_one(tmp_path: Path) -> None:
    found = corpus_issues("trigger_unknown", tmp_path)

    assert found["nodes/widget/v1_0_0/node.py:10:34: trigger-unknown"] == [
        "self.fsm.trigger(..., 'strat'): the fsm of widget has no such trigger (triggers: start, finish); "
        "did you mean 'start'?"
    ]
    [abort] = found["nodes/widget/v1_0_0/node.py:13:54: trigger-unknown"]  # a branch of `a if c else b`
    assert "'abort'" in abort
    assert "did you mean" not in abort  # nothing is close enough
    assert "; did you mean 'finish'?" in found["nodes/widget/v1_0_0/node.py:14:42: trigger-unknown"][0]  # a constant


def test_undeclared_events_are_reported_at_the_literal_with_what_the_contract_declares(tmp_path: Path) -> None:
    found = corpus_issues("event_undeclared", tmp_path)

    assert found["nodes/widget/v1_0_0/node.py:11:28: event-undeclared"] == [
        "self.publish('STAMP_CRATED'): widget does not declare it in subcontracts.event_type.publishes "
        "(declared: STAMP_CREATED); did you mean 'STAMP_CREATED'?"
    ]
    assert found["nodes/widget/v1_0_0/node.py:12:38: event-undeclared"][0].startswith(
        "self.publish_envelopes('STAMP_FAILED')"
    )
    assert found["nodes/widget/v1_0_0/node.py:13:39: event-undeclared"][0].startswith("self.publish('STAMPED')")


def test_a_trigger_without_an_fsm_subcontract_says_so(tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(CORPUS / "trigger_unknown", root)
    contract = root / "contracts/effects/widget.yaml"
    contract.write_text(contract.read_text().split("subcontracts:")[0])

    with pytest.raises(ContractError) as raised:
        load_contracts(root, env={})

    assert {issue.code for issue in raised.value.issues} == {"trigger-unknown"}
    assert all("widget has no fsm subcontract, so self.fsm is None" in i.message for i in raised.value.issues)


def test_code_inherited_from_a_project_base_class_is_checked_where_it_is_written(tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(CORPUS / "event_undeclared", root)
    write(
        root,
        "nodes/widget/base.py",
        """\
        from typing import Any

        from onex.nodes import EffectNode


        class Stamper(EffectNode):
            async def stamp(self, payload: dict[str, Any]) -> None:
                await self.publish("STAMP_CREATED", payload)
                await self.publish("STAMP_LOST", payload)
        """,
    )
    write(root, "nodes/widget/v1_0_0/node.py", "from ..base import Stamper\n\n\nclass NodeWidget(Stamper):\n    pass\n")

    with pytest.raises(ContractError) as raised:
        load_contracts(root, env={})

    assert codes(raised.value) == ["nodes/widget/base.py:9:28: event-undeclared"]


def test_node_code_is_not_read_without_implementation_checks(tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(CORPUS / "event_undeclared", root)

    assert load_contracts(root, check_implementations=False, env={}).names() == ["widget"]


@pytest.mark.parametrize(
    ("case", "issue", "hint"),
    [
        ("yaml_bad_indentation", "contracts/effects/widget.yaml:7:14: yaml", "check the indentation of the line above"),
        (
            "yaml_unclosed_quote",
            "contracts/effects/widget.yaml:8:1: yaml",
            "the quote opened at line 5, column 14 is never closed",
        ),
        (
            "yaml_syntax_error",
            "contracts/effects/widget.yaml:6:1: yaml",
            "the '[' at line 5, column 19 is never closed",
        ),
        ("yaml_tab_indent", "contracts/effects/widget.yaml:6:1: yaml", "YAML indents with spaces"),
    ],
)
def test_yaml_errors_add_a_plain_hint_to_pyyamls_words(case: str, issue: str, hint: str, tmp_path: Path) -> None:
    [message] = corpus_issues(case, tmp_path)[issue]

    pyyaml, _, plain = message.partition("; ")
    assert pyyaml  # PyYAML's own wording comes first
    assert hint in plain


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("name: widget\nversion\nnode_type: EFFECT\n", "the key at line 2, column 1 has no ':' after it"),
        ("config:\n    retries: 3\n  timeout: 5\n", "must start in the same column"),
        ("config: {retries: 1\nname: x\n", "a ',' is missing, or the '{' at line 1, column 9 is never closed"),
        ("name: `x`\n", "quote a value that starts with this character"),
        ("name: *x\n", "anchor '&name' defined before it"),
    ],
)
def test_the_usual_yaml_mistakes_each_get_their_hint(text: str, hint: str) -> None:
    with pytest.raises(_Problem, match=re.escape(hint)):
        _parse_yaml(text, Path("/project/contract.yaml"), 100)
