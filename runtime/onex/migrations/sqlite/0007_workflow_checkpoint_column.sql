-- onex SQLite schema, version 7: a workflow's checkpoint in a column of its own. migrations/postgres/
-- 0007_workflow_checkpoint_column.sql is the same change in PostgreSQL's types.
--
--   checkpoint  the orchestrator's checkpoint (JSON) while the workflow runs: its state, steps and context, the
--               request's content included; NULL once the workflow has finished, because the row that records its
--               end (the database adapter's, from the outcome) has the higher state_seq and sets it to NULL.
--
-- Until now the checkpoint was the "checkpoint" key of `metadata`, which merges (the keys of the newer row win, a
-- key the newer row lacks is kept), so a finished workflow kept its last checkpoint, its request's content with it,
-- for as long as its row was kept. Rows written before this migration keep it there; the orchestrator reads a
-- checkpoint from `metadata` when this column is NULL (onex.nodes.OrchestratorNode.restore).

ALTER TABLE workflow_executions ADD COLUMN checkpoint TEXT;
