"""Contract fields a node class would not read are refused at load, at their file:line:column.

The class says what it honours (``onex.nodes``: ``subcontracts_read``, ``routes``, ``cached_lookups``,
``uses_breaker``, ``step_names`` / ``required_steps``); ``onex validate`` holds each contract to it. Each test copies
the shipped project, changes one thing, and names the problem it must produce. The class-free checks (templates,
``$ref``s in payload schemas, FSM fields, ``contract_version``) are corpus cases of ``tests/test_contracts.py``.
"""

from __future__ import annotations

import importlib
import shutil
import textwrap
from pathlib import Path

import pytest
from onex.cache import MemoryCache
from onex.catalog import PayloadCodec
from onex.clock import ManualClock
from onex.contracts import CachingSubcontract, EventSpec, load_contracts, template_fields, unresolved_refs
from onex.exceptions import ContractError, OnexError

PROJECT = Path(__file__).resolve().parent.parent

importlib.import_module("nodes")  # the real project owns the name `nodes`; copies are imported under an alias


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    for part in ("contracts", "subcontracts", "nodes"):
        shutil.copytree(PROJECT / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def edit(root: Path, relative: str, old: str, new: str) -> None:
    path = root / relative
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not in {relative} exactly once"
    path.write_text(text.replace(old, new))


def problems(root: Path) -> list[str]:
    """``path:line:column: code: message`` of every issue, or [] when the project loads."""
    try:
        load_contracts(root, env={})
    except ContractError as error:
        return [f"{i.path}:{i.line}:{i.column}: {i.code}: {i.message}" for i in error.issues]
    return []


def test_the_shipped_project_honours_every_class_declaration(shipped: Path) -> None:
    assert problems(shipped) == []


ORCHESTRATOR = "contracts/orchestrators/orchestrator.yaml"
STEPS = """    - {step_name: stamp, timeout_ms: "${ONEX_STAMP_TIMEOUT_MS:30000}", max_attempts: 2}
    - {step_name: intelligence, depends_on: [stamp], optional: true, timeout_ms: 5000}
"""


def test_a_step_the_orchestrator_cannot_run_is_refused_at_its_name(shipped: Path) -> None:
    edit(shipped, ORCHESTRATOR, STEPS, STEPS + "    - {step_name: virus_scan, depends_on: [stamp]}\n")

    assert problems(shipped) == [
        f"{ORCHESTRATOR}:15:19: steps: step 'virus_scan': nodes.orchestrator.v1_0_0.node:NodeOrchestrator runs no "
        "such step (it runs: intelligence, stamp)"
    ]


def test_steps_without_the_stamp_step_are_refused_with_a_suggestion_for_the_typo(shipped: Path) -> None:
    edit(shipped, ORCHESTRATOR, STEPS, "    - {step_name: stamps}\n")

    assert problems(shipped) == [
        f"{ORCHESTRATOR}:13:5: steps: config.steps: no step 'stamp'; nodes.orchestrator.v1_0_0.node:NodeOrchestrator "
        "finishes no workflow without it (add a step named 'stamp')",
        f"{ORCHESTRATOR}:13:19: steps: step 'stamps': nodes.orchestrator.v1_0_0.node:NodeOrchestrator runs no such "
        "step (it runs: intelligence, stamp); did you mean 'stamp'?",
    ]


def test_routing_on_a_class_that_routes_nothing_is_refused(shipped: Path) -> None:
    edit(
        shipped,
        "contracts/reducers/reducer.yaml",
        "subcontracts:\n",
        "subcontracts:\n  routing: {version: 1.0.0, targets: [{name: a, service: database_adapter_effect}]}\n",
    )

    assert problems(shipped) == [
        "contracts/reducers/reducer.yaml:17:3: field-unread: subcontracts.routing: nodes.reducer.v1_0_0.node:"
        "NodeReducer routes no event (a node class routes the events its `routes` declares)"
    ]


ROUTING = "subcontracts/routing/stamping.yaml"


def test_a_hash_key_the_routed_command_has_no_field_of_is_refused(shipped: Path) -> None:
    edit(shipped, ROUTING, "strategy: service", "strategy: hash\nhash_key: nmespace")

    found = problems(shipped)

    assert [line.split(": ")[0:2] for line in found] == [[f"{ROUTING}:9:11", "routing-strategy"]]
    assert "hash_key 'nmespace': STAMP_FILE has no such field" in found[0]
    assert found[0].endswith("did you mean 'namespace'?")


def test_a_condition_on_a_field_the_route_has_not_is_refused(shipped: Path) -> None:
    edit(shipped, ROUTING, "strategy: service", "strategy: conditional")
    edit(
        shipped,
        ROUTING,
        "  - {name: stamp, service: stamping_effect}",
        '  - {name: stamp, service: stamping_effect, condition: "file_typ equals python"}',
    )

    found = problems(shipped)

    assert [line.split(": ")[0:2] for line in found] == [[f"{ROUTING}:10:56", "routing-condition"]]
    assert "condition reads 'file_typ'" in found[0]
    assert found[0].endswith("did you mean 'file_type'?")


def test_a_strategy_with_no_targets_to_choose_between_is_refused(shipped: Path) -> None:
    edit(shipped, ROUTING, "strategy: service", "strategy: round_robin")
    edit(shipped, ROUTING, "targets:\n  - {name: stamp, service: stamping_effect}\nfallbacks: []", "targets: []")

    assert [line.split(": ")[0:2] for line in problems(shipped)] == [[f"{ROUTING}:8:11", "routing-strategy"]]


CACHING = "subcontracts/caching/registry_lookups.yaml"


def test_a_cached_lookup_the_class_never_makes_is_refused_with_a_suggestion(shipped: Path) -> None:
    edit(shipped, CACHING, "cached: [alive_nodes]", "cached: [alive_nodez]")

    assert problems(shipped) == [
        f"{CACHING}:5:10: field-unread: cached 'alive_nodez': nodes.registry.v1_0_0.node:NodeRegistry makes no such "
        "lookup (it looks up: alive_nodes); did you mean 'alive_nodes'?"
    ]


def test_a_key_template_field_the_lookup_does_not_pass_is_refused(shipped: Path) -> None:
    edit(shipped, CACHING, '"alive:{node_type}"', '"alive:{node_typo}"')

    assert problems(shipped) == [
        f"{CACHING}:6:15: cache-template: key_template 'alive:{{node_typo}}': lookup 'alive_nodes' passes no field "
        "'node_typo' (it passes: node_type); did you mean 'node_type'?"
    ]


@pytest.mark.parametrize(
    ("template", "column"),
    [('"alive:{node_type"', 15), ('"alive:{node_type!z}"', 15), ('"alive:{node_type:>8}"', 15)],
)
def test_a_key_template_onex_cannot_render_is_refused_before_anything_runs(
    shipped: Path, template: str, column: int
) -> None:
    edit(shipped, CACHING, '"alive:{node_type}"', template)

    assert [line.split(": ")[0:2] for line in problems(shipped)] == [[f"{CACHING}:6:{column}", "cache-template"]]


def test_caching_on_a_class_that_looks_nothing_up_is_refused(shipped: Path) -> None:
    edit(
        shipped,
        "contracts/effects/stamping_effect.yaml",
        "subcontracts:\n",
        "subcontracts:\n  caching: {version: 1.0.0, cached: [anything]}\n",
    )

    assert problems(shipped) == [
        "contracts/effects/stamping_effect.yaml:12:3: field-unread: subcontracts.caching: nodes.stamping_effect."
        "v1_0_0.node:NodeStampingEffect looks nothing up through self.cache, so nothing would be cached"
    ]


def test_aggregation_on_a_class_that_is_not_a_reducer_is_refused(shipped: Path) -> None:
    edit(
        shipped,
        "contracts/effects/stamping_effect.yaml",
        "subcontracts:\n",
        "subcontracts:\n  aggregation: {$ref: subcontracts/aggregation/namespace_stats.yaml}\n",
    )

    found = problems(shipped)

    assert [line.split(": ")[0:2] for line in found] == [
        ["contracts/effects/stamping_effect.yaml:12:3", "field-unread"]
    ]
    assert "reads no aggregation subcontract" in found[0]


def test_a_circuit_breaker_on_an_effect_that_never_calls_one_is_refused(shipped: Path) -> None:
    edit(
        shipped,
        "contracts/effects/database_adapter_effect.yaml",
        "  dead_letter: true\n",
        "  dead_letter: true\n  circuit_breaker: {failure_threshold: 1}\n",
    )

    found = problems(shipped)

    assert [line.split(": ")[0:2] for line in found] == [
        ["contracts/effects/database_adapter_effect.yaml:48:3", "field-unread"]
    ]
    assert "NodeDatabaseAdapterEffect never calls a circuit breaker" in found[0]


WIDGET = """\
    contract_version: 2.0.0
    name: widget
    version: 1.0.0
    node_type: EFFECT
    resilience:
      circuit_breaker: {failure_threshold: 2}
    subcontracts:
      event_type:
        version: 1.0.0
        consumes:
          - {event_name: WIDGET_IN, handler: handle, external: true}
"""


@pytest.mark.parametrize(
    ("body", "refused"),
    [
        ("        self.seen = event.payload\n", True),
        ("        await self.breaker_for(event.envelope.event_type).call(self.deliver)\n", False),
    ],
)
def test_a_user_effect_may_set_circuit_breaker_only_when_its_code_calls_a_breaker(
    tmp_path: Path, body: str, refused: bool
) -> None:
    # EffectNode builds a breaker but guards no handler with it: only a class's own calls make the field mean anything.
    root = tmp_path / "widgets"
    (root / "contracts").mkdir(parents=True)
    (root / "contracts/widget.yaml").write_text(textwrap.dedent(WIDGET))
    package = root / "nodes/widget/v1_0_0"
    package.mkdir(parents=True)
    for directory in (root / "nodes", root / "nodes/widget", package):
        (directory / "__init__.py").write_text("")
    (package / "node.py").write_text(
        "from onex.nodes import EffectNode, Event\n\n\n"
        "class NodeWidget(EffectNode):\n"
        "    async def deliver(self) -> None:\n        pass\n\n"
        "    async def handle(self, event: Event) -> None:\n" + body
    )

    found = problems(root)

    assert [line.split(": ")[0:2] for line in found] == (
        [["contracts/widget.yaml:6:3", "field-unread"]] if refused else []
    )


def test_template_fields_names_the_fields_and_says_why_a_template_cannot_be_rendered() -> None:
    assert template_fields("alive:{node_type}|{{x}}|{limit}") == ("node_type", "limit")
    for template, reason in [
        ("{a", "malformed"),
        ("{a!r}", "conversions are not supported"),
        ("{a:>3}", "format specs are not supported"),
        ("{a.b}", "is not a field name"),
        ("{0}", "is not a field name"),
    ]:
        with pytest.raises(ValueError, match=reason):
            template_fields(template)


def test_a_cache_built_by_hand_from_a_bad_template_raises_an_onex_error_not_a_traceback() -> None:
    spec = CachingSubcontract(version="1.0.0", cached=("x",), key_template="alive:{node_type")

    with pytest.raises(OnexError, match=r"cache key template 'alive:\{node_type': malformed"):
        MemoryCache(spec, name="test", clock=ManualClock())


def test_a_payload_schema_ref_that_points_nowhere_is_found_before_any_message() -> None:
    schema = {
        "type": "object",
        "$defs": {"key": {"type": "string"}},
        "properties": {"key": {"$ref": "#/$defs/key"}, "other": {"$ref": "#/$defs/Missing"}},
        "examples": [{"$ref": "not a schema"}],
    }

    assert list(unresolved_refs(schema)) == [
        (("properties", "other"), "$ref '#/$defs/Missing' resolves to nothing in the payload_schema")
    ]
    with pytest.raises(OnexError, match="event WIDGET_IN: payload_schema: \\$ref '#/\\$defs/Missing'"):
        PayloadCodec(EventSpec(event_name="WIDGET_IN", payload_schema=schema), root=Path("."))
