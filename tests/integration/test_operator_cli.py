"""The operator's commands through the real ``onex`` in a subprocess, stdout a pipe (never a terminal): ``ps``,
``workflows``, ``trace PATH``, ``config``, ``-o json``/``jsonl``, full values in piped tables, usage errors.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from onex.store import RegistrationRow, WriteBatch
from onex.stores import open_store

ROOT = Path(__file__).resolve().parents[2]
ONEX = Path(sys.executable).with_name("onex")


def onex(
    *args: str, cwd: Path, root: Path | None = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed ``onex`` with no ONEX_* variable and no COLUMNS: a pipe of the default width (80)."""
    command = [str(ONEX)] if ONEX.exists() else [sys.executable, "-m", "onex.cli"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ONEX_") and k != "COLUMNS"}
    prefix = ["--root", str(root)] if root is not None else []
    return subprocess.run(
        [*command, *prefix, *args],
        cwd=cwd,
        env=environ | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def stamped_tree(tmp_path: Path, *, namespace: str = "onex.default") -> tuple[Path, str, list[Path]]:
    """Files stamped through ``onex stamp`` into a fresh SQLite store: the tree, the store URL, the files (one with
    a name far longer than any terminal)."""
    tree = tmp_path / "tree"
    tree.mkdir(exist_ok=True)
    files = [tree / "a.py", tree / "b.py", tree / ("long_" + "x" * 150 + ".py")]
    for i, path in enumerate(files):
        path.write_text(f"x = {i}\n")
    url = f"sqlite:///{tmp_path / 'onex.db'}"
    result = onex("stamp", str(tree), "--store", url, "--namespace", namespace, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    return tree, url, files


def test_workflows_lists_the_stored_workflows_newest_first_with_filters(tmp_path: Path) -> None:
    _, url, files = stamped_tree(tmp_path)

    result = onex("workflows", "--store", url, "-o", "json", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert sorted(r["file_path"] for r in rows) == sorted(str(f) for f in files)
    assert {r["state"] for r in rows} == {"completed"}
    started = [datetime.fromisoformat(r["started_at"]) for r in rows]
    assert started == sorted(started, reverse=True)

    def ids(*args: str) -> list[str]:
        out = onex("workflows", "--store", url, "-o", "json", *args, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        return [r["correlation_id"] for r in json.loads(out.stdout)]

    everything = [r["correlation_id"] for r in rows]
    assert ids("--limit", "2") == everything[:2]
    assert ids("--state", "failed") == []
    assert ids("--namespace", "onex.default", "--since", "10m") == everything
    assert ids("--namespace", "elsewhere") == []
    assert ids("--since", (datetime.now(UTC) + timedelta(hours=1)).isoformat()) == []
    lines = onex("workflows", "--store", url, "-o", "jsonl", cwd=tmp_path).stdout.splitlines()
    assert [json.loads(line)["correlation_id"] for line in lines] == everything

    bad = onex("workflows", "--store", url, "--since", "yesterday", cwd=tmp_path)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr


def test_trace_of_a_path_is_the_latest_workflow_for_that_file(tmp_path: Path) -> None:
    tree, url, files = stamped_tree(tmp_path)
    assert onex("stamp", str(tree), "--store", url, cwd=tmp_path).returncode == 0  # a second, unchanged, run
    latest = json.loads(onex("workflows", "--store", url, "-o", "json", cwd=tmp_path).stdout)
    newest_for_a = next(r["correlation_id"] for r in latest if r["file_path"] == str(files[0]))

    result = onex("trace", str(files[0].relative_to(tmp_path)), "--store", url, "-o", "json", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    traced = json.loads(result.stdout)
    assert traced["workflow"]["correlation_id"] == newest_for_a
    assert [s["step_name"] for s in traced["steps"]] == ["stamp", "intelligence"]
    assert [t["to_state"] for t in traced["transitions"]] == ["processing", "completed"]

    missing = onex("trace", "no/such/file.py", "--store", url, cwd=tmp_path)
    assert missing.returncode == 2
    assert "is not a UUID, nor a path to a file" in missing.stderr


def test_trace_finds_a_file_given_relative_to_any_working_directory(tmp_path: Path) -> None:
    # onex stamp submitted each path as given (relative to its cwd), so only that spelling from that cwd traced it.
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    target = tmp_path / "tree" / "sub" / "a.py"
    target.write_text("x = 1\n")
    link = tmp_path / "linked"
    link.symlink_to(tmp_path / "tree")
    url = f"sqlite:///{tmp_path / 'onex.db'}"
    assert onex("stamp", "tree/sub/a.py", "--store", url, cwd=tmp_path).returncode == 0
    assert onex("stamp", "linked/sub/a.py", "--store", url, cwd=tmp_path).returncode == 0

    workflows = json.loads(onex("workflows", "--store", url, "-o", "json", cwd=tmp_path).stdout)

    # Absolute, the symlinked spelling kept (joined to the cwd, not resolved): the path as the user named it.
    assert [w["file_path"] for w in workflows] == [str(link / "sub" / "a.py"), str(target)]
    for cwd, spelled in [(tmp_path / "tree" / "sub", "a.py"), (tmp_path / "tree", "sub/a.py"), (tmp_path, str(target))]:
        traced = onex("trace", spelled, "--store", url, "-o", "json", cwd=cwd)
        assert traced.returncode == 0, traced.stderr
        assert json.loads(traced.stdout)["workflow"]["file_path"] in {str(target), str(link / "sub" / "a.py")}
    via_link = onex("trace", "linked/sub/a.py", "--store", url, "-o", "json", cwd=tmp_path)
    assert json.loads(via_link.stdout)["workflow"]["correlation_id"] == workflows[0]["correlation_id"]
    traced = json.loads(onex("trace", "a.py", "--store", url, "-o", "json", cwd=tmp_path / "tree" / "sub").stdout)
    assert traced["stamps"][0]["file_path"] == traced["workflow"]["file_path"]  # the stamp's row says the same


def test_a_piped_title_is_printed_whole_however_narrow_the_table(tmp_path: Path) -> None:
    # rich folded a title at the table's width, splitting the store URL a script looks for.
    deep = tmp_path / ("store_" + "s" * 150)
    deep.mkdir()
    url = f"sqlite:///{deep / 'onex.db'}"
    assert onex("db", "upgrade", "--store", url, cwd=tmp_path).returncode == 0
    topic = "t" * 120
    empty = tmp_path / ("root_" + "r" * 150)
    empty.mkdir()

    outputs = {
        "workflows": (onex("workflows", "--store", url, cwd=tmp_path), f"0 workflow(s) in {url}, newest first"),
        "aggregates": (onex("aggregates", "--store", url, cwd=tmp_path), f"0 window(s) in {url}, newest first"),
        "ps": (onex("ps", "--store", url, cwd=tmp_path), f"nodes recorded in {url}"),
        "dlq": (
            onex("dlq", "list", "--topic", topic, "--store", url, cwd=tmp_path),
            f"showing 0 of 0 dead letter(s) of {topic}, newest first",
        ),
        "config-store": (
            onex("config-store", "effective", topic, "--env", "staging", "--store", url, cwd=tmp_path),
            f"{topic} in staging (tenant default), from: none",
        ),
        "nodes": (onex("nodes", cwd=tmp_path, root=empty), f"nodes in {empty}"),
    }

    for name, (result, title) in outputs.items():
        assert result.returncode == 0, (name, result.stderr)
        assert title in result.stdout.splitlines()[0], (name, result.stdout)
    # A root without contracts: its table's columns still say what it would list (it was one blank line).
    assert "┃ node ┃ version ┃ kind ┃ contract ┃ implementation ┃" in outputs["nodes"][0].stdout


def register(url: str, rows: list[RegistrationRow]) -> None:
    async def main() -> None:
        async with open_store(url) as store:
            await store.upgrade()
            await store.apply(WriteBatch(registrations=rows))

    asyncio.run(main())


def test_ps_shows_each_recorded_node_with_its_health_host_pid_and_uptime(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'onex.db'}"
    now = datetime.now(UTC)
    register(
        url,
        [
            RegistrationRow(
                "reducer-1",
                "REDUCER",
                "1.0.0",
                health_status="HEALTHY",
                metadata={"node_name": "reducer", "instance": "host-a-4242", "uptime_seconds": 75.5},
                last_heartbeat=now,
            ),
            RegistrationRow(
                "registry-1",
                "REGISTRY",
                "1.0.0",
                health_status="HEALTHY",  # nobody marked it: silent for an hour, so shown stale
                metadata={"node_name": "registry", "instance": "host-b-7"},
                last_heartbeat=now - timedelta(hours=1),
            ),
            RegistrationRow(
                "adapter-1",
                "EFFECT",
                "1.0.0",
                health_status="STOPPED",
                metadata={"node_name": "database_adapter_effect"},
                last_heartbeat=now - timedelta(minutes=5),
            ),
            RegistrationRow(
                "worker-1",
                "COMPUTE",
                "1.0.0",
                health_status="HEALTHY",
                metadata={"node_name": "worker", "instance": "worker-a"},  # ONEX_INSTANCE=worker-a: no pid in it
                last_heartbeat=now + timedelta(minutes=2),  # its clock is two minutes ahead of this one
            ),
            RegistrationRow(
                "sent-1",
                "COMPUTE",
                "1.0.0",
                health_status="HEALTHY",
                metadata={"node_name": "sent", "instance": "edge-9", "host": "box-1", "pid": 31},
                last_heartbeat=now,
            ),
        ],
    )

    result = onex("ps", "--store", url, "-o", "json", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    nodes: dict[str, dict[str, Any]] = {r["node_id"]: r for r in json.loads(result.stdout)}
    assert set(nodes) == {"reducer-1", "registry-1", "adapter-1", "worker-1", "sent-1"}
    reducer = nodes["reducer-1"]
    assert (reducer["name"], reducer["kind"], reducer["version"]) == ("reducer", "REDUCER", "1.0.0")
    assert (reducer["health"], reducer["host"], reducer["pid"]) == ("HEALTHY", "host-a", 4242)
    assert reducer["uptime_s"] == 75.5
    assert 0 <= reducer["heartbeat_age_s"] < 60
    assert (nodes["registry-1"]["health"], nodes["registry-1"]["recorded_health"]) == ("STALE", "HEALTHY")
    assert nodes["registry-1"]["heartbeat_age_s"] >= 3600
    assert nodes["adapter-1"]["health"] == "STOPPED"
    assert (nodes["worker-1"]["host"], nodes["worker-1"]["pid"]) == ("worker-a", None)
    assert (nodes["sent-1"]["host"], nodes["sent-1"]["pid"]) == ("box-1", 31)  # what the node sent wins

    table = onex("ps", "--store", url, cwd=tmp_path).stdout
    for shown in ("host-a", "4242", "1m15s", "STALE", "STOPPED", "ahead (clock skew)"):
        assert shown in table
    assert not re.search(r"-\d+[smhd]", table)  # no negative age


def test_config_says_where_each_setting_came_from(tmp_path: Path) -> None:
    result = onex(
        "config",
        "--store",
        "sqlite:///x.db",
        "-o",
        "json",
        cwd=tmp_path,
        env={"ONEX_PARTITIONS": "8", "ONEX_API_KEY": "secret"},
    )

    assert result.returncode == 0, result.stderr
    rows = {r["setting"]: r for r in json.loads(result.stdout)}
    assert (rows["store"]["value"], rows["store"]["source"]) == (f"sqlite:///{ROOT}/x.db", "flag")
    assert (rows["root"]["value"], rows["root"]["source"]) == (str(ROOT), "flag")
    assert (rows["partitions"]["value"], rows["partitions"]["source"]) == (8, "environment")
    assert (rows["bus"]["value"], rows["bus"]["source"]) == ("memory://", "default")
    assert rows["api_key"]["value"] == "(set)"
    assert "secret" not in result.stdout


def test_every_table_piped_shows_full_values(tmp_path: Path) -> None:
    tree, url, files = stamped_tree(tmp_path)
    long_file = str(files[2])
    register(url, [RegistrationRow("node-" + "n" * 120, "EFFECT", "1.0.0", last_heartbeat=datetime.now(UTC))])
    cid = json.loads(onex("workflows", "--store", url, "-o", "json", "--limit", "1", cwd=tmp_path).stdout)[0]
    deep = tmp_path / ("project_" + "p" * 100)
    (deep / "contracts").mkdir(parents=True)

    outputs = {
        "workflows": onex("workflows", "--store", url, cwd=tmp_path).stdout,
        "trace": onex("trace", long_file, "--store", url, cwd=tmp_path).stdout,
        "ps": onex("ps", "--store", url, cwd=tmp_path).stdout,
        "config": onex("config", "--store", url, cwd=tmp_path).stdout,
        "nodes": onex("nodes", cwd=tmp_path).stdout,
        "verify": onex("verify", str(tree), "--all", cwd=tmp_path).stdout,
        "stamp": onex("stamp", str(tree), "--store", url, cwd=tmp_path).stdout,
        "config root": onex("config", cwd=tmp_path, root=deep).stdout,
    }

    assert long_file in outputs["workflows"]
    assert cid["correlation_id"] in outputs["workflows"]
    assert long_file in outputs["trace"]
    assert "node-" + "n" * 120 in outputs["ps"]
    assert url.removeprefix("sqlite:///") in outputs["config"]
    assert f"nodes in {ROOT}" in outputs["nodes"]
    assert "contracts/effects/" in outputs["nodes"]
    assert long_file in outputs["verify"]
    assert "stamped 0 file(s), 3 unchanged" in outputs["stamp"]
    assert str(deep) in outputs["config root"]
    for name, out in outputs.items():
        assert "…" not in out, name  # rich's ellipsis: a value was cut


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["workflows", "--store", "mysql://db/x"], "unsupported store URL 'mysql://db/x'"),
        (["stamp", ".", "--bus", "rabbit://h"], "unsupported bus URL 'rabbit://h'"),
        (["graph", "NOSUCH"], "NOSUCH"),
        (["stamp", "no/such/path"], "no/such/path: no such file or directory"),
        (["verify", "no/such/path"], "no/such/path: no such file or directory"),
    ],
    ids=["store-scheme", "bus-scheme", "graph", "stamp-path", "verify-path"],
)
def test_usage_errors_exit_2_with_one_line_and_no_traceback(tmp_path: Path, args: list[str], message: str) -> None:
    result = onex(*args, cwd=tmp_path)

    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / ".onex").exists()


def test_a_root_that_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    result = onex("nodes", cwd=tmp_path, root=tmp_path / "missing")

    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_outside_any_project_the_store_is_in_the_users_data_directory(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    data = tmp_path / "data"

    result = onex("stamp", "a.py", cwd=tmp_path, root=None, env={"XDG_DATA_HOME": str(data)})

    assert result.returncode == 0, result.stdout + result.stderr
    listed = onex("workflows", "-o", "json", cwd=tmp_path, root=None, env={"XDG_DATA_HOME": str(data)})
    assert [r["file_path"] for r in json.loads(listed.stdout)] == [str(tmp_path / "a.py")]  # made absolute
    assert (data / "onex" / "onex.db").is_file()


def test_stamp_verify_and_nodes_print_json_for_scripts(tmp_path: Path) -> None:
    tree, url, files = stamped_tree(tmp_path)
    files[0].write_text(files[0].read_text() + "y = 2\n")  # still stamped, no longer matching its stamp

    stamp = onex("stamp", str(tree), "--store", url, "--dry-run", "-o", "json", cwd=tmp_path)
    verify = onex("verify", str(tree), "-o", "json", cwd=tmp_path)
    nodes = onex("nodes", "-o", "json", cwd=tmp_path)

    assert stamp.returncode == 0, stamp.stderr
    report = json.loads(stamp.stdout)
    assert report["headline"] == "would stamp 1 file(s), 2 unchanged"
    assert (report["counts"]["stamped"], report["counts"]["unchanged"], report["dry_run"]) == (1, 2, True)
    assert verify.returncode == 1
    checked = json.loads(verify.stdout)
    assert checked["counts"] == {"valid": 2, "modified": 1, "unstamped": 0, "error": 0, "skipped": 0}
    assert [(f["path"], f["status"]) for f in checked["files"]] == [(str(files[0]), "modified")]
    assert {n["node"]: n["implementation"] for n in json.loads(nodes.stdout)} == {
        "database_adapter_effect": "ok",
        "metastore_effect": "ok",
        "orchestrator": "ok",
        "reducer": "ok",
        "registry": "ok",
        "stamping_effect": "ok",
    }
