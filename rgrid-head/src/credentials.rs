//! The head's credentials in its state dir: the cluster CA (`ca.pem`, `ca.key`), the join token
//! (`join-token`) and the admin client credentials (`client.toml`). Created on first start,
//! reused after.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rgrid_core::tls::{
    CertInfo, ClientFile, ClientRole, ClusterCa, JoinToken, PeerIdentity, TlsError,
};

use crate::store::{IssuedCert, Store, StoreError, StoredToken, Write};
use rgrid_core::time::unix_ms;

/// Credentials that could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("client.toml: {0}")]
    ClientFile(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CredentialsError + '_ {
    move |source| CredentialsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `contents` to `path`, readable by the owner only (keys and tokens).
fn write_private(path: &Path, contents: &str) -> Result<(), CredentialsError> {
    rgrid_core::tls::write_private_file(path, contents).map_err(io(path))
}

/// Loads the CA from the state dir; `None` when the head never started there.
pub(crate) fn load_ca(state_dir: &Path) -> Result<Option<ClusterCa>, CredentialsError> {
    let cert_path = state_dir.join("ca.pem");
    let key_path = state_dir.join("ca.key");
    if !cert_path.exists() {
        return Ok(None);
    }
    let cert = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
    let key = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
    Ok(Some(ClusterCa::load(&cert, &key)?))
}

/// Loads the CA from the state dir, creating it on first start.
pub(crate) fn load_or_create_ca(state_dir: &Path) -> Result<ClusterCa, CredentialsError> {
    if let Some(ca) = load_ca(state_dir)? {
        return Ok(ca);
    }
    let cert_path = state_dir.join("ca.pem");
    let key_path = state_dir.join("ca.key");
    let ca = ClusterCa::generate("rgrid")?;
    write_private(&key_path, &ca.key_pem())?;
    write_private(&cert_path, ca.cert_pem())?;
    tracing::info!(path = %cert_path.display(), "created the cluster CA");
    Ok(ca)
}

/// The secret that keys QUIC stateless resets (`STATE_DIR/reset-key`), created on first start.
pub(crate) fn load_or_create_reset_secret(state_dir: &Path) -> Result<Vec<u8>, CredentialsError> {
    let path = state_dir.join("reset-key");
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Some(secret) = hex::decode(text.trim()).ok().filter(|s| s.len() == 32) {
            return Ok(secret);
        }
    }
    let secret = rgrid_core::tls::random_bytes::<32>();
    write_private(&path, &hex::encode(secret))?;
    Ok(secret.to_vec())
}

/// A new join token valid for `ttl`, pinned to `ca`, and the row that stores the hash of its
/// secret.
pub(crate) fn new_join_token(
    ca: &ClusterCa,
    ttl: Option<Duration>,
    single_use: bool,
) -> Result<(JoinToken, StoredToken), CredentialsError> {
    let token = JoinToken::generate(&ca.fingerprint()?);
    let now = unix_ms();
    let stored = StoredToken {
        id: token.id.clone(),
        secret_hash: token.secret_hash(),
        created_at_ms: now,
        expires_at_ms: ttl.map(|ttl| now.saturating_add(ttl.as_millis() as u64)),
        single_use,
        used: false,
        revoked: false,
    };
    Ok((token, stored))
}

/// Creates a join token valid for `ttl` and stores the hash of its secret.
pub(crate) async fn create_join_token(
    store: &Store,
    ca: &ClusterCa,
    ttl: Option<Duration>,
    single_use: bool,
) -> Result<JoinToken, CredentialsError> {
    let (token, stored) = new_join_token(ca, ttl, single_use)?;
    store.write(vec![Write::InsertToken(stored)]).await?;
    Ok(token)
}

/// Keeps `STATE_DIR/join-token` valid for at least half of `ttl`: a new token when the file is
/// missing, or its token is revoked, expired, or past half its life (renewed at each start).
pub(crate) async fn ensure_join_token_file(
    state_dir: &Path,
    store: &Store,
    ca: &ClusterCa,
    ttl: Duration,
) -> Result<PathBuf, CredentialsError> {
    let path = state_dir.join("join-token");
    let renew_after = unix_ms().saturating_add(ttl.as_millis() as u64 / 2);
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(token) = JoinToken::parse(&text) {
            let stored = store.token(&token.id).await?;
            if stored
                .is_some_and(|t| !t.revoked && t.expires_at_ms.is_some_and(|e| e > renew_after))
            {
                return Ok(path);
            }
        }
    }
    let token = create_join_token(store, ca, Some(ttl), false).await?;
    write_private(&path, &format!("{}\n", token.encode()))?;
    tracing::info!(path = %path.display(), valid_for = ?ttl, "wrote a new join token");
    Ok(path)
}

/// Writes `STATE_DIR/client.toml` with admin credentials (kept across restarts while they are
/// not in their renewal window) and the address clients should use.
pub(crate) async fn write_client_file(
    state_dir: &Path,
    store: &Store,
    ca: &ClusterCa,
    head: &str,
    lifetime: Duration,
) -> Result<PathBuf, CredentialsError> {
    let path = state_dir.join("client.toml");
    let now = unix_ms();
    let existing = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| toml::from_str::<ClientFile>(&text).ok())
        .filter(|file| file.ca_pem == ca.cert_pem() && is_admin(file))
        .filter(|file| {
            CertInfo::from_pem(&file.cert_pem, "client certificate")
                .is_ok_and(|info| !info.wants_renewal(now))
        });
    let file = match existing {
        Some(file) => ClientFile {
            head: head.to_owned(),
            ..file
        },
        None => {
            let file = client_file(ca, "admin", ClientRole::Admin, head, lifetime)?;
            let admin = PeerIdentity::Client("admin".into());
            record_certificate(store, &file.cert_pem, &admin, Some(ClientRole::Admin)).await?;
            tracing::info!(path = %path.display(), "wrote new admin credentials");
            file
        }
    };
    write_client(&path, &file)?;
    Ok(path)
}

/// Do these credentials carry the admin role (files written before roles existed do not)?
fn is_admin(file: &ClientFile) -> bool {
    rgrid_core::tls::pem_certs(&file.cert_pem, "client")
        .ok()
        .and_then(|certs| certs.first().and_then(|c| ClientRole::from_cert(c)))
        == Some(ClientRole::Admin)
}

/// New credentials for client `name` with `role`, valid for `lifetime`, connecting to `head`.
pub(crate) fn client_file(
    ca: &ClusterCa,
    name: &str,
    role: ClientRole,
    head: &str,
    lifetime: Duration,
) -> Result<ClientFile, CredentialsError> {
    let identity = ca.issue_client(&format!("client:{name}"), role, lifetime)?;
    Ok(ClientFile {
        head: head.to_owned(),
        ca_pem: ca.cert_pem().to_owned(),
        cert_pem: identity.cert_pem,
        key_pem: identity.key_pem,
    })
}

/// Records a certificate the head signed for `subject` (with a client's `role`), so that it
/// can be listed (`rgrid-head client list`) and revoked by name or once renewed.
pub(crate) async fn record_certificate(
    store: &Store,
    cert_pem: &str,
    subject: &PeerIdentity,
    role: Option<ClientRole>,
) -> Result<(), CredentialsError> {
    let info = CertInfo::from_pem(cert_pem, "new certificate")?;
    let row = IssuedCert {
        serial: info.serial,
        subject: subject.to_string(),
        role: role.map(|r| r.as_str().to_owned()),
        issued_at_ms: info.not_before_ms,
        expires_at_ms: info.not_after_ms,
    };
    store.record_certificate(&row).await?;
    Ok(())
}

/// Writes a `client.toml`, readable by its owner only.
pub(crate) fn write_client(path: &Path, file: &ClientFile) -> Result<(), CredentialsError> {
    let text = toml::to_string(file).map_err(|e| CredentialsError::ClientFile(e.to_string()))?;
    write_private(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RetryPolicy;
    use tokio_util::task::TaskTracker;

    #[tokio::test]
    async fn the_operator_join_token_expires_and_is_renewed_at_start() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let tracker = TaskTracker::new();
        let url = format!("sqlite://{}", dir.path().join("rgrid.db").display());
        let store = Store::open(&url, RetryPolicy::default(), &tracker)
            .await
            .expect("the store opens");
        let ca = load_or_create_ca(dir.path()).expect("a CA");
        let day = Duration::from_secs(24 * 3600);
        let read = || {
            let path = dir.path().join("join-token");
            JoinToken::parse(&std::fs::read_to_string(path).expect("the file reads"))
                .expect("the token parses")
        };
        ensure_join_token_file(dir.path(), &store, &ca, day)
            .await
            .expect("a token is written");
        let first = read();
        let stored = store.token(&first.id).await.expect("read").expect("stored");
        let expires = stored.expires_at_ms.expect("it expires");
        let left = expires.saturating_sub(unix_ms());
        assert!(left > day.as_millis() as u64 - 60_000 && left <= day.as_millis() as u64);

        // Fresh: kept at the next start.
        ensure_join_token_file(dir.path(), &store, &ca, day)
            .await
            .expect("kept");
        assert_eq!(read().id, first.id);
        // With a longer ttl the same token is past half its life: renewed.
        ensure_join_token_file(dir.path(), &store, &ca, day * 4)
            .await
            .expect("renewed");
        let second = read();
        assert_ne!(second.id, first.id);
        // Revoked: renewed.
        assert!(store.revoke_token(&second.id).await.expect("revoked"));
        ensure_join_token_file(dir.path(), &store, &ca, day)
            .await
            .expect("renewed");
        assert_ne!(read().id, second.id);
        drop(store);
        tracker.close();
        tracker.wait().await;
    }
}
