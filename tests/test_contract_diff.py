"""``onex contract diff`` and the version warning of ``onex validate``: what changed, and whether it breaks."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from onex.contracts.diff import diff_files, is_breaking
from onex.exceptions import OnexError

from tests.test_cli import onex
from tests.test_contracts import GREETER, GREETING_EVENTS, GREETING_FSM, NODE_FIXTURES, write

CONTRACT = "contracts/effects/greeter.yaml"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(NODE_FIXTURES, root / "nodes")
    write(root, CONTRACT, GREETER)
    write(root, "subcontracts/fsm/greeting.yaml", GREETING_FSM)
    write(root, "subcontracts/event_type/greeting.yaml", GREETING_EVENTS)
    return root


def changed(project: Path, relative: str, old: str, new: str) -> Path:
    """A copy of ``relative`` next to it (``.new.yaml``) with ``old`` replaced by ``new``."""
    source = project / relative
    text = source.read_text()
    assert old in text, old
    target = source.with_suffix(".new.yaml")
    target.write_text(text.replace(old, new))
    return target


def git(project: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=project,
        check=True,
        capture_output=True,
    )


def committed(project: Path) -> None:
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "first")


def test_the_same_contract_has_no_changes(project: Path) -> None:
    assert diff_files(str(project / CONTRACT), project / CONTRACT, root=project, env={}) == []


EVENTS = """\
    subcontract_type: event_type
    version: 1.0.0
    consumes:
      - event_name: GREETING_REQUESTED
        handler: handle_greeting_requested
        external: true
        payload_schema:
          type: object
          additionalProperties: false
          properties: {name: {type: string}, lang: {type: string}}
          required: [name]
    publishes:
      - event_name: GREETED
        payload_schema:
          type: object
          additionalProperties: false
          properties: {greeting: {type: string}, count: {type: integer}}
    """


def test_payload_changes_break_the_side_that_reads_what_the_other_side_made(project: Path) -> None:
    """A consumed event's payloads are made by producers on the old schema; a published event's are read by
    consumers on the old schema."""
    write(project, "subcontracts/event_type/greeting.yaml", EVENTS)
    write(
        project,
        "subcontracts/event_type/greeting_v2.yaml",
        EVENTS.replace(
            "properties: {name: {type: string}, lang: {type: string}}",
            "properties: {name: {type: string}, who: {type: string}}",
        )
        .replace("required: [name]", "required: [name, who]")
        .replace(
            "properties: {greeting: {type: string}, count: {type: integer}}",
            "properties: {greeting: {type: string}, count: {type: number}, when: {type: string}}",
        ),
    )
    new = changed(project, CONTRACT, "event_type/greeting.yaml}", "event_type/greeting_v2.yaml}")

    changes = {c.where: c for c in diff_files(str(project / CONTRACT), new, root=project, env={})}

    consumed, published = "events.consumes.GREETING_REQUESTED.payload", "events.publishes.GREETED.payload"
    assert (changes[f"{consumed}.lang"].change, changes[f"{consumed}.lang"].verdict) == ("field removed", "breaking")
    assert (changes[f"{consumed}.who"].change, changes[f"{consumed}.who"].verdict) == (
        "required field added",
        "breaking",
    )
    assert (changes[f"{published}.count"].change, changes[f"{published}.count"].verdict) == (
        "type integer -> number",
        "breaking",
    )
    assert (changes[f"{published}.when"].change, changes[f"{published}.when"].verdict) == (
        "optional field added",
        "breaking",
    )
    assert "refuse a field they do not know" in changes[f"{published}.when"].reason
    # The same changes the other way round: a consumed field widened, a published field removed, are compatible.
    back = diff_files(str(new), project / CONTRACT, root=project, env={})
    assert {c.where: c.verdict for c in back}[f"{published}.when"] == "compatible"


def test_a_removed_state_or_trigger_breaks_and_an_added_one_does_not(project: Path) -> None:
    fsm = changed(
        project,
        "subcontracts/fsm/greeting.yaml",
        "  - {transition_name: fail, from_state: '*', to_state: failed, trigger: fail}",
        "  - {transition_name: give_up, from_state: '*', to_state: failed, trigger: give_up}",
    )
    new = changed(project, CONTRACT, "subcontracts/fsm/greeting.yaml", str(fsm.relative_to(project)))

    changes = diff_files(str(project / CONTRACT), new, root=project, env={})

    assert [(c.where, c.change, c.verdict) for c in changes] == [
        ("fsm.triggers.fail", "removed", "breaking"),
        ("fsm.triggers.give_up", "added", "compatible"),
    ]
    assert is_breaking(changes)


def test_a_removed_consumed_event_breaks_and_config_changes_do_not(project: Path) -> None:
    events = changed(
        project,
        "subcontracts/event_type/greeting.yaml",
        "consumes:\n  - event_name: GREETING_REQUESTED",
        "consumes:\n  - event_name: GREETING_ASKED",
    )
    new = changed(
        project, CONTRACT, "../../subcontracts/event_type/greeting.yaml", f"../../{events.relative_to(project)}"
    )
    new.write_text(
        new.read_text().replace("hello", "hi") + "performance_requirements: {execution_time: {target_ms: 50}}\n"
    )

    changes = {(c.where, c.change): c.verdict for c in diff_files(str(project / CONTRACT), new, root=project, env={})}

    assert changes[("events.consumes.GREETING_REQUESTED", "removed")] == "breaking"
    assert changes[("events.consumes.GREETING_ASKED", "added")] == "compatible"
    assert changes[("config.greeting", "'hello' -> 'hi'")] == "compatible"
    [objective] = [(where, verdict) for (where, _), verdict in changes.items() if where.startswith("performance")]
    assert objective == ("performance_requirements.execution_time", "compatible")


def test_the_cli_compares_with_the_committed_version_and_exits_1_on_a_breaking_change(project: Path) -> None:
    committed(project)
    fsm = project / "subcontracts/fsm/greeting.yaml"
    fsm.write_text(fsm.read_text().replace("trigger: fail}", "trigger: give_up}"))

    done = onex("contract", "diff", "git:HEAD", CONTRACT, "-o", "json", cwd=project, root=project)

    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["breaking"] is True
    assert {"where": "fsm.triggers.fail", "change": "removed", "verdict": "breaking"}.items() <= report["changes"][
        0
    ].items()

    unchanged = onex("contract", "diff", "git:HEAD", "subcontracts/../" + CONTRACT, cwd=project, root=project)
    assert unchanged.returncode == 1  # the same comparison, spelled another way
    assert onex("contract", "diff", "nowhere.yaml", CONTRACT, cwd=project, root=project).returncode == 2


def test_git_ref_compares_only_a_file_of_the_project(project: Path, tmp_path: Path) -> None:
    """git knows the project's files only: a NEW outside the root is one line naming the file and the root, said
    before NEW is loaded (a copy's $refs would resolve outside the root and hide the reason)."""
    committed(project)
    lone = write(tmp_path, "lone.yaml", "contract_version: 2.0.0\nname: lone\nversion: 1.0.0\nnode_type: EFFECT\n")
    copy = Path(shutil.copy(project / CONTRACT, tmp_path / "greeter.yaml"))

    for outside in (lone, copy):
        said = f"{outside} is outside the project root {project}: git:HEAD compares a file of the project"
        with pytest.raises(OnexError, match=re.escape(said)):
            diff_files("git:HEAD", outside, root=project, env={})
    done = onex("contract", "diff", "git:HEAD", str(lone), cwd=project, root=project)

    assert done.returncode == 2  # a usage error: exit 1 says a change breaks
    [line] = done.stderr.splitlines()
    assert f"{lone} is outside the project root {project}: git:HEAD compares a file of the project" in line


def test_validate_warns_about_an_incompatible_change_that_keeps_its_major_version(project: Path) -> None:
    committed(project)
    fsm = project / "subcontracts/fsm/greeting.yaml"
    fsm.write_text(fsm.read_text().replace("trigger: fail}", "trigger: give_up}"))

    same_major = onex("validate", cwd=project, root=project)
    assert same_major.returncode == 0, same_major.stdout + same_major.stderr
    assert "warning: contracts/effects/greeter.yaml: 1 incompatible change(s) since HEAD" in same_major.stderr
    assert "fsm.triggers.fail removed" in same_major.stderr

    contract = project / CONTRACT
    contract.write_text(
        contract.read_text().replace(
            "version: 1.0.0\n", "version: 2.0.0\nimplementation: nodes.greeter.v1_0_0.node:NodeGreeter\n", 1
        )
    )
    new_major = onex("validate", cwd=project, root=project)
    assert new_major.returncode == 0, new_major.stdout + new_major.stderr
    assert "warning" not in new_major.stderr


def test_a_consumed_events_batch_size_is_a_compatible_change(project: Path) -> None:
    events = changed(
        project,
        "subcontracts/event_type/greeting.yaml",
        "    external: true\n",
        "    external: true\n    batch: true\n    max_batch: 50\n",
    )
    new = changed(
        project, CONTRACT, "../../subcontracts/event_type/greeting.yaml", f"../../{events.relative_to(project)}"
    )

    changes = diff_files(str(project / CONTRACT), new, root=project, env={})

    assert [(c.where, c.change, c.verdict) for c in changes] == [
        ("events.consumes.GREETING_REQUESTED.batch", "False -> True", "compatible"),
        ("events.consumes.GREETING_REQUESTED.max_batch", "None -> 50", "compatible"),
    ]


def test_an_old_side_written_for_an_earlier_onex_is_compared_whatever_this_ones_checks_refuse(project: Path) -> None:
    """A committed contract using a field this onex refuses (``condition_name``, read by nothing) is what the
    comparison starts from, not a load error: every contract committed before the refusal came would be one."""
    fsm = project / "subcontracts/fsm/greeting.yaml"
    fsm.write_text(
        fsm.read_text().replace(
            "{expression: name min_length 1}", "{condition_name: named, expression: name min_length 1}"
        )
    )
    committed(project)
    fsm.write_text(
        fsm.read_text().replace("condition_name: named, ", "").replace("trigger: fail}", "trigger: give_up}")
    )

    changes = diff_files("git:HEAD", project / CONTRACT, root=project, env={})
    assert [(c.where, c.change, c.verdict) for c in changes if c.verdict == "breaking"] == [
        ("fsm.triggers.fail", "removed", "breaking")
    ]
    warned = onex("validate", cwd=project, root=project)
    assert warned.returncode == 0, warned.stdout + warned.stderr
    assert "1 incompatible change(s) since HEAD" in warned.stderr
