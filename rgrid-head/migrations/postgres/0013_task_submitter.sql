-- The client (its certificate's name) that submitted each task: a submit client may cancel
-- only its own. NULL for tasks stored before it was recorded.
ALTER TABLE tasks ADD COLUMN submitted_by TEXT;
