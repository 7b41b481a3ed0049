"""Config models: a node declares its ``config:`` as a pydantic model (``config_model``), ``onex validate`` reports a
value of the wrong type at the value and an unknown key at the key (file:line:col), and the node gets typed values.

User projects are written into a temporary root per test, their node classes next to their contracts (imported under
a private alias, as ``tests/test_contracts.py`` explains); the shipped nodes are checked with the shipped contracts.
"""

from __future__ import annotations

import importlib
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from onex.bus import MemoryBus
from onex.contracts import Contract, Step, bundled_schema, load_contract, load_contracts, resolve_implementation
from onex.exceptions import ContractError
from onex.nodes import EffectNode, Node, OrchestratorNode
from onex.settings import Settings
from onex.stores import open_store

PROJECT = Path(__file__).resolve().parent.parent

# The real project's `nodes` package owns the name `nodes` in this process (see tests/test_contracts.py).
importlib.import_module("nodes")


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def issues(error: ContractError) -> list[str]:
    return [f"{issue.path}:{issue.line}:{issue.column}: {issue.code}: {issue.message}" for issue in error.issues]


def position(file: Path, text: str) -> tuple[int, int]:
    """The 1-based line and column where ``text`` first starts in ``file``."""
    for number, line in enumerate(file.read_text().split("\n"), start=1):
        if text in line:
            return number, line.index(text) + 1
    raise AssertionError(f"{text!r} is not in {file}")


# A user's effect node declaring its config, and one declaring none; an orchestrator extending the kind's model.
WIDGET_NODE = """\
    from __future__ import annotations

    from onex.nodes import EffectNode
    from pydantic import Field


    class WidgetConfig(EffectNode.Config):
        poll_interval_ms: int = Field(1000, gt=0, description="How often the widget polls, in ms.")
        label: str = Field("widget", description="What the widget calls itself.")
        enabled: bool = Field(False, description="Whether the widget polls at all.")


    class NodeWidget(EffectNode):
        config_model = WidgetConfig
        config: WidgetConfig
"""

GADGET_NODE = """\
    from __future__ import annotations

    from onex.nodes import EffectNode


    class NodeGadget(EffectNode):
        pass
"""

PIPELINE_NODE = """\
    from __future__ import annotations

    from onex.nodes import OrchestratorNode
    from pydantic import Field


    class PipelineConfig(OrchestratorNode.Config):
        batch_size: int = Field(10, gt=0, description="How many items one step takes.")


    class NodePipeline(OrchestratorNode):
        config_model = PipelineConfig
        config: PipelineConfig
"""


def contract(name: str, node_type: str, config: str) -> str:
    return f"contract_version: 2.0.0\nname: {name}\nversion: 1.0.0\nnode_type: {node_type}\nconfig:\n{config}"


@pytest.fixture
def widget_project(tmp_path: Path) -> Path:
    write(tmp_path, "nodes/__init__.py", "")
    write(tmp_path, "nodes/widget/__init__.py", "")
    write(tmp_path, "nodes/widget/v1_0_0/__init__.py", "")
    write(tmp_path, "nodes/widget/v1_0_0/node.py", WIDGET_NODE)
    return tmp_path


def node_class(loaded: Contract, root: Path) -> type[Node]:
    cls = resolve_implementation(loaded, root=root)
    assert issubclass(cls, Node)
    return cls


def load_widget(root: Path, config: str, env: dict[str, str] | None = None) -> Contract:
    path = root / "contracts/effects/widget.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(contract("widget", "EFFECT", config))
    return load_contract(path, root=root, env=env or {})


# --- onex validate ----------------------------------------------------------------------------------------------


def test_a_value_of_the_wrong_type_is_reported_at_the_value(widget_project: Path) -> None:
    with pytest.raises(ContractError) as raised:
        load_widget(widget_project, "  poll_interval_ms: fast\n  label: [a, b]\n")

    assert issues(raised.value) == [
        "contracts/effects/widget.yaml:6:21: config-type: config.poll_interval_ms: expected an integer, got 'fast'",
        "contracts/effects/widget.yaml:7:10: config-type: config.label: expected a string (quote it), got ['a', 'b']",
    ]


def test_a_constraint_is_reported_with_what_it_wants(widget_project: Path) -> None:
    with pytest.raises(ContractError) as raised:
        load_widget(widget_project, "  poll_interval_ms: 0\n")

    assert issues(raised.value) == [
        "contracts/effects/widget.yaml:6:21: config-type: config.poll_interval_ms: should be greater than 0, got 0"
    ]


def test_an_unknown_key_is_reported_at_the_key_with_a_suggestion(widget_project: Path) -> None:
    with pytest.raises(ContractError) as raised:
        load_widget(widget_project, "  poll_intervl_ms: 500\n  colour: red\n")

    declared = "(declared: poll_interval_ms, label, enabled)"
    assert issues(raised.value) == [
        "contracts/effects/widget.yaml:6:3: config-unknown: config.poll_intervl_ms: unknown key, not a field of "
        f"NodeWidget.config_model (WidgetConfig) {declared}; did you mean 'poll_interval_ms'?",
        "contracts/effects/widget.yaml:7:3: config-unknown: config.colour: unknown key, not a field of "
        f"NodeWidget.config_model (WidgetConfig) {declared}",
    ]


def test_a_wrong_value_from_the_environment_names_the_variable(widget_project: Path) -> None:
    config = '  enabled: "${WIDGET_ENABLED:false}"\n  poll_interval_ms: ${WIDGET_POLL_MS:soon}\n'

    with pytest.raises(ContractError) as raised:
        load_widget(widget_project, config, env={"WIDGET_ENABLED": "maybe"})

    assert issues(raised.value) == [
        "contracts/effects/widget.yaml:6:12: config-type: config.enabled: expected a boolean (true/false, yes/no, "
        "on/off, 1/0), got 'maybe' (from the environment variable WIDGET_ENABLED)",
        "contracts/effects/widget.yaml:7:21: config-type: config.poll_interval_ms: expected an integer, got 'soon' "
        "(the default of ${WIDGET_POLL_MS:soon})",
    ]


def test_values_from_the_environment_are_typed_as_the_model_says(widget_project: Path) -> None:
    config = '  enabled: "${WIDGET_ENABLED:false}"\n  poll_interval_ms: "${WIDGET_POLL_MS:1000}"\n'

    loaded = load_widget(widget_project, config, env={"WIDGET_ENABLED": "yes", "WIDGET_POLL_MS": "250"})

    assert loaded.config == {"enabled": "yes", "poll_interval_ms": "250"}  # the raw dict stays as interpolated
    model = node_class(loaded, widget_project).config_model
    assert model.model_validate(loaded.config).model_dump() == {
        "poll_interval_ms": 250,
        "label": "widget",
        "enabled": True,
    }


def test_a_required_field_left_out_is_reported(widget_project: Path) -> None:
    write(
        widget_project,
        "nodes/widget/v1_0_0/node.py",
        WIDGET_NODE.replace('label: str = Field("widget", ', "label: str = Field("),
    )

    with pytest.raises(ContractError) as raised:
        load_widget(widget_project, "  poll_interval_ms: 5\n")

    assert issues(raised.value) == [
        "contracts/effects/widget.yaml:6:3: config-missing: config.label: required by NodeWidget.config_model "
        "(WidgetConfig) and not given"
    ]


def test_a_node_without_a_config_model_takes_any_config(tmp_path: Path) -> None:
    write(tmp_path, "nodes/__init__.py", "")
    write(tmp_path, "nodes/gadget/__init__.py", "")
    write(tmp_path, "nodes/gadget/v1_0_0/__init__.py", "")
    write(tmp_path, "nodes/gadget/v1_0_0/node.py", GADGET_NODE)
    path = write(tmp_path, "contracts/effects/gadget.yaml", contract("gadget", "EFFECT", "  anything: [1, 2]\n"))

    loaded = load_contract(path, root=tmp_path, env={})

    cls = node_class(loaded, tmp_path)
    assert cls.config_model is EffectNode.OpenConfig
    assert cls.config_model.model_validate(loaded.config).model_extra == {"anything": [1, 2]}


# --- orchestrators: the kind's fields, a subclass's own ------------------------------------------------------------


@pytest.fixture
def pipeline_project(tmp_path: Path) -> Path:
    write(tmp_path, "nodes/__init__.py", "")
    write(tmp_path, "nodes/pipeline/__init__.py", "")
    write(tmp_path, "nodes/pipeline/v1_0_0/__init__.py", "")
    write(tmp_path, "nodes/pipeline/v1_0_0/node.py", PIPELINE_NODE)
    return tmp_path


def load_pipeline(root: Path, config: str) -> Contract:
    path = write(root, "contracts/orchestrators/pipeline.yaml", contract("pipeline", "ORCHESTRATOR", config))
    return load_contract(path, root=root, env={})


STEPS = "  steps:\n    - {step_name: fetch}\n    - {step_name: parse, depends_on: [fetch], timeout_ms: 500}\n"


def test_a_subclass_model_extends_the_orchestrators_and_is_checked_whole(pipeline_project: Path) -> None:
    with pytest.raises(ContractError) as raised:
        load_pipeline(pipeline_project, STEPS + "  batch_size: many\n  dedupe_window: -1\n  batchsize: 3\n")

    assert issues(raised.value) == [
        "contracts/orchestrators/pipeline.yaml:9:15: config-type: config.batch_size: expected an integer, got 'many'",
        "contracts/orchestrators/pipeline.yaml:10:18: config-type: config.dedupe_window: should be greater than 0, "
        "got -1",
        "contracts/orchestrators/pipeline.yaml:11:3: config-unknown: config.batchsize: unknown key, not a field of "
        "NodePipeline.config_model (PipelineConfig) (declared: steps, dedupe_window, batch_size); "
        "did you mean 'batch_size'?",
    ]


def test_a_bad_step_is_reported_once_by_the_steps_check(pipeline_project: Path) -> None:
    with pytest.raises(ContractError) as raised:
        load_pipeline(pipeline_project, "  steps:\n    - {step_name: fetch, timeout_ms: soon}\n")

    # check_steps says it (also without node code); the class's model, which types the same steps, does not again.
    assert [f"{i.line}:{i.column}: {i.code}" for i in raised.value.issues] == ["7:38: steps"]


@pytest.fixture
async def memory_bus() -> AsyncIterator[MemoryBus]:
    async with MemoryBus() as bus:
        yield bus


def build(cls: type[Node], loaded: Contract, bus: MemoryBus, tmp_path: Path, **environ: str) -> Any:
    settings = Settings.load(environ=environ, root=str(PROJECT), heartbeat_interval_s=1, instance="t1")
    return cls(loaded, bus=bus, store=open_store(f"sqlite:///{tmp_path}/onex.db"), settings=settings)


@pytest.mark.anyio
async def test_the_orchestrator_gets_typed_steps_and_its_subclass_fields(
    pipeline_project: Path, memory_bus: MemoryBus
) -> None:
    loaded = load_pipeline(pipeline_project, STEPS + "  batch_size: '25'\n  dedupe_window: 7\n")

    node = build(node_class(loaded, pipeline_project), loaded, memory_bus, pipeline_project)

    assert node.config.batch_size == 25
    assert node.dedupe_window == 7
    assert node.steps == [
        Step(step_name="fetch"),
        Step(step_name="parse", depends_on=("fetch",), timeout_ms=500),
    ]
    assert node.confirm_after_s == 0.5  # the shortest step timeout, read from the typed steps


def test_an_orchestrator_without_a_model_types_its_steps_and_allows_other_keys() -> None:
    config = OrchestratorNode.config_model.model_validate(
        {"steps": [{"step_name": "a", "timeout_ms": "300"}], "extra": 1}
    )

    assert isinstance(config, OrchestratorNode.Config)
    assert config.model_dump() == {
        "steps": ({"step_name": "a", "depends_on": (), "timeout_ms": 300, "max_attempts": 1, "optional": False},),
        "dedupe_window": 200_000,
        "extra": 1,
    }


# --- at run time ------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_node_built_from_an_unchecked_contract_refuses_a_bad_config(
    widget_project: Path, memory_bus: MemoryBus
) -> None:
    path = write(widget_project, "contracts/effects/widget.yaml", contract("widget", "EFFECT", "  label: 3\n"))
    loaded = load_contract(path, root=widget_project, env={}, check_implementations=False)
    cls = node_class(loaded, widget_project)

    with pytest.raises(ContractError) as raised:
        build(cls, loaded, memory_bus, widget_project)

    assert [(i.path, i.code) for i in raised.value.issues] == [(str(path), "config-type")]
    assert "config.label: Input should be a valid string, got 3" in raised.value.issues[0].message


# --- the shipped nodes ------------------------------------------------------------------------------------------


def test_validate_checks_a_shipped_nodes_config_against_its_model(tmp_path: Path) -> None:
    # A copy of the shipped contract, its $refs still the project's and its class the shipped NodeRegistry.
    shipped = (PROJECT / "contracts/registries/registry.yaml").read_text()
    file = tmp_path / "registry.yaml"
    file.write_text(shipped.replace("stale_after_missed_heartbeats: 3", "stale_after_missed_heartbeats: often"))
    line, column = position(file, "often")

    with pytest.raises(ContractError) as raised:
        load_contract(file, root=PROJECT, env={})

    assert issues(raised.value) == [
        f"{file}:{line}:{column}: config-type: config.stale_after_missed_heartbeats: expected an integer, got 'often'"
    ]


def test_an_onex_variable_of_the_wrong_type_is_reported_once_by_the_env_check() -> None:
    file = PROJECT / "contracts/registries/registry.yaml"
    line, column = position(file, '"${ONEX_REGISTRY_SWEEP_MS:')

    with pytest.raises(ContractError) as raised:
        load_contract(file, root=PROJECT, env={"ONEX_REGISTRY_SWEEP_MS": "fast"})

    # ONEX_* variables are typed settings: the placeholder stays unresolved, and the config check does not repeat it.
    assert [f"{i.line}:{i.column}: {i.code}" for i in raised.value.issues] == [f"{line}:{column}: env"]


SHIPPED: dict[str, tuple[dict[str, str], dict[str, object]]] = {
    "registry": (
        {"ONEX_REGISTRY_SWEEP_MS": "250"},
        {"sweep_interval_s": 0.25, "stale_after_s": 3.0},
    ),
    "reducer": (
        {"ONEX_REDUCER_FLUSH_MS": "40"},
        {"flush_interval_s": 0.04, "dedupe_window": 200_000, "reconcile_after_s": 10.0},
    ),
    "database_adapter_effect": (
        {"ONEX_LOG_EVENTS": "yes", "ONEX_DRAIN_TIMEOUT_MS": "1500"},
        {"log_events": True, "_drain_timeout_s": 1.5, "_max_backoff_s": 2.0, "_recent_max": 200_000},
    ),
    "stamping_effect": (
        {"ONEX_STAMP_AUTHOR": "ada"},
        {"author": "ada", "inline_bytes": 262_144},
    ),
    "orchestrator": (
        {"ONEX_INTELLIGENCE_URL": "http://127.0.0.1:9/hash", "ONEX_STAMP_TIMEOUT_MS": "1200"},
        {"intelligence_url": "http://127.0.0.1:9/hash", "confirm_after_s": 1.2, "dedupe_window": 200_000},
    ),
}


@pytest.mark.anyio
@pytest.mark.parametrize("name", sorted(SHIPPED))
async def test_a_shipped_node_gets_typed_values_from_interpolated_strings(
    name: str, memory_bus: MemoryBus, tmp_path: Path
) -> None:
    environ, expected = SHIPPED[name]
    loaded = load_contracts(PROJECT, env=environ).get(name)
    cls = node_class(loaded, PROJECT)

    node = build(cls, loaded, memory_bus, tmp_path)

    assert cls.config_model.model_config.get("extra") == "forbid"  # a model of its own, not the open default
    assert {attribute: getattr(node, attribute) for attribute in expected} == expected
    assert isinstance(node.config, cls.config_model)


def test_every_shipped_config_key_is_a_field_of_its_nodes_model() -> None:
    loaded = load_contracts(PROJECT, env={})

    for item in loaded.contracts:
        model = node_class(item, PROJECT).config_model
        assert set(item.config) <= set(model.model_fields), item.name
        assert all(field.description for field in model.model_fields.values()), item.name


def test_the_exported_schema_leaves_config_open() -> None:
    # The schema cannot know the node class; validate checks config against the class's model instead.
    config = bundled_schema()["properties"]["config"]

    assert config["type"] == "object"
    assert "properties" not in config
    assert config.get("additionalProperties", True) is not False
