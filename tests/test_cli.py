"""The ``onex`` command line, run as a user runs it: the installed console script in a subprocess, against the
shipped contracts, real files and a SQLite file store.

Exit codes: 0 ok, 1 a failure was found, 2 usage error.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pty
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import cast

import pytest
from onex.stamps import verify_file

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "contracts_corpus"
ONEX = Path(sys.executable).with_name("onex")
NODES = {
    "database_adapter_effect": "EFFECT",
    "metastore_effect": "EFFECT",
    "orchestrator": "ORCHESTRATOR",
    "reducer": "REDUCER",
    "registry": "REGISTRY",
    "stamping_effect": "EFFECT",
}


def command() -> list[str]:
    return [str(ONEX)] if ONEX.exists() else [sys.executable, "-m", "onex.cli"]


def environment() -> dict[str, str]:
    """The caller's environment without ONEX_* settings, and a terminal wide enough that rich folds nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONEX_")}
    env["COLUMNS"] = "300"
    return env


def onex(*args: str, cwd: Path, root: Path | None = ROOT) -> subprocess.CompletedProcess[str]:
    prefix = ["--root", str(root)] if root is not None else []
    return subprocess.run(
        [*command(), *prefix, *args],
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def table_rows(output: str) -> list[list[str]]:
    """The body rows of every rich table in ``output``, as lists of stripped cells."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in output.splitlines()
        if line.lstrip().startswith("│")
    ]


def summary(output: str) -> dict[str, int]:
    """The counts row of ``onex stamp``'s summary table, by column."""
    match = re.search(r"┃ (stamped ┃[a-z ┃]+)┃\n.*\n│([\d│ ]+)│", output)
    assert match is not None, output
    columns = [c.strip() for c in match.group(1).split("┃")]
    counts = [int(c) for c in match.group(2).split("│")]
    return dict(zip(columns, counts, strict=True))


def make_tree(directory: Path) -> dict[str, bytes]:
    """A small project to stamp: in-place stamps, a sidecar, a nested directory."""
    files = {
        "app.py": b"#!/usr/bin/env python3\nprint('app')\n",
        "data.json": b'{"k": [1, 2, 3]}\n',
        "docs/readme.md": b"# Readme\n\nHello.\n",
        "scripts/build.sh": b"#!/bin/sh\nmake all\n",
    }
    for rel, data in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` and its bytes: a change, an addition or a removal shows."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def query(db: Path, sql: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql).fetchall()


# --- validate --------------------------------------------------------------------------------------------------------


def test_validate_accepts_the_shipped_contracts(tmp_path: Path) -> None:
    result = onex("validate", cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(NODES)} contract(s) valid" in result.stdout


def test_validate_reports_every_problem_at_once_with_its_file_line_and_column(tmp_path: Path) -> None:
    case = shutil.copytree(CORPUS / "multiple_errors_one_file", tmp_path / "project")
    expected = [line for line in (case / "expected.txt").read_text().splitlines() if line]
    assert len(expected) == 6

    result = onex("validate", cwd=case, root=case)

    assert result.returncode == 1
    # Each problem is one line, "path:line:column: message [code]", the path relative to the project root.
    reported = [line for line in result.stdout.splitlines() if line]
    assert [re.sub(r" .*\[(.+)\]$", r" \1", line) for line in reported] == expected
    assert "6 problem(s) in 1 file(s)" in result.stderr


@pytest.mark.parametrize(
    ("path", "count"),
    [
        pytest.param("contracts/reducers/reducer.yaml", 1, id="file"),
        pytest.param("contracts/effects", 3, id="directory-of-contracts"),
        pytest.param(str(ROOT), len(NODES), id="project-directory"),
        # A subcontract file is checked as the subcontract it is, not refused as a contract.
        pytest.param("subcontracts/fsm/stamp_workflow.yaml", 0, id="subcontract-file"),
    ],
)
def test_validate_checks_only_the_paths_given(tmp_path: Path, path: str, count: int) -> None:
    result = onex("validate", path, cwd=ROOT if not Path(path).is_absolute() else tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ok: {count} contract(s) valid" in result.stdout


@pytest.mark.parametrize(
    ("outside", "path", "expected"),
    [
        pytest.param(False, "contracts/effects/widget.yaml", ["contracts/effects/widget.yaml:6:1 yaml"], id="file"),
        pytest.param(
            False,
            "contracts/effects",
            ["contracts/effects/other.yaml:5:1 schema", "contracts/effects/widget.yaml:6:1 yaml"],
            id="directory",
        ),
        pytest.param(
            True,
            "project/contracts/effects/widget.yaml",
            ["project/contracts/effects/widget.yaml:6:1 yaml"],
            id="file-outside-the-root",
        ),
    ],
)
def test_validate_reports_each_problem_under_the_given_path_where_it_is(
    tmp_path: Path, outside: bool, path: str, expected: list[str]
) -> None:
    # Two broken contracts side by side (the one given alone is checked alone), the project a fresh copy.
    case = shutil.copytree(CORPUS / "yaml_syntax_error", tmp_path / "project")
    cwd, root = (tmp_path, ROOT) if outside else (case, case)

    result = onex("validate", path, cwd=cwd, root=root)

    assert result.returncode == 1, result.stdout + result.stderr
    reported = result.stdout.splitlines()
    assert [re.sub(r": .*\[(.+)\]$", r" \1", line) for line in reported] == expected
    # Root-relative, or as given for a file outside the root: either way it opens from where the command ran.
    assert all((cwd / line.split(":")[0]).is_file() for line in reported)
    assert f"{len(expected)} problem(s) in {len(expected)} file(s)" in result.stderr


def test_validate_of_a_path_that_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    result = onex("validate", "contracts/reducers/reducer.yaml", "no-such-contract.yaml", cwd=ROOT)

    assert result.returncode == 2
    assert "Path 'no-such-contract.yaml' does not exist" in result.stderr
    assert "valid" not in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--no-such-option"], id="global"),
        pytest.param(["validate", "--no-such-option"], id="validate"),
        pytest.param(["stamp", "--no-such-option", "x.py"], id="stamp"),
    ],
)
def test_an_unknown_option_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    result = onex(*args, cwd=tmp_path)

    assert result.returncode == 2
    assert "No such option '--no-such-option'" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_command_without_its_required_argument_is_a_usage_error(tmp_path: Path) -> None:
    result = onex("stamp", cwd=tmp_path)

    assert result.returncode == 2
    assert "Missing argument" in result.stderr


@pytest.mark.parametrize("timeout", ["0", "-5", "soon"])
def test_a_stamp_timeout_that_is_not_a_positive_number_is_a_usage_error(tmp_path: Path, timeout: str) -> None:
    (tmp_path / "a.py").write_text("A = 1\n")

    result = onex("stamp", str(tmp_path / "a.py"), "--timeout", timeout, cwd=tmp_path)

    assert result.returncode == 2
    assert "--timeout" in result.stderr
    assert (tmp_path / "a.py").read_text() == "A = 1\n"


def test_stamp_help_documents_every_exit_code(tmp_path: Path) -> None:
    result = onex("stamp", "--help", cwd=tmp_path)

    assert result.returncode == 0
    codes = dict(re.findall(r"^\s+([0-3])  (\S.*)$", result.stdout, flags=re.MULTILINE))
    assert sorted(codes) == ["0", "1", "2", "3"], result.stdout
    assert codes["3"].startswith("a file is pending")


# --- nodes, graph, schema --------------------------------------------------------------------------------------------


def test_nodes_lists_the_shipped_nodes_with_their_kind(tmp_path: Path) -> None:
    result = onex("nodes", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    rows = {row[0]: row for row in table_rows(result.stdout)}
    assert rows.keys() == NODES.keys()
    for name, kind in NODES.items():
        _, version, listed_kind, contract, implementation = rows[name]
        assert (version, listed_kind, implementation) == ("1.0.0", kind, "ok")
        assert contract.endswith(f"/{name}.yaml")
        assert (ROOT / contract).is_file()


def test_graph_draws_the_orchestrator_state_machine(tmp_path: Path) -> None:
    result = onex("graph", "orchestrator", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert lines[0] == "stateDiagram-v2"
    assert "[*] --> pending" in lines
    assert any(line.startswith("pending --> processing: start") for line in lines)
    assert any(line.startswith("processing --> completed: complete") for line in lines)
    assert "processing --> failed: fail" in lines
    assert {"completed --> [*]", "failed --> [*]"} <= set(lines)


def test_graph_of_an_unknown_node_fails_and_names_it(tmp_path: Path) -> None:
    result = onex("graph", "nosuchnode", cwd=tmp_path)

    assert result.returncode == 2  # a usage error: one line, no traceback
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""
    assert "error:" in result.stderr
    assert "nosuchnode" in result.stderr
    assert "orchestrator" in result.stderr  # the message says which nodes exist


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--node", "nosuchnode"], "nosuchnode"),
        (["--node", ""], "''"),
        (["--node", "reducer", "--version", "9.9.9"], "9.9.9"),
    ],
    ids=["unknown", "empty", "unknown-version"],
)
def test_run_of_an_unknown_node_is_a_usage_error_naming_what_exists(
    tmp_path: Path, args: list[str], named: str
) -> None:
    result = onex("run", *args, cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert named in result.stderr
    assert "orchestrator" in result.stderr or "1.0.0" in result.stderr  # what exists


def test_run_of_a_node_named_twice_is_a_usage_error(tmp_path: Path) -> None:
    result = onex("run", "--node", "registry", "--node", "reducer", "--node", "registry", cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: --node: node 'registry' named more than once: a process hosts one of each"
    ]


def test_schema_prints_the_contract_json_schema(tmp_path: Path) -> None:
    result = onex("schema", cwd=tmp_path, root=None)

    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {"contract_version", "name", "version", "node_type"} <= set(schema["properties"])


def test_schema_list_names_the_contract_and_every_subcontract_type(tmp_path: Path) -> None:
    result = onex("schema", "--list", cwd=tmp_path, root=None)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == sorted(
        ["contract", "fsm", "event_type", "aggregation", "routing", "state_management", "caching"]
    )
    fsm = onex("schema", "fsm", cwd=tmp_path, root=None)
    assert "initial_state" in json.loads(fsm.stdout)["properties"]


def test_schema_of_an_unknown_name_is_a_usage_error(tmp_path: Path) -> None:
    result = onex("schema", "nosuchschema", cwd=tmp_path, root=None)

    assert result.returncode == 2
    assert "nosuchschema" in result.stderr


# --- db upgrade ------------------------------------------------------------------------------------------------------


def test_db_upgrade_applies_the_migrations_once(tmp_path: Path) -> None:
    db = tmp_path / "state" / "onex.db"
    url = f"sqlite:///{db}"

    first = onex("db", "upgrade", "--store", url, cwd=tmp_path)
    second = onex("db", "upgrade", "--store", url, cwd=tmp_path)

    assert first.returncode == 0, first.stderr
    assert "applied 0001_initial" in first.stdout
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "up to date"
    shipped = sorted(p.stem for p in (ROOT / "runtime" / "onex" / "migrations" / "sqlite").glob("*.sql"))
    assert [row[0] for row in query(db, "SELECT name FROM schema_migrations ORDER BY version")] == shipped
    tables = {row[0] for row in query(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"metadata_stamps", "workflow_executions", "node_registrations", "bridge_states"} <= tables


# --- stamp, verify, trace --------------------------------------------------------------------------------------------


def test_stamp_stamps_every_file_then_restamping_changes_nothing(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    files = make_tree(tree)
    db = tmp_path / "onex.db"

    first = onex("stamp", str(tree), "--namespace", "cli.ns", "--store", f"sqlite:///{db}", cwd=tmp_path)

    assert first.returncode == 0, first.stdout + first.stderr
    assert summary(first.stdout) == {"stamped": len(files), "unchanged": 0, "skipped": 0, "failed": 0, "pending": 0}
    aggregate = next(row for row in table_rows(first.stdout) if row[0] == "cli.ns")
    assert aggregate[1:5] == [str(len(files)), str(len(files)), str(sum(map(len, files.values()))), str(len(files))]
    assert all(verify_file(tree / rel).status == "valid" for rel in files)
    assert (tree / "data.json.onex.yaml").is_file()
    assert query(db, "SELECT count(*) FROM metadata_stamps WHERE namespace = 'cli.ns'") == [(len(files),)]
    assert query(db, "SELECT current_state, count(*) FROM workflow_executions GROUP BY 1") == [
        ("completed", len(files))
    ]
    stamped = snapshot(tree)

    second = onex("stamp", str(tree), "--namespace", "cli.ns", "--store", f"sqlite:///{db}", cwd=tmp_path)

    assert second.returncode == 0, second.stdout + second.stderr
    assert summary(second.stdout) == {"stamped": 0, "unchanged": len(files), "skipped": 0, "failed": 0, "pending": 0}
    assert second.stderr == ""  # no progress bar off a terminal, not even the line break a transient one left
    assert snapshot(tree) == stamped
    assert query(db, "SELECT count(*) FROM metadata_stamps WHERE namespace = 'cli.ns'") == [(len(files),)]


def test_stamp_with_event_logging_records_every_event_and_every_row(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    files = make_tree(tree)
    db = tmp_path / "onex.db"
    result = subprocess.run(
        [*command(), "--root", str(ROOT), "stamp", str(tree), "--namespace", "logged", "--store", f"sqlite:///{db}"],
        cwd=tmp_path,
        env={**environment(), "ONEX_LOG_EVENTS": "true"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert summary(result.stdout)["stamped"] == len(files)
    assert query(db, "SELECT current_state, count(*) FROM workflow_executions GROUP BY 1") == [
        ("completed", len(files))
    ]
    # Every event the database adapter consumed (outcomes, transitions, the reducer's intents) is logged; it does not
    # consume STAMP_CREATED, whose rows come with the outcomes.
    logged = dict(cast("list[tuple[str, int]]", query(db, "SELECT event_type, count(*) FROM event_logs GROUP BY 1")))
    assert logged["WORKFLOW_COMPLETED"] == len(files)
    assert "STAMP_CREATED" not in logged
    assert query(db, "SELECT count(*) FROM metadata_stamps") == [(len(files),)]
    assert logged["STATE_TRANSITION"] >= 1  # one event per orchestrator batch, carrying its transitions
    workflow_transitions = (
        "SELECT count(*) FROM fsm_transitions t JOIN workflow_executions w ON t.entity_id = w.correlation_id"
    )
    assert query(db, workflow_transitions) == [(2 * len(files),)]


def test_stamp_reports_a_file_whose_workflow_the_store_refused_to_record_as_failed(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    files = make_tree(tree)
    db = tmp_path / "onex.db"
    assert onex("db", "upgrade", "--store", f"sqlite:///{db}", cwd=tmp_path).returncode == 0
    # The store refuses to record one workflow as completed: the outcome reached the client before the write failed.
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE OF current_state ON workflow_executions "
            "WHEN NEW.current_state = 'completed' AND NEW.file_path LIKE '%build.sh' "
            "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
        )
        conn.commit()

    result = onex("stamp", str(tree), "--namespace", "refused", "--store", f"sqlite:///{db}", cwd=tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    assert summary(result.stdout) == {
        "stamped": len(files) - 1,
        "unchanged": 0,
        "skipped": 0,
        "failed": 1,
        "pending": 0,
    }
    [problem] = [row for row in table_rows(result.stdout) if row[0] == "failed"]
    assert problem[1] == str(tree / "scripts" / "build.sh")
    assert "not recorded in the store" in problem[-1]


def test_stamp_dry_run_changes_no_byte(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    files = make_tree(tree)
    before = snapshot(tree)
    db = tmp_path / "onex.db"

    result = onex("stamp", str(tree), "--dry-run", "--store", f"sqlite:///{db}", cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert summary(result.stdout) == {"stamped": len(files), "unchanged": 0, "skipped": 0, "failed": 0, "pending": 0}
    assert f"would stamp {len(files)} file(s), 0 unchanged in " in result.stdout
    assert snapshot(tree) == before
    assert all(verify_file(tree / rel).status == "unstamped" for rel in files)
    # Nothing of the run's workflows is stored: no workflow, step, stamp, transition or aggregate.
    for table in ("workflow_executions", "workflow_steps", "metadata_stamps", "bridge_states"):
        assert query(db, f"SELECT count(*) FROM {table}") == [(0,)], table
    assert query(db, "SELECT count(*) FROM fsm_transitions WHERE entity_type <> 'registry'") == [(0,)]


ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def on_a_terminal(*args: str, cwd: Path) -> tuple[int, str, bytes]:
    """Run ``onex`` with its stderr on a pseudo-terminal (where the progress bar goes), stdout on a pipe: the exit
    code, stdout, and every byte written to the terminal."""
    master, slave = pty.openpty()
    env = environment() | {"TERM": "xterm-256color"}
    with subprocess.Popen(
        [*command(), "--root", str(ROOT), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=slave
    ) as process:
        os.close(slave)
        written: list[bytes] = []

        def read_all() -> None:  # drained as it comes, so a full terminal buffer never blocks the writer
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the last writer closed the terminal
                    return
                if not chunk:
                    return
                written.append(chunk)

        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
        stdout, _ = process.communicate(timeout=60)
        reader.join(timeout=10)
    os.close(master)
    return process.returncode, stdout.decode(), b"".join(written)


def test_stamp_draws_a_progress_bar_on_a_terminal_and_clears_it(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    files = make_tree(tree)
    n = len(files)

    code, stdout, terminal = on_a_terminal(
        "stamp", str(tree), "--store", f"sqlite:///{tmp_path / 'onex.db'}", cwd=tmp_path
    )

    assert code == 0, stdout + terminal.decode(errors="replace")
    assert summary(stdout) == {"stamped": n, "unchanged": 0, "skipped": 0, "failed": 0, "pending": 0}
    text = ANSI.sub(b"", terminal).decode()
    assert "stamping" in text
    assert "0/?" in text  # drawn before the walk knew how many files there are
    last_frame = terminal.rindex(f"{n}/{n}".encode())  # ...and finally with every file done, and a rate
    assert re.search(rf"stamping [━ ]+ {n}/{n} [\d,]+ files/s \d+:\d\d:\d\d", text), text
    assert b"\x1b[?25l" in terminal[: terminal.index(b"stamping")]  # the cursor is hidden while the bar is drawn...
    tail = terminal[last_frame:]
    assert b"\x1b[?25h" in tail  # ...shown again after it...
    assert tail.endswith(b"\x1b[2K")  # ...and the bar's line erased: the terminal is left as it was

    # Not a terminal (stderr on a pipe): no bar, no escape codes, only the summary on stdout.
    again = onex("stamp", str(tree), "--store", f"sqlite:///{tmp_path / 'onex.db'}", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert summary(again.stdout) == {"stamped": 0, "unchanged": n, "skipped": 0, "failed": 0, "pending": 0}
    assert "stamping" not in again.stderr
    assert "\x1b" not in again.stderr + again.stdout


def test_verify_passes_on_stamped_files_and_names_the_one_modified_later(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    files = make_tree(tree)
    stamp = onex("stamp", str(tree), "--store", f"sqlite:///{tmp_path / 'onex.db'}", cwd=tmp_path)
    assert stamp.returncode == 0, stamp.stdout + stamp.stderr

    clean = onex("verify", str(tree), cwd=tmp_path, root=None)

    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert table_rows(clean.stdout) == [[str(len(files)), "0", "0", "0", "0"]]  # only the summary: no problem rows

    changed = tree / "docs" / "readme.md"
    changed.write_bytes(changed.read_bytes() + b"One more line.\n")
    dirty = onex("verify", str(tree), cwd=tmp_path, root=None)

    assert dirty.returncode == 1
    problems = [row for row in table_rows(dirty.stdout) if len(row) == 3]
    assert [row[:2] for row in problems] == [["modified", str(changed)]]
    assert table_rows(dirty.stdout)[-1] == [str(len(files) - 1), "1", "0", "0", "0"]


def test_trace_prints_a_workflows_steps_and_transitions(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    make_tree(tree)
    db = tmp_path / "onex.db"
    url = f"sqlite:///{db}"
    assert onex("stamp", str(tree), "--store", url, cwd=tmp_path).returncode == 0
    target = tree / "app.py"
    [(cid,)] = query(db, f"SELECT correlation_id FROM workflow_executions WHERE file_path = '{target}'")

    result = onex("trace", str(cid), "--store", url, cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    rows = table_rows(result.stdout)
    fields = {row[0]: row[1] for row in rows if len(row) == 2}
    assert fields["current_state"] == "completed"
    assert fields["file_path"] == str(target)
    assert fields["workflow_type"] == "stamp_workflow"
    steps = [row[:3] for row in rows if len(row) == 5]
    assert steps == [["0", "stamp", "completed"], ["1", "intelligence", "skipped"]]
    transitions = [row[1:] for row in rows if len(row) == 4]
    assert transitions == [["pending", "processing", "start"], ["processing", "completed", "complete"]]


@pytest.mark.parametrize(
    ("cid", "code", "message"),
    [
        pytest.param("00000000-0000-4000-8000-000000000000", 1, "no workflow", id="unknown"),
        pytest.param("not-a-uuid", 2, "is not a UUID", id="malformed"),
    ],
)
def test_trace_of_an_unknown_workflow_fails(tmp_path: Path, cid: str, code: int, message: str) -> None:
    url = f"sqlite:///{tmp_path / 'onex.db'}"
    assert onex("db", "upgrade", "--store", url, cwd=tmp_path).returncode == 0

    result = onex("trace", cid, "--store", url, cwd=tmp_path)

    assert result.returncode == code
    assert message in result.stderr


# --- run -------------------------------------------------------------------------------------------------------------


def wait_for_output(log: Path, text: str, proc: subprocess.Popen[bytes], deadline_s: float) -> str:
    """Poll ``log`` until it contains ``text``; fail if the process exits or the deadline passes first."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        output = log.read_text(errors="replace")
        if text in output:
            return output
        if proc.poll() is not None:
            pytest.fail(f"onex run exited with {proc.returncode} before printing {text!r}:\n{output}")
        time.sleep(0.05)
    pytest.fail(f"onex run did not print {text!r} within {deadline_s} s:\n{log.read_text(errors='replace')}")


def run_until_signal(
    tmp_path: Path,
    sig: signal.Signals = signal.SIGTERM,
    env: dict[str, str] | None = None,
    running: str = "\nrunning",
) -> tuple[int, str, Path]:
    """Start ``onex run`` (every node, memory bus, a fresh SQLite store; ``env`` added to its environment), send
    ``sig`` as soon as it says it is running (writes ``running``); returns its exit code, its stderr and the store's
    path."""
    db = tmp_path / "onex.db"
    log = tmp_path / "stderr.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [*command(), "--root", str(ROOT), "run", "--store", f"sqlite:///{db}"],
            cwd=tmp_path,
            env={**environment(), **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_for_output(log, running, proc, deadline_s=30)
        proc.send_signal(sig)
        returncode = proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return returncode, log.read_text(), db


def test_run_hosts_every_node_until_sigterm_then_drains_and_stops(tmp_path: Path) -> None:
    returncode, output, db = run_until_signal(tmp_path)

    assert returncode == 0, output
    assert output.index("running") < output.index("draining") < output.index("stopped")
    hosted = {row[0]: row[2] for row in table_rows(output)}
    assert hosted == NODES
    registrations = query(db, "SELECT node_type, metadata FROM node_registrations")
    assert {json.loads(str(metadata))["node_name"]: node_type for node_type, metadata in registrations} == NODES


def test_run_records_its_nodes_as_stopped_after_a_clean_shutdown(tmp_path: Path) -> None:
    returncode, output, db = run_until_signal(tmp_path)

    assert returncode == 0, output
    assert query(db, "SELECT DISTINCT health_status FROM node_registrations") == [("STOPPED",)]


def test_run_drains_and_stops_on_sigint_as_on_sigterm(tmp_path: Path) -> None:
    # Ctrl-C in a terminal: without the runtime's handler Python raises KeyboardInterrupt mid-loop, and the process
    # dies with a traceback and exit code 1 (or -2), the nodes never drained nor recorded as stopped.
    returncode, output, db = run_until_signal(tmp_path, signal.SIGINT)

    assert returncode == 0, output
    assert "Traceback" not in output
    assert output.index("running") < output.index("draining") < output.index("stopped")
    assert query(db, "SELECT DISTINCT health_status FROM node_registrations") == [("STOPPED",)]


def test_run_prints_its_nodes_whole_to_a_file_at_any_width(tmp_path: Path) -> None:
    # stderr is a file, and no COLUMNS says how wide: rich took 80 columns, cut the node ids with "..." and folded
    # the lines, so the log did not say which nodes ran.
    returncode, output, db = run_until_signal(tmp_path, env={"COLUMNS": ""})

    assert returncode == 0, output
    node_ids = {str(node_id) for (node_id,) in query(db, "SELECT node_id FROM node_registrations")}
    assert {row[3] for row in table_rows(output)} == node_ids, output
    assert "…" not in output
    # The banner's title whole on one line: rich folded it at the table's width, splitting the store's path.
    assert any(f"hosting on memory://, store sqlite:///{db}" in line for line in output.splitlines()), output


def test_run_with_json_logs_writes_only_json_lines_its_nodes_as_records(tmp_path: Path) -> None:
    # The banner (a table, "running; Ctrl-C drains and stops", "draining...", "stopped") was printed between the
    # JSON log lines: a log shipper reading one object a line choked on it.
    returncode, output, db = run_until_signal(tmp_path, env={"ONEX_LOG_FORMAT": "json"}, running='"event": "running"')

    assert returncode == 0, output
    lines = [json.loads(line) for line in output.splitlines()]
    node_ids = {str(node_id) for (node_id,) in query(db, "SELECT node_id FROM node_registrations")}
    hosting = {line["node"]: (line["node_name"], line["kind"]) for line in lines if line["event"] == "hosting"}
    assert hosting == {node_id: (node_id.split("-")[0], NODES[node_id.split("-")[0]]) for node_id in node_ids}
    process = [line["event"] for line in lines if line["logger"] == "onex.cli"]
    assert process[-3:] == ["running", "draining", "stopped"]


@pytest.mark.parametrize(
    ("signum", "status", "name"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")]
)
def test_stamp_drains_on_sigterm_as_on_ctrl_c_leaving_no_temporary_file_and_no_workflow_processing(
    tmp_path: Path, signum: int, status: int, name: str
) -> None:
    # SIGTERM used to kill the process where it stood: a .NAME.onex-tmp.* file beside a file being replaced, and the
    # workflows in hand left "processing" in the store forever. Ctrl-C cancels the command, which drains.
    tree = tmp_path / "tree"
    for i in range(6000):  # enough that the run is still stamping when the signal comes
        path = tree / f"d{i % 50}" / f"f{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"print({i})\n" * 20)
    db = tmp_path / "onex.db"
    log = tmp_path / "stderr.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [*command(), "--root", str(ROOT), "stamp", str(tree), "--store", f"sqlite:///{db}"],
            cwd=tmp_path,
            env=environment(),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            # Ctrl-C as at a terminal: a run started in the background by a shell without job control (a CI job, say)
            # inherits SIGINT ignored, which Python and onex respect, as a shell's background job should.
            preexec_fn=functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL),
        )
    try:
        deadline = time.monotonic() + 60
        while not stored_workflows(db):  # stamping: the first workflows are stored
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        # Held still, so that the signal comes while it stamps: with the store's write lock taken, no workflow can
        # end (its checkpoint waits), and a loaded machine's run cannot finish between the first rows and the signal.
        with contextlib.closing(sqlite3.connect(db, timeout=60, isolation_level=None)) as lock:
            lock.execute("BEGIN IMMEDIATE")
            assert proc.poll() is None, log.read_text()
            proc.send_signal(signum)
            lock.execute("ROLLBACK")
        returncode = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert list(tree.rglob("*.onex-tmp.*")) == []
    states = dict(
        cast(list[tuple[str, int]], query(db, "SELECT current_state, count(*) FROM workflow_executions GROUP BY 1"))
    )
    assert "processing" not in states, states
    output = log.read_text()
    # Interrupted (not finished before the signal came): the status a shell expects (128 + the signal), not 1 ("a
    # file failed"), and how far it got, where it said only "Aborted!".
    assert returncode == status, output
    [line] = output.strip().splitlines()
    assert re.fullmatch(rf"error: interrupted by {name}: \d+ file\(s\) (of 6000 )?had their outcome.*", line), line
    assert "Run onex stamp again to finish" in line


def stored_workflows(db: Path) -> int:
    """How many workflows the SQLite store ``db`` holds so far (0 before it exists), read while it is written."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            return int(conn.execute("SELECT count(*) FROM workflow_executions").fetchone()[0])
    except sqlite3.OperationalError:  # no file, or no table yet
        return 0


def without_uvloop(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import uvloop`` fails, as where it is not installed: a package of that name first
    on the path, which raises ImportError."""
    shadow = tmp_path / "shadow" / "uvloop"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("no uvloop here")\n')
    return {"PYTHONPATH": str(shadow.parent)}


@pytest.mark.parametrize(
    ("setting", "loop"), [(None, "uvloop"), ("auto", "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")]
)
def test_run_hosts_its_nodes_on_the_event_loop_that_onex_event_loop_names(
    tmp_path: Path, setting: str | None, loop: str
) -> None:
    returncode, output, _ = run_until_signal(tmp_path, env={"ONEX_EVENT_LOOP": setting} if setting else None)

    assert returncode == 0, output
    started = [line for line in output.splitlines() if " start: starting " in line]
    assert len(started) == len(NODES), output
    assert all(line.endswith(f" loop={loop}") for line in started), started


def test_run_without_uvloop_installed_runs_on_asyncios_loop_when_the_choice_is_auto(tmp_path: Path) -> None:
    returncode, output, db = run_until_signal(tmp_path, env=without_uvloop(tmp_path))

    assert returncode == 0, output
    started = [line for line in output.splitlines() if " start: starting " in line]
    assert len(started) == len(NODES), output
    assert all(line.endswith(" loop=asyncio") for line in started), started
    assert query(db, "SELECT DISTINCT health_status FROM node_registrations") == [("STOPPED",)]


def test_asking_for_uvloop_where_it_is_not_installed_is_a_usage_error_of_one_line(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    make_tree(tree)
    result = subprocess.run(
        [*command(), "--root", str(ROOT), "stamp", str(tree), "--store", f"sqlite:///{tmp_path / 'onex.db'}"],
        cwd=tmp_path,
        env={**environment(), **without_uvloop(tmp_path), "ONEX_EVENT_LOOP": "uvloop"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: ONEX_EVENT_LOOP=uvloop: uvloop is not installed (pip install uvloop, or set ONEX_EVENT_LOOP to auto or "
        "asyncio)"
    ]
    assert not (tmp_path / "onex.db").exists()  # nothing ran


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("partitions=0", "partitions and replication_factor must be at least 1"),
        ("linger_ms=soon", "linger_ms must be"),
        ("security_protocol=SSL&ssl_cafile=no-such.pem", "cannot load ssl_cafile 'no-such.pem'"),
    ],
)
def test_a_bad_value_in_the_kafka_url_is_one_line_naming_the_url(tmp_path: Path, query: str, error: str) -> None:
    """A usage error, as a malformed ``ONEX_*`` setting is: read with the settings, before anything starts."""
    url = f"kafka://127.0.0.1:1?{query}"
    result = subprocess.run(
        [*command(), "--root", str(ROOT), "run", "--node", "reducer"],
        cwd=tmp_path,
        env={**environment(), "ONEX_BUS": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: Kafka bus URL {url!r}: {error}"), line


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["run"], id="run"),
        pytest.param(["dlq", "list"], id="dlq-list"),
        pytest.param(["tail", "METADATA_STAMP_VALIDATED"], id="tail"),
        pytest.param(["stamp", "."], id="stamp"),
        pytest.param(["publish", "METADATA_STAMP_VALIDATED", "{}"], id="publish"),
    ],
)
@pytest.mark.parametrize(
    ("brokers", "error"),
    [
        ("127.0.0.1:notaport", "the port of broker '127.0.0.1:notaport' must be a number from 1 to 65535"),
        ("a:9092,b:65536", "the port of broker 'b:65536' must be a number from 1 to 65535"),
        ("[::1", "Invalid IPv6 URL"),
    ],
)
def test_a_bad_broker_in_the_kafka_url_is_one_line_naming_the_url(
    tmp_path: Path, args: list[str], brokers: str, error: str
) -> None:
    # aiokafka reads the ports only when the bus starts, and raised a bare ValueError from int(): a traceback, exit 1.
    url = f"kafka://{brokers}"
    result = subprocess.run(
        [*command(), "--root", str(ROOT), *args, "--bus", url],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line == f"error: Kafka bus URL {url!r}: {error}"


@pytest.mark.parametrize("args", [["workflows"], ["ps"], ["stamp", "."], ["dlq", "list"]], ids=" ".join)
@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("sqlite://", "SQLite store URL 'sqlite://' has no path"),
        ("sqlite:", "not a SQLite store URL: 'sqlite:'"),
        (
            "postgresql://postgres@127.0.0.1:notaport/test",
            "store URL 'postgresql://postgres@127.0.0.1:notaport/test': Port could not be cast to integer value",
        ),
        ("postgresql://onex:s3cret@[bad", "store URL 'postgresql://onex:***@[bad': Invalid IPv6 URL"),
        ("postgresql://a:5432,b:99999/test", "store URL 'postgresql://a:5432,b:99999/test': Port out of range"),
    ],
)
def test_a_malformed_store_url_is_one_line_naming_the_url(
    tmp_path: Path, args: list[str], url: str, error: str
) -> None:
    # The stores parse their URL only when opened: a ValueError from deep inside, and a traceback, exit 1.
    result = onex(*args, "--store", url, cwd=tmp_path)

    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {error}"), line
    assert "s3cret" not in line


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["stamp", "--bogus"], "onex stamp: No such option '--bogus'"),
        (["--bogus"], "onex: No such option '--bogus'"),
        (["workflows", "--since", "yesterday"], "onex workflows: Invalid value for '--since'"),
        (["nodes", "-o", "yaml"], "onex nodes: Invalid value for '-o'"),
        # Beyond what a store's integers hold: SQLite's overflowed into a traceback, PostgreSQL's into exit 1.
        (["workflows", "--limit", "99999999999999999999"], "onex workflows: Invalid value for '--limit'"),
        (["aggregates", "--limit", "99999999999999999999"], "onex aggregates: Invalid value for '--limit'"),
        (["dlq", "list", "--limit", "99999999999999999999"], "onex dlq list: Invalid value for '--limit'"),
        (["tail", "X", "--max", "99999999999999999999"], "onex tail: Invalid value for '--max'"),
        # FloatRange let NaN through (every comparison with it is false) to a traceback.
        (["stamp", ".", "--timeout", "nan"], "onex stamp: Invalid value for '--timeout'"),
        (["stamp", ".", "--timeout", "inf"], "onex stamp: Invalid value for '--timeout'"),
        (["publish", "STAMP_REQUESTED", '{"content": ""}', "--timeout", "nan"], "onex publish: Invalid value for"),
        (["tail", "STAMP_REQUESTED", "--bus", "kafka://127.0.0.1:1", "--timeout", "nan"], "onex tail: Invalid value"),
        (["tail", "STAMP_REQUESTED", "--timeout", "-inf"], "onex tail: Invalid value for '--timeout'"),
        # Further back than a datetime reaches: OverflowError tracebacks.
        (["workflows", "--since", "3000000d"], "onex workflows: Invalid value for '--since'"),
        (["workflows", "--since", "99999999999d"], "onex workflows: Invalid value for '--since'"),
        (["workflows", "--since", "9" * 400 + "s"], "onex workflows: Invalid value for '--since'"),
    ],
)
def test_a_usage_error_is_one_line_naming_the_command_and_exits_2(args: list[str], line: str) -> None:
    onex = str(Path(sys.executable).with_name("onex"))  # the console script, named as users type it
    done = subprocess.run([onex, *args], capture_output=True, text=True, check=False)

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(line)
    assert done.stderr.rstrip().endswith(f"(see '{line.split(':')[0]} --help')")
