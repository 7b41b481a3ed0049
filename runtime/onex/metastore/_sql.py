"""The metastore's storage: two tables (``migrations/*/0006_metastore.sql``) behind one small ``Backend``, with a
part per dialect (``_sql_sqlite.py`` through ``SqliteStore.run_sync``, ``_sql_postgres.py`` through
``PostgresStore.run``).

``metastore_entities`` holds each entity's latest version whole (``body``); ``metastore_versions`` every version,
keyed by (entity id, version). A change is one transaction: a conditional ``UPDATE ... WHERE id = ? AND version =
<expected>`` of the entity row, then the insert of the new version row(s). The conditional update is where
concurrent writers meet: on PostgreSQL the second writer of a row waits for the first's commit, re-reads the row
(READ COMMITTED re-checks the ``WHERE`` against the committed version) and updates nothing; on SQLite writers take
the one write lock in turn (``BEGIN IMMEDIATE``). Either way exactly one writer of a version wins, the others get
``VersionConflict`` and nothing of theirs is written. The version rows' primary key would refuse a duplicate
version even without it.

Every change adds exactly the versions between the row's old and new ``version`` (one, or a bulk's many), and no
version row is ever deleted, so an entity's versions are 1..N without gaps: the history's size is the entity row's
``version`` and a page of it is a range of the primary key (``version <= N - offset``), whatever its length —
neither ``count(*)`` nor ``OFFSET`` walks the history.
"""

from __future__ import annotations

import abc
import asyncio
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeVar

from onex.exceptions import EntityNotFound, VersionConflict

__all__ = ["Backend", "EntityRow", "ListFilter", "Step", "VersionRow", "natural_key", "tags_text"]

T = TypeVar("T")

SEPARATOR: Final = "\x1f"
ENTITY_COLUMNS: Final = (
    "id",
    "kind",
    "tenant",
    "natural_key",
    "namespace",
    "service_id",
    "environment",
    "tags",
    "state",
    "version",
    "deleted",
    "created_at",
    "updated_at",
    "body",
)
VERSION_COLUMNS: Final = (
    "entity_id",
    "version",
    "kind",
    "tenant",
    "at",
    "actor",
    "change",
    "changed_fields",
    "snapshot",
)


def natural_key(*parts: str) -> str:
    """The stored unique key: the parts as a compact JSON array (no separator can be forged inside a part)."""
    return json.dumps(list(parts), ensure_ascii=False, separators=(",", ":"))


def tags_text(tags: Sequence[str]) -> str:
    """The ``tags`` column: every tag between two separators, so that ``<sep>tag<sep>`` finds exactly one tag."""
    return SEPARATOR + SEPARATOR.join(tags) + SEPARATOR if tags else ""


@dataclass(frozen=True, slots=True)
class EntityRow:
    """One row of ``metastore_entities``: the entity's latest version."""

    id: uuid.UUID
    kind: str
    tenant: str
    natural_key: str
    namespace: str | None
    service_id: str | None
    environment: str | None
    tags: str
    state: str
    version: int
    deleted: bool
    created_at: datetime
    updated_at: datetime
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class VersionRow:
    """One row of ``metastore_versions``."""

    entity_id: uuid.UUID
    version: int
    kind: str
    tenant: str
    at: datetime
    actor: str
    change: str
    changed_fields: list[str]
    snapshot: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ListFilter:
    """What a list keeps: the tenant's live entities of one kind, narrowed by whichever of these is set."""

    kind: str
    tenant: str
    namespace: str | None = None
    tag: str | None = None
    service_id: str | None = None
    environment: str | None = None
    limit: int = 50
    offset: int = 0

    def conditions(self) -> list[tuple[str, Any]]:
        """(column or expression with one ``?`` placeholder, value) pairs, ``tag`` last-but-not-least."""
        found: list[tuple[str, Any]] = [("tenant = ?", self.tenant), ("kind = ?", self.kind)]
        for column in ("namespace", "service_id", "environment"):
            value = getattr(self, column)
            if value is not None:
                found.append((f"{column} = ?", value))
        if self.tag is not None:
            found.append(("TAG(tags, ?)", SEPARATOR + self.tag + SEPARATOR))
        return found


def missing_or_conflict(kind: str, id: uuid.UUID, expected: int, current: int | None) -> Exception:
    """Why a conditional update changed no row: the entity is not there (for this tenant), or not at ``expected``."""
    if current is None:
        return EntityNotFound(kind, str(id))
    return VersionConflict(kind, str(id), expected, current)


Step = Callable[[EntityRow | None, VersionRow | None], tuple[EntityRow, list[VersionRow], T]]
"""A change as ``Backend.modify`` runs it: from the entity's row (None when missing) and the version asked for (None
when none was, or it is missing), the new row, the version rows to insert (the last is the new row's) and a result;
or an exception (not found, conflict, invalid), which writes nothing."""


class Backend(abc.ABC):
    """What the metastore asks of a store: reads by id, key and filter, and the writes."""

    async def modify(self, kind: str, tenant: str, id: uuid.UUID, version: int | None, step: Step[T]) -> T:
        """Read the entity (and its version ``version``), run ``step``, write what it returns conditionally on the
        version read (``VersionConflict`` when another writer got there first). This default reads, then writes
        with ``replace``; a backend may do it all in one transaction (SQLite: one hop to its thread)."""
        if version is None:
            row, target = await self.get(kind, tenant, id), None
        else:
            row, target = await asyncio.gather(self.get(kind, tenant, id), self.version(kind, tenant, id, version))
        new, versions, result = step(row, target)
        assert row is not None  # step raises for a missing entity
        await self.replace(new, versions, row.version)
        return result

    @abc.abstractmethod
    async def get(self, kind: str, tenant: str, id: uuid.UUID) -> EntityRow | None:
        """The entity row (deleted or not), None when the tenant has no such entity of ``kind``."""

    @abc.abstractmethod
    async def get_by_key(self, kind: str, tenant: str, key: str) -> EntityRow | None:
        """The live (not deleted) entity with this natural key."""

    @abc.abstractmethod
    async def insert(self, row: EntityRow, version: VersionRow) -> None:
        """Create the entity and its first version in one transaction; ``EntityExists`` when its key is taken."""

    @abc.abstractmethod
    async def replace(self, row: EntityRow, versions: Sequence[VersionRow], expected: int) -> None:
        """In one transaction: replace the entity row if it is at version ``expected`` (``VersionConflict`` if it
        is at another, ``EntityNotFound`` if there is none), then insert ``versions`` (the last is ``row``'s)."""

    @abc.abstractmethod
    async def version(self, kind: str, tenant: str, id: uuid.UUID, version: int) -> VersionRow | None: ...

    @abc.abstractmethod
    async def versions(
        self, kind: str, tenant: str, id: uuid.UUID, *, limit: int, offset: int
    ) -> tuple[list[VersionRow], int]:
        """The newest versions first, and how many there are ((``[]``, 0) when the tenant has no such entity)."""

    @abc.abstractmethod
    async def select_page(self, where: ListFilter) -> tuple[list[EntityRow], int]:
        """Live entities matching ``where``, in creation order, and how many match without the page."""

    @abc.abstractmethod
    async def select_all(self, where: ListFilter) -> list[EntityRow]:
        """Every live entity matching ``where`` (no page): a service's configurations."""
