//! Revoked credentials as stored: nodes removed from the cluster. The same SQL compiled for
//! each backend, as in `backend.rs`.

use rgrid_core::NodeId;

use super::{Pool, Store, StoreError};

/// One module per backend with the same functions over that backend's pool.
macro_rules! revocations {
    ($name:ident, $db:ty) => {
        pub(crate) mod $name {
            use rgrid_core::NodeId;
            use sqlx::Row as _;

            use crate::store::{parse_id, to_i64, StoreError};

            type Pool = sqlx::Pool<$db>;

            pub(crate) async fn revoke_nodes(
                pool: &Pool,
                nodes: &[NodeId],
                now_ms: u64,
                reason: &str,
            ) -> Result<(), StoreError> {
                let mut tx = pool.begin().await?;
                for node in nodes {
                    sqlx::query(
                        "INSERT INTO revocations (kind, id, revoked_at_ms, reason)
                         VALUES ('node', $1, $2, $3) ON CONFLICT (kind, id) DO NOTHING",
                    )
                    .bind(node.to_string())
                    .bind(to_i64(now_ms))
                    .bind(reason)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("DELETE FROM nodes WHERE id = $1")
                        .bind(node.to_string())
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            pub(crate) async fn revoked_nodes(pool: &Pool) -> Result<Vec<NodeId>, StoreError> {
                let rows = sqlx::query("SELECT id FROM revocations WHERE kind = 'node'")
                    .fetch_all(pool)
                    .await?;
                rows.into_iter()
                    .map(|row| parse_id(row.get("id"), "revoked node id"))
                    .collect()
            }
        }
    };
}

revocations!(sqlite, sqlx::Sqlite);
revocations!(postgres, sqlx::Postgres);

impl Store {
    /// Revokes `nodes` and forgets them (their rows go), in one transaction, durable when this
    /// returns.
    pub(crate) async fn revoke_nodes(
        &self,
        nodes: &[NodeId],
        now_ms: u64,
        reason: &str,
    ) -> Result<(), StoreError> {
        on_pool!(&self.pool, self::revoke_nodes(nodes, now_ms, reason))
    }

    /// Every revoked node.
    pub(crate) async fn revoked_nodes(&self) -> Result<Vec<NodeId>, StoreError> {
        on_pool!(&self.pool, self::revoked_nodes())
    }
}
