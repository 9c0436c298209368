//! A node's identity as the head decided it: the name it joined under and the labels of its
//! join token (which override the labels the node declares), and the name a token binds its
//! node to. The same SQL compiled for each backend, as in `backend.rs`.

use std::collections::BTreeMap;

use rgrid_core::NodeId;

use super::{Pool, Store, StoreError};

/// Labels, as a token gives them.
pub(crate) type Labels = BTreeMap<String, String>;

/// One module per backend with the same functions over that backend's pool.
macro_rules! identity {
    ($name:ident, $db:ty) => {
        pub(crate) mod $name {
            use rgrid_core::NodeId;
            use sqlx::Row as _;

            use super::Labels;
            use crate::store::{decode, parse_id, StoreError};

            type Pool = sqlx::Pool<$db>;

            pub(crate) async fn node(
                pool: &Pool,
                id: NodeId,
            ) -> Result<Option<(String, Labels)>, StoreError> {
                let row = sqlx::query("SELECT name, token_labels FROM nodes WHERE id = $1")
                    .bind(id.to_string())
                    .fetch_optional(pool)
                    .await?;
                let Some(row) = row else { return Ok(None) };
                let labels = match row.get::<Option<Vec<u8>>, _>("token_labels") {
                    Some(bytes) => decode(&bytes, "token labels")?,
                    None => Labels::new(),
                };
                Ok(Some((row.get("name"), labels)))
            }

            pub(crate) async fn token_labels(
                pool: &Pool,
            ) -> Result<Vec<(NodeId, Labels)>, StoreError> {
                let rows = sqlx::query(
                    "SELECT id, token_labels FROM nodes WHERE token_labels IS NOT NULL",
                )
                .fetch_all(pool)
                .await?;
                rows.into_iter()
                    .map(|row| {
                        let id = parse_id(row.get("id"), "node id")?;
                        let bytes: Vec<u8> = row.get("token_labels");
                        Ok((id, decode(&bytes, "token labels")?))
                    })
                    .collect()
            }

            pub(crate) async fn bind_token(
                pool: &Pool,
                token: &str,
                name: &str,
            ) -> Result<(), StoreError> {
                sqlx::query("UPDATE join_tokens SET node_name = $1 WHERE id = $2")
                    .bind(name)
                    .bind(token)
                    .execute(pool)
                    .await?;
                Ok(())
            }
        }
    };
}

identity!(sqlite, sqlx::Sqlite);
identity!(postgres, sqlx::Postgres);

impl Store {
    /// The name node `id` joined under and its token's labels; `None` when it is not known
    /// (never joined, or removed).
    pub(crate) async fn node_identity(
        &self,
        id: NodeId,
    ) -> Result<Option<(String, Labels)>, StoreError> {
        on_pool!(&self.pool, self::node(id))
    }

    /// The token labels of every node that joined with a labelled token.
    pub(crate) async fn token_labels(&self) -> Result<Vec<(NodeId, Labels)>, StoreError> {
        on_pool!(&self.pool, self::token_labels())
    }

    /// Binds join token `token` to a node name: the node that joins with it is called `name`,
    /// whatever it asks (the autoscaler's server tokens, bound to the server's name).
    pub(crate) async fn bind_token(&self, token: &str, name: &str) -> Result<(), StoreError> {
        on_pool!(&self.pool, self::bind_token(token, name))
    }
}
