"""Every ``ONEX_*`` variable is declared once (a field of ``onex.settings.Settings``): whatever reads or documents one
(the runtime, the nodes, the contracts' ``${ONEX_...}``, deployment files, ``onex config``, the README) names only
declared ones, and the README's table is the declarations."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from onex.settings import DECLARED, Settings, declarations, resolve_variable, spelled, variable

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"\bONEX_[A-Z][A-Z0-9_]*")
PLACEHOLDER = re.compile(r"\$\{(ONEX_[A-Za-z0-9_]*)(?::([^}]*))?\}")
# Knobs of the test suite and the benchmarks (a PostgreSQL DSN, a Kafka address), never read by onex itself.
HARNESS_PREFIXES = ("ONEX_TEST_", "ONEX_BENCH_")
# Names of that form that are no variables: the markers of the bridge's rich stamps (onex.stamps strips them).
NOT_VARIABLES = frozenset({"ONEX_METADATA_START", "ONEX_METADATA_END"})


def files(*folders: str, suffixes: tuple[str, ...] = ()) -> list[Path]:
    found = [
        path
        for folder in folders
        for path in sorted((ROOT / folder).rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and (not suffixes or path.suffix in suffixes)
    ]
    assert found, f"nothing found under {folders}: a scan of nothing would pass whatever it checks"
    return found


def names_in(paths: list[Path]) -> dict[str, list[str]]:
    """Each ``ONEX_*`` name in ``paths``, with where it occurs (``file:line``)."""
    where: dict[str, list[str]] = {}
    for path in paths:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for name in NAME.findall(line):
                where.setdefault(name, []).append(f"{path.relative_to(ROOT)}:{number}")
    return where


def placeholders() -> list[tuple[str, str | None, str]]:
    """Every ``${ONEX_...}`` in the shipped contracts and subcontracts: (name, default or None, file:line)."""
    found = []
    for path in files("contracts", "subcontracts", "nodes", suffixes=(".yaml", ".yml")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in PLACEHOLDER.finditer(line):
                found.append((match.group(1), match.group(2), f"{path.relative_to(ROOT)}:{number}"))
    assert found, "the shipped contracts interpolate no ONEX_ variable: the checks below would be vacuous"
    return found


# --- the declarations ----------------------------------------------------------------------------------------------


def test_every_field_is_one_declared_variable_with_a_type_and_a_description() -> None:
    assert {variable(name) for name in Settings.model_fields} == DECLARED
    for setting in declarations():
        assert setting.variable == f"ONEX_{setting.name.upper()}"
        assert setting.type, setting.name
        assert len(setting.description) > 20, setting.name
        assert setting.description.endswith("."), setting.name


def test_every_onex_variable_the_runtime_nodes_contracts_or_deployment_name_is_declared() -> None:
    scanned = [
        *files("runtime/onex", suffixes=(".py", ".json", ".yaml")),
        *files("nodes", suffixes=(".py", ".yaml")),
        *files("contracts", "subcontracts"),
        *files("deployment"),
    ]
    found = names_in(scanned)
    assert {"ONEX_STORE", "ONEX_STAMP_ROOTS", "ONEX_REDUCER_FLUSH_MS"} <= set(found)  # the scan sees them

    assert {name: where for name, where in found.items() if name not in DECLARED | NOT_VARIABLES} == {}


def test_every_onex_variable_the_readme_names_is_declared_or_the_test_suites() -> None:
    found = names_in([ROOT / "README.md"])
    undeclared = {n: w for n, w in found.items() if n not in DECLARED and not n.startswith(HARNESS_PREFIXES)}
    assert undeclared == {}


def test_every_variable_a_contract_interpolates_is_declared_with_the_default_the_contract_gives() -> None:
    for name, default, where in placeholders():
        assert name in DECLARED, f"{where}: {name} is not declared in onex.settings"
        declared = next(s for s in declarations() if s.variable == name)
        # Unset, a declared variable is its declared default; the placeholder's own says the same, so reading the
        # contract is not misleading and the shipped nodes get what they got before declarations existed.
        assert default is not None, f"{where}: ${{{name}}} should spell its default, {spelled(declared.default)!r}"
        assert resolve_variable(name, {}) == default == spelled(declared.default), where


# --- the README's table ----------------------------------------------------------------------------------------------


def expected_table() -> list[str]:
    rows = [f"| `{s.variable}` | {s.type} | {spelled(s.default)} | {s.description} |" for s in declarations()]
    return ["| variable | type | default | description |", "| --- | --- | --- | --- |", *rows]


def readme_table() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("|")]


def test_the_readme_configuration_table_is_the_declarations() -> None:
    table = readme_table()
    names = [re.sub(r"[`\s]", "", line.split("|")[1]) for line in table[2:]]
    assert names == [s.variable for s in declarations()], "the README's table and onex.settings name other variables"
    assert table == expected_table(), "README.md's configuration table should read:\n" + "\n".join(expected_table())


# --- contract interpolation reads declared variables only ----------------------------------------------------------


def test_a_declared_variable_is_checked_and_spelled_one_way() -> None:
    assert resolve_variable("ONEX_LOG_EVENTS", {"ONEX_LOG_EVENTS": "ON"}) == "true"
    assert resolve_variable("ONEX_STAMP_TIMEOUT_MS", {"ONEX_STAMP_TIMEOUT_MS": "45000"}) == "45000"
    assert resolve_variable("ONEX_INTELLIGENCE_URL", {"ONEX_INTELLIGENCE_URL": ""}) == ""  # empty: the default
    assert resolve_variable("ONEX_STAMP_AUTHOR", {}) == "onex"
    with pytest.raises(ValueError, match=r"^stamp_timeout_ms \(ONEX_STAMP_TIMEOUT_MS\) must be .*, not 'soon'$"):
        resolve_variable("ONEX_STAMP_TIMEOUT_MS", {"ONEX_STAMP_TIMEOUT_MS": "soon"})


def test_an_undeclared_onex_variable_is_an_error_naming_it_and_the_closest_declared_one() -> None:
    with pytest.raises(
        ValueError, match=r"^ONEX_STAMP_TIMEOUT is not an onex setting .*did you mean ONEX_STAMP_TIMEOUT_MS"
    ):
        resolve_variable("ONEX_STAMP_TIMEOUT", {"ONEX_STAMP_TIMEOUT": "5"})
    with pytest.raises(ValueError, match=r"^ONEX_TEST_POSTGRES is not an onex setting"):
        resolve_variable("ONEX_TEST_POSTGRES", {})


def test_a_projects_own_variables_are_read_as_they_are() -> None:
    assert resolve_variable("GREETING", {"GREETING": "hi"}) == "hi"
    assert resolve_variable("GREETING", {"GREETING": ""}) == ""
    assert resolve_variable("GREETING", {}) is None  # unset: the placeholder's default applies


# --- onex config: generated from the declarations ------------------------------------------------------------------


def onex(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("onex")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "onex.cli"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ONEX_")}
    return subprocess.run(
        [*command, "--root", str(ROOT), *args],
        env={**clean, "COLUMNS": "300", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_onex_config_shows_every_declared_variable_with_its_type_default_value_and_description() -> None:
    env = {"ONEX_BUS": "kafka://u:s3cret@k1:9092", "ONEX_CHECKPOINTS": "off", "ONEX_API_KEY": "k3y"}
    result = onex("config", "-o", "json", env=env)

    assert result.returncode == 0, result.stderr
    rows = {row["variable"]: row for row in json.loads(result.stdout)}
    assert list(rows) == [s.variable for s in declarations()]
    for setting in declarations():
        row = rows[setting.variable]
        assert (row["setting"], row["type"], row["description"]) == (setting.name, setting.type, setting.description)
    assert (rows["ONEX_PARTITIONS"]["default"], rows["ONEX_PARTITIONS"]["value"]) == (4, 4)
    assert (rows["ONEX_CHECKPOINTS"]["value"], rows["ONEX_CHECKPOINTS"]["source"]) == (False, "environment")
    assert rows["ONEX_BUS"]["value"] == "kafka://u:***@k1:9092"
    assert rows["ONEX_API_KEY"]["value"] == "(set)"
    assert "s3cret" not in result.stdout
    assert "k3y" not in result.stdout

    table = onex("config", env=env).stdout
    for setting in declarations():
        assert setting.variable in table
        assert setting.description in table


def test_onex_config_with_a_bad_value_is_a_usage_error_of_one_line_naming_the_variable_and_value() -> None:
    result = onex("config", env={"ONEX_STAMP_TIMEOUT_MS": "soon"})

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: stamp_timeout_ms (ONEX_STAMP_TIMEOUT_MS) must be a positive whole number, not 'soon'"
    ]


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"ONEX_PARTITIONS": "99999999999999999999"},
            "error: partitions (ONEX_PARTITIONS) must be a whole number from 1 to 10000, not '99999999999999999999'",
        ),
        (
            {"ONEX_BUFFER_SIZE": "99999999999"},
            "error: buffer_size (ONEX_BUFFER_SIZE) must be a whole number from 1 to 1000000, not '99999999999'",
        ),
        (
            {"ONEX_CACHE_URL": "bogus://"},
            "error: cache_url (ONEX_CACHE_URL) must be memory or redis://HOST:PORT/DB, not 'bogus://'",
        ),
        (
            {"ONEX_ENV": "a b"},
            "error: env (ONEX_ENV) must be 1-64 characters of [A-Za-z0-9_.-], a letter or digit first (it is part of "
            "every topic name), not 'a b'",
        ),
        (
            {"ONEX_TENANT": "a/b"},
            "error: tenant (ONEX_TENANT) must be 1-64 characters of [A-Za-z0-9_.-], a letter or digit first (it is "
            "part of every topic name), not 'a/b'",
        ),
    ],
    ids=["partitions", "buffer-size", "cache-url", "env", "tenant"],
)
@pytest.mark.parametrize(
    "command", [["config"], ["stamp", "--dry-run", str(ROOT / "README.md")], ["run"]], ids=lambda c: c[0]
)
def test_a_setting_out_of_bounds_is_a_usage_error_of_one_line_before_anything_runs(
    env: dict[str, str], line: str, command: list[str]
) -> None:
    # ONEX_PARTITIONS=99999999999999999999 had `onex stamp` grow without bound, deaf to SIGTERM; a bad ONEX_CACHE_URL
    # had `onex run` log its start and exit 1 when the first cache opened.
    result = onex(*command, env=env)

    assert (result.returncode, result.stderr.strip().splitlines()) == (2, [line])
    assert result.stdout == ""
