//! The head's own server certificate: issued at start for `server_cert_lifetime`, and issued
//! again at two thirds of it into the TLS configuration in place ([`ServerCert`]): the next
//! handshake presents the new one, while the endpoint and every connection go on. Nodes and
//! clients verify it against the cluster CA, so a new key and serial change nothing for them.

use std::sync::Arc;
use std::time::Duration;

use rgrid_core::tls::{CertInfo, ClusterCa, Identity, ServerCert, TlsError};
use tokio_util::sync::CancellationToken;

/// A new server certificate valid for `lifetime`, logged.
fn issue(ca: &ClusterCa, lifetime: Duration) -> Result<Identity, TlsError> {
    let identity = ca.issue_server(lifetime)?;
    let info = CertInfo::from_pem(&identity.cert_pem, "server certificate")?;
    tracing::info!(serial = %info.serial, expires = %info.expires(), "issued the head's server certificate");
    Ok(identity)
}

/// The server certificate the head starts with.
pub(crate) fn first(ca: &ClusterCa, lifetime: Duration) -> Result<Arc<ServerCert>, TlsError> {
    Ok(Arc::new(ServerCert::new(&issue(ca, lifetime)?)?))
}

/// Issues a new certificate into `cert` at two thirds of `lifetime` after the last one, until
/// `shutdown`. A failure is retried after a thirtieth of it (the current certificate has a
/// third left).
pub(crate) async fn renew(
    ca: Arc<ClusterCa>,
    cert: Arc<ServerCert>,
    lifetime: Duration,
    shutdown: CancellationToken,
) {
    let renew_after = lifetime / 3 * 2;
    let mut wait = renew_after;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = match issue(&ca, lifetime).and_then(|identity| cert.replace(&identity)) {
            Ok(()) => renew_after,
            Err(err) => {
                tracing::warn!(error = %err, "cannot renew the head's server certificate; retrying");
                lifetime / 30
            }
        };
    }
}
