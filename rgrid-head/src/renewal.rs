//! Certificate renewal over a live connection: a node asks on its control stream
//! ([`NodeMessage::Renew`](rgrid_core::protocol::NodeMessage::Renew)), a client with a request
//! of its own ([`Request::Renew`](rgrid_core::protocol::Request::Renew)). The head signs the
//! CSR's key with the identity of the certificate the peer connected with (never anything the
//! CSR says), records the new certificate, and answers. Nothing else of the session changes.
//!
//! A renewal is granted only to a certificate past half its life (the holder asks at two
//! thirds), so a peer cannot mint certificates at will. A node's superseded certificates are
//! revoked once it opens a session with the renewed one ([`supersede`]): revoking at once would
//! lock out a node whose answer was lost with its connection.

use std::time::Duration;

use rgrid_core::time::unix_ms;
use rgrid_core::tls::{CertInfo, ClientRole, PeerIdentity};
use rgrid_core::NodeId;

use crate::server::Shared;

/// How long the certificates the head signs are valid (`node_cert_lifetime`,
/// `client_cert_lifetime`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lifetimes {
    pub node: Duration,
    pub client: Duration,
}

/// Why `current` may not be renewed now; `None` when it may.
fn refusal(current: &CertInfo) -> Option<String> {
    (!current.renewable(unix_ms())).then(|| {
        format!(
            "certificate {} is not due for renewal (it expires at {}; renewals are granted past half its life)",
            current.serial,
            current.expires()
        )
    })
}

/// Signs `csr_pem` as `node`, valid for the node lifetime, and records it.
pub(crate) async fn renew_node(
    node: NodeId,
    current: &CertInfo,
    csr_pem: &str,
    shared: &Shared,
) -> Result<String, String> {
    if let Some(message) = refusal(current) {
        return Err(message);
    }
    let cert = shared
        .ca
        .sign_node_csr(csr_pem, node, shared.lifetimes.node)
        .map_err(|e| format!("bad certificate signing request: {e}"))?;
    record(&cert, &PeerIdentity::Node(node), None, shared).await?;
    tracing::info!(node = %node, old = %current.serial, "renewed the node's certificate");
    Ok(cert)
}

/// Signs `csr_pem` as client `name` with `role`, valid for the client lifetime, and records it.
pub(crate) async fn renew_client(
    name: &str,
    role: ClientRole,
    current: &CertInfo,
    csr_pem: &str,
    shared: &Shared,
) -> Result<String, String> {
    if let Some(message) = refusal(current) {
        return Err(message);
    }
    let subject = PeerIdentity::Client(name.to_owned());
    let cert = shared
        .ca
        .renew_client_csr(csr_pem, &subject.to_string(), role, shared.lifetimes.client)
        .map_err(|e| format!("bad certificate signing request: {e}"))?;
    record(&cert, &subject, Some(role), shared).await?;
    tracing::info!(client = %name, %role, old = %current.serial, "renewed a client certificate");
    Ok(cert)
}

async fn record(
    cert: &str,
    subject: &PeerIdentity,
    role: Option<ClientRole>,
    shared: &Shared,
) -> Result<(), String> {
    crate::credentials::record_certificate(&shared.store, cert, subject, role)
        .await
        .map_err(|e| format!("cannot record the renewed certificate: {e}"))
}

/// A node's session opened with `current`: its certificates issued before this one are revoked
/// (a renewal's predecessor has done its part). A failure is logged; the session goes on.
pub(crate) async fn supersede(node: NodeId, current: &CertInfo, shared: &Shared) {
    let subject = PeerIdentity::Node(node).to_string();
    match shared
        .store
        .supersede_certificates(&subject, &current.serial, unix_ms())
        .await
    {
        Ok(revoked) if revoked.is_empty() => {}
        Ok(revoked) => {
            shared.revoked.add_serials(revoked.iter().cloned());
            tracing::info!(node = %node, revoked = ?revoked, "revoked the node's renewed certificates");
        }
        Err(err) => {
            tracing::warn!(node = %node, error = %err, "cannot revoke the node's renewed certificates")
        }
    }
}
