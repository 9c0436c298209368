-- Labels an operator gave a join token (`rgrid-head token create --label K=V`): a postcard
-- BTreeMap<String, String>; NULL for tokens the head minted itself.
ALTER TABLE join_tokens ADD COLUMN labels BYTEA;
