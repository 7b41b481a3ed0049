"""The metastore's tables on PostgreSQL, through ``PostgresStore.run`` (a pool connection, its own transaction).

Writes run at READ COMMITTED, which is enough: the conditional ``UPDATE ... WHERE id = $1 AND version =
$expected`` takes the row lock, and a concurrent writer of the same row waits for it, then re-evaluates its
``WHERE`` against the committed row, finds another version and updates nothing (``VersionConflict``). A change of
one version is one statement, the update and the version insert in a data-modifying CTE (the insert selects from
the update's ``RETURNING``, so it inserts nothing when the update changed nothing): one round trip, atomic without
``BEGIN`` / ``COMMIT``. Writes are not retried after a lost connection (a commit whose answer was lost would then
report a conflict with itself); reads are.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar, cast

import asyncpg

from onex._postgres import PostgresStore
from onex.exceptions import EntityExists, StoreError
from onex.metastore._sql import (
    ENTITY_COLUMNS,
    VERSION_COLUMNS,
    Backend,
    EntityRow,
    ListFilter,
    VersionRow,
    missing_or_conflict,
)
from onex.store import Store

T = TypeVar("T")
Connection = Any  # asyncpg ships no type hints

_INSERT_ENTITY: Final = (
    f"INSERT INTO metastore_entities ({', '.join(ENTITY_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i + 1}' for i in range(len(ENTITY_COLUMNS)))})"
)
_UPDATE_ENTITY: Final = (
    "UPDATE metastore_entities SET natural_key = $1, namespace = $2, service_id = $3, environment = $4, tags = $5, "
    "state = $6, version = $7, deleted = $8, updated_at = $9, body = $10 "
    "WHERE id = $11 AND tenant = $12 AND kind = $13 AND version = $14"
)
_INSERT_VERSION: Final = (
    f"INSERT INTO metastore_versions ({', '.join(VERSION_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i + 1}' for i in range(len(VERSION_COLUMNS)))})"
)
_VERSION_TYPES: Final = ("uuid", "bigint", "text", "text", "timestamptz", "text", "text", "jsonb", "jsonb")
# One change of one version is one statement (atomic on its own, one round trip, no BEGIN / COMMIT): the conditional
# update, and the version row inserted only if the update found the row at the expected version.
_REPLACE_ONE: Final = (
    f"WITH updated AS ({_UPDATE_ENTITY} RETURNING id) "
    f"INSERT INTO metastore_versions ({', '.join(VERSION_COLUMNS)}) "
    f"SELECT {', '.join(f'${i + 15}::{t}' for i, t in enumerate(_VERSION_TYPES))} FROM updated"
)
_CREATE: Final = (
    f"WITH created AS ({_INSERT_ENTITY} RETURNING id) "
    f"INSERT INTO metastore_versions ({', '.join(VERSION_COLUMNS)}) "
    f"SELECT {', '.join(f'${i + 15}::{t}' for i, t in enumerate(_VERSION_TYPES))} FROM created"
)
_SELECT_ENTITY: Final = f"SELECT {', '.join(ENTITY_COLUMNS)} FROM metastore_entities"
_SELECT_VERSION: Final = f"SELECT {', '.join(VERSION_COLUMNS)} FROM metastore_versions"
_CURRENT_VERSION: Final = "SELECT version FROM metastore_entities WHERE id = $1 AND tenant = $2 AND kind = $3"


def _entity_params(row: EntityRow) -> tuple[Any, ...]:
    return (
        row.id,
        row.kind,
        row.tenant,
        row.natural_key,
        row.namespace,
        row.service_id,
        row.environment,
        row.tags,
        row.state,
        row.version,
        row.deleted,
        row.created_at,
        row.updated_at,
        row.body,
    )


def _version_params(row: VersionRow) -> tuple[Any, ...]:
    return (
        row.entity_id,
        row.version,
        row.kind,
        row.tenant,
        row.at,
        row.actor,
        row.change,
        row.changed_fields,
        row.snapshot,
    )


def _entity(r: asyncpg.Record) -> EntityRow:
    return EntityRow(*r.values())


def _version(r: asyncpg.Record) -> VersionRow:
    return VersionRow(*r.values())


def _where(where: ListFilter) -> tuple[str, list[Any]]:
    parts: list[str] = ["NOT deleted"]
    params: list[Any] = []
    for condition, value in where.conditions():
        params.append(value)
        n = f"${len(params)}"
        parts.append(f"strpos(tags, {n}) > 0" if condition.startswith("TAG(") else condition.replace("?", n))
    return " AND ".join(parts), params


class PostgresBackend(Backend):
    def __init__(self, store: Store) -> None:
        self.store = cast(PostgresStore, store)

    async def _read(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        return await self.store.run(fn, retry=True)

    async def _write(
        self, doing: str, fn: Callable[[Connection], Awaitable[None]], key: EntityRow, *, one_statement: bool = False
    ) -> None:
        async def run(conn: Connection) -> None:
            try:
                if one_statement:
                    await fn(conn)
                    return
                async with conn.transaction():
                    await fn(conn)
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name == "metastore_entities_live_key":
                    raise EntityExists(key.kind, key.natural_key) from None
                raise StoreError(f"metastore: {doing} failed: {exc}") from exc
            except asyncpg.PostgresError as exc:
                raise StoreError(f"metastore: {doing} failed: {type(exc).__name__}: {exc}") from exc

        await self.store.run(run, retry=False)

    async def get(self, kind: str, tenant: str, id: uuid.UUID) -> EntityRow | None:
        async def run(conn: Connection) -> EntityRow | None:
            sql = f"{_SELECT_ENTITY} WHERE id = $1 AND tenant = $2 AND kind = $3"
            found = await conn.fetchrow(sql, id, tenant, kind)
            return None if found is None else _entity(found)

        return await self._read(run)

    async def get_by_key(self, kind: str, tenant: str, key: str) -> EntityRow | None:
        async def run(conn: Connection) -> EntityRow | None:
            sql = f"{_SELECT_ENTITY} WHERE tenant = $1 AND kind = $2 AND natural_key = $3 AND NOT deleted"
            found = await conn.fetchrow(sql, tenant, kind, key)
            return None if found is None else _entity(found)

        return await self._read(run)

    async def insert(self, row: EntityRow, version: VersionRow) -> None:
        async def run(conn: Connection) -> None:
            await conn.execute(_CREATE, *_entity_params(row), *_version_params(version))

        await self._write("create", run, row, one_statement=True)

    async def replace(self, row: EntityRow, versions: Sequence[VersionRow], expected: int) -> None:
        p = _entity_params(row)
        update = (*p[3:11], p[12], p[13], row.id, row.tenant, row.kind, expected)
        single = len(versions) == 1

        async def run(conn: Connection) -> None:
            if single:
                status = await conn.execute(_REPLACE_ONE, *update, *_version_params(versions[0]))
                done = status == "INSERT 0 1"
            else:
                done = await conn.execute(_UPDATE_ENTITY, *update) == "UPDATE 1"
            if not done:
                current = await conn.fetchval(
                    "SELECT version FROM metastore_entities WHERE id = $1 AND tenant = $2 AND kind = $3",
                    row.id,
                    row.tenant,
                    row.kind,
                )
                raise missing_or_conflict(row.kind, row.id, expected, current)
            if single:
                return
            params = [_version_params(v) for v in versions]
            if len(params) > 100:  # a bulk history (tests, benchmarks): COPY is an order of magnitude faster
                await conn.copy_records_to_table("metastore_versions", records=params, columns=VERSION_COLUMNS)
            else:
                await conn.executemany(_INSERT_VERSION, params)

        await self._write("update", run, row, one_statement=single)

    async def version(self, kind: str, tenant: str, id: uuid.UUID, version: int) -> VersionRow | None:
        async def run(conn: Connection) -> VersionRow | None:
            sql = f"{_SELECT_VERSION} WHERE entity_id = $1 AND version = $2 AND tenant = $3 AND kind = $4"
            found = await conn.fetchrow(sql, id, version, tenant, kind)
            return None if found is None else _version(found)

        return await self._read(run)

    async def versions(
        self, kind: str, tenant: str, id: uuid.UUID, *, limit: int, offset: int
    ) -> tuple[list[VersionRow], int]:
        async def run(conn: Connection) -> tuple[list[VersionRow], int]:
            total = await conn.fetchval(_CURRENT_VERSION, id, tenant, kind)
            if total is None:
                return [], 0
            high = int(total) - offset  # versions run 1..N without gaps (module docstring of _sql): no count(*)
            rows = await conn.fetch(
                f"{_SELECT_VERSION} WHERE entity_id = $1 AND version <= $2 AND version > $3 ORDER BY version DESC",
                id,
                high,
                high - limit,
            )
            return [_version(r) for r in rows], int(total)

        return await self._read(run)

    async def select_page(self, where: ListFilter) -> tuple[list[EntityRow], int]:
        condition, params = _where(where)
        n = len(params)

        async def run(conn: Connection) -> tuple[list[EntityRow], int]:
            total = await conn.fetchval(f"SELECT count(*) FROM metastore_entities WHERE {condition}", *params)
            rows = await conn.fetch(
                f"{_SELECT_ENTITY} WHERE {condition} ORDER BY created_at, id LIMIT ${n + 1} OFFSET ${n + 2}",
                *params,
                where.limit,
                where.offset,
            )
            return [_entity(r) for r in rows], int(total)

        return await self._read(run)

    async def select_all(self, where: ListFilter) -> list[EntityRow]:
        condition, params = _where(where)

        async def run(conn: Connection) -> list[EntityRow]:
            rows = await conn.fetch(f"{_SELECT_ENTITY} WHERE {condition} ORDER BY created_at, id", *params)
            return [_entity(r) for r in rows]

        return await self._read(run)
