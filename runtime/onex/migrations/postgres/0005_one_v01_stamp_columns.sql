-- onex PostgreSQL schema, version 5: the O.N.E. v0.1 columns of metadata_stamps (issue 16), which the bridge's
-- clients and its service schema read; migrations/sqlite/0005_one_v01_stamp_columns.sql is the same change in
-- SQLite's types and says what each column holds.
--
-- Existing rows are filled here. A migration cannot read settings, so their protocol_version and metadata_version
-- are the settings' defaults, '1.0' and '0.1' (onex.settings.DEFAULT_PROTOCOL_VERSION / DEFAULT_METADATA_VERSION).

ALTER TABLE metadata_stamps
    ADD COLUMN op_id             UUID,
    ADD COLUMN version           INTEGER,
    ADD COLUMN intelligence_data JSONB NOT NULL DEFAULT '{}',
    ADD COLUMN metadata_version  TEXT NOT NULL DEFAULT '0.1',
    ADD COLUMN protocol_version  TEXT NOT NULL DEFAULT '1.0',
    ADD COLUMN file_metadata     JSONB NOT NULL DEFAULT '{}',
    ADD COLUMN updated_at        TIMESTAMPTZ NOT NULL DEFAULT now();

CREATE INDEX metadata_stamps_file_version_idx ON metadata_stamps (namespace, file_path, version);
CREATE INDEX metadata_stamps_op_idx ON metadata_stamps (op_id);

-- Versions of the existing rows: their rank among the rows of their file, by created_at, then the order stored.
UPDATE metadata_stamps AS m SET version = r.n
FROM (
    SELECT id, row_number() OVER (PARTITION BY namespace, file_path ORDER BY created_at, seq) AS n
    FROM metadata_stamps
) AS r
WHERE m.id = r.id;

UPDATE metadata_stamps AS m SET
    op_id = m.workflow_id,
    updated_at = m.created_at,
    file_metadata = jsonb_build_object('file_type', m.file_type, 'size', m.file_size, 'mode', NULL),
    intelligence_data = COALESCE(
        (SELECT s.step_data FROM workflow_steps AS s
         WHERE s.workflow_id = m.workflow_id AND s.step_name = 'intelligence' AND s.status = 'completed'),
        '{}'
    );

-- A new row's version, and its intelligence data when its workflow's intelligence step was stored first: one
-- indexed max() per row. A row-level BEFORE trigger's queries see the rows the same statement inserted before
-- (the function is VOLATILE), so two restamps of a file in one batch get consecutive versions. A row given a
-- version (a backfill, another client) keeps it. search_path is the migration's: the schema these tables are in.
CREATE FUNCTION onex_metadata_stamps_fill() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF NEW.version IS NULL THEN
        NEW.version := COALESCE(
            (SELECT max(o.version) FROM metadata_stamps AS o
             WHERE o.namespace = NEW.namespace AND o.file_path = NEW.file_path),
            0) + 1;
    END IF;
    IF NEW.intelligence_data = '{}'::jsonb AND NEW.workflow_id IS NOT NULL THEN
        NEW.intelligence_data := COALESCE(
            (SELECT s.step_data FROM workflow_steps AS s
             WHERE s.workflow_id = NEW.workflow_id AND s.step_name = 'intelligence' AND s.status = 'completed'),
            '{}'::jsonb);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER metadata_stamps_fill BEFORE INSERT ON metadata_stamps
FOR EACH ROW EXECUTE FUNCTION onex_metadata_stamps_fill();

-- The intelligence step usually completes after its stamp's row was stored (the stamp's own event comes first):
-- its answer is copied into the rows of its operation then.
CREATE FUNCTION onex_workflow_steps_intelligence() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
BEGIN
    UPDATE metadata_stamps SET intelligence_data = NEW.step_data, updated_at = NEW.updated_at
    WHERE op_id = NEW.workflow_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER workflow_steps_intelligence AFTER INSERT OR UPDATE OF status, step_data ON workflow_steps
FOR EACH ROW WHEN (NEW.step_name = 'intelligence' AND NEW.status = 'completed')
EXECUTE FUNCTION onex_workflow_steps_intelligence();
