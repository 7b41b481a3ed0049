"""Bad input on disk: the real ``onex stamp`` in a subprocess reports every file it cannot stamp, by name and with
a reason, stamps the rest, and exits 1; a file that disappears between the walk and its workflow fails that
workflow alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from blake3 import blake3
from onex.files import iter_files
from onex.stamps import sidecar_path, strip_stamp, verify_file
from onex.testing import Harness

ROOT = Path(__file__).resolve().parents[2]
ONEX = Path(sys.executable).with_name("onex")


def onex(*args: str, cwd: Path, prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """Run the installed ``onex`` console script (under ``prefix``, a command such as ``setpriv ...``); a wide
    terminal so that rich never folds a path."""
    command = [str(ONEX)] if ONEX.exists() else [sys.executable, "-m", "onex.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONEX_")}
    env["COLUMNS"] = "400"
    return subprocess.run(
        [*prefix, *command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def table_rows(output: str) -> list[list[str]]:
    """The body rows of every rich table in ``output``, as lists of stripped cells."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in output.splitlines()
        if line.lstrip().startswith("│")
    ]


def test_stamp_reports_each_bad_file_and_stamps_the_good_ones(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "loopdir").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.py").write_bytes(b"secret = 1\n")

    good = {
        "good.py": b"#!/usr/bin/env python3\nprint('ok')\n",
        "good.yaml": b"key: value\n",
        "good.json": b'{"ok": true}',
        "empty.py": b"",
        "nul.txt": b"text with a \x00 NUL byte\x01\x02\n",  # binary with a text extension: a sidecar, bytes unchanged
        "latin1.py": b"# caf\xe9 cr\xe8me\nprint('\xe9')\n",  # Latin-1 declaring no encoding: a sidecar, no guess
    }
    for name, data in good.items():
        (tree / name).write_bytes(data)
    long_prefix = b"#!" + b"x" * 10_000 + b"\n"  # a shebang longer than a stamp may follow: refused
    (tree / "long.sh").write_bytes(long_prefix)
    os.symlink("loop_b", tree / "loop_a")  # a chain of links that never ends
    os.symlink("loop_a", tree / "loop_b")
    os.symlink("..", tree / "loopdir" / "up")  # a directory link back to its ancestor
    os.symlink(outside / "secret.py", tree / "escape.py")
    os.mkfifo(tree / "pipe.txt")
    store = tmp_path / "onex.db"

    result = onex(
        "--root", str(ROOT), "stamp", str(tree), "--namespace", "bad", "--store", f"sqlite:///{store}", cwd=tmp_path
    )

    assert result.returncode == 1, result.stdout + result.stderr
    # status, path, correlation id (a workflow's; "-" for what the walk left out), reason
    problems = {row[1]: (row[0], row[3]) for row in table_rows(result.stdout) if len(row) == 4}
    expected = {
        tree / "long.sh": ("failed", "must stay first"),
        tree / "loop_a": ("failed", "symlink loop"),
        tree / "loop_b": ("failed", "symlink loop"),
        tree / "loopdir" / "up": ("failed", "symlink loop"),
        tree / "escape.py": ("skipped", "outside"),
        tree / "pipe.txt": ("skipped", "not a regular file"),
    }
    assert problems.keys() == {str(p) for p in expected}
    for path, (status, reason) in expected.items():
        assert problems[str(path)][0] == status, path
        assert reason in problems[str(path)][1], (path, problems[str(path)])
    counts = next(row for row in table_rows(result.stdout) if len(row) == 5 and all(c.isdigit() for c in row))
    assert dict(zip(("stamped", "unchanged", "skipped", "failed", "pending"), map(int, counts), strict=True)) == {
        "stamped": len(good),
        "unchanged": 0,
        "skipped": 2,
        "failed": 4,
        "pending": 0,
    }

    # The good files are stamped and verify; what could not be stamped is byte for byte what it was.
    for name, data in good.items():
        path = tree / name
        assert verify_file(path).status == "valid", name
        assert strip_stamp(path.read_bytes(), file_name=name) == data, name
    assert (tree / "nul.txt").read_bytes() == good["nul.txt"]
    assert sidecar_path(tree / "nul.txt").is_file()
    assert (tree / "good.json").read_bytes() == good["good.json"]
    assert (tree / "latin1.py").read_bytes() == good["latin1.py"]
    assert sidecar_path(tree / "latin1.py").is_file()
    assert (tree / "long.sh").read_bytes() == long_prefix
    assert (outside / "secret.py").read_bytes() == b"secret = 1\n"
    assert not sidecar_path(tree / "long.sh").exists()
    assert sorted(p.name for p in outside.iterdir()) == ["secret.py"]

    with contextlib.closing(sqlite3.connect(store)) as db:
        stamped = dict(db.execute("SELECT file_path, file_hash FROM metadata_stamps WHERE namespace = 'bad'"))
        failed_rows = db.execute(
            "SELECT file_path, error_message FROM workflow_executions WHERE current_state = 'failed'"
        ).fetchall()
    assert stamped == {str(tree / name): blake3(data).hexdigest() for name, data in good.items()}
    assert len(failed_rows) == 1
    assert failed_rows[0][0] == str(tree / "long.sh")
    assert "must stay first" in failed_rows[0][1]


@pytest.mark.anyio
async def test_a_file_deleted_after_the_walk_fails_its_workflow_alone(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"f{i}.py").write_text(f"x = {i}\n")
    walked = [entry.path for entry in iter_files([tmp_path])]
    assert len(walked) == 5
    doomed = tmp_path / "f2.py"
    doomed.unlink()  # gone between the walk and the stamping, as when a build deletes it mid-run

    async with Harness(root=ROOT) as h:
        sent = {
            path: await h.publish("STAMP_REQUESTED", {"file_path": str(path), "namespace": "deleted"})
            for path in walked
        }
        await h.settle()

        for path, envelope in sent.items():
            assert envelope.correlation_id is not None  # the harness gives everything it publishes one
            workflow = await h.store.get_workflow(envelope.correlation_id)
            assert workflow is not None
            if path == doomed:
                assert workflow.current_state == "failed"
                assert workflow.error_message is not None
                assert str(doomed) in workflow.error_message
                assert "no such file" in workflow.error_message
            else:
                assert workflow.current_state == "completed", path
                assert verify_file(path).status == "valid"
        assert len(h.of("WORKFLOW_FAILED")) == 1
        assert len(h.of("WORKFLOW_COMPLETED")) == 4
    assert not doomed.exists()


def without_root_privileges() -> list[str]:
    """A command prefix that runs a program without the capabilities that let root read any file whatever its mode
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH): nothing when not root, ``setpriv`` (util-linux) dropping every
    capability when root; skips the test when neither is possible."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv (util-linux): a mode-000 file would be readable")
    return [setpriv, "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"]


def test_stamp_reports_a_file_it_may_not_read_and_stamps_the_others(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    good = {"a.py": b"x = 1\n", "b.yaml": b"key: value\n", "c.json": b'{"ok": true}'}
    for name, data in good.items():
        (tree / name).write_bytes(data)
    locked = tree / "locked.py"
    locked.write_bytes(b"secret = 1\n")
    locked.chmod(0)
    prefix = without_root_privileges()
    # The premise, checked with the same prefix: the file really cannot be read (a container may not let setpriv
    # drop what it needs to, and then this test would prove nothing).
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", f"open({str(locked)!r}, 'rb')"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode == 0 or "PermissionError" not in probe.stderr:
        pytest.skip(f"could not make {locked} unreadable for a subprocess: {probe.stderr.strip()[-200:]}")
    store = tmp_path / "onex.db"

    result = onex(
        "--root",
        str(ROOT),
        "stamp",
        str(tree),
        "--namespace",
        "perm",
        "--store",
        f"sqlite:///{store}",
        cwd=tmp_path,
        prefix=prefix,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    problems = [row for row in table_rows(result.stdout) if len(row) == 4]
    assert len(problems) == 1, problems
    status, path, _, reason = problems[0]
    assert (status, path) == ("failed", str(locked))
    assert str(locked) in reason
    assert "permission denied" in reason.lower()
    counts = next(row for row in table_rows(result.stdout) if len(row) == 5 and all(c.isdigit() for c in row))
    assert dict(zip(("stamped", "unchanged", "skipped", "failed", "pending"), map(int, counts), strict=True)) == {
        "stamped": len(good),
        "unchanged": 0,
        "skipped": 0,
        "failed": 1,
        "pending": 0,
    }

    for name, data in good.items():
        assert verify_file(tree / name).status == "valid", name
        assert strip_stamp((tree / name).read_bytes(), file_name=name) == data, name
    assert stat.S_IMODE(locked.stat().st_mode) == 0
    assert locked.read_bytes() == b"secret = 1\n"  # root (this process) can still look: nothing was written
    assert not sidecar_path(locked).exists()
    with contextlib.closing(sqlite3.connect(store)) as db:
        stamped = {row[0] for row in db.execute("SELECT file_path FROM metadata_stamps WHERE namespace = 'perm'")}
        failed = db.execute(
            "SELECT file_path, error_message FROM workflow_executions WHERE current_state = 'failed'"
        ).fetchall()
    assert stamped == {str(tree / name) for name in good}
    assert [path for path, _ in failed] == [str(locked)]
    assert "permission denied" in failed[0][1].lower()
