-- Facts about the database itself. `task_spec_encoding`: the version of the encoding of the
-- tasks' `spec` blobs, kept apart from the wire's protocol version (rgrid-head/src/store/encoding.rs
-- lists the versions). Databases written before this migration hold version 2 blobs (the
-- protocol 2 spec, or a protocol 3 one: the head did not record which); the head converts them
-- to its current version when it opens the database, and records that version here.
CREATE TABLE store_meta (
    key TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO store_meta (key, value) VALUES ('task_spec_encoding', 2);
