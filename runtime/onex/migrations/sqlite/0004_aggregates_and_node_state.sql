-- onex SQLite schema, version 4: aggregation results per window and nodes' keyed state (issue 14). Encodings as in
-- 0001_initial.sql (timestamps as fixed-width UTC text, JSON as compact text); booleans are 0 / 1.
--
-- aggregate_windows: one row per (node, aggregation, group, window), upserted by the reducer as the window fills
-- and once more when it closes. group_key is the group's values as canonical JSON (sorted keys, compact
-- separators: onex.store.group_key), so one group is always one key; window_id is '' for an aggregation without
-- windows (a running total). namespace is the group's "namespace" value, when it has one, for `onex aggregates
-- --namespace` and GET /namespace/{ns}/windows. A row is replaced only by one with a higher version (a stale writer
-- never goes backwards).
CREATE TABLE aggregate_windows (
    node         TEXT    NOT NULL,
    aggregation  TEXT    NOT NULL,
    group_key    TEXT    NOT NULL,
    window_id    TEXT    NOT NULL DEFAULT '',
    namespace    TEXT,
    window_start TEXT,
    window_end   TEXT,
    closed       INTEGER NOT NULL DEFAULT 0 CHECK (closed IN (0, 1)),
    items        INTEGER NOT NULL DEFAULT 0,
    "values"     TEXT    NOT NULL DEFAULT '{}',
    state        TEXT    NOT NULL DEFAULT '{}',
    version      INTEGER NOT NULL,
    updated_at   TEXT    NOT NULL,
    PRIMARY KEY (node, aggregation, group_key, window_id)  -- also what a restarting reducer reads: its node's rows
) WITHOUT ROWID;
-- list_aggregate_windows(namespace=..., aggregation=...), newest window first. SQLite sorts NULLs first, so a
-- descending scan puts the rows without a window last, as the query asks.
CREATE INDEX aggregate_windows_namespace_idx ON aggregate_windows (namespace, aggregation, window_start);

-- node_states: the keyed state of a node whose contract keeps it in the store (state_management storage: store)
-- and which has no table of its own. A row is replaced only by one with a higher version, except that a row of
-- version 0 (versioning: none) always replaces.
CREATE TABLE node_states (
    node       TEXT    NOT NULL,
    "key"      TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    fields     TEXT    NOT NULL DEFAULT '{}',
    updated_at TEXT    NOT NULL,
    PRIMARY KEY (node, "key")
) WITHOUT ROWID;
