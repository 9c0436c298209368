-- What each task cost (see rgrid_cloud::task_cost for the rule).
-- * An attempt holds `share` of its node (the largest of its shares of cpu, memory and GPUs)
--   at the node's `hourly_price` (NULL when the node has none: its tasks have no cost).
-- * Each billed hour of a node that closed with use: its price (idle hours carried in) and the
--   share-milliseconds used in it, so an attempt pays share × ms in the hour × price / used.
-- * Tasks keep what `rgrid cost --by` groups them by: their shape, their label selector and
--   the client that submitted them (`submitted_by`, migration 0013).
ALTER TABLE attempts ADD COLUMN share REAL;
ALTER TABLE attempts ADD COLUMN hourly_price REAL;

ALTER TABLE tasks ADD COLUMN shape TEXT;
ALTER TABLE tasks ADD COLUMN selector TEXT;

CREATE TABLE node_hours (
    node TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    price REAL NOT NULL,
    used REAL NOT NULL,
    PRIMARY KEY (node, start_ms)
);
