"""``Metastore``: the Python API of the metastore (``onex.metastore``), on any ``Store`` and ``EventBus``.

Writes. Every change is read-modify-write on one entity: read its latest version (one row), apply the change in
Python (validated: pydantic models, the flag and configuration FSMs, the configuration's JSON Schema), then one
transaction replaces the row *if it is still at the version read* and inserts the new immutable version (who,
when, the change, the fields it changed, the whole entity after it). ``expected_version`` is checked first and then
by that conditional update, so of concurrent writers of one version exactly one wins and the others get
``VersionConflict``: never a lost update. Without ``expected_version`` the change applies to whatever version is
current, still atomically: on a conflict it is read and applied again (at most ``_UNCONDITIONAL_ATTEMPTS`` times).
The read-change-write runs through ``Backend.modify``: on SQLite all of it in one transaction on the store's thread
(the write lock held from the read on), on PostgreSQL a read, then one conditional statement.

After the commit the change is announced on the bus (METADATA_CHANGED / FLAG_CHANGED / CONFIG_CHANGED, declared by
the metastore effect's contract, keyed by entity id). A publish that fails is logged, not raised: the change is
committed, and a caller told otherwise would retry it. Each instance subscribes to those events with a consumer
group of its own (``start="latest"``), so every instance in every process hears every change and drops the compiled
flags it cached; its own changes drop them at once, before the event. ``flag_cache_ttl_s`` bounds how long a lost
event can leave a stale flag in a cache.

Reads are filtered by tenant everywhere: another tenant's entity is ``EntityNotFound``, exactly as a missing one.
A deleted entity is not found either (its history stays readable, and a rollback restores it).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar, cast

from pydantic import BaseModel, ValidationError

from onex.bus import EventBus, Subscription
from onex.catalog import Publication
from onex.clock import SYSTEM_CLOCK, Clock
from onex.contracts import Contract, FsmSubcontract, load_contract, load_subcontract
from onex.envelope import OnexEnvelopeV1, new_id, random_id
from onex.exceptions import (
    EntityNotFound,
    MetastoreInvalid,
    OnexError,
    StoreError,
    VersionConflict,
)
from onex.fsm import Entity as FsmEntity
from onex.fsm import StateMachine
from onex.metastore import _configs
from onex.metastore._sql import Backend, EntityRow, ListFilter, VersionRow, natural_key, tags_text
from onex.metastore.flags import CompiledFlag, Resolution, Rollout, compile_flag, not_found
from onex.metastore.models import (
    MODELS,
    ConfigCreate,
    ConfigSource,
    ConfigUpdate,
    Configuration,
    EffectiveConfig,
    Entity,
    EntityVersion,
    FeatureFlag,
    FlagCreate,
    FlagUpdate,
    Kind,
    MetadataCreate,
    MetadataEntry,
    MetadataUpdate,
    ModelMetastoreChanged,
    Page,
    snapshot,
)
from onex.settings import Settings
from onex.store import MAX_OFFSET, Store

__all__ = ["CONTRACT", "EVENTS", "MAX_LIMIT", "MAX_VERSION", "Metastore"]

_log = logging.getLogger("onex.metastore")
E = TypeVar("E", MetadataEntry, FeatureFlag, Configuration)
M = TypeVar("M", bound=BaseModel)

CONTRACT: Final = "contracts/effects/metastore_effect.yaml"  # under the project root
EVENTS: Final[Mapping[Kind, str]] = {
    Kind.METADATA: "METADATA_CHANGED",
    Kind.FLAG: "FLAG_CHANGED",
    Kind.CONFIG: "CONFIG_CHANGED",
}
MAX_LIMIT: Final = 1000
MAX_VERSION: Final = 2**31 - 1  # beyond any history; keeps a version a machine integer on every store
_UNCONDITIONAL_ATTEMPTS: Final = 20
# Fields of every entity that say who changed it when: not "what changed".
_BOOKKEEPING: Final = frozenset({"version", "updated_at", "updated_by", "created_at", "created_by", "id", "tenant"})

ChangeListener = Callable[[ModelMetastoreChanged], None]


@dataclass(slots=True)
class _Cached:
    flag: FeatureFlag
    compiled: CompiledFlag
    loaded_at: float


def _nul_at(value: Any, path: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """The path of the first text in ``value`` (a key included) holding the NUL character; None if none does."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                return (*path, key.replace("\x00", "\\u0000"))
            found = _nul_at(item, (*path, key))
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _nul_at(item, (*path, index))
            if found is not None:
                return found
    return None


def _validated(model: type[M], data: dict[str, Any]) -> M:
    """``data`` as ``model``: every entity written (created or changed) is made here."""
    # PostgreSQL keeps no NUL in a text or a JSON string (SQLite does): refused here, on every store alike, not
    # left to fail there as the store being unavailable.
    nul = _nul_at(data)
    if nul is not None:
        raise MetastoreInvalid(".".join(map(str, nul)), "must not contain the NUL character (\\u0000)")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise MetastoreInvalid(".".join(str(p) for p in first["loc"]), first["msg"]) from None


def _key(entity: Entity) -> str:
    if isinstance(entity, MetadataEntry):
        return natural_key(entity.namespace, entity.key)
    if isinstance(entity, FeatureFlag):
        return natural_key(entity.name)
    return natural_key(entity.service_id, entity.name, entity.environment)


def _key_or_name(entity: Entity) -> str:
    if isinstance(entity, MetadataEntry):
        return entity.key if entity.namespace == "default" else f"{entity.namespace}/{entity.key}"
    if isinstance(entity, FeatureFlag):
        return entity.name
    return f"{entity.service_id}/{entity.name}/{entity.environment}"


def _row(kind: Kind, entity: Entity) -> EntityRow:
    return EntityRow(
        id=entity.id,
        kind=kind.value,
        tenant=entity.tenant,
        natural_key=_key(entity),
        namespace=entity.namespace if isinstance(entity, MetadataEntry) else None,
        service_id=entity.service_id if isinstance(entity, Configuration) else None,
        environment=entity.environment if isinstance(entity, Configuration) else None,
        tags=tags_text(entity.tags) if isinstance(entity, MetadataEntry | FeatureFlag) else "",
        state=entity.state,
        version=entity.version,
        deleted=entity.deleted,
        created_at=entity.created_at,
        updated_at=entity.updated_at,
        body=snapshot(entity),
    )


def _changed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return sorted(k for k in after.keys() | before.keys() if k not in _BOOKKEEPING and before.get(k) != after.get(k))


def _check_page(limit: int, offset: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise MetastoreInvalid("limit", f"must be between 1 and {MAX_LIMIT}, got {limit}")
    if not 0 <= offset <= MAX_OFFSET:
        raise MetastoreInvalid("offset", f"must be between 0 and {MAX_OFFSET}, got {offset}")


def backend_for(store: Store) -> Backend:
    """The storage speaking ``store``'s dialect (``Store.dialect``); ``StoreError`` for a store without one."""
    if store.dialect == "sqlite":
        from onex.metastore._sql_sqlite import SqliteBackend

        return SqliteBackend(store)
    if store.dialect == "postgres":
        from onex.metastore._sql_postgres import PostgresBackend  # asyncpg only when PostgreSQL is used

        return PostgresBackend(store)
    raise StoreError(f"{store!r} cannot host the metastore (it needs a SQLite or PostgreSQL store)")


def load_metastore_contract(root: Path) -> Contract:
    """The metastore effect's contract under the project ``root`` (the flag FSM, the events, the settings)."""
    return load_contract(root / CONTRACT, root=root, check_implementations=False)


class Metastore:
    """Versioned metadata, feature flags and configurations per tenant, on ``store`` (module docstring).

    ``bus`` (optional) carries the change events; ``start()`` (or ``async with``) subscribes to them. ``settings``
    give the project root (where the metastore effect's contract is read), the topic names and the instance name;
    ``clock`` is what "now" means for timestamps, effective dates, flag expiry and the cache's TTL. ``contract``
    defaults to ``contracts/effects/metastore_effect.yaml`` under the root.
    """

    def __init__(
        self,
        store: Store,
        bus: EventBus | None = None,
        *,
        settings: Settings | None = None,
        clock: Clock | None = None,
        contract: Contract | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.settings = settings or Settings()
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.contract = contract or load_metastore_contract(self.settings.root)
        config = self.contract.config
        flag_fsm = self.contract.subcontracts.fsm
        if flag_fsm is None:
            raise OnexError(f"{self.contract.source}: the metastore contract has no fsm (the flag lifecycle)")
        config_fsm = load_subcontract(self.settings.root / str(config["configuration_fsm"]), root=self.settings.root)
        if not isinstance(config_fsm, FsmSubcontract):
            raise OnexError(f"{config['configuration_fsm']}: an fsm subcontract was expected")
        self.flag_fsm = StateMachine(flag_fsm, entity_type="feature_flag", now=self.clock.now)
        self.config_fsm = StateMachine(config_fsm, entity_type="configuration", now=self.clock.now)
        self.flag_cache_ttl_s = float(config.get("flag_cache_ttl_s", 30))
        names = [str(n) for n in config.get("secret_resolvers", ["env"])]
        unknown = [n for n in names if n not in _configs.RESOLVERS]
        if unknown:
            raise OnexError(f"{self.contract.source}: config.secret_resolvers: unknown resolver(s) {unknown}")
        self.resolvers: dict[str, _configs.Resolver] = {n: _configs.RESOLVERS[n] for n in names}
        events = self.contract.subcontracts.event_type
        self._publications = {
            s.event_name: Publication.of(s, self.settings) for s in (events.publishes if events else ())
        }
        missing = [e for e in EVENTS.values() if e not in self._publications]
        if missing:
            raise OnexError(f"{self.contract.source}: the metastore contract does not publish {missing}")
        self._backend = backend_for(store)
        # Random, not time-ordered: a version 7 id's first twelve digits are its millisecond, and two gateways started
        # together shared a consumer group (each heard half of the changes).
        self.instance = random_id().hex[:12]
        self.node_id = f"{self.contract.name}-{self.settings.instance}-{self.instance}"
        self._flags: dict[tuple[str, str], _Cached] = {}
        self._subscription: Subscription | None = None
        self.listeners: list[ChangeListener] = []  # called with every change event heard (tests, caches of callers)
        self.invalidations = 0  # change events heard

    # --- lifecycle -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to the change events (a no-op without a bus, or when started already)."""
        if self.bus is None or self._subscription is not None:
            return
        topics = [self._publications[e].topic for e in EVENTS.values()]
        group = f"{self.settings.env}.metastore-cache.{self.instance}"
        self._subscription = await self.bus.subscribe(topics, group, handler=self._heard, start="latest")

    async def aclose(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.aclose()
        self._flags.clear()

    async def __aenter__(self) -> Metastore:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- generic -------------------------------------------------------------------------------------------------

    async def get(self, kind: Kind, tenant: str, id: uuid.UUID) -> Entity:
        """The entity's latest version; ``EntityNotFound`` when missing, deleted, or another tenant's."""
        return await self._load(Kind(kind), tenant, id)

    async def delete(
        self, kind: Kind, tenant: str, id: uuid.UUID, *, expected_version: int | None, actor: str
    ) -> Entity:
        """Soft delete: a new version with ``deleted`` true. Its key is free again; its history stays."""
        return await self._change(
            Kind(kind), tenant, id, expected_version, actor, "delete", lambda e, t: {"deleted": True}
        )

    async def versions(
        self, kind: Kind, tenant: str, id: uuid.UUID, *, limit: int = 50, offset: int = 0
    ) -> Page[EntityVersion]:
        """The entity's versions, newest first (a deleted entity's too); ``EntityNotFound`` when it never existed
        for this tenant."""
        _check_page(limit, offset)
        kind = Kind(kind)
        rows, total = await self._backend.versions(kind.value, tenant, id, limit=limit, offset=offset)
        if total == 0:
            raise EntityNotFound(kind.value, str(id))
        return Page[EntityVersion](items=[_version_model(r) for r in rows], total=total, limit=limit, offset=offset)

    async def rollback(
        self, kind: Kind, tenant: str, id: uuid.UUID, version: int, *, expected_version: int | None, actor: str
    ) -> Entity:
        """Write a new version equal to version ``version`` (its content, state and ``deleted``; who and when are
        this change's). Works on a deleted entity too (restoring it, if its key is free)."""
        kind = Kind(kind)

        def restored(current: Entity, target: VersionRow | None) -> dict[str, Any]:
            if target is None:
                raise EntityNotFound(kind.value, f"{id} version {version}")
            return {k: v for k, v in target.snapshot.items() if k not in _BOOKKEEPING}

        return await self._change(
            kind, tenant, id, expected_version, actor, "rollback", restored, deleted=True, restore=version
        )

    async def update_many(
        self,
        kind: Kind,
        tenant: str,
        id: uuid.UUID,
        changes: Sequence[Mapping[str, Any]],
        *,
        expected_version: int | None,
        actor: str,
        change: str = "update",
    ) -> Entity:
        """Apply ``changes`` (field values, as an ``*Update`` body's) one after the other as consecutive versions,
        written in one transaction: the bulk path (imports, tests and benchmarks of long histories)."""
        kind = Kind(kind)
        if not changes:
            return await self._load(kind, tenant, id)

        def step(row: EntityRow | None, target: VersionRow | None) -> tuple[EntityRow, list[VersionRow], Entity]:
            current = self._entity(kind, id, row)
            if expected_version is not None and current.version != expected_version:
                raise VersionConflict(kind.value, str(id), expected_version, current.version)
            entity: Entity = current
            versions: list[VersionRow] = []
            now = self.clock.now()
            for fields in changes:
                before = snapshot(entity)
                entity = self._next(kind, entity, dict(fields), actor, now)
                versions.append(self._version_row(kind, entity, actor, change, _changed(before, snapshot(entity))))
            return _row(kind, entity), versions, entity

        entity = await self._backend.modify(kind.value, tenant, id, None, step)
        await self._announce(kind, entity, change)
        return entity

    # --- metadata ------------------------------------------------------------------------------------------------

    async def create_metadata(self, tenant: str, body: MetadataCreate, *, actor: str) -> MetadataEntry:
        entity = self._new(MetadataEntry, tenant, body.model_dump(), "active", actor)
        return await self._create(Kind.METADATA, entity, actor)

    async def update_metadata(
        self, tenant: str, id: uuid.UUID, body: MetadataUpdate, *, expected_version: int | None, actor: str
    ) -> MetadataEntry:
        fields = body.model_dump(exclude_unset=True)
        entity = await self._change(Kind.METADATA, tenant, id, expected_version, actor, "update", lambda e, t: fields)
        assert isinstance(entity, MetadataEntry)
        return entity

    async def list_metadata(
        self, tenant: str, *, namespace: str | None = None, tag: str | None = None, limit: int = 50, offset: int = 0
    ) -> Page[MetadataEntry]:
        where = ListFilter(Kind.METADATA.value, tenant, namespace=namespace, tag=tag, limit=limit, offset=offset)
        return await self._page(MetadataEntry, where)

    async def metadata_by_key(self, tenant: str, key: str, *, namespace: str = "default") -> MetadataEntry:
        row = await self._backend.get_by_key(Kind.METADATA.value, tenant, natural_key(namespace, key))
        if row is None:
            raise EntityNotFound(Kind.METADATA.value, f"{namespace}/{key}")
        return MetadataEntry.model_validate(row.body)

    # --- flags ---------------------------------------------------------------------------------------------------

    async def create_flag(self, tenant: str, body: FlagCreate, *, actor: str) -> FeatureFlag:
        """A new flag in state "draft"; created with ``enabled`` true it is active at once."""
        state = self.flag_fsm.fsm.initial_state
        if body.enabled:
            state = self._fire(self.flag_fsm, "new", state, "enable")
        entity = self._new(FeatureFlag, tenant, body.model_dump(), state, actor)
        return await self._create(Kind.FLAG, entity, actor)

    async def update_flag(
        self, tenant: str, id: uuid.UUID, body: FlagUpdate, *, expected_version: int | None, actor: str
    ) -> FeatureFlag:
        fields = body.model_dump(exclude_unset=True)
        trigger = {True: "enable", False: "disable"}.get(fields.get("enabled"), "edit")  # type: ignore[arg-type]
        return await self._flag_change(tenant, id, expected_version, actor, "update", trigger, lambda e: fields)

    async def list_flags(
        self, tenant: str, *, tag: str | None = None, limit: int = 50, offset: int = 0
    ) -> Page[FeatureFlag]:
        return await self._page(FeatureFlag, ListFilter(Kind.FLAG.value, tenant, tag=tag, limit=limit, offset=offset))

    async def flag_by_name(self, tenant: str, name: str) -> FeatureFlag:
        row = await self._backend.get_by_key(Kind.FLAG.value, tenant, natural_key(name))
        if row is None:
            raise EntityNotFound(Kind.FLAG.value, name)
        return FeatureFlag.model_validate(row.body)

    async def enable_flag(self, tenant: str, id: uuid.UUID, *, expected_version: int | None, actor: str) -> FeatureFlag:
        return await self._flag_change(
            tenant, id, expected_version, actor, "enable", "enable", lambda e: {"enabled": True}
        )

    async def disable_flag(
        self, tenant: str, id: uuid.UUID, *, expected_version: int | None, actor: str
    ) -> FeatureFlag:
        return await self._flag_change(
            tenant, id, expected_version, actor, "disable", "disable", lambda e: {"enabled": False}
        )

    async def archive_flag(
        self, tenant: str, id: uuid.UUID, *, expected_version: int | None, actor: str
    ) -> FeatureFlag:
        """Retire the flag (state "archived", terminal): it evaluates as disabled and refuses every other change."""
        return await self._flag_change(
            tenant, id, expected_version, actor, "archive", "archive", lambda e: {"enabled": False}
        )

    async def set_rollout(
        self, tenant: str, id: uuid.UUID, percentage: float, *, expected_version: int | None, actor: str
    ) -> FeatureFlag:
        """Set the flag's rollout percentage (keeping its stickiness and variant; ``user_id`` for a first rollout)."""

        def fields(entity: Entity) -> dict[str, Any]:
            assert isinstance(entity, FeatureFlag)
            current = entity.rollout or Rollout(percentage=0)
            try:
                rollout = Rollout.model_validate({**current.model_dump(), "percentage": percentage})
            except ValidationError as exc:
                raise MetastoreInvalid("rollout.percentage", exc.errors()[0]["msg"]) from None
            return {"rollout": rollout.model_dump()}

        return await self._flag_change(tenant, id, expected_version, actor, "rollout", "edit", fields)

    async def evaluate(
        self,
        tenant: str,
        name: str,
        context: Mapping[str, Any],
        *,
        environment: str | None = None,
        expected_type: str | None = None,
    ) -> Resolution:
        """The flag's answer for ``context`` (``onex.metastore.flags``): never raises for a flag that is missing
        (reason ERROR, FLAG_NOT_FOUND) or broken. Compiled flags are cached per (tenant, name)."""
        cached = self._cached(tenant, name)
        if cached is None:
            cached = await self._load_flag(tenant, name)
            if cached is None:
                return not_found(name)
        return cached.compiled.evaluate(
            context, tenant=tenant, environment=environment, now=self.clock.now(), expected_type=expected_type
        )

    def evaluate_cached(
        self, tenant: str, name: str, context: Mapping[str, Any], *, environment: str | None = None
    ) -> Resolution | None:
        """``evaluate`` from the cache alone, synchronously: None when the flag is not cached (call ``evaluate``)."""
        cached = self._cached(tenant, name)
        if cached is None:
            return None
        return cached.compiled.evaluate(context, tenant=tenant, environment=environment, now=self.clock.now())

    async def evaluate_bulk(
        self,
        tenant: str,
        names: Sequence[str] | None,
        context: Mapping[str, Any],
        *,
        environment: str | None = None,
    ) -> dict[str, Resolution]:
        """Several flags for one context (every flag of the tenant when ``names`` is None), by name."""
        if names is None:
            rows = await self._backend.select_all(ListFilter(Kind.FLAG.value, tenant))
            names = [FeatureFlag.model_validate(r.body).name for r in rows]
        return {n: await self.evaluate(tenant, n, context, environment=environment) for n in names}

    # --- configurations ------------------------------------------------------------------------------------------

    async def create_config(self, tenant: str, body: ConfigCreate, *, actor: str) -> Configuration:
        """A new configuration, active unless ``body.active`` is false; values checked against its schema."""
        _configs.check_values(body.values, body.schema_, self.resolvers)
        state = self.config_fsm.fsm.initial_state
        if body.active:
            state = self._fire(self.config_fsm, "new", state, "activate")
        data = body.model_dump(by_alias=True)
        data["active"] = state == "active"
        entity = self._new(Configuration, tenant, data, state, actor)
        return await self._create(Kind.CONFIG, entity, actor)

    async def update_config(
        self, tenant: str, id: uuid.UUID, body: ConfigUpdate, *, expected_version: int | None, actor: str
    ) -> Configuration:
        fields = body.model_dump(exclude_unset=True, by_alias=True)
        entity = await self._change(Kind.CONFIG, tenant, id, expected_version, actor, "update", lambda e, t: fields)
        assert isinstance(entity, Configuration)
        return entity

    async def activate_config(
        self, tenant: str, id: uuid.UUID, *, expected_version: int | None, actor: str
    ) -> Configuration:
        return await self._config_state(tenant, id, expected_version, actor, "activate")

    async def deactivate_config(
        self, tenant: str, id: uuid.UUID, *, expected_version: int | None, actor: str
    ) -> Configuration:
        return await self._config_state(tenant, id, expected_version, actor, "deactivate")

    async def configs_for_service(
        self, tenant: str, service_id: str, *, environment: str | None = None
    ) -> list[Configuration]:
        """The service's live configurations (active or not), in creation order."""
        where = ListFilter(Kind.CONFIG.value, tenant, service_id=service_id, environment=environment)
        return [Configuration.model_validate(r.body) for r in await self._backend.select_all(where)]

    async def effective_config(
        self, tenant: str, service_id: str, environment: str, *, resolve_secrets: bool = False
    ) -> EffectiveConfig:
        """The service's configuration in ``environment`` now: its configurations for that environment that are
        active and in effect (``effective_from <= now < effective_until``, an open end where None), deep-merged in
        order of ``effective_from`` (none first), then creation time, then name: a later-starting one overrides
        the standing one, key by key. Secret references stay references unless ``resolve_secrets``."""
        if environment not in ("development", "staging", "production"):
            raise MetastoreInvalid("environment", "must be one of development, staging, production")
        now = self.clock.now()
        chosen = [
            c
            for c in await self.configs_for_service(tenant, service_id, environment=environment)
            if c.state == "active"
            and (c.effective_from is None or c.effective_from <= now)
            and (c.effective_until is None or now < c.effective_until)
        ]
        chosen.sort(
            key=lambda c: (c.effective_from is not None, c.effective_from or now, c.created_at, c.name, str(c.id))
        )
        values: dict[str, Any] = {}
        for config in chosen:
            values = _configs.merge(values, config.values)
        if resolve_secrets:
            values = _configs.resolve_secrets(values, self.resolvers)
        return EffectiveConfig(
            service_id=service_id,
            environment=environment,
            values=values,
            sources=[ConfigSource(id=c.id, name=c.name, version=c.version) for c in chosen],
            secrets_resolved=resolve_secrets,
        )

    # --- internals -----------------------------------------------------------------------------------------------

    def _new(self, model: type[E], tenant: str, data: dict[str, Any], state: str, actor: str) -> E:
        now = self.clock.now()
        fields = {
            **data,
            "id": new_id(),
            "tenant": tenant,
            "version": 1,
            "state": state,
            "created_at": now,
            "updated_at": now,
            "created_by": actor,
            "updated_by": actor,
            "deleted": False,
        }
        return _validated(model, fields)

    async def _create(self, kind: Kind, entity: E, actor: str) -> E:
        created = sorted(k for k in snapshot(entity) if k not in _BOOKKEEPING)  # every field is new
        await self._backend.insert(_row(kind, entity), self._version_row(kind, entity, actor, "create", created))
        await self._announce(kind, entity, "create")
        return entity

    async def _load(self, kind: Kind, tenant: str, id: uuid.UUID, *, deleted: bool = False) -> Entity:
        return self._entity(kind, id, await self._backend.get(kind.value, tenant, id), deleted=deleted)

    @staticmethod
    def _entity(kind: Kind, id: uuid.UUID, row: EntityRow | None, *, deleted: bool = False) -> Entity:
        if row is None or (row.deleted and not deleted):
            raise EntityNotFound(kind.value, str(id))
        return MODELS[kind].model_validate(row.body)

    def _next(self, kind: Kind, current: Entity, fields: dict[str, Any], actor: str, now: datetime) -> Entity:
        """``current`` with ``fields`` changed, validated, as the next version."""
        data = {**snapshot(current), **fields}
        data.update(version=current.version + 1, updated_at=now, updated_by=actor)
        entity = cast(Entity, _validated(cast(type[BaseModel], MODELS[kind]), data))
        if isinstance(entity, Configuration) and ({"values", "schema"} & fields.keys()):
            _configs.check_values(entity.values, entity.schema_, self.resolvers)
        return entity

    async def _change(
        self,
        kind: Kind,
        tenant: str,
        id: uuid.UUID,
        expected: int | None,
        actor: str,
        change: str,
        fields: Callable[[Entity, VersionRow | None], Mapping[str, Any]],
        *,
        deleted: bool = False,
        restore: int | None = None,
    ) -> Entity:
        """Read, change, write conditionally on the version read (module docstring), through ``Backend.modify``;
        retried only when the caller gave no expected version. ``fields`` gets the current entity and, when
        ``restore`` names a version, that version (None if there is none)."""

        def step(row: EntityRow | None, target: VersionRow | None) -> tuple[EntityRow, list[VersionRow], Entity]:
            current = self._entity(kind, id, row, deleted=deleted)
            if expected is not None and current.version != expected:
                raise VersionConflict(kind.value, str(id), expected, current.version)
            entity = self._next(kind, current, dict(fields(current, target)), actor, self.clock.now())
            changed = _changed(snapshot(current), snapshot(entity))
            return _row(kind, entity), [self._version_row(kind, entity, actor, change, changed)], entity

        for _ in range(_UNCONDITIONAL_ATTEMPTS):
            try:
                entity = await self._backend.modify(kind.value, tenant, id, restore, step)
            except VersionConflict:
                if expected is not None:
                    raise
                continue
            await self._announce(kind, entity, change)
            return entity
        raise VersionConflict(kind.value, str(id), -1, -1)  # pragma: no cover - 20 writers in a row beat us

    async def _flag_change(
        self,
        tenant: str,
        id: uuid.UUID,
        expected: int | None,
        actor: str,
        change: str,
        trigger: str,
        fields: Callable[[Entity], Mapping[str, Any]],
    ) -> FeatureFlag:
        def with_state(entity: Entity, target: VersionRow | None) -> dict[str, Any]:
            return {**fields(entity), "state": self._fire(self.flag_fsm, str(entity.id), entity.state, trigger)}

        entity = await self._change(Kind.FLAG, tenant, id, expected, actor, change, with_state)
        assert isinstance(entity, FeatureFlag)
        return entity

    async def _config_state(
        self, tenant: str, id: uuid.UUID, expected: int | None, actor: str, trigger: str
    ) -> Configuration:
        def with_state(entity: Entity, target: VersionRow | None) -> dict[str, Any]:
            state = self._fire(self.config_fsm, str(entity.id), entity.state, trigger)
            return {"state": state, "active": state == "active"}

        entity = await self._change(Kind.CONFIG, tenant, id, expected, actor, trigger, with_state)
        assert isinstance(entity, Configuration)
        return entity

    @staticmethod
    def _fire(machine: StateMachine, entity_id: str, state: str, trigger: str) -> str:
        """The state ``trigger`` leads to from ``state``; ``TransitionError`` naming the state when it is illegal."""
        entity = FsmEntity(entity_id=entity_id, state=state)
        machine.trigger(entity, trigger)
        return entity.state

    def _version_row(self, kind: Kind, entity: Entity, actor: str, change: str, changed: list[str]) -> VersionRow:
        body = snapshot(entity)
        return VersionRow(
            entity_id=entity.id,
            version=entity.version,
            kind=kind.value,
            tenant=entity.tenant,
            at=entity.updated_at,
            actor=actor,
            change=change,
            changed_fields=changed,
            snapshot=body,
        )

    async def _page(self, model: type[E], where: ListFilter) -> Page[E]:
        _check_page(where.limit, where.offset)
        rows, total = await self._backend.select_page(where)
        return Page[model](  # type: ignore[valid-type]
            items=[model.model_validate(r.body) for r in rows], total=total, limit=where.limit, offset=where.offset
        )

    # --- the flag cache and change events ------------------------------------------------------------------------

    def _cached(self, tenant: str, name: str) -> _Cached | None:
        cached = self._flags.get((tenant, name))
        if cached is not None and self.clock.monotonic() - cached.loaded_at >= self.flag_cache_ttl_s:
            del self._flags[(tenant, name)]
            return None
        return cached

    async def _load_flag(self, tenant: str, name: str) -> _Cached | None:
        invalidations = self.invalidations
        row = await self._backend.get_by_key(Kind.FLAG.value, tenant, natural_key(name))
        if row is None:
            return None
        flag = FeatureFlag.model_validate(row.body)
        data = dict(row.body)
        if flag.state == "archived":
            # An override's `enabled` wins over the flag's: an archived flag keeps none, so nothing turns it back on.
            data.update(enabled=False, tenant_overrides={}, environment_overrides={})
        cached = _Cached(flag, compile_flag(data), self.clock.monotonic())
        # A change heard while this load was in flight may be newer than what it read: answer, but do not keep it.
        if invalidations == self.invalidations:
            self._flags[(tenant, name)] = cached
        return cached

    def _drop(self, tenant: str, kind: Kind, id: uuid.UUID, name: str) -> None:
        if kind is not Kind.FLAG:
            return
        self._flags.pop((tenant, name), None)
        stale = [k for k, c in self._flags.items() if c.flag.id == id]  # renamed: its old name
        for key in stale:
            del self._flags[key]

    async def _announce(self, kind: Kind, entity: Entity, change: str) -> None:
        """After a commit: drop this instance's cached copy, then publish the change event."""
        name = entity.name if isinstance(entity, FeatureFlag) else _key_or_name(entity)
        self.invalidations += 1
        self._drop(entity.tenant, kind, entity.id, name)
        if self.bus is None:
            return
        event = EVENTS[kind]
        payload = ModelMetastoreChanged(
            tenant=entity.tenant,
            kind=kind,
            id=entity.id,
            key_or_name=_key_or_name(entity),
            version=entity.version,
            change=change,
        )
        envelope = OnexEnvelopeV1(
            event_type=event,
            source_node_id=self.node_id,
            source_service="onex.metastore",
            source_instance=self.settings.instance,
            environment=self.settings.env,
            region=self.settings.region,
            partition_key=str(entity.id),
            payload=payload,
        )
        try:
            await self.bus.publish(self._publications[event].topic, envelope)
        except (TimeoutError, OnexError, OSError) as exc:
            _log.warning(
                "metastore: %s of %s %s committed, but its %s was not published: %s",
                change,
                kind,
                entity.id,
                event,
                exc,
            )

    async def _heard(self, envelope: OnexEnvelopeV1) -> None:
        publication = self._publications.get(envelope.event_type)
        if publication is None:
            return
        payload = publication.codec.decode(envelope)
        change = (
            payload if isinstance(payload, ModelMetastoreChanged) else ModelMetastoreChanged.model_validate(payload)
        )
        if envelope.source_node_id != self.node_id:  # its own changes were dropped at their commit already
            self.invalidations += 1
            self._drop(change.tenant, change.kind, change.id, change.key_or_name)
        for listener in self.listeners:
            listener(change)


def _version_model(row: VersionRow) -> EntityVersion:
    return EntityVersion(
        kind=Kind(row.kind),
        entity_id=row.entity_id,
        version=row.version,
        at=row.at,
        actor=row.actor,
        change=row.change,
        changed_fields=row.changed_fields,
        snapshot=row.snapshot,
    )
