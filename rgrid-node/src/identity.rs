//! The node's identity in its state dir: `node.key`, `node.pem`, `ca.pem`, `node-id`. The first
//! start joins with the token (pinning the CA by the token's hash, sending a CSR); later starts
//! reuse the certificate and need no token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rgrid_core::protocol::{Request, Response};
use rgrid_core::tls::{ca_pin, join_config, node_csr, write_private_file, Identity, JoinToken};
use rgrid_core::transport::{call, connect, TransportError};
use rgrid_core::NodeId;

/// The node's credentials.
#[derive(Clone, Debug)]
pub struct NodeCredentials {
    pub node_id: NodeId,
    pub ca_pem: String,
    pub identity: Identity,
}

/// Why the node could not get an identity.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the node has no certificate yet and no --token-file to join with")]
    NoToken,
    #[error("join token in {path}: {source}")]
    Token {
        path: PathBuf,
        source: rgrid_core::tls::TlsError,
    },
    #[error(transparent)]
    Tls(#[from] rgrid_core::tls::TlsError),
    #[error("cannot reach the head to join: {0}")]
    Transport(#[from] TransportError),
    #[error("the head refused the join: {0}")]
    Refused(String),
    #[error("the head answered the join with something else: {0}")]
    Unexpected(String),
    #[error("the CA the head sent does not match the join token's pin")]
    CaMismatch,
    #[error("state dir {0} holds a corrupt node-id")]
    CorruptId(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JoinError + '_ {
    move |source| JoinError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Loads the node's credentials, joining with the token on first start.
pub async fn load_or_join(
    state_dir: &Path,
    head: SocketAddr,
    token_file: Option<&Path>,
    name: &str,
) -> Result<NodeCredentials, JoinError> {
    rgrid_core::tls::create_private_dir(state_dir).map_err(io(state_dir))?;
    let id_path = state_dir.join("node-id");
    if id_path.exists() {
        return load(state_dir);
    }
    let token_file = token_file.ok_or(JoinError::NoToken)?;
    let text = std::fs::read_to_string(token_file).map_err(io(token_file))?;
    let token = JoinToken::parse(&text).map_err(|source| JoinError::Token {
        path: token_file.to_owned(),
        source,
    })?;
    let creds = join(head, &token, name).await?;
    save(state_dir, &creds)?;
    tracing::info!(node = %creds.node_id, "joined the cluster");
    Ok(creds)
}

/// Joins: connects without a client certificate, pinning the head's CA by the token.
pub async fn join(
    head: SocketAddr,
    token: &JoinToken,
    name: &str,
) -> Result<NodeCredentials, JoinError> {
    let (key_pem, csr_pem) = node_csr()?;
    let (endpoint, connection) = connect(head, join_config(token)?, "rgrid-node").await?;
    let request = Request::Join(rgrid_core::protocol::JoinRequest {
        token: token.encode(),
        csr_pem,
        name: name.to_owned(),
    });
    let response = call(&connection, &request).await;
    connection.close(0u32.into(), b"joined");
    endpoint.wait_idle().await;
    match response? {
        Response::Joined(reply) => {
            if ca_pin(&reply.ca_pem)? != token.ca_hash {
                return Err(JoinError::CaMismatch);
            }
            Ok(NodeCredentials {
                node_id: reply.node_id,
                ca_pem: reply.ca_pem,
                identity: Identity {
                    cert_pem: reply.cert_pem,
                    key_pem,
                },
            })
        }
        Response::Error(e) => Err(JoinError::Refused(e.message)),
        other => Err(JoinError::Unexpected(format!("{other:?}"))),
    }
}

fn load(dir: &Path) -> Result<NodeCredentials, JoinError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(io(&path))
    };
    let node_id = read("node-id")?
        .trim()
        .parse()
        .map_err(|_| JoinError::CorruptId(dir.to_owned()))?;
    Ok(NodeCredentials {
        node_id,
        ca_pem: read("ca.pem")?,
        identity: Identity {
            cert_pem: read("node.pem")?,
            key_pem: read("node.key")?,
        },
    })
}

/// Replaces `node.pem` with a renewed certificate (for the same key), atomically.
pub(crate) fn save_cert(dir: &Path, cert_pem: &str) -> Result<(), JoinError> {
    let path = dir.join("node.pem");
    write_private_file(&path, cert_pem).map_err(io(&path))
}

fn save(dir: &Path, creds: &NodeCredentials) -> Result<(), JoinError> {
    let write = |name: &str, contents: &str| {
        let path = dir.join(name);
        write_private_file(&path, contents).map_err(io(&path))
    };
    write("node.key", &creds.identity.key_pem)?;
    write("node.pem", &creds.identity.cert_pem)?;
    write("ca.pem", &creds.ca_pem)?;
    // Last: its presence means the others are complete.
    write("node-id", &creds.node_id.to_string())
}
