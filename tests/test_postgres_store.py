"""PostgresStore beyond the conformance suite: migrations under concurrency, lost connections, pool exhaustion."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import anyio
import asyncpg
import pytest
from onex._postgres import PostgresSettings, PostgresStore, _migrations
from onex.exceptions import StoreError, StoreUnavailable
from onex.store import (
    TABLES,
    AggregateWindowRow,
    BridgeStateRow,
    EventLogRow,
    HeartbeatRow,
    NodeStateRow,
    RegistrationRow,
    StampRow,
    StepRow,
    TransitionRow,
    WorkflowRow,
    WriteBatch,
    group_key,
)

from tests.fixtures.postgres import CuttableProxy, free_port, through, with_schema

pytestmark = pytest.mark.anyio

MIGRATIONS = [m.name for m in _migrations()]
T0 = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def url_with(dsn: str, **params: object) -> str:
    return dsn + "".join(f"&{k}={v}" for k, v in params.items())


@contextlib.asynccontextmanager
async def admin(postgres_server: str) -> AsyncIterator[Any]:
    """A plain connection of the test's own, outside the store's pool."""
    conn = await asyncpg.connect(postgres_server)
    try:
        yield conn
    finally:
        await conn.close()


def item_rows(i: int, run: uuid.UUID) -> tuple[WorkflowRow, StampRow, list[TransitionRow]]:
    """One stamped file's rows: its workflow, its stamp and the workflow's two transitions (ids derived from i)."""
    cid = uuid.uuid5(run, f"workflow-{i}")
    file_hash = f"{i:064x}"
    workflow = WorkflowRow(
        cid,
        "stamp_workflow",
        "completed",
        2,
        namespace="ns",
        file_path=f"/src/{i}.py",
        file_hash=file_hash,
        metadata={"i": i},
    )
    stamp = StampRow(
        uuid.uuid5(run, f"stamp-{i}"),
        file_hash,
        f"/src/{i}.py",
        i,
        "ns",
        "lightweight",
        "python",
        workflow_id=cid,
        stamp_data={"i": i},
    )
    transitions = [
        TransitionRow(uuid.uuid5(run, f"t{i}-{n}"), str(cid), "workflow", a, b, trigger, correlation_id=cid)
        for n, (a, b, trigger) in enumerate([("pending", "processing", "start"), ("processing", "completed", "done")])
    ]
    return workflow, stamp, transitions


# --- settings ------------------------------------------------------------------------------------------------------


def test_url_parameters_are_parsed_and_the_rest_passed_to_asyncpg() -> None:
    s = PostgresSettings.from_url(
        "postgresql://u:secret@db:5433/onex?schema=tenant_a&min_size=2&max_size=4&statement_timeout_ms=500"
        "&command_timeout=1.5&acquire_timeout=0.25&sslmode=disable"
    )
    assert (s.schema, s.min_size, s.max_size, s.statement_timeout_ms) == ("tenant_a", 2, 4, 500)
    assert (s.command_timeout, s.acquire_timeout) == (1.5, 0.25)
    assert s.dsn == "postgresql://u:secret@db:5433/onex?sslmode=disable"
    assert "secret" not in repr(PostgresStore("postgresql://u:secret@db/onex"))


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h/db?schema=x;drop",
        "postgresql://u@h/db?schema=a b",
        "postgresql://u@h/db?max_size=0",
        "postgresql://u@h/db?min_size=5&max_size=2",
        "postgresql://u@h/db?acquire_timeout=soon",
        "mysql://u@h/db",
        "postgresql://u@h/db?sslmode=bogus",  # asyncpg would refuse it only on connect: "cannot connect"
    ],
)
def test_invalid_urls_are_rejected(url: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the messages differ per parameter
        PostgresSettings.from_url(url)


@pytest.mark.parametrize(
    ("query", "instead"),
    [
        ("search_path=s_sp", "schema=NAME"),  # every table was created in public: onex set search_path itself
        ("statement_timeout=5", "statement_timeout_ms=MS"),
        ("options=-c%20search_path%3Ds_sp", "schema=NAME"),
        ("options=-c%20statement_timeout%3D5%20-c%20lock_timeout%3D1", "statement_timeout_ms=MS"),
        ("options=--search_path%3Ds_sp", "schema=NAME"),
    ],
)
def test_a_server_setting_onex_sets_itself_is_refused_naming_the_parameter_to_use(query: str, instead: str) -> None:
    with pytest.raises(ValueError, match=rf"onex sets \w+ itself; use {instead}"):
        PostgresSettings.from_url(f"postgresql://u@h/db?{query}")


def test_other_server_settings_and_ssl_modes_still_go_to_asyncpg() -> None:
    s = PostgresSettings.from_url("postgresql://u@h/db?options=-c%20lock_timeout%3D1000&sslmode=verify-full")
    assert s.dsn == "postgresql://u@h/db?options=-c+lock_timeout%3D1000&sslmode=verify-full"


async def test_health_is_down_until_opened_and_upgraded_and_after_close(postgres_dsn: str) -> None:
    store = PostgresStore(postgres_dsn)
    assert (await store.health()).status == "down"
    async with store:
        health = await store.health()
        assert health.status == "down"
        assert "onex db upgrade" in health.detail
        with pytest.raises(StoreError, match="onex db upgrade"):
            await store.count("workflow_executions")
        await store.upgrade()
        assert (await store.health()).status == "ok"
    assert (await store.health()).status == "down"
    with pytest.raises(StoreError, match="closed"):
        await store.count("workflow_executions")


# --- migrations ------------------------------------------------------------------------------------------------------


async def test_upgrade_creates_the_schema_and_a_second_run_is_a_no_op(postgres_dsn: str, postgres_server: str) -> None:
    schema = f"{PostgresSettings.from_url(postgres_dsn).schema}_new"
    try:
        async with PostgresStore(with_schema(postgres_server, schema)) as store:
            assert await store.upgrade() == MIGRATIONS
            assert await store.upgrade() == []
            assert await store.count("workflow_executions") == 0
        async with admin(postgres_server) as conn:
            recorded = await conn.fetch(f"SELECT name FROM {schema}.schema_migrations ORDER BY version")
            assert [r["name"] for r in recorded] == MIGRATIONS
    finally:
        async with admin(postgres_server) as conn:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


async def test_concurrent_upgrades_apply_each_migration_once(postgres_dsn: str, postgres_server: str) -> None:
    # A schema that does not exist yet, so that CREATE SCHEMA races too.
    schema = f"{PostgresSettings.from_url(postgres_dsn).schema}_race"
    url = with_schema(postgres_server, schema)
    stores = [PostgresStore(url) for _ in range(4)]
    try:
        async with contextlib.AsyncExitStack() as stack:
            for store in stores:
                await stack.enter_async_context(store)
            results = await asyncio.gather(*(store.upgrade() for store in stores))
        assert sorted(results, key=len) == [[], [], [], MIGRATIONS]
        async with admin(postgres_server) as conn:
            assert await conn.fetchval(f"SELECT count(*) FROM {schema}.schema_migrations") == len(MIGRATIONS)
    finally:
        async with admin(postgres_server) as conn:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


async def test_a_changed_migration_is_reported_not_reapplied(postgres_dsn: str) -> None:
    async with PostgresStore(postgres_dsn) as store:
        await store.upgrade()
        async with store.connection() as conn:
            await conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
        with pytest.raises(StoreError, match="different contents"):
            await store.upgrade()


# --- resilience ------------------------------------------------------------------------------------------------------


async def test_terminated_backends_mid_stream_lose_and_duplicate_nothing(
    postgres_dsn: str, postgres_server: str
) -> None:
    items, per_batch = 5_000, 100
    app = f"onex-test-{uuid.uuid4().hex[:8]}"
    run = uuid.uuid4()
    kill_after = {7, 16, 25, 34, 43}  # batch numbers after whose start the store's backends are terminated
    killed = 0
    async with PostgresStore(url_with(postgres_dsn, application_name=app, max_size=4)) as store:
        await store.upgrade()
        started: dict[int, anyio.Event] = {n: anyio.Event() for n in kill_after}

        async def writer() -> None:
            for n, first in enumerate(range(0, items, per_batch)):
                batch = WriteBatch(consumer="db-adapter")
                for i in range(first, first + per_batch):
                    workflow, stamp, transitions = item_rows(i, run)
                    batch.workflows.append(workflow)
                    batch.stamps.append(stamp)
                    batch.transitions.extend(transitions)
                    batch.processed_event_ids.append(uuid.uuid5(run, f"event-{i}"))
                if n in started:
                    started[n].set()
                await store.apply(batch)

        async def terminator() -> None:
            nonlocal killed
            async with admin(postgres_server) as conn:
                for n in sorted(kill_after):
                    await started[n].wait()
                    await anyio.sleep(0.002)  # let the batch's transaction reach the server
                    killed += await conn.fetchval(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = $1",
                        app,
                    )

        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                tg.start_soon(writer)
                tg.start_soon(terminator)

        assert killed >= len(kill_after)
        stats = store.statistics()
        assert stats.retries >= 1, stats  # at least one kill hit a batch in flight
        assert stats.batches_applied == items // per_batch
        assert await store.count("workflow_executions") == items
        assert await store.count("metadata_stamps") == items
        assert await store.count("fsm_transitions") == 2 * items
        assert await store.count("processed_events") == items
        async with store.connection() as conn:
            ids = [uuid.uuid5(run, f"workflow-{i}") for i in range(items)]
            present = await conn.fetchval(
                "SELECT count(DISTINCT correlation_id) FROM workflow_executions WHERE correlation_id = ANY($1)", ids
            )
            assert present == items
        assert [t.to_state for t in await store.list_transitions(str(ids[4_321]))] == ["processing", "completed"]
        health = await store.health()
        assert (health.status, health.queued_writes) == ("ok", 0)


async def test_an_outage_is_reported_degraded_with_queued_writes_and_the_batch_written_after(
    postgres_dsn: str,
) -> None:
    target = PostgresSettings.from_url(postgres_dsn)
    host_port = target.dsn.partition("@")[2].partition("/")[0]
    host, _, port = host_port.partition(":")
    proxy = CuttableProxy(host, int(port or 5432))
    now = [0.0]  # the breaker's clock: it moves only when the test moves it

    async def until(condition: Callable[[], Awaitable[bool]]) -> None:
        """Poll ``condition`` (store health and counters have no event to wait on); fail_after bounds it."""
        for _ in range(4_000):
            if await condition():
                return
            await anyio.sleep(0.005)
        raise AssertionError("the condition never held")

    async def breaker(state: str, *, waits: int = 0) -> bool:
        stats = store.statistics()
        return stats.breaker_state == state and stats.breaker_waits >= waits

    async with proxy as proxy_port:
        url = url_with(
            through(postgres_dsn, proxy_port),
            breaker_threshold=2,
            breaker_reset=0.2,
            retry_attempts=1000,
            retry_deadline=30,
            backoff_max=0.05,
        )
        async with PostgresStore(url, clock=lambda: now[0]) as store:
            await store.upgrade()
            run = uuid.uuid4()
            items = [item_rows(i, run) for i in range(5)]
            await proxy.sever()
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    for workflow, stamp, transitions in items:  # five handlers, each with its batch of 4 rows
                        batch = WriteBatch(workflows=[workflow], stamps=[stamp], transitions=transitions)
                        tg.start_soon(store.apply, batch)

                    async def queued() -> bool:
                        return (await store.health()).queued_writes == 20

                    await until(queued)
                    assert (await store.health()).status == "degraded"
                    # Open, and the clock stands still: the five callers wait on the breaker, never on the server.
                    await until(lambda: breaker("open"))
                    assert store.circuit_open  # what /readyz reads: "store unavailable: circuit open"
                    refused = proxy.refused
                    waits = store.statistics().breaker_waits
                    await until(lambda: breaker("open", waits=waits + 15))
                    assert proxy.refused == refused
                    # The reset timeout passes: one trial goes to the server (refused: open again), not five callers.
                    now[0] += 0.2

                    async def tried_and_open() -> bool:
                        return proxy.refused > refused and await breaker("open")

                    await until(tried_and_open)
                    tried = proxy.refused
                    waits = store.statistics().breaker_waits
                    await until(lambda: breaker("open", waits=waits + 15))
                    assert proxy.refused == tried  # open again: nobody tries until the clock moves
                    assert tried - refused < 5
                    proxy.mend()
                    now[0] += 0.2  # the next trial gets through and closes the breaker; everyone writes
            for workflow, _, _ in items:
                assert await store.get_workflow(workflow.correlation_id) == workflow
            assert await store.count("fsm_transitions") == 10
            health = await store.health()
            assert (health.status, health.queued_writes) == ("ok", 0)
            assert store.statistics().breaker_state == "closed"
            assert not store.circuit_open


async def test_apply_gives_up_with_store_unavailable_when_the_server_stays_away() -> None:
    # A port nothing listens on: every connect is refused. min_size=0 so that open() itself connects to nothing.
    url = (
        f"postgresql://postgres@127.0.0.1:{free_port()}/test"
        "?min_size=0&retry_attempts=3&backoff_initial=0.01&breaker_threshold=10"
    )
    async with PostgresStore(url) as store:
        with anyio.fail_after(10), pytest.raises(StoreUnavailable, match="unavailable, batch not written"):
            await store.apply(WriteBatch(registrations=[RegistrationRow("n", "EFFECT", "1.0.0")]))
        assert store.statistics().retries == 3
        health = await store.health()
        assert (health.status, health.queued_writes) == ("degraded", 0)


async def test_opening_a_store_on_a_server_that_is_not_there_raises_store_unavailable() -> None:
    with anyio.fail_after(10), pytest.raises(StoreUnavailable, match="cannot connect"):
        await PostgresStore(f"postgresql://postgres@127.0.0.1:{free_port()}/test?connect_timeout=2").open()


async def test_a_database_that_refuses_new_connections_is_unavailable_not_an_error(postgres_server: str) -> None:
    # The pool opens a connection again (its backend was terminated) to a database an operator closed to new ones
    # (ALLOW_CONNECTIONS false; also a database dropped, or a role's password changed): the server answers with an
    # error of its own, not a broken connection. It was a StoreError, which callers do not wait out, so the batch
    # of a node and even its dead letter were lost. It is StoreUnavailable, and the batch is written once reopened.
    database = f"onex_refusing_{uuid.uuid4().hex[:8]}"
    url = urlsplit(postgres_server)._replace(path=f"/{database}").geturl()
    async with admin(postgres_server) as conn:
        await conn.execute(f"CREATE DATABASE {database}")
    try:
        params = "min_size=1&max_size=1&retry_attempts=2&backoff_initial=0.01&breaker_threshold=10"
        async with PostgresStore(f"{url}?{params}") as store:
            await store.upgrade()
            async with admin(postgres_server) as conn:
                await conn.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database
                )
                batch = WriteBatch(registrations=[RegistrationRow("n", "EFFECT", "1.0.0")])
                with anyio.fail_after(10), pytest.raises(StoreUnavailable, match="ObjectNotInPrerequisiteState"):
                    await store.apply(batch)
                await conn.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
            await store.apply(batch)
            assert await store.count("node_registrations") == 1
    finally:
        async with admin(postgres_server) as conn:
            await conn.execute(f"DROP DATABASE {database} WITH (FORCE)")


@pytest.mark.parametrize("in_transaction", [False, True], ids=["statement", "transaction"])
async def test_a_lost_connection_raises_the_servers_error_not_the_pools(
    postgres_dsn: str, in_transaction: bool
) -> None:
    # The backend ends itself mid-statement, as pg_terminate_backend from an operator ends it. Dropping the connection
    # afterwards raised InterfaceError ("cannot call Connection.terminate(): connection has been released back to
    # the pool"; in a transaction, its __aexit__'s "the underlying connection is closed"), which replaced the server's
    # error in the logs and in `onex db upgrade`'s message.
    async with PostgresStore(url_with(postgres_dsn, retry_attempts=1)) as store:
        assert isinstance(store, PostgresStore)
        await store.upgrade()

        async def ends_itself() -> None:
            async with store._connection() as conn, contextlib.AsyncExitStack() as stack:
                if in_transaction:
                    await stack.enter_async_context(conn.transaction())
                await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

        with pytest.raises(asyncpg.PostgresConnectionError, match="terminating connection due to administrator"):
            await ends_itself()
        assert await store.count("metadata_stamps") == 0  # a new connection serves the next call


async def test_name_ordered_reads_are_bytewise_whatever_the_databases_collation(postgres_server: str) -> None:
    # An ICU (or glibc) collation sorts '_x' before 'a' and 'b' before 'B'; SQLite's BINARY, and so the conformance
    # suite's other store, sorts by code point. The store's ORDER BYs on names say COLLATE "C" to agree with it.
    names = ["b", "B", "_x", "a-b", "ab", "a", "Z", "a b", "é", "e"]
    database = f"onex_icu_{uuid.uuid4().hex[:8]}"
    async with admin(postgres_server) as conn:
        try:
            await conn.execute(
                f"CREATE DATABASE {database} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'"
            )
        except asyncpg.PostgresError as exc:  # PostgreSQL before 15, or built without ICU
            try:
                await conn.execute(f"CREATE DATABASE {database} TEMPLATE template0 LOCALE 'en_US.utf8'")
            except asyncpg.PostgresError:
                pytest.skip(f"no database with a linguistic collation can be made here: {exc}")
    url = urlsplit(postgres_server)._replace(path=f"/{database}").geturl()
    try:
        async with PostgresStore(url) as store:
            await store.upgrade()
            async with admin(url) as conn:  # the database does sort otherwise: the test can fail
                assert await conn.fetchval(
                    "SELECT array_agg(n ORDER BY n) FROM unnest($1::text[]) AS n", names
                ) != sorted(names)
            window = functools.partial(
                AggregateWindowRow,
                window_start=None,
                window_end=None,
                closed=False,
                items=1,
                values={},
                state={},
                version=1,
            )
            await store.apply(
                WriteBatch(
                    bridge_states=[BridgeStateRow(n, 1, 0, 0, 0, 0, "active") for n in names],
                    registrations=[RegistrationRow(n, "EFFECT", "1.0.0") for n in names],
                    node_states=[NodeStateRow("node", n, 1, {}) for n in names],
                    aggregate_windows=[
                        window(node="r", aggregation="grouped", group={"k": n}, window_id="") for n in names
                    ]
                    + [window(node="r", aggregation=n, group={}, window_id=n) for n in names],
                )
            )
            assert [s.namespace for s in await store.list_bridge_states()] == sorted(names)
            assert [r.node_id for r in await store.list_registrations()] == sorted(names)
            assert [s.key for s in await store.list_node_states("node")] == sorted(names)
            keys = sorted(group_key({"k": n}) for n in names)
            listed = await store.list_aggregate_windows(aggregation="grouped")
            assert [group_key(w.group) for w in listed] == keys
            held = await store.get_aggregate_windows("r")
            assert [(w.aggregation, group_key(w.group), w.window_id) for w in held] == sorted(
                [("grouped", k, "") for k in keys] + [(n, "{}", n) for n in names]
            )
    finally:
        async with admin(postgres_server) as conn:
            await conn.execute(f"DROP DATABASE {database} WITH (FORCE)")


async def test_pool_exhaustion_raises_store_unavailable_instead_of_hanging(postgres_dsn: str) -> None:
    async with PostgresStore(url_with(postgres_dsn, min_size=1, max_size=1, acquire_timeout=0.2)) as store:
        await store.upgrade()
        async with store.connection():
            with anyio.fail_after(5):
                with pytest.raises(StoreUnavailable, match="pool exhausted"):
                    await store.count("workflow_executions")
                with pytest.raises(StoreUnavailable, match="pool exhausted"):
                    await store.apply(WriteBatch(registrations=[RegistrationRow("n", "EFFECT", "1.0.0")]))
                health = await store.health()
                assert health.status == "degraded"
                assert "pool exhausted" in health.detail
        assert await store.count("node_registrations") == 0
        assert (await store.health()).status == "ok"


async def test_a_bad_row_rolls_back_its_whole_batch_without_retrying(postgres_dsn: str) -> None:
    async with PostgresStore(postgres_dsn) as store:
        await store.upgrade()
        run = uuid.uuid4()
        workflow, stamp, _ = item_rows(1, run)
        unserialisable = StampRow(uuid.uuid4(), "h", "/f", 1, "ns", "lightweight", "text", stamp_data={"x": {1, 2}})
        with pytest.raises(StoreError) as refused:
            await store.apply(WriteBatch(workflows=[workflow], stamps=[stamp, unserialisable]))
        assert not isinstance(refused.value, StoreUnavailable)  # about the data: retrying later cannot help
        assert await store.count("workflow_executions") == 0
        assert await store.count("metadata_stamps") == 0
        assert store.statistics().retries == 0
        assert (await store.health()).status == "ok"


# --- data ------------------------------------------------------------------------------------------------------------

HOSTILE = [
    "'; DROP TABLE metadata_stamps; --",
    "Robert'); DROP TABLE workflow_executions;--",
    '" OR "1"="1',
    "$1 $2 $$ $tag$ ::jsonb",
    "$onex$'); DROP TABLE workflow_executions;--",  # the tag bulk_method=json quotes a batch's documents with
    "\\'; SELECT pg_sleep(10); --",
    "%s %(x)s {0} ?",
    "ünïcødé ✓ 🚀 日本語",
    "line\nbreak\ttab\r\n",
]


@pytest.mark.parametrize("method", ["executemany", "unnest", "json", "copy"])
@pytest.mark.parametrize("text", HOSTILE)
async def test_hostile_strings_are_stored_verbatim(postgres_dsn: str, text: str, method: str) -> None:
    # bulk_min_rows=1: with unnest and copy even these one-row tables take the set-based path.
    async with PostgresStore(url_with(postgres_dsn, bulk_method=method, bulk_min_rows=1)) as store:
        await store.upgrade()
        stamp = StampRow(uuid.uuid4(), text, text, 1, text, text, text, stamp_data={text: text}, created_at=T0)
        stamp = replace(stamp, version=1, updated_at=T0)  # as the store reads it back (it numbers a row without)
        registration = RegistrationRow(text, text, text, text, metadata={text: [text]})
        transition = TransitionRow(uuid.uuid4(), text, text, text, text, text)
        event = uuid.uuid4()
        batch = WriteBatch(
            consumer=text,
            processed_event_ids=[event],
            stamps=[stamp],
            registrations=[registration],
            transitions=[transition],
        )
        await store.apply(batch)
        assert await store.get_stamps_by_hash(text) == [stamp]
        assert await store.list_stamps(text) == [stamp]
        [reg] = await store.list_registrations()
        assert (reg.node_id, reg.node_type, reg.health_status, reg.metadata) == (text, text, text, {text: [text]})
        [t] = await store.list_transitions(text)
        assert (t.from_state, t.to_state, t.transition_event) == (text, text, text)
        assert await store.unprocessed(text, [event]) == set()
        counts = {table: await store.count(table) for table in TABLES}
        assert counts == {
            **dict.fromkeys(TABLES, 0),
            **dict.fromkeys(["metadata_stamps", "node_registrations", "fsm_transitions", "processed_events"], 1),
        }


async def test_a_batch_of_several_tables_is_one_message_with_bulk_method_json(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with PostgresStore(url_with(postgres_dsn, bulk_method="json", min_size=1, max_size=1)) as store:
        await store.upgrade()
        sent: list[tuple[str, tuple[Any, ...]]] = []
        execute = asyncpg.Connection.execute

        async def spy(self: asyncpg.Connection, query: str, *args: Any, **kwargs: Any) -> Any:
            if not query.startswith("SELECT pg_advisory_unlock_all()"):  # the pool's reset of a released connection
                sent.append((query, args))
            return await execute(self, query, *args, **kwargs)

        def batch(cid: uuid.UUID, *seqs: int) -> WriteBatch:
            return WriteBatch(
                consumer="adapter",
                processed_event_ids=[uuid.uuid4()],
                workflows=[WorkflowRow(cid, "stamp", "completed", seq) for seq in seqs],
                steps=[StepRow(cid, "stamp", 0, "completed", 1.5)],
                transitions=[TransitionRow(uuid.uuid4(), str(cid), "workflow", "processing", "completed", "go")],
            )

        monkeypatch.setattr(asyncpg.Connection, "execute", spy)
        first, second = batch(uuid.uuid4(), 2), batch(cid := uuid.uuid4(), 2)
        await store.apply(first)
        # The connection's first: its statements are prepared (one message), and the batch sent again.
        assert [q.split(" ")[0] for q, _ in sent] == ["EXECUTE", "PREPARE", "EXECUTE"]
        sent.clear()
        await store.apply(second)
        # One message, no parameters (the simple query protocol), no BEGIN or COMMIT: the statements, in batch order.
        [(text, args)] = sent
        assert args == ()
        assert [line.split("(")[0] for line in text.split(";\n")] == [
            "EXECUTE onex_doc_workflow_executions",
            "EXECUTE onex_doc_workflow_steps",
            "EXECUTE onex_doc_fsm_transitions",
            "EXECUTE onex_doc_processed_events",
        ]
        assert [s.execution_time_ms for s in await store.list_steps(cid)] == [1.5]
        assert await store.unprocessed("adapter", first.processed_event_ids + second.processed_event_ids) == set()
        # A value holding the quoting tag: another tag, still one message (a literal closed early would have failed
        # the message, and the batch gone statement by statement), and the value stored as it is.
        sent.clear()
        tagged = "$onex$'); DELETE FROM workflow_steps; --"
        third = batch(other := uuid.uuid4(), 2)
        await store.apply(replace(third, steps=[replace(third.steps[0], step_data={"note": tagged})]))
        [(text, _)] = sent
        assert "EXECUTE onex_doc_workflow_steps($onex_" in text  # the steps document holds the tag
        assert [s.step_data for s in await store.list_steps(other)] == [{"note": tagged}]
        assert len(await store.list_steps(cid)) == 1
        # A key twice in one batch needs two rounds, which one message cannot hold: a transaction, as before.
        sent.clear()
        await store.apply(batch(cid, 3, 4))
        assert [q.split(" AS ")[0] for q, _ in sent] == [
            "BEGIN;",
            "INSERT INTO workflow_executions",  # round 1
            "INSERT INTO workflow_executions",  # round 2
            "INSERT INTO workflow_steps",
            "INSERT INTO fsm_transitions",
            "INSERT INTO processed_events",
            "COMMIT;",
        ]
        assert (await store.get_workflow(cid)).state_seq == 4  # type: ignore[union-attr]


@pytest.mark.parametrize("method", ["json", "unnest", "copy", "executemany"])
async def test_ids_read_back_from_the_store_are_written_again(postgres_dsn: str, method: str) -> None:
    # asyncpg reads a uuid column as its own subclass of uuid.UUID, which orjson does not write: a reducer's reconciled
    # workflows and an orchestrator's reloaded checkpoints write such ids again (bulk_method=json's first version
    # refused them, and a fault test's reducer dead-lettered its reconciled workflows).
    async with PostgresStore(url_with(postgres_dsn, bulk_method=method, bulk_min_rows=1)) as store:
        await store.upgrade()
        cid = uuid.uuid4()
        await store.apply(WriteBatch(workflows=[WorkflowRow(cid, "stamp", "processing", 1)]))
        stored = await store.get_workflow(cid)
        assert stored is not None
        assert type(stored.correlation_id) is not uuid.UUID  # asyncpg's own: what this test is about
        await store.apply(WriteBatch(workflows=[replace(stored, current_state="running", state_seq=2)]))  # alone
        read_id = stored.correlation_id
        await store.apply(  # several tables and a processed id, all read back: one message with bulk_method=json
            WriteBatch(
                consumer="reducer.workflows",
                processed_event_ids=[read_id],
                workflows=[replace(stored, current_state="completed", state_seq=3)],
                steps=[StepRow(read_id, "stamp", 0, "completed")],
            )
        )
        final = await store.get_workflow(cid)
        assert final is not None
        assert (final.current_state, final.state_seq) == ("completed", 3)
        assert [s.step_name for s in await store.list_steps(cid)] == ["stamp"]
        assert await store.unprocessed("reducer.workflows", [cid]) == set()


EDGE_FLOATS = [0.1, -0.0, 5e-324, 1.7976931348623157e308, 1e-7, float("nan"), float("inf"), float("-inf")]


@pytest.mark.parametrize("method", ["executemany", "unnest", "json", "copy"])
async def test_edge_values_are_stored_as_every_bulk_method_reads_them(postgres_dsn: str, method: str) -> None:
    # bulk_method=json sends each value as JSON text: floats beyond JSON (NaN, infinities), the smallest and largest
    # doubles, negative zero and a timestamp in another zone must come back as asyncpg's binary arrays bring them.
    async with PostgresStore(url_with(postgres_dsn, bulk_method=method, bulk_min_rows=1)) as store:
        await store.upgrade()
        cid = uuid.uuid4()
        zone = timezone(timedelta(hours=-3, minutes=-30))
        steps = [
            StepRow(cid, f"s{i}", i, "completed", x, {"i": i, "unicode": 'ü 🚀 \\ "q"'}, created_at=T0.astimezone(zone))
            for i, x in enumerate(EDGE_FLOATS)
        ]
        steps.append(StepRow(cid, "none", len(steps), "pending", None, {}, None, T0))
        await store.apply(WriteBatch(steps=steps))
        stored = await store.list_steps(cid)
        assert [s.step_name for s in stored] == [s.step_name for s in steps]
        for got, sent in zip(stored, steps, strict=True):
            assert (got.step_data, got.created_at, got.error_message) == (sent.step_data, T0, None)
            if sent.execution_time_ms is None or math.isnan(sent.execution_time_ms):
                assert got.execution_time_ms is None or math.isnan(got.execution_time_ms)
                assert (got.execution_time_ms is None) == (sent.execution_time_ms is None)
            else:
                assert got.execution_time_ms == sent.execution_time_ms
                assert math.copysign(1, got.execution_time_ms) == math.copysign(1, sent.execution_time_ms)


@pytest.mark.parametrize("method", ["unnest", "json", "copy"])
@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"file_path": "nul\x00.py"}, id="nul-in-text"),
        pytest.param({"file_size": 2**64}, id="beyond-64-bits"),
        pytest.param({"stamp_data": {"at": T0}}, id="datetime-in-json"),
        pytest.param({"stamp_data": {"x": float("inf")}}, id="infinity-in-json"),
    ],
)
async def test_a_value_postgresql_cannot_hold_fails_the_set_based_batch(
    postgres_dsn: str, method: str, bad: dict[str, Any]
) -> None:
    async with PostgresStore(url_with(postgres_dsn, bulk_method=method, bulk_min_rows=1)) as store:
        await store.upgrade()
        stamps = [StampRow(uuid.uuid4(), "h", f"{i}.py", i, "ns", "lightweight", "python") for i in range(20)]
        stamps[7] = replace(stamps[7], **bad)
        with pytest.raises(StoreError, match="metadata_stamps"):
            await store.apply(
                WriteBatch(stamps=stamps, transitions=[TransitionRow(uuid.uuid4(), "e", "w", None, "s", "go")])
            )
        assert await store.count("metadata_stamps") == 0
        assert await store.count("fsm_transitions") == 0


async def test_jsonb_round_trips_and_is_queryable(postgres_dsn: str) -> None:
    payload: dict[str, Any] = {
        "nested": {"list": [1, 2.5, -3, True, False, None, "x"], "empty": {}, "none": None},
        "big": 2**62,
        "float": 0.1,
        "unicode": "ü ✓ 🚀",
        "quote": 'it\'s "quoted"',
        "array_of_objects": [{"a": 1}, {"b": [{"c": "d"}]}],
    }
    event = EventLogRow(
        uuid.uuid4(),
        "stamp-created",
        "dev.t.onex.evt.stamp-created.v1",
        "processed",
        correlation_id=uuid.uuid4(),
        timestamp=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        payload=payload,
        metadata={"k": ["v"]},
    )
    async with PostgresStore(postgres_dsn) as store:
        await store.upgrade()
        wf = WorkflowRow(uuid.uuid4(), "stamp", "pending", 0, metadata=payload)
        await store.apply(WriteBatch(workflows=[wf], event_logs=[event]))
        read = await store.get_workflow(wf.correlation_id)
        assert read is not None
        assert read.metadata == payload
        async with store.connection() as conn:
            row = await conn.fetchrow(
                "SELECT jsonb_typeof(payload) AS kind, payload->'nested'->'list'->>1 AS second, payload, metadata "
                "FROM event_logs WHERE event_id = $1",
                event.event_id,
            )
        assert (row["kind"], row["second"]) == ("object", "2.5")
        assert (row["payload"], row["metadata"]) == (payload, {"k": ["v"]})


async def test_naive_datetimes_are_taken_as_utc_and_read_back_aware(postgres_dsn: str) -> None:
    async with PostgresStore(postgres_dsn) as store:
        await store.upgrade()
        wf = WorkflowRow(uuid.uuid4(), "stamp", "completed", 2, started_at=datetime(2025, 5, 6, 7, 8, 9))
        await store.apply(WriteBatch(workflows=[wf]))
        read = await store.get_workflow(wf.correlation_id)
        assert read is not None
        assert read.started_at == datetime(2025, 5, 6, 7, 8, 9, tzinfo=UTC)
        assert read.started_at.tzinfo is not None
        assert isinstance(read.correlation_id, uuid.UUID)


# --- the three write paths agree -------------------------------------------------------------------------------------


async def test_a_batch_that_is_one_statement_goes_without_begin_and_commit(postgres_dsn: str) -> None:
    # One round trip where a transaction made three: an orchestrator's checkpoint waited for each through a busy loop.
    async with PostgresStore(url_with(postgres_dsn, min_size=1, max_size=1)) as store:
        await store.upgrade()
        sent: list[str] = []
        async with store._connection() as conn:  # the pool's one connection: every apply below runs on it
            conn.add_query_logger(lambda record: sent.append(" ".join(record.query.split()[:3])))
        cids = [uuid.uuid4() for _ in range(20)]  # more than bulk_min_rows: one unnest INSERT
        await store.apply(WriteBatch(workflows=[WorkflowRow(cid, "stamp", "processing", 1) for cid in cids]))
        assert [q for q in sent if q.startswith(("BEGIN", "COMMIT", "INSERT"))] == ["INSERT INTO workflow_executions"]

        # A key twice takes two statements (rounds), and so a transaction around them: still all or nothing.
        sent.clear()
        rows = [WorkflowRow(cid, "stamp", "completed", 2) for cid in cids] + [
            WorkflowRow(cids[0], "stamp", "failed", 3)
        ]
        await store.apply(WriteBatch(workflows=rows))
        assert [q for q in sent if q.startswith(("BEGIN", "COMMIT", "INSERT"))] == [
            "BEGIN;",
            "INSERT INTO workflow_executions",
            "INSERT INTO workflow_executions",
            "COMMIT;",
        ]
        stored = [await store.get_workflow(cid) for cid in cids[:2]]
        assert [w.current_state if w else None for w in stored] == ["failed", "completed"]

        # One statement is refused whole: none of its rows is stored.
        bad = [WorkflowRow(uuid.uuid4(), "stamp", "x", 1) for _ in range(16)] + [
            WorkflowRow(uuid.uuid4(), "stamp", "x", 2**63)
        ]
        with pytest.raises(StoreError, match="workflow_executions"):
            await store.apply(WriteBatch(workflows=bad))
        assert await store.count("workflow_executions") == 20


@pytest.mark.parametrize("method", ["unnest", "json", "copy", "executemany"])
async def test_every_bulk_method_keeps_the_conflict_rules_within_one_batch(postgres_dsn: str, method: str) -> None:
    # bulk_min_rows=1: even the smallest table goes set-based, with several rows per natural key in one batch.
    url = url_with(postgres_dsn, bulk_method=method, bulk_min_rows=1)
    cids = [uuid.uuid4() for _ in range(20)]
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    batch = WriteBatch(consumer="c", processed_event_ids=[cids[0], cids[1], cids[0]])
    for cid in cids:
        batch.workflows += [
            WorkflowRow(cid, "stamp", "completed", 2, completed_at=t0, metadata={"b": 2}),
            WorkflowRow(cid, "stamp", "pending", 0, namespace="ns", metadata={"a": 0, "b": 0}),
            WorkflowRow(cid, "stamp", "processing", 1, started_at=t0, metadata={"a": 1}),
        ]
        batch.steps += [StepRow(cid, "hash", 1, "running"), StepRow(cid, "hash", 1, "completed", step_data={"x": 1})]
        batch.transitions += [
            TransitionRow(uuid.uuid5(cid, str(n)), str(cid), "workflow", a, b, "go")
            for n, (a, b) in enumerate([(None, "pending"), ("pending", "processing"), ("processing", "completed")])
        ]
    first_stamp = StampRow(uuid.uuid4(), "h", "a.py", 1, "ns", "lightweight", "python")
    batch.stamps += [first_stamp, StampRow(uuid.uuid4(), "h", "a.py", 2, "ns", "rich", "python"), first_stamp]
    batch.bridge_states += [BridgeStateRow("ns", v, v, v, v, v, f"v{v}") for v in (1, 3, 2)]
    batch.registrations += [RegistrationRow("n", "EFFECT", "1.0.0"), RegistrationRow("n", "EFFECT", "1.0.1")]
    batch.heartbeats += [HeartbeatRow("n", "HEALTHY", t0), HeartbeatRow("n", "STALE", t0 - timedelta(seconds=1))]
    log = EventLogRow(uuid.uuid4(), "e", "t", "ok")
    batch.event_logs += [log, log]
    async with PostgresStore(url) as store:
        await store.upgrade()
        await store.apply(batch)
        await store.apply(batch)  # redelivered whole: no change
        for cid in cids:
            assert await store.get_workflow(cid) == WorkflowRow(
                cid, "stamp", "completed", 2, namespace="ns", started_at=t0, completed_at=t0, metadata={"a": 0, "b": 2}
            )  # "a" came first from seq 0: seq 1, lower than the stored 2, only fills what is missing
            [step] = await store.list_steps(cid)
            assert (step.status, step.step_data) == ("completed", {"x": 1})
            states = [t.to_state for t in await store.list_transitions(str(cid))]
            assert states == ["pending", "processing", "completed"]
        assert [s.file_size for s in await store.list_stamps("ns")] == [1]
        bridge = await store.get_bridge_state("ns")
        assert bridge is not None
        assert bridge.version == 3
        [node] = await store.list_registrations()
        assert (node.node_version, node.health_status, node.last_heartbeat) == ("1.0.1", "HEALTHY", t0)
        assert await store.count("event_logs") == 1
        assert await store.unprocessed("c", [cids[0], cids[1], cids[2]]) == {cids[2]}
        assert [w.correlation_id for w in await store.list_workflows(limit=3)] == cids[::-1][:3]


@pytest.mark.parametrize("method", ["unnest", "json", "copy", "executemany"])
async def test_a_bad_row_in_a_large_batch_names_its_table(postgres_dsn: str, method: str) -> None:
    async with PostgresStore(url_with(postgres_dsn, bulk_method=method)) as store:
        await store.upgrade()
        stamps = [StampRow(uuid.uuid4(), "h", f"{i}.py", i, "ns", "lightweight", "python") for i in range(100)]
        stamps[57] = StampRow(uuid.uuid4(), "h", "bad.py", 2**63, "ns", "lightweight", "python")  # beyond BIGINT
        transitions = [TransitionRow(uuid.uuid4(), "e", "workflow", None, "s", "go") for _ in range(100)]
        with pytest.raises(StoreError, match=r"insert of metadata_stamps failed.*rolled back"):
            await store.apply(WriteBatch(transitions=transitions, stamps=stamps))
        assert await store.count("fsm_transitions") == 0
        assert store.statistics().retries == 0


async def test_a_read_fails_at_once_on_an_open_breaker_where_a_write_waits(postgres_dsn: str) -> None:
    """A read has no batch to hold: on an open breaker it is StoreUnavailable at once, saying the read failed (the
    gateway answers 503 now, a node holds and asks again), as SQLite's reads do not wait. A write still waits for
    the breaker to let it through. The breaker's clock stands still: a read that waited would wait for good."""
    proxy = CuttableProxy.before(postgres_dsn)
    now = [0.0]
    async with proxy as port:
        url = url_with(through(postgres_dsn, port), breaker_threshold=2, breaker_reset=0.2, backoff_max=0.01)
        async with PostgresStore(url, clock=lambda: now[0]) as store:
            await store.upgrade()
            workflow, stamp, _ = item_rows(0, uuid.uuid4())
            await proxy.sever()
            with anyio.fail_after(20):
                with pytest.raises(StoreUnavailable, match=r"unavailable, read failed \(circuit breaker open"):
                    await store.get_stamps_by_hash(stamp.file_hash)  # two refused attempts open the breaker
                assert store.statistics().breaker_state == "open"
                refused, waits = proxy.refused, store.statistics().breaker_waits
                for read in (store.get_workflow(workflow.correlation_id), store.list_stamps("ns")):
                    with pytest.raises(StoreUnavailable, match="read failed") as raised:
                        await read
                    assert "batch not written" not in str(raised.value)
                assert (proxy.refused, store.statistics().breaker_waits) == (refused, waits)  # nothing tried
                writing = asyncio.ensure_future(store.apply(WriteBatch(workflows=[workflow], stamps=[stamp])))
                for _ in range(4_000):  # counters have no event to wait on; fail_after bounds it
                    if store.statistics().breaker_waits > waits:  # the write waits on the breaker instead
                        break
                    await anyio.sleep(0.005)
                assert not writing.done()
                proxy.mend()
                now[0] += 0.2
                await writing
            assert await store.get_workflow(workflow.correlation_id) == workflow
