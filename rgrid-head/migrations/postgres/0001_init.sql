-- Nodes that joined the cluster. resources/labels/capabilities are postcard blobs (rgrid-core
-- wire types), refreshed each time the node opens a session.
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    resources BYTEA,
    labels BYTEA,
    capabilities BYTEA,
    state TEXT NOT NULL,
    joined_at_ms BIGINT NOT NULL
);

-- Every acknowledged task. spec is the postcard-encoded TaskSpec.
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    spec BYTEA NOT NULL,
    state TEXT NOT NULL,
    attempt BIGINT NOT NULL DEFAULT 0,
    node TEXT,
    node_losses BIGINT NOT NULL DEFAULT 0,
    failures BIGINT NOT NULL DEFAULT 0,
    submitted_at_ms BIGINT NOT NULL,
    finished_at_ms BIGINT,
    exit_code BIGINT,
    reason TEXT,
    stdout_hash TEXT,
    stderr_hash TEXT
);

CREATE INDEX tasks_open ON tasks (state)
    WHERE state NOT IN ('succeeded', 'failed', 'cancelled', 'unschedulable', 'lost');

-- One row per execution of a task.
CREATE TABLE attempts (
    task TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    node TEXT NOT NULL,
    node_name TEXT NOT NULL,
    started_at_ms BIGINT NOT NULL,
    ended_at_ms BIGINT,
    outcome TEXT,
    PRIMARY KEY (task, attempt)
);

-- Join tokens: only a hash of the secret is stored.
CREATE TABLE join_tokens (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT,
    single_use BOOLEAN NOT NULL,
    used BOOLEAN NOT NULL DEFAULT FALSE,
    revoked BOOLEAN NOT NULL DEFAULT FALSE
);
