-- onex SQLite schema, version 5: the O.N.E. v0.1 columns of metadata_stamps (issue 16), which the bridge's
-- clients and its service schema read: op_id, version, intelligence_data, metadata_version, protocol_version,
-- file_metadata, updated_at. Encodings as in 0001_initial.sql. migrations/postgres/0005_one_v01_stamp_columns.sql
-- is the same change in PostgreSQL's types.
--
--   op_id             the operation that produced the stamp: its workflow's id (NULL for a row without a workflow)
--   version           1 for the first row of a file (namespace + file_path), then 1 more for each later row of it:
--                     the restamps of that file, in the order they were stored
--   intelligence_data what the workflow's intelligence step answered ('{}' when it was skipped or not configured)
--   metadata_version  the settings' ONEX_METADATA_VERSION when the row was written
--   protocol_version  the settings' ONEX_PROTOCOL_VERSION when the row was written
--   file_metadata     {"file_type", "size", "mode"}: mode is the file's permission bits as octal text ("0644"),
--                     null for content that was never a file and for the rows written before this migration
--   updated_at        when the row last changed (its created_at until the intelligence step fills it)
--
-- Existing rows are filled here. A migration cannot read settings, so their protocol_version and metadata_version
-- are the settings' defaults, "1.0" and "0.1" (onex.settings.DEFAULT_PROTOCOL_VERSION / DEFAULT_METADATA_VERSION).

ALTER TABLE metadata_stamps ADD COLUMN op_id TEXT;
ALTER TABLE metadata_stamps ADD COLUMN version INTEGER;
ALTER TABLE metadata_stamps ADD COLUMN intelligence_data TEXT NOT NULL DEFAULT '{}';
ALTER TABLE metadata_stamps ADD COLUMN metadata_version TEXT NOT NULL DEFAULT '0.1';
ALTER TABLE metadata_stamps ADD COLUMN protocol_version TEXT NOT NULL DEFAULT '1.0';
ALTER TABLE metadata_stamps ADD COLUMN file_metadata TEXT NOT NULL DEFAULT '{}';
ALTER TABLE metadata_stamps ADD COLUMN updated_at TEXT;

-- The stamps of one file by version (the trigger's MAX), and of one operation (the intelligence trigger's UPDATE).
CREATE INDEX metadata_stamps_file_version_idx ON metadata_stamps (namespace, file_path, version);
CREATE INDEX metadata_stamps_op_idx ON metadata_stamps (op_id);

-- Versions of the existing rows: their rank among the rows of their file, by created_at, then the order stored.
UPDATE metadata_stamps SET version = (
    SELECT count(*) FROM metadata_stamps AS o
    WHERE o.namespace = metadata_stamps.namespace AND o.file_path = metadata_stamps.file_path
      AND (o.created_at < metadata_stamps.created_at
           OR (o.created_at = metadata_stamps.created_at AND o.rowid <= metadata_stamps.rowid))
);

UPDATE metadata_stamps SET
    op_id = workflow_id,
    updated_at = created_at,
    file_metadata = json_object('file_type', file_type, 'size', file_size, 'mode', NULL),
    intelligence_data = COALESCE(
        (SELECT s.step_data FROM workflow_steps AS s
         WHERE s.workflow_id = metadata_stamps.workflow_id AND s.step_name = 'intelligence'
           AND s.status = 'completed'),
        '{}'
    );

-- A new row without a version (written by another client: SqliteStore numbers its rows itself, one query per
-- batch, since this UPDATE per row is what numbering would otherwise cost) gets the next of its file, 1 + the
-- highest stored: one indexed MAX. SQLite's BEFORE triggers cannot change NEW, hence an AFTER trigger updating the
-- row by rowid. It fires once per row even inside one multi-row INSERT, seeing the rows inserted before it.
CREATE TRIGGER metadata_stamps_version AFTER INSERT ON metadata_stamps
WHEN NEW.version IS NULL
BEGIN
    UPDATE metadata_stamps SET version = (
        SELECT COALESCE(MAX(o.version), 0) + 1 FROM metadata_stamps AS o
        WHERE o.namespace = NEW.namespace AND o.file_path = NEW.file_path
    )
    WHERE rowid = NEW.rowid;
END;

-- A stamp stored after its workflow's intelligence step answered gets the answer (the WHEN is one indexed probe of
-- workflow_steps; the UPDATE only runs for such a row).
CREATE TRIGGER metadata_stamps_intelligence AFTER INSERT ON metadata_stamps
WHEN NEW.intelligence_data = '{}' AND NEW.workflow_id IS NOT NULL AND EXISTS (
    SELECT 1 FROM workflow_steps AS s
    WHERE s.workflow_id = NEW.workflow_id AND s.step_name = 'intelligence' AND s.status = 'completed'
)
BEGIN
    UPDATE metadata_stamps SET intelligence_data = (
        SELECT s.step_data FROM workflow_steps AS s
        WHERE s.workflow_id = NEW.workflow_id AND s.step_name = 'intelligence' AND s.status = 'completed'
    )
    WHERE rowid = NEW.rowid;
END;

-- The intelligence step usually completes after its stamp's row was stored (the stamp's own event comes first):
-- its answer is copied into the rows of its operation then.
CREATE TRIGGER workflow_steps_intelligence_insert AFTER INSERT ON workflow_steps
WHEN NEW.step_name = 'intelligence' AND NEW.status = 'completed'
BEGIN
    UPDATE metadata_stamps SET intelligence_data = NEW.step_data, updated_at = NEW.updated_at
    WHERE op_id = NEW.workflow_id;
END;

CREATE TRIGGER workflow_steps_intelligence_update AFTER UPDATE OF status, step_data ON workflow_steps
WHEN NEW.step_name = 'intelligence' AND NEW.status = 'completed'
BEGIN
    UPDATE metadata_stamps SET intelligence_data = NEW.step_data, updated_at = NEW.updated_at
    WHERE op_id = NEW.workflow_id;
END;
