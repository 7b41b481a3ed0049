"""``onex new node`` (``onex.scaffold``): what it writes validates, runs, and is clean, for every kind.

The slow checks run once over one generated project (``fresh``): a node of every kind built from options and one of
every kind built from a requirements file, which between them render every template (FSM and caching subcontracts
included) for every kind. On that project, in subprocesses as a user runs them: ``onex validate``, ``onex graph`` of
each FSM, pytest on the generated tests, ruff (its defaults, and this repository's settings) and ``mypy --strict``.
A copy of this repository's layout gets two more nodes and the same checks.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from onex.contracts import load_contracts
from onex.scaffold import KINDS, TEMPLATES, node_spec, render, spec_from_requirements, write
from onex.testing import Harness, ManualClock

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ONEX = BIN / "onex"

# name -> (kind, extra options), one per kind in `fresh`. Options cover: defaults (nothing but --kind), repeatable
# and comma-list --consumes/--publishes, --fsm, and an orchestrator's default FSM. With the nodes from requirements
# (caching for all, an FSM from the state_machine feature for the effect) every template is rendered for every kind.
FROM_OPTIONS: dict[str, tuple[str, list[str]]] = {
    "mailbox": ("effect", []),
    "word_count": (
        "compute",
        ["--consumes", "TEXT_RECEIVED,TEXT_EDITED", "--publishes", "WORDS_COUNTED", "--fsm", "idle,counting,done"],
    ),
    "totals": (
        "reducer",
        ["--consumes", "WORDS_COUNTED", "--publishes", "TOTAL", "--publishes", "TOTAL_AUDITED", "--fsm", "open,closed"],
    ),
    "pipeline": ("orchestrator", ["--publishes", "PIPELINE_DONE"]),
}
FEATURES = ["retries", "Circuit Breaker", "timeout", "dlq", "caching", "metrics", "audit_log", "rate-limiting"]


def requirements(kind: str, *, state_machine: bool) -> str:
    features = [*FEATURES, "state_machine"] if state_machine else FEATURES
    return (
        f"node_type: {kind.upper()}\n"
        f"service_name: {kind}_service\n"
        "domain: testing\n"
        "business_description: Built from a requirements file.\n"
        f"operations:\n  - {kind}_start\n  - {{name: {kind}_stop, description: Stop it}}\n"
        f"features: [{', '.join(features)}]\n"
    )


def onex(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONEX_")}
    env["COLUMNS"] = "300"
    return subprocess.run(
        [str(ONEX), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def tool(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / name), *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def test_the_fresh_project_renders_every_template_for_every_kind(tmp_path: Path) -> None:
    """What ``fresh`` holds per kind, rendered into an empty project: every shipped template is used."""
    shipped = {path.name for path in (REPO / "runtime" / "onex" / "templates").iterdir()}
    assert set(TEMPLATES) == shipped
    for kind in KINDS:
        path = tmp_path / f"{kind}.yaml"
        path.write_text(requirements(kind, state_machine=kind == "effect"), encoding="utf-8")
        name, (_, options) = next((n, o) for n, o in FROM_OPTIONS.items() if o[0] == kind)
        fsm = options[options.index("--fsm") + 1] if "--fsm" in options else ""
        rendered = {f.template for f in render(node_spec(name, kind, fsm=[fsm] if fsm else []), tmp_path)}
        rendered |= {f.template for f in render(spec_from_requirements(path, f"{kind}_svc"), tmp_path)}
        assert rendered == shipped, kind


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new project (an empty directory) holding eight generated nodes: every kind from options and from a
    requirements file (whose node consumes an event another generated node publishes, besides its commands)."""
    root = tmp_path_factory.mktemp("fresh")
    for name, (kind, options) in FROM_OPTIONS.items():
        ok(onex("new", "node", name, "--kind", kind, *options, cwd=root))
    for kind in KINDS:
        path = root / f"{kind}_requirements.yaml"
        path.write_text(requirements(kind, state_machine=kind == "effect"), encoding="utf-8")
        out = ok(onex("new", "node", f"{kind}_svc", "--from", path.name, "--consumes", "WORDS_COUNTED", cwd=root))
        # Unknown features are named in the output, never dropped.
        assert "'audit_log'" in out
        assert "'rate-limiting'" in out
    return root


def test_the_generated_project_validates_and_every_fsm_is_drawn(fresh: Path) -> None:
    assert "ok: 8 contract(s) valid" in ok(onex("validate", cwd=fresh))
    assert ok(onex("graph", "word_count", cwd=fresh)).splitlines() == [
        "stateDiagram-v2",
        "    [*] --> idle",
        "    idle --> counting: counting",
        "    counting --> done: done",
        "    done --> [*]",
    ]
    assert "open --> closed: closed" in ok(onex("graph", "totals", cwd=fresh))
    for name in ("pipeline", "orchestrator_svc", "effect_svc"):  # default states: pending, processing, completed
        assert "processing --> completed: completed" in ok(onex("graph", name, cwd=fresh))


def test_the_generated_tests_pass(fresh: Path) -> None:
    out = ok(tool("pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=fresh))
    # One test per consumed event: 1 + 2 + 1 + 1 from options, 3 for each node from requirements.
    assert re.search(r"\b17 passed\b", out), out
    assert sorted(p.name for p in (fresh / "tests").glob("test_*.py")) == sorted(
        f"test_{name}.py" for name in [*FROM_OPTIONS, *(f"{kind}_svc" for kind in KINDS)]
    )


def test_ruff_and_mypy_strict_are_clean_on_the_generated_code(fresh: Path) -> None:
    # Ruff's defaults (a user's project) and this repository's settings (the stricter rule set, line length 120).
    for config in ([], ["--config", str(REPO / "pyproject.toml")]):
        ok(tool("ruff", "check", *config, ".", cwd=fresh))
        ok(tool("ruff", "format", "--check", *config, ".", cwd=fresh))
    assert "Success: no issues found in" in ok(
        tool("mypy", "--strict", "--explicit-package-bases", "--no-incremental", "nodes", "tests", cwd=fresh)
    )


def test_requirements_map_features_to_contract_fields_and_operations_to_commands(fresh: Path) -> None:
    contracts = load_contracts(fresh)
    contract = contracts.get("reducer_svc")
    assert contract.resilience.retry is not None
    assert contract.resilience.retry.max_attempts == 3
    # Only an effect calls out: a reducer gets a TODO, not a field that would do nothing (validation refuses it).
    reducer_yaml = (fresh / "contracts" / "reducers" / "reducer_svc.yaml").read_text(encoding="utf-8")
    assert "circuit_breaker:" not in reducer_yaml
    assert "only an effect node has a circuit breaker" in reducer_yaml
    effect_yaml = (fresh / "contracts" / "effects" / "effect_svc.yaml").read_text(encoding="utf-8")
    assert 'circuit_breaker: {"failure_threshold": 5, "reset_timeout_ms": 30000}' in effect_yaml
    assert contract.resilience.timeout_ms == 30000
    assert contract.resilience.dead_letter is True
    assert contract.subcontracts.caching is not None
    assert contract.subcontracts.caching.cached == ("value",)
    assert contract.performance_requirements is not None
    assert contract.performance_requirements.execution_time is not None
    assert contract.performance_requirements.execution_time.target_ms == 100
    assert contract.subcontracts.fsm is None  # no state_machine feature for this one
    events = contract.subcontracts.event_type
    assert events is not None
    consumed = {spec.event_name: spec for spec in events.consumes}
    assert list(consumed) == ["REDUCER_START", "REDUCER_STOP", "WORDS_COUNTED"]
    assert [consumed[n].topic_class for n in consumed] == ["cmd", "cmd", "evt"]
    assert [consumed[n].handler for n in consumed] == [
        "handle_reducer_start",
        "handle_reducer_stop",
        "handle_words_counted",
    ]
    # Published in the project (by word_count): not external; the commands are.
    assert [consumed[n].external for n in consumed] == [True, True, False]
    assert [spec.event_name for spec in events.publishes] == ["REDUCER_START_COMPLETED", "REDUCER_STOP_COMPLETED"]
    assert contracts.get("effect_svc").subcontracts.fsm is not None  # state_machine
    node = (fresh / "nodes" / "reducer_svc" / "v1_0_0" / "node.py").read_text(encoding="utf-8")
    contract_text = (fresh / "contracts" / "reducers" / "reducer_svc.yaml").read_text(encoding="utf-8")
    for unknown in ("audit_log", "rate-limiting"):
        assert f"- {unknown}\n" in node
        assert f'# TODO: feature "{unknown}"' in contract_text


def test_a_copy_of_this_repository_gets_nodes_that_validate_run_and_are_clean(tmp_path: Path) -> None:
    for folder in ("contracts", "subcontracts", "nodes"):
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    # WORKFLOW_COMPLETED is the shipped orchestrator's: consumed, not external.
    ok(
        onex(
            "new",
            "node",
            "audit",
            "--kind",
            "compute",
            "--consumes",
            "WORKFLOW_COMPLETED",
            "--fsm",
            "new,seen",
            cwd=tmp_path,
        )
    )
    ok(onex("new", "node", "batcher", "--kind", "orchestrator", cwd=tmp_path))
    assert not (tmp_path / "nodes" / "__init__.py").read_text(encoding="utf-8").startswith('"""This project')
    audit = (tmp_path / "contracts" / "computes" / "audit.yaml").read_text(encoding="utf-8")
    assert "external" not in audit
    assert (tmp_path / "contracts" / "orchestrators" / "batcher.yaml").is_file()
    assert "contract(s) valid" in ok(onex("validate", cwd=tmp_path))
    assert "new --> seen: seen" in ok(onex("graph", "audit", cwd=tmp_path))
    generated = ["nodes/audit", "nodes/batcher", "tests/test_audit.py", "tests/test_batcher.py"]
    out = ok(
        tool("pytest", "-q", "-p", "no:cacheprovider", "tests/test_audit.py", "tests/test_batcher.py", cwd=tmp_path)
    )
    assert re.search(r"\b2 passed\b", out), out
    ok(tool("ruff", "check", *generated, cwd=tmp_path))
    ok(tool("ruff", "format", "--check", *generated, cwd=tmp_path))
    ok(tool("mypy", "--no-incremental", *generated, cwd=tmp_path))  # the copy's config: strict


# --- the command's behaviour: refusal, --force, --dry-run, usage and requirements errors ---------------------------


def test_existing_files_are_not_overwritten_without_force(tmp_path: Path) -> None:
    ok(onex("new", "node", "ping", "--kind", "compute", cwd=tmp_path))
    node = tmp_path / "nodes" / "ping" / "v1_0_0" / "node.py"
    node.write_text("# mine\n", encoding="utf-8")
    refused = onex("new", "node", "ping", "--kind", "effect", cwd=tmp_path)
    assert refused.returncode == 1
    assert "nodes/ping/v1_0_0/node.py" in refused.stderr
    assert "tests/test_ping.py" in refused.stderr
    assert "--force" in refused.stderr
    assert node.read_text(encoding="utf-8") == "# mine\n"
    assert not (tmp_path / "contracts" / "effects").exists()  # nothing at all written
    ok(onex("new", "node", "ping", "--kind", "compute", "--force", cwd=tmp_path))
    assert "class NodePing(ComputeNode)" in node.read_text(encoding="utf-8")


def test_dry_run_lists_the_files_and_writes_nothing(tmp_path: Path) -> None:
    out = ok(onex("new", "node", "ping", "--kind", "reducer", "--fsm", "a,b", "--dry-run", cwd=tmp_path))
    assert out.splitlines() == [
        f"would write {path}"
        for path in (
            "contracts/reducers/ping.yaml",
            "nodes/ping/v1_0_0/__init__.py",
            "nodes/ping/v1_0_0/models.py",
            "nodes/ping/v1_0_0/node.py",
            "tests/test_ping.py",
            "nodes/__init__.py",
            "nodes/ping/__init__.py",
            "subcontracts/fsm/ping.yaml",
        )
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["WordCount", "--kind", "compute"], "node name 'WordCount' is not snake_case"),
        (["ping"], "--kind is required"),
        (["ping", "--kind", "compute", "--consumes", "text-in"], "event name 'text-in' is not UPPER_SNAKE_CASE"),
        (["ping", "--kind", "compute", "--fsm", "alone"], "--fsm needs at least two states"),
        (["ping", "--kind", "compute", "--consumes", "A", "--publishes", "A"], "A both consumed and published"),
        (["ping", "--kind", "effect", "--from", "nowhere.yaml"], "--from': File 'nowhere.yaml' does not exist"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = onex("new", "node", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_requirements_file_that_is_not_text_is_one_line_naming_it(tmp_path: Path) -> None:
    binary = tmp_path / "req.yaml"
    binary.write_bytes(b"\xff\xfe\x00node_type: EFFECT\n")
    result = onex("new", "node", "ping", "--from", str(binary), cwd=tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: cannot read the requirements file {binary}: not UTF-8 text (")
    assert list(tmp_path.iterdir()) == [binary]


def test_a_malformed_requirements_file_names_the_file_and_each_field(tmp_path: Path) -> None:
    bad = tmp_path / "req.yaml"
    bad.write_text("node_type: GADGET\noperations:\n  - start\n  - 42\nfeatures: fast\ncolour: red\n", encoding="utf-8")
    result = onex("new", "node", "ping", "--from", str(bad), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{bad}:1:12: node_type: must be one of EFFECT, COMPUTE, REDUCER, ORCHESTRATOR, got 'GADGET' "
        "[requirements-field]",
        f"{bad}:4:5: operations[1]: an operation is a snake_case name (or {{name: ...}}), got 42 [requirements-field]",
        f"{bad}:5:11: features: must be a list of feature names [requirements-field]",
        f"{bad}:6:9: colour: unknown field (known: business_description, domain, features, node_type, operations, "
        "service_name) [requirements-field]",
        f"error: 4 problem(s) in the requirements file {bad}",
    ]
    assert list(tmp_path.iterdir()) == [bad]


def test_kind_and_contracts_directory_follow_the_project(tmp_path: Path) -> None:
    (tmp_path / "contracts" / "compute").mkdir(parents=True)  # a project that spells the directory singular
    files = render(node_spec("ping", "compute"), tmp_path)
    assert "contracts/compute/ping.yaml" in {str(f.path) for f in files}
    requirements_file = tmp_path / "req.yaml"
    requirements_file.write_text(requirements("effect", state_machine=False), encoding="utf-8")
    with pytest.raises(ValueError, match="--kind compute contradicts node_type EFFECT"):
        spec_from_requirements(requirements_file, "ping", kind="compute")
    written = write(render(spec_from_requirements(requirements_file, "ping"), tmp_path), tmp_path)
    assert tmp_path / "contracts" / "effects" / "ping.yaml" in written


# --- a consumed event the project already declares: its payload is kept -----------------------------------------


@pytest.mark.anyio
async def test_a_node_consuming_an_event_the_project_publishes_reads_the_real_payloads(tmp_path: Path) -> None:
    """STAMP_CREATED is the stamping effect's, published as nodes.models:ModelStampCreated. The new node keeps that
    model: one of its own requiring a ``key`` would dead-letter every real stamp while its own test passed."""
    for folder in ("contracts", "subcontracts", "nodes"):
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    spec = node_spec("audit_log", "compute", consumes=["STAMP_CREATED"], publishes=["AUDITED"])
    write(render(spec, tmp_path), tmp_path)
    events = load_contracts(tmp_path).get("audit_log").subcontracts.event_type
    assert events is not None
    assert [e.payload_model for e in events.consumes] == ["nodes.models:ModelStampCreated"]
    generated_test = (tmp_path / "tests" / "test_audit_log.py").read_text(encoding="utf-8")
    assert '"stamp_type": "lightweight"' in generated_test  # a ModelStampCreated, not {"key": ...}
    assert "TODO" not in generated_test
    target = tmp_path / "in" / "a.py"
    target.parent.mkdir()
    target.write_text("print('a')\n", encoding="utf-8")

    async with Harness(["orchestrator", "stamping_effect", "audit_log"], root=tmp_path, clock=ManualClock()) as h:
        sent = await h.publish("STAMP_REQUESTED", {"file_path": str(target), "namespace": "audit"})
        await h.settle()
        assert h.dead_letters() == []
        [audited] = [e for e in h.of("AUDITED") if e.correlation_id == sent.correlation_id]
    assert audited.payload["source_event"] == "STAMP_CREATED"
    assert audited.payload["key"] == str(sent.correlation_id)  # STAMP_CREATED is keyed by workflow


def test_a_reused_payload_schema_is_copied_and_a_payload_it_cannot_build_is_a_todo_in_the_test(tmp_path: Path) -> None:
    (tmp_path / "contracts" / "effects").mkdir(parents=True)
    schema = {
        "type": "object",
        "required": ["code", "n"],
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}$"}, "n": {"type": "integer", "minimum": 2}},
    }
    publisher = {
        "name": "pub",
        "subcontracts": {"event_type": {"publishes": [{"event_name": "THING", "payload_schema": schema}]}},
    }
    (tmp_path / "contracts" / "effects" / "pub.yaml").write_text(yaml.safe_dump(publisher), encoding="utf-8")
    files = {str(f.path): f.text for f in render(node_spec("ping", "compute", consumes=["THING"]), tmp_path)}

    [consumed] = yaml.safe_load(files["contracts/computes/ping.yaml"])["subcontracts"]["event_type"]["consumes"]
    assert consumed["payload_schema"] == schema
    assert "payload_model" not in consumed
    assert "class ModelThing" not in files["nodes/ping/v1_0_0/models.py"]
    test = files["tests/test_ping.py"]
    assert "# TODO: make this a valid THING payload (its payload_schema)" in test  # the pattern is not followed
    assert '"n": 2,' in test


@pytest.mark.parametrize("existing", ["nodes/models.py", "nodes/models/__init__.py"])
def test_a_name_whose_package_would_shadow_a_module_of_the_project_is_refused(tmp_path: Path, existing: str) -> None:
    """``nodes/models/`` would take ``nodes.models`` from the module the shipped contracts import payloads from."""
    (tmp_path / existing).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / existing).write_text("class ModelX: ...\n", encoding="utf-8")
    before = sorted(tmp_path.rglob("*"))
    result = onex("new", "node", "models", "--kind", "compute", cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert f"node name 'models' would shadow {existing.removesuffix('__init__.py')}, which is not a node" in line
    assert sorted(tmp_path.rglob("*")) == before
    ok(onex("new", "node", "ping", "--kind", "compute", cwd=tmp_path))
    ok(onex("new", "node", "ping", "--kind", "compute", "--force", cwd=tmp_path))  # a node's own package: no refusal
