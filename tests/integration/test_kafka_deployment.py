"""One process per node over Kafka: ``onex run --node NAME`` x 5 on a tansu broker and a PostgreSQL schema.

The five shipped nodes (orchestrator, stamping_effect, reducer, database_adapter_effect, registry) run as separate
``onex run`` processes, as deployment/docker-compose.yml runs them; the test process is a client of the deployment
(``StampClient`` on a ``KafkaBus``), like ``onex stamp --bus kafka://...``. 2,000 content items go through, with at
most ``WINDOW`` workflows in flight, so the run is still in full swing when something is done to it. What must hold:

- every request ends as a completed workflow, and the client hears of each exactly once;
- the store holds each stamp exactly once (one row per workflow, no duplicate natural key, and the row is the stamp
  the workflow reports), and the namespace's aggregate counts 2,000 workflows, 2,000 items and the bytes submitted;
- every node registered and is alive in ``node_registrations`` (HEALTHY, heartbeat within a few intervals);
- SIGTERM drains every process and each exits 0;
- all of it again when the stamping effect is SIGKILLed after ~500 outcomes and started again: its unacknowledged
  commands are handled by the new process, nothing is lost and nothing is stored twice, and the registry marks the
  killed instance STALE.

Settings: heartbeats every 0.5 s; the consumers' session timeout is 2 s through the bus URL
(``?session_timeout_ms=2000``), which is how fast a killed member leaves its group (and, on tansu, half of it is
how long each group join takes).
"""

from __future__ import annotations

import asyncio
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
from onex._kafka import KafkaBus
from onex.client import StampClient
from onex.contracts import load_contracts
from onex.envelope import OnexEnvelopeV1, topic_name
from onex.settings import Settings

from tests.fixtures.deployment import NODES, Deployment, NodeProcess, onex_command
from tests.fixtures.kafka import TEST_CONSUMER_OPTIONS

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow, pytest.mark.anyio]

ROOT = Path(__file__).resolve().parents[2]
ITEMS = 2_000
WINDOW = 300  # workflows in flight at most: when 500 outcomes are in, at least 1,200 requests are still to come
KILL_AFTER = 500
HEARTBEAT_S = 0.5
CONSUMER_QUERY = "session_timeout_ms=2000&heartbeat_interval_ms=200"
import os

DELAY = float(os.environ.get("DELAY", "0"))
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


# --- the deployment -----------------------------------------------------------------------------------------------


@dataclass
class Scenario:
    env: str
    namespace: str
    store_url: str
    deployment: Deployment
    contents: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(len(c.encode()) for c in self.contents)


@pytest.fixture
def scenario(kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path) -> Iterator[Scenario]:
    """A migrated schema and a (not yet started) deployment on its own topics and groups (``ONEX_ENV``)."""
    env = f"mp{uuid.uuid4().hex[:8]}"
    upgrade = _run_sync([*onex_command(), "db", "upgrade", "--store", postgres_dsn])
    assert upgrade.returncode == 0, upgrade.stderr
    deployment = Deployment(
        bus_url=f"kafka://{kafka_bootstrap}?{CONSUMER_QUERY}",
        store_url=postgres_dsn,
        logs=tmp_path / "logs",
        env={"ONEX_ENV": env, "ONEX_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S)},
    )
    namespace = f"onex.test.{env}"
    # Distinct contents of varied sizes: 2,000 distinct hashes, and a byte total that a miscount would change.
    contents = [f"item {i} of {namespace}\n" + "x" * (i % 257) + "\n" for i in range(ITEMS)]
    with deployment:
        yield Scenario(env, namespace, postgres_dsn, deployment, contents)


def _run_sync(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)


@pytest.fixture
async def client_bus(kafka_bootstrap: str) -> AsyncIterator[KafkaBus]:
    async with KafkaBus(kafka_bootstrap, consumer_options=TEST_CONSUMER_OPTIONS) as bus:
        yield bus


# --- driving it ---------------------------------------------------------------------------------------------------


@dataclass
class Outcomes:
    """What the test process saw of a run, live while it goes on."""

    by_cid: dict[uuid.UUID, OnexEnvelopeV1] = field(default_factory=dict)
    heard: Counter[uuid.UUID] = field(default_factory=Counter)  # on_outcome calls per workflow
    commands: int = 0  # STAMP_FILE commands published by the orchestrator
    stamped_by: Counter[str] = field(default_factory=Counter)  # STAMP_CREATED events per source instance
    stamps_per_workflow: Counter[uuid.UUID] = field(default_factory=Counter)  # >1: a command was handled again
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds, re-checking whenever the watched topics deliver something."""
        while not condition():
            self.changed.clear()
            await self.changed.wait()


async def run_workload(
    scenario: Scenario,
    bus: KafkaBus,
    *,
    during: Callable[[Outcomes], Awaitable[None]] | None = None,
    timeout: float = 150.0,
) -> Outcomes:
    """Submit every content item (at most WINDOW in flight) and wait for every outcome.

    A group of the test's own watches the STAMP_FILE commands and the STAMP_CREATED events meanwhile (by source
    instance and by workflow). ``during``, if given, runs concurrently once KILL_AFTER outcomes are in, with the
    live ``Outcomes``.
    """
    settings = Settings(root=ROOT, env=scenario.env, instance="test-client")
    contracts = load_contracts(ROOT, check_implementations=False)
    seen = Outcomes()
    window = asyncio.Semaphore(WINDOW)
    milestone = asyncio.Event()

    def on_outcome(envelope: OnexEnvelopeV1) -> None:
        assert envelope.correlation_id is not None
        seen.heard[envelope.correlation_id] += 1
        seen.changed.set()
        window.release()
        if seen.heard.total() >= KILL_AFTER:
            milestone.set()

    async def on_watched(envelopes: Sequence[OnexEnvelopeV1]) -> None:
        for envelope in envelopes:
            if envelope.event_type == "STAMP_FILE":
                seen.commands += 1
            else:
                seen.stamped_by[envelope.source_instance or "?"] += 1
                seen.stamps_per_workflow[uuid.UUID(envelope.payload["workflow_id"])] += 1
        seen.changed.set()

    watched = [topic_name("STAMP_FILE", env=scenario.env, cls="cmd"), topic_name("STAMP_CREATED", env=scenario.env)]
    watch = await bus.subscribe(watched, f"{scenario.env}.test-watch", batch_handler=on_watched)
    cids: list[uuid.UUID] = []
    try:
        async with StampClient(bus, contracts, settings, on_outcome=on_outcome) as client:
            with anyio.fail_after(timeout):
                async with anyio.create_task_group() as tg:
                    if during is not None:

                        async def at_milestone() -> None:
                            await milestone.wait()
                            await during(seen)

                        tg.start_soon(at_milestone)
                    for i, content in enumerate(scenario.contents):
                        await window.acquire()
                        request = {
                            "content": content,
                            "file_path": f"item-{i:05d}.txt",
                            "namespace": scenario.namespace,
                        }
                        cids.append(await client.submit(request))
                    await bus.flush()
                    for cid in cids:
                        seen.by_cid[cid] = await client.outcome(cid)
                # Each workflow's stamp was published before its outcome, but the watching group may lag behind.
                await seen.until(lambda: len(seen.stamps_per_workflow) >= len(cids))
    finally:
        await watch.aclose()
    return seen


def assert_all_completed(outcomes: Outcomes, deployment: Deployment) -> None:
    kinds = Counter(
        f"{e.event_type}:{e.payload.get('state')}" if e.event_type != "DEAD_LETTER" else f"DEAD_LETTER:{e.payload}"
        for e in outcomes.by_cid.values()
    )
    assert kinds == {"WORKFLOW_COMPLETED:completed": ITEMS}, f"{kinds}\n{deployment.logs_tail()}"
    assert len(outcomes.heard) == ITEMS
    assert set(outcomes.heard.values()) == {1}, "the client heard of a workflow more than once"


async def poll(check: Callable[[], Awaitable[str | None]], *, timeout: float) -> None:
    """Call ``check`` until it returns None (all good); it returns what is still wrong, which the AssertionError
    raised after ``timeout`` seconds quotes."""
    deadline = time.monotonic() + timeout
    while (problem := await check()) is not None:
        if time.monotonic() > deadline:
            raise AssertionError(f"still after {timeout:g} s: {problem}")
        await anyio.sleep(0.1)


async def assert_store_exact(scenario: Scenario, outcomes: Outcomes) -> None:
    """The store holds every workflow completed and every stamp once; the aggregate counts each item once."""
    conn = await connect(scenario.store_url)
    try:

        async def settled() -> str | None:
            completed = await conn.fetchval(
                "SELECT count(*) FROM workflow_executions WHERE namespace = $1 AND current_state = 'completed'",
                scenario.namespace,
            )
            workflows = await conn.fetchval(
                "SELECT total_workflows_processed FROM bridge_states WHERE namespace = $1", scenario.namespace
            )
            if (completed, workflows) == (ITEMS, ITEMS):
                return None
            return f"{completed} completed workflows stored, {workflows} aggregated; expected {ITEMS}"

        await poll(settled, timeout=SETTLE_S)

        states = dict(
            await conn.fetch("SELECT current_state, count(*) FROM workflow_executions GROUP BY current_state")
        )
        assert states == {"completed": ITEMS}
        stored_ids = {r["correlation_id"] for r in await conn.fetch("SELECT correlation_id FROM workflow_executions")}
        assert stored_ids == set(outcomes.by_cid)

        # Stamps: one row per workflow, no natural key twice, and each is the stamp its workflow reports.
        assert await conn.fetchval("SELECT count(*) FROM metadata_stamps") == ITEMS
        assert await conn.fetchval("SELECT count(DISTINCT workflow_id) FROM metadata_stamps") == ITEMS
        duplicates = await conn.fetch(
            "SELECT namespace, file_path, file_hash, count(*) FROM metadata_stamps "
            "GROUP BY namespace, file_path, file_hash HAVING count(*) > 1"
        )
        assert duplicates == []
        matching = await conn.fetchval(
            "SELECT count(*) FROM workflow_executions w JOIN metadata_stamps s "
            "ON s.id = w.stamp_id AND s.workflow_id = w.correlation_id AND s.file_hash = w.file_hash"
        )
        assert matching == ITEMS
        assert await conn.fetchval("SELECT sum(file_size) FROM metadata_stamps") == scenario.total_bytes
        # Each workflow's steps once (natural key (workflow_id, step_name)): stamp + intelligence.
        assert await conn.fetchval("SELECT count(*) FROM workflow_steps") == 2 * ITEMS

        row = await conn.fetchrow("SELECT * FROM bridge_states WHERE namespace = $1", scenario.namespace)
        assert row is not None
        aggregate = {
            "workflows": row["total_workflows_processed"],
            "items": row["total_items_aggregated"],
            "bytes": row["total_size_bytes"],
            "unique hashes": row["unique_file_hashes"],
        }
        assert aggregate == {
            "workflows": ITEMS,
            "items": ITEMS,
            "bytes": scenario.total_bytes,
            "unique hashes": ITEMS,
        }
    finally:
        await conn.close()


async def assert_registered(
    scenario: Scenario, alive: Sequence[NodeProcess], stale: Sequence[NodeProcess] = ()
) -> None:
    """Every process in ``alive`` is registered HEALTHY with a heartbeat in the last few intervals; every one in
    ``stale`` is marked STALE."""
    conn = await connect(scenario.store_url)
    recent_s = 6 * HEARTBEAT_S
    try:

        async def registered() -> str | None:
            rows = await conn.fetch(
                "SELECT node_id, node_type, health_status, "
                "extract(epoch FROM now() - last_heartbeat) AS age_s FROM node_registrations"
            )
            by_id = {r["node_id"]: r for r in rows}
            problems = []
            for proc in alive:
                row = by_id.get(proc.node_id)
                if row is None:
                    problems.append(f"{proc.node_id} not registered")
                elif row["health_status"] != "HEALTHY" or row["age_s"] is None or row["age_s"] > recent_s:
                    problems.append(f"{proc.node_id}: {row['health_status']}, heartbeat {row['age_s']} s ago")
            for proc in stale:
                row = by_id.get(proc.node_id)
                if row is None or row["health_status"] != "STALE":
                    problems.append(f"{proc.node_id}: {row and row['health_status']}, expected STALE")
            return "; ".join(problems) if problems else None

        await poll(registered, timeout=30)
    finally:
        await conn.close()


async def stop_and_check(deployment: Deployment) -> None:
    codes = await deployment.stop(timeout=60)
    assert codes == dict.fromkeys(NODES, 0), deployment.logs_tail()
    for proc in deployment.processes.values():
        assert "stopped" in proc.output(), proc.describe()


# --- the tests ----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
async def test_five_processes_complete_every_workflow_and_store_each_stamp_once(
    scenario: Scenario, client_bus: KafkaBus
) -> None:
    procs = await scenario.deployment.start(NODES)

    outcomes = await run_workload(scenario, client_bus)

    assert_all_completed(outcomes, scenario.deployment)
    assert set(outcomes.stamps_per_workflow) == set(outcomes.by_cid)
    await assert_store_exact(scenario, outcomes)
    await assert_registered(scenario, procs)
    await stop_and_check(scenario.deployment)


@pytest.mark.timeout(300)
async def test_a_stamping_effect_killed_mid_run_loses_nothing_and_stores_nothing_twice(
    scenario: Scenario, client_bus: KafkaBus
) -> None:
    deployment = scenario.deployment
    await deployment.start(NODES)
    killed: list[NodeProcess] = []
    outcomes_at_kill: list[int] = []

    async def crash_and_restart(seen: Outcomes) -> None:
        # Strike while the effect has work: as soon as the orchestrator is seen sending it new commands.
        sent = seen.commands
        await seen.until(lambda: seen.commands > sent)
        await anyio.sleep(DELAY)
        victim = await deployment.kill("stamping_effect")
        killed.append(victim)
        outcomes_at_kill.append(seen.heard.total())
        assert victim.process.returncode == -9
        replacement = deployment.spawn("stamping_effect")
        await deployment.wait_running([replacement], timeout=60)

    outcomes = await run_workload(scenario, client_bus, during=crash_and_restart)

    assert killed, "the stamping effect was never killed"
    assert_all_completed(outcomes, deployment)
    # The kill came mid-run: both the killed and the restarted instance stamped part of the items.
    victim = killed[0]
    replacement = deployment.processes["stamping_effect"]
    # Every workflow finished before the kill was stamped by the victim; of those not submitted yet by then (at most
    # WINDOW were in flight), every one was stamped by the replacement.
    assert outcomes.stamped_by[victim.instance] >= outcomes_at_kill[0] >= KILL_AFTER, outcomes.stamped_by
    assert outcomes.stamped_by[replacement.instance] >= ITEMS - outcomes_at_kill[0] - WINDOW, outcomes.stamped_by
    again = sum(1 for n in outcomes.stamps_per_workflow.values() if n > 1)
    print(f"DEBUG stamped_by={dict(outcomes.stamped_by)} workflows stamped more than once: {again}")
    await assert_store_exact(scenario, outcomes)
    await assert_registered(scenario, list(deployment.processes.values()), stale=[victim])
    await stop_and_check(deployment)
