-- onex PostgreSQL schema, version 1: the omninode_bridge tables (onex-conventions section 7) adapted to the Store
-- rows in runtime/onex/store.py; migrations/sqlite/0001_initial.sql is the same schema in SQLite's types. Applied
-- by PostgresStore.upgrade() in one transaction, with search_path set to the store's schema, so no name here is
-- schema-qualified.
--
-- Where omninode_bridge has a surrogate UUID key (workflow_executions.id, bridge_states.bridge_id), onex has an
-- identity column or the natural key: nothing refers to those ids, and the identity gives "newest first" and
-- "in the order stored" for free. The identity / seq columns break ties between rows created in one transaction
-- (now() is the transaction's start, so a whole batch shares one created_at).
--
-- No foreign keys between the tables: events reach the database adapter at least once and not always in
-- order (a step or a stamp may arrive before its workflow's first row), and every write must succeed on its
-- own natural key.

CREATE TABLE workflow_executions (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- creation order: list_workflows, newest first
    correlation_id    UUID NOT NULL UNIQUE,
    workflow_type     TEXT NOT NULL,
    current_state     TEXT NOT NULL,
    state_seq         INTEGER NOT NULL DEFAULT 0,
    namespace         TEXT,
    file_path         TEXT,
    file_hash         TEXT,
    stamp_id          UUID,
    started_at        TIMESTAMPTZ,
    completed_at      TIMESTAMPTZ,
    execution_time_ms DOUBLE PRECISION,
    error_message     TEXT,
    metadata          JSONB NOT NULL DEFAULT '{}',
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX workflow_executions_state_idx ON workflow_executions (current_state, id DESC);

CREATE TABLE workflow_steps (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_id       UUID NOT NULL,
    step_name         TEXT NOT NULL,
    step_order        INTEGER NOT NULL,
    status            TEXT NOT NULL,
    execution_time_ms DOUBLE PRECISION,
    step_data         JSONB NOT NULL DEFAULT '{}',
    error_message     TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (workflow_id, step_name)  -- the natural key; also the "steps of a workflow" index
);

CREATE TABLE metadata_stamps (
    id          UUID PRIMARY KEY,
    seq         BIGINT GENERATED ALWAYS AS IDENTITY,
    workflow_id UUID,
    file_hash   TEXT NOT NULL,
    file_path   TEXT NOT NULL,
    file_size   BIGINT NOT NULL,
    namespace   TEXT NOT NULL,
    stamp_type  TEXT NOT NULL,
    file_type   TEXT NOT NULL,
    stamp_data  JSONB NOT NULL DEFAULT '{}',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (namespace, file_path, file_hash)
);
CREATE INDEX metadata_stamps_file_hash_idx ON metadata_stamps (file_hash);
CREATE INDEX metadata_stamps_namespace_idx ON metadata_stamps (namespace, created_at, seq);

CREATE TABLE fsm_transitions (
    id               UUID PRIMARY KEY,
    seq              BIGINT GENERATED ALWAYS AS IDENTITY,
    entity_id        TEXT NOT NULL,
    entity_type      TEXT NOT NULL,
    from_state       TEXT,
    to_state         TEXT NOT NULL,
    transition_event TEXT NOT NULL,
    correlation_id   UUID,
    transition_data  JSONB NOT NULL DEFAULT '{}',
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX fsm_transitions_entity_idx ON fsm_transitions (entity_id, created_at, seq);

CREATE TABLE bridge_states (
    namespace                  TEXT PRIMARY KEY,
    version                    BIGINT NOT NULL,
    total_workflows_processed  BIGINT NOT NULL DEFAULT 0,
    total_items_aggregated     BIGINT NOT NULL DEFAULT 0,
    total_size_bytes           BIGINT NOT NULL DEFAULT 0,
    unique_file_hashes         BIGINT NOT NULL DEFAULT 0,
    current_fsm_state          TEXT NOT NULL,
    aggregation_metadata       JSONB NOT NULL DEFAULT '{}',
    last_aggregation_timestamp TIMESTAMPTZ,
    created_at                 TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at                 TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE node_registrations (
    node_id        TEXT PRIMARY KEY,
    node_type      TEXT NOT NULL,
    node_version   TEXT NOT NULL,
    health_status  TEXT NOT NULL DEFAULT 'UNKNOWN',
    capabilities   JSONB NOT NULL DEFAULT '{}',
    endpoints      JSONB NOT NULL DEFAULT '{}',
    metadata       JSONB NOT NULL DEFAULT '{}',
    last_heartbeat TIMESTAMPTZ,
    registered_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE event_logs (
    event_id           UUID PRIMARY KEY,
    seq                BIGINT GENERATED ALWAYS AS IDENTITY,
    correlation_id     UUID,
    event_type         TEXT NOT NULL,
    topic              TEXT NOT NULL,
    timestamp          TIMESTAMPTZ NOT NULL DEFAULT now(),
    status             TEXT NOT NULL,
    processing_time_ms DOUBLE PRECISION,
    payload            JSONB NOT NULL DEFAULT '{}',
    metadata           JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX event_logs_correlation_idx ON event_logs (correlation_id, timestamp, seq);

CREATE TABLE processed_events (
    consumer     TEXT NOT NULL,
    event_id     UUID NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
