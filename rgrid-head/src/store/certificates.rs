//! Certificates the head signed, and their revocation by serial: clients listed and revoked by
//! name, a node's renewed certificates revoked once it uses the new one. Both are pruned once
//! the certificate has expired (the TLS handshake refuses it then, revoked or not). The same
//! SQL compiled for each backend, as in `backend.rs`.

use super::{Pool, Store, StoreError};

/// A certificate the head signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IssuedCert {
    /// Hex, as [`rgrid_core::tls::CertInfo`] reads it.
    pub serial: String,
    /// `node:<id>` or `client:<name>`.
    pub subject: String,
    /// A client's role; `None` for nodes.
    pub role: Option<String>,
    pub issued_at_ms: u64,
    pub expires_at_ms: u64,
}

/// A certificate and whether it is revoked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ListedCert {
    pub cert: IssuedCert,
    pub revoked: bool,
}

/// What a prune deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pruned {
    pub certificates: u64,
    pub revocations: u64,
}

/// One module per backend with the same functions over that backend's pool.
macro_rules! certificates {
    ($name:ident, $db:ty) => {
        pub(crate) mod $name {
            use sqlx::Row as _;

            use super::{IssuedCert, ListedCert, Pruned};
            use crate::store::{to_i64, to_u64, StoreError};

            type Pool = sqlx::Pool<$db>;

            pub(crate) async fn record(pool: &Pool, cert: &IssuedCert) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO certificates (serial, subject, role, issued_at_ms, expires_at_ms)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (serial) DO NOTHING",
                )
                .bind(&cert.serial)
                .bind(&cert.subject)
                .bind(&cert.role)
                .bind(to_i64(cert.issued_at_ms))
                .bind(to_i64(cert.expires_at_ms))
                .execute(pool)
                .await?;
                Ok(())
            }

            pub(crate) async fn list(
                pool: &Pool,
                prefix: &str,
            ) -> Result<Vec<ListedCert>, StoreError> {
                let rows = sqlx::query(
                    "SELECT c.serial, c.subject, c.role, c.issued_at_ms, c.expires_at_ms,
                            r.id IS NOT NULL AS revoked
                     FROM certificates c
                     LEFT JOIN revocations r ON r.kind = 'serial' AND r.id = c.serial
                     WHERE substr(c.subject, 1, length($1)) = $1
                     ORDER BY c.subject, c.issued_at_ms",
                )
                .bind(prefix)
                .fetch_all(pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|row| ListedCert {
                        cert: IssuedCert {
                            serial: row.get("serial"),
                            subject: row.get("subject"),
                            role: row.get("role"),
                            issued_at_ms: to_u64(row.get("issued_at_ms")),
                            expires_at_ms: to_u64(row.get("expires_at_ms")),
                        },
                        revoked: row.get("revoked"),
                    })
                    .collect())
            }

            /// Revokes the unexpired, unrevoked certificates of `subject` that `keep` (when
            /// given) does not name and that were issued before it; returns their serials.
            /// One statement: a read that turned into a write would conflict with the head's
            /// writer in SQLite's WAL mode.
            pub(crate) async fn revoke_subject(
                pool: &Pool,
                subject: &str,
                keep: Option<&str>,
                now_ms: u64,
                reason: &str,
            ) -> Result<Vec<String>, StoreError> {
                let rows = sqlx::query(
                    "INSERT INTO revocations (kind, id, revoked_at_ms, reason, expires_at_ms)
                     SELECT 'serial', c.serial, $2, $4, c.expires_at_ms FROM certificates c
                     WHERE c.subject = $1 AND c.expires_at_ms > $2
                       AND ($3 IS NULL OR (c.serial <> $3 AND c.issued_at_ms <=
                            (SELECT k.issued_at_ms FROM certificates k WHERE k.serial = $3)))
                     ON CONFLICT (kind, id) DO NOTHING
                     RETURNING id",
                )
                .bind(subject)
                .bind(to_i64(now_ms))
                .bind(keep)
                .bind(reason)
                .fetch_all(pool)
                .await?;
                Ok(rows.into_iter().map(|row| row.get("id")).collect())
            }

            /// Deletes the certificates, and the revocations by serial, that expired before
            /// `before_ms`, in one transaction. Revocations of nodes are not time-bound: they
            /// stay.
            pub(crate) async fn prune(pool: &Pool, before_ms: u64) -> Result<Pruned, StoreError> {
                let mut tx = pool.begin().await?;
                let certificates = sqlx::query("DELETE FROM certificates WHERE expires_at_ms < $1")
                    .bind(to_i64(before_ms))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let revocations = sqlx::query(
                    "DELETE FROM revocations WHERE kind = 'serial' AND expires_at_ms < $1",
                )
                .bind(to_i64(before_ms))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                Ok(Pruned {
                    certificates,
                    revocations,
                })
            }

            pub(crate) async fn revoked_serials(
                pool: &Pool,
                now_ms: u64,
            ) -> Result<Vec<String>, StoreError> {
                let rows = sqlx::query(
                    "SELECT id FROM revocations WHERE kind = 'serial' AND expires_at_ms > $1",
                )
                .bind(to_i64(now_ms))
                .fetch_all(pool)
                .await?;
                Ok(rows.into_iter().map(|row| row.get("id")).collect())
            }
        }
    };
}

certificates!(sqlite, sqlx::Sqlite);
certificates!(postgres, sqlx::Postgres);

impl Store {
    /// Records a certificate the head signed, durable when this returns.
    pub(crate) async fn record_certificate(&self, cert: &IssuedCert) -> Result<(), StoreError> {
        on_pool!(&self.pool, self::record(cert))
    }

    /// Every recorded certificate whose subject starts with `prefix` (`client:`), by subject
    /// then age.
    pub(crate) async fn certificates(&self, prefix: &str) -> Result<Vec<ListedCert>, StoreError> {
        on_pool!(&self.pool, self::list(prefix))
    }

    /// Revokes every unexpired certificate of `subject`; returns their serials.
    pub(crate) async fn revoke_certificates(
        &self,
        subject: &str,
        now_ms: u64,
        reason: &str,
    ) -> Result<Vec<String>, StoreError> {
        on_pool!(
            &self.pool,
            self::revoke_subject(subject, None, now_ms, reason)
        )
    }

    /// Revokes the certificates of `subject` issued before `current` (a renewal's
    /// predecessors); returns their serials. None when `current` is not recorded.
    pub(crate) async fn supersede_certificates(
        &self,
        subject: &str,
        current: &str,
        now_ms: u64,
    ) -> Result<Vec<String>, StoreError> {
        on_pool!(
            &self.pool,
            self::revoke_subject(subject, Some(current), now_ms, "renewed")
        )
    }

    /// The serials revoked that have not expired at `now_ms`.
    pub(crate) async fn revoked_serials(&self, now_ms: u64) -> Result<Vec<String>, StoreError> {
        on_pool!(&self.pool, self::revoked_serials(now_ms))
    }

    /// Deletes the certificates and the revocations by serial that expired before `before_ms`
    /// (revoked nodes stay).
    pub(crate) async fn prune_certificates(&self, before_ms: u64) -> Result<Pruned, StoreError> {
        on_pool!(&self.pool, self::prune(before_ms))
    }
}

#[cfg(test)]
mod tests {
    use rgrid_core::NodeId;

    use super::*;
    use crate::store::RetryPolicy;

    #[tokio::test]
    async fn expired_certificates_are_pruned_on_sqlite() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        pruning(&format!(
            "sqlite://{}",
            dir.path().join("head.db").display()
        ))
        .await;
    }

    #[tokio::test]
    async fn expired_certificates_are_pruned_on_postgres() {
        if let Some(url) = crate::store::test_postgres_database().await {
            pruning(&url).await;
        }
    }

    fn cert(serial: &str, subject: &str, expires_at_ms: u64) -> IssuedCert {
        IssuedCert {
            serial: serial.into(),
            subject: subject.into(),
            role: Some("submit".into()),
            issued_at_ms: 0,
            expires_at_ms,
        }
    }

    /// An expired certificate and its revocation go; an unexpired one and its revocation stay,
    /// and so does a revoked node.
    async fn pruning(url: &str) {
        let tracker = tokio_util::task::TaskTracker::new();
        let store = Store::open(url, RetryPolicy::default(), &tracker)
            .await
            .expect("a store");
        for row in [
            cert("01", "client:old", 1_000),
            cert("02", "client:new", 10_000),
            cert("03", "client:kept", 10_000),
        ] {
            store.record_certificate(&row).await.expect("recorded");
        }
        for subject in ["client:old", "client:new"] {
            store
                .revoke_certificates(subject, 500, "test")
                .await
                .expect("revoked");
        }
        let node = NodeId::new();
        store
            .revoke_nodes(&[node], 500, "test")
            .await
            .expect("revoked");

        let pruned = store.prune_certificates(5_000).await.expect("pruned");
        assert_eq!(
            pruned,
            Pruned {
                certificates: 1,
                revocations: 1
            }
        );
        let left: Vec<(String, bool)> = store
            .certificates("client:")
            .await
            .expect("listed")
            .into_iter()
            .map(|c| (c.cert.serial, c.revoked))
            .collect();
        assert_eq!(left, vec![("03".into(), false), ("02".into(), true)]);
        assert_eq!(
            store.revoked_serials(0).await.expect("serials"),
            vec!["02".to_owned()]
        );
        assert_eq!(store.revoked_nodes().await.expect("nodes"), vec![node]);
        // Nothing more to prune at the same time.
        assert_eq!(
            store.prune_certificates(5_000).await.expect("pruned"),
            Pruned::default()
        );
    }
}
