-- The task path of protocol version 2.
-- * Small outputs live in the task's row (stdout/stderr); large ones stay files named by hash.
-- * A task's row says only whether it is open ('queued') or how it ended; where an open task
--   runs is its latest attempt row without an end. Placement writes the attempt row alone.
-- * Recovery pages through open tasks in id order: a partial index on id.
ALTER TABLE tasks ADD COLUMN stdout BYTEA;
ALTER TABLE tasks ADD COLUMN stderr BYTEA;

UPDATE tasks SET state = 'queued' WHERE state IN ('assigned', 'running');

DROP INDEX tasks_open;
CREATE INDEX tasks_open_id ON tasks (id)
    WHERE state NOT IN ('succeeded', 'failed', 'cancelled', 'unschedulable', 'lost');
