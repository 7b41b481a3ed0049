"""The state_management subcontract: which fields a node keeps, where, versioned how, written when (``onex.state``).

A generic node's keyed state (``Node.state``) is the workshop's ``tally``; the shipped orchestrator shows the same
policy applied to its in-flight workflows; the reducer's totals and windows are in
``tests/integration/test_reducer_state.py``.
Every case runs the real node on the memory bus with a real SQLite store, and changes one field of the subcontract.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest
from onex.clock import ManualClock
from onex.contracts import ContractSet, StateManagementSubcontract, StateSupport, load_contracts
from onex.exceptions import ContractError, StateError, StoreError
from onex.nodes import OrchestratorNode
from onex.resilience import RetryPolicy
from onex.state import KeyedState, StatePolicy, WritesUnderWay
from onex.store import NodeStateRow, WriteBatch
from onex.testing import Harness

pytestmark = pytest.mark.anyio

WORKSHOP = Path(__file__).resolve().parent / "projects" / "workshop"
REPO = Path(__file__).resolve().parents[1]


@functools.cache
def workshop() -> ContractSet:
    return load_contracts(WORKSHOP, env={})


@functools.cache
def shipped() -> ContractSet:
    return load_contracts(REPO, env={})


def with_state(contracts: ContractSet, name: str, **changes: Any) -> ContractSet:
    """``contracts`` with the ``state_management`` subcontract of ``name`` changed as given."""
    contract = contracts.get(name)
    current = contract.subcontracts.state_management or StateManagementSubcontract(version="1.0.0")
    state = current.model_copy(update=changes)
    changed = contract.model_copy(
        update={"subcontracts": contract.subcontracts.model_copy(update={"state_management": state})}
    )
    return ContractSet(contracts.root, [changed if c is contract else c for c in contracts])


def tally(store_url: str, contracts: ContractSet | None = None, **settings: Any) -> Harness:
    return Harness(["tally"], root=WORKSHOP, contracts=contracts or workshop(), store_url=store_url, **settings)


async def add(h: Harness, key: str, amount: int) -> None:
    await h.publish("TALLY", {"key": key, "amount": amount}, partition_key=key)


async def stored(store_url: str, *keys: str) -> dict[str, NodeStateRow]:
    async with Harness([], root=WORKSHOP, contracts=workshop(), store_url=store_url) as h:
        return {row.key: row for row in await h.store.get_node_states("tally", list(keys))}


# --- keyed state of a node -------------------------------------------------------------------------------------


async def test_keyed_state_is_checkpointed_per_batch_and_the_next_process_continues_from_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/onex.db"
    async with tally(url) as h:
        for key, amount in [("a", 1), ("b", 10), ("a", 2)]:
            await add(h, key, amount)
        await h.settle()
        during = {row.key: row for row in await h.store.get_node_states("tally", ["a", "b"])}
    assert {k: r.fields for k, r in during.items()} == {"a": {"count": 2, "total": 3}, "b": {"count": 1, "total": 10}}
    assert all(r.version >= 1 for r in during.values())

    async with tally(url) as h:  # a new process: the key is restored the first time it is seen
        await add(h, "a", 5)
        await h.settle()
    rows = await stored(url, "a")
    assert rows["a"].fields == {"count": 3, "total": 8}
    assert rows["a"].version == during["a"].version + 1


async def test_storage_memory_writes_nothing_and_the_next_process_starts_afresh(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/onex.db"
    contracts = with_state(workshop(), "tally", storage="memory")
    async with tally(url, contracts) as h:
        await add(h, "a", 1)
        await add(h, "a", 2)
        await h.settle()
        node = h.runtime.node("tally")
        assert node.state is not None
        assert await node.state.get("a") == {"count": 2, "total": 3}
    assert await stored(url, "a") == {}


async def test_only_the_listed_state_fields_may_be_set(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/onex.db"
    contracts = with_state(workshop(), "tally", state_fields=("count",))
    async with tally(url, contracts) as h:
        await add(h, "a", 1)
        await h.settle()
        letters = h.dead_letters()
    # The node sets ``total`` too, which the subcontract does not keep: a clear error, dead-lettered with it.
    assert len(letters) == 1
    assert "state field(s) total not in its state_management state_fields (kept: count)" in letters[0].payload["error"]


async def test_versioning_none_writes_version_zero_which_overwrites_any_version(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/onex.db"
    async with tally(url, with_state(workshop(), "tally", versioning="none")) as h:
        await add(h, "a", 1)
        await h.settle()
        first = await h.store.get_node_states("tally", ["a"])
        # Another writer stored a higher version meanwhile: without versioning the last write still wins.
        await h.store.apply(WriteBatch(node_states=[NodeStateRow("tally", "a", 50, {"count": 100, "total": 100})]))
        await add(h, "a", 1)
        await h.settle()
        last = await h.store.get_node_states("tally", ["a"])
    assert [(r.version, r.fields) for r in first] == [(0, {"count": 1, "total": 1})]
    assert [(r.version, r.fields) for r in last] == [(0, {"count": 2, "total": 2})]


async def test_monotonic_versioning_never_overwrites_a_newer_checkpoint(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/onex.db"
    async with tally(url) as h:
        await add(h, "a", 1)
        await h.settle()
        # A replica that took the key over wrote version 50; this one, stale, writes its version 2: refused.
        await h.store.apply(WriteBatch(node_states=[NodeStateRow("tally", "a", 50, {"count": 100, "total": 100})]))
        await add(h, "a", 1)
        await h.settle()
        rows = await h.store.get_node_states("tally", ["a"])
    assert [(r.version, r.fields) for r in rows] == [(50, {"count": 100, "total": 100})]


async def test_checkpoint_interval_ms_writes_on_the_nodes_clock_and_draining_writes_what_is_pending(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/onex.db"
    clock = ManualClock()
    contracts = with_state(workshop(), "tally", checkpoint="interval_ms", interval_ms=1_000)
    async with tally(url, contracts, clock=clock) as h:
        await add(h, "a", 1)
        await h.settle()
        assert await h.store.get_node_states("tally", ["a"]) == []  # handled and acknowledged, not written yet
        await clock.advance(1.0)
        after_interval = await h.store.get_node_states("tally", ["a"])
        await add(h, "a", 2)
        await h.settle()
    assert [r.fields for r in after_interval] == [{"count": 1, "total": 1}]
    assert (await stored(url, "a"))["a"].fields == {"count": 2, "total": 3}  # written when the harness drained


async def test_a_key_whose_partition_moves_away_is_forgotten_and_loaded_afresh_when_it_comes_back(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/onex.db"
    async with tally(url) as h:
        await add(h, "a", 1)
        await h.settle()
        node = h.runtime.node("tally")
        assert node.state is not None
        assert "a" in node.state
        # Its partition goes to another replica, which counts on and writes version 7.
        await node._assigned(frozenset())
        assert "a" not in node.state
        await h.store.apply(WriteBatch(node_states=[NodeStateRow("tally", "a", 7, {"count": 9, "total": 9})]))
        await add(h, "a", 1)  # it comes back: continued from what the other replica wrote
        await h.settle()
        rows = await h.store.get_node_states("tally", ["a"])
    assert [(r.version, r.fields) for r in rows] == [(8, {"count": 10, "total": 10})]


async def test_keyed_state_on_its_own_refuses_unknown_fields_and_reports_what_it_wrote(tmp_path: Path) -> None:
    async with Harness([], root=WORKSHOP, contracts=workshop(), store_url=f"sqlite:///{tmp_path}/onex.db") as h:
        policy = StatePolicy.of(StateManagementSubcontract(version="1.0.0", state_fields=("n",)), StateSupport())

        async def hold(call: Any) -> Any:
            return await call()

        state = KeyedState("solo", policy, h.store, hold=hold, clock=ManualClock())
        with pytest.raises(StateError, match="state field\\(s\\) m not in"):
            state.set("k", m=1)
        state.set("k", n=1)
        state.set("j", n=2)
        assert await state.checkpoint() == 2
        assert await state.checkpoint() == 0  # nothing changed since
        rows = await h.store.get_node_states("solo", ["j", "k"])
    assert sorted((r.key, r.version, r.fields["n"]) for r in rows) == [("j", 1, 2), ("k", 1, 1)]


def gated_state(h: Harness) -> tuple[KeyedState, asyncio.Event, list[str], list[object]]:
    """A KeyedState whose writes wait for the returned event; a failure is injected by putting text in the first
    list; the second holds each write handed to the store."""
    policy = StatePolicy.of(StateManagementSubcontract(version="1.0.0", state_fields=("n",)), StateSupport())
    release, failures, started = asyncio.Event(), list[str](), list[object]()

    async def held(call: Any) -> Any:
        started.append(call)
        await release.wait()
        if failures:
            raise StoreError(failures.pop())
        return await call()

    return KeyedState("solo", policy, h.store, hold=held, clock=ManualClock()), release, failures, started


async def test_a_checkpoint_returns_only_once_what_a_checkpoint_under_way_took_is_written(tmp_path: Path) -> None:
    async with Harness([], root=WORKSHOP, contracts=workshop(), store_url=f"sqlite:///{tmp_path}/onex.db") as h:
        state, release, _, _ = gated_state(h)
        state.set("k", n=1)
        first = asyncio.create_task(state.checkpoint())  # takes k and waits to write it
        await anyio.wait_all_tasks_blocked()
        # Another batch that changed k before this call (another partition's worker): k is not written yet.
        second = asyncio.create_task(state.checkpoint())
        await anyio.wait_all_tasks_blocked()
        returned_early = second.done()
        release.set()
        assert (await first, await second) == (1, 0)
        assert not returned_early
        rows = await h.store.get_node_states("solo", ["k"])
    assert [(r.key, r.fields) for r in rows] == [("k", {"n": 1})]


async def test_checkpoints_write_side_by_side_and_an_earlier_ones_failure_fails_the_later(tmp_path: Path) -> None:
    async with Harness([], root=WORKSHOP, contracts=workshop(), store_url=f"sqlite:///{tmp_path}/onex.db") as h:
        state, release, failures, started = gated_state(h)
        state.set("k", n=1)
        first = asyncio.create_task(state.checkpoint())
        await anyio.wait_all_tasks_blocked()
        state.set("j", n=2)
        second = asyncio.create_task(state.checkpoint())
        await anyio.wait_all_tasks_blocked()
        # Both writes were handed to the store (one at a time would queue the second behind the first's round trip:
        # the store groups writes that wait together, SQLite into one transaction).
        assert len(started) == 2
        failures.append("disk full (injected)")
        release.set()
        with pytest.raises(StoreError, match="disk full"):
            await first
        with pytest.raises(StoreError, match="disk full"):  # j was written, but k, changed before it, was not
            await second
        assert await state.checkpoint() == 2  # k again, and j (its batch failed: written again, a new version)
        rows = await h.store.get_node_states("solo", ["j", "k"])
    assert sorted((r.key, r.fields["n"]) for r in rows) == [("j", 2), ("k", 1)]


async def test_a_checkpoint_whose_earlier_write_is_cancelled_raises_store_error() -> None:
    """A write under way cancelled (its node stops) fails the checkpoints waiting for it with a StoreError, not a
    CancelledError: the waiting batch itself was not cancelled, and it must not be acknowledged."""
    writes, gate = WritesUnderWay(), asyncio.Event()
    first = asyncio.create_task(writes.write(gate.wait))
    await anyio.wait_all_tasks_blocked()
    second = asyncio.create_task(writes.write(None))  # took nothing: only waits for the first
    await anyio.wait_all_tasks_blocked()
    first.cancel()
    with pytest.raises(StoreError, match="was cancelled"):
        await second
    with pytest.raises(asyncio.CancelledError):
        await first
    await writes.write(None)  # the cancelled write is no longer under way: no error now


async def test_waiting_for_an_earlier_write_is_holding_and_does_not_run_the_handlers_timeout_out() -> None:
    """A batch whose checkpoint waits for a write held by a store outage is held too: its handler's timeout_ms does
    not expire meanwhile (the outage is the store's to report), and it returns once that write is done."""
    clock, writes, store_back = ManualClock(), WritesUnderWay(), asyncio.Event()
    earlier = asyncio.create_task(writes.write(store_back.wait))
    await anyio.wait_all_tasks_blocked()
    policy = RetryPolicy(timeout_ms=1_000, clock=clock)

    async def batch(_: None) -> None:
        await writes.write(None)

    attempt = asyncio.ensure_future(policy.run(batch, None))
    await anyio.wait_all_tasks_blocked()
    await clock.advance(3.0)  # three timeouts pass while the earlier write is held
    assert not attempt.done()
    store_back.set()
    await attempt  # no TimeoutError
    await earlier


# --- the orchestrator's in-flight workflows ----------------------------------------------------------------------


def orchestrator(h: Harness) -> OrchestratorNode:
    node = h.runtime.node("orchestrator")
    assert isinstance(node, OrchestratorNode)
    return node


def stamp_request(i: int) -> dict[str, str]:
    return {"content": f"print({i})\n", "file_path": f"f{i}.py", "namespace": "state"}


async def test_an_orchestrator_with_storage_memory_checkpoints_no_workflow(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/onex.db"
    contracts = with_state(shipped(), "orchestrator", storage="memory")
    # No stamping effect: the workflow stays in flight, where only a checkpoint would have written its row.
    async with Harness(["orchestrator"], root=REPO, contracts=contracts, store_url=url) as h:
        sent = await h.publish("STAMP_REQUESTED", stamp_request(1))
        await h.settle()
        assert sent.correlation_id is not None
        assert await h.store.get_workflow(sent.correlation_id) is None
        assert orchestrator(h).workflows  # it runs, in memory only


async def test_an_orchestrator_with_storage_memory_takes_over_no_stored_workflow(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/onex.db"
    async with Harness(["orchestrator"], root=REPO, store_url=url) as first:
        sent = await first.publish("STAMP_REQUESTED", stamp_request(1))
        await first.settle()
    contracts = with_state(shipped(), "orchestrator", storage="memory")
    async with Harness(["orchestrator"], root=REPO, contracts=contracts, store_url=url) as second:
        await second.settle()
        assert not orchestrator(second).workflows
        assert second.of("STAMP_FILE") == []  # the stored workflow is not resumed
    assert sent.correlation_id is not None


async def test_an_orchestrator_checkpointing_on_an_interval_writes_its_workflows_when_the_interval_passes(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/onex.db"
    clock = ManualClock()
    contracts = with_state(shipped(), "orchestrator", checkpoint="interval_ms", interval_ms=500)
    async with Harness(["orchestrator"], root=REPO, contracts=contracts, store_url=url, clock=clock) as h:
        sent = await h.publish("STAMP_REQUESTED", stamp_request(1))
        await h.settle()
        assert sent.correlation_id is not None
        before = await h.store.get_workflow(sent.correlation_id)
        await clock.advance(0.5)
        after = await h.store.get_workflow(sent.correlation_id)
    assert before is None
    assert after is not None
    assert after.checkpoint is not None
    assert after.checkpoint["state"] == "processing"


async def test_an_orchestrator_keeps_the_context_only_when_state_fields_list_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/onex.db"
    # The assembler (a plain OrchestratorNode) can resume without its context; the stamping orchestrator cannot.
    contracts = with_state(shipped(), "orchestrator", state_fields=("state", "steps"))
    async with Harness(["orchestrator"], root=REPO, contracts=contracts, store_url=url) as h:
        sent = await h.publish("STAMP_REQUESTED", stamp_request(1))
        await h.settle()
        assert sent.correlation_id is not None
        row = await h.store.get_workflow(sent.correlation_id)
    assert row is not None
    assert row.checkpoint is not None
    assert set(row.checkpoint) == {"v", "state", "seq", "steps"}


# --- onex validate -------------------------------------------------------------------------------------------------


def project_with(tmp_path: Path, state_management: str) -> Path:
    """A copy of the workshop whose assembler (an orchestrator) has the given state_management block."""
    root = tmp_path / "project"
    shutil.copytree(WORKSHOP, root)
    contract = root / "contracts" / "orchestrators" / "assembler.yaml"
    text = contract.read_text()
    assert "subcontracts:\n" in text
    contract.write_text(text.replace("subcontracts:\n", "subcontracts:\n" + state_management, 1))
    return root


def problems(root: Path) -> list[str]:
    with pytest.raises(ContractError) as caught:
        load_contracts(root, env={})
    return [f"{i.path}:{i.line}:{i.column}: [{i.code}] {i.message}" for i in caught.value.issues]


def test_validate_reports_state_fields_and_choices_the_node_cannot_honour(tmp_path: Path) -> None:
    root = project_with(
        tmp_path,
        "  state_management:\n    version: 1.0.0\n    state_fields: [state, stepz]\n    checkpoint: per_window\n",
    )
    found = problems(root)
    text = (root / "contracts" / "orchestrators" / "assembler.yaml").read_text().splitlines()
    line = next(i for i, t in enumerate(text, 1) if "stepz" in t)
    column = text[line - 1].index("stepz") + 1
    assert any(
        p.startswith(f"contracts/orchestrators/assembler.yaml:{line}:{column}: [state-field]")
        and "no state field 'stepz'" in p
        and "did you mean 'steps'" in p
        for p in found
    ), found
    assert any("[state-field]" in p and "must include steps" in p for p in found), found
    assert any(
        "[state-choice]" in p and "checkpoint: per_window" in p and "per_batch | interval_ms" in p for p in found
    )


def test_validate_reports_a_checkpoint_interval_without_its_milliseconds_at_its_position(tmp_path: Path) -> None:
    root = project_with(
        tmp_path,
        "  state_management:\n    version: 1.0.0\n    state_fields: [state, steps]\n    checkpoint: interval_ms\n",
    )
    found = problems(root)
    text = (root / "contracts" / "orchestrators" / "assembler.yaml").read_text().splitlines()
    line = next(i for i, t in enumerate(text, 1) if "checkpoint: interval_ms" in t)
    assert any(f"assembler.yaml:{line}:17: [state-checkpoint]" in p for p in found), found
