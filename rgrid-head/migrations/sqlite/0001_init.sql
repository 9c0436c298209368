-- Nodes that joined the cluster. resources/labels/capabilities are postcard blobs (rgrid-core
-- wire types), refreshed each time the node opens a session.
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    resources BLOB,
    labels BLOB,
    capabilities BLOB,
    state TEXT NOT NULL,
    joined_at_ms INTEGER NOT NULL
);

-- Every acknowledged task. spec is the postcard-encoded TaskSpec.
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    spec BLOB NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    node TEXT,
    node_losses INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    submitted_at_ms INTEGER NOT NULL,
    finished_at_ms INTEGER,
    exit_code INTEGER,
    reason TEXT,
    stdout_hash TEXT,
    stderr_hash TEXT
);

CREATE INDEX tasks_open ON tasks (state)
    WHERE state NOT IN ('succeeded', 'failed', 'cancelled', 'unschedulable', 'lost');

-- One row per execution of a task.
CREATE TABLE attempts (
    task TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    node TEXT NOT NULL,
    node_name TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    ended_at_ms INTEGER,
    outcome TEXT,
    PRIMARY KEY (task, attempt)
);

-- Join tokens: only a hash of the secret is stored.
CREATE TABLE join_tokens (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,
    single_use INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    revoked INTEGER NOT NULL DEFAULT 0
);
