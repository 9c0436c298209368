-- Objects a client pinned (protocol version 6): retention keeps them until they are unpinned.
-- object: its text form, HEX-SIZE; pinned_by: the client's certificate name.
CREATE TABLE object_pins (
    object TEXT PRIMARY KEY,
    pinned_at_ms BIGINT NOT NULL,
    pinned_by TEXT NOT NULL
);
