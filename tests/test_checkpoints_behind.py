"""``ONEX_SYNCHRONOUS_CHECKPOINTS=off``: on the memory bus the orchestrator writes its checkpoints behind its batches.

By default a batch's checkpoint write begins before anything the batch produced is published, and a workflow's outcome
is published only once the writes begun before its batch are stored; on the memory bus the next batch does not wait for
the write (on Kafka a batch is acknowledged only once it is stored). Off, on a bus that retains nothing, one task at a
time writes what is dirty: outcomes do not wait for it, a workflow that finished before it was written is never written,
and draining (or ``Harness.settle``) waits for it. Kafka ignores the setting. The store's ``apply`` is held here by a
gate, so what waits for what is seen without timing anything.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest
from onex._kafka import KafkaBus
from onex.bus import MemoryBus
from onex.contracts import load_contracts, resolve_implementation
from onex.envelope import OnexEnvelopeV1
from onex.exceptions import StoreError
from onex.nodes import OrchestratorNode
from onex.settings import Settings
from onex.store import WriteBatch
from onex.stores import open_store
from onex.testing import Harness

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
NS = "onex.test.behind"


def request(i: int) -> dict[str, str]:
    return {"content": f"print({i})\n", "file_path": f"f{i}.py", "namespace": NS}


def gate(h: Harness) -> tuple[asyncio.Event, list[list[uuid.UUID]]]:
    """Hold every checkpoint write (a batch of workflow rows) until the returned event is set; the ids of each
    written, in order."""
    release, written = asyncio.Event(), []
    apply: Callable[[WriteBatch], Awaitable[None]] = h.store.apply

    async def held(batch: WriteBatch) -> None:
        if batch.workflows:
            await release.wait()
            written.append([w.correlation_id for w in batch.workflows])
        await apply(batch)

    h.store.apply = held  # type: ignore[method-assign]
    return release, written


def cids(*sent: OnexEnvelopeV1) -> list[uuid.UUID]:
    return [e.correlation_id for e in sent if e.correlation_id is not None]


def command_of(cid: uuid.UUID | None) -> Callable[[OnexEnvelopeV1], bool]:
    return lambda e: e.correlation_id == cid


async def test_the_next_batch_does_not_wait_for_the_checkpoint_written_behind() -> None:
    async with Harness(["orchestrator"], root=ROOT, partitions=1, synchronous_checkpoints=False) as h:
        release, written = gate(h)
        first = await h.publish("STAMP_REQUESTED", request(1))
        await h.wait_for("STAMP_FILE", command_of(first.correlation_id))
        second = await h.publish("STAMP_REQUESTED", request(2))
        # The first checkpoint is held, and the one partition's worker takes the second request all the same.
        await h.wait_for("STAMP_FILE", command_of(second.correlation_id))
        assert written == []
        assert await h.store.get_workflow(cids(first)[0]) is None

        release.set()
        await h.settle()  # waits for the write behind, as for the bus
        assert sorted(cid for batch in written for cid in batch) == sorted(cids(first, second))
        for cid in cids(first, second):
            row = await h.store.get_workflow(cid)
            assert row is not None
            assert row.checkpoint is not None
            assert row.checkpoint["state"] == "processing"


async def test_by_default_an_outcome_waits_for_its_workflows_checkpoint_and_the_next_batch_does_not() -> None:
    # The stamping effect answers while the first request's checkpoint is held: the orchestrator handles the result
    # and finishes the workflow, but its outcome (what a client is told) goes out only once that write is stored.
    async with Harness(["orchestrator", "stamping_effect"], root=ROOT, partitions=1) as h:
        release, written = gate(h)
        try:
            first = await h.publish("STAMP_REQUESTED", request(1))
            await h.wait_for("STAMP_CREATED", command_of(first.correlation_id))
            await anyio.wait_all_tasks_blocked()
            assert h.of("WORKFLOW_COMPLETED") == []  # held behind the write
            second = await h.publish("STAMP_REQUESTED", request(2))
            await h.wait_for("STAMP_FILE", command_of(second.correlation_id))  # the next batch is not held
            assert written == []
        finally:
            release.set()  # leaving the harness waits for the held writes
        outcome = await h.wait_for("WORKFLOW_COMPLETED", command_of(first.correlation_id))
        assert written[0] == cids(first)  # stored before it was published (the gate appends, then writes)
        assert outcome.correlation_id == first.correlation_id
        await h.settle()
        assert sorted(cid for batch in written for cid in batch) == sorted(cids(first, second))


async def test_where_messages_are_kept_a_batch_waits_for_its_checkpoint_before_the_next() -> None:
    # On Kafka a batch is acknowledged once its checkpoint is stored: the partition's next batch waits for it. The
    # memory bus is told it keeps messages (``retains_messages``, as KafkaBus says), so what waits is seen in process.
    async with Harness(["orchestrator"], root=ROOT, partitions=1) as h:
        h.bus.retains_messages = True
        release, written = gate(h)
        try:
            first = await h.publish("STAMP_REQUESTED", request(1))
            await h.wait_for("STAMP_FILE", command_of(first.correlation_id))  # published before the wait
            second = await h.publish("STAMP_REQUESTED", request(2))
            await anyio.wait_all_tasks_blocked()
            assert [e.correlation_id for e in h.of("STAMP_FILE")] == [first.correlation_id]  # held behind the write
        finally:
            release.set()
        await h.wait_for("STAMP_FILE", command_of(second.correlation_id))
        await h.settle()
        assert written == [cids(first), cids(second)]


async def test_a_checkpoint_returns_only_once_what_a_write_under_way_took_is_written() -> None:
    # Two batches flushing at once (two partitions' workers; on Kafka the requests' and the results' consumers): the
    # second's workflows may be in the first's write, and its checkpoint must wait for that write rather than return
    # because nothing is left for it to write, or its batch would be acknowledged before its workflows are stored.
    async with Harness(["orchestrator"], root=ROOT, partitions=1) as h:
        node = h.runtime.node("orchestrator")
        assert isinstance(node, OrchestratorNode)
        release, written = gate(h)
        first = await h.publish("STAMP_REQUESTED", request(1))
        await h.wait_for("STAMP_FILE", command_of(first.correlation_id))  # its checkpoint is being written, held
        second = asyncio.create_task(node.checkpoint())
        await anyio.wait_all_tasks_blocked()
        returned_early = second.done()
        release.set()  # before asserting: leaving the harness waits for the held write
        await second
        assert not returned_early
        assert written == [cids(first)]


async def test_draining_writes_what_is_still_to_be_written(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path}/onex.db"
    h = Harness(["orchestrator"], root=ROOT, store_url=store_url, synchronous_checkpoints=False)
    await h.__aenter__()
    release, written = gate(h)
    sent = await h.publish("STAMP_REQUESTED", request(1))
    await h.wait_for("STAMP_FILE", command_of(sent.correlation_id))
    # No settle: leaving the harness drains the orchestrator, which waits for its writer (held here) and writes the
    # rest; it must not stop, cancelling the write, before the write is let through.
    leaving = asyncio.create_task(h.__aexit__(None, None, None))
    await anyio.wait_all_tasks_blocked()
    assert not leaving.done()
    release.set()
    await leaving
    assert written == [cids(sent)]
    async with Harness([], root=ROOT, store_url=store_url) as after:
        row = await after.store.get_workflow(cids(sent)[0])
    assert row is not None
    assert row.checkpoint is not None
    assert row.checkpoint["steps"]["stamp"]["status"] == "running"


async def test_a_failed_write_behind_is_logged_and_written_with_the_next_flush(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with Harness(["orchestrator"], root=ROOT, partitions=1, synchronous_checkpoints=False) as h:
        apply = h.store.apply
        failures = [StoreError("disk full (injected)")]

        async def failing(batch: WriteBatch) -> None:
            if batch.workflows and failures:
                raise failures.pop()
            await apply(batch)

        h.store.apply = failing  # type: ignore[method-assign]
        with caplog.at_level(logging.WARNING, logger="onex"):
            first = await h.publish("STAMP_REQUESTED", request(1))
            await h.settle()
            assert "checkpoint failed, written with the next flush: disk full (injected)" in caplog.text
            assert await h.store.get_workflow(cids(first)[0]) is None

            second = await h.publish("STAMP_REQUESTED", request(2))
            await h.settle()
        for cid in cids(first, second):
            assert await h.store.get_workflow(cid) is not None


async def test_a_failed_checkpoint_is_logged_and_its_workflows_outcome_still_goes_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # By default (not behind). The failed write fails the batch waiting for it, the batch holding the outcome; the
    # bus hands that batch over again and the outcome goes out then, once. A store that is unavailable is waited out
    # instead (``hold_store``): this is a write the store refused.
    async with Harness(["orchestrator", "stamping_effect"], root=ROOT, partitions=1) as h:
        release, _ = gate(h)
        failures = [StoreError("disk full (injected)")]
        held = h.store.apply

        async def failing(batch: WriteBatch) -> None:
            if batch.workflows and failures:
                await release.wait()  # the result is handled meanwhile: its outcome waits for this write
                raise failures.pop()
            await held(batch)

        h.store.apply = failing  # type: ignore[method-assign]
        with caplog.at_level(logging.WARNING, logger="onex"):
            sent = await h.publish("STAMP_REQUESTED", request(1))
            await h.wait_for("STAMP_CREATED", command_of(sent.correlation_id))
            await anyio.wait_all_tasks_blocked()
            assert h.of("WORKFLOW_COMPLETED") == []
            release.set()
            await h.wait_for("WORKFLOW_COMPLETED", command_of(sent.correlation_id))
            await h.settle()
        assert "checkpoint failed, written with the next flush: disk full (injected)" in caplog.text
        assert len(h.of("WORKFLOW_COMPLETED")) == 1
        assert h.runtime.bus.statistics().dead_lettered == 0


async def test_kafka_ignores_the_setting(tmp_path: Path) -> None:
    """On a bus that retains messages an acknowledgement is a promise: checkpoints are written before it."""
    settings = Settings.load(environ={"ONEX_SYNCHRONOUS_CHECKPOINTS": "off"}, root=str(ROOT))
    contract = load_contracts(ROOT).get("orchestrator")
    cls = resolve_implementation(contract, root=ROOT)
    store = open_store(f"sqlite:///{tmp_path}/onex.db")
    on_kafka = cls(contract, bus=KafkaBus("127.0.0.1:9"), store=store, settings=settings)  # never started
    in_memory = cls(contract, bus=MemoryBus(), store=store, settings=settings)
    assert isinstance(on_kafka, OrchestratorNode)
    assert isinstance(in_memory, OrchestratorNode)
    assert (on_kafka.writes_behind, in_memory.writes_behind) == (False, True)
