"""Files are never damaged, and only the intended files are touched (issue 10, part 7).

- A file another process holds open is never replaced: a writer appending lines while ``onex stamp`` (the real CLI)
  or ``stamps.stamp_file`` runs again and again loses none of them, and every run reports the file ``busy``.
- A stamper killed mid-write leaves a temporary file that the next ``onex stamp`` removes; a live stamper's stays.
- The stamping effect touches only files under its stamp roots (``ONEX_STAMP_ROOTS``).

Children are real processes driven over pipes: every wait is for a line they print, with a generous timeout.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
from onex.envelope import OnexEnvelopeV1
from onex.files import is_temp
from onex.settings import Settings
from onex.stamps import BUSY, find_stamp, stamp_file, strip_stamp, verify_file
from onex.testing import Harness

from tests.fixtures.deployment import ROOT, onex_command

NS = "it.file_safety"
LINES = 1_500
RUNS = 5  # onex stamp runs while the writer appends: LINES / RUNS lines during each

# A process that keeps a file open for appending and writes numbered lines when asked: "N" appends N more.
WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
print("open", flush=True)
written = 0
for command in sys.stdin:
    for _ in range(int(command)):
        written += 1
        os.write(fd, b"line %04d\\n" % written)
    print("wrote", written, flush=True)
os.close(fd)
"""

# A stamper that stops just before its rename (it has written its temporary file) until told to go on.
STOPPED_STAMPER = """
import sys
from onex.stamps import stamp_file

def stop(path):
    print("ready", flush=True)
    sys.stdin.readline()

result = stamp_file(sys.argv[1], _before_replace=stop)
print(result.status, result.error, flush=True)
"""


def read_line(stream: IO[str], timeout: float = 120.0) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"no line from the child within {timeout} s"
    return stream.readline().strip()


def child(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def say(process: subprocess.Popen[str], line: str) -> None:
    assert process.stdin is not None
    process.stdin.write(line + "\n")
    process.stdin.flush()


@contextlib.contextmanager
def writer(path: Path) -> Iterator[subprocess.Popen[str]]:
    """A second process holding ``path`` open for appending until the block ends."""
    with child(WRITER, str(path)) as process:
        try:
            assert process.stdout is not None
            assert read_line(process.stdout) == "open"
            yield process
        finally:
            assert process.stdin is not None
            process.stdin.close()
            assert process.wait(timeout=60) == 0


def of_workflow(cid: uuid.UUID | None) -> Callable[[OnexEnvelopeV1], bool]:
    """A ``wait_for`` predicate: an event of the workflow ``cid``."""
    return lambda e: e.correlation_id == cid


def expected_lines(n: int) -> bytes:
    return b"".join(b"line %04d\n" % i for i in range(1, n + 1))


def onex_env() -> dict[str, str]:
    """As ``spawn_onex`` builds it: no ONEX_* of ours, this repository's root, and a table wide enough to read."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("ONEX_")}
    return {**inherited, "ONEX_ROOT": str(ROOT), "PYTHONUNBUFFERED": "1", "COLUMNS": "400"}


def onex(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*onex_command(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=onex_env(),
        cwd=cwd,
    )


def finished(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def summary(output: str) -> dict[str, int]:
    """The counts row of ``onex stamp``'s summary table, by column name (the ``busy`` column comes and goes)."""
    lines = output.splitlines()
    header = next(i for i, line in enumerate(lines) if re.search(r"┃\s*stamped\s*┃", line))
    names = [c.strip() for c in lines[header].strip("┃ ").split("┃")]
    row = next(line for line in lines[header + 1 :] if line.startswith("│"))
    values = [int(c.strip()) for c in row.strip("│ ").split("│")]
    return dict(zip(names, values, strict=True))


# --- a file open in another process ----------------------------------------------------------------------------------


def test_onex_stamp_reports_a_file_being_appended_busy_and_loses_none_of_its_lines(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    log = tree / "app.log.txt"  # a `#` comment syntax: stamped in place, so the rename is what is at stake
    log.write_bytes(b"")
    (tree / "other.py").write_bytes(b"x = 1\n")
    store = f"sqlite:///{tmp_path / 'onex.db'}"

    with writer(log) as appending:
        assert appending.stdout is not None
        for run in range(RUNS):
            # "tree", relative to the working directory: the paths given are the stamp roots, wherever that is.
            stamping = onex("stamp", "tree", "--namespace", NS, "--store", store, cwd=tmp_path)
            say(appending, str(LINES // RUNS))  # written while this run walks, hashes and tries to stamp
            assert read_line(appending.stdout) == f"wrote {LINES // RUNS * (run + 1)}"
            code, out, err = finished(stamping)
            assert code == 1, out + err
            counts = summary(out)
            assert (counts["busy"], counts["failed"]) == (1, 0), out
            assert counts["stamped"] + counts["unchanged"] == 1, out  # other.py: stamped once, then unchanged
            assert f"tree/app.log.txt: {BUSY}" in out, out

    assert log.read_bytes() == expected_lines(LINES)  # every line, in order, and no stamp
    assert not [name for name in os.listdir(tree) if is_temp(name)]

    code, out, err = finished(onex("stamp", "tree", "--namespace", NS, "--store", store, cwd=tmp_path))
    assert code == 0, out + err
    assert summary(out)["stamped"] == 1, out
    assert strip_stamp(log.read_bytes(), file_name=log.name) == expected_lines(LINES)
    assert verify_file(log).status == "valid"


def test_stamp_file_run_again_and_again_while_a_writer_appends_never_replaces_the_file(tmp_path: Path) -> None:
    log = tmp_path / "events.txt"
    log.write_bytes(b"")
    inode = log.stat().st_ino
    statuses: list[str] = []
    with writer(log) as appending:
        assert appending.stdout is not None
        statuses.append(stamp_file(log).status)
        say(appending, str(LINES))
        # Stamp as fast as possible until the writer says it is done; how many runs overlap is up to the scheduler,
        # what must hold is the same for every one of them.
        while not select.select([appending.stdout], [], [], 0)[0]:
            statuses.append(stamp_file(log).status)
        assert read_line(appending.stdout) == f"wrote {LINES}"
        statuses.append(stamp_file(log).status)

    assert set(statuses) == {"busy"}
    assert log.stat().st_ino == inode
    assert log.read_bytes() == expected_lines(LINES)
    assert sorted(os.listdir(tmp_path)) == ["events.txt"]
    assert stamp_file(log).status == "stamped"
    assert strip_stamp(log.read_bytes(), file_name=log.name) == expected_lines(LINES)


@pytest.mark.anyio
async def test_the_effect_fails_a_busy_file_retryably_and_the_workflow_says_busy(tmp_path: Path) -> None:
    path = tmp_path / "held.py"
    path.write_bytes(b"x = 1\n")
    with writer(path):
        async with Harness(root=ROOT) as h:
            sent = await h.publish("STAMP_REQUESTED", {"file_path": str(path), "namespace": NS})
            done = await h.wait_for("WORKFLOW_FAILED", lambda e: e.correlation_id == sent.correlation_id, timeout=60)
            failures = [e for e in h.of("STAMP_FAILED") if e.correlation_id == sent.correlation_id]

    assert BUSY in done.payload["error"]
    assert len(failures) >= 2  # retryable, so the orchestrator tried again
    assert all(e.payload["retryable"] is True and BUSY in e.payload["error"] for e in failures)
    assert path.read_bytes() == b"x = 1\n"


# --- temporary files a killed stamper leaves ------------------------------------------------------------------------


def test_onex_stamp_removes_a_killed_stampers_temporary_file_and_keeps_a_live_ones(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "killed.py").write_bytes(b"k = 1\n")
    (tree / "live.py").write_bytes(b"l = 1\n")

    def temps() -> list[str]:
        return sorted(name for name in os.listdir(tree) if is_temp(name))

    with child(STOPPED_STAMPER, str(tree / "killed.py")) as killed:
        assert killed.stdout is not None
        assert read_line(killed.stdout) == "ready"
        killed.kill()
        killed.wait(timeout=60)
    left = temps()
    assert len(left) == 1
    assert left[0].startswith(f".killed.py.onex-tmp.{killed.pid}.")

    with child(STOPPED_STAMPER, str(tree / "live.py")) as live:
        assert live.stdout is not None
        assert read_line(live.stdout) == "ready"
        live_temp = next(name for name in temps() if name.startswith(".live.py."))

        verified = subprocess.run(
            [*onex_command(), "verify", str(tree), "--all"], capture_output=True, text=True, env=onex_env(), timeout=300
        )
        assert "onex-tmp" not in verified.stdout  # never looked at as a user file
        assert temps() == sorted([left[0], live_temp])  # and verifying removes nothing

        code, out, err = finished(onex("stamp", str(tree), "--store", f"sqlite:///{tmp_path / 'db'}", cwd=tmp_path))
        assert temps() == [live_temp]  # the dead stamper's is gone, the live one's is not
        assert "onex-tmp" not in out
        assert code == 1, out + err  # live.py is open in the stopped stamper: busy, not replaced
        assert (summary(out)["stamped"], summary(out)["busy"]) == (1, 1), out
        assert find_stamp((tree / "killed.py").read_bytes(), file_name="killed.py") is not None

        say(live, "go")
        assert read_line(live.stdout) == "stamped None"
    assert temps() == []
    assert verify_file(tree / "live.py").status == "valid"
    assert verify_file(tree / "killed.py").status == "valid"


# --- confinement: the stamp roots -----------------------------------------------------------------------------------


def test_stamp_roots_come_from_onex_stamp_roots_and_default_to_the_project_root(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    default = Settings.load(environ={}, root=str(tmp_path))
    assert default.stamp_roots == ()
    assert default.stamp_root_paths() == (str(tmp_path),)

    environ = {"ONEX_STAMP_ROOTS": os.pathsep.join(["/srv/data", "", "data"])}
    configured = Settings.load(environ=environ, root=str(tmp_path))
    assert configured.stamp_roots == (Path("/srv/data"), Path("data"))
    assert configured.stamp_root_paths() == ("/srv/data", str(tmp_path / "data"))  # relative: the root's

    flagged = Settings.load(environ=environ, root=str(tmp_path), stamp_roots=[tmp_path / "x"])
    assert flagged.stamp_roots == (tmp_path / "x",)
    assert Settings.load(environ={"ONEX_STAMP_ROOTS": ""}, root=str(tmp_path)).stamp_roots == ()


@pytest.mark.anyio
async def test_the_effect_touches_only_files_under_its_stamp_roots(tmp_path: Path) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    secret = outside / "secret.py"
    secret.write_bytes(b"password = 'x'\n")
    (allowed / "ok.py").write_bytes(b"x = 1\n")
    (allowed / "link.py").symlink_to(secret)
    rule = f"outside the stamp roots (ONEX_STAMP_ROOTS={allowed})"
    refusals = {
        secret: f"refused: {secret} is {rule}",
        allowed / "link.py": f"refused: {allowed / 'link.py'} (a link to {secret}) is {rule}",
        allowed / ".." / "outside" / "secret.py": f"refused: {secret} is {rule}",
    }

    async with Harness(root=ROOT, stamp_roots=(allowed,)) as h:
        ok = await h.publish("STAMP_REQUESTED", {"file_path": str(allowed / "ok.py"), "namespace": NS})
        sent = {
            path: await h.publish("STAMP_REQUESTED", {"file_path": str(path), "namespace": NS}) for path in refusals
        }
        await h.wait_for("WORKFLOW_COMPLETED", lambda e: e.correlation_id == ok.correlation_id, timeout=60)
        for path, envelope in sent.items():
            cid = envelope.correlation_id
            done = await h.wait_for("WORKFLOW_FAILED", of_workflow(cid), timeout=60)
            failures = [e for e in h.of("STAMP_FAILED") if e.correlation_id == cid]
            assert [(e.payload["error"], e.payload["retryable"]) for e in failures] == [(refusals[path], False)]
            assert refusals[path] in done.payload["error"]

    assert secret.read_bytes() == b"password = 'x'\n"
    assert sorted(os.listdir(outside)) == ["secret.py"]
    assert verify_file(allowed / "ok.py").status == "valid"
