"""The metastore: versioned metadata entries, feature flags and configurations, multi-tenant, with rollback.

``Metastore`` (``onex.metastore.service``) is the Python API; the entities and request bodies are in
``onex.metastore.models``, flag evaluation in ``onex.metastore.flags``. Storage is the store's metastore tables
(``migrations/*/0006_metastore.sql``), through ``SqliteStore.run_sync`` / ``PostgresStore.run``.
"""

from __future__ import annotations

from onex.exceptions import EntityExists, EntityNotFound, MetastoreError, MetastoreInvalid, VersionConflict
from onex.metastore.flags import CompiledFlag, ErrorCode, FlagSpec, Reason, Resolution, Rollout, bucket
from onex.metastore.models import (
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
)
from onex.metastore.service import EVENTS, Metastore

__all__ = [
    "EVENTS",
    "CompiledFlag",
    "ConfigCreate",
    "ConfigSource",
    "ConfigUpdate",
    "Configuration",
    "EffectiveConfig",
    "Entity",
    "EntityExists",
    "EntityNotFound",
    "EntityVersion",
    "ErrorCode",
    "FeatureFlag",
    "FlagCreate",
    "FlagSpec",
    "FlagUpdate",
    "Kind",
    "MetadataCreate",
    "MetadataEntry",
    "MetadataUpdate",
    "Metastore",
    "MetastoreError",
    "MetastoreInvalid",
    "ModelMetastoreChanged",
    "Page",
    "Reason",
    "Resolution",
    "Rollout",
    "VersionConflict",
    "bucket",
]
