-- Task outputs and dependencies (protocol version 4).
-- * outputs: a finished task's declared outputs, the postcard encoding of its
--   Vec<NamedObject> (NULL when it has none).
-- * task_dependencies: one row per (task, task whose output it takes as an input), written with
--   the task's insert; recovery reads the edges of open tasks with their dependencies' states.
-- * 'dependency_failed' is a finished state: the partial index of open tasks leaves it out.
ALTER TABLE tasks ADD COLUMN outputs BLOB;

CREATE TABLE task_dependencies (
    task TEXT NOT NULL,
    dependency TEXT NOT NULL,
    PRIMARY KEY (task, dependency)
);

DROP INDEX tasks_open_id;
CREATE INDEX tasks_open_id ON tasks (id)
    WHERE state NOT IN ('succeeded', 'failed', 'cancelled', 'unschedulable', 'lost', 'dependency_failed');
