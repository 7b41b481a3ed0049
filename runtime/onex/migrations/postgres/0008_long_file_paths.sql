-- onex PostgreSQL schema, version 8: a stamp of a file whose path is long. migrations/sqlite/0008_long_file_paths.sql
-- has the same number and changes nothing: SQLite's index keys have no size limit.
--
-- A btree entry holds at most 2704 bytes (a third of a page), compressed. metadata_stamps' natural key,
-- UNIQUE (namespace, file_path, file_hash), and the index that finds a file's versions, (namespace, file_path,
-- version), held the whole path, so a path of about 2.7 KB that does not compress was refused ("index row size ...
-- exceeds btree version 4 maximum 2704"), where SQLite stored it: the stamp was written to the file and its row
-- failed, its workflow stayed processing and the namespace's aggregate counted it. Linux allows paths of 4096 bytes.
--
-- Both indexes now hold the path as such up to 1024 bytes, and its md5 beyond (32 characters): with a namespace
-- of at most 256 characters (1 KB of UTF-8) and the 64 of the content hash, every entry fits. The path itself stays
-- in the column, and a path of up to 1024 bytes, which every ordinary path is, is keyed by itself exactly as
-- before, at no cost of hashing on the stamp insert. Two longer paths of one namespace with the same content hash
-- whose md5 collided would count as one stamp; md5 is the immutable hash PostgreSQL has for text (an index may use
-- only immutable functions, and convert_to, for sha256 of text, is not).
--
-- The stamp insert names no conflict target (ON CONFLICT DO NOTHING: the id is unique too), so it needs no change;
-- the trigger that numbers a new row's version looks its file up by the same expression, to use the index.

ALTER TABLE metadata_stamps DROP CONSTRAINT metadata_stamps_namespace_file_path_file_hash_key;
CREATE UNIQUE INDEX metadata_stamps_file_key ON metadata_stamps (
    namespace, (CASE WHEN octet_length(file_path) <= 1024 THEN file_path ELSE md5(file_path) END), file_hash);

DROP INDEX metadata_stamps_file_version_idx;
CREATE INDEX metadata_stamps_file_version_idx ON metadata_stamps (
    namespace, (CASE WHEN octet_length(file_path) <= 1024 THEN file_path ELSE md5(file_path) END), version);

CREATE OR REPLACE FUNCTION onex_metadata_stamps_fill() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
BEGIN
    IF NEW.version IS NULL THEN
        NEW.version := COALESCE(
            (SELECT max(o.version) FROM metadata_stamps AS o
             WHERE o.namespace = NEW.namespace
               AND (CASE WHEN octet_length(o.file_path) <= 1024 THEN o.file_path ELSE md5(o.file_path) END)
                   = (CASE WHEN octet_length(NEW.file_path) <= 1024 THEN NEW.file_path ELSE md5(NEW.file_path) END)
               AND o.file_path = NEW.file_path),
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
