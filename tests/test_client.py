"""``onex.client``: ``StampClient``'s bounded submission and outcome bookkeeping, on a memory bus with no nodes; then
``StampRun`` and ``verify_paths``, whole runs as the CLI does them.

The client's outcomes are published by hand, as the orchestrator would publish them, so the client is seen on its
own.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import onex.client
import pytest
from asyncpg.pgproto.pgproto import UUID as PgUUID
from onex.bus import GroupStart, MemoryBus, MemorySubscription
from onex.client import OUTCOME_EVENTS, StampClient, StampRun, _wait, verify_paths
from onex.contracts import load_contracts
from onex.envelope import OnexEnvelopeV1, Reader, topic_name
from onex.exceptions import OnexError
from onex.runtime import Runtime
from onex.settings import Settings

from nodes.models import ModelWorkflowFinished

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    settings = Settings.load(environ={}, root=str(ROOT), store=f"sqlite:///{tmp_path}/onex.db")
    async with Runtime(settings.with_(heartbeat_interval_s=0), nodes=[]) as rt:
        yield rt


async def join(runtime: Runtime) -> None:
    """Wait until the runtime's bus (a memory bus: the settings name no other) has handled all it was given."""
    assert isinstance(runtime.bus, MemoryBus)
    await runtime.bus.join()


def finished(cid: uuid.UUID) -> dict[str, Any]:
    """A WORKFLOW_COMPLETED payload, as the orchestrator's would arrive off the wire (a dict)."""
    now = datetime.now(UTC).isoformat()
    return {
        "workflow_id": str(cid),
        "state": "completed",
        "state_seq": 2,
        "namespace": "ns",
        "started_at": now,
        "completed_at": now,
        "execution_time_ms": 1.0,
    }


async def complete(runtime: Runtime, cid: uuid.UUID, payload: dict[str, Any] | None = None) -> None:
    outcome = OnexEnvelopeV1(
        event_type=OUTCOME_EVENTS[0], source_node_id="test", correlation_id=cid, payload=payload or finished(cid)
    )
    await runtime.bus.publish(topic_name(OUTCOME_EVENTS[0]), outcome)


async def test_submit_waits_while_max_pending_workflows_have_no_outcome(runtime: Runtime) -> None:
    async with StampClient(runtime.bus, runtime.contracts, runtime.settings, max_pending=2) as client:
        first = await client.submit({"content": "a", "namespace": "ns"})
        await client.submit({"content": "b", "namespace": "ns"})
        third = asyncio.ensure_future(client.submit({"content": "c", "namespace": "ns"}))
        await anyio.wait_all_tasks_blocked()
        assert not third.done()  # two pending: the third waits
        assert client.pending == 2

        await complete(runtime, first)
        with anyio.fail_after(5):
            await third
        assert client.pending == 2
        outcome = (await client.outcome(first)).payload
        # Typed by the client: the outcome's model, validated from the dict that was published.
        assert type(outcome) is ModelWorkflowFinished
        assert (outcome.workflow_id, outcome.state) == (first, "completed")


async def test_forget_drops_what_the_client_kept_of_a_finished_workflow(runtime: Runtime) -> None:
    async with StampClient(runtime.bus, runtime.contracts, runtime.settings) as client:
        cid = await client.submit({"content": "a", "namespace": "ns"})
        await complete(runtime, cid)
        with anyio.fail_after(5):
            await client.outcome(cid)
        client.forget(cid)
        with pytest.raises(OnexError, match="not submitted by this client"):
            await client.outcome(cid)


async def test_an_abandoned_workflow_keeps_nothing_of_its_late_outcome(runtime: Runtime) -> None:
    seen: list[OnexEnvelopeV1] = []
    async with StampClient(runtime.bus, runtime.contracts, runtime.settings, on_outcome=seen.append) as client:
        cid = await client.submit({"content": "a", "namespace": "ns"})
        kept = await client.submit({"content": "b", "namespace": "ns"})
        client.abandon(cid)  # a caller gave up while it ran
        assert client.pending == 1  # nobody waits for it any more, though it may still complete
        await complete(runtime, cid)
        await complete(runtime, kept)
        await join(runtime)
        assert client.pending == 0
        assert {e.correlation_id for e in seen} == {cid, kept}  # on_outcome hears of both
        assert (await client.outcome(kept)).correlation_id == kept
        with pytest.raises(OnexError, match="not submitted by this client"):
            await client.outcome(cid)  # nothing kept of it


async def test_an_abandoned_workflow_whose_outcome_never_comes_is_not_pending_for_good(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the gateway does on its 504, for requests nobody answers (no orchestrator here; in a deployment, a request
    the broker lost): each must stop counting as pending (``/health``, the gauge, ``max_pending``) once abandoned,
    and the ids kept to recognise a late outcome must stay bounded, the oldest forgotten first."""
    monkeypatch.setattr(onex.client, "ABANDONED_KEPT", 2)
    seen: list[OnexEnvelopeV1] = []
    async with StampClient(
        runtime.bus, runtime.contracts, runtime.settings, on_outcome=seen.append, max_pending=1
    ) as client:
        lost = []
        for n in range(3):
            with anyio.fail_after(5):  # max_pending=1: an abandoned workflow must not hold the next one back
                lost.append(await client.submit({"content": f"{n}", "namespace": "ns"}))
            with pytest.raises(TimeoutError):
                await client.outcome(lost[-1], timeout=0.01)
            client.abandon(lost[-1])
            assert client.pending == 0
        assert len(client._abandoned) == 2  # bounded: the first is forgotten

        for cid in lost:  # all three complete after all, late
            await complete(runtime, cid)
        await join(runtime)
        # The two still recognised reach on_outcome (in either order: the outcomes' partitions are not ordered).
        assert len(seen) == 2
        assert {e.correlation_id for e in seen} == set(lost[1:])
        assert (client.pending, client._abandoned, client._outcomes, client._stamps) == (0, {}, {}, {})


@pytest.mark.parametrize("given", ["text", "subclass"])
async def test_a_request_built_by_the_client_equals_a_validated_one(runtime: Runtime, given: str) -> None:
    """The client builds its request envelopes without validation; a correlation id given as text or as a UUID
    subclass (asyncpg returns its own) must still come out a ``uuid.UUID``, as validation made it."""
    cid = uuid.uuid4()
    passed: Any = str(cid) if given == "text" else PgUUID(str(cid))
    client = StampClient(runtime.bus, runtime.contracts, runtime.settings, listen=False)
    built = client.request({"content": "a"}, correlation_id=passed)
    assert type(built.correlation_id) is uuid.UUID
    assert built.correlation_id == cid
    fields = built.model_dump(exclude={"envelope_version", "event_version", "metadata"})
    assert OnexEnvelopeV1(**fields) == built
    assert built.source_node_id == f"onex-client-{runtime.settings.instance}"


@pytest.mark.parametrize("bad", [0, -1])
async def test_max_pending_must_be_positive(runtime: Runtime, bad: int) -> None:
    with pytest.raises(ValueError, match="max_pending"):
        StampClient(runtime.bus, runtime.contracts, runtime.settings, max_pending=bad)


async def test_a_client_that_does_not_listen_joins_no_group_and_keeps_nothing(runtime: Runtime) -> None:
    """``listen=False`` (``onex stamp --no-wait``) only submits: the outcome of its request reaches no consumer of
    this client, and asking for it is an error rather than a wait that never ends."""
    async with StampClient(runtime.bus, runtime.contracts, runtime.settings, listen=False) as client:
        cid = await client.submit({"content": "a", "namespace": "ns"})
        await complete(runtime, cid)
        await join(runtime)

        assert runtime.bus.statistics().delivered == 0  # nobody consumed the outcome: no group was subscribed
        assert client.pending == 0
        with pytest.raises(OnexError, match="does not listen"):
            await client.outcome(cid)

    async with StampClient(runtime.bus, runtime.contracts, runtime.settings) as listening:
        cid = await listening.submit({"content": "b", "namespace": "ns"})
        await complete(runtime, cid)
        await join(runtime)
        assert runtime.bus.statistics().delivered == 1  # the same outcome, heard by a listening client


async def test_what_needs_outcomes_cannot_go_with_a_client_that_does_not_listen(runtime: Runtime) -> None:
    with pytest.raises(ValueError, match="listen=False"):
        StampClient(runtime.bus, runtime.contracts, runtime.settings, listen=False, max_pending=10)


async def test_a_submit_cancelled_while_the_bus_holds_it_back_leaves_nothing_pending(tmp_path: Path) -> None:
    """A caller's deadline may cancel ``submit()`` while the bus applies backpressure: that request was not
    published, so the client must neither wait for its outcome nor count it against ``max_pending``."""
    settings = Settings.load(environ={}, root=str(ROOT), store=f"sqlite:///{tmp_path}/onex.db")
    settings = settings.with_(heartbeat_interval_s=0, partitions=1, buffer_size=1)
    release = asyncio.Event()

    async def hold(envelope: OnexEnvelopeV1) -> None:
        await release.wait()

    async with Runtime(settings, nodes=[]) as rt, StampClient(rt.bus, rt.contracts, rt.settings) as client:
        await rt.bus.subscribe([client.topics["STAMP_REQUESTED"]], "held", handler=hold)
        try:
            with anyio.fail_after(5):
                await client.submit({"content": "a", "namespace": "ns"})  # in the handler's hands: the buffer is full
            blocked = asyncio.ensure_future(client.submit({"content": "b", "namespace": "ns"}))
            await anyio.wait_all_tasks_blocked()
            assert not blocked.done()
            assert client.pending == 2  # registered before publishing: an outcome may come before publish() returns

            blocked.cancel()
            with pytest.raises(asyncio.CancelledError):
                await blocked

            assert client.pending == 1
        finally:
            release.set()


async def test_an_outcome_that_does_not_fit_its_model_is_logged_and_not_taken_for_the_workflows(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    async with StampClient(runtime.bus, runtime.contracts, runtime.settings) as client:
        cid = await client.submit({"content": "a", "namespace": "ns"})
        await complete(runtime, cid, {"state": "completed"})
        await join(runtime)
        assert client.pending == 1
        assert "does not fit its model" in caplog.text
        assert "workflow_id: Field required" in caplog.text


async def test_a_wait_that_ends_early_leaves_the_outcome_future_for_other_waiters() -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()
    with pytest.raises(TimeoutError):
        await _wait(future, 0.01)
    gives_up = asyncio.create_task(_wait(future, None))
    await anyio.wait_all_tasks_blocked()
    gives_up.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gives_up
    assert not future.done()  # neither the timeout nor the cancellation touched it
    waiting = asyncio.create_task(_wait(future, 5))
    await anyio.wait_all_tasks_blocked()
    future.set_result("outcome")
    assert await waiting == "outcome"
    assert await _wait(future, 0) == "outcome"  # a done future answers at once, whatever the timeout
    closed: asyncio.Future[str] = loop.create_future()
    waiting = asyncio.create_task(_wait(closed, 5))
    await anyio.wait_all_tasks_blocked()
    closed.cancel()  # as the client's __aexit__ does to what still waits
    with pytest.raises(asyncio.CancelledError):
        await waiting


# --- whole runs, as the CLI does them -------------------------------------------------------------------------------


class StartRecordingBus(MemoryBus):
    """A memory bus that remembers the ``start`` each subscription asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.starts: list[str] = []
        self.readers: dict[str, dict[str, Reader]] = {}  # what each group's subscriptions were given, by topic
        self.published: dict[str, OnexEnvelopeV1] = {}  # the last envelope of each event type

    async def publish(self, topic: str, envelope: OnexEnvelopeV1) -> None:
        self.published[envelope.event_type] = envelope
        await super().publish(topic, envelope)

    async def publish_many(self, topic: str, envelopes: Sequence[OnexEnvelopeV1]) -> None:
        # From a handler MemoryBus.publish_many does not go through publish().
        for envelope in envelopes:
            self.published[envelope.event_type] = envelope
        await super().publish_many(topic, envelopes)

    async def subscribe(
        self, topics: Any, group: str, *, start: GroupStart = "earliest", **kwargs: Any
    ) -> MemorySubscription:
        self.starts.append(start)
        self.readers.setdefault(group, {}).update(kwargs.get("readers") or {})
        return await super().subscribe(topics, group, start=start, **kwargs)


async def test_the_client_asks_any_bus_for_only_what_is_published_after_it_subscribed(runtime: Runtime) -> None:
    # Through the EventBus signature, not by recognising a Kafka bus: a new group on a broker would otherwise read
    # the outcome topics' whole history first.
    async with StartRecordingBus() as bus, StampClient(bus, runtime.contracts, runtime.settings):
        assert bus.starts == ["latest"]


async def test_the_nodes_and_the_client_read_each_event_with_a_model_typed(tmp_path: Path) -> None:
    # On Kafka, a record of these topics is validated into its payload model in the parse of its JSON, once.
    settings = Settings.load(environ={}, root=str(ROOT), store=f"sqlite:///{tmp_path}/onex.db")
    async with StartRecordingBus() as bus, Runtime(settings.with_(heartbeat_interval_s=0), bus=bus) as runtime:
        async with StampClient(bus, runtime.contracts, runtime.settings) as client:
            await client.outcome(await client.submit({"content": "x = 1\n", "file_path": "a.py"}), timeout=30)
            failed = await client.outcome(await client.submit({"file_path": str(tmp_path / "gone.py")}), timeout=30)
            assert failed.event_type == "WORKFLOW_FAILED"
        await runtime.drain()
    catalog = client.catalog
    nodes = {
        topic: read
        for group, readers in bus.readers.items()
        if group != client.group
        for topic, read in readers.items()
    }
    modelled = ["STAMP_REQUESTED", "STAMP_FILE", "STAMP_CREATED", "STAMP_FAILED", *OUTCOME_EVENTS, "STATE_TRANSITION"]
    for readers, events in ((nodes, modelled), (bus.readers[client.group], OUTCOME_EVENTS)):
        for event in events:
            read = readers[catalog.topic(event)]
            assert type(read(bus.published[event].to_json()).payload) is catalog.events[event].codec.model, event


def loop_in_a_directory_named_like_an_omission(tmp_path: Path) -> Path:
    """A tree with one file, and a symlink loop whose message quotes a path that reads like a deliberate omission."""
    tree = tmp_path / "tree"
    (tree / "not followed").mkdir(parents=True)
    (tree / "a.py").write_text("print('a')\n")
    (tree / "not followed" / "up").symlink_to("..")
    return tree


async def test_verify_lists_a_walk_error_whatever_its_message_says(tmp_path: Path) -> None:
    tree = loop_in_a_directory_named_like_an_omission(tmp_path)
    (tmp_path / "outside.py").write_text("")
    (tree / "escape.py").symlink_to(tmp_path / "outside.py")

    report = verify_paths([tree])

    by_path = {Path(r.path).relative_to(tree).as_posix(): r.status for r in report.results}
    # escape.py: skipped, as onex stamp says, not an error
    assert by_path == {"a.py": "unstamped", "escape.py": "skipped", "not followed/up": "error"}
    assert (report.counts["error"], report.counts["skipped"]) == (1, 1)


async def test_a_stamp_run_counts_walk_omissions_skipped_and_walk_errors_failed_and_reports_progress(
    tmp_path: Path,
) -> None:
    tree = loop_in_a_directory_named_like_an_omission(tmp_path)
    (tree / "b.json.onex.yaml").write_text("")
    settings = Settings.load(environ={}, root=str(ROOT), store=f"sqlite:///{tmp_path}/onex.db")
    run = StampRun(settings.with_(heartbeat_interval_s=0), load_contracts(ROOT), dry_run=True, timeout=60)
    progress: list[tuple[int, int | None]] = []

    report = await run.run([tree, tree / "b.json.onex.yaml"], on_progress=lambda *p: progress.append(p))

    assert (report.counts["stamped"], report.counts["skipped"], report.counts["failed"]) == (1, 1, 1)
    assert {(p.status, Path(p.path).name) for p in report.problems} == {
        ("failed", "up"),
        ("skipped", "b.json.onex.yaml"),
    }
    assert progress[0] == (0, None)  # once connected, before any outcome
    assert (1, None) in progress  # the one outcome
    assert [total for _, total in progress if total is not None] == [1]  # once every file was submitted


def test_the_client_api_pulls_in_neither_terminal_rendering_nor_the_kafka_client() -> None:
    code = "import sys, onex.client; print(sorted({'rich', 'aiokafka', 'onex._render'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
