//! Administration of a head's credentials from the command line (`rgrid-head token …`,
//! `rgrid-head client create|list|revoke …`): join tokens and client credentials, through the
//! head's own state dir and database, whether the head is running or stopped. A running head
//! sees a new or revoked token at the next join (it reads tokens from the database every time)
//! and a revoked client within a second (it reads revocations again that often).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rgrid_core::tls::{ClientFile, ClientRole, ClusterCa, PeerIdentity};
use tokio_util::task::TaskTracker;

use crate::config::HeadConfig;
use crate::credentials::{self, CredentialsError};
use crate::store::{RetryPolicy, Store, StoreError, StoredToken};
use rgrid_core::time::unix_ms;

/// Why an administrative command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0} holds no cluster CA (ca.pem): start rgrid-head once with this --state-dir, or point --state-dir at the head's")]
    NoCa(PathBuf),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no join token has the id {0:?}; `rgrid-head token list` shows them")]
    UnknownToken(String),
    #[error("{0:?} is not a client name: use 1 to 64 letters, digits, '.', '_' or '-'")]
    ClientName(String),
    #[error("{0} already exists; remove it or choose another --out")]
    Exists(PathBuf),
    #[error("no head address for the client file: pass --head HOST:PORT (or set `advertise`, or start the head once so it writes STATE_DIR/client.toml)")]
    NoHeadAddress,
    #[error(
        "no unexpired certificate of client {0:?} to revoke; `rgrid-head client list` shows them"
    )]
    UnknownClient(String),
}

/// A client certificate as `rgrid-head client list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ClientInfo {
    pub name: String,
    pub role: String,
    /// Hex: what a revocation names.
    pub serial: String,
    /// `valid`, `expired` or `revoked`.
    pub state: &'static str,
    pub issued_at_ms: u64,
    pub expires_at_ms: u64,
}

/// Where a join token stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenState {
    /// A node can join with it.
    Valid,
    /// Single-use and used.
    Used,
    Revoked,
    Expired,
}

impl std::fmt::Display for TokenState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Valid => "valid",
            Self::Used => "used",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        })
    }
}

/// A join token as `rgrid-head token list` shows it (its secret is never stored).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub state: TokenState,
    pub created_at_ms: u64,
    /// `None`: never expires.
    pub expires_at_ms: Option<u64>,
    pub single_use: bool,
    /// What the operator labelled it with (`--label K=V`).
    pub labels: BTreeMap<String, String>,
}

impl TokenInfo {
    fn new(token: &StoredToken, labels: BTreeMap<String, String>, now_ms: u64) -> Self {
        let state = if token.revoked {
            TokenState::Revoked
        } else if token.single_use && token.used {
            TokenState::Used
        } else if token.expires_at_ms.is_some_and(|e| e <= now_ms) {
            TokenState::Expired
        } else {
            TokenState::Valid
        };
        Self {
            id: token.id.clone(),
            state,
            created_at_ms: token.created_at_ms,
            expires_at_ms: token.expires_at_ms,
            single_use: token.single_use,
            labels,
        }
    }
}

/// A head's credentials, opened for administration.
pub struct Admin {
    state_dir: PathBuf,
    advertise: Option<String>,
    /// How long the client certificates it writes are valid (`client_cert_lifetime`).
    client_cert_lifetime: Duration,
    ca: ClusterCa,
    store: Store,
    tracker: TaskTracker,
}

impl Admin {
    /// Opens the state dir and database `config` names (the head need not run). Fails when the
    /// head never started with this state dir.
    pub async fn open(config: &HeadConfig) -> Result<Self, AdminError> {
        let state_dir = config.state_dir.clone();
        let ca = credentials::load_ca(&state_dir)?.ok_or(AdminError::NoCa(state_dir.clone()))?;
        let tracker = TaskTracker::new();
        let store = Store::open(&config.database_url(), RetryPolicy::default(), &tracker).await?;
        Ok(Self {
            state_dir,
            advertise: config.advertise.clone(),
            client_cert_lifetime: config.client_cert_lifetime,
            ca,
            store,
            tracker,
        })
    }

    /// Creates a join token valid for `ttl`; returns it encoded (`ID.SECRET.CAHASH`, shown this
    /// once) and as listed.
    pub async fn create_token(
        &self,
        ttl: Duration,
        single_use: bool,
        labels: BTreeMap<String, String>,
    ) -> Result<(String, TokenInfo), AdminError> {
        let (token, stored) = credentials::new_join_token(&self.ca, Some(ttl), single_use)?;
        self.store.insert_token(&stored, &labels).await?;
        tracing::info!(token = %stored.id, ?ttl, single_use, "created a join token");
        Ok((token.encode(), TokenInfo::new(&stored, labels, unix_ms())))
    }

    /// Every join token, oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, AdminError> {
        let now = unix_ms();
        let tokens = self.store.tokens().await?;
        Ok(tokens
            .into_iter()
            .map(|(token, labels)| TokenInfo::new(&token, labels, now))
            .collect())
    }

    /// Revokes a join token: no node joins with it any more (nodes that joined keep their
    /// certificates).
    pub async fn revoke_token(&self, id: &str) -> Result<(), AdminError> {
        if self.store.revoke_token(id).await? {
            tracing::info!(token = %id, "revoked a join token");
            Ok(())
        } else {
            Err(AdminError::UnknownToken(id.to_owned()))
        }
    }

    /// Writes credentials for client `name` with `role` to `out` (mode 0600), connecting to
    /// `head`, else to the head's `advertise` address, else to the address in the head's own
    /// `client.toml`. Never overwrites a file.
    pub async fn create_client(
        &self,
        name: &str,
        role: ClientRole,
        head: Option<&str>,
        out: &Path,
    ) -> Result<(), AdminError> {
        let valid = (1..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !valid {
            return Err(AdminError::ClientName(name.to_owned()));
        }
        if out.exists() {
            return Err(AdminError::Exists(out.to_owned()));
        }
        let head = match head.map(str::to_owned).or_else(|| self.advertise.clone()) {
            Some(head) => head,
            None => self.admin_file_head().ok_or(AdminError::NoHeadAddress)?,
        };
        let file =
            credentials::client_file(&self.ca, name, role, &head, self.client_cert_lifetime)?;
        credentials::record_certificate(
            &self.store,
            &file.cert_pem,
            &PeerIdentity::Client(name.to_owned()),
            Some(role),
        )
        .await?;
        credentials::write_client(out, &file)?;
        tracing::info!(client = %name, %role, path = %out.display(), "wrote client credentials");
        Ok(())
    }

    /// Every client certificate the head recorded (`client create`, renewals, the head's own
    /// admin credentials), by name then age.
    pub async fn clients(&self) -> Result<Vec<ClientInfo>, AdminError> {
        let now = unix_ms();
        let listed = self.store.certificates("client:").await?;
        Ok(listed
            .into_iter()
            .map(|listed| {
                let cert = listed.cert;
                let state = if listed.revoked {
                    "revoked"
                } else if cert.expires_at_ms <= now {
                    "expired"
                } else {
                    "valid"
                };
                ClientInfo {
                    name: cert
                        .subject
                        .strip_prefix("client:")
                        .unwrap_or(&cert.subject)
                        .to_owned(),
                    role: cert.role.unwrap_or_default(),
                    serial: cert.serial,
                    state,
                    issued_at_ms: cert.issued_at_ms,
                    expires_at_ms: cert.expires_at_ms,
                }
            })
            .collect())
    }

    /// Revokes every unexpired certificate of client `name` (renewed ones included): a running
    /// head refuses them within a second, at the handshake and on every request. Returns the
    /// revoked serials.
    pub async fn revoke_client(&self, name: &str) -> Result<Vec<String>, AdminError> {
        let serials = self
            .store
            .revoke_certificates(
                &format!("client:{name}"),
                unix_ms(),
                "revoked by an operator",
            )
            .await?;
        if serials.is_empty() {
            return Err(AdminError::UnknownClient(name.to_owned()));
        }
        tracing::info!(client = %name, ?serials, "revoked a client");
        Ok(serials)
    }

    /// The head address in `STATE_DIR/client.toml`, written at the head's last start.
    fn admin_file_head(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.state_dir.join("client.toml")).ok()?;
        toml::from_str::<ClientFile>(&text).ok().map(|f| f.head)
    }

    /// Closes the database.
    pub async fn close(self) {
        let Self { store, tracker, .. } = self;
        drop(store);
        tracker.close();
        tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_are_created_listed_and_revoked_without_a_running_head() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = HeadConfig {
            state_dir: dir.path().join("state"),
            ..HeadConfig::default()
        };
        let err = Admin::open(&config).await.err().expect("no CA yet");
        assert!(matches!(err, AdminError::NoCa(_)), "{err}");

        std::fs::create_dir_all(&config.state_dir).expect("the state dir is created");
        credentials::load_or_create_ca(&config.state_dir).expect("a CA is created");
        let admin = Admin::open(&config).await.expect("the state opens");
        let labels = BTreeMap::from([("site".to_owned(), "b".to_owned())]);
        let (encoded, info) = admin
            .create_token(Duration::from_secs(3600), true, labels.clone())
            .await
            .expect("a token is created");
        let token = rgrid_core::tls::JoinToken::parse(&encoded).expect("the token parses");
        assert_eq!(token.id, info.id);
        assert_eq!(
            token.ca_hash,
            admin.ca.fingerprint().expect("a fingerprint")
        );
        assert_eq!(info.state, TokenState::Valid);

        let (_, short) = admin
            .create_token(Duration::ZERO, false, BTreeMap::new())
            .await
            .expect("a token is created");
        admin
            .revoke_token(&info.id)
            .await
            .expect("the token is revoked");
        let listed = admin.tokens().await.expect("tokens are listed");
        let states: Vec<(&str, TokenState)> =
            listed.iter().map(|t| (t.id.as_str(), t.state)).collect();
        assert_eq!(
            states,
            [
                (info.id.as_str(), TokenState::Revoked),
                (short.id.as_str(), TokenState::Expired)
            ]
        );
        assert_eq!(listed[0].labels, labels);
        assert!(listed[0].single_use);
        let err = admin
            .revoke_token("feedbeef")
            .await
            .expect_err("no such token");
        assert!(matches!(err, AdminError::UnknownToken(_)), "{err}");

        let out = dir.path().join("ci.toml");
        let err = admin
            .create_client("ci", ClientRole::Submit, None, &out)
            .await
            .expect_err("no head address known");
        assert!(matches!(err, AdminError::NoHeadAddress), "{err}");
        admin
            .create_client("ci", ClientRole::Submit, Some("10.0.0.1:7070"), &out)
            .await
            .expect("the client file is written");
        let file: ClientFile =
            toml::from_str(&std::fs::read_to_string(&out).expect("the file reads"))
                .expect("the client file parses");
        assert_eq!(file.head, "10.0.0.1:7070");
        let der = rgrid_core::tls::pem_certs(&file.cert_pem, "client").expect("PEM");
        assert_eq!(ClientRole::from_cert(&der[0]), Some(ClientRole::Submit));
        let err = admin
            .create_client("ci", ClientRole::Read, Some("10.0.0.1:7070"), &out)
            .await
            .expect_err("never overwrites");
        assert!(matches!(err, AdminError::Exists(_)), "{err}");
        let err = admin
            .create_client("a b", ClientRole::Read, Some("h:1"), &dir.path().join("x"))
            .await
            .expect_err("a bad name");
        assert!(matches!(err, AdminError::ClientName(_)), "{err}");

        // Recorded, listed, revoked by name.
        let listed = admin.clients().await.expect("clients are listed");
        assert_eq!(listed.len(), 1, "{listed:?}");
        let cert = rgrid_core::tls::CertInfo::from_pem(&file.cert_pem, "client").expect("a cert");
        assert_eq!(
            (
                listed[0].name.as_str(),
                listed[0].role.as_str(),
                listed[0].serial.as_str()
            ),
            ("ci", "submit", cert.serial.as_str())
        );
        assert_eq!(listed[0].state, "valid");
        assert_eq!(listed[0].expires_at_ms, cert.not_after_ms);
        let revoked = admin.revoke_client("ci").await.expect("revoked");
        assert_eq!(revoked, std::slice::from_ref(&cert.serial));
        assert_eq!(admin.clients().await.expect("listed")[0].state, "revoked");
        let err = admin
            .revoke_client("ci")
            .await
            .expect_err("nothing left to revoke");
        assert!(matches!(err, AdminError::UnknownClient(_)), "{err}");
        admin.close().await;
    }
}
