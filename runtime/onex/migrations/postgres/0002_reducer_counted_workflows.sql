-- onex PostgreSQL schema, version 2: the reducer records the workflows its aggregates count in processed_events
-- (consumer 'reducer.workflows', event_id the workflow's correlation id), in the transaction that stores them, and
-- on the memory bus aggregates at start every finished workflow not recorded there. The aggregates of a store written
-- before that already count its finished workflows: record them, so that they are not counted a second time.
INSERT INTO processed_events (consumer, event_id)
SELECT 'reducer.workflows', correlation_id FROM workflow_executions WHERE current_state IN ('completed', 'failed')
ON CONFLICT DO NOTHING;
