-- onex PostgreSQL schema, version 3: dead letters (``onex dlq``); migrations/sqlite/0003_dead_letters.sql is the same
-- table in SQLite's types. On the memory bus the runtime keeps every dead letter here, since they die with the process
-- otherwise; on Kafka the .dlq topics hold them and a row exists only for a letter `onex dlq replay` replayed.
CREATE TABLE dead_letters (
    event_id          UUID PRIMARY KEY,  -- the dead letter's own id
    seq               BIGINT GENERATED ALWAYS AS IDENTITY,  -- the order stored, the tie-break of equal times
    original_event_id UUID,  -- NULL for a Kafka record that was no envelope
    topic             TEXT NOT NULL,  -- the dead-letter topic, <original_topic>.dlq
    original_topic    TEXT NOT NULL,
    event_type        TEXT NOT NULL,  -- of the original; UNDECODABLE for a record that was no envelope
    correlation_id    UUID,
    group_name        TEXT,
    error_type        TEXT NOT NULL,
    error             TEXT NOT NULL,
    attempts          INTEGER NOT NULL,
    dead_lettered_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    letter            JSONB NOT NULL,
    replayed_at       TIMESTAMPTZ,
    replays           INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX dead_letters_time_idx ON dead_letters (dead_lettered_at DESC, seq DESC);
CREATE INDEX dead_letters_topic_idx ON dead_letters (topic, dead_lettered_at DESC, seq DESC);
CREATE INDEX dead_letters_original_idx ON dead_letters (original_event_id);
