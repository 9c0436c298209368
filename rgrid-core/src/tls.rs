//! Cluster credentials: the CA the head creates on first start, the certificates it signs (its own
//! server certificate, node and client certificates), join tokens, and the rustls configurations
//! built from them.
//!
//! Identities live in the certificate's common name: `node:<uuid>` or `client:<name>`; a
//! client's role ([`ClientRole`]) in its organizational unit.
//!
//! Every certificate expires: the CA after [`CA_LIFETIME`]; the head's server certificate, node
//! and client certificates after the lifetime the head is configured with (node and client
//! certificates are renewed over the session once [`CertInfo::wants_renewal`] says so; the head
//! swaps its own in place, see [`ServerCert`]). Each has a random serial, by which the head
//! revokes it.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
};
use ring::digest::{digest, SHA256};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::id::NodeId;
use crate::protocol::{ALPN, HEAD_SERVER_NAME};

/// Credentials errors. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{what} is not valid PEM: {detail}")]
    Pem { what: &'static str, detail: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("join token is malformed: expected ID.SECRET.CAHASH as written by rgrid-head to its join-token file")]
    MalformedToken,
    #[error("{what} cannot be read as an X.509 certificate")]
    BadCertificate { what: &'static str },
}

/// How long a new cluster CA is valid: long, but not forever.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Before its start, a certificate the nodes verify (the CA's, the head's) is valid this long
/// already, so that a node whose clock is a little behind the head's accepts it.
const CLOCK_SKEW: Duration = Duration::from_secs(24 * 3600);

/// The validity of a certificate issued now for `lifetime`, backdated by `backdate`.
fn validity(params: &mut CertificateParams, lifetime: Duration, backdate: Duration) {
    let now = SystemTime::now();
    params.not_before = (now - backdate).into();
    params.not_after = now
        .checked_add(lifetime)
        .unwrap_or(now + CA_LIFETIME)
        .into();
}

/// A random serial (positive, 16 bytes): what a revocation names.
fn random_serial() -> SerialNumber {
    let mut bytes = random_bytes::<16>();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// The crypto provider used everywhere (ring), so no process-wide default is needed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The cluster certificate authority: signs the head's server certificate and every node and
/// client certificate.
pub struct ClusterCa {
    issuer: rcgen::Certificate,
    key: KeyPair,
    /// The CA certificate as first written: what every peer trusts.
    pem: String,
}

impl ClusterCa {
    /// A new CA for a cluster.
    pub fn generate(cluster: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("rgrid cluster CA ({cluster})"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, CA_LIFETIME, CLOCK_SKEW);
        params.serial_number = Some(random_serial());
        let issuer = params.self_signed(&key)?;
        let pem = issuer.pem();
        Ok(Self { issuer, key, pem })
    }

    /// Loads a CA written by [`ClusterCa::cert_pem`] and [`ClusterCa::key_pem`].
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)?;
        let issuer = params.self_signed(&key)?;
        Ok(Self {
            issuer,
            key,
            pem: cert_pem.to_owned(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// SHA-256 of the CA's public key (hex): what a join token pins.
    pub fn fingerprint(&self) -> Result<String, TlsError> {
        ca_pin(&self.pem)
    }

    /// The head's server certificate for [`HEAD_SERVER_NAME`] (and `localhost`), with a fresh
    /// key, valid for `lifetime` from now (and since [`CLOCK_SKEW`] before, for nodes whose
    /// clock is behind).
    pub fn issue_server(&self, lifetime: Duration) -> Result<Identity, TlsError> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(vec![HEAD_SERVER_NAME.to_owned(), "localhost".to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "rgrid head");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params, lifetime, CLOCK_SKEW);
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        Ok(Identity {
            cert_pem: format!("{}{}", cert.pem(), self.pem),
            key_pem: key.serialize_pem(),
        })
    }

    /// A client certificate for `subject` (`client:admin`) with `role`, valid for `lifetime`,
    /// with a fresh key.
    pub fn issue_client(
        &self,
        subject: &str,
        role: ClientRole,
        lifetime: Duration,
    ) -> Result<Identity, TlsError> {
        let key = KeyPair::generate()?;
        let cert = self.sign_client(&key, subject, role, lifetime)?;
        Ok(Identity {
            cert_pem: cert,
            key_pem: key.serialize_pem(),
        })
    }

    /// Renews a client certificate: `csr_pem`'s key, signed as `subject` with `role` (taken from
    /// the certificate the client connected with, never from the CSR), valid for `lifetime`.
    pub fn renew_client_csr(
        &self,
        csr_pem: &str,
        subject: &str,
        role: ClientRole,
        lifetime: Duration,
    ) -> Result<String, TlsError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        csr.params = client_params(subject, lifetime)?;
        csr.params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, role.as_str());
        Ok(csr.signed_by(&self.issuer, &self.key)?.pem())
    }

    fn sign_client(
        &self,
        key: &KeyPair,
        subject: &str,
        role: ClientRole,
        lifetime: Duration,
    ) -> Result<String, TlsError> {
        let mut params = client_params(subject, lifetime)?;
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, role.as_str());
        Ok(params.signed_by(key, &self.issuer, &self.key)?.pem())
    }

    /// Checks that `csr_pem` is a CSR [`Self::sign_node_csr`] can sign, without signing it (a
    /// join consumes its token only for a request that can succeed).
    pub fn check_node_csr(csr_pem: &str) -> Result<(), TlsError> {
        CertificateSigningRequestParams::from_pem(csr_pem)?;
        Ok(())
    }

    /// Signs a node's CSR as `node:<id>`, valid for `lifetime`. Whatever subject the CSR asked
    /// for is replaced.
    pub fn sign_node_csr(
        &self,
        csr_pem: &str,
        node: NodeId,
        lifetime: Duration,
    ) -> Result<String, TlsError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        csr.params = client_params(&PeerIdentity::Node(node).to_string(), lifetime)?;
        Ok(csr.signed_by(&self.issuer, &self.key)?.pem())
    }
}

/// A node's or client's certificate: verified by the head only, so valid from the head's now.
fn client_params(subject: &str, lifetime: Duration) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, subject);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, lifetime, Duration::ZERO);
    params.serial_number = Some(random_serial());
    Ok(params)
}

/// A node's key and the CSR to send with its join request.
pub fn node_csr() -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let csr = renewal_csr(&key.serialize_pem())?;
    Ok((key.serialize_pem(), csr))
}

/// A CSR for the key `key_pem` already has (a renewal keeps the key, so that only the
/// certificate file changes, in one atomic write). The head sets the subject.
pub fn renewal_csr(key_pem: &str) -> Result<String, TlsError> {
    let key = KeyPair::from_pem(key_pem)?;
    // A CSR carries no serial or validity: only a subject for the key.
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "pending");
    Ok(params.serialize_request(&key)?.pem()?)
}

/// What a certificate says of its life: its serial and validity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The serial, hex: what a revocation names.
    pub serial: String,
    /// Milliseconds since the Unix epoch.
    pub not_before_ms: u64,
    pub not_after_ms: u64,
}

impl CertInfo {
    /// Reads the first certificate of `pem`.
    pub fn from_pem(pem: &str, what: &'static str) -> Result<Self, TlsError> {
        let certs = pem_certs(pem, what)?;
        Self::from_der(&certs[0]).ok_or(TlsError::BadCertificate { what })
    }

    /// Reads a certificate (DER).
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let ms = |t: x509_parser::time::ASN1Time| {
            u64::try_from(t.timestamp())
                .unwrap_or(0)
                .saturating_mul(1000)
        };
        Some(Self {
            serial: hex::encode(cert.raw_serial()),
            not_before_ms: ms(cert.validity().not_before),
            not_after_ms: ms(cert.validity().not_after),
        })
    }

    /// Whether it has expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms > self.not_after_ms
    }

    /// When to renew it: at two thirds of its life.
    pub fn renew_at_ms(&self) -> u64 {
        let life = self.not_after_ms.saturating_sub(self.not_before_ms);
        self.not_before_ms.saturating_add(life / 3 * 2)
    }

    /// Whether it is in its renewal window at `now_ms`: past [`Self::renew_at_ms`].
    pub fn wants_renewal(&self, now_ms: u64) -> bool {
        now_ms >= self.renew_at_ms()
    }

    /// Whether the head grants a renewal at `now_ms`: past half its life (a little before the
    /// holder asks, so that clocks a little apart agree), not expired.
    pub fn renewable(&self, now_ms: u64) -> bool {
        let life = self.not_after_ms.saturating_sub(self.not_before_ms);
        now_ms >= self.not_before_ms.saturating_add(life / 2) && !self.expired(now_ms)
    }

    /// The expiry, as RFC 3339.
    pub fn expires(&self) -> String {
        format_ms(self.not_after_ms)
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 (seconds), for messages.
pub fn format_ms(ms: u64) -> String {
    let t = time::OffsetDateTime::from(SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("unix ms {ms}"))
}

/// A certificate chain and its private key, both PEM.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The credentials file a client connects with (`client.toml`, written by the head).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// The head's address, `HOST:PORT`.
    pub head: String,
    /// The cluster CA (PEM).
    pub ca_pem: String,
    /// The client's certificate (PEM).
    pub cert_pem: String,
    /// The client's private key (PEM).
    pub key_pem: String,
}

impl ClientFile {
    /// The client's identity.
    pub fn identity(&self) -> Identity {
        Identity {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }
}

/// Who is on the other end of an authenticated connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerIdentity {
    Node(NodeId),
    Client(String),
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Node(id) => write!(f, "node:{id}"),
            Self::Client(name) => write!(f, "client:{name}"),
        }
    }
}

impl PeerIdentity {
    /// Reads the identity from a verified peer certificate (DER).
    pub fn from_cert(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
        if let Some(id) = cn.strip_prefix("node:") {
            return id.parse().ok().map(Self::Node);
        }
        cn.strip_prefix("client:")
            .map(|name| Self::Client(name.to_owned()))
    }
}

/// What a client may do, recorded in its certificate's organizational unit when the head issues
/// it (`rgrid-head client create NAME --role R`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientRole {
    /// Everything: every task, node operations, credentials.
    Admin,
    /// Submit tasks and manage its own.
    Submit,
    /// Listings and outputs only.
    Read,
}

impl ClientRole {
    /// Every role, in order of power.
    pub const ALL: [Self; 3] = [Self::Admin, Self::Submit, Self::Read];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Submit => "submit",
            Self::Read => "read",
        }
    }

    /// The role a verified client certificate (DER) carries; `None` when it names none.
    pub fn from_cert(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let unit = cert
            .subject()
            .iter_organizational_unit()
            .next()?
            .as_str()
            .ok()?;
        unit.parse().ok()
    }
}

impl std::fmt::Display for ClientRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ClientRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a role: use admin, submit or read"))
    }
}

/// A join token: `ID.SECRET.CAHASH`. The head stores only a hash of the secret; the node pins the
/// CA by `CAHASH` (SHA-256 of the CA's public key) before it trusts anything the head says.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: String,
    pub secret: String,
    pub ca_hash: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        write!(f, "JoinToken({}.…)", self.id)
    }
}

impl JoinToken {
    /// A new random token pinned to `ca_hash`.
    pub fn generate(ca_hash: &str) -> Self {
        Self {
            id: hex::encode(random_bytes::<4>()),
            secret: hex::encode(random_bytes::<16>()),
            ca_hash: ca_hash.to_owned(),
        }
    }

    pub fn parse(s: &str) -> Result<Self, TlsError> {
        let mut parts = s.trim().split('.');
        let (Some(id), Some(secret), Some(ca_hash), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TlsError::MalformedToken);
        };
        let hexy = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_hexdigit());
        if !hexy(id) || !hexy(secret) || ca_hash.len() != 64 || !hexy(ca_hash) {
            return Err(TlsError::MalformedToken);
        }
        Ok(Self {
            id: id.to_owned(),
            secret: secret.to_owned(),
            ca_hash: ca_hash.to_ascii_lowercase(),
        })
    }

    /// SHA-256 of the secret (hex): what the head stores.
    pub fn secret_hash(&self) -> String {
        sha256_hex(self.secret.as_bytes())
    }

    pub fn encode(&self) -> String {
        format!("{}.{}.{}", self.id, self.secret, self.ca_hash)
    }
}

/// SHA-256 (hex).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest(&SHA256, data))
}

/// `N` random bytes from the system's secure RNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut buf = [0u8; N];
    // The system RNG failing is not recoverable; fall back to a v4 UUID's randomness.
    if ring::rand::SystemRandom::new().fill(&mut buf).is_err() {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = uuid::Uuid::new_v4().as_bytes()[i % 16];
        }
    }
    buf
}

/// SHA-256 (hex) of the public key of the first certificate in `ca_pem`: a join token's pin.
pub fn ca_pin(ca_pem: &str) -> Result<String, TlsError> {
    let der = pem_certs(ca_pem, "CA certificate")?;
    der.first()
        .and_then(|cert| spki_sha256(cert))
        .map(hex::encode)
        .ok_or(TlsError::Pem {
            what: "CA certificate",
            detail: "cannot parse its public key".into(),
        })
}

/// Writes a file readable by its owner only (keys, tokens, credentials), atomically and durably:
/// a temporary file created new (`O_EXCL`: never an existing file or a symlink planted there),
/// renamed over `path`, then the directory synced so that the rename survives a power loss.
pub fn write_private_file(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp-{}", hex::encode(random_bytes::<8>())));
    let mut file = create_private_file(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    std::fs::File::open(dir.unwrap_or(std::path::Path::new(".")))?.sync_all()
}

/// Creates a new file (failing if anything, a symlink included, is at `path`) that only its
/// owner may read or write.
pub fn create_private_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)
}

/// Creates a directory (and its parents) and makes it accessible to its owner only (state
/// directories hold keys, task environments and outputs).
pub fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo.
pub fn spki_sha256(der: &[u8]) -> Option<[u8; 32]> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let hash = digest(&SHA256, cert.public_key().raw);
    hash.as_ref().try_into().ok()
}

/// Parses every certificate in a PEM string.
pub fn pem_certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| TlsError::Pem {
        what,
        detail: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            detail: "no certificate found".into(),
        });
    }
    Ok(certs)
}

fn pem_key(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem {
        what,
        detail: e.to_string(),
    })
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in pem_certs(ca_pem, "CA certificate")? {
        roots.add(cert)?;
    }
    Ok(Arc::new(roots))
}

/// The head's server certificate as the TLS configuration presents it: replaced in place
/// ([`ServerCert::replace`]) before it expires, so that every later handshake presents the new
/// one while the endpoint, and every connection made with the old one, goes on.
#[derive(Debug)]
pub struct ServerCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCert {
    pub fn new(identity: &Identity) -> Result<Self, TlsError> {
        Ok(Self {
            current: RwLock::new(certified_key(identity)?),
        })
    }

    /// Presents `identity` from the next handshake on.
    pub fn replace(&self, identity: &Identity) -> Result<(), TlsError> {
        let key = certified_key(identity)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = key;
        Ok(())
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// A server identity as rustls signs with it (the key checked against the certificate).
fn certified_key(identity: &Identity) -> Result<Arc<CertifiedKey>, TlsError> {
    Ok(Arc::new(CertifiedKey::from_der(
        pem_certs(&identity.cert_pem, "server certificate")?,
        pem_key(&identity.key_pem, "server key")?,
        &provider(),
    )?))
}

/// The head's TLS config: the server certificate `server` holds at each handshake; client
/// certificates signed by the CA are verified, and peers without one may finish the handshake
/// (to join) but nothing else.
pub fn server_config(
    ca_pem: &str,
    server: Arc<ServerCert>,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(server);
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// A node's or client's TLS config: trusts only the cluster CA, presents `identity`.
pub fn client_config(ca_pem: &str, identity: &Identity) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(
            pem_certs(&identity.cert_pem, "client certificate")?,
            pem_key(&identity.key_pem, "client key")?,
        )?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// A joining node's TLS config: no client certificate; the head must present a chain whose CA
/// matches the token's pin.
pub fn join_config(token: &JoinToken) -> Result<rustls::ClientConfig, TlsError> {
    let pin: [u8; 32] = hex::decode(&token.ca_hash)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or(TlsError::MalformedToken)?;
    let provider = provider();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier { pin, provider }))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Verifies the head against the CA certificate in its chain whose public key hash equals the pin.
#[derive(Debug)]
struct PinnedCaVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|cert| spki_sha256(cert) == Some(self.pin))
            .ok_or_else(|| {
                rustls::Error::General(
                    "the head's CA does not match the join token's CA hash: wrong head, or a token from another cluster".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_round_trips_and_signs_nodes() {
        let ca = ClusterCa::generate("test").expect("a CA is generated");
        let again = ClusterCa::load(ca.cert_pem(), &ca.key_pem()).expect("the CA loads back");
        assert_eq!(
            ca.fingerprint().expect("the CA has a fingerprint"),
            again.fingerprint().expect("the CA has a fingerprint")
        );
        let (_key, csr) = node_csr().expect("a CSR is generated");
        let node = NodeId::new();
        let cert = again
            .sign_node_csr(&csr, node, Duration::from_secs(60))
            .expect("a CSR is generated");
        let der = pem_certs(&cert, "node").expect("the certificate is PEM");
        assert_eq!(
            PeerIdentity::from_cert(&der[0]),
            Some(PeerIdentity::Node(node))
        );
    }

    #[test]
    fn the_server_certificate_expires_within_its_lifetime() {
        let ca = ClusterCa::generate("test").expect("a CA is generated");
        let lifetime = Duration::from_secs(3600);
        let life_ms = lifetime.as_millis() as u64;
        let before = crate::time::unix_ms();
        let identity = ca.issue_server(lifetime).expect("a server certificate");
        let after = crate::time::unix_ms();
        let info = CertInfo::from_pem(&identity.cert_pem, "server").expect("a certificate");
        // X.509 times are whole seconds.
        assert!(info.not_after_ms <= after + life_ms, "{info:?}");
        assert!(info.not_after_ms + 1000 >= before + life_ms, "{info:?}");
        let skew_ms = CLOCK_SKEW.as_millis() as u64;
        assert!(
            info.not_before_ms <= before - skew_ms + 1000,
            "backdated: {info:?}"
        );
        let again = ca.issue_server(lifetime).expect("a server certificate");
        assert_ne!(
            CertInfo::from_pem(&again.cert_pem, "server")
                .expect("a certificate")
                .serial,
            info.serial
        );
        // What the head presents: the certificate with its own key, never another's.
        let server = ServerCert::new(&identity).expect("the identity is usable");
        server.replace(&again).expect("replaced");
        let mismatched = Identity {
            cert_pem: identity.cert_pem.clone(),
            key_pem: again.key_pem.clone(),
        };
        assert!(server.replace(&mismatched).is_err());
        assert!(ServerCert::new(&mismatched).is_err());
    }

    #[test]
    fn client_certificates_carry_their_name_and_role() {
        let ca = ClusterCa::generate("test").expect("a CA is generated");
        for role in ClientRole::ALL {
            let identity = ca
                .issue_client("client:ci", role, Duration::from_secs(60))
                .expect("a client certificate is issued");
            let der = pem_certs(&identity.cert_pem, "client").expect("the certificate is PEM");
            assert_eq!(
                PeerIdentity::from_cert(&der[0]),
                Some(PeerIdentity::Client("ci".into()))
            );
            assert_eq!(ClientRole::from_cert(&der[0]), Some(role));
            assert_eq!(role.as_str().parse::<ClientRole>(), Ok(role));
        }
        let (_key, csr) = node_csr().expect("a CSR is generated");
        let node = ca
            .sign_node_csr(&csr, NodeId::new(), Duration::from_secs(60))
            .expect("the CSR is signed");
        let der = pem_certs(&node, "node").expect("the certificate is PEM");
        assert_eq!(ClientRole::from_cert(&der[0]), None);
        assert!("root".parse::<ClientRole>().is_err());
    }

    #[test]
    fn tokens_parse_and_hide_their_secret() {
        let token = JoinToken::generate(&"ab".repeat(32));
        let parsed = JoinToken::parse(&token.encode()).expect("the token parses back");
        assert_eq!(parsed, token);
        assert!(!format!("{token:?}").contains(&token.secret));
        assert!(JoinToken::parse("nope").is_err());
        assert!(JoinToken::parse("a.b.c").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn private_files_and_dirs_are_owner_only_and_never_follow_a_planted_link() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!(
            "rgrid-private-{}",
            hex::encode(random_bytes::<8>())
        ));
        let dir = base.join("state");
        create_private_dir(&dir).expect("the dir is created");
        let mode = |p: &std::path::Path| {
            std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
        };
        assert_eq!(mode(&dir), 0o700);
        let key = dir.join("key");
        write_private_file(&key, "secret").expect("written");
        write_private_file(&key, "secret 2").expect("replaced");
        assert_eq!(std::fs::read_to_string(&key).expect("read"), "secret 2");
        assert_eq!(mode(&key), 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(&dir).expect("listed").collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left");
        // A symlink planted where a new file goes: refused, its target untouched.
        let target = base.join("target");
        std::fs::write(&target, "untouched").expect("written");
        let link = dir.join("planted");
        std::os::unix::fs::symlink(&target, &link).expect("a symlink");
        let err = create_private_file(&link).expect_err("never follows the link");
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "untouched");
        std::fs::remove_dir_all(&base).expect("cleaned up");
    }
}
