-- onex SQLite schema, version 3: dead letters (``onex dlq``). On the memory bus the runtime keeps every dead letter
-- here, since they die with the process otherwise; on Kafka the .dlq topics hold them and a row exists only for a
-- letter `onex dlq replay` replayed. Encodings as in 0001_initial.sql (uuids and timestamps as fixed-form text).
CREATE TABLE dead_letters (
    seq               INTEGER PRIMARY KEY,  -- the rowid: the order stored, the tie-break of equal dead_lettered_at
    event_id          TEXT    NOT NULL UNIQUE,  -- the dead letter's own id
    original_event_id TEXT,  -- NULL for a Kafka record that was no envelope
    topic             TEXT    NOT NULL,  -- the dead-letter topic, <original_topic>.dlq
    original_topic    TEXT    NOT NULL,
    event_type        TEXT    NOT NULL,  -- of the original; UNDECODABLE for a record that was no envelope
    correlation_id    TEXT,
    group_name        TEXT,
    error_type        TEXT    NOT NULL,
    error             TEXT    NOT NULL,
    attempts          INTEGER NOT NULL,
    dead_lettered_at  TEXT    NOT NULL,
    letter            TEXT    NOT NULL,  -- the dead-letter envelope, JSON
    replayed_at       TEXT,
    replays           INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX dead_letters_time_idx ON dead_letters (dead_lettered_at);  -- + seq: newest first
CREATE INDEX dead_letters_topic_idx ON dead_letters (topic, dead_lettered_at);
CREATE INDEX dead_letters_original_idx ON dead_letters (original_event_id);
