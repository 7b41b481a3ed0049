"""Whole workflows on PostgreSQL: the CLI writes what SQLite writes, lost backends lose nothing, hostile text is data.

Every test here runs the real node graph (orchestrator, stamping effect, reducer, database adapter, registry):
through ``onex stamp`` in a subprocess, or in-process with ``Runtime`` on a ``MemoryBus`` and ``StampClient``
submitting content items as ``bench/e2e.py`` does. Each test gets a fresh schema (``postgres_dsn``).
"""

from __future__ import annotations

import itertools
import os
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
from blake3 import blake3
from onex._postgres import PostgresSettings, PostgresStore
from onex.bus import RetryPolicy
from onex.client import StampClient
from onex.envelope import OnexEnvelopeV1
from onex.runtime import Runtime
from onex.settings import Settings
from onex.store import TABLES, Store
from onex.stores import open_store
from onex.testing import Harness

from nodes.database_adapter_effect.v1_0_0.node import NodeDatabaseAdapterEffect
from tests.fixtures.postgres import CuttableProxy, through

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

ROOT = Path(__file__).resolve().parents[2]
ONEX = Path(sys.executable).with_name("onex")


# --- running the CLI -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


async def onex(*args: str) -> Ran:
    """``onex --root ROOT ARGS...`` in a subprocess, with no ``ONEX_*`` variable of ours leaking into it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONEX_")}
    env["COLUMNS"] = "200"  # rich wraps tables to the terminal width; keep rows on one line
    with anyio.fail_after(90):
        done = await anyio.run_process([str(ONEX), "--root", str(ROOT), *args], check=False, env=env)
    return Ran(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))


# --- a directory of mixed files --------------------------------------------------------------------------------------

MIXED: dict[str, str | bytes] = {
    "src/app.py": "#!/usr/bin/env python3\n# -*- coding: utf-8 -*-\nprint('hi')\n",
    "src/lib/util.py": "def f():\n    return 1\n",
    "src/lib/__init__.py": "",
    "src/main.rs": "fn main() {}\n",
    "src/index.js": "console.log(1);\r\nconsole.log(2);\r\n",
    "src/style.css": "body { color: red; }\n",
    "src/page.html": "<html><body>x</body></html>\n",
    "src/query.sql": "SELECT 1;\n",
    "src/run.sh": "#!/bin/sh\necho hi\n",
    "src/Main.java": "class Main {}\n",
    "src/main.go": "package main\n",
    "docs/readme.md": "# Title\n\ntext\n",
    "docs/notes.txt": "plain notes\n",
    "docs/copy-of-notes.txt": "plain notes\n",  # same content: one hash, two stamps
    "docs/bom.txt": "\ufeffwith a BOM\n",
    "config/settings.yaml": "a: 1\nb: [1, 2]\n",
    "config/other.toml": "[x]\ny = 1\n",
    "config/data.json": '{"k": [1, 2, 3]}\n',  # no comment syntax: a sidecar
    "config/table.csv": "a,b\n1,2\n",
    "config/app.ini": "[s]\nk=v\n",
    "data/blob.bin": bytes(range(256)) * 4,
    "data/image.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
    "data/doc.pdf": b"%PDF-1.4\n" + b"\x00\x01" * 40,
    "data/archive.zip": b"PK\x03\x04" + b"\x00" * 40,
    "data/fake.py": b"\x00\x01binary in a .py\x00",  # binary with a text extension: a sidecar
    "data/latin1.py": "# caf\xe9\n".encode("latin-1"),  # not UTF-8, declares nothing: a sidecar
    "data/long.sh": b"#!" + b"x" * 10_000 + b"\n",  # a shebang longer than a stamp may follow: refused, it fails
    "data/unknown.xyz": "what am I\n",
    "deep/a/b/c/d.py": "x = 1\n",
    "deep/a/b/e.md": "e\n",
    "big/large.txt": ("0123456789abcdef" * 64 + "\n") * 400,  # 416 KB: hashed in a worker thread
    "ignored/skip.py": "print('ignored')\n",
    ".gitignore": "ignored/\n",
}
STAMPED = len(MIXED) - 1  # everything but ignored/skip.py
FAILED = {"data/long.sh"}


def write_tree(root: Path, files: Mapping[str, str | bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)


# --- what a run left in a store, with what differs between two runs taken out -------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """A store's rows as comparable values: generated ids, uuids, times and durations dropped, paths relative."""

    workflows: list[tuple[Any, ...]]
    steps: dict[str, list[tuple[Any, ...]]]  # by the workflow's relative path
    transitions: dict[str, list[tuple[Any, ...]]]  # by the workflow's relative path, in the order they happened
    stamps: list[tuple[Any, ...]]
    bridge_states: list[tuple[Any, ...]]
    registrations: list[tuple[Any, ...]]
    counts: dict[str, int]


def relative(path: str | None, root: Path) -> str | None:
    if path is None:
        return None
    return Path(path).resolve().relative_to(root.resolve()).as_posix()


async def snapshot(url: str, root: Path, namespace: str) -> Snapshot:
    def local(text: str | None) -> str | None:
        return None if text is None else text.replace(str(root.resolve()), "<root>").replace(str(root), "<root>")

    async with open_store(url) as store:
        rows = await store.list_workflows(limit=10_000)
        workflows, steps, transitions = [], {}, {}
        for w in rows:
            rel = relative(w.file_path, root)
            assert rel is not None, w
            workflows.append(
                (rel, w.workflow_type, w.current_state, w.state_seq, w.namespace, w.file_hash, local(w.error_message))
            )
            steps[rel] = [
                (s.step_name, s.step_order, s.status, local(s.error_message))
                for s in await store.list_steps(w.correlation_id)
            ]
            transitions[rel] = [
                (t.entity_type, t.from_state, t.to_state, t.transition_event)
                for t in await store.list_transitions(str(w.correlation_id))
            ]
        stamps = [
            (relative(s.file_path, root), s.file_hash, s.file_size, s.namespace, s.stamp_type, s.file_type)
            for s in await store.list_stamps(namespace, limit=10_000)
        ]
        bridge_states = [
            (
                b.namespace,
                b.total_workflows_processed,
                b.total_items_aggregated,
                b.total_size_bytes,
                b.unique_file_hashes,
                b.aggregation_metadata.get("by_file_type"),
                b.aggregation_metadata.get("size_buckets"),
            )
            for b in await store.list_bridge_states()
        ]
        registrations = [
            (r.metadata.get("node_name"), r.node_type, r.node_version) for r in await store.list_registrations()
        ]
        counted = ("workflow_executions", "workflow_steps", "metadata_stamps", "bridge_states")
        counts = {t: await store.count(t) for t in counted}
    return Snapshot(
        workflows=sorted(workflows),
        steps=steps,
        transitions=transitions,
        stamps=sorted(stamps),
        bridge_states=sorted(bridge_states),
        registrations=sorted(registrations),
        counts=counts,
    )


# --- a. the CLI on PostgreSQL writes what it writes on SQLite --------------------------------------------------------


async def test_onex_stamp_on_postgres_writes_the_rows_it_writes_on_sqlite(tmp_path: Path, postgres_dsn: str) -> None:
    on_sqlite, on_postgres = tmp_path / "on_sqlite", tmp_path / "on_postgres"
    write_tree(on_sqlite, MIXED)
    write_tree(on_postgres, MIXED)
    sqlite_url = f"sqlite:///{tmp_path / 'onex.db'}"

    # PostgreSQL is never migrated behind the user's back (only the embedded SQLite default is): upgrade first.
    upgraded = await onex("db", "upgrade", "--store", postgres_dsn)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "applied 0001_initial" in upgraded.stdout

    runs = {
        "sqlite": await onex("stamp", str(on_sqlite), "--store", sqlite_url),
        "postgres": await onex("stamp", str(on_postgres), "--store", postgres_dsn),
    }
    for kind, ran in runs.items():
        # Exit 1: data/long.sh is refused (its shebang is too long to put a stamp after), the same on both.
        assert ran.returncode == 1, (kind, ran.stdout, ran.stderr)
        assert "Traceback" not in ran.stderr, (kind, ran.stderr)
        assert "long.sh" in ran.stdout, (kind, ran.stdout)

    lite = await snapshot(sqlite_url, on_sqlite, "onex.default")
    pg = await snapshot(postgres_dsn, on_postgres, "onex.default")

    # The SQLite run is the reference; first make sure it is the run this test means, so that equal is meaningful.
    assert len(lite.workflows) == STAMPED
    assert {w[0] for w in lite.workflows} == set(MIXED) - {"ignored/skip.py"}
    assert {w[0] for w in lite.workflows if w[2] == "failed"} == FAILED
    assert len(lite.stamps) == STAMPED - len(FAILED)
    assert all(len(t) == 2 for t in lite.transitions.values()), lite.transitions
    assert [b[0] for b in lite.bridge_states] == ["onex.default"]

    assert pg.counts == lite.counts
    assert pg.workflows == lite.workflows
    assert pg.stamps == lite.stamps
    assert pg.steps == lite.steps
    assert pg.transitions == lite.transitions
    assert pg.bridge_states == lite.bridge_states
    assert pg.registrations == lite.registrations


async def test_onex_stamp_on_an_unmigrated_schema_says_to_run_db_upgrade(tmp_path: Path, postgres_dsn: str) -> None:
    write_tree(tmp_path / "d", {"a.py": "x = 1\n"})
    ran = await onex("stamp", str(tmp_path / "d"), "--store", postgres_dsn)
    assert ran.returncode == 1
    assert "onex db upgrade" in ran.stderr, ran.stderr
    assert (tmp_path / "d" / "a.py").read_text() == "x = 1\n"


# --- b. 5,000 items while the store's backends are terminated -------------------------------------------------------


@pytest.fixture
async def admin(postgres_server: str) -> AsyncIterator[Any]:
    """A connection of the test's own, outside every store's pool."""
    conn = await asyncpg.connect(postgres_server, server_settings={"application_name": "onex-test-admin"})
    try:
        yield conn
    finally:
        await conn.close()


def in_process(store_url: str) -> Settings:
    return Settings.load(environ={}, root=str(ROOT), store=store_url).with_(heartbeat_interval_s=0)


async def open_upgraded(url: str) -> PostgresStore:
    store = PostgresStore(url)
    await store.open()
    await store.upgrade()
    return store


# Terminates every backend of one application_name, but only at a moment when at least one of them is inside a
# statement or a transaction, so that the kill lands on a write in flight rather than on idle pool connections
# (which asyncpg would replace silently). Returns (backends terminated, of which busy).
_TERMINATE_WHEN_BUSY = """
WITH app AS (SELECT pid, state FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid())
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) AS killed, count(*) FILTER (WHERE state <> 'idle') AS busy
FROM app WHERE EXISTS (SELECT 1 FROM app WHERE state <> 'idle')
"""


async def test_5000_items_survive_terminated_backends_exactly_once(postgres_dsn: str, admin: Any) -> None:
    items, ns = 5_000, "bench"
    app = f"onex-test-{uuid.uuid4().hex[:8]}"
    kill_at = (500, 1_200, 2_000, 2_800, 3_600)  # outcomes received before each round of terminations
    reached = {n: anyio.Event() for n in kill_at}
    finished = anyio.Event()
    outcomes = 0
    kills: list[tuple[int, int]] = []

    def progress(_: OnexEnvelopeV1) -> None:
        nonlocal outcomes
        outcomes += 1
        if outcomes in reached:
            reached[outcomes].set()

    async def terminator() -> None:
        for n in kill_at:
            await reached[n].wait()
            while not finished.is_set():
                killed, busy = await admin.fetchrow(_TERMINATE_WHEN_BUSY, app)
                if killed:
                    kills.append((killed, busy))
                    break
                await anyio.sleep(0.001)  # polls: the server has nothing to wait on for "a backend got busy"

    # sslmode=disable (the test servers have no TLS): with asyncpg's default, prefer, a reconnect that its 5 s timeout
    # cancels during the SSL request leaves an exception in a future nobody awaits ("unexpected connection_lost()
    # call"), which the test runner reports as this test's failure on a machine slow enough for that.
    store = await open_upgraded(f"{postgres_dsn}&application_name={app}&max_size=4&sslmode=disable")
    try:
        settings = in_process(postgres_dsn)
        async with (
            Runtime(settings, store=store) as runtime,
            StampClient(runtime.bus, runtime.contracts, settings, on_outcome=progress) as client,
        ):
            with anyio.fail_after(100):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(terminator)
                    cids = [
                        await client.submit(
                            {"content": f"item {i:05d}\n" + "x" * 200, "file_path": f"item-{i}.txt", "namespace": ns}
                        )
                        for i in range(items)
                    ]
                    states = Counter([(await client.outcome(cid)).payload.get("state") for cid in cids])
                    await runtime.drain()
                    finished.set()
        assert states == {"completed": items}, states
        assert len(kills) == len(kill_at), kills  # every round found the store busy and terminated its backends
        stats = store.statistics()
        assert stats.connection_failures >= 1, stats  # and at least one kill cut a write in flight

        async with store.connection() as conn:
            workflows = await conn.fetchrow(
                "SELECT count(*) AS n, count(DISTINCT correlation_id) AS keys, count(DISTINCT file_path) AS paths,"
                " count(*) FILTER (WHERE current_state = 'completed' AND file_hash IS NOT NULL) AS completed"
                " FROM workflow_executions"
            )
            stamps = await conn.fetchrow(
                "SELECT count(*) AS n, count(DISTINCT (namespace, file_path, file_hash)) AS keys,"
                " count(DISTINCT file_path) AS paths, count(DISTINCT workflow_id) AS workflows FROM metadata_stamps"
            )
            steps = await conn.fetchrow(
                "SELECT count(*) AS n, count(DISTINCT (workflow_id, step_name)) AS keys FROM workflow_steps"
            )
            transitions = await conn.fetchrow(
                "SELECT count(*) AS n, count(DISTINCT (entity_id, from_state, to_state)) AS keys FROM fsm_transitions"
                " WHERE entity_id IN (SELECT correlation_id::text FROM workflow_executions)"
            )
            paths = {r["file_path"] for r in await conn.fetch("SELECT file_path FROM workflow_executions")}
        assert dict(workflows) == {"n": items, "keys": items, "paths": items, "completed": items}
        assert dict(stamps) == {"n": items, "keys": items, "paths": items, "workflows": items}
        assert dict(steps) == {"n": 2 * items, "keys": 2 * items}
        assert dict(transitions) == {"n": 2 * items, "keys": 2 * items}
        assert paths == {f"item-{i}.txt" for i in range(items)}
        bridge = await store.get_bridge_state(ns)
        assert bridge is not None
        totals = (bridge.total_workflows_processed, bridge.total_items_aggregated, bridge.unique_file_hashes)
        assert totals == (items, items, items)
        health = await store.health()
        assert (health.status, health.queued_writes) == ("ok", 0), health
    finally:
        await store.aclose()


# --- b2. PostgreSQL away for longer than the adapter's whole retry budget --------------------------------------------

OUTAGE_S = 10.0


async def test_an_outage_longer_than_the_retry_budget_dead_letters_nothing_and_loses_nothing(
    postgres_dsn: str,
) -> None:
    proxy = CuttableProxy.before(postgres_dsn)
    async with proxy as port:
        # retry_attempts=1: the store gives up on its first failed attempt, so every failure reaches the adapter at
        # once, and an adapter that passed it on to the bus would use up the bus's retries within the first seconds.
        url = f"{through(postgres_dsn, port)}&retry_attempts=1&breaker_reset=0.5"
        async with Harness(root=ROOT, store_url=url) as h:
            adapter = h.runtime.node("database_adapter_effect")
            assert isinstance(adapter, NodeDatabaseAdapterEffect)
            retry = adapter.contract.resilience.retry
            policy = RetryPolicy(max_attempts=retry.max_attempts, backoff_ms=float(retry.backoff_ms))
            budget_s = sum(policy.delay_s(attempt) for attempt in range(1, policy.max_attempts))
            assert 3 * budget_s < OUTAGE_S  # the outage is clearly longer than the bus would keep retrying

            cids: list[uuid.UUID] = []
            per_namespace: Counter[str] = Counter()

            async def request(namespace: str = "outage") -> None:
                i = len(cids)
                sent = await h.publish(
                    "STAMP_REQUESTED", {"content": f"item {i}\n", "file_path": f"item-{i}.txt", "namespace": namespace}
                )
                assert sent.correlation_id is not None
                cids.append(sent.correlation_id)
                per_namespace[namespace] += 1

            # First with the server there: the reducer loads the namespace's totals (it reads the store once per
            # namespace), and every node is registered.
            await request()
            await h.settle()

            await proxy.sever()
            try:
                with anyio.fail_after(OUTAGE_S + 30):
                    started = anyio.current_time()
                    await request()
                    for _ in itertools.count():  # polled: health has no event to wait on
                        if adapter.health() == "DEGRADED":
                            break
                        await anyio.sleep(0.01)
                    # Requests keep coming for the whole outage, which lasts until the store was asked more often
                    # than the bus would retry a message, and at least OUTAGE_S.
                    while anyio.current_time() - started < OUTAGE_S or proxy.refused <= policy.max_attempts:
                        await request()
                        # A namespace first seen now: the reducer must read its totals, and holds until it can.
                        await request("outage.new")
                        await anyio.sleep(0.25)
                        assert h.dead_letters() == []
                        assert adapter.health() == "DEGRADED"
                    held = adapter.statistics()
                    assert held.pending_rows > 0, held
                    assert h.bus.statistics().dead_lettered == 0
            finally:
                proxy.mend()  # also when an assertion failed: shutting the harness down needs the store
            with anyio.fail_after(30):
                await h.settle()  # every message handled, the held ones included

            assert adapter.health() == "HEALTHY"
            assert adapter.statistics().pending_batches == 0
            assert h.dead_letters() == []
            assert h.bus.statistics().dead_lettered == 0
            outcomes = {e.correlation_id: e for e in h.of("WORKFLOW_COMPLETED") if e.correlation_id in cids}
            assert len(outcomes) == len(cids)
            steps = sum(len(e.payload["steps"]) for e in outcomes.values())
            transitions = sum(len(h.transitions(cid)) for cid in cids)

        # Straight to the server, past the proxy, on the test's schema.
        async with PostgresStore(postgres_dsn) as direct, direct.connection() as conn:
            workflows = await conn.fetchrow(
                "SELECT count(*) AS n, count(DISTINCT correlation_id) AS keys,"
                " count(*) FILTER (WHERE current_state = 'completed') AS completed"
                " FROM workflow_executions WHERE correlation_id = ANY($1::uuid[])",
                cids,
            )
            stamps = await conn.fetchrow(
                "SELECT count(*) AS n, count(DISTINCT workflow_id) AS workflows FROM metadata_stamps"
                " WHERE workflow_id = ANY($1::uuid[])",
                cids,
            )
            step_rows = await conn.fetchrow(
                "SELECT count(*) AS n, count(DISTINCT (workflow_id, step_name)) AS keys FROM workflow_steps"
                " WHERE workflow_id = ANY($1::uuid[])",
                cids,
            )
            transition_rows = await conn.fetchrow(
                "SELECT count(*) AS n, count(DISTINCT id) AS keys FROM fsm_transitions WHERE entity_id = ANY($1)",
                [str(cid) for cid in cids],
            )
            bridge = dict(
                await conn.fetch(
                    "SELECT namespace, total_items_aggregated FROM bridge_states WHERE namespace LIKE 'outage%'"
                )
            )
        n = len(cids)
        assert dict(workflows) == {"n": n, "keys": n, "completed": n}
        assert dict(stamps) == {"n": n, "workflows": n}
        assert dict(step_rows) == {"n": steps, "keys": steps}
        assert dict(transition_rows) == {"n": transitions, "keys": transitions}
        assert transitions == 2 * n  # processing, completed: each published once, each stored once
        assert bridge == dict(per_namespace)  # the reducer's last aggregates, written at shutdown


# --- c. SQL-looking text is data, end to end -------------------------------------------------------------------------

INJECTION = "'); DROP TABLE metadata_stamps; --"

# File names a Linux file system takes (no "/" and no NUL); each file's content is hostile too.
HOSTILE_FILES: dict[str, str] = {
    "a'; DELETE FROM x; --.txt": "'); DROP TABLE workflow_executions; --\n",
    "Robert'); DROP TABLE workflow_executions;--.py": 'x = "\'; TRUNCATE fsm_transitions; --"\n',
    '" OR "1"="1.md': '" OR "1"="1\n',
    "$1 $$ $tag$ ::jsonb %s {0} ?.sql": "SELECT $1; -- $$ $tag$ ::jsonb %s {0} ?\n",
    "back\\slash \\'; SELECT pg_sleep(10); --.txt": "\\'; SELECT pg_sleep(10); --\n",
    "ünïcødé ✓ 🚀 日本語.txt": "ünïcødé ✓ 🚀 日本語\n",
    "semi;colon.yaml": 'k: "\'; DROP SCHEMA public CASCADE; --"\n',
}


async def assert_schema_intact(store: Store, admin: Any, schema: str) -> None:
    tables = {
        r["tablename"] for r in await admin.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
    }
    assert tables == {*TABLES, "metastore_entities", "metastore_versions", "schema_migrations"}
    for table in TABLES:
        await store.count(table)  # every table still answers


async def test_sql_looking_names_namespace_and_content_pass_through_the_cli_verbatim(
    tmp_path: Path, postgres_dsn: str, admin: Any
) -> None:
    directory = tmp_path / "hostile"
    write_tree(directory, HOSTILE_FILES)
    assert (await onex("db", "upgrade", "--store", postgres_dsn)).returncode == 0

    ran = await onex("stamp", str(directory), "--store", postgres_dsn, "--namespace", INJECTION)
    assert ran.returncode == 0, (ran.stdout, ran.stderr)
    verified = await onex("verify", str(directory))
    assert verified.returncode == 0, verified.stdout

    async with open_store(postgres_dsn) as store:
        workflows = await store.list_workflows(limit=100)
        assert {relative(w.file_path, directory) for w in workflows} == set(HOSTILE_FILES)
        assert {(w.namespace, w.current_state) for w in workflows} == {(INJECTION, "completed")}
        stamps = await store.list_stamps(INJECTION, limit=100)
        stored = {relative(s.file_path, directory): s.file_hash for s in stamps}
        assert stored == {name: blake3(content.encode()).hexdigest() for name, content in HOSTILE_FILES.items()}
        for w in workflows:
            assert [t.to_state for t in await store.list_transitions(str(w.correlation_id))] == [
                "processing",
                "completed",
            ]
        [bridge] = await store.list_bridge_states()
        assert (bridge.namespace, bridge.total_workflows_processed, bridge.unique_file_hashes) == (
            INJECTION,
            len(HOSTILE_FILES),
            len(HOSTILE_FILES),
        )
        await assert_schema_intact(store, admin, PostgresSettings.from_url(postgres_dsn).schema)


HOSTILE_TEXT: Sequence[str] = (
    INJECTION,
    "Robert'); DROP TABLE workflow_executions;--",
    '" OR "1"="1',
    "$1 $2 $$ $tag$ ::jsonb",
    "\\'; SELECT pg_sleep(10); --",
    "%s %(x)s {0} ?",
    "ünïcødé ✓ 🚀 日本語",
    "line\nbreak\ttab\r\n",
    "a/../../etc/passwd'; --",
)


async def test_sql_looking_content_items_pass_through_the_runtime_verbatim(postgres_dsn: str, admin: Any) -> None:
    # Content items name their content rather than a file, so here even "/" and newlines may appear in the name.
    requests = [
        {"content": f"{text}\n{other}\n", "file_path": f"{text}.txt", "namespace": f"{other}"}
        for text in HOSTILE_TEXT
        for other in dict.fromkeys((INJECTION, text))  # once each when text is INJECTION
    ]
    store = await open_upgraded(postgres_dsn)
    try:
        settings = in_process(postgres_dsn)
        async with (
            Runtime(settings, store=store) as runtime,
            StampClient(runtime.bus, runtime.contracts, settings) as client,
        ):
            with anyio.fail_after(60):
                cids = [await client.submit(r) for r in requests]
                outcomes = [await client.outcome(cid) for cid in cids]
                await runtime.drain()
        assert [o.payload.get("state") for o in outcomes] == ["completed"] * len(requests)
        for cid, request in zip(cids, requests, strict=True):
            workflow = await store.get_workflow(cid)
            assert workflow is not None
            expected_hash = blake3(request["content"].encode()).hexdigest()
            assert (workflow.namespace, workflow.file_path, workflow.file_hash) == (
                request["namespace"],
                request["file_path"],
                expected_hash,
            )
            [stamp] = [s for s in await store.get_stamps_by_hash(expected_hash) if s.workflow_id == cid]
            assert (stamp.namespace, stamp.file_path) == (request["namespace"], request["file_path"])
        namespaces = Counter(r["namespace"] for r in requests)
        assert {b.namespace: b.total_workflows_processed for b in await store.list_bridge_states()} == namespaces
        await assert_schema_intact(store, admin, PostgresSettings.from_url(postgres_dsn).schema)
    finally:
        await store.aclose()
