-- onex SQLite schema, version 8: nothing changes here. migrations/postgres/0008_long_file_paths.sql lets PostgreSQL
-- store a stamp of a file whose path is longer than its btree entries hold (about 2.7 KB), as SQLite, whose index
-- keys have no size limit, always did; the number is kept so that both stores' schema versions agree.

SELECT 1;
