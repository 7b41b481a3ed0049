"""Whole stamping workflows through ``onex.testing.Harness``: every shipped node on the memory bus, a real SQLite
file store, real files on disk.

What the store says is checked against what the files really contain: hashes are recomputed here with the
``blake3`` package (not with ``onex.stamps``), sizes and file types come from the file specifications below.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from blake3 import blake3
from onex.contracts import ContractSet, load_contracts
from onex.envelope import OnexEnvelopeV1, dlq_topic
from onex.exceptions import StoreUnavailable
from onex.nodes import Event, Workflow
from onex.stamps import find_stamp, sidecar_path, strip_stamp, verify_bytes, verify_file
from onex.store import WriteBatch
from onex.testing import Harness

from nodes.orchestrator.v1_0_0.node import NodeOrchestrator

ROOT = Path(__file__).resolve().parents[2]
NS = "it.workflow"
WORKFLOW_TRANSITIONS = [("pending", "processing", "start"), ("processing", "completed", "complete")]
FAILED_TRANSITIONS = [("pending", "processing", "start"), ("processing", "failed", "fail")]
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"

pytestmark = pytest.mark.anyio


@dataclass(frozen=True)
class Spec:
    """One file to write: its name, bytes, the file type onex must report, and where its stamp goes."""

    name: str
    content: bytes
    file_type: str
    sidecar: bool = False
    rich: bool = False


def mixed_files(n_variants: int = 3) -> list[Spec]:
    """Files of every kind the stamping workflow handles, ``n_variants`` of each, plus an empty file and two
    files with identical content (so distinct content is fewer than files)."""
    specs: list[Spec] = []
    for i in range(n_variants):
        rich = i % 2 == 1
        specs += [
            Spec(f"tool{i}.py", f"#!/usr/bin/env python3\nprint({i})\n".encode(), "code", rich=rich),
            Spec(f"run{i}.sh", f"#!/bin/sh\necho {i}\n".encode(), "code"),
            Spec(f"conf{i}.yaml", f"key: {i}\nlist: [a, b]\n".encode(), "data", rich=rich),
            Spec(f"doc{i}.md", f"# Title {i}\n\nSome *text*.\n".encode(), "text"),
            Spec(f"page{i}.html", f"<!DOCTYPE html>\n<p>{i}</p>\n".encode(), "code", rich=rich),
            Spec(f"data{i}.json", f'{{"n": {i}}}'.encode(), "data", sidecar=True),
            Spec(f"pixel{i}.png", PNG + bytes([i]) * 16, "image", sidecar=True),
            Spec(f"crlf{i}.txt", f"line {i}\r\nsecond line\r\n".encode(), "text"),
            Spec(f"main{i}.go", f"// Package p{i} does nothing.\npackage p{i}\n".encode(), "code"),
            Spec(f"query{i}.sql", f"SELECT {i};\n".encode(), "code", rich=rich),
            Spec(f"style{i}.css", f"p {{ margin: {i}px; }}\n".encode(), "code"),
            Spec(f"notes{i}.txt", f"note {i}\n".encode(), "text"),
        ]
    specs += [
        Spec("empty.txt", b"", "text"),
        Spec("copy_a.py", b"print('same')\n", "code"),
        Spec("copy_b.py", b"print('same')\n", "code"),
        Spec("copy_c.txt", b"print('same')\n", "text"),
    ]
    return specs


def write(directory: Path, specs: list[Spec]) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for spec in specs:
        path = directory / spec.name
        path.write_bytes(spec.content)
        paths[spec.name] = path
    return paths


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def request(path: Path | str, *, rich: bool = False, namespace: str = NS) -> dict[str, object]:
    return {"file_path": str(path), "namespace": namespace, "stamp_type": "rich" if rich else "lightweight"}


async def transitions_of(h: Harness, cid: uuid.UUID | None) -> list[tuple[str | None, str, str]]:
    return [(t.from_state, t.to_state, t.transition_event) for t in await h.store.list_transitions(str(cid))]


async def steps_of(h: Harness, cid: uuid.UUID | None) -> list[tuple[str, str]]:
    assert cid is not None
    return [(s.step_name, s.status) for s in await h.store.list_steps(cid)]


# --- the happy path, at scale ----------------------------------------------------------------------------------------


async def test_mixed_files_are_stamped_persisted_and_aggregated(tmp_path: Path) -> None:
    specs = mixed_files()
    assert len(specs) == 40
    paths = write(tmp_path / "tree", specs)

    async with Harness(root=ROOT) as h:
        sent = {
            spec.name: await h.publish("STAMP_REQUESTED", request(paths[spec.name], rich=spec.rich)) for spec in specs
        }
        await h.settle()
        await h.runtime.drain()  # closes the reducer's open window: the aggregate below is final

        # One completed workflow per file, each with its full audit log and steps in the store.
        assert await h.store.count("workflow_executions") == len(specs)
        completed = await h.store.list_workflows(state="completed", limit=1000)
        assert {w.correlation_id for w in completed} == {e.correlation_id for e in sent.values()}
        for spec in specs:
            cid = sent[spec.name].correlation_id
            assert cid is not None  # the harness gives everything it publishes a correlation id
            workflow = await h.store.get_workflow(cid)
            assert workflow is not None
            assert (workflow.current_state, workflow.file_path, workflow.error_message) == (
                "completed",
                str(paths[spec.name]),
                None,
            )
            assert workflow.file_hash == blake3(spec.content).hexdigest(), spec.name
            assert await transitions_of(h, cid) == WORKFLOW_TRANSITIONS, spec.name
            assert await steps_of(h, cid) == [("stamp", "completed"), ("intelligence", "skipped")], spec.name
            assert [t["to_state"] for t in h.transitions(cid)] == ["processing", "completed"]
        assert len(h.of("WORKFLOW_COMPLETED")) == len(specs)
        assert h.of("WORKFLOW_FAILED") == []
        assert h.dead_letters() == []

        # One stamp row per file: hash and size of the original content, sidecar where the file has no comments.
        assert await h.store.count("metadata_stamps") == len(specs)
        rows = {Path(r.file_path).name: r for r in await h.store.list_stamps(NS, limit=1000)}
        assert rows.keys() == {s.name for s in specs}
        for spec in specs:
            row = rows[spec.name]
            expected_kind = "sidecar" if spec.sidecar else "rich" if spec.rich else "lightweight"
            assert (row.file_hash, row.file_size, row.file_type, row.stamp_type) == (
                blake3(spec.content).hexdigest(),
                len(spec.content),
                spec.file_type,
                expected_kind,
            ), spec.name
            assert row.workflow_id == sent[spec.name].correlation_id

        # The namespace aggregate equals what the files contain.
        aggregate = await h.store.get_bridge_state(NS)
        assert aggregate is not None
        assert aggregate.total_workflows_processed == len(specs)
        assert aggregate.total_items_aggregated == len(specs)
        assert aggregate.total_size_bytes == sum(len(s.content) for s in specs)
        assert aggregate.unique_file_hashes == len({s.content for s in specs}) < len(specs)
        assert aggregate.aggregation_metadata["by_file_type"] == dict(Counter(s.file_type for s in specs))

    # On disk: every file verifies; in-place stamps keep the original bytes around them, sidecar files are untouched.
    for spec in specs:
        path = paths[spec.name]
        assert verify_file(path).status == "valid", spec.name
        data = path.read_bytes()
        if spec.sidecar:
            assert data == spec.content, spec.name
            assert sidecar_path(path).is_file()
        else:
            assert data != spec.content
            assert strip_stamp(data, file_name=spec.name) == spec.content, spec.name
            stamp = find_stamp(data, file_name=spec.name)
            assert stamp is not None
            assert stamp.kind == ("rich" if spec.rich else "lightweight")
    assert paths["tool0.py"].read_bytes().startswith(b"#!/usr/bin/env python3\n# ONEX:")
    assert paths["run0.sh"].read_bytes().startswith(b"#!/bin/sh\n# ONEX:")
    crlf = paths["crlf0.txt"].read_bytes()
    assert crlf.count(b"\r\n") == crlf.count(b"\n") == 3  # the stamp line took the file's CRLF


# --- failures that belong to one workflow ----------------------------------------------------------------------------


async def test_unreadable_paths_fail_their_workflow_and_the_others_complete(tmp_path: Path) -> None:
    good = write(tmp_path / "tree", [Spec(f"ok{i}.py", f"x = {i}\n".encode(), "code") for i in range(4)])
    fifo = tmp_path / "tree" / "pipe.py"
    os.mkfifo(fifo)
    bad = {
        "missing": (tmp_path / "tree" / "missing.py", "no such file"),
        "directory": (tmp_path / "tree", "is a directory"),
        "fifo": (fifo, "not a regular file"),
    }

    async with Harness(root=ROOT) as h:
        good_sent = [await h.publish("STAMP_REQUESTED", request(p)) for p in good.values()]
        bad_sent = {name: await h.publish("STAMP_REQUESTED", request(path)) for name, (path, _) in bad.items()}
        await h.settle()
        await h.runtime.drain()

        for envelope in good_sent:
            assert envelope.correlation_id is not None
            workflow = await h.store.get_workflow(envelope.correlation_id)
            assert workflow is not None
            assert workflow.current_state == "completed"
        failed_events = {e.correlation_id: e for e in h.of("WORKFLOW_FAILED")}
        for name, (path, reason) in bad.items():
            cid = bad_sent[name].correlation_id
            assert cid is not None
            workflow = await h.store.get_workflow(cid)
            assert workflow is not None
            assert workflow.current_state == "failed", name
            assert workflow.error_message is not None
            assert str(path) in workflow.error_message, name
            assert reason in workflow.error_message, name
            assert workflow.file_hash is None
            assert reason in failed_events[cid].payload["error"]
            assert await transitions_of(h, cid) == FAILED_TRANSITIONS, name
            assert await steps_of(h, cid) == [("stamp", "failed"), ("intelligence", "skipped")], name
            steps = await h.store.list_steps(cid)
            assert reason in (steps[0].error_message or ""), name

        assert len(failed_events) == len(bad)
        assert await h.store.count("metadata_stamps") == len(good)
        aggregate = await h.store.get_bridge_state(NS)
        assert aggregate is not None
        assert (aggregate.total_workflows_processed, aggregate.total_items_aggregated) == (
            len(good) + len(bad),
            len(good),
        )
    assert all(verify_file(p).status == "valid" for p in good.values())
    assert not (tmp_path / "tree" / "missing.py").exists()


# --- requests the orchestrator cannot accept -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "error_mentions"),
    [
        pytest.param({"namespace": NS}, "file_path, content", id="neither-path-nor-content"),
        pytest.param({"file_path": 42, "namespace": NS}, "file_path", id="path-not-a-string"),
        pytest.param({"file_path": "a.py", "stamp_type": "fancy"}, "stamp_type", id="unknown-stamp-type"),
        pytest.param({"file_path": "a.py", "colour": "red"}, "colour", id="unknown-field"),
    ],
)
async def test_malformed_request_is_dead_lettered_and_the_next_request_completes(
    tmp_path: Path, payload: dict[str, object], error_mentions: str
) -> None:
    good = write(tmp_path, [Spec("good.py", b"x = 1\n", "code")])["good.py"]

    async with Harness(root=ROOT) as h:
        request_topic = h.topic("STAMP_REQUESTED")
        on_dlq: list[OnexEnvelopeV1] = []

        async def collect(envelope: OnexEnvelopeV1) -> None:
            on_dlq.append(envelope)

        dlq = await h.bus.subscribe([dlq_topic(request_topic)], "test.dlq-watcher", handler=collect)
        bad = await h.publish("STAMP_REQUESTED", payload)
        after = await h.publish("STAMP_REQUESTED", request(good))
        done = await h.wait_for("WORKFLOW_COMPLETED", lambda e: e.correlation_id == after.correlation_id)
        await h.settle()
        await dlq.aclose()

        assert done.payload["file_path"] == str(good)
        assert [e.event_type for e in on_dlq] == ["DEAD_LETTER"]
        letter = on_dlq[0].payload
        assert letter["original_topic"] == request_topic
        assert letter["original"]["event_id"] == str(bad.event_id)
        assert letter["original"]["payload"] == payload
        assert str(bad.event_id) in letter["error"]
        assert error_mentions in letter["error"]
        assert letter["attempts"] == 1  # a payload that does not validate is not retried
        assert [e.payload["original"]["event_id"] for e in h.dead_letters()] == [str(bad.event_id)]
        assert bad.correlation_id is not None
        assert await h.store.get_workflow(bad.correlation_id) is None
        assert h.transitions(bad.correlation_id) == []
        assert await h.store.count("workflow_executions") == 1
    assert verify_file(good).status == "valid"


# --- in-memory content ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stamp_type", ["lightweight", "rich"])
async def test_content_request_returns_stamped_content_and_touches_no_file(tmp_path: Path, stamp_type: str) -> None:
    name = str(tmp_path / "never_written.py")
    content = "#!/usr/bin/env python3\nprint('hello')\n"

    async with Harness(root=ROOT) as h:
        sent = await h.publish(
            "STAMP_REQUESTED", {"content": content, "file_path": name, "namespace": NS, "stamp_type": stamp_type}
        )
        created = await h.wait_for("STAMP_CREATED", lambda e: e.correlation_id == sent.correlation_id)
        await h.wait_for("WORKFLOW_COMPLETED", lambda e: e.correlation_id == sent.correlation_id)
        await h.settle()

        stamped = created.payload["stamped_content"].encode()
        assert stamped != content.encode()
        assert verify_bytes(stamped, file_name=name).status == "valid"
        assert strip_stamp(stamped, file_name=name) == content.encode()
        assert stamped.startswith(b"#!/usr/bin/env python3\n")
        assert created.payload["file_hash"] == blake3(content.encode()).hexdigest()
        assert created.payload["stamp_type"] == stamp_type
        assert await transitions_of(h, sent.correlation_id) == WORKFLOW_TRANSITIONS
    assert listing(tmp_path) == []  # nothing was written, not even the file the content is named after


# --- the registry ----------------------------------------------------------------------------------------------------


async def test_every_node_registers_as_healthy_at_start() -> None:
    async with Harness(root=ROOT) as h:
        await h.settle()
        rows = await h.store.list_registrations()
        expected = {c.name: c.node_type.value for c in h.contracts.contracts}
        assert len(expected) == 6  # the five of the stamping workflow and the metastore effect
        assert {r.metadata["node_name"]: r.node_type for r in rows} == expected
        assert {r.health_status for r in rows} == {"HEALTHY"}
        assert {r.node_id for r in rows} == {n.node_id for n in h.runtime.nodes}


# --- idempotency -----------------------------------------------------------------------------------------------------


def same_envelope(path: Path) -> OnexEnvelopeV1:
    return OnexEnvelopeV1(
        event_type="STAMP_REQUESTED",
        source_node_id="test.redelivery",
        correlation_id=uuid.uuid4(),
        payload=request(path),
    )


async def test_a_request_delivered_twice_at_once_runs_one_workflow(tmp_path: Path) -> None:
    path = write(tmp_path, [Spec("once.py", b"x = 1\n", "code")])["once.py"]

    async with Harness(root=ROOT) as h:
        envelope = same_envelope(path)
        await h.bus.publish(h.topic("STAMP_REQUESTED"), envelope)
        await h.bus.publish(h.topic("STAMP_REQUESTED"), envelope)
        await h.settle()
        await h.runtime.drain()

        assert await h.store.count("workflow_executions") == 1
        assert await h.store.count("metadata_stamps") == 1
        assert await transitions_of(h, envelope.correlation_id) == WORKFLOW_TRANSITIONS
        assert len(h.of("WORKFLOW_COMPLETED")) == 1
        aggregate = await h.store.get_bridge_state(NS)
        assert aggregate is not None
        assert (aggregate.total_workflows_processed, aggregate.total_items_aggregated) == (1, 1)
    assert verify_file(path).status == "valid"


async def test_a_request_redelivered_after_its_workflow_finished_is_not_run_again(tmp_path: Path) -> None:
    path = write(tmp_path, [Spec("again.py", b"x = 2\n", "code")])["again.py"]

    async with Harness(root=ROOT) as h:
        envelope = same_envelope(path)
        await h.bus.publish(h.topic("STAMP_REQUESTED"), envelope)
        await h.settle()
        first = path.read_bytes()
        await h.bus.publish(h.topic("STAMP_REQUESTED"), envelope)  # at-least-once: the commit was lost, say
        await h.settle()
        await h.runtime.drain()

        assert await h.store.count("workflow_executions") == 1
        assert await h.store.count("metadata_stamps") == 1
        assert envelope.correlation_id is not None
        workflow = await h.store.get_workflow(envelope.correlation_id)
        assert workflow is not None
        assert workflow.current_state == "completed"
        assert await transitions_of(h, envelope.correlation_id) == WORKFLOW_TRANSITIONS
        assert len(h.of("WORKFLOW_COMPLETED")) == len(h.of("STAMP_CREATED")) == 1
        aggregate = await h.store.get_bridge_state(NS)
        assert aggregate is not None
        assert (aggregate.total_workflows_processed, aggregate.total_items_aggregated) == (1, 1)
    assert path.read_bytes() == first


async def test_a_stamp_command_handled_again_is_stored_and_aggregated_once(tmp_path: Path) -> None:
    path = write(tmp_path, [Spec("twice.py", b"x = 3\n", "code")])["twice.py"]

    async with Harness(root=ROOT) as h:
        sent = await h.publish("STAMP_REQUESTED", request(path))
        await h.settle()
        [command] = h.of("STAMP_FILE")
        # What Kafka delivers after the effect crashed between stamping and committing: the same command record.
        await h.bus.publish(h.topic("STAMP_FILE"), command)
        await h.settle()
        await h.runtime.drain()

        # The effect handled it twice (the file is stamped already, so the second stamp leaves it unchanged)...
        assert [str(e.payload["workflow_id"]) for e in h.of("STAMP_CREATED")] == [str(sent.correlation_id)] * 2
        # ...but the workflow, its stamp and the namespace's totals count it once.
        assert await h.store.count("workflow_executions") == 1
        assert await h.store.count("metadata_stamps") == 1
        aggregate = await h.store.get_bridge_state(NS)
        assert aggregate is not None
        assert (aggregate.total_workflows_processed, aggregate.total_items_aggregated) == (1, 1)
        assert aggregate.total_size_bytes == len(b"x = 3\n")
    assert verify_file(path).status == "valid"


def stamp_created(workflow_id: uuid.UUID, file_hash: str, *, dry_run: bool = False) -> dict[str, object]:
    return {
        "workflow_id": str(workflow_id),
        "stamp_id": str(uuid.uuid4()),
        "file_path": "late.py",
        "file_hash": file_hash,
        "file_size": 6,
        "file_type": "python",
        "namespace": NS,
        "stamp_type": "lightweight",
        "status": "stamped",
        "dry_run": dry_run,
    }


async def test_a_stamp_no_running_workflow_takes_is_stored_by_the_orchestrator(tmp_path: Path) -> None:
    """A stamp's row comes with its workflow's outcome, and the database adapter does not consume STAMP_CREATED. A
    STAMP_CREATED that no running workflow takes still stands for a file stamped, so the orchestrator stores its row:
    one that came after its workflow had failed, and one of a workflow this process never ran. A dry run's is not."""
    path = write(tmp_path, [Spec("late.py", b"x = 4\n", "code")])["late.py"]
    hashes = ["ab" * 32, "cd" * 32]  # a file's hash has one row in a namespace

    async with Harness(["orchestrator", "database_adapter_effect"], root=ROOT) as h:  # no stamping effect
        sent = await h.publish("STAMP_REQUESTED", request(path))
        cid = sent.correlation_id
        assert cid is not None
        await h.wait_for("STAMP_FILE", lambda e: e.correlation_id == cid)
        failed = {"workflow_id": str(cid), "namespace": NS, "error": "no space left on device", "retryable": False}
        await h.publish("STAMP_FAILED", failed, correlation_id=cid)
        outcome = await h.wait_for("WORKFLOW_FAILED", lambda e: e.correlation_id == cid)
        [step] = [s for s in outcome.payload["steps"] if s["step_name"] == "stamp"]
        assert (step["status"], step["attempts"]) == ("failed", 1)  # not retried, and not said to have been

        late = await h.publish("STAMP_CREATED", stamp_created(cid, hashes[0]), correlation_id=cid)
        stranger = uuid.uuid4()
        unknown = await h.publish("STAMP_CREATED", stamp_created(stranger, hashes[1]), correlation_id=stranger)
        dry = stamp_created(stranger, "ef" * 32, dry_run=True)
        await h.publish("STAMP_CREATED", dry, correlation_id=stranger)
        await h.settle()

        for created, file_hash in zip((late, unknown), hashes, strict=True):
            [row] = await h.store.get_stamps_by_hash(file_hash)
            assert (str(row.id), str(row.workflow_id)) == (created.payload["stamp_id"], created.payload["workflow_id"])
        assert await h.store.count("metadata_stamps") == 2  # not the dry run's
        workflow = await h.store.get_workflow(cid)
        assert workflow is not None
        assert workflow.current_state == "failed"
        assert h.dead_letters() == []


async def test_a_stamp_no_running_workflow_takes_waits_in_its_batch_for_a_store_that_is_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The orchestrator holds its batch while the store cannot take a late stamp's row, as it holds a checkpoint
    (``hold_store``): the row is stored once the store is back, and the batch is neither handed over again nor
    dead-lettered."""
    handled: Counter[uuid.UUID] = Counter()
    handle_events = NodeOrchestrator.handle_events

    async def counted(self: NodeOrchestrator, events: Sequence[Event]) -> None:
        handled.update(e.envelope.event_id for e in events)
        await handle_events(self, events)

    monkeypatch.setattr(NodeOrchestrator, "handle_events", counted)
    async with Harness(["orchestrator", "database_adapter_effect"], root=ROOT) as h:  # no stamping effect
        apply = h.store.apply
        refused: list[WriteBatch] = []

        async def away_once(batch: WriteBatch) -> None:
            if batch.consumer == "orchestrator" and batch.stamps and not refused:
                refused.append(batch)
                raise StoreUnavailable("the store is away")
            await apply(batch)

        monkeypatch.setattr(h.store, "apply", away_once)
        stranger = uuid.uuid4()
        late = await h.publish("STAMP_CREATED", stamp_created(stranger, "ab" * 32), correlation_id=stranger)
        await h.settle()

        assert len(refused) == 1
        [row] = await h.store.get_stamps_by_hash("ab" * 32)
        assert str(row.id) == late.payload["stamp_id"]
        assert handled[late.event_id] == 1
        assert h.dead_letters() == []


# --- the contract's steps: attempts, optional, and what no runner or no stamp step means ----------------------------


def orchestrating(*steps: dict[str, object], intelligence_url: str = "") -> ContractSet:
    """The shipped contracts, the orchestrator's ``config.steps`` and intelligence URL replaced. Past validation (it
    refuses steps the orchestrator has no runner for, and steps without ``stamp``), to drive the runtime's backstop."""
    shipped = load_contracts(ROOT)
    orchestrator = shipped.get("orchestrator")
    config = {**orchestrator.config, "steps": list(steps), "intelligence_url": intelligence_url}
    changed = orchestrator.model_copy(update={"config": config})
    return ContractSet(shipped.root, [changed if c is orchestrator else c for c in shipped.contracts])


@pytest.fixture
def refusing_url() -> Iterator[str]:
    """A local port bound and not listening: every connection to it is refused, and no one else can take it."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{closed.getsockname()[1]}/"


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[uuid.UUID]:
    """The workflow of each call to the intelligence service, in order."""
    calls: list[uuid.UUID] = []
    ask = NodeOrchestrator._ask_intelligence

    async def counted(self: NodeOrchestrator, workflow: Workflow) -> dict[str, object]:
        calls.append(workflow.cid)
        return await ask(self, workflow)

    monkeypatch.setattr(NodeOrchestrator, "_ask_intelligence", counted)
    return calls


STAMP_STEP = {"step_name": "stamp", "max_attempts": 2}


async def outcome_of(contracts: ContractSet, tmp_path: Path, *, missing: bool = False) -> OnexEnvelopeV1:
    """The outcome of one request to stamp a file (one that does not exist when ``missing``)."""
    path = tmp_path / "a.py"
    if not missing:
        path.write_text("x = 1\n")
    async with Harness(["orchestrator", "stamping_effect"], root=ROOT, contracts=contracts) as h:
        sent = await h.publish("STAMP_REQUESTED", request(path))
        done = await h.wait_for(
            None,
            lambda e: (
                e.correlation_id == sent.correlation_id and e.event_type in ("WORKFLOW_COMPLETED", "WORKFLOW_FAILED")
            ),
        )
        await h.settle()
        assert h.dead_letters() == []
        assert len(h.of("WORKFLOW_COMPLETED")) + len(h.of("WORKFLOW_FAILED")) == 1
        assert [t["to_state"] for t in h.transitions(sent.correlation_id)] == [
            "processing",
            "failed" if done.event_type == "WORKFLOW_FAILED" else "completed",
        ]
    return done


def step_results(outcome: OnexEnvelopeV1) -> dict[str, tuple[str, int, str | None]]:
    return {s.step_name: (s.status, s.attempts, s.error) for s in outcome.payload.steps}


async def test_a_required_intelligence_step_that_fails_is_retried_then_fails_the_workflow(
    tmp_path: Path, refusing_url: str, asked: list[uuid.UUID]
) -> None:
    intelligence = {"step_name": "intelligence", "depends_on": ["stamp"], "optional": False, "max_attempts": 3}
    outcome = await outcome_of(orchestrating(STAMP_STEP, intelligence, intelligence_url=refusing_url), tmp_path)

    assert outcome.event_type == "WORKFLOW_FAILED"
    assert asked == [outcome.correlation_id] * 3
    status, attempts, error = step_results(outcome)["intelligence"]
    assert (status, attempts) == ("failed", 3)
    assert error is not None
    assert error.startswith("intelligence service unavailable: ")
    assert "Connection refused" in error
    assert outcome.payload.error == f"intelligence: {error}"
    assert step_results(outcome)["stamp"][:2] == ("completed", 1)  # the file was stamped; the contract wanted more


async def test_an_optional_intelligence_step_that_fails_is_retried_then_skipped(
    tmp_path: Path, refusing_url: str, asked: list[uuid.UUID]
) -> None:
    intelligence = {"step_name": "intelligence", "depends_on": ["stamp"], "optional": True, "max_attempts": 2}
    outcome = await outcome_of(orchestrating(STAMP_STEP, intelligence, intelligence_url=refusing_url), tmp_path)

    assert outcome.event_type == "WORKFLOW_COMPLETED"
    assert outcome.payload.error is None
    status, attempts, error = step_results(outcome)["intelligence"]
    assert (status, attempts, len(asked)) == ("skipped", 2, 2)
    assert error is not None
    assert error.startswith("intelligence service unavailable: ")


@pytest.mark.parametrize(
    ("optional", "outcome_event", "status"),
    [(False, "WORKFLOW_FAILED", "failed"), (True, "WORKFLOW_COMPLETED", "skipped")],
)
async def test_without_an_intelligence_url_the_step_fails_unless_optional_and_is_not_retried(
    tmp_path: Path, asked: list[uuid.UUID], optional: bool, outcome_event: str, status: str
) -> None:
    intelligence = {"step_name": "intelligence", "depends_on": ["stamp"], "optional": optional, "max_attempts": 3}
    outcome = await outcome_of(orchestrating(STAMP_STEP, intelligence), tmp_path)

    assert outcome.event_type == outcome_event
    assert step_results(outcome)["intelligence"] == (status, 1, "no intelligence service configured")
    assert outcome.payload.error == (None if optional else "intelligence: no intelligence service configured")
    assert asked == []


async def test_a_step_the_orchestrator_has_no_runner_for_fails_the_workflow_unless_optional(tmp_path: Path) -> None:
    scan = {"step_name": "virus_scan", "depends_on": ["stamp"], "max_attempts": 2}
    outcome = await outcome_of(orchestrating(STAMP_STEP, scan), tmp_path)
    assert outcome.event_type == "WORKFLOW_FAILED"
    reason = "no runner for step 'virus_scan': this orchestrator runs 'stamp' and 'intelligence'"
    assert step_results(outcome)["virus_scan"] == ("failed", 1, reason)
    assert outcome.payload.error == f"virus_scan: {reason}"

    skipped = await outcome_of(orchestrating(STAMP_STEP, {**scan, "optional": True}), tmp_path)
    assert skipped.event_type == "WORKFLOW_COMPLETED"
    assert step_results(skipped)["virus_scan"] == ("skipped", 1, reason)


@pytest.mark.parametrize(
    ("steps", "error"),
    [
        (
            [{"step_name": "stamp_file", "max_attempts": 2}],
            "stamp_file: no runner for step 'stamp_file': this orchestrator runs 'stamp' and 'intelligence'; "
            "no 'stamp' step: the contract's steps ('stamp_file') stamp nothing, so the workflow cannot complete",
        ),
        (
            [{"step_name": "intelligence", "optional": True}],
            "no 'stamp' step: the contract's steps ('intelligence') stamp nothing, so the workflow cannot complete",
        ),
    ],
    ids=["unknown-step-instead", "no-stamp-step"],
)
async def test_a_workflow_without_a_stamp_step_fails_naming_it(
    tmp_path: Path, steps: list[dict[str, object]], error: str
) -> None:
    outcome = await outcome_of(orchestrating(*steps), tmp_path)
    assert (outcome.event_type, outcome.payload.state, outcome.payload.error) == ("WORKFLOW_FAILED", "failed", error)


async def test_a_workflow_whose_optional_stamp_step_was_skipped_fails_naming_it(tmp_path: Path) -> None:
    # The FSM's complete guard needs the stamp's hash: without it the workflow fails, with the stamp's reason.
    outcome = await outcome_of(orchestrating({**STAMP_STEP, "optional": True}), tmp_path, missing=True)
    assert outcome.event_type == "WORKFLOW_FAILED"
    status, _, stamp_error = step_results(outcome)["stamp"]
    assert status == "skipped"
    assert outcome.payload.error == f"stamp: skipped ({stamp_error}), so the workflow cannot complete"
