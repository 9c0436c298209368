//! The [`Provider`] trait the head's autoscaler driver holds as `Arc<dyn Provider>`: create,
//! delete and list servers by label. It owns the provider-neutral server model
//! ([`CloudServer`], [`CreateServer`]) and [`ProviderError`], which tells the policy whether a
//! failure means "sold out here, try elsewhere", "quota reached" or something else.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::SystemTime;

use crate::config::{AutoscalerConfig, CLUSTER_LABEL, NODE_TYPE_LABEL};
use crate::hetzner::HcloudError;

/// A boxed, sendable future: keeps [`Provider`] object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A cloud server id (Hetzner's numeric id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerId(pub u64);

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The lifecycle state a provider reports for a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerStatus {
    /// Being created or booting.
    Starting,
    /// Powered on.
    Running,
    /// Powered off, stopping, being deleted or in another state where it runs nothing; Hetzner
    /// still bills it.
    Stopped,
    /// A status this crate does not know.
    Unknown,
}

/// A server as the provider reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct CloudServer {
    /// The provider's id.
    pub id: ServerId,
    /// The server's name; nodes created by the autoscaler join with it as their node name.
    pub name: String,
    /// The server type (e.g. `cx33`).
    pub node_type: String,
    /// The location it runs in (e.g. `fsn1`), when reported.
    pub location: Option<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// When it was created: billing counts started hours from here.
    pub created: SystemTime,
    /// Its power / lifecycle status.
    pub status: ServerStatus,
    /// Public IPv4 address, if it has one.
    pub public_ipv4: Option<IpAddr>,
}

/// What to create: the provider-neutral part of a server request. Provider-wide settings
/// (image, SSH keys, networks, firewalls, public addresses) come from the provider's config.
/// Its `Debug` leaves out the user data, which holds a join token.
#[derive(Clone, PartialEq)]
pub struct CreateServer {
    /// Server name, unique in the project; the node joins under this name.
    pub name: String,
    /// Server type.
    pub node_type: String,
    /// Location.
    pub location: String,
    /// Labels, including the cluster label so the server is found again.
    pub labels: BTreeMap<String, String>,
    /// cloud-init user data (see [`crate::cloud_init::render`]). Contains a join token: never log it.
    pub user_data: String,
}

impl fmt::Debug for CreateServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateServer")
            .field("name", &self.name)
            .field("node_type", &self.node_type)
            .field("location", &self.location)
            .field("labels", &self.labels)
            .field(
                "user_data",
                &format_args!("<{} bytes>", self.user_data.len()),
            )
            .finish()
    }
}

impl CreateServer {
    /// A request for a node of `node_type` in `location` for the cluster in `config`, with a
    /// fresh unique name and the cluster's labels.
    pub fn for_node(
        config: &AutoscalerConfig,
        node_type: &str,
        location: &str,
        user_data: String,
    ) -> Self {
        Self {
            name: server_name(&config.cluster_name, node_type),
            node_type: node_type.to_owned(),
            location: location.to_owned(),
            labels: cluster_labels(&config.cluster_name, node_type),
            user_data,
        }
    }
}

/// A fresh server name: `<cluster>-<type>-<12 hex digits>`.
pub fn server_name(cluster: &str, node_type: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{cluster}-{node_type}-{}", &id[..12])
}

/// The labels every server of `cluster` carries.
pub fn cluster_labels(cluster: &str, node_type: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (CLUSTER_LABEL.to_owned(), cluster.to_owned()),
        (NODE_TYPE_LABEL.to_owned(), node_type.to_owned()),
    ])
}

/// What kind of failure a provider error is, as far as the policy cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The type is sold out in that location: try another location or type.
    Unavailable,
    /// The project's quota (servers, cores…) is exhausted: stop creating for a while.
    Quota,
    /// The rate limit was hit even after waiting: back off.
    RateLimited,
    /// Anything else (bad credentials, invalid request, server error, action failed…).
    Other,
}

/// A provider operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// From the Hetzner Cloud API.
    #[error(transparent)]
    Hetzner(#[from] HcloudError),
    /// From another implementation (such as the in-memory fake of the `fake` feature): its
    /// message, and how the policy should react.
    #[error("{message}")]
    Other {
        /// How the policy should react.
        kind: FailureKind,
        /// What went wrong and what to do.
        message: String,
    },
}

impl ProviderError {
    /// How the policy should react.
    pub fn kind(&self) -> FailureKind {
        match self {
            ProviderError::Hetzner(e) => e.kind(),
            ProviderError::Other { kind, .. } => *kind,
        }
    }
}

/// A place servers come from: [`crate::HetznerProvider`], or the in-memory fake of the
/// `fake` feature. Object safe: hold it as `Arc<dyn Provider>`.
pub trait Provider: Send + Sync {
    /// Creates a server and waits until the provider reports it created (its create actions
    /// finished). On any failure after the server came into existence, it is deleted again
    /// before the error is returned, so a failed create leaves nothing billed behind.
    fn create<'a>(
        &'a self,
        request: &'a CreateServer,
    ) -> BoxFuture<'a, Result<CloudServer, ProviderError>>;

    /// Deletes a server. Deleting one that is already gone succeeds.
    fn delete(&self, id: ServerId) -> BoxFuture<'_, Result<(), ProviderError>>;

    /// Every server matching a label selector such as `rgrid-cluster=prod` (all pages).
    /// Implementations may cache for a short time; creates and deletes through the same
    /// provider invalidate the cache.
    fn list<'a>(
        &'a self,
        label_selector: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CloudServer>, ProviderError>>;
}
