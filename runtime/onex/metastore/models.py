"""The metastore's entities, the request bodies that create and change them, and its change event.

Three kinds of entity, each owned by a tenant and versioned: ``MetadataEntry``, ``FeatureFlag`` (a ``FlagSpec`` of
``onex.metastore.flags`` plus its lifecycle) and ``Configuration``. Every entity carries the same bookkeeping
fields (``id``, ``tenant``, ``version``, ``state``, who and when, ``deleted``); its whole JSON (``snapshot()``) is
what each version of its history holds. Entities are frozen: one object may be shared by caches and callers.

``*Create`` bodies carry what a caller sets; ``*Update`` bodies only the fields to change (a field left out is
kept, a field given as ``null`` is set to null where null is a value, as ``effective_until``). Lifecycle changes
(enable, activate, ...) have their own ``Metastore`` methods, so that each goes through its FSM.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from onex._model_reads import PlainReads
from onex.envelope import Payload
from onex.metastore.flags import FlagSpec, Override, Rollout, TargetingRule, UtcTime

__all__ = [
    "ConfigCreate",
    "ConfigSource",
    "ConfigUpdate",
    "Configuration",
    "EffectiveConfig",
    "Entity",
    "EntityFields",
    "EntityVersion",
    "Environment",
    "FeatureFlag",
    "FlagCreate",
    "FlagUpdate",
    "Kind",
    "MetadataCreate",
    "MetadataEntry",
    "MetadataUpdate",
    "ModelMetastoreChanged",
    "Page",
    "snapshot",
]

T = TypeVar("T")

Environment = Literal["development", "staging", "production"]
ContentType = Literal["json", "yaml", "text", "binary"]
_KEY = r"^[^\x00-\x1f]{1,512}$"  # printable, one line: keys show up in URLs and tables


class Kind(enum.StrEnum):
    METADATA = "metadata"
    FLAG = "flag"
    CONFIG = "config"


class _Frozen(PlainReads):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, serialize_by_alias=True)


class EntityFields(_Frozen):
    """The bookkeeping every entity carries."""

    id: uuid.UUID
    tenant: str
    version: int = Field(ge=1)  # 1 on create, +1 per change (rollbacks and deletes included)
    state: str
    created_at: datetime
    updated_at: datetime
    created_by: str
    updated_by: str
    deleted: bool = False


# --- metadata ------------------------------------------------------------------------------------------------------


class MetadataCreate(_Frozen):
    namespace: str = Field("default", pattern=_KEY)
    key: str = Field(pattern=_KEY)
    value: Any = None
    content_type: ContentType = "json"
    tags: list[str] = Field(default_factory=list)
    description: str = ""
    encrypted: bool = False  # a marker for readers (the value is ciphertext the caller made); nothing is encrypted


class MetadataUpdate(_Frozen):
    namespace: str | None = Field(None, pattern=_KEY)
    key: str | None = Field(None, pattern=_KEY)
    value: Any = None
    content_type: ContentType | None = None
    tags: list[str] | None = None
    description: str | None = None
    encrypted: bool | None = None


class MetadataEntry(EntityFields, MetadataCreate):
    """A metadata entry: unique by (tenant, namespace, key) among entries not deleted. ``state`` is "active"."""


# --- flags ---------------------------------------------------------------------------------------------------------


class FlagCreate(FlagSpec):
    """A new flag: the ``FlagSpec`` fields. It starts in state "draft" (``enable_flag`` activates it)."""


class FlagUpdate(_Frozen):
    name: str | None = None
    description: str | None = None
    enabled: bool | None = None
    default_value: Any = None
    variants: dict[str, Any] | None = None
    rules: list[TargetingRule] | None = None
    rollout: Rollout | None = None
    tenant_overrides: dict[str, Override] | None = None
    environment_overrides: dict[str, Override] | None = None
    expires_at: datetime | None = None
    tags: list[str] | None = None


class FeatureFlag(EntityFields, FlagSpec):
    """A feature flag: its ``FlagSpec`` and lifecycle ``state`` (draft -> active -> archived, the flag FSM of the
    metastore effect's contract). Unique by (tenant, name) among flags not deleted."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, serialize_by_alias=True)

    def spec(self) -> FlagSpec:
        """The user-editable part, as ``CompiledFlag`` takes it."""
        return FlagSpec.model_validate({name: getattr(self, name) for name in FlagSpec.model_fields})


# --- configurations ------------------------------------------------------------------------------------------------


class ConfigCreate(_Frozen):
    service_id: str = Field(pattern=_KEY)
    name: str = Field(pattern=_KEY)
    environment: Environment
    values: dict[str, Any] = Field(default_factory=dict)
    # A JSON Schema (Draft 2020-12) the values must satisfy; fields marked "x-secret": true or "writeOnly": true must
    # hold a secret reference ({"$secret": "env:NAME"}), never a plain value.
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    active: bool = True  # created active (state "active") unless False (state "inactive")
    effective_from: UtcTime | None = None
    effective_until: UtcTime | None = None
    description: str = ""


class ConfigUpdate(_Frozen):
    service_id: str | None = Field(None, pattern=_KEY)
    name: str | None = Field(None, pattern=_KEY)
    environment: Environment | None = None
    values: dict[str, Any] | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    effective_from: UtcTime | None = None
    effective_until: UtcTime | None = None
    description: str | None = None


class Configuration(EntityFields, ConfigCreate):
    """A service's configuration for one environment: unique by (tenant, service_id, name, environment) among
    configurations not deleted. ``state`` "active" or "inactive" (the configuration FSM), ``active`` says the same."""


Entity = MetadataEntry | FeatureFlag | Configuration

MODELS: dict[Kind, type[MetadataEntry] | type[FeatureFlag] | type[Configuration]] = {
    Kind.METADATA: MetadataEntry,
    Kind.FLAG: FeatureFlag,
    Kind.CONFIG: Configuration,
}


def snapshot(entity: BaseModel) -> dict[str, Any]:
    """The entity as JSON: what a version stores and a rollback restores."""
    return entity.model_dump(mode="json", by_alias=True)


# --- history, pages, results ---------------------------------------------------------------------------------------


class EntityVersion(_Frozen):
    """One immutable version of an entity: who made it, when, what kind of change, which fields changed, and the
    whole entity after the change."""

    kind: Kind
    entity_id: uuid.UUID
    version: int
    at: datetime
    actor: str
    change: str  # create update delete rollback enable disable rollout activate deactivate archive
    changed_fields: list[str]  # every field for a create, none for a change that changed nothing
    snapshot: dict[str, Any]


class Page(_Frozen, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class ConfigSource(_Frozen):
    id: uuid.UUID
    name: str
    version: int


class EffectiveConfig(_Frozen):
    """The merged values of a service's active configurations for one environment (``Metastore.effective_config``);
    ``sources`` in merge order, the later winning."""

    service_id: str
    environment: Environment
    values: dict[str, Any]
    sources: list[ConfigSource]
    secrets_resolved: bool = False


class ModelMetastoreChanged(Payload):
    """METADATA_CHANGED / FLAG_CHANGED / CONFIG_CHANGED: an entity changed (published after the write committed)."""

    tenant: str
    kind: Kind
    id: uuid.UUID
    key_or_name: str
    version: int
    change: str
