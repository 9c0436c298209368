-- Certificates the head signed (node and client certificates), so that clients can be listed
-- and revoked by name (rgrid-head client list|revoke) and a node's renewed certificates revoked
-- by serial. subject: node:<id> or client:<name>; role: a client's, NULL for nodes.
CREATE TABLE certificates (
    serial TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    role TEXT,
    issued_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX certificates_by_subject ON certificates (subject, issued_at_ms);
-- Revocations of kind 'serial' (a certificate) carry its expiry: past it the TLS handshake
-- refuses the certificate anyway, and the head no longer loads the revocation. NULL for nodes.
ALTER TABLE revocations ADD COLUMN expires_at_ms INTEGER;
-- Identity the head decides: the labels of the token a node joined with (a postcard
-- BTreeMap<String, String>; they override the labels the node declares), and the name a token
-- binds its node to (the autoscaler's server tokens: the server's name).
ALTER TABLE nodes ADD COLUMN token_labels BLOB;
ALTER TABLE join_tokens ADD COLUMN node_name TEXT;
