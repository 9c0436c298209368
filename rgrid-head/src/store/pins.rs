//! Pinned objects as stored: what retention keeps until a client unpins it. The same SQL
//! compiled for each backend, as in `backend.rs`.

use rgrid_core::object::ObjectRef;

use super::{Pool, Store, StoreError};

/// One module per backend with the same functions over that backend's pool.
macro_rules! pins {
    ($name:ident, $db:ty) => {
        pub(crate) mod $name {
            use rgrid_core::object::ObjectRef;
            use sqlx::Row as _;

            use crate::store::{parse_id, to_i64, StoreError};

            type Pool = sqlx::Pool<$db>;

            pub(crate) async fn pin_object(
                pool: &Pool,
                object: &ObjectRef,
                by: &str,
                now_ms: u64,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO object_pins (object, pinned_at_ms, pinned_by)
                     VALUES ($1, $2, $3) ON CONFLICT (object) DO NOTHING",
                )
                .bind(object.to_string())
                .bind(to_i64(now_ms))
                .bind(by)
                .execute(pool)
                .await?;
                Ok(())
            }

            pub(crate) async fn unpin_object(
                pool: &Pool,
                object: &ObjectRef,
            ) -> Result<(), StoreError> {
                sqlx::query("DELETE FROM object_pins WHERE object = $1")
                    .bind(object.to_string())
                    .execute(pool)
                    .await?;
                Ok(())
            }

            pub(crate) async fn pinned_objects(pool: &Pool) -> Result<Vec<ObjectRef>, StoreError> {
                let rows = sqlx::query("SELECT object FROM object_pins")
                    .fetch_all(pool)
                    .await?;
                rows.into_iter()
                    .map(|row| parse_id(row.get("object"), "pinned object"))
                    .collect()
            }
        }
    };
}

pins!(sqlite, sqlx::Sqlite);
pins!(postgres, sqlx::Postgres);

impl Store {
    /// Pins `object` (again: nothing changes), durable when this returns.
    pub(crate) async fn pin_object(
        &self,
        object: &ObjectRef,
        by: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        on_pool!(&self.pool, self::pin_object(object, by, now_ms))
    }

    /// Unpins `object` (not pinned: nothing changes), durable when this returns.
    pub(crate) async fn unpin_object(&self, object: &ObjectRef) -> Result<(), StoreError> {
        on_pool!(&self.pool, self::unpin_object(object))
    }

    /// Every pinned object.
    pub(crate) async fn pinned_objects(&self) -> Result<Vec<ObjectRef>, StoreError> {
        on_pool!(&self.pool, self::pinned_objects())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RetryPolicy;

    #[tokio::test]
    async fn pins_are_kept_once_and_removed_on_sqlite() {
        let dir = tempfile::tempdir().expect("a temp dir");
        pins(&format!(
            "sqlite://{}",
            dir.path().join("head.db").display()
        ))
        .await;
    }

    #[tokio::test]
    async fn pins_are_kept_once_and_removed_on_postgres() {
        if let Some(url) = crate::store::test_postgres_database().await {
            pins(&url).await;
        }
    }

    /// Pinning twice keeps one pin; unpinning what is not pinned changes nothing.
    async fn pins(url: &str) {
        let tracker = tokio_util::task::TaskTracker::new();
        let store = Store::open(url, RetryPolicy::default(), &tracker)
            .await
            .expect("a store");
        let (a, b) = (ObjectRef::of(b"a"), ObjectRef::of(b"b"));
        for object in [&a, &b, &a] {
            store
                .pin_object(object, "client:x", 1)
                .await
                .expect("pinned");
        }
        let mut pinned = store.pinned_objects().await.expect("listed");
        pinned.sort();
        let mut expected = vec![a, b];
        expected.sort();
        assert_eq!(pinned, expected);
        store.unpin_object(&a).await.expect("unpinned");
        store.unpin_object(&a).await.expect("unpinned again");
        assert_eq!(store.pinned_objects().await.expect("listed"), vec![b]);
    }
}
