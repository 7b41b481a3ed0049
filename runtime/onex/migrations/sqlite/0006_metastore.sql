-- onex SQLite schema, version 6: the metastore (issue 17): versioned metadata entries, feature flags and
-- configurations, per tenant. Encodings as in 0001_initial.sql (uuids and timestamps as fixed-width UTC text, JSON
-- as compact text); booleans are 0 / 1. migrations/postgres/0006_metastore.sql is the same in PostgreSQL's types.
--
-- metastore_entities: the latest version of every entity, whole, in `body` (the entity as JSON), so that reading one
-- is one primary-key lookup however long its history. `natural_key` is the kind's unique key as a JSON array
-- (metadata ["namespace","key"], flag ["name"], config ["service_id","name","environment"]), unique per tenant and
-- kind among the rows not deleted: a deleted entity keeps its row (soft delete) and frees its key. The other
-- columns copy fields of `body` that lists filter on. `tags` is every tag between two 0x1f separators.
CREATE TABLE metastore_entities (
    id          TEXT    NOT NULL PRIMARY KEY,
    kind        TEXT    NOT NULL CHECK (kind IN ('metadata', 'flag', 'config')),
    tenant      TEXT    NOT NULL,
    natural_key TEXT    NOT NULL,
    namespace   TEXT,
    service_id  TEXT,
    environment TEXT,
    tags        TEXT    NOT NULL DEFAULT '',
    state       TEXT    NOT NULL,
    version     INTEGER NOT NULL CHECK (version >= 1),
    deleted     INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL,
    body        TEXT    NOT NULL
) WITHOUT ROWID;
CREATE UNIQUE INDEX metastore_entities_live_key ON metastore_entities (tenant, kind, natural_key) WHERE deleted = 0;
-- Lists: a tenant's entities of one kind in creation order (by namespace for metadata; by service for configs).
CREATE INDEX metastore_entities_list ON metastore_entities (tenant, kind, namespace, created_at, id);
CREATE INDEX metastore_entities_service ON metastore_entities (tenant, service_id, environment) WHERE kind = 'config';

-- metastore_versions: every version of every entity, immutable (never updated nor deleted): who, when, what changed
-- and the entity's whole snapshot after the change. Keyed by (entity_id, version): reading version N for a rollback
-- is one lookup, and a second writer of the same version fails on the key (never a lost update).
CREATE TABLE metastore_versions (
    entity_id      TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    kind           TEXT    NOT NULL,
    tenant         TEXT    NOT NULL,
    at             TEXT    NOT NULL,
    actor          TEXT    NOT NULL,
    change         TEXT    NOT NULL,
    changed_fields TEXT    NOT NULL DEFAULT '[]',
    snapshot       TEXT    NOT NULL,
    PRIMARY KEY (entity_id, version)
) WITHOUT ROWID;
