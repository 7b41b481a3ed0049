"""One process per node over Kafka: ``onex run --node NAME`` x 5 on a tansu broker and a PostgreSQL schema.

The five shipped nodes (orchestrator, stamping_effect, reducer, database_adapter_effect, registry) run as separate
``onex run`` processes, as deployment/docker-compose.yml runs them; the test process is a client of the deployment
(``StampClient`` on a ``KafkaBus``, as ``onex stamp --bus kafka://...`` is). 2,000 content items go through with at
most ``WINDOW`` workflows in flight, so the run is still in full swing when something is done to it. What must hold:

- every request ends as a completed workflow, and the client hears of each exactly once;
- the store holds each stamp exactly once (one row per workflow, no natural key twice, and the row is the stamp the
  workflow reports), and the namespace's aggregate counts 2,000 workflows, 2,000 items, 2,000 distinct hashes and
  the bytes submitted;
- every node registered and is alive in ``node_registrations`` (HEALTHY, last heartbeat a few intervals ago);
- SIGTERM drains every process and each exits 0;
- all of it again when the stamping effect is SIGKILLed mid-run (after ~500 outcomes, as soon as it has been sent
  new commands) and started again: what it held unacknowledged is handled by the new process, nothing is lost and
  nothing stored twice, and the registry marks the killed instance STALE;
- a command delivered twice (what Kafka does after such a crash when the handled batch was not committed yet) is
  stamped twice but stored and aggregated once; this one is checked deterministically, by publishing commands
  again, since a kill lands in that window only by chance.

Settings: heartbeats every 0.5 s; the consumers' session timeout is 2 s through the bus URL
(``?session_timeout_ms=2000``): how fast a killed member leaves its group and, on tansu, twice how long each group
join takes.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import asyncpg
import pytest
from aiokafka.partitioner import DefaultPartitioner
from onex._kafka import KafkaBus
from onex.client import StampClient
from onex.contracts import load_contracts
from onex.envelope import OnexEnvelopeV1, topic_name
from onex.settings import Settings

from tests.fixtures.deployment import NODES, Deployment, NodeProcess, onex_command, upgrade_schema
from tests.fixtures.kafka import TEST_CONSUMER_OPTIONS

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow, pytest.mark.anyio]

ROOT = Path(__file__).resolve().parents[2]
ITEMS = 2_000
WINDOW = 300  # workflows in flight at most
KILL_AFTER = 500
PARTITIONS = 4  # KafkaBus's default partitions per topic
HEARTBEAT_S = 0.5
# tansu holds an empty fetch for about half of fetch_max_wait_ms even when a record arrives meanwhile: 250 ms a hop
# with aiokafka's default (see KafkaBus.from_url).
CONSUMER_QUERY = "session_timeout_ms=2000&heartbeat_interval_ms=200&fetch_max_wait_ms=10"
CLIENT_CONSUMER_OPTIONS = {**TEST_CONSUMER_OPTIONS, "fetch_max_wait_ms": 10}
SETTLE_S = 60.0  # deadline for the store to catch up with the outcomes (the reducer closes windows every 0.5 s)


# --- the store, read directly -------------------------------------------------------------------------------------


def split_schema(store_url: str) -> tuple[str, str]:
    """``(dsn without ?schema=, schema)`` of a ``postgres_dsn`` store URL (asyncpg does not know ``schema``)."""
    parts = urlsplit(store_url)
    query = dict(parse_qsl(parts.query))
    schema = query.pop("schema")
    return urlunsplit(parts._replace(query=urlencode(query))), schema


async def connect(store_url: str) -> asyncpg.Connection:
    dsn, schema = split_schema(store_url)
    return await asyncpg.connect(dsn, server_settings={"search_path": schema}, timeout=10)


async def poll(check: Callable[[], Awaitable[str | None]], *, timeout: float) -> None:
    """Call ``check`` until it returns None (all good); it returns what is still missing, which the AssertionError
    raised after ``timeout`` seconds quotes."""
    deadline = time.monotonic() + timeout
    while (missing := await check()) is not None:
        if time.monotonic() > deadline:
            raise AssertionError(f"still after {timeout:g} s: {missing}")
        await anyio.sleep(0.1)


# --- the deployment -----------------------------------------------------------------------------------------------


@dataclass
class Scenario:
    env: str
    namespace: str
    store_url: str
    deployment: Deployment
    contents: list[str]

    namespaces: tuple[str, ...] = ()  # when set, item i goes to namespaces[i % len(namespaces)]

    def namespace_of(self, i: int) -> str:
        return self.namespaces[i % len(self.namespaces)] if self.namespaces else self.namespace

    def item(self, i: int) -> dict[str, str]:
        """The stamp request of item ``i``: distinct content of varied size, so a miscount changes every total."""
        return {"content": self.contents[i], "file_path": f"item-{i:05d}.txt", "namespace": self.namespace_of(i)}

    def total_bytes(self, items: int) -> int:
        return sum(len(c.encode()) for c in self.contents[:items])


@pytest.fixture
def scenario(kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path) -> Iterator[Scenario]:
    """A migrated schema and a (not yet started) deployment on topics and groups of its own (``ONEX_ENV``)."""
    env = f"mp{uuid.uuid4().hex[:8]}"
    upgrade_schema(postgres_dsn)
    deployment = Deployment(
        bus_url=f"kafka://{kafka_bootstrap}?{CONSUMER_QUERY}",
        store_url=postgres_dsn,
        logs=tmp_path / "logs",
        # The files stamped by path are the test's, outside the project root the stamping effect is confined to.
        env={"ONEX_ENV": env, "ONEX_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S), "ONEX_STAMP_ROOTS": str(tmp_path)},
    )
    namespace = f"onex.test.{env}"
    contents = [f"item {i} of {namespace}\n" + "x" * (i % 257) + "\n" for i in range(ITEMS + 1)]
    with deployment:
        yield Scenario(env, namespace, postgres_dsn, deployment, contents)


@pytest.fixture
async def client_bus(kafka_bootstrap: str) -> AsyncIterator[KafkaBus]:
    async with KafkaBus(kafka_bootstrap, consumer_options=CLIENT_CONSUMER_OPTIONS) as bus:
        yield bus


# --- driving it ---------------------------------------------------------------------------------------------------


@dataclass
class Seen:
    """What the test process saw of a run, updated live."""

    outcomes: dict[uuid.UUID, OnexEnvelopeV1] = field(default_factory=dict)
    heard: Counter[uuid.UUID] = field(default_factory=Counter)  # on_outcome calls per workflow
    commands: list[OnexEnvelopeV1] = field(default_factory=list)  # STAMP_FILE, as the orchestrator sent them
    stamped_by: Counter[str] = field(default_factory=Counter)  # STAMP_CREATED events per source instance
    stamps_per_workflow: Counter[uuid.UUID] = field(default_factory=Counter)  # >1: a command was handled again
    aggregated_by: dict[str, set[str]] = field(default_factory=dict)  # namespace -> reducer instances of its intents
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds, checking again whenever something new was seen."""
        while not condition():
            self.changed.clear()
            await self.changed.wait()


class Driver:
    """The test process's view of the deployment: a StampClient, and a group of its own watching the STAMP_FILE
    commands and the STAMP_CREATED events (by source instance and by workflow). An async context manager."""

    def __init__(self, scenario: Scenario, bus: KafkaBus) -> None:
        self.scenario = scenario
        self.bus = bus
        self.seen = Seen()
        self.command_topic = topic_name("STAMP_FILE", env=scenario.env, cls="cmd")
        self.milestone = asyncio.Event()
        self._window = asyncio.Semaphore(WINDOW)
        settings = Settings(root=ROOT, env=scenario.env, instance="test-client")
        contracts = load_contracts(ROOT, check_implementations=False)
        self.client = StampClient(bus, contracts, settings, on_outcome=self._on_outcome)

    async def __aenter__(self) -> Driver:
        watched = [
            self.command_topic,
            topic_name("STAMP_CREATED", env=self.scenario.env),
            topic_name("STATE_AGGREGATION_COMPLETED", env=self.scenario.env),
        ]
        self._watch = await self.bus.subscribe(
            watched, f"{self.scenario.env}.test-watch", batch_handler=self._on_watched
        )
        await self.client.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.client.__aexit__(None, None, None)
        finally:
            await self._watch.aclose()

    def _on_outcome(self, envelope: OnexEnvelopeV1) -> None:
        assert envelope.correlation_id is not None
        self.seen.heard[envelope.correlation_id] += 1
        self.seen.changed.set()
        self._window.release()
        if self.seen.heard.total() >= KILL_AFTER:
            self.milestone.set()

    async def _on_watched(self, envelopes: Sequence[OnexEnvelopeV1]) -> None:
        seen = self.seen
        for envelope in envelopes:
            if envelope.event_type == "STAMP_FILE":
                seen.commands.append(envelope)
            elif envelope.event_type == "STATE_AGGREGATION_COMPLETED":
                by = seen.aggregated_by.setdefault(envelope.payload["namespace"], set())
                by.add(envelope.source_instance or "?")
            else:
                seen.stamped_by[envelope.source_instance or "?"] += 1
                seen.stamps_per_workflow[uuid.UUID(envelope.payload["workflow_id"])] += 1
        seen.changed.set()

    async def run(
        self, items: range, *, at_milestone: Callable[[], Awaitable[None]] | None = None, timeout: float = 150.0
    ) -> list[uuid.UUID]:
        """Submit ``items`` (at most WINDOW in flight), wait for every outcome and for every stamp to be seen.

        ``at_milestone`` runs concurrently once KILL_AFTER outcomes are in.
        """
        cids: list[uuid.UUID] = []
        with anyio.fail_after(timeout):
            async with anyio.create_task_group() as tg:
                if at_milestone is not None:
                    callback = at_milestone

                    async def when_due() -> None:
                        await self.milestone.wait()
                        await callback()

                    tg.start_soon(when_due)
                for i in items:
                    await self._window.acquire()
                    cids.append(await self.client.submit(self.scenario.item(i)))
                await self.bus.flush()
                for cid in cids:
                    self.seen.outcomes[cid] = await self.client.outcome(cid)
            # Each stamp was published before its workflow's outcome, but the watching group may lag behind.
            await self.seen.until(lambda: all(cid in self.seen.stamps_per_workflow for cid in cids))
        return cids


def assert_all_completed(seen: Seen, items: int, deployment: Deployment) -> None:
    kinds = Counter(
        f"{e.event_type}:{e.payload.get('state')}" if e.event_type != "DEAD_LETTER" else f"DEAD_LETTER:{e.payload}"
        for e in seen.outcomes.values()
    )
    assert kinds == {"WORKFLOW_COMPLETED:completed": items}, f"{kinds}\n{deployment.logs_tail()}"
    assert len(seen.heard) == items
    assert set(seen.heard.values()) == {1}, "the client heard of a workflow more than once"


async def assert_store_exact(scenario: Scenario, seen: Seen, items: int) -> None:
    """The store holds every workflow completed and every stamp once; the aggregate counts each item once."""
    redone = sum(1 for n in seen.stamps_per_workflow.values() if n > 1)
    context = f"({redone} workflow(s) were stamped more than once: commands handled again)"
    conn = await connect(scenario.store_url)
    try:

        async def settled() -> str | None:
            progress = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM workflow_executions WHERE current_state = 'completed') AS completed, "
                "(SELECT count(*) FROM metadata_stamps) AS stamps, "
                "(SELECT count(*) FROM workflow_steps) / 2 AS steps, "
                "(SELECT total_workflows_processed FROM bridge_states WHERE namespace = $1) AS workflows, "
                "(SELECT total_items_aggregated FROM bridge_states WHERE namespace = $1) AS items",
                scenario.namespace,
            )
            # The orchestrator writes a workflow's final state itself; stamps and steps come from the database
            # adapter, which may still be behind.
            if all((progress[k] or 0) >= items for k in ("completed", "stamps", "steps", "workflows", "items")):
                return None
            return f"stored so far: {dict(progress)}; expected {items} of each"

        await poll(settled, timeout=SETTLE_S)

        states = dict(
            await conn.fetch("SELECT current_state, count(*) FROM workflow_executions GROUP BY current_state")
        )
        assert states == {"completed": items}
        stored = {r["correlation_id"] for r in await conn.fetch("SELECT correlation_id FROM workflow_executions")}
        assert stored == set(seen.outcomes)

        # Stamps: one row per workflow, no natural key twice, and each is the stamp its workflow reports.
        assert await conn.fetchval("SELECT count(*) FROM metadata_stamps") == items, context
        assert await conn.fetchval("SELECT count(DISTINCT workflow_id) FROM metadata_stamps") == items
        duplicates = await conn.fetch(
            "SELECT namespace, file_path, file_hash, count(*) FROM metadata_stamps "
            "GROUP BY namespace, file_path, file_hash HAVING count(*) > 1"
        )
        assert duplicates == []
        matching = await conn.fetchval(
            "SELECT count(*) FROM workflow_executions w JOIN metadata_stamps s "
            "ON s.id = w.stamp_id AND s.workflow_id = w.correlation_id AND s.file_hash = w.file_hash"
        )
        assert matching == items, context
        assert await conn.fetchval("SELECT sum(file_size) FROM metadata_stamps") == scenario.total_bytes(items)
        # Each workflow's steps once (natural key (workflow_id, step_name)): stamp and intelligence.
        assert await conn.fetchval("SELECT count(*) FROM workflow_steps") == 2 * items

        row = await conn.fetchrow("SELECT * FROM bridge_states WHERE namespace = $1", scenario.namespace)
        aggregate = {
            "workflows": row["total_workflows_processed"],
            "items": row["total_items_aggregated"],
            "bytes": row["total_size_bytes"],
            "unique hashes": row["unique_file_hashes"],
        }
        expected = {"workflows": items, "items": items, "bytes": scenario.total_bytes(items), "unique hashes": items}
        assert aggregate == expected, context
    finally:
        await conn.close()


async def assert_registered(
    scenario: Scenario, alive: Sequence[NodeProcess], stale: Sequence[NodeProcess] = ()
) -> None:
    """Every process in ``alive`` is registered HEALTHY with a heartbeat in the last few intervals; every one in
    ``stale`` is marked STALE."""
    recent_s = 6 * HEARTBEAT_S
    conn = await connect(scenario.store_url)
    try:

        async def registered() -> str | None:
            rows = await conn.fetch(
                "SELECT node_id, health_status, extract(epoch FROM now() - last_heartbeat) AS age_s "
                "FROM node_registrations"
            )
            by_id = {r["node_id"]: r for r in rows}
            missing = []
            for proc in alive:
                row = by_id.get(proc.node_id)
                if row is None:
                    missing.append(f"{proc.node_id} not registered")
                elif row["health_status"] != "HEALTHY" or row["age_s"] is None or row["age_s"] > recent_s:
                    missing.append(f"{proc.node_id}: {row['health_status']}, heartbeat {row['age_s']} s ago")
            for proc in stale:
                row = by_id.get(proc.node_id)
                if row is None or row["health_status"] != "STALE":
                    missing.append(f"{proc.node_id}: {row and row['health_status']}, expected STALE")
            return "; ".join(missing) if missing else None

        await poll(registered, timeout=30)
    finally:
        await conn.close()


async def stop_and_check(deployment: Deployment) -> None:
    """SIGTERM all: each process drains, says so, and exits 0."""
    codes = await deployment.stop(timeout=60)
    assert set(NODES) <= codes.keys()
    assert codes == dict.fromkeys(deployment.processes, 0), deployment.logs_tail()
    for proc in deployment.processes.values():
        assert proc.output().rstrip().endswith("stopped"), proc.describe()


# --- the tests ----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(240)
async def test_five_processes_complete_every_workflow_and_store_each_stamp_once(
    scenario: Scenario, client_bus: KafkaBus
) -> None:
    procs = await scenario.deployment.start(NODES)

    async with Driver(scenario, client_bus) as driver:
        cids = await driver.run(range(ITEMS))

    assert len(set(cids)) == ITEMS
    assert_all_completed(driver.seen, ITEMS, scenario.deployment)
    await assert_store_exact(scenario, driver.seen, ITEMS)
    await assert_registered(scenario, procs)
    await stop_and_check(scenario.deployment)


@pytest.mark.timeout(240)
async def test_a_stamping_effect_killed_mid_run_loses_nothing_and_stores_nothing_twice(
    scenario: Scenario, client_bus: KafkaBus
) -> None:
    deployment = scenario.deployment
    await deployment.start(NODES)
    victims: list[NodeProcess] = []
    outcomes_at_kill: list[int] = []

    async with Driver(scenario, client_bus) as driver:
        seen = driver.seen

        async def crash_and_restart() -> None:
            # Strike while the effect has work: as soon as the orchestrator is seen sending it new commands.
            sent = len(seen.commands)
            await seen.until(lambda: len(seen.commands) > sent)
            victims.append(await deployment.kill("stamping_effect"))
            outcomes_at_kill.append(seen.heard.total())
            await deployment.wait_running([deployment.spawn("stamping_effect")], timeout=60)

        await driver.run(range(ITEMS), at_milestone=crash_and_restart)

    assert len(victims) == 1
    victim, replacement = victims[0], deployment.processes["stamping_effect"]
    assert victim.process.returncode == -9
    assert_all_completed(seen, ITEMS, deployment)
    # The kill came mid-run: every workflow finished before it was stamped by the victim, and of the requests not
    # even submitted by then (at most WINDOW were in flight) every one was stamped by the replacement.
    assert seen.stamped_by[victim.instance] >= outcomes_at_kill[0] >= KILL_AFTER, seen.stamped_by
    assert seen.stamped_by[replacement.instance] >= ITEMS - outcomes_at_kill[0] - WINDOW, seen.stamped_by
    await assert_store_exact(scenario, seen, ITEMS)
    await assert_registered(scenario, list(deployment.processes.values()), stale=[victim])
    await stop_and_check(deployment)


REDELIVERED = 50


@pytest.mark.timeout(240)
async def test_a_command_delivered_again_is_stored_and_aggregated_once(
    scenario: Scenario, client_bus: KafkaBus
) -> None:
    first = 200
    await scenario.deployment.start(NODES)
    async with Driver(scenario, client_bus) as driver:
        await driver.run(range(first))
        await assert_store_exact(scenario, driver.seen, first)

        # What Kafka delivers after a crash between handling and committing: the same command records again.
        again = driver.seen.commands[:REDELIVERED]
        for command in again:
            await client_bus.publish(driver.command_topic, command)
        await client_bus.flush()
        replayed = {uuid.UUID(c.payload["workflow_id"]) for c in again}
        await driver.seen.until(lambda: all(driver.seen.stamps_per_workflow[w] == 2 for w in replayed))
        # One more item, stamped after the replays on the namespace's partition: once it is aggregated, so are they.
        await driver.run(range(first, first + 1))

    await assert_store_exact(scenario, driver.seen, first + 1)
    await stop_and_check(scenario.deployment)


def files(directory: Path, count: int, tag: str) -> Path:
    directory.mkdir(parents=True)
    for i in range(count):
        (directory / f"module_{i:03d}.py").write_text(f"# {tag} module {i}\nVALUE = {i}\n")
    return directory


async def onex(*args: str, env: str) -> subprocess.CompletedProcess[bytes]:
    """The ``onex`` CLI in a subprocess, on the deployment's topics (``ONEX_ENV``) and nothing else of ours."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ONEX_")}
    environ.update({"ONEX_ENV": env, "ONEX_ROOT": str(ROOT), "COLUMNS": "200"})
    with anyio.fail_after(120):
        return await anyio.run_process([*onex_command(), *args], check=False, env=environ)


@pytest.mark.timeout(240)
async def test_onex_stamp_submits_files_to_the_deployment_and_waits_for_them_or_not(
    scenario: Scenario, tmp_path: Path
) -> None:
    deployment = scenario.deployment
    await deployment.start(NODES)
    bus, store = deployment.bus_url, scenario.store_url
    waited = files(tmp_path / "waited", 20, "waited")
    not_waited = files(tmp_path / "not-waited", 10, "not waited")

    done = await onex(
        "stamp", str(waited), "--bus", bus, "--store", store, "--namespace", scenario.namespace, env=scenario.env
    )

    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert "stamped 20 file(s)" in out
    assert re.search(r"│\s+20\s+│\s+0\s+│\s+0\s+│\s+0\s+│", out), out  # stamped, unchanged, skipped, failed
    verified = await onex("verify", str(waited), env=scenario.env)
    assert verified.returncode == 0, verified.stdout.decode()

    submitted = await onex(
        "stamp",
        str(not_waited),
        "--bus",
        bus,
        "--store",
        store,
        "--namespace",
        scenario.namespace,
        "--no-wait",
        env=scenario.env,
    )

    assert submitted.returncode == 0, submitted.stderr.decode()
    assert "submitted 10 file(s)" in submitted.stdout.decode()
    conn = await connect(store)
    try:

        async def all_completed() -> str | None:
            completed = await conn.fetchval(
                "SELECT count(*) FROM workflow_executions WHERE namespace = $1 AND current_state = 'completed'",
                scenario.namespace,
            )
            return None if completed == 30 else f"{completed} of 30 workflows completed"

        await poll(all_completed, timeout=SETTLE_S)
        paths = {r["file_path"] for r in await conn.fetch("SELECT file_path FROM metadata_stamps")}
    finally:
        await conn.close()
    assert paths == {str(p) for p in [*waited.iterdir(), *not_waited.iterdir()]}
    verified = await onex("verify", str(not_waited), env=scenario.env)
    assert verified.returncode == 0, verified.stdout.decode()
    await stop_and_check(deployment)


def namespaces_on_every_partition(prefix: str, partitions: int = PARTITIONS) -> tuple[str, ...]:
    """Two namespaces per partition of a ``partitions``-partition topic, as the Kafka producer's default partitioner
    (murmur2 of the key) places them: with two members in a group, each member's range gets some."""
    partitioner = DefaultPartitioner()
    chosen: dict[int, list[str]] = {p: [] for p in range(partitions)}
    for n in range(10_000):
        name = f"{prefix}.{n}"
        placed = chosen[partitioner(name.encode(), list(range(partitions)), list(range(partitions)))]
        if len(placed) < 2:
            placed.append(name)
        if all(len(v) == 2 for v in chosen.values()):
            return tuple(sorted(name for names in chosen.values() for name in names))
    raise AssertionError("no namespaces found for every partition")


@pytest.mark.timeout(240)
async def test_two_reducers_and_two_stamping_effects_aggregate_each_namespace_once_in_one_place(
    scenario: Scenario, client_bus: KafkaBus
) -> None:
    deployment = scenario.deployment
    await deployment.start(NODES)
    # Second replicas join before any work, so no partition moves during the run.
    replicas = [deployment.spawn(node, name=f"{node}#2") for node in ("reducer", "stamping_effect")]
    await deployment.wait_running(replicas)
    scenario.namespaces = namespaces_on_every_partition(scenario.namespace)

    async with Driver(scenario, client_bus) as driver:
        await driver.run(range(ITEMS))
        assert_all_completed(driver.seen, ITEMS, deployment)

        expected = {
            ns: {
                "workflows": sum(1 for i in range(ITEMS) if scenario.namespace_of(i) == ns),
                "bytes": sum(
                    len(scenario.contents[i].encode()) for i in range(ITEMS) if scenario.namespace_of(i) == ns
                ),
            }
            for ns in scenario.namespaces
        }
        conn = await connect(scenario.store_url)
        try:

            async def aggregated() -> str | None:
                rows = await conn.fetch(
                    "SELECT namespace, total_workflows_processed AS workflows, total_items_aggregated AS items, "
                    "total_size_bytes AS bytes, unique_file_hashes AS hashes FROM bridge_states"
                )
                got = {r["namespace"]: dict(r) for r in rows}
                wrong = {
                    ns: got.get(ns)
                    for ns, want in expected.items()
                    if got.get(ns) is None
                    or (got[ns]["workflows"], got[ns]["items"], got[ns]["hashes"]) != (want["workflows"],) * 3
                    or got[ns]["bytes"] != want["bytes"]
                }
                if wrong:
                    return f"aggregates not (yet) right: {wrong}; expected {expected}"
                stamps = await conn.fetchval("SELECT count(*) FROM metadata_stamps")
                return None if stamps >= ITEMS else f"{stamps} stamps stored so far"

            await poll(aggregated, timeout=SETTLE_S)
            assert await conn.fetchval("SELECT count(*) FROM metadata_stamps") == ITEMS
        finally:
            await conn.close()
        await driver.seen.until(lambda: driver.seen.aggregated_by.keys() >= set(scenario.namespaces))

    reducers = {deployment.processes[name].instance for name in ("reducer", "reducer#2")}
    by = driver.seen.aggregated_by
    # Each namespace was aggregated by one reducer only, and both reducers had namespaces to aggregate.
    assert all(len(by[ns]) == 1 for ns in scenario.namespaces), by
    assert {next(iter(by[ns])) for ns in scenario.namespaces} == reducers, by
    stampers = {deployment.processes[name].instance for name in ("stamping_effect", "stamping_effect#2")}
    assert set(driver.seen.stamped_by) == stampers, driver.seen.stamped_by
    await stop_and_check(deployment)
