"""``PostgresStore``: the ``Store`` on PostgreSQL, through an asyncpg connection pool.

URL: ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB?schema=NAME&...``. The query parameters below are read here; any
other one (``sslmode`` ...) goes to asyncpg untouched, but for the server settings onex sets on every connection:
``search_path``, ``statement_timeout``, or an ``options=-c ...`` setting them (or ``application_name``), which asyncpg
would pass and onex override, are refused (a ``ValueError``, naming ``schema=`` / ``statement_timeout_ms=`` /
``application_name=``); so is an ``sslmode`` asyncpg does not know, which it would refuse only when connecting.

========================  =======  =================================================================================
parameter                 default  meaning
========================  =======  =================================================================================
``schema``                public   the schema holding every table; ``upgrade()`` creates it when missing
``min_size``              1        pool connections kept open
``max_size``              10       pool connections at most
``acquire_timeout``       10       seconds to wait for a free pool connection, then ``StoreUnavailable``
``connect_timeout``       5        seconds to open one connection
``statement_timeout_ms``  30000    the server's ``statement_timeout`` for every statement but migrations
``command_timeout``       60       client-side limit of one command, in seconds
``application_name``      onex     as shown in ``pg_stat_activity``
``retry_attempts``        6        attempts of one call on connection-class errors (see Resilience)
``retry_deadline``        30       seconds one call may spend on attempts, backoff and breaker waits
``backoff_initial``       0.05     seconds before the second attempt; doubling ...
``backoff_max``           2        ... up to this
``breaker_threshold``     5        consecutive connection failures that open the circuit breaker
``breaker_reset``         2        seconds an open breaker waits before it lets one trial through
``bulk_method``           json     how a table's rows are sent: ``json``, ``unnest``, ``copy``, ``executemany``
``bulk_min_rows``         16       with ``unnest`` or ``copy``: below this many rows of one table, ``executemany``
========================  =======  =================================================================================

Writes. ``apply(batch)`` is one transaction: each table's rows, in the order workflows, steps, stamps, transitions,
bridge states, registrations, heartbeats, event logs, aggregate windows, node states, processed events (as
``SqliteStore``). With the default ``bulk_method=json`` a table's rows travel as one JSON document, an array per row,
read by ``INSERT ... SELECT (r->>0)::uuid, ... FROM jsonb_array_elements($1) WITH ORDINALITY ... ON CONFLICT ...``: one
plan per table, rows written in batch order, however few (``bulk_min_rows`` is for the other methods). A batch that is
one statement (an orchestrator's checkpoint, the commonest batch) is sent alone, a prepared statement that PostgreSQL
commits or rolls back whole. A batch of several is one message of the simple query protocol, ``EXECUTE
onex_doc_<table>($onex$[...]$onex$); ...``, each document inlined as a dollar-quoted literal (under a tag it does not
hold) and each statement prepared once a connection (``PREPARE_DOCS``, on the first message that finds them missing):
PostgreSQL runs a message's statements in order as one transaction, so a batch is one round trip instead of one a
statement plus BEGIN and COMMIT, each of which waited for the nodes' busy event loop. A batch that needs rounds (below)
or holds heartbeats goes in a transaction, statement by statement; so does one whose message fails on a row's value,
rolled back whole, to name the table that fails. Values go as orjson writes them (UUIDs and datetimes as their text); a
JSON column's value is embedded as the text the other methods send (``_jsontext``: NaN refused, and so on), and a float
that JSON or a jsonb number cannot hold (NaN, the infinities, negative zero) goes as text, which ``double precision``
reads back exactly. ``bulk_method=unnest`` sends the same statements with one array per column (``unnest($1::uuid[],
...)``), which asyncpg encodes value by value, checking each one for a nested array, and a transaction for several;
measured in issue 12's twentieth part (``bench/store_postgres.py``, 100,000 mixed rows in batches of 500) it took 6.81
µs of the client's CPU a row against json's 2.78 (51,372 rows/s against 46,378), the CPU the nodes' event loop pays, and
in batches of 2 to 24 rows about twice json's client CPU, more of the server's, and 1.4-1.6 times its time a batch. Both
beat the alternatives the task named: ``executemany`` of a prepared ``INSERT ... ON CONFLICT`` (pipelined, but planned
and executed row by row) and COPY into a temporary staging table followed by ``INSERT ... SELECT ... ON CONFLICT`` (two
round trips, and the staging writes plus the ``ON COMMIT DELETE ROWS`` truncation cost more than COPY's faster transfer
saves at this size). All remain available as ``bulk_method``. Each table's statements and encoders are rendered in
``onex._postgres_sql``.

One ``INSERT ... ON CONFLICT DO UPDATE`` cannot touch one row twice, yet a batch may hold several rows for one key
(a workflow's start and its completion). Such rows go in rounds, the n-th row of a key in round n, one statement
per round, so they apply in batch order exactly as row by row would. Heartbeats are ``UPDATE``s, few per batch,
and always go row by row. The conflict rules are those of ``onex.store``, rendered from ``onex._tables`` as
``SqliteStore`` renders them; where its table leaves room, the choices are ``SqliteStore``'s (its docstring lists
them; ``tests/test_store_conformance.py`` pins them for both). Reads listed by a name (bridge states by namespace,
registrations by node id, node states by key, aggregate windows by group key) order it ``COLLATE "C"``, bytewise as
SQLite's ``BINARY``, whatever the database's collation (an ICU or glibc locale puts ``_x`` before ``a`` and ``b``
before ``B``). A stamp's file path is keyed by itself up to 1024 bytes and by its md5 beyond (migration 0008): a
btree entry holds at most 2704 bytes, and SQLite stores any path.

Resilience. A connection-class failure (the server restarted or went away, ``pg_terminate_backend``, a refused connect,
a new connection the server refuses, as for a database closed to connections, a broken protocol state) rolls the batch
back, drops the connection and retries the whole batch on another one, with exponential backoff. Every row is written by
its natural key, so a batch whose COMMIT succeeded but whose answer was lost is not duplicated when it is applied again.
A circuit breaker (``onex.resilience.CircuitBreaker``) opens after ``breaker_threshold`` consecutive connection
failures; while it is open nothing is sent to the server, and after ``breaker_reset`` seconds one caller at a time sends
a trial. Errors the server gives for the data (constraint, overflow, bad JSON) are not retried: ``StoreError`` names the
table, and nothing of the batch stays. Deadlocks and serialisation failures are retried without counting against the
server. Reads retry the same way (an idle pool connection may have been cut since its last use), but do not wait on an
open breaker: they raise ``StoreUnavailable`` ("read failed") at once, for their caller to answer or hold.

How the queue of pending writes is bounded: there is no background queue, on purpose. A batch that cannot be
written stays with the caller awaiting ``apply`` (a bus handler, which has not committed its offset yet), for at
most ``retry_attempts`` attempts and ``retry_deadline`` seconds; then ``apply`` raises ``StoreUnavailable`` (a
``StoreError``) and the caller decides: the database adapter keeps the batch unacknowledged and tries again later
(see ``nodes/database_adapter_effect``), so the writes held are bounded by the bus's bounded number of in-flight
handlers times their batch size, they survive a crash of this process (the bus still has them), and nothing is
dropped. ``health()`` reports them as ``queued_writes`` (rows) and the store as ``degraded`` while they wait. Pool
exhaustion is not retried here: ``StoreUnavailable("pool exhausted ...")`` after ``acquire_timeout``. Every
connection-class failure that ends a call (refused, lost, the server shutting down, the breaker open, the pool
exhausted) is ``StoreUnavailable``; an error about the data, or a schema that is not current, is a plain
``StoreError``.

Migrations: ``migrations/postgres/NNNN_name.sql``, applied by ``upgrade()`` in number order, each in its own
transaction, under a per-schema advisory lock, recorded in ``schema_migrations(version, name, checksum,
applied_at)``. ``open()`` does not upgrade; until the schema is current every call raises ``StoreError`` saying to
run ``onex db upgrade``, and ``health()`` says ``down``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import orjson

from onex import _jsontext, _tables
from onex._postgres_sql import (
    FROM_SQL,
    PREPARE_DOCS,
    PROCESSED,
    STAGED,
    WRITES,
    Rows,
    TableSQL,
    dump_doc,
    render,
    script,
    utc,
)
from onex._tables import (
    SELECT_AGGREGATE_WINDOW,
    SELECT_BRIDGE_STATE,
    SELECT_DEAD_LETTER,
    SELECT_EVENT_LOG,
    SELECT_NODE_STATE,
    SELECT_REGISTRATION,
    SELECT_STAMP,
    SELECT_STEP,
    SELECT_TRANSITION,
    SELECT_WORKFLOW,
)
from onex.exceptions import StoreError, StoreUnavailable
from onex.meters import CommitMeter
from onex.resilience import BreakerState, CircuitBreaker
from onex.settings import redact_url
from onex.store import (
    TABLES,
    AggregateWindowRow,
    BridgeStateRow,
    DeadLetterRow,
    EventLogRow,
    Migration,
    NodeStateRow,
    RegistrationRow,
    StampRow,
    StepRow,
    Store,
    StoreHealth,
    TransitionRow,
    WorkflowRow,
    WriteBatch,
    load_migrations,
)

__all__ = ["PostgresSettings", "PostgresStatistics", "PostgresStore"]

T = TypeVar("T")

Connection = Any  # asyncpg ships no type hints; a connection or a pool's connection proxy

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class _ConnectRefused(Exception):
    """The server refused a new connection of the pool with an error of its own: the database closed to new ones
    (ALLOW_CONNECTIONS false), dropped or renamed, the role's password changed. Unavailable until an operator acts,
    which callers wait out as they do a server that is away (``open()`` still fails at once on the same errors)."""


# Errors after which the same batch may well succeed on another connection: the connection or the server went
# away. ``DataError`` is an ``InterfaceError`` too but bad input never heals, so it is excluded explicitly.
_CONNECTION_ERRORS: Final[tuple[type[BaseException], ...]] = (
    asyncpg.PostgresConnectionError,  # class 08, ConnectionDoesNotExistError among them
    asyncpg.exceptions.AdminShutdownError,  # 57P01: pg_terminate_backend, smart/fast shutdown
    asyncpg.exceptions.CrashShutdownError,  # 57P02
    asyncpg.exceptions.CannotConnectNowError,  # 57P03: the server is starting or stopping
    asyncpg.exceptions.TooManyConnectionsError,  # 53300
    asyncpg.InterfaceError,  # "connection is closed" and similar client-side states
    # The protocol left mid-operation by a backend that died under it ("cannot switch to state 15; another
    # operation (2) is in progress", seen when pg_terminate_backend lands between two statements of a batch), or
    # a prepared statement outdated by a schema change. Another connection starts clean.
    asyncpg.exceptions.InternalClientError,
    OSError,  # refused, reset, unreachable
    TimeoutError,  # a connect that hangs
    _ConnectRefused,
)

# Errors that are nobody's fault and go away on retry, without the server being unhealthy.
_CONCURRENCY_ERRORS: Final[tuple[type[BaseException], ...]] = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)


def _is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, _CONNECTION_ERRORS) and not isinstance(exc, asyncpg.DataError)


def _store_error(exc: BaseException, doing: str = "", then: str = "") -> StoreError:
    """The onex error for ``exc``, raised by asyncpg (or, during COPY, by a value's encoder): the one place this
    backend maps them. The message is ``doing: <what went wrong>`` (``; then``, when given: what became of the call).

    ``StoreUnavailable`` for a connection-class failure (``_CONNECTION_ERRORS``): the server or the connection went
    away, and the same call may well succeed later. ``StoreError`` for everything else: the server answered and
    refused (a constraint, a value, a schema), which another attempt would not change. Whether to retry first is
    decided before this, by ``_with_retry``; what reaches a caller is mapped here.
    """
    error = StoreUnavailable if _is_connection_error(exc) else StoreError
    text = _describe(exc)
    message = f"{doing}: {text}" if doing else text
    return error(f"{message}; {then}" if then else message)


@dataclass(frozen=True, slots=True)
class PostgresSettings:
    """Connection, pool and resilience settings, parsed once from the store URL (see the module docstring)."""

    dsn: str  # the URL handed to asyncpg: the store URL without the parameters below
    schema: str = "public"
    min_size: int = 1
    max_size: int = 10
    acquire_timeout: float = 10.0
    connect_timeout: float = 5.0
    statement_timeout_ms: int = 30_000
    command_timeout: float = 60.0
    application_name: str = "onex"
    retry_attempts: int = 6
    retry_deadline: float = 30.0
    backoff_initial: float = 0.05
    backoff_max: float = 2.0
    breaker_threshold: int = 5
    breaker_reset: float = 2.0
    bulk_method: str = "json"
    bulk_min_rows: int = 16

    @classmethod
    def from_url(cls, url: str) -> PostgresSettings:
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError(f"not a PostgreSQL URL: {redact_url(url)!r}")
        ours: dict[str, Any] = {}
        passthrough: list[tuple[str, str]] = []
        convert: dict[str, Callable[[str], Any]] = {
            f.name: _converter(f.type) for f in dataclasses.fields(cls) if f.name != "dsn"
        }
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            _refuse_overridden(key, value)
            if key in convert:
                try:
                    ours[key] = convert[key](value)
                except ValueError:
                    raise ValueError(f"store URL parameter {key}={value!r} is not valid") from None
            else:
                passthrough.append((key, value))
        settings = cls(dsn=urlunsplit(parts._replace(query=urlencode(passthrough))), **ours)
        if not _SCHEMA_NAME.match(settings.schema):
            raise ValueError(f"schema name {settings.schema!r}: letters, digits and underscores only")
        if settings.bulk_method not in ("unnest", "json", "copy", "executemany"):
            raise ValueError(f"bulk_method={settings.bulk_method!r}: expected unnest, json, copy or executemany")
        if not 0 <= settings.min_size <= settings.max_size or settings.max_size < 1:
            raise ValueError(f"pool sizes min_size={settings.min_size} max_size={settings.max_size} are not valid")
        return settings


# The server settings onex sets on every connection (``PostgresStore.open``), each with the parameter of ours that sets
# it. asyncpg hands a URL parameter it does not know to the server as a setting, and onex's own then replaced it
# without a word: ``?search_path=s`` created every table in public. So a URL that sets one is refused, naming ours.
_OURS: Final = {
    "search_path": "schema=NAME",
    "statement_timeout": "statement_timeout_ms=MS",
    "application_name": "application_name=NAME",
}
_SSLMODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")  # asyncpg's (and libpq's)
_SETTING: Final = re.compile(
    r"(?:-c\s*|--)([A-Za-z_.]+)\s*="
)  # a setting in libpq's options: -c name=value, --name=value


def _refuse_overridden(key: str, value: str) -> None:
    """ValueError for a URL parameter that onex would override (``_OURS``) or asyncpg would refuse only on connect."""
    if key in ("search_path", "statement_timeout"):
        raise ValueError(f"store URL parameter {key}={value!r}: onex sets {key} itself; use {_OURS[key]}")
    if key == "options":
        for name in _SETTING.findall(value):
            if name.replace("-", "_").lower() in _OURS:
                setting = name.replace("-", "_").lower()
                raise ValueError(
                    f"store URL parameter options={value!r}: onex sets {setting} itself; use {_OURS[setting]}"
                )
    if key == "sslmode" and value not in _SSLMODES:
        raise ValueError(f"store URL parameter sslmode={value!r}: expected one of {', '.join(_SSLMODES)}")


def _converter(annotation: Any) -> Callable[[str], Any]:
    # ``from __future__ import annotations`` leaves the field types as strings.
    return {"int": int, "float": float}.get(str(annotation), str)


@dataclass(frozen=True, slots=True)
class PostgresStatistics:
    """A snapshot of the store's counters (``PostgresStore.statistics()``)."""

    batches_applied: int
    rows_applied: int
    retries: int
    connection_failures: int
    queued_writes: int
    breaker_state: str
    breaker_waits: int  # times a call found the breaker open and waited instead of connecting
    pool_size: int
    pool_idle: int


def _qi(name: str) -> str:
    """Quote an identifier already checked against ``_SCHEMA_NAME``."""
    return '"' + name.replace('"', '""') + '"'


def _json_encode(value: Any) -> bytes:
    # No NaN or Infinity (onex._jsontext): jsonb refuses them, and the error is clearer here. SqliteStore encodes JSON
    # the same way.
    return b"\x01" + _jsontext.dumpb(value)


def _json_decode(data: bytes) -> Any:
    return json.loads(data[1:])  # jsonb's binary format: a version byte (1), then the text


async def _init_jsonb(conn: Connection) -> None:
    """Run once per new pool connection: JSONB to and from Python values, in binary (COPY speaks nothing else)."""
    await conn.set_type_codec("jsonb", encoder=_json_encode, decoder=_json_decode, schema="pg_catalog", format="binary")


async def _init_staging(conn: Connection) -> None:
    """``bulk_method=copy``: also the temporary staging tables, once per connection, emptied by every commit."""
    await _init_jsonb(conn)
    await conn.execute(";\n".join(t.staging_ddl for t in STAGED))


# --- migrations ------------------------------------------------------------------------------------------------------


def _migrations() -> list[Migration]:
    return load_migrations("postgres", Migration)


def _advisory_key(schema: str) -> int:
    """A stable signed 64-bit lock key per schema, so upgrades of different schemas do not wait for each other."""
    digest = hashlib.blake2b(f"onex.migrations:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


_MIGRATION_TIMEOUT_S: Final = 24 * 3600.0  # client-side limit on the advisory lock wait and on one migration
_DONE_MIGRATIONS: Final = "SELECT version, checksum FROM schema_migrations"
_RECORD_MIGRATION: Final = "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)"
_MIGRATIONS_DDL: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    checksum    TEXT NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""

# --- row conversion --------------------------------------------------------------------------------------------------

_READ: Final = _tables.readers(FROM_SQL)  # a fetched row as its dataclass, per table
# The collation of every ORDER BY on a text column: bytewise, as SQLite's BINARY, whatever the database's collation is
# (an ICU or glibc locale sorts '_x' before 'a' and 'b' before 'B'; SQLite the other way), so that both stores list
# names in one order (tests/test_store_conformance.py).
_C: Final = 'COLLATE "C"'


# --- dead letters ---------------------------------------------------------------------------------------------------

_DEAD_LETTERS: Final = render(_tables.DEAD_LETTERS)
_INSERT_DEAD_LETTER: Final = _DEAD_LETTERS.statement
_REPLAYED: Final = "UPDATE dead_letters SET replayed_at = $1, replays = replays + 1 WHERE event_id = $2"

# --- the store -------------------------------------------------------------------------------------------------------


class _SchemaNotReady(StoreError):
    """The schema is missing, behind or ahead of this onex: ``health()`` says ``down``."""


class _Retryable(Exception):
    """Internal: this attempt failed in a way that another attempt may not; ``__cause__`` holds the error."""


class PostgresStore(Store):
    """The ``Store`` on PostgreSQL (see the module docstring for the URL, the write path and the resilience rules).

    Besides the ``Store`` API: ``settings``, ``statistics()``, ``connection()`` (a raw pool connection) and
    ``list_event_logs``. ``clock`` is injectable so tests can step the circuit breaker's time.
    """

    def __init__(self, url: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.settings = PostgresSettings.from_url(url)
        self.commits = CommitMeter()
        self.concurrent_writes = self.settings.max_size  # a transaction a pool connection
        self._migrations = _migrations()
        self._pool: asyncpg.Pool | None = None
        self._closed = False
        self._schema_ready = False  # checked once per store: until then every call looks at schema_migrations
        self._clock = clock
        self._breaker = CircuitBreaker(
            failure_threshold=self.settings.breaker_threshold,
            reset_timeout_s=self.settings.breaker_reset,
            clock=clock,
        )
        self._trial = asyncio.Lock()  # while the breaker is half-open, one caller at a time tries the server
        self._consecutive_failures = 0
        self._last_error = ""
        self._queued = 0
        self._batches = 0
        self._rows = 0
        self._retries = 0
        self._failures = 0
        self._breaker_waits = 0

    def __repr__(self) -> str:
        return f"PostgresStore({redact_url(self.url)!r})"

    # --- lifecycle ---------------------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the pool (``min_size`` connections). A no-op on an open store. Does not upgrade the schema."""
        if self._pool is not None:
            return
        s = self.settings
        try:
            self._pool = await asyncpg.create_pool(
                s.dsn,
                min_size=s.min_size,
                max_size=s.max_size,
                timeout=s.connect_timeout,
                command_timeout=s.command_timeout,
                statement_cache_size=256,  # prepared statements, per connection
                server_settings={
                    "search_path": _qi(s.schema),
                    "statement_timeout": str(s.statement_timeout_ms),
                    "application_name": s.application_name,
                },
                init=_init_staging if s.bulk_method == "copy" else _init_jsonb,
            )
        except (asyncpg.PostgresError, *_CONNECTION_ERRORS) as exc:
            raise _store_error(exc, f"cannot connect to {redact_url(self.url)}") from exc
        self._closed = False

    async def aclose(self) -> None:
        """Close the pool: in-flight calls get ``acquire_timeout`` seconds to finish, then connections are cut."""
        pool, self._pool = self._pool, None
        self._closed = True
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=self.settings.acquire_timeout)
        except TimeoutError:
            pool.terminate()

    # --- migrations --------------------------------------------------------------------------------------------------

    async def upgrade(self) -> list[str]:
        """Apply pending migrations, each in its own transaction; the names applied (``[]`` when up to date).

        Creates the schema when missing. A session advisory lock, one per schema, is held throughout, so two
        processes upgrading at once serialise: the second finds everything applied. A migration recorded with a
        different checksum than its file is reported, not re-applied; a schema with versions this onex does not
        know is refused. Neither ``statement_timeout`` nor ``command_timeout`` applies to the lock or migrations.
        """
        schema = self.settings.schema
        key = _advisory_key(schema)
        applied: list[str] = []
        try:
            async with self._connection() as conn:
                await conn.execute("SET statement_timeout = 0")  # undone by the pool's RESET ALL on release
                await conn.execute("SELECT pg_advisory_lock($1)", key, timeout=_MIGRATION_TIMEOUT_S)
                try:
                    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_qi(schema)}")
                    await conn.execute(_MIGRATIONS_DDL)
                    done = {r["version"]: r["checksum"] for r in await conn.fetch(_DONE_MIGRATIONS)}
                    known = {m.version for m in self._migrations}
                    newer = sorted(set(done) - known)
                    if newer:
                        raise _SchemaNotReady(
                            f"schema {schema!r} has version {newer[-1]}, newer than this onex knows "
                            f"({max(known, default=0)}): use a newer onex; nothing was applied"
                        )
                    for m in self._migrations:
                        if m.version in done:
                            if done[m.version] != m.checksum:
                                raise _SchemaNotReady(
                                    f"migration {m.name} was applied to schema {schema!r} with different contents"
                                )
                            continue
                        try:
                            async with conn.transaction():
                                await conn.execute(m.sql, timeout=_MIGRATION_TIMEOUT_S)
                                await conn.execute(_RECORD_MIGRATION, m.version, m.name, m.checksum)
                        except asyncpg.PostgresError as exc:
                            raise _store_error(
                                exc, f"migration {m.name} failed on schema {schema!r}", "it was rolled back"
                            ) from exc
                        applied.append(m.name)
                finally:
                    if not conn.is_closed():
                        await conn.execute("SELECT pg_advisory_unlock($1)", key)
        except (asyncpg.PostgresError, *_CONNECTION_ERRORS) as exc:
            raise _store_error(exc, f"upgrade of schema {schema!r} at {redact_url(self.url)} failed") from exc
        self._schema_ready = True
        return applied

    async def _ensure_schema(self, conn: Connection) -> None:
        """Raise ``_SchemaNotReady`` unless every migration this onex knows has been applied, and no other."""
        if self._schema_ready:
            return
        where = f"schema {self.settings.schema!r} at {redact_url(self.url)}"
        if not await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
            raise _SchemaNotReady(f"{where} has no onex schema yet: run `onex db upgrade`")
        applied = {r["version"] for r in await conn.fetch(_DONE_MIGRATIONS)}
        known = {m.version: m.name for m in self._migrations}
        newer = applied - known.keys()
        if newer:
            raise _SchemaNotReady(
                f"{where} has schema version {max(newer)}, newer than this onex knows "
                f"({max(known, default=0)}): use a newer onex"
            )
        pending = sorted(known.keys() - applied)
        if pending:
            names = ", ".join(known[v] for v in pending)
            raise _SchemaNotReady(f"{where} needs migrations {names}: run `onex db upgrade`")
        self._schema_ready = True

    # --- writes ------------------------------------------------------------------------------------------------------

    async def apply(self, batch: WriteBatch) -> None:
        """Write the batch in one transaction, retried on lost connections (module docstring).

        Do not change ``batch`` until this returns: a retry writes it again.
        """
        rows = len(batch) + len(batch.processed_event_ids)
        if not rows:
            await self._check_ready()  # nothing to write; still an error on a closed store or an old schema
            return
        started = time.perf_counter()
        await self._with_retry(lambda: self._apply_once(batch), queued=rows)
        self.commits.committed(rows, time.perf_counter() - started)
        self._batches += 1
        self._rows += len(batch)

    async def _check_ready(self) -> None:
        """``StoreError`` on a closed store or a schema that is not current; no round trip once it is."""
        if self._pool is None or not self._schema_ready:
            await self._with_retry(self._ready)

    async def _ready(self) -> None:
        async with self._connection() as conn:
            await self._ensure_schema(conn)

    async def _apply_once(self, batch: WriteBatch) -> None:
        # Encoded before a connection is taken: a row that cannot be stored fails the batch before any round trip.
        work = [self._encode(table, rows) for field, table in WRITES if (rows := getattr(batch, field))]
        if batch.processed_event_ids:
            processed = [(batch.consumer, i) for i in batch.processed_event_ids]  # argument tuples as they are
            work.append(Rows(PROCESSED, processed, self._by_executemany(PROCESSED, processed)))
        async with self._connection() as conn:
            await self._ensure_schema(conn)
            if len(work) == 1 and self._one_statement(work[0]):
                # One statement is a transaction of its own: one round trip where BEGIN and COMMIT made three (an
                # orchestrator's checkpoint, the commonest batch, waited for all three through a busy event loop).
                await self._write(conn, work[0])
                return
            if (text := self._script(work)) is not None:
                try:
                    try:
                        await conn.execute(text)  # one message: one round trip and one transaction
                    except asyncpg.exceptions.InvalidSQLStatementNameError:  # the connection's first: prepare them
                        await conn.execute(PREPARE_DOCS)
                        await conn.execute(text)
                    return
                except asyncpg.PostgresError as exc:
                    if _is_connection_error(exc) or isinstance(exc, _CONCURRENCY_ERRORS):
                        raise
                    # Rolled back; written again statement by statement, which names the table that fails.
            async with conn.transaction():
                for rows in work:
                    await self._write(conn, rows)

    def _script(self, work: list[Rows]) -> str | None:
        """With ``bulk_method=json``, a batch of several statements as one text (``onex._postgres_sql.script``); None
        where it cannot be: a table written row by row, rows in more than one round, or a value orjson refuses (the
        statements one by one then name its table)."""
        if self.settings.bulk_method != "json" or not all(r.table.doc and r.rounds == 1 for r in work):
            return None
        try:
            return script(work)
        except TypeError:  # orjson's JSONEncodeError: an integer beyond 64 bits
            return None

    def _encode(self, table: TableSQL, rows: Sequence[Any]) -> Rows:
        """``rows`` as ``_write`` sends them: argument tuples, or a ``bulk_method=json`` document's arrays; a
        ``StoreError`` naming the table when a value cannot be converted (a group that JSON cannot hold, a row of the
        wrong type). Values asyncpg or orjson encode themselves fail later."""
        by_executemany = self._by_executemany(table, rows)
        encode = table.encode_doc if self.settings.bulk_method == "json" and not by_executemany else table.encode
        try:
            return Rows(table, encode(rows, None), by_executemany)
        except (TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise _store_error(exc, f"apply: a row of {table.name} cannot be stored", "nothing was written") from exc

    def _by_executemany(self, table: TableSQL, rows: Sequence[Any]) -> bool:
        """Whether ``_write`` sends ``rows`` by ``executemany``: pipelined, in one round trip, and atomic. With
        ``bulk_method=json`` only the tables without a document (heartbeats): a small document costs no more."""
        if not table.bulk:
            return True  # no set-based statement (heartbeats)
        method = self.settings.bulk_method
        return method == "executemany" or (method != "json" and len(rows) < self.settings.bulk_min_rows)

    def _one_statement(self, rows: Rows) -> bool:
        """Whether ``_write`` sends ``rows`` as one statement (``executemany`` counts as one: it is atomic), which
        PostgreSQL commits or rolls back whole without a transaction around it."""
        return rows.by_executemany or (self.settings.bulk_method in ("unnest", "json") and rows.rounds == 1)

    async def _write(self, conn: Connection, rows: Rows) -> None:
        """Write ``rows`` in the transaction open on ``conn``, or alone when they are the batch's one statement
        (``_one_statement``).

        A row the server or the encoder refuses fails the batch with a ``StoreError`` naming the table; the
        transaction then rolls back. Connection-class errors pass through untouched, to be retried.
        """
        table, encoded = rows.table, rows.encoded
        try:
            method = self.settings.bulk_method
            if rows.by_executemany:
                await conn.executemany(table.statement, encoded)
                return
            if method == "copy":
                records = [(i, rows.round_of(i), *row) for i, row in enumerate(encoded)]
                await conn.copy_records_to_table(
                    table.staging, records=records, columns=table.staging_columns, schema_name="pg_temp"
                )
                for n in range(rows.rounds):
                    await conn.execute(table.move, n)
                return
            for n in range(rows.rounds):
                selected = rows.of_round(n)
                if method == "json":
                    await conn.execute(table.doc, orjson.Fragment(dump_doc(selected)))
                else:
                    await conn.execute(table.bulk, *zip(*selected, strict=True))
        except (asyncpg.PostgresError, asyncpg.DataError, TypeError, ValueError, OverflowError) as exc:
            # asyncpg wraps a value its encoders refuse in DataError, except during COPY, where the encoder's own
            # TypeError (not JSON serialisable), ValueError (NaN) or OverflowError (beyond int64) comes through.
            # orjson's JSONEncodeError (an integer beyond 64 bits) is a TypeError.
            if _is_connection_error(exc) or isinstance(exc, _CONCURRENCY_ERRORS):
                raise
            raise _store_error(
                exc, f"apply: {table.operation} of {table.name} failed", "the batch was rolled back"
            ) from exc

    # --- retries and the circuit breaker -----------------------------------------------------------------------------

    async def _with_retry(self, operation: Callable[[], Awaitable[T]], *, queued: int = 0, read: bool = False) -> T:
        """Run ``operation`` under the circuit breaker, retrying connection-class failures (module docstring).

        ``queued`` rows count towards ``health().queued_writes`` while the call waits: from its first failure, or
        from finding the breaker open, until it returns. A ``read`` does not wait on an open breaker: it raises
        ``StoreUnavailable`` at once, as SQLite's reads fail without waiting for anything but the busy timeout. Its
        caller holds no batch for it and decides: the gateway answers 503, a node holds and asks again.
        """
        s = self.settings
        deadline = self._clock() + s.retry_deadline
        attempt = 0
        counted = 0
        try:
            while True:
                state = self._breaker.state
                if state is BreakerState.OPEN:
                    if read:
                        raise StoreUnavailable(self._unavailable("circuit breaker open", read=True))
                    if not counted:
                        counted = queued
                        self._queued += counted
                    # Poll rather than sleep the whole reset timeout: another caller's trial may close it sooner.
                    wait = min(s.breaker_reset, 0.05)
                    if self._clock() + wait > deadline:
                        raise StoreUnavailable(self._unavailable("circuit breaker open"))
                    self._breaker_waits += 1
                    await asyncio.sleep(wait)
                    continue
                try:
                    if state is BreakerState.HALF_OPEN:
                        async with self._trial:
                            if self._breaker_open():
                                continue  # the trial of the caller before this one failed: wait again
                            attempt += 1
                            return await self._attempt(operation)
                    attempt += 1
                    return await self._attempt(operation)
                except _Retryable as exc:
                    self._retries += 1
                    if not counted:
                        counted = queued
                        self._queued += counted
                    delay = min(s.backoff_initial * 2 ** (attempt - 1), s.backoff_max)
                    if attempt >= s.retry_attempts or self._clock() + delay > deadline:
                        raise StoreUnavailable(
                            self._unavailable(f"gave up after {attempt} attempts", read=read)
                        ) from exc.__cause__
                    await asyncio.sleep(delay)
        finally:
            self._queued -= counted

    async def _attempt(self, operation: Callable[[], Awaitable[T]]) -> T:
        """One attempt: tell the breaker how the server did, and turn what is not retried into ``StoreError``."""
        try:
            result = await operation()
        except StoreError as exc:
            if isinstance(exc.__cause__, asyncpg.PostgresError) or isinstance(exc, _SchemaNotReady):
                self._record_success()  # the server answered; the request was wrong
            raise
        except _CONCURRENCY_ERRORS as exc:
            self._record_success()
            raise _Retryable() from exc
        except (asyncpg.PostgresError, *_CONNECTION_ERRORS) as exc:
            if not _is_connection_error(exc):
                if isinstance(exc, asyncpg.PostgresError):
                    self._record_success()
                raise _store_error(exc) from exc
            self._record_failure(exc)
            raise _Retryable() from exc
        self._record_success()
        return result

    def _breaker_open(self) -> bool:
        # A method, not an inline comparison: the state is a property of the clock, which mypy would narrow.
        return self._breaker.state is BreakerState.OPEN

    def _record_success(self) -> None:
        self._breaker.record_success()
        self._consecutive_failures = 0

    def _record_failure(self, exc: BaseException) -> None:
        self._breaker.record_failure()
        self._consecutive_failures += 1
        self._failures += 1
        self._last_error = _describe(exc)

    def _unavailable(self, why: str, *, read: bool = False) -> str:
        failed = "read failed" if read else "batch not written"
        return (
            f"PostgreSQL at {redact_url(self.url)} unavailable, {failed} ({why}; "
            f"{self._consecutive_failures} consecutive connection failures, last: {self._last_error or 'none'})"
        )

    dialect = "postgres"

    async def run(self, fn: Callable[[Connection], Awaitable[T]], *, retry: bool) -> T:
        """``await fn(connection)`` on a pool connection once the schema is current: the hook of ``onex.metastore``,
        whose ``fn`` opens its own transaction. ``retry``: connection-class failures are retried as reads are (only
        for work that is safe to repeat); either way they end as ``StoreUnavailable``. Other asyncpg errors reach
        the caller as they are, for it to map (a unique violation means something to it)."""

        async def once() -> T:
            async with self._connection() as conn:
                await self._ensure_schema(conn)
                return await fn(conn)

        if retry:
            return await self._with_retry(once)
        try:
            return await once()
        except _CONNECTION_ERRORS as exc:
            if not _is_connection_error(exc):
                raise
            raise _store_error(exc, "metastore write", "it may or may not have been committed") from exc

    # --- reads -------------------------------------------------------------------------------------------------------

    async def _fetch(self, query: str, *args: Any, write: bool = False) -> list[asyncpg.Record]:
        """A read, retried like a write (an idle pool connection may have been cut since its last use), but failing
        at once on an open breaker (``_with_retry``); ``write``: a statement that writes, which waits as ``apply``."""

        async def run() -> list[asyncpg.Record]:
            async with self._connection() as conn:
                await self._ensure_schema(conn)
                result: list[asyncpg.Record] = await conn.fetch(query, *args)
                return result

        return await self._with_retry(run, read=not write)

    async def unprocessed(self, consumer: str, event_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        if not event_ids:
            await self._check_ready()
            return set()
        rows = await self._fetch(
            "SELECT event_id FROM processed_events WHERE consumer = $1 AND event_id = ANY($2::uuid[])",
            consumer,
            list(event_ids),
        )
        seen = {r["event_id"] for r in rows}
        return {i for i in event_ids if _as_uuid(i) not in seen}

    async def get_workflow(self, correlation_id: uuid.UUID) -> WorkflowRow | None:
        rows = await self._fetch(f"{SELECT_WORKFLOW} WHERE correlation_id = $1", correlation_id)
        return _READ.workflow(rows[0]) if rows else None

    async def list_workflows(
        self,
        *,
        state: str | None = None,
        limit: int = 100,
        namespace: str | None = None,
        since: datetime | None = None,
        file_path: str | None = None,
    ) -> list[WorkflowRow]:
        """The most recently created workflows first, optionally only those matching every filter given."""
        _check_page(limit, 0)
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("current_state =", state),
            ("namespace =", namespace),
            ("created_at >=", since),
            ("file_path =", file_path),
        ):
            if value is not None:
                params.append(value)
                where.append(f"{column} ${len(params)}")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._fetch(f"{SELECT_WORKFLOW}{clause} ORDER BY id DESC LIMIT ${len(params) + 1}", *params, limit)
        return [_READ.workflow(r) for r in rows]

    async def get_workflows(self, correlation_ids: Sequence[uuid.UUID]) -> list[WorkflowRow]:
        rows = await self._fetch(f"{SELECT_WORKFLOW} WHERE correlation_id = ANY($1::uuid[])", list(correlation_ids))
        return [_READ.workflow(r) for r in rows]

    async def workflow_states(self, correlation_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
        given = {_as_uuid(cid): cid for cid in correlation_ids}
        rows = await self._fetch(
            "SELECT correlation_id, current_state FROM workflow_executions WHERE correlation_id = ANY($1::uuid[])",
            list(given),
        )
        return {given[r[0]]: r[1] for r in rows}

    async def unprocessed_workflows(self, consumer: str, states: Sequence[str]) -> list[WorkflowRow]:
        rows = await self._fetch(
            f"{SELECT_WORKFLOW} w WHERE current_state = ANY($1::text[]) AND NOT EXISTS (SELECT 1 FROM "
            "processed_events p WHERE p.consumer = $2 AND p.event_id = w.correlation_id) ORDER BY id",
            list(states),
            consumer,
        )
        return [_READ.workflow(r) for r in rows]

    async def get_stamps(self, ids: Sequence[uuid.UUID]) -> list[StampRow]:
        rows = await self._fetch(f"{SELECT_STAMP} WHERE id = ANY($1::uuid[])", list(ids))
        return [_READ.stamp(r) for r in rows]

    async def mark_stale(self, heard_before: datetime) -> list[str]:
        rows = await self._fetch(
            "UPDATE node_registrations SET health_status = 'STALE', updated_at = now() "
            "WHERE last_heartbeat < $1 AND health_status NOT IN ('STALE', 'STOPPED') RETURNING node_id",
            utc(heard_before),
            write=True,
        )
        return [str(r["node_id"]) for r in rows]

    async def list_steps(self, workflow_id: uuid.UUID) -> list[StepRow]:
        rows = await self._fetch(f"{SELECT_STEP} WHERE workflow_id = $1 ORDER BY step_order, id", workflow_id)
        return [_READ.step(r) for r in rows]

    async def list_transitions(self, entity_id: str) -> list[TransitionRow]:
        """By ``created_at``, then in the order they were stored."""
        rows = await self._fetch(f"{SELECT_TRANSITION} WHERE entity_id = $1 ORDER BY created_at, seq", entity_id)
        return [_READ.transition(r) for r in rows]

    async def get_stamps_by_hash(self, file_hash: str) -> list[StampRow]:
        rows = await self._fetch(f"{SELECT_STAMP} WHERE file_hash = $1 ORDER BY created_at, seq", file_hash)
        return [_READ.stamp(r) for r in rows]

    async def list_stamps(self, namespace: str, *, limit: int = 100, offset: int = 0) -> list[StampRow]:
        """A page of a namespace's stamps, oldest first (``created_at``, then the order they were stored)."""
        _check_page(limit, offset)
        rows = await self._fetch(
            f"{SELECT_STAMP} WHERE namespace = $1 ORDER BY created_at, seq LIMIT $2 OFFSET $3",
            namespace,
            limit,
            offset,
        )
        return [_READ.stamp(r) for r in rows]

    async def get_bridge_state(self, namespace: str) -> BridgeStateRow | None:
        rows = await self._fetch(f"{SELECT_BRIDGE_STATE} WHERE namespace = $1", namespace)
        return _READ.bridge_state(rows[0]) if rows else None

    async def list_bridge_states(self) -> list[BridgeStateRow]:
        return [_READ.bridge_state(r) for r in await self._fetch(f"{SELECT_BRIDGE_STATE} ORDER BY namespace {_C}")]

    async def list_registrations(self) -> list[RegistrationRow]:
        return [_READ.registration(r) for r in await self._fetch(f"{SELECT_REGISTRATION} ORDER BY node_id {_C}")]

    async def list_event_logs(self, correlation_id: uuid.UUID, *, limit: int = 1000) -> list[EventLogRow]:
        """The logged events of one correlation id, by ``timestamp`` (an addition to the ``Store`` API)."""
        _check_page(limit, 0)
        rows = await self._fetch(
            f"{SELECT_EVENT_LOG} WHERE correlation_id = $1 ORDER BY timestamp, seq LIMIT $2", correlation_id, limit
        )
        return [_READ.event_log(r) for r in rows]

    # --- dead letters ----------------------------------------------------------------------------------------------

    async def add_dead_letters(self, rows: Sequence[DeadLetterRow]) -> None:
        await self._write_many([(_INSERT_DEAD_LETTER, _DEAD_LETTERS.encode(rows, None))])

    async def record_replay(self, rows: Sequence[DeadLetterRow], at: datetime) -> None:
        await self._write_many(
            [
                (_INSERT_DEAD_LETTER, _DEAD_LETTERS.encode(rows, None)),
                (_REPLAYED, [(utc(at), r.event_id) for r in rows]),
            ]
        )

    async def _write_many(self, work: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        """Each statement with its argument rows, all in one transaction, retried like ``apply``."""
        if not any(args for _, args in work):
            await self._check_ready()
            return

        async def run() -> None:
            async with self._connection() as conn:
                await self._ensure_schema(conn)
                async with conn.transaction():
                    for sql, args in work:
                        await conn.executemany(sql, args)

        await self._with_retry(run, queued=len(work[0][1]))

    async def list_dead_letters(self, *, topic: str | None = None, limit: int = 100) -> list[DeadLetterRow]:
        _check_page(limit, 0)
        # Two statements rather than "$1 IS NULL OR topic = $1", whose generic plan could not use the topic index.
        order = "ORDER BY dead_lettered_at DESC, seq DESC"
        if topic is None:
            rows = await self._fetch(f"{SELECT_DEAD_LETTER} {order} LIMIT $1", limit)
        else:
            rows = await self._fetch(f"{SELECT_DEAD_LETTER} WHERE topic = $1 {order} LIMIT $2", topic, limit)
        return [_READ.dead_letter(r) for r in rows]

    async def count_dead_letters(self, *, topic: str | None = None) -> int:
        if topic is None:
            rows = await self._fetch("SELECT count(*) AS n FROM dead_letters")
        else:
            rows = await self._fetch("SELECT count(*) AS n FROM dead_letters WHERE topic = $1", topic)
        return int(rows[0]["n"])

    async def find_dead_letters(self, event_id: uuid.UUID) -> list[DeadLetterRow]:
        rows = await self._fetch(
            f"{SELECT_DEAD_LETTER} WHERE event_id = $1 OR original_event_id = $1 ORDER BY dead_lettered_at, seq",
            event_id,
        )
        return [_READ.dead_letter(r) for r in rows]

    async def get_dead_letters(self, event_ids: Sequence[uuid.UUID]) -> list[DeadLetterRow]:
        rows = await self._fetch(f"{SELECT_DEAD_LETTER} WHERE event_id = ANY($1::uuid[])", list(event_ids))
        return [_READ.dead_letter(r) for r in rows]

    # --- aggregate windows and node state --------------------------------------------------------------------------

    async def list_aggregate_windows(
        self,
        *,
        node: str | None = None,
        aggregation: str | None = None,
        namespace: str | None = None,
        closed: bool | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[AggregateWindowRow]:
        _check_page(limit, 0)
        # Only the filters given, so that each combination is its own prepared statement whose plan can use
        # aggregate_windows_namespace_idx (a generic "$1 IS NULL OR ..." plan could not).
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("node =", node),
            ("aggregation =", aggregation),
            ("namespace =", namespace),
            ("closed =", closed),
            ("window_start >=", utc(since)),
        ):
            if value is not None:
                params.append(value)
                where.append(f"{column} ${len(params)}")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._fetch(
            f"{SELECT_AGGREGATE_WINDOW}{clause} ORDER BY window_start DESC NULLS LAST, group_key {_C}, node {_C}, "
            f"aggregation {_C}, window_id {_C} LIMIT ${len(params) + 1}",
            *params,
            limit,
        )
        return [_READ.aggregate_window(r) for r in rows]

    async def get_aggregate_windows(self, node: str, *, open_only: bool = True) -> list[AggregateWindowRow]:
        only_open = " AND NOT closed" if open_only else ""
        rows = await self._fetch(
            f"{SELECT_AGGREGATE_WINDOW} WHERE node = $1{only_open} "
            f"ORDER BY aggregation {_C}, group_key {_C}, window_id {_C}",
            node,
        )
        return [_READ.aggregate_window(r) for r in rows]

    async def get_node_states(self, node: str, keys: Sequence[str]) -> list[NodeStateRow]:
        rows = await self._fetch(f'{SELECT_NODE_STATE} WHERE node = $1 AND "key" = ANY($2::text[])', node, list(keys))
        return [_READ.node_state(r) for r in rows]

    async def list_node_states(self, node: str, *, limit: int = 1000) -> list[NodeStateRow]:
        _check_page(limit, 0)
        rows = await self._fetch(f'{SELECT_NODE_STATE} WHERE node = $1 ORDER BY "key" {_C} LIMIT $2', node, limit)
        return [_READ.node_state(r) for r in rows]

    async def count(self, table: str) -> int:
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; expected one of {', '.join(TABLES)}")
        # The name is one of TABLES, so formatting it into the SQL is safe (identifiers cannot be parameters).
        rows = await self._fetch(f"SELECT count(*) AS n FROM {table}")
        return int(rows[0]["n"])

    # --- health, statistics, raw access ------------------------------------------------------------------------------

    @property
    def circuit_open(self) -> bool:
        return self._breaker_open()

    async def health(self) -> StoreHealth:
        """``ok``; ``degraded`` while writes fail or wait (with their row count); ``down`` when not usable.

        ``down``: the store is not open, or the schema is not current (the detail says why). ``degraded``: the
        server does not answer, the pool is exhausted, or writes are waiting to be retried. Never hammers a
        failing server: while the breaker is open the answer comes from memory; once its reset timeout has passed,
        this call sends the trial query itself, so health recovers without waiting for a write.
        """
        if self._pool is None:
            return StoreHealth("down", f"{self!r} is {'closed' if self._closed else 'not open'}", self._queued)
        if self._breaker.state is BreakerState.OPEN:
            return StoreHealth("degraded", self._degraded_detail("circuit breaker open"), self._queued)
        guard: contextlib.AbstractAsyncContextManager[Any] = (
            self._trial if self._breaker.state is BreakerState.HALF_OPEN else contextlib.nullcontext()
        )
        try:
            async with guard:
                if self._breaker_open():  # another caller's trial failed meanwhile
                    return StoreHealth("degraded", self._degraded_detail("circuit breaker open"), self._queued)
                detail = await self._attempt(self._ping)
        except _Retryable:
            return StoreHealth("degraded", self._degraded_detail("server unreachable"), self._queued)
        except _SchemaNotReady as exc:
            return StoreHealth("down", str(exc), self._queued)
        except StoreError as exc:
            return StoreHealth("degraded", str(exc), self._queued)
        if self._queued:
            return StoreHealth("degraded", self._degraded_detail("writes waiting for a retry"), self._queued)
        return StoreHealth("ok", detail, 0)

    async def _ping(self) -> str:
        async with self._connection() as conn:
            await self._ensure_schema(conn)
            version = await conn.fetchval("SELECT max(version) FROM schema_migrations")
            server = str(conn.get_settings().server_version).split()[0]
        return f"{redact_url(self.url)} (PostgreSQL {server}, schema {self.settings.schema} version {version})"

    def _degraded_detail(self, why: str) -> str:
        return (
            f"{why}: {self._queued} rows waiting to be written, {self._consecutive_failures} consecutive "
            f"connection failures, last: {self._last_error or 'none'}"
        )

    def statistics(self) -> PostgresStatistics:
        pool = self._pool
        return PostgresStatistics(
            batches_applied=self._batches,
            rows_applied=self._rows,
            retries=self._retries,
            connection_failures=self._failures,
            queued_writes=self._queued,
            breaker_state=self._breaker.state.value,
            breaker_waits=self._breaker_waits,
            pool_size=pool.get_size() if pool is not None else 0,
            pool_idle=pool.get_idle_size() if pool is not None else 0,
        )

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pool connection for queries the ``Store`` API does not cover (``onex db``, tests).

        Raises ``StoreUnavailable("pool exhausted ...")`` when none is free within ``acquire_timeout``.
        """
        async with self._connection() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        pool = self._pool
        if pool is None:
            raise StoreError(f"{self!r} is {'closed' if self._closed else 'not open'}")
        timeout = self.settings.acquire_timeout
        try:
            conn = await pool.acquire(timeout=timeout)
        except TimeoutError as exc:
            if pool.get_idle_size() == 0 and pool.get_size() >= self.settings.max_size:
                raise StoreUnavailable(
                    f"pool exhausted: no free connection to {redact_url(self.url)} within {timeout:g}s "
                    f"(all {self.settings.max_size} in use)"
                ) from exc
            raise  # a connect that hung: a connection-class failure, retried
        except asyncpg.PostgresError as exc:
            raise _ConnectRefused(_describe(exc)) from exc
        try:
            yield conn
        except BaseException as exc:
            error = _underlying(exc)
            if _is_connection_error(error):
                # Whatever state the connection is in (often a transaction the server has forgotten), it is not
                # worth resetting for the next user: drop it, the pool opens a new one. A connection the server
                # closed has often been handed back to the pool already, and terminate() then raises InterfaceError
                # ("released back to the pool"), which would replace the error that matters (the server's).
                with contextlib.suppress(asyncpg.InterfaceError):
                    conn.terminate()
            if error is not exc:
                raise error from None
            raise
        finally:
            # Resetting the connection for its next user may fail: then the pool has terminated it and opens a new
            # one on the next acquire. What was done on it stands (or has raised already), so that is no error.
            with contextlib.suppress(Exception):
                await pool.release(conn)


def _underlying(exc: BaseException) -> BaseException:
    """The error that matters in ``exc``: the server's (``terminating connection due to administrator command``) where
    asyncpg, cleaning up after it, raised InterfaceError about the connection it left closed (a transaction's
    ``__aexit__``: "cannot call Transaction.__aexit__(): the underlying connection is closed"); else ``exc``."""
    context = exc.__context__
    if (
        isinstance(exc, asyncpg.InterfaceError)
        and context is not None
        and _is_connection_error(context)
        and not isinstance(context, asyncpg.InterfaceError)
    ):
        return context
    return exc


def _as_uuid(value: uuid.UUID | str) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _check_page(limit: int, offset: int) -> None:
    if limit < 0 or offset < 0:
        raise ValueError(f"limit and offset must not be negative (limit={limit}, offset={offset})")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _ConnectRefused):
        return str(exc)  # the server's error, described already
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text
