"""Reloading contracts in a running process (``onex run --reload``): changed nodes are swapped, broken ones not."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from onex.contracts import load_contracts
from onex.testing import Harness, ManualClock

from tests.test_cli import ROOT as REPO
from tests.test_cli import command, environment
from tests.test_orchestration import ROOT as WORKSHOP
from tests.test_orchestration import build, finished, step_done
from tests.test_routing import ARCHIVE, EFFECTS, MAIN, files, route, stamp, stamped_by, with_archive

pytestmark = pytest.mark.anyio


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "workshop"
    shutil.copytree(WORKSHOP, root)
    return root


def assembler_contract(project: Path) -> Path:
    return project / "contracts" / "orchestrators" / "assembler.yaml"


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


async def test_a_changed_contract_swaps_its_node_and_the_new_one_takes_over(project: Path) -> None:
    clock = ManualClock()
    async with Harness(["assembler", "greeter"], root=project, clock=clock) as h:
        old, greeter = h.runtime.node("assembler"), h.runtime.node("greeter")
        edit(assembler_contract(project), '"${WORKSHOP_STEP_B_TIMEOUT_MS:30000}"', "250")

        reloaded = await h.runtime.reload(load_contracts(project))

        new = h.runtime.node("assembler")
        assert reloaded == ["assembler"]
        assert new is not old
        assert old.lifecycle.value == "stopped"
        assert new.lifecycle.value == "running"
        assert h.runtime.node("greeter") is greeter  # its contract did not change: untouched
        assert [s.timeout_ms for s in new.steps if s.step_name == "b"] == [250]  # type: ignore[attr-defined]

        fresh = await build(h, item="stool")
        await step_done(h, fresh, "a")
        await clock.advance(0.3)  # past the new 250 ms timeout of step b: failed by the new node's sweeper
        await h.settle()

    assert [e.event_type for e in finished(h, fresh)] == ["BUILD_FAILED"]
    assert finished(h, fresh)[0].payload["error"] == "b: step b timed out after 250 ms"


async def test_what_is_published_while_a_node_is_swapped_reaches_its_replacement(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the old node leaving its consumer groups and the new one joining them, a result of the old node's
    command arrives: it waits in the group for the new node, which finishes the workflow with it."""
    async with Harness(["assembler"], root=project, clock=ManualClock()) as h:
        old = h.runtime.node("assembler")
        cid = await build(h)  # steps a and b dispatched
        real_stop = old.stop

        async def stop_then_a_result_arrives() -> None:
            await real_stop()
            await h.publish("STEP_DONE", {"workflow_id": str(cid), "step": "a", "ok": True})

        monkeypatch.setattr(old, "stop", stop_then_a_result_arrives)
        edit(assembler_contract(project), '"${WORKSHOP_STEP_B_TIMEOUT_MS:30000}"', "20000")
        assert await h.runtime.reload(load_contracts(project)) == ["assembler"]
        await h.settle()
        for name in ("b", "c"):
            await step_done(h, cid, name)

    assert [e.event_type for e in finished(h, cid)] == ["BUILD_COMPLETED"]


async def test_a_group_handed_over_to_nobody_stops_taking_messages(project: Path) -> None:
    """A reload whose new node could not start leaves the groups without members: they stop keeping what is published
    for them, as they would have, and the bus settles."""
    async with Harness(["assembler"], root=project, clock=ManualClock()) as h:
        node = h.runtime.node("assembler")
        await h.settle()
        before = h.bus.statistics().buffered
        async with h.bus.handing_over():
            await node.stop()
            await h.publish("BUILD_REQUESTED", {"item": "chair"})  # kept for whoever joins next
        await h.settle()  # returns: what the group kept no longer counts as waiting to be handled
        assert h.bus.statistics().buffered == before + 1
        await build(h)
        assert h.bus.statistics().buffered == before + 1  # the request built after the hand-over is not for it


async def test_a_routing_change_moves_the_effects_it_routes_to_not_only_the_orchestrator(tmp_path: Path) -> None:
    """Swapping a round robin's targets changes only the orchestrator's contract, yet it moves both effects' topics:
    the first target now reads the event's own topic and the other one a topic of its own. Every command after the
    reload reaches the effect it was routed to; none is read by the other effect, none is left on a topic nobody
    reads."""
    root = with_archive(tmp_path / "project")
    targets = f"  - {{name: m, service: {MAIN}}}\n  - {{name: a, service: {ARCHIVE}}}\n"
    route(root, "strategy: round_robin\ntargets:\n" + targets)
    async with Harness(EFFECTS, root=root, clock=ManualClock()) as h:
        before = [await stamp(h, path) for path in files(tmp_path / "before", ["b0.py", "b1.py"])]
        await h.settle()
        assert sorted(stamped_by(h).values()) == [MAIN, ARCHIVE]

        swapped = f"  - {{name: a, service: {ARCHIVE}}}\n  - {{name: m, service: {MAIN}}}\n"
        route(root, "strategy: round_robin\ntargets:\n" + swapped)
        reloaded = await h.runtime.reload(load_contracts(root))

        assert sorted(reloaded) == sorted(EFFECTS)  # the effects' contracts did not change; their topics did
        after = [await stamp(h, path) for path in files(tmp_path / "after", [f"a{i}.py" for i in range(4)])]
        await h.settle()

        by = stamped_by(h)
        assert set(by) == {*before, *after}  # every workflow completed: no command left unread
        # Round robin over two: two each. Had the effects kept their topics, the archive's two would have reached
        # stamping_effect and stamping_effect's two a topic nobody reads.
        assert sorted(by[cid] for cid in after) == sorted([MAIN, MAIN, ARCHIVE, ARCHIVE])
        assert not h.dead_letters()


async def test_the_watcher_reloads_on_a_change_and_keeps_running_on_a_broken_one(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    async with Harness(["assembler"], root=project, clock=clock) as h:
        watcher = h.runtime.watch_contracts(interval_s=1.0)
        first = h.runtime.node("assembler")

        with caplog.at_level(logging.INFO, logger="onex.runtime"):
            assembler_contract(project).write_text(assembler_contract(project).read_text() + "  oops: [\n")
            await clock.advance(1.0)
            assert h.runtime.node("assembler") is first  # the broken version is not loaded
            refused = [
                r.getMessage() for r in caplog.records if getattr(r, "onex", {}).get("event") == "reload_refused"
            ]
            assert any(line.startswith(f"{Path('contracts/orchestrators/assembler.yaml')}:") for line in refused), (
                refused
            )
            assert "still running the previous version" in refused[-1]

            text = assembler_contract(project).read_text().removesuffix("  oops: [\n")
            assembler_contract(project).write_text(text.replace('"${WORKSHOP_STEP_B_TIMEOUT_MS:30000}"', "400"))
            await clock.advance(1.0)
            second = h.runtime.node("assembler")
            assert second is not first
            assert [s.timeout_ms for s in second.steps if s.step_name == "b"] == [400]  # type: ignore[attr-defined]

            await clock.advance(5.0)  # nothing changed since: no reload
            assert h.runtime.node("assembler") is second

        cid = await build(h, item=str(uuid.uuid4()))
        for name in ("a", "b", "c"):
            await step_done(h, cid, name)
        watcher.cancel()

    assert [e.event_type for e in finished(h, cid)] == ["BUILD_COMPLETED"]  # the reloaded node does the work


async def test_workflows_in_flight_are_finished_by_the_node_that_replaced_theirs(project: Path) -> None:
    async with Harness(["assembler"], root=project, clock=ManualClock()) as h:
        old = h.runtime.node("assembler")
        cid = await build(h)  # a and b dispatched; their results arrive after the reload
        edit(
            assembler_contract(project),
            "{step_name: polish, depends_on: [c], optional: true}",
            "{step_name: polish, depends_on: [c]}",
        )

        assert await h.runtime.reload(load_contracts(project)) == ["assembler"]
        for name in ("a", "b", "c"):
            await step_done(h, cid, name)

    outcome = finished(h, cid)
    assert [e.event_type for e in outcome] == ["BUILD_COMPLETED"]  # finished, not failed as interrupted
    assert outcome[0].source_node_id == h.runtime.node("assembler").node_id
    assert h.runtime.node("assembler") is not old


def test_onex_run_reload_swaps_a_node_whose_contract_file_changed(tmp_path: Path) -> None:
    """The CLI, as an operator runs it: `onex run --reload`, a contract edited on disk, the node reloaded."""
    for part in ("contracts", "subcontracts", "nodes"):
        shutil.copytree(REPO / part, tmp_path / part)
    env = {**environment(), "ONEX_LOG_FORMAT": "json", "ONEX_HEARTBEAT_INTERVAL_S": "0"}
    proc = subprocess.Popen(
        [
            *command(),
            "--root",
            str(tmp_path),
            "run",
            "--reload",
            "--node",
            "stamping_effect",
            "--store",
            f"sqlite:///{tmp_path}/onex.db",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    watchdog = threading.Timer(60, proc.kill)  # a generous bound on the whole conversation, not a timing claim
    watchdog.start()

    def until(wanted: Callable[[str], bool]) -> str:
        """The next stderr line ``wanted`` accepts (the process is killed by the watchdog if none comes)."""
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if wanted(line):
                return line
        raise AssertionError("".join(seen))

    def event_of(line: str) -> object:
        return json.loads(line).get("event") if line.startswith("{") else None

    try:
        until(lambda line: "watching" in line)
        contract = tmp_path / "contracts" / "effects" / "stamping_effect.yaml"
        contract.write_text(contract.read_text().replace("thread_offload_bytes: 262144", "thread_offload_bytes: 1024"))
        reloading = json.loads(until(lambda line: event_of(line) == "reloading"))
        until(lambda line: event_of(line) == "reloaded")
        proc.send_signal(signal.SIGTERM)
        seen += proc.stderr.readlines()
        assert proc.wait() == 0, "".join(seen)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert str(reloading["node"]).startswith("stamping_effect-1.0.0-")
    assert "reloading stamping_effect 1.0.0 -> 1.0.0" in reloading["message"]
