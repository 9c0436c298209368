//! The node's certificate renewal: at two thirds of its certificate's life the session sends a
//! CSR for the node's key ([`NodeMessage::Renew`]); the head answers with a certificate
//! ([`HeadMessage::Renewed`](rgrid_core::protocol::HeadMessage::Renewed)) that [`accept`]
//! checks (this node's identity, this node's key), writes atomically over `node.pem` and makes
//! the one the next connection presents. The running session and its attempts are untouched.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use rgrid_core::protocol::NodeMessage;
use rgrid_core::time::unix_ms;
use rgrid_core::tls::{pem_certs, renewal_csr, spki_sha256, CertInfo, PeerIdentity};

use crate::identity::{self, NodeCredentials};

/// Why a renewed certificate was not taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RenewError {
    #[error(transparent)]
    Tls(#[from] rgrid_core::tls::TlsError),
    #[error("the renewed certificate is not for this node ({0})")]
    NotOurs(String),
    #[error("the renewed certificate is not for this node's key")]
    OtherKey,
    #[error(transparent)]
    Save(#[from] identity::JoinError),
}

/// When `creds` should be renewed (now, when it is due). A certificate that cannot be read is
/// looked at again in a day (the head refuses it meanwhile, and says why).
pub(crate) fn due(creds: &NodeCredentials) -> Instant {
    let wait = CertInfo::from_pem(&creds.identity.cert_pem, "node certificate")
        .map_or(Duration::from_secs(24 * 3600), |info| {
            Duration::from_millis(info.renew_at_ms().saturating_sub(unix_ms()))
        });
    after(wait)
}

/// Now plus `wait`, however long.
pub(crate) fn after(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// How long to wait before asking again when a renewal got no answer: a twentieth of the
/// certificate's life, between 1 s and a minute.
pub(crate) fn retry_after(creds: &NodeCredentials) -> Duration {
    let life = CertInfo::from_pem(&creds.identity.cert_pem, "node certificate")
        .map_or(0, |i| i.not_after_ms.saturating_sub(i.not_before_ms));
    Duration::from_millis(life / 20).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// The renewal request for `creds`: a CSR for the key the node has.
pub(crate) fn request(creds: &NodeCredentials) -> Result<NodeMessage, RenewError> {
    Ok(NodeMessage::Renew {
        csr_pem: renewal_csr(&creds.identity.key_pem)?,
    })
}

/// Checks the head's renewed certificate and saves it (`node.pem`, atomically): the new
/// credentials, for the next connection.
pub(crate) fn accept(
    state_dir: &Path,
    creds: &NodeCredentials,
    cert_pem: String,
) -> Result<NodeCredentials, RenewError> {
    let new = pem_certs(&cert_pem, "renewed certificate")?;
    let old = pem_certs(&creds.identity.cert_pem, "node certificate")?;
    let subject = PeerIdentity::from_cert(&new[0]);
    if subject != Some(PeerIdentity::Node(creds.node_id)) {
        return Err(RenewError::NotOurs(format!("{subject:?}")));
    }
    if spki_sha256(&new[0]).is_none() || spki_sha256(&new[0]) != spki_sha256(&old[0]) {
        return Err(RenewError::OtherKey);
    }
    identity::save_cert(state_dir, &cert_pem)?;
    let mut renewed = creds.clone();
    renewed.identity.cert_pem = cert_pem;
    Ok(renewed)
}
