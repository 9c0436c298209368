//! Join tokens as an operator manages them (`rgrid-head token create|list|revoke`): stored with
//! their labels, listed, revoked. The same SQL compiled for each backend, as in `backend.rs`;
//! the join path's own reads and uses of a token stay there.

use std::collections::BTreeMap;

use super::{Pool, Store, StoreError, StoredToken};

/// A token's labels.
pub(crate) type Labels = BTreeMap<String, String>;

/// One module per backend with the same functions over that backend's pool.
macro_rules! tokens {
    ($name:ident, $db:ty) => {
        pub(crate) mod $name {
            use sqlx::Row as _;

            use super::Labels;
            use crate::store::{decode, encode, to_i64, to_u64, StoreError, StoredToken};

            type Pool = sqlx::Pool<$db>;

            pub(crate) async fn insert(
                pool: &Pool,
                token: &StoredToken,
                labels: &Labels,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO join_tokens (id, secret_hash, created_at_ms, expires_at_ms, single_use, used, revoked, labels)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&token.id)
                .bind(&token.secret_hash)
                .bind(to_i64(token.created_at_ms))
                .bind(token.expires_at_ms.map(to_i64))
                .bind(token.single_use)
                .bind(token.used)
                .bind(token.revoked)
                .bind(encode(labels))
                .execute(pool)
                .await?;
                Ok(())
            }

            pub(crate) async fn list(pool: &Pool) -> Result<Vec<(StoredToken, Labels)>, StoreError> {
                let rows = sqlx::query(
                    "SELECT id, secret_hash, created_at_ms, expires_at_ms, single_use, used, revoked, labels
                     FROM join_tokens ORDER BY created_at_ms, id",
                )
                .fetch_all(pool)
                .await?;
                rows.into_iter()
                    .map(|row| {
                        let labels = match row.get::<Option<Vec<u8>>, _>("labels") {
                            Some(bytes) => decode(&bytes, "join token labels")?,
                            None => Labels::new(),
                        };
                        let token = StoredToken {
                            id: row.get("id"),
                            secret_hash: row.get("secret_hash"),
                            created_at_ms: to_u64(row.get("created_at_ms")),
                            expires_at_ms: row.get::<Option<i64>, _>("expires_at_ms").map(to_u64),
                            single_use: row.get("single_use"),
                            used: row.get("used"),
                            revoked: row.get("revoked"),
                        };
                        Ok((token, labels))
                    })
                    .collect()
            }

            pub(crate) async fn revoke(pool: &Pool, id: &str) -> Result<bool, StoreError> {
                let done = sqlx::query("UPDATE join_tokens SET revoked = TRUE WHERE id = $1")
                    .bind(id)
                    .execute(pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }
        }
    };
}

tokens!(sqlite, sqlx::Sqlite);
tokens!(postgres, sqlx::Postgres);

impl Store {
    /// Stores a new token with its labels, committed when this returns.
    pub(crate) async fn insert_token(
        &self,
        token: &StoredToken,
        labels: &Labels,
    ) -> Result<(), StoreError> {
        on_pool!(&self.pool, self::insert(token, labels))
    }

    /// Every token, oldest first, with its labels.
    pub(crate) async fn tokens(&self) -> Result<Vec<(StoredToken, Labels)>, StoreError> {
        on_pool!(&self.pool, self::list())
    }

    /// Revokes a token: no node joins with it any more. `false` when there is no such token.
    pub(crate) async fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        on_pool!(&self.pool, self::revoke(id))
    }
}
