//! Certificates the head signed, and their revocation by serial: clients listed and revoked by
//! name, a node's renewed certificates revoked once it uses the new one. The same SQL compiled
//! for each backend, as in `backend.rs`.

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

/// One module per backend with the same functions over that backend's pool.
macro_rules! certificates {
    ($name:ident, $db:ty) => {
        pub(crate) mod $name {
            use sqlx::Row as _;

            use super::{IssuedCert, ListedCert};
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
}
