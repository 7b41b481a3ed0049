-- onex SQLite schema, version 1: the omninode_bridge tables (onex-conventions section 7) adapted to the Store rows
-- in runtime/onex/store.py. The columns are those of migrations/postgres/0001_initial.sql, except the surrogate
-- keys (workflow id, step id, stamp and transition seq, bridge_id), which here are SQLite rowids.
-- Applied by SqliteStore.upgrade() in one transaction and recorded in schema_migrations.
--
-- SQLite has no UUID, JSONB or TIMESTAMPTZ, so SqliteStore encodes them, always the same way:
--   uuids       TEXT, canonical lowercase 36 characters (str(uuid.UUID)), so equal ids compare equal as text
--   JSON        TEXT, compact json.dumps (no NaN or Infinity: PostgreSQL's jsonb refuses them too)
--   timestamps  TEXT, ISO-8601 in UTC with microseconds ('2024-05-01T12:00:00.000000+00:00'): one fixed width,
--               so text order is time order and ORDER BY / comparisons on these columns are correct
--
-- No foreign keys between the tables: events reach the database adapter at least once and not always in order
-- (a step or a stamp may arrive before its workflow's first row), and every write must succeed on its own
-- natural key.
--
-- Every ordinary (rowid) table's index ends with the rowid, which is the insertion order; the read paths rely on
-- that to break ties ("ORDER BY created_at, rowid") without a separate sequence column.

CREATE TABLE workflow_executions (
    id                INTEGER PRIMARY KEY,  -- the rowid: creation order
    correlation_id    TEXT    NOT NULL UNIQUE,
    workflow_type     TEXT    NOT NULL,
    current_state     TEXT    NOT NULL,
    state_seq         INTEGER NOT NULL DEFAULT 0,
    namespace         TEXT,
    file_path         TEXT,
    file_hash         TEXT,
    stamp_id          TEXT,
    started_at        TEXT,
    completed_at      TEXT,
    execution_time_ms REAL,
    error_message     TEXT,
    metadata          TEXT    NOT NULL DEFAULT '{}',
    created_at        TEXT    NOT NULL,
    updated_at        TEXT    NOT NULL
);
-- list_workflows(state=...) filters on it; newest first is the rowid order, which the index carries.
CREATE INDEX workflow_executions_state_idx ON workflow_executions (current_state);

CREATE TABLE workflow_steps (
    workflow_id       TEXT    NOT NULL,  -- the workflow's correlation_id
    step_name         TEXT    NOT NULL,
    step_order        INTEGER NOT NULL,
    status            TEXT    NOT NULL,
    execution_time_ms REAL,
    step_data         TEXT    NOT NULL DEFAULT '{}',
    error_message     TEXT,
    created_at        TEXT    NOT NULL,
    updated_at        TEXT    NOT NULL,
    UNIQUE (workflow_id, step_name)  -- the natural key; also the "steps of a workflow" index
);

CREATE TABLE metadata_stamps (
    id          TEXT    NOT NULL PRIMARY KEY,
    workflow_id TEXT,
    file_hash   TEXT    NOT NULL,
    file_path   TEXT    NOT NULL,
    file_size   INTEGER NOT NULL,
    namespace   TEXT    NOT NULL,
    stamp_type  TEXT    NOT NULL,
    file_type   TEXT    NOT NULL,
    stamp_data  TEXT    NOT NULL DEFAULT '{}',
    created_at  TEXT    NOT NULL,
    UNIQUE (namespace, file_path, file_hash)
);
CREATE INDEX metadata_stamps_file_hash_idx ON metadata_stamps (file_hash);
CREATE INDEX metadata_stamps_namespace_idx ON metadata_stamps (namespace, created_at);  -- + rowid: page order

CREATE TABLE fsm_transitions (
    seq              INTEGER PRIMARY KEY,  -- the rowid: insertion order, the tie-break of equal created_at
    id               TEXT    NOT NULL UNIQUE,
    entity_id        TEXT    NOT NULL,
    entity_type      TEXT    NOT NULL,
    from_state       TEXT,
    to_state         TEXT    NOT NULL,
    transition_event TEXT    NOT NULL,
    correlation_id   TEXT,
    transition_data  TEXT    NOT NULL DEFAULT '{}',
    created_at       TEXT    NOT NULL
);
CREATE INDEX fsm_transitions_entity_idx ON fsm_transitions (entity_id, created_at);  -- + seq (the rowid)

CREATE TABLE bridge_states (
    namespace                  TEXT    NOT NULL PRIMARY KEY,
    version                    INTEGER NOT NULL,
    total_workflows_processed  INTEGER NOT NULL DEFAULT 0,
    total_items_aggregated     INTEGER NOT NULL DEFAULT 0,
    total_size_bytes           INTEGER NOT NULL DEFAULT 0,
    unique_file_hashes         INTEGER NOT NULL DEFAULT 0,
    current_fsm_state          TEXT    NOT NULL,
    aggregation_metadata       TEXT    NOT NULL DEFAULT '{}',
    last_aggregation_timestamp TEXT,
    created_at                 TEXT    NOT NULL,
    updated_at                 TEXT    NOT NULL
);

CREATE TABLE node_registrations (
    node_id        TEXT NOT NULL PRIMARY KEY,
    node_type      TEXT NOT NULL,
    node_version   TEXT NOT NULL,
    health_status  TEXT NOT NULL DEFAULT 'UNKNOWN',
    capabilities   TEXT NOT NULL DEFAULT '{}',
    endpoints      TEXT NOT NULL DEFAULT '{}',
    metadata       TEXT NOT NULL DEFAULT '{}',
    last_heartbeat TEXT,
    registered_at  TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);

CREATE TABLE event_logs (
    event_id           TEXT NOT NULL PRIMARY KEY,
    correlation_id     TEXT,
    event_type         TEXT NOT NULL,
    topic              TEXT NOT NULL,
    timestamp          TEXT NOT NULL,
    status             TEXT NOT NULL,
    processing_time_ms REAL,
    payload            TEXT NOT NULL DEFAULT '{}',
    metadata           TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX event_logs_correlation_idx ON event_logs (correlation_id);

-- Only ever probed by its key: WITHOUT ROWID keeps it one b-tree instead of a table plus an index.
CREATE TABLE processed_events (
    consumer     TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    processed_at TEXT NOT NULL,
    PRIMARY KEY (consumer, event_id)
) WITHOUT ROWID;
