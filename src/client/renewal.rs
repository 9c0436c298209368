//! Client certificate renewal: a client that connects with a certificate past two thirds of its
//! life asks the head for a new one for the same key ([`Request::Renew`]) and rewrites its
//! `client.toml` atomically, so the next connection presents it. The name and role stay those
//! of the old certificate (the head takes them from it). A file that cannot be rewritten keeps
//! the old certificate, with a warning; it is renewed at a later connection or expires.

use std::path::Path;

use rgrid_core::protocol::{Request, Response};
use rgrid_core::time::unix_ms;
use rgrid_core::tls::{
    pem_certs, renewal_csr, spki_sha256, write_private_file, CertInfo, ClientFile,
};

use super::{Client, ClientError};

impl Client {
    /// Asks the head to renew the certificate of `file` (this connection's): returns the
    /// credentials with the new certificate, same key. The head grants it past half the
    /// certificate's life only.
    pub async fn renew(&self, file: &ClientFile) -> Result<ClientFile, ClientError> {
        let csr_pem = renewal_csr(&file.key_pem)?;
        let cert_pem = match self.call(Request::Renew { csr_pem }).await? {
            Response::Renewed { cert_pem } => cert_pem,
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        };
        let new = pem_certs(&cert_pem, "renewed certificate")?;
        let old = pem_certs(&file.cert_pem, "client certificate")?;
        if spki_sha256(&new[0]).is_none() || spki_sha256(&new[0]) != spki_sha256(&old[0]) {
            return Err(ClientError::Unexpected(
                "the renewed certificate is not for this client's key".into(),
            ));
        }
        Ok(ClientFile {
            cert_pem,
            ..file.clone()
        })
    }
}

/// Renews the certificate of `file` (read from `path`) when it is due, rewriting `path`.
/// Failures are warnings: the connection is good with the current certificate.
pub(super) async fn renew_if_due(client: &Client, path: &Path, file: &ClientFile) {
    let Ok(info) = CertInfo::from_pem(&file.cert_pem, "client certificate") else {
        return;
    };
    if !info.wants_renewal(unix_ms()) {
        return;
    }
    if let Err(err) = writable(path) {
        tracing::warn!(path = %path.display(), expires = %info.expires(), error = %err, "the client certificate is due for renewal but its file cannot be rewritten; it is kept until it expires");
        return;
    }
    let renewed = match client.renew(file).await {
        Ok(renewed) => renewed,
        Err(err) => {
            tracing::warn!(path = %path.display(), expires = %info.expires(), error = %err, "could not renew the client certificate");
            return;
        }
    };
    let written = toml::to_string(&renewed)
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|text| write_private_file(path, &text));
    match written {
        Ok(()) => tracing::info!(path = %path.display(), "renewed the client certificate"),
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "could not write the renewed client certificate")
        }
    }
}

/// Whether `path` can be replaced: the file is writable and its directory takes a new file.
fn writable(path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new().append(true).open(path)?;
    let probe = path.with_extension(format!(
        "probe-{:016x}",
        u64::from_le_bytes(rgrid_core::tls::random_bytes::<8>())
    ));
    rgrid_core::tls::create_private_file(&probe)?;
    std::fs::remove_file(&probe)
}
