-- Scheduler core v2: attempts owned by the workflow.
-- Execution rows gain `waiting_lock` (an attempt waiting for its lock_key) and `lost` (its worker
-- died; the attempt was started again and did not count as a failure).
ALTER TABLE bot_task_executions DROP CONSTRAINT bot_task_executions_status_check;
ALTER TABLE bot_task_executions ADD CONSTRAINT bot_task_executions_status_check
    CHECK (status IN ('started', 'waiting_lock', 'retrying', 'completed', 'failed', 'cancelled',
                      'skipped', 'lost'));
DROP INDEX bot_task_executions_open;
CREATE INDEX bot_task_executions_open ON bot_task_executions (bot_id)
    WHERE status IN ('started', 'waiting_lock');

-- Grows on every operator edit of the schedule, so a run in flight cannot overwrite the edit.
ALTER TABLE bot_task_definitions ADD COLUMN schedule_version integer NOT NULL DEFAULT 0;
-- The execution key of the last failure counted in consecutive_failures: a repeated write of the
-- same attempt's failure counts it once.
ALTER TABLE bot_task_definitions ADD COLUMN last_failure_key text;
