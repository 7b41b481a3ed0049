"""The metastore's tables on SQLite: writes through ``SqliteStore.run_sync`` (the store's writing connection and
thread), reads through ``SqliteStore.read_sync`` (its reader's, one snapshot a call).

Each write is one ``BEGIN IMMEDIATE ... COMMIT``: the write lock is taken first, so the conditional update and the
version insert see and change the same state, and concurrent writers of this or another process take turns. A
change (``modify``) reads the entity, computes the new version and writes it in that one transaction and in one
call on the store's thread: one hop instead of a read and a write, and no other writer can come between.
Encodings as in the rest of the SQLite schema: uuids and fixed-width UTC timestamps as text, JSON as compact text.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeVar, cast

from onex import _jsontext, _sqlite_exec
from onex._sqlite import SqliteStore
from onex.exceptions import EntityExists, StoreError, StoreUnavailable
from onex.metastore._sql import (
    ENTITY_COLUMNS,
    VERSION_COLUMNS,
    Backend,
    EntityRow,
    ListFilter,
    Step,
    VersionRow,
    missing_or_conflict,
)
from onex.store import Store

T = TypeVar("T")

_dumps: Final = _jsontext.dumps
_INSERT_ENTITY: Final = (
    f"INSERT INTO metastore_entities ({', '.join(ENTITY_COLUMNS)}) VALUES ({', '.join('?' * len(ENTITY_COLUMNS))})"
)
_UPDATE_ENTITY: Final = (
    "UPDATE metastore_entities SET natural_key = ?, namespace = ?, service_id = ?, environment = ?, tags = ?, "
    "state = ?, version = ?, deleted = ?, updated_at = ?, body = ? "
    "WHERE id = ? AND tenant = ? AND kind = ? AND version = ?"
)
_INSERT_VERSION: Final = (
    f"INSERT INTO metastore_versions ({', '.join(VERSION_COLUMNS)}) VALUES ({', '.join('?' * len(VERSION_COLUMNS))})"
)
_SELECT_ENTITY: Final = f"SELECT {', '.join(ENTITY_COLUMNS)} FROM metastore_entities"
_SELECT_VERSION: Final = f"SELECT {', '.join(VERSION_COLUMNS)} FROM metastore_versions"
_CURRENT_VERSION: Final = "SELECT version FROM metastore_entities WHERE id = ? AND tenant = ? AND kind = ?"


def _ts(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _entity_params(row: EntityRow) -> tuple[Any, ...]:
    return (
        str(row.id),
        row.kind,
        row.tenant,
        row.natural_key,
        row.namespace,
        row.service_id,
        row.environment,
        row.tags,
        row.state,
        row.version,
        int(row.deleted),
        _ts(row.created_at),
        _ts(row.updated_at),
        _dumps(row.body),
    )


def _version_params(row: VersionRow) -> tuple[Any, ...]:
    return (
        str(row.entity_id),
        row.version,
        row.kind,
        row.tenant,
        _ts(row.at),
        row.actor,
        row.change,
        _dumps(row.changed_fields),
        _dumps(row.snapshot),
    )


def _entity(r: tuple[Any, ...]) -> EntityRow:
    return EntityRow(
        id=uuid.UUID(r[0]),
        kind=r[1],
        tenant=r[2],
        natural_key=r[3],
        namespace=r[4],
        service_id=r[5],
        environment=r[6],
        tags=r[7],
        state=r[8],
        version=r[9],
        deleted=bool(r[10]),
        created_at=_dt(r[11]),
        updated_at=_dt(r[12]),
        body=json.loads(r[13]),
    )


def _version(r: tuple[Any, ...]) -> VersionRow:
    return VersionRow(
        entity_id=uuid.UUID(r[0]),
        version=r[1],
        kind=r[2],
        tenant=r[3],
        at=_dt(r[4]),
        actor=r[5],
        change=r[6],
        changed_fields=json.loads(r[7]),
        snapshot=json.loads(r[8]),
    )


def _where(where: ListFilter) -> tuple[str, list[Any]]:
    parts: list[str] = ["deleted = 0"]
    params: list[Any] = []
    for condition, value in where.conditions():
        parts.append("instr(tags, ?) > 0" if condition.startswith("TAG(") else condition)
        params.append(value)
    return " AND ".join(parts), params


def _unique_key_taken(exc: sqlite3.IntegrityError) -> bool:
    return "metastore_entities" in str(exc)


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back by itself already
            conn.execute("ROLLBACK")


def _fail(exc: sqlite3.Error, doing: str) -> StoreError:
    error = StoreUnavailable if _sqlite_exec.unavailable(exc) else StoreError  # locked, read-only, full: an outage
    return error(f"metastore: {doing} failed: {type(exc).__name__}: {exc}")


def _replace(conn: sqlite3.Connection, row: EntityRow, versions: Sequence[VersionRow], expected: int) -> None:
    """The conditional update and the version inserts, in the transaction open on ``conn``."""
    p = _entity_params(row)
    # natural_key .. deleted, updated_at, body; then the key and the expected version
    params = (*p[3:11], p[12], p[13], p[0], row.tenant, row.kind, expected)
    if conn.execute(_UPDATE_ENTITY, params).rowcount != 1:
        found = conn.execute(_CURRENT_VERSION, (str(row.id), row.tenant, row.kind)).fetchone()
        raise missing_or_conflict(row.kind, row.id, expected, None if found is None else found[0])
    conn.executemany(_INSERT_VERSION, [_version_params(v) for v in versions])


class SqliteBackend(Backend):
    def __init__(self, store: Store) -> None:
        self.store = cast(SqliteStore, store)

    async def _read(self, doing: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run(conn: sqlite3.Connection) -> T:
            try:
                return fn(conn)
            except sqlite3.Error as exc:
                raise _fail(exc, doing) from exc

        return await self.store.read_sync(run)

    async def _write(self, doing: str, fn: Callable[[sqlite3.Connection, list[EntityRow]], None]) -> None:
        """Run ``fn`` in one transaction. ``fn`` appends the entity row it is about to write to the list it is
        given, so that a unique key already taken is reported as ``EntityExists`` naming that key."""

        def run(conn: sqlite3.Connection) -> None:
            writing: list[EntityRow] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                fn(conn, writing)
                conn.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                _rollback(conn)
                if _unique_key_taken(exc) and writing:
                    raise EntityExists(writing[-1].kind, writing[-1].natural_key) from None
                raise _fail(exc, doing) from exc
            except sqlite3.Error as exc:
                _rollback(conn)
                raise _fail(exc, doing) from exc
            except BaseException:
                _rollback(conn)
                raise

        await self.store.run_sync(run)

    async def get(self, kind: str, tenant: str, id: uuid.UUID) -> EntityRow | None:
        def run(conn: sqlite3.Connection) -> EntityRow | None:
            sql = f"{_SELECT_ENTITY} WHERE id = ? AND tenant = ? AND kind = ?"
            found = conn.execute(sql, (str(id), tenant, kind)).fetchone()
            return None if found is None else _entity(found)

        return await self._read("get", run)

    async def get_by_key(self, kind: str, tenant: str, key: str) -> EntityRow | None:
        def run(conn: sqlite3.Connection) -> EntityRow | None:
            sql = f"{_SELECT_ENTITY} WHERE tenant = ? AND kind = ? AND natural_key = ? AND deleted = 0"
            found = conn.execute(sql, (tenant, kind, key)).fetchone()
            return None if found is None else _entity(found)

        return await self._read("get by key", run)

    async def modify(self, kind: str, tenant: str, id: uuid.UUID, version: int | None, step: Step[T]) -> T:
        """Read, ``step`` and write in one ``BEGIN IMMEDIATE`` transaction, in one call on the store's thread: the
        write lock is held from the read on, so no other writer (of any process) comes between."""
        done: list[T] = []

        def run(conn: sqlite3.Connection, writing: list[EntityRow]) -> None:
            found = conn.execute(f"{_SELECT_ENTITY} WHERE id = ? AND tenant = ? AND kind = ?", (str(id), tenant, kind))
            row = found.fetchone()
            current = None if row is None else _entity(row)
            target = None
            if version is not None:
                sql = f"{_SELECT_VERSION} WHERE entity_id = ? AND version = ? AND tenant = ? AND kind = ?"
                hit = conn.execute(sql, (str(id), version, tenant, kind)).fetchone()
                target = None if hit is None else _version(hit)
            new, versions, result = step(current, target)
            assert current is not None  # step raises for a missing entity
            writing.append(new)
            _replace(conn, new, versions, current.version)
            done.append(result)

        await self._write("update", run)
        return done[0]

    async def insert(self, row: EntityRow, version: VersionRow) -> None:
        def run(conn: sqlite3.Connection, writing: list[EntityRow]) -> None:
            writing.append(row)
            conn.execute(_INSERT_ENTITY, _entity_params(row))
            conn.execute(_INSERT_VERSION, _version_params(version))

        await self._write("create", run)

    async def replace(self, row: EntityRow, versions: Sequence[VersionRow], expected: int) -> None:
        def run(conn: sqlite3.Connection, writing: list[EntityRow]) -> None:
            writing.append(row)
            _replace(conn, row, versions, expected)

        await self._write("update", run)

    async def version(self, kind: str, tenant: str, id: uuid.UUID, version: int) -> VersionRow | None:
        def run(conn: sqlite3.Connection) -> VersionRow | None:
            sql = f"{_SELECT_VERSION} WHERE entity_id = ? AND version = ? AND tenant = ? AND kind = ?"
            found = conn.execute(sql, (str(id), version, tenant, kind)).fetchone()
            return None if found is None else _version(found)

        return await self._read("version", run)

    async def versions(
        self, kind: str, tenant: str, id: uuid.UUID, *, limit: int, offset: int
    ) -> tuple[list[VersionRow], int]:
        def run(conn: sqlite3.Connection) -> tuple[list[VersionRow], int]:
            found = conn.execute(_CURRENT_VERSION, (str(id), tenant, kind)).fetchone()
            if found is None:
                return [], 0
            total = int(found[0])  # versions run 1..N without gaps (module docstring of _sql): no count(*)
            high = total - offset
            rows = conn.execute(
                f"{_SELECT_VERSION} WHERE entity_id = ? AND version <= ? AND version > ? ORDER BY version DESC",
                (str(id), high, high - limit),
            )
            return [_version(r) for r in rows], total

        return await self._read("versions", run)

    async def select_page(self, where: ListFilter) -> tuple[list[EntityRow], int]:
        condition, params = _where(where)

        def run(conn: sqlite3.Connection) -> tuple[list[EntityRow], int]:
            total = conn.execute(f"SELECT count(*) FROM metastore_entities WHERE {condition}", params).fetchone()[0]
            rows = conn.execute(
                f"{_SELECT_ENTITY} WHERE {condition} ORDER BY created_at, id LIMIT ? OFFSET ?",
                (*params, where.limit, where.offset),
            )
            return [_entity(r) for r in rows], int(total)

        return await self._read("list", run)

    async def select_all(self, where: ListFilter) -> list[EntityRow]:
        condition, params = _where(where)

        def run(conn: sqlite3.Connection) -> list[EntityRow]:
            rows = conn.execute(f"{_SELECT_ENTITY} WHERE {condition} ORDER BY created_at, id", params)
            return [_entity(r) for r in rows]

        return await self._read("list", run)
