-- onex PostgreSQL schema, version 7: a workflow's checkpoint in a column of its own, NULL once the workflow has
-- finished; migrations/sqlite/0007_workflow_checkpoint_column.sql is the same change in SQLite's types and says why.

ALTER TABLE workflow_executions ADD COLUMN checkpoint JSONB;
