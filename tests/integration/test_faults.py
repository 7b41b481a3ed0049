"""Fault injection (issue 10): processes killed, PostgreSQL stopped, the broker restarted, ``onex stamp`` killed.

Each case stamps a few hundred small text files in place (requests name the file, the stamping effect rewrites it)
through real ``onex`` processes, strikes mid-run, on progress (after N outcomes the client heard, or N workflows in
the store), never after a fixed sleep, and then asserts the invariants of point 2 by reading the tables and the
files (``tests/fixtures/faults.py``): within the step timeout plus 10 s (plus slack for a loaded machine) every
workflow is terminal (failed ones with a reason), ``metadata_stamps`` has one row per stamped file, the namespace's
aggregate equals the completed stamps, every file is untouched or its original plus one valid stamp, and no temp
file is left. A failure names the violated invariants, with examples, and quotes the processes' logs.

The cases, by fault (and the client that submits the work):

- one node kind SIGKILLed mid-run and started again, each kind in turn (``StampClient`` in this process);
- two of every node but the database adapter, one orchestrator SIGKILLed for good (``StampClient``);
- PostgreSQL, a throwaway cluster of the test's own, stopped for 10 s mid-run (``onex stamp --bus kafka://``);
- the broker, tansu with memory storage, restarted mid-run: everything it held is lost (``onex stamp``, twice);
- ``onex stamp`` on the memory bus SIGKILLed mid-run, then run again on the same SQLite store.

Settings: the stamp step times out after ``STEP_TIMEOUT_MS`` (5 s), heartbeats every 0.5 s, consumers' sessions
time out after 2 s (``?session_timeout_ms=2000``: how soon a killed member's partitions move). The checker itself
is tested first, on both stores, against states built by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import anyio
import pytest
from onex._kafka import KafkaBus
from onex.client import StampClient
from onex.contracts import load_contracts
from onex.envelope import OnexEnvelopeV1, topic_name
from onex.settings import Settings
from onex.stamps import find_stamp, stamp_bytes, stamp_file
from onex.store import BridgeStateRow, StampRow, Store, WorkflowRow, WriteBatch

from tests.fixtures.deployment import NODES, Deployment, NodeProcess, spawn_onex, upgrade_schema
from tests.fixtures.faults import (
    RECOVERY_S,
    STEP_TIMEOUT_MS,
    TERMINAL,
    Corpus,
    RestartableBroker,
    ThrowawayPostgres,
    await_invariants,
    check_invariants,
    count_workflows,
    read_workflows,
    write_corpus,
)
from tests.fixtures.kafka import TEST_CONSUMER_OPTIONS, BrokerUnavailable
from tests.fixtures.stores import MakeStore

pytestmark = [pytest.mark.anyio]

ROOT = Path(__file__).resolve().parents[2]
FILES = 300
WINDOW = 100  # workflows in flight at most (StampClient cases): work keeps arriving after the fault
STRIKE_AFTER = 100  # outcomes heard before the fault
CLI_FILES = 1_200  # the CLI submits everything at once; more files keep it busy long enough to be struck mid-run
CLI_STRIKE_AFTER = 100  # terminal workflows in the store before the fault
BROKER_STRIKE_AFTER = 60  # outcomes on the bus before the broker restarts (leaving the watch group takes a moment)
OUTAGE_S = 10.0  # how long PostgreSQL stays down (the fault's length, not a wait for anything)
BEFORE_FAULT_S = 90.0  # a run that has not reached its fault by then is stuck before it
HEARTBEAT_S = 0.5
CONSUMER_QUERY = "session_timeout_ms=2000&heartbeat_interval_ms=200&fetch_max_wait_ms=10"
CLIENT_CONSUMER_OPTIONS = {**TEST_CONSUMER_OPTIONS, "fetch_max_wait_ms": 10}


# --- the checker, on states built by hand -----------------------------------------------------------------------------


@dataclass
class Baseline:
    """A consistent end state: files 0 and 1 stamped by completed workflows, file 2's workflow failed with a reason
    (untouched), file 3 never requested (untouched); their rows and the namespace's aggregate."""

    store: Store
    store_url: str
    corpus: Corpus
    namespace: str
    submitted: list[uuid.UUID]

    @property
    def completed_bytes(self) -> int:
        return sum(len(self.corpus.originals[p]) for p in self.corpus.paths()[:2])

    def path(self, i: int) -> Path:
        return Path(self.corpus.paths()[i])

    async def check(self, *, unstarted_ok: bool = False) -> list[str]:
        return await check_invariants(
            self.store_url, self.corpus, self.submitted, self.namespace, unstarted_ok=unstarted_ok
        )


def workflow_row(cid: uuid.UUID, state: str, path: Path, namespace: str, **fields: Any) -> WorkflowRow:
    return WorkflowRow(cid, "stamp_workflow", state, 2, namespace=namespace, file_path=str(path), **fields)


@pytest.fixture
async def baseline(make_store: MakeStore, tmp_path: Path) -> Baseline:
    store = await make_store()
    namespace = "onex.test.checker"
    corpus = write_corpus(tmp_path / "files", 4, tag="checker")
    cids = [uuid.uuid4() for _ in range(3)]
    batch = WriteBatch()
    for i in (0, 1):
        path = Path(corpus.paths()[i])
        result = stamp_file(path, namespace=namespace)
        stamp = result.stamp
        assert result.status == "stamped", result
        assert stamp is not None
        row_id = uuid.uuid4()  # the row names the file's stamp by its uid in stamp_data
        batch.workflows.append(
            workflow_row(cids[i], "completed", path, namespace, file_hash=stamp.hash, stamp_id=row_id)
        )
        batch.stamps.append(
            StampRow(
                row_id,
                stamp.hash,
                str(path),
                result.size,
                namespace,
                "lightweight",
                "text",
                cids[i],
                stamp_data={"uid": stamp.uid},
            )
        )
    batch.workflows.append(workflow_row(cids[2], "failed", Path(corpus.paths()[2]), namespace, error_message="boom"))
    sizes = sum(len(corpus.originals[p]) for p in corpus.paths()[:2])
    batch.bridge_states.append(BridgeStateRow(namespace, 1, 3, 2, sizes, 2, "idle"))
    await store.apply(batch)
    return Baseline(store, str(store.url), corpus, namespace, cids)


async def test_the_checker_passes_a_consistent_state(baseline: Baseline) -> None:
    assert await baseline.check() == []


async def test_the_checker_reports_a_workflow_left_in_processing(baseline: Baseline) -> None:
    stuck = uuid.uuid4()
    await baseline.store.apply(WriteBatch(workflows=[workflow_row(stuck, "processing", baseline.path(3), "x")]))
    baseline.submitted.append(stuck)

    violations = await baseline.check()

    assert violations == [f"[workflow not terminal] {stuck} ({baseline.path(3)}): left in 'processing'"]


async def test_the_checker_reports_a_failed_workflow_without_a_reason(baseline: Baseline) -> None:
    silent = uuid.uuid4()
    ns = baseline.namespace
    await baseline.store.apply(
        WriteBatch(
            workflows=[workflow_row(silent, "failed", baseline.path(3), ns)],
            # The aggregate counts it, as the reducer counts every finished workflow: only the reason is missing.
            bridge_states=[BridgeStateRow(ns, 2, 4, 2, baseline.completed_bytes, 2, "idle")],
        )
    )
    baseline.submitted.append(silent)

    violations = await baseline.check()

    assert violations == [f"[failed without a reason] {silent} ({baseline.path(3)}): error_message is empty"]


async def test_the_checker_reports_a_file_with_two_stamps(baseline: Baseline) -> None:
    path = baseline.path(3)
    original = baseline.corpus.originals[str(path)]
    once, _ = stamp_bytes(original, file_name=path.name)
    line = once[: len(once) - len(original)]  # the stamp line, which goes first in these files
    path.write_bytes(line + once)
    assert find_stamp(line + once, file_name=path.name) is not None

    violations = await baseline.check()

    assert violations == [f"[file changed] {path}: carries more than one stamp"]


async def test_the_checker_reports_a_file_changed_without_a_stamp(baseline: Baseline) -> None:
    path = baseline.path(3)
    path.write_bytes(baseline.corpus.originals[str(path)] + b"appended\n")

    violations = await baseline.check()

    assert violations == [f"[file changed] {path}: differs from its original and carries no stamp"]


async def test_the_checker_reports_a_leftover_temp_file(baseline: Baseline) -> None:
    temp = baseline.corpus.directory / f".{baseline.path(0).name}.k2j4h1.onex-tmp"
    temp.write_bytes(b"half a file")

    violations = await baseline.check()

    assert violations == [f"[temp file left behind] {temp}"]


async def test_the_checker_reports_a_stamped_file_without_its_row(baseline: Baseline) -> None:
    path = baseline.path(3)
    assert stamp_file(path, namespace=baseline.namespace).status == "stamped"

    violations = await baseline.check()

    assert violations == [f"[stamp not stored] {path}: stamped on disk, no metadata_stamps row"]


async def test_the_checker_reports_a_file_stored_twice(baseline: Baseline) -> None:
    path = baseline.path(0)
    other = StampRow(uuid.uuid4(), "f" * 64, str(path), 1, baseline.namespace, "lightweight", "text")
    await baseline.store.apply(WriteBatch(stamps=[other]))

    violations = await baseline.check()

    assert violations == [f"[stamp stored twice] {path}: 2 metadata_stamps rows"]


async def test_the_checker_reports_an_aggregate_that_differs_from_the_completed_stamps(baseline: Baseline) -> None:
    await baseline.store.apply(WriteBatch(bridge_states=[BridgeStateRow(baseline.namespace, 2, 3, 1, 0, 2, "idle")]))

    violations = await baseline.check()

    ns = baseline.namespace
    assert violations == [
        f"[aggregate differs] {ns}: total_items_aggregated is 1, the store holds 2 completed stamps",
        f"[aggregate differs] {ns}: total_size_bytes is 0, the store holds {baseline.completed_bytes} bytes of the "
        "completed stamps",
    ]


async def test_the_checker_reports_a_submitted_workflow_with_no_row_unless_requests_may_be_lost(
    baseline: Baseline,
) -> None:
    lost = uuid.uuid4()
    baseline.submitted.append(lost)

    assert await baseline.check() == [f"[submitted workflow missing] {lost}: no workflow_executions row"]
    assert await baseline.check(unstarted_ok=True) == []


# --- driving a deployment ---------------------------------------------------------------------------------------------


@dataclass
class Scenario:
    env: str
    namespace: str
    store_url: str
    deployment: Deployment
    tmp_path: Path
    extra_logs: list[Path] = field(default_factory=list)
    clients: list[subprocess.Popen[bytes]] = field(default_factory=list)  # killed, if still running, at the end

    @property
    def settings(self) -> Settings:
        return Settings(root=ROOT, env=self.env, instance="fault-client")

    def logs(self) -> str:
        """Every process's stderr tail, for failure messages."""
        nodes = [
            f"{p.node} (pid {p.pid}, instance {p.instance}, exit code {p.process.returncode}), stderr:\n"
            f"{tail(p.output(last=1 << 20))}"
            for p in [*self.deployment.retired, *self.deployment.processes.values()]
        ]
        clients = [f"{p.name}:\n{tail(read(p, last=1 << 20))}" for p in self.extra_logs]
        return "\n\n".join(["processes' logs:", *nodes, *clients])


def tail(text: str, last: int = 3_000) -> str:
    """The end of a log, each run of a repeated line shown once with its count (aiokafka repeats itself)."""
    lines = []
    for line, run in itertools.groupby(text.splitlines()):
        count = sum(1 for _ in run)
        lines.append(line if count == 1 else f"{line}  [{count} times]")
    return "\n".join(lines)[-last:]


def read(path: Path, last: int = 4_000) -> str:
    return path.read_text(errors="replace")[-last:] if path.exists() else "(none)"


def node_env(env: str, files: Path) -> dict[str, str]:
    """The settings of every process a case starts. The files are the test's, outside the project root, which is
    where the stamping effect may write by default."""
    return {
        "ONEX_ENV": env,
        "ONEX_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
        "ONEX_STAMP_TIMEOUT_MS": str(STEP_TIMEOUT_MS),
        "ONEX_STAMP_ROOTS": str(files),
    }


def kill_if_running(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


@contextlib.contextmanager
def killed_at_exit(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """``process``, killed when the block ends if it still runs (a failed assertion must not leave it behind)."""
    try:
        yield process
    finally:
        kill_if_running(process)


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the fault-injection suite needs this in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def scenario_on(bootstrap: str, store_url: str, tmp_path: Path) -> Iterator[Scenario]:
    """A migrated store and a (not yet started) deployment on topics and groups of its own (``ONEX_ENV``)."""
    env = f"fault{uuid.uuid4().hex[:8]}"
    upgrade_schema(store_url)
    deployment = Deployment(
        bus_url=f"kafka://{bootstrap}?{CONSUMER_QUERY}",
        store_url=store_url,
        logs=tmp_path / "logs",
        env=node_env(env, tmp_path),
    )
    with deployment:
        made = Scenario(env, f"onex.faults.{env}", store_url, deployment, tmp_path)
        try:
            yield made
        finally:
            for client in made.clients:
                kill_if_running(client)


@pytest.fixture
def scenario(kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path) -> Iterator[Scenario]:
    """On the session's broker and a fresh schema of the shared PostgreSQL."""
    with scenario_on(kafka_bootstrap, postgres_dsn, tmp_path) as made:
        yield made


@pytest.fixture
async def client_bus(kafka_bootstrap: str) -> AsyncIterator[KafkaBus]:
    async with KafkaBus(kafka_bootstrap, consumer_options=CLIENT_CONSUMER_OPTIONS) as bus:
        yield bus


@pytest.fixture
def postgres_cluster() -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL of this test's own, which it may stop: never the machine's shared server."""
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(ThrowawayPostgres())
        except RuntimeError as exc:
            unavailable(str(exc))
        yield cluster


@pytest.fixture
def broker() -> Iterator[RestartableBroker]:
    """A tansu broker of this test's own, which it may restart (the session's broker is shared)."""
    with contextlib.ExitStack() as stack:
        try:
            started = stack.enter_context(RestartableBroker())
        except BrokerUnavailable as exc:
            unavailable(str(exc))
        yield started


# --- an in-process client: StampClient, at most WINDOW in flight, the fault struck from the outcome callback ----------


@dataclass
class Drive:
    """What the test's client did and heard."""

    submitted: list[uuid.UUID] = field(default_factory=list)
    heard: dict[uuid.UUID, OnexEnvelopeV1] = field(default_factory=dict)
    struck_after: int | None = None  # outcomes heard when the fault struck
    recovered_at: float | None = None  # time.monotonic() when the fault was over

    def describe(self) -> str:
        return (
            f"client: {len(self.submitted)} submitted, {len(self.heard)} outcomes heard, "
            f"fault struck after {self.struck_after} outcomes"
        )


async def drive(
    scenario: Scenario,
    bus: KafkaBus,
    corpus: Corpus,
    *,
    strike: Callable[[], None],
    recover: Callable[[], Awaitable[None]],
) -> Drive:
    """Submit every file of ``corpus`` (at most WINDOW in flight); ``strike()`` when the STRIKE_AFTER-th outcome
    arrives, then ``await recover()``. Returns once every outcome is in, or RECOVERY_S after the recovery (the
    invariants then say what is missing): a workflow that never ends must not hang the test."""
    run = Drive()
    window = asyncio.Semaphore(WINDOW)
    struck = asyncio.Event()
    changed = asyncio.Event()

    def on_outcome(envelope: OnexEnvelopeV1) -> None:
        assert envelope.correlation_id is not None
        run.heard[envelope.correlation_id] = envelope
        window.release()
        changed.set()
        if len(run.heard) == STRIKE_AFTER:
            run.struck_after = len(run.heard)
            strike()  # here, synchronously: the fault lands at exactly this much progress
            struck.set()

    contracts = load_contracts(ROOT, check_implementations=False)
    async with StampClient(bus, contracts, scenario.settings, on_outcome=on_outcome) as client:
        with anyio.CancelScope(deadline=anyio.current_time() + BEFORE_FAULT_S) as scope:
            async with anyio.create_task_group() as tg:

                async def recovery() -> None:
                    await struck.wait()
                    await recover()
                    run.recovered_at = time.monotonic()
                    scope.deadline = anyio.current_time() + RECOVERY_S
                    changed.set()

                tg.start_soon(recovery)
                for path in corpus.paths():
                    await window.acquire()
                    run.submitted.append(await client.submit({"file_path": path, "namespace": scenario.namespace}))
                await bus.flush()
                while run.recovered_at is None or not run.heard.keys() >= set(run.submitted):
                    changed.clear()
                    await changed.wait()
    assert run.struck_after is not None, f"the fault never struck: {run.describe()}\n{scenario.logs()}"
    assert run.recovered_at is not None, f"the fault was not over in time: {run.describe()}\n{scenario.logs()}"
    return run


def reported_state(outcome: OnexEnvelopeV1) -> str:
    if outcome.event_type == "DEAD_LETTER":
        return "rejected"
    return str(outcome.payload.get("state"))


async def assert_client_agrees_with_the_store(scenario: Scenario, run: Drive) -> None:
    """Every outcome the client heard is the workflow's state in the store: nothing reported completed (or failed)
    that the store does not hold so."""
    stored = {w.correlation_id: w.state for w in await read_workflows(scenario.store_url, scenario.namespace)}
    wrong = [
        f"{cid}: the client heard {reported_state(outcome)!r}, the store holds {stored.get(str(cid), 'no row')!r}"
        for cid, outcome in run.heard.items()
        if reported_state(outcome) in TERMINAL and stored.get(str(cid)) != reported_state(outcome)
    ]
    assert not wrong, f"{len(wrong)} outcome(s) contradict the store, e.g.:\n" + "\n".join(wrong[:10])


# --- the CLI as the client: `onex stamp DIR` in a subprocess, its report parsed ---------------------------------------


@dataclass
class Report:
    """What ``onex stamp`` printed: the summary counts and the problem rows (path -> "status: reason")."""

    counts: dict[str, int]
    problems: dict[str, str]

    @property
    def completed(self) -> int:
        return self.counts.get("stamped", 0) + self.counts.get("unchanged", 0)


def rich_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """The tables in rich's box-drawing output: (column names, rows of cells), a folded cell joined up again."""
    tables: list[tuple[list[str], list[list[str]]]] = []
    header: list[str] | None = None
    rows: list[list[str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("┃"):
            header, rows = [c.strip() for c in line.strip("┃").split("┃")], []
        elif line.startswith("│") and header is not None:
            cells = [c.strip() for c in line.strip("│").split("│")]
            if rows and not cells[0]:
                rows[-1] = [a + b for a, b in zip(rows[-1], cells, strict=False)]
            else:
                rows.append(cells)
        elif line.startswith("└") and header is not None:
            tables.append((header, rows))
            header = None
    return tables


def parse_report(text: str) -> Report | None:
    """The report of ``onex stamp``, or None when it printed none (its summary table is missing). Tables are read
    by their column names, whatever else they hold."""
    counts: dict[str, int] | None = None
    problems: dict[str, str] = {}
    for header, rows in rich_tables(text):
        if "failed" in header and ("stamped" in header or "submitted" in header) and len(rows) == 1:
            counts = {name: int(value) for name, value in zip(header, rows[0], strict=False) if value.isdigit()}
        elif {"status", "path", "reason"} <= set(header):
            for row in rows:
                cells = dict(zip(header, row, strict=False))
                problems[cells["path"]] = f"{cells['status']}: {cells['reason']}"
    return None if counts is None else Report(counts, problems)


@dataclass
class CliRun:
    """``onex stamp DIR --namespace NS --timeout T`` against the scenario's bus and store, in the background."""

    name: str
    process: subprocess.Popen[bytes]
    stdout: Path
    log: Path
    timeout: float

    @classmethod
    def start(cls, scenario: Scenario, directory: Path, *, name: str, timeout: float, bus: str | None = None) -> CliRun:
        stdout, log = scenario.tmp_path / f"{name}.out", scenario.tmp_path / "logs" / f"{name}.log"
        scenario.extra_logs.append(log)
        args = ["stamp", str(directory), "--store", scenario.store_url, "--namespace", scenario.namespace]
        if bus is not None:
            args += ["--bus", bus]
        # Wide: rich folds cells to the terminal width, and the report's paths must stay on one line each.
        env = {**node_env(scenario.env, scenario.tmp_path), "COLUMNS": "400"}
        process = spawn_onex([*args, "--timeout", f"{timeout:g}"], env=env, log=log, stdout=stdout)
        scenario.clients.append(process)
        return cls(name, process, stdout, log, timeout)

    def output(self) -> str:
        out, err = read(self.stdout, last=6_000), tail(read(self.log, last=1 << 20))
        return f"{self.name} exited {self.process.returncode}; stdout:\n{out}\nstderr:\n{err}"

    async def finish(self) -> Report:
        """Wait for it to exit (it gives up on its workflows after its ``--timeout``; a minute more for start-up and
        the report) and return its report; fails when it printed none."""
        deadline = time.monotonic() + self.timeout + 60
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"the client did not finish within its timeout: {self.output()}")
            await anyio.sleep(0.1)
        report = parse_report(self.stdout.read_text(errors="replace"))
        assert report is not None, f"the client printed no report: {self.output()}"
        return report


async def strike_when_progressing(scenario: Scenario, cli: CliRun, *, total: int) -> int:
    """Wait until CLI_STRIKE_AFTER workflows of the namespace are terminal in the store; the count then. Fails when
    the client exits first or the run is over before it is struck (the case would prove nothing)."""
    deadline = time.monotonic() + BEFORE_FAULT_S
    while (done := await count_workflows(scenario.store_url, scenario.namespace, terminal=True)) < CLI_STRIKE_AFTER:
        assert cli.process.poll() is None, f"the client exited before the fault: {cli.output()}\n{scenario.logs()}"
        assert time.monotonic() < deadline, f"{done} workflows terminal after {BEFORE_FAULT_S:g} s\n{scenario.logs()}"
        await anyio.sleep(0.02)
    assert done < total, f"all {total} workflows were over before the fault struck: the case proves nothing"
    return done


class OutcomeWatch:
    """A consumer group of the test's own on the outcome topics, counting the namespace's workflows that ended as
    a client on the bus hears them (the store lags behind). An async context manager; it leaves the group on exit.
    """

    def __init__(self, scenario: Scenario, bootstrap: str) -> None:
        self.scenario = scenario
        self.bus = KafkaBus(bootstrap, consumer_options=CLIENT_CONSUMER_OPTIONS)
        self.heard = 0
        self.changed = asyncio.Event()

    async def __aenter__(self) -> OutcomeWatch:
        topics = [topic_name(event, env=self.scenario.env) for event in ("WORKFLOW_COMPLETED", "WORKFLOW_FAILED")]
        await self.bus.start()
        try:
            await self.bus.ensure_topics(topics)
            await self.bus.subscribe(topics, f"{self.scenario.env}.fault-watch", batch_handler=self._on, start="latest")
        except BaseException:
            await self.bus.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.bus.aclose()

    async def _on(self, envelopes: Sequence[OnexEnvelopeV1]) -> None:
        self.heard += sum(1 for e in envelopes if e.payload.get("namespace") == self.scenario.namespace)
        self.changed.set()

    async def until(self, outcomes: int, cli: CliRun, *, total: int) -> None:
        """Wait until ``outcomes`` were heard; fails when the client exits first or everything is over already."""
        with anyio.move_on_after(BEFORE_FAULT_S):
            while self.heard < outcomes:
                assert cli.process.poll() is None, f"the client exited before the fault: {cli.output()}"
                self.changed.clear()
                with anyio.move_on_after(0.5):  # and look at the client again
                    await self.changed.wait()
        assert self.heard >= outcomes, f"{self.heard} outcomes after {BEFORE_FAULT_S:g} s\n{self.scenario.logs()}"
        assert self.heard < total, f"all {total} workflows were over before the fault struck: the case proves nothing"


def assignments(proc: NodeProcess) -> int:
    """How often the consumer groups of a node process were assigned partitions, by its log."""
    return sum("partitions assigned" in line for line in proc.output(last=1 << 20).splitlines())


async def assert_recovered(scenario: Scenario, corpus: Corpus, run: Drive, *, fault: str) -> None:
    """The invariants hold within RECOVERY_S of the recovery, and the client heard what the store says."""
    assert run.recovered_at is not None
    await await_invariants(
        scenario.store_url,
        corpus,
        run.submitted,
        scenario.namespace,
        deadline=run.recovered_at + RECOVERY_S,
        context=lambda: f"{fault}; {run.describe()}\n{scenario.logs()}",
    )
    await assert_client_agrees_with_the_store(scenario, run)


async def assert_report_honest(scenario: Scenario, corpus: Corpus, report: Report, *, deadline: float) -> None:
    """No file the client reported stamped (it lists every other one as a problem) lacks a completed workflow in
    the store by ``deadline`` (``time.monotonic()``; the store may lag behind the outcomes the client heard)."""
    reported = set(corpus.originals) - report.problems.keys()
    assert len(reported) == report.completed, (
        f"the report counts {report.completed} file(s) stamped but lists {len(corpus.originals) - len(reported)} "
        f"of {len(corpus.originals)} as problems: {report.counts}"
    )
    while True:
        workflows = await read_workflows(scenario.store_url, scenario.namespace)
        wrong = sorted(reported - {w.file_path for w in workflows if w.state == "completed"})
        if not wrong or time.monotonic() >= deadline:
            break
        await anyio.sleep(0.25)
    rows = {w.file_path: w for w in workflows}
    found = Counter(rows[path].state if path in rows else "no row" for path in wrong)
    examples = [f"{path} ({rows[path].correlation_id if path in rows else 'no row'})" for path in wrong[:3]]
    assert not wrong, (
        f"the client reported {len(wrong)} file(s) stamped whose workflow is not completed in the store (their "
        f"workflows: {dict(found)}), e.g. {examples}; the report's counts: {report.counts}\n{scenario.logs()}"
    )


# --- the cases --------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.kafka
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "victim", ["orchestrator", "stamping_effect", "reducer", "database_adapter_effect", "registry"]
)
async def test_a_node_killed_mid_run_and_restarted_leaves_every_workflow_terminal_and_every_file_whole(
    victim: str, scenario: Scenario, client_bus: KafkaBus, tmp_path: Path
) -> None:
    deployment = scenario.deployment
    await deployment.start(NODES)
    corpus = write_corpus(tmp_path / "files", FILES, tag=scenario.env)

    def strike() -> None:
        deployment.processes[victim].process.send_signal(signal.SIGKILL)

    async def restart() -> None:
        await deployment.kill(victim)  # already dying: waits until it is gone
        await deployment.wait_running([deployment.spawn(victim)])

    run = await drive(scenario, client_bus, corpus, strike=strike, recover=restart)

    assert deployment.retired[-1].process.returncode == -signal.SIGKILL
    await assert_recovered(scenario, corpus, run, fault=f"{victim} SIGKILLed and restarted")


@pytest.mark.slow
@pytest.mark.kafka
@pytest.mark.timeout(240)
async def test_replicas_take_over_from_an_orchestrator_killed_for_good(
    scenario: Scenario, client_bus: KafkaBus, tmp_path: Path
) -> None:
    deployment = scenario.deployment
    await deployment.start(NODES)
    # The second replicas join before any work, so that the only partitions that move are the victim's.
    replicas = [deployment.spawn(n, name=f"{n}#2") for n in ("orchestrator", "stamping_effect", "reducer", "registry")]
    await deployment.wait_running(replicas)
    corpus = write_corpus(tmp_path / "files", FILES, tag=scenario.env)

    def strike() -> None:
        deployment.processes["orchestrator"].process.send_signal(signal.SIGKILL)

    async def gone() -> None:
        await deployment.kill("orchestrator")  # not restarted: its replica must take its workflows over

    run = await drive(scenario, client_bus, corpus, strike=strike, recover=gone)

    assert deployment.processes["orchestrator"].process.returncode == -signal.SIGKILL
    await assert_recovered(scenario, corpus, run, fault="one of two orchestrators SIGKILLed")


@pytest.mark.slow
@pytest.mark.kafka
@pytest.mark.postgres
@pytest.mark.timeout(240)
async def test_postgres_stopped_for_10_s_mid_run_then_every_workflow_ends_and_the_client_reports(
    kafka_bootstrap: str, postgres_cluster: ThrowawayPostgres, tmp_path: Path
) -> None:
    with scenario_on(kafka_bootstrap, postgres_cluster.dsn, tmp_path) as scenario:
        await scenario.deployment.start(NODES)
        corpus = write_corpus(tmp_path / "files", CLI_FILES, tag=scenario.env)
        client = CliRun.start(
            scenario,
            corpus.directory,
            name="client",
            timeout=OUTAGE_S + RECOVERY_S + 15,
            bus=scenario.deployment.bus_url,
        )

        await strike_when_progressing(scenario, client, total=CLI_FILES)
        postgres_cluster.halt()
        await anyio.sleep(OUTAGE_S)  # the outage itself
        postgres_cluster.resume()
        recovered_at = time.monotonic()

        report = await client.finish()
        await await_invariants(
            scenario.store_url,
            corpus,
            [],
            scenario.namespace,
            deadline=recovered_at + RECOVERY_S,
            context=lambda: (
                f"PostgreSQL stopped for {OUTAGE_S:g} s; {client.output()}\n{scenario.logs()}\n"
                f"PostgreSQL's log:\n{postgres_cluster.log_tail()}"
            ),
        )
        await assert_report_honest(scenario, corpus, report, deadline=recovered_at + RECOVERY_S)


@pytest.mark.slow
@pytest.mark.kafka
@pytest.mark.postgres
@pytest.mark.timeout(240)
async def test_the_broker_restarted_mid_run_loses_requests_but_none_is_reported_completed_and_new_work_goes_on(
    broker: RestartableBroker, postgres_dsn: str, tmp_path: Path
) -> None:
    with scenario_on(broker.bootstrap, postgres_dsn, tmp_path) as scenario:
        bus = scenario.deployment.bus_url
        await scenario.deployment.start(NODES)
        before = write_corpus(tmp_path / "files" / "before", CLI_FILES, tag=f"{scenario.env} before")
        after = write_corpus(tmp_path / "files" / "after", FILES // 3, tag=f"{scenario.env} after")
        async with OutcomeWatch(scenario, broker.bootstrap) as watch:
            first = CliRun.start(scenario, before.directory, name="client-before", timeout=RECOVERY_S + 5, bus=bus)
            # On outcomes the bus carries: the client hears them before the store holds them.
            await watch.until(BROKER_STRIKE_AFTER, first, total=CLI_FILES)
        assigned_before = {p.node: assignments(p) for p in scenario.deployment.processes.values()}
        broker.restart()  # from this thread: the broker dies with the thread that started it
        recovered_at = time.monotonic()
        # Work submitted after the restart: what the broker or the consumers' stale positions lose must be reported
        # failed or pending, never completed (see "Guarantees" in the README).
        second = CliRun.start(scenario, after.directory, name="client-after", timeout=RECOVERY_S + 5, bus=bus)

        first_report, second_report = await first.finish(), await second.finish()
        await assert_report_honest(scenario, before, first_report, deadline=recovered_at + RECOVERY_S)
        await assert_report_honest(scenario, after, second_report, deadline=time.monotonic() + RECOVERY_S)
        # The nodes reconnected: every one is still running and its consumer groups were assigned partitions again.
        for proc in scenario.deployment.processes.values():
            assert proc.process.poll() is None, proc.describe()
            assert assignments(proc) > assigned_before[proc.node], f"not assigned again: {proc.describe()}"
        # The clients' workflow ids are theirs: the namespace's rows are checked. A request the broker lost has no
        # row, and its file stays untouched; a result it lost leaves the file stamped and the workflow failed (its
        # step timed out) without the stamp's row: both are what losing the broker's memory means.
        await await_invariants(
            scenario.store_url,
            before + after,
            [],
            scenario.namespace,
            deadline=time.monotonic() + RECOVERY_S,
            results_lost_ok=True,
            context=lambda: f"broker restarted; {first.output()}\n{second.output()}\n{scenario.logs()}",
        )


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_onex_stamp_killed_mid_run_then_the_next_run_ends_every_workflow_it_left(tmp_path: Path) -> None:
    namespace = "onex.faults.memory"
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    store_url = f"sqlite:///{store_dir / 'onex.db'}"
    upgrade_schema(store_url)
    corpus = write_corpus(tmp_path / "files", CLI_FILES, tag="memory bus")
    args = ["stamp", str(corpus.directory), "--store", store_url, "--namespace", namespace, "--timeout", "120"]
    env = {**node_env("dev", tmp_path), "COLUMNS": "400"}
    logs = tmp_path / "logs"

    with contextlib.ExitStack() as stack:
        first = stack.enter_context(killed_at_exit(spawn_onex(args, env=env, log=logs / "first.log")))
        deadline = time.monotonic() + BEFORE_FAULT_S
        while await count_workflows(store_url, namespace) == 0:  # the first workflows are in the store: strike
            assert first.poll() is None, (
                f"the first run exited before any workflow was stored:\n{read(logs / 'first.log')}"
            )
            assert time.monotonic() < deadline, f"no workflow stored after {BEFORE_FAULT_S:g} s"
            await anyio.sleep(0.005)
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=30) == -signal.SIGKILL, "the first run finished before it was killed"
        left = await read_workflows(store_url, namespace)
        ended = sum(w.state in TERMINAL for w in left)
        assert ended < CLI_FILES, "every file's workflow had ended before the kill: the case proves nothing"

        second = stack.enter_context(
            killed_at_exit(spawn_onex(args, env=env, log=logs / "second.log", stdout=tmp_path / "second.out"))
        )

        def context() -> str:
            states = Counter(w.state for w in left)
            return (
                f"the first run's workflows at the kill: {dict(states)}\nsecond run exited {second.returncode}, "
                f"stdout:\n{read(tmp_path / 'second.out')}\nstderr:\n{tail(read(logs / 'second.log', last=1 << 20))}"
                f"\nfirst run's stderr:\n{tail(read(logs / 'first.log', last=1 << 20))}"
            )

        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(second.wait, 150)
        assert second.returncode is not None, f"the second run did not finish within 150 s: {context()}"

    await await_invariants(
        store_url,
        corpus,
        [uuid.UUID(w.correlation_id) for w in left],
        namespace,
        deadline=time.monotonic() + 2,  # nothing runs any more: what is wrong now stays wrong
        context=context,
    )
    report = parse_report(read(tmp_path / "second.out", last=1 << 20))
    assert second.returncode == 0, context()
    assert report is not None, context()
    assert report.completed == CLI_FILES, context()
