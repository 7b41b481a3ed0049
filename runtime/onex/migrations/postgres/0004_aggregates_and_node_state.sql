-- onex PostgreSQL schema, version 4: aggregation results per window and nodes' keyed state (issue 14);
-- migrations/sqlite/0004_aggregates_and_node_state.sql is the same tables in SQLite's types.
--
-- aggregate_windows: one row per (node, aggregation, group, window), upserted by the reducer as the window fills
-- and once more when it closes. group_key is the group's values as canonical JSON text (sorted keys, compact
-- separators: onex.store.group_key), so one group is always one key; window_id is '' for an aggregation without
-- windows (a running total). namespace is the group's "namespace" value, when it has one, for `onex aggregates
-- --namespace` and GET /namespace/{ns}/windows. A row is replaced only by one with a higher version (a stale writer
-- never goes backwards).
CREATE TABLE aggregate_windows (
    node         TEXT NOT NULL,
    aggregation  TEXT NOT NULL,
    group_key    TEXT NOT NULL,
    window_id    TEXT NOT NULL DEFAULT '',
    namespace    TEXT,
    window_start TIMESTAMPTZ,
    window_end   TIMESTAMPTZ,
    closed       BOOLEAN NOT NULL DEFAULT false,
    items        BIGINT NOT NULL DEFAULT 0,
    "values"     JSONB NOT NULL DEFAULT '{}',
    state        JSONB NOT NULL DEFAULT '{}',
    version      BIGINT NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (node, aggregation, group_key, window_id)  -- also what a restarting reducer reads: its node's rows
);
-- list_aggregate_windows(namespace=..., aggregation=...), newest window first, the rows without a window last.
CREATE INDEX aggregate_windows_namespace_idx
    ON aggregate_windows (namespace, aggregation, window_start DESC NULLS LAST, group_key);

-- node_states: the keyed state of a node whose contract keeps it in the store (state_management storage: store)
-- and which has no table of its own. A row is replaced only by one with a higher version, except that a row of
-- version 0 (versioning: none) always replaces.
CREATE TABLE node_states (
    node       TEXT NOT NULL,
    "key"      TEXT NOT NULL,
    version    BIGINT NOT NULL,
    fields     JSONB NOT NULL DEFAULT '{}',
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (node, "key")
);
