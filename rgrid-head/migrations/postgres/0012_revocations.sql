-- Credentials the head refuses at the handshake and before any request. kind 'node': a node
-- id (its row in nodes is deleted with it); the kind leaves room for certificate serials.
CREATE TABLE revocations (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    revoked_at_ms BIGINT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
