//! The rgrid head daemon, as a library: [`start`] binds the QUIC endpoint, recovers state from
//! the database and serves until the shutdown token is cancelled. The `rgrid-head` binary and
//! the in-process `LocalCluster` both call it.
//!
//! - [`config`]: the configuration.
//! - [`admin`]: join tokens and client credentials from the command line.
//! - `credentials`: the CA, the join token and `client.toml` in the state dir.
//! - `store`: persistence (SQLite or PostgreSQL through sqlx, group commit).
//! - `cluster`: the event loop that owns nodes, tasks and the scheduler.
//! - `server`: QUIC connections and requests; `server_cert`: the head's own certificate,
//!   renewed in place.
//! - `outputs`: content-addressed large task outputs; `logs`: attempts' logs, streamed while they run.
//! - `objects`: the object store (a directory or an S3 bucket), its index, quota and retention;
//!   `transfers`: object uploads and downloads on their own streams; `stdouts`: tasks' stdouts
//!   stored as objects for the tasks that take them as inputs.
//! - `autoscaler`: the driver that turns demand into Hetzner servers and idle ones back into
//!   nothing, when `[autoscaler]` is enabled.

pub mod admin;
mod admission;
mod autoscaler;
mod cluster;
pub mod config;
mod credentials;
mod dependencies;
mod identity;
pub mod join;
mod logs;
mod metrics;
mod objects;
mod outputs;
mod renewal;
mod revoked;
mod roles;
mod server;
mod server_cert;
mod stdouts;
mod store;
mod transfers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use rgrid_core::tls::ClusterCa;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use admin::{Admin, AdminError};
pub use autoscaler::AutoscalerError;
pub use config::HeadConfig;
pub use credentials::CredentialsError;
pub use objects::ObjectsError;
pub use store::StoreError;

use crate::cluster::{Channels, Cluster, Io, Liveness};
use crate::server::Shared;
use crate::store::{RetryPolicy, Store};

/// Why the head could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("state dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] rgrid_core::tls::TlsError),
    #[error(transparent)]
    Transport(#[from] rgrid_core::transport::TransportError),
    #[error(transparent)]
    Autoscaler(#[from] AutoscalerError),
    #[error(transparent)]
    Metrics(#[from] rgrid_core::metrics::MetricsError),
    #[error(transparent)]
    Objects(#[from] ObjectsError),
}

/// A head that is serving.
pub struct RunningHead {
    /// The address the endpoint is bound to (the real port when the config asked for port 0).
    pub local_addr: SocketAddr,
    /// The state dir, holding `ca.pem`, `join-token` and `client.toml`.
    pub state_dir: PathBuf,
    store: Store,
    ca: Arc<ClusterCa>,
    tracker: TaskTracker,
    /// The event loop: it ends with an error when the database kept failing.
    cluster: tokio::task::JoinHandle<Result<(), StoreError>>,
}

impl RunningHead {
    /// Path of the admin credentials file.
    pub fn client_file(&self) -> PathBuf {
        self.state_dir.join("client.toml")
    }

    /// Path of the join token file.
    pub fn join_token_file(&self) -> PathBuf {
        self.state_dir.join("join-token")
    }

    /// Creates another join token (`ttl` `None` = never expires).
    pub async fn create_join_token(
        &self,
        ttl: Option<Duration>,
        single_use: bool,
    ) -> Result<String, CredentialsError> {
        credentials::create_join_token(&self.store, &self.ca, ttl, single_use)
            .await
            .map(|t| t.encode())
    }

    /// Waits until every task of the head has stopped: after the shutdown token was
    /// cancelled, or after the head stopped itself because the database kept failing (then
    /// the error says so; nothing unwritten was acknowledged, and a restart recovers).
    pub async fn wait(self) -> Result<(), StoreError> {
        let Self {
            store,
            tracker,
            cluster,
            ..
        } = self;
        let result = cluster.await.unwrap_or(Err(StoreError::WriterGone));
        // The database writer stops once every handle is gone.
        drop(store);
        tracker.close();
        tracker.wait().await;
        result
    }
}

/// Starts the head: state dir, credentials, database, endpoint, cluster loop.
pub async fn start(
    config: HeadConfig,
    shutdown: CancellationToken,
) -> Result<RunningHead, StartError> {
    config.validate()?;
    let state_dir = config.state_dir.clone();
    rgrid_core::tls::create_private_dir(&state_dir).map_err(|source| StartError::StateDir {
        path: state_dir.clone(),
        source,
    })?;
    let tracker = TaskTracker::new();
    if let Some(addr) = config.metrics_listen {
        rgrid_core::metrics::serve(addr, shutdown.clone(), &tracker)?;
        metrics::describe();
    }
    let ca = credentials::load_or_create_ca(&state_dir)?;
    let retry = RetryPolicy {
        give_up_after: config.commit_retry_for,
        ..RetryPolicy::default()
    };
    let store = Store::open(&config.database_url(), retry, &tracker).await?;
    credentials::ensure_join_token_file(&state_dir, &store, &ca, config.join_token_ttl).await?;

    let ca = Arc::new(ca);
    let server_cert = server_cert::first(&ca, config.server_cert_lifetime)?;
    let tls = rgrid_core::tls::server_config(ca.cert_pem(), server_cert.clone())?;
    let reset_secret = credentials::load_or_create_reset_secret(&state_dir)?;
    let endpoint = rgrid_core::transport::server_endpoint(config.listen, tls, &reset_secret)?;
    let local_addr = endpoint
        .local_addr()
        .map_err(|source| StartError::StateDir {
            path: state_dir.clone(),
            source,
        })?;
    let advertise = config.advertise.clone().unwrap_or_else(|| {
        let mut addr = local_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        addr.to_string()
    });
    credentials::write_client_file(
        &state_dir,
        &store,
        &ca,
        &advertise,
        config.client_cert_lifetime,
    )
    .await?;

    let (outputs_dir, logs_dir) = (state_dir.join("outputs"), state_dir.join("logs"));
    let quota =
        outputs::OutputQuota::new(config.max_total_output_bytes()?, &[&outputs_dir, &logs_dir]);
    let max_output_bytes = config.max_output_bytes()?;
    let outputs =
        outputs::OutputStore::new(outputs_dir.clone(), quota.clone()).map_err(|source| {
            StartError::StateDir {
                path: outputs_dir,
                source,
            }
        })?;
    let logs = logs::Logs::new(logs_dir.clone(), max_output_bytes, quota).map_err(|source| {
        StartError::StateDir {
            path: logs_dir,
            source,
        }
    })?;
    let objects = Arc::new(
        objects::Objects::open(&config.objects, &state_dir, store.pinned_objects().await?).await?,
    );
    let liveness = Liveness {
        heartbeat_interval: config.heartbeat_interval,
        heartbeat_timeout: config.heartbeat_timeout,
        recovery_grace: config.recovery_grace,
    };
    let revoked = revoked::Revoked::load(&store).await?;
    tracker.spawn(revoked.clone().refresh(store.clone(), shutdown.clone()));
    let (channels, inputs) = Channels::new();
    let wake = Arc::new(tokio::sync::Notify::new());
    let stdouts = stdouts::Stdouts::new(
        store.clone(),
        outputs.clone(),
        objects.clone(),
        channels.events.clone(),
        tracker.clone(),
    );
    let io = Io::new(
        store.clone(),
        config.autoscaler.enabled.then(|| wake.clone()),
        stdouts,
    );
    let mut cluster = Cluster::new(io, liveness, config.scheduler_config())
        .with_object_holds(objects.task_holds());
    let (server_counts, servers) = tokio::sync::watch::channel(Vec::new());
    if config.autoscaler.enabled {
        let token = rgrid_cloud::HcloudToken::from_env().map_err(AutoscalerError::from)?;
        let provider = rgrid_cloud::HetznerProvider::new(&config.autoscaler, token)
            .map_err(AutoscalerError::from)?;
        let driver = autoscaler::Autoscaler::new(autoscaler::Parts {
            config: config.autoscaler.clone(),
            provider: Arc::new(provider),
            events: channels.events.clone(),
            wake: wake.clone(),
            store: store.clone(),
            revoked: revoked.clone(),
            ca: ca.clone(),
            head_addr: config.node_facing_address(local_addr)?,
            tracker: tracker.clone(),
            server_counts,
        })?;
        cluster = cluster.with_autoscaler(autoscaler::node_type_views(&config.autoscaler));
        tracker.spawn(
            driver
                .run(shutdown.clone())
                .instrument(tracing::info_span!("autoscaler")),
        );
    }
    let recovering = std::time::Instant::now();
    let open_tasks = cluster::recover(&mut cluster, &store).await?;
    // Only now: before recovery, no open task holds what it needs.
    tracker.spawn(objects::retain(
        objects.clone(),
        config.objects.object_retention,
        shutdown.clone(),
    ));
    tracing::info!(%local_addr, state_dir = %state_dir.display(), open_tasks, recovered_in = ?recovering.elapsed(), "head started");
    let stop = shutdown.clone();
    let cluster = tracker.spawn(
        async move {
            let result = cluster.run(inputs, stop.clone()).await;
            if let Err(err) = &result {
                tracing::error!(error = %err, "the head stops: its database keeps failing");
                stop.cancel();
            }
            result
        }
        .instrument(tracing::info_span!("cluster")),
    );
    tracker.spawn(server_cert::renew(
        ca.clone(),
        server_cert,
        config.server_cert_lifetime,
        shutdown.clone(),
    ));
    let shared = Arc::new(Shared {
        store: store.clone(),
        outputs,
        logs,
        max_output_bytes: usize::try_from(max_output_bytes).unwrap_or(usize::MAX),
        objects,
        ca: ca.clone(),
        channels,
        next_session: AtomicU64::new(1),
        heartbeat_interval: config.heartbeat_interval,
        lifetimes: renewal::Lifetimes {
            node: config.node_cert_lifetime,
            client: config.client_cert_lifetime,
        },
        admission: admission::Admission::new(config.admission_limits()),
        revoked: revoked.clone(),
        servers,
        tracker: tracker.clone(),
        shutdown,
    });
    tracker.spawn(server::serve(endpoint, shared));
    Ok(RunningHead {
        local_addr,
        state_dir,
        store,
        ca,
        tracker,
        cluster,
    })
}
