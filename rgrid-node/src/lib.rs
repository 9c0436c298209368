//! The rgrid node daemon, as a library: [`run`] joins the cluster (first start), opens a session
//! with the head and runs assigned tasks until the shutdown token is cancelled. The `rgrid-node`
//! binary and the in-process `LocalCluster` both call it.
//!
//! - [`config`]: the configuration.
//! - [`identity`]: joining and the node's credentials.
//! - [`executor`]: Docker (bollard) and process executors.
//! - `capabilities`, `resources`, `gpu`: what the node advertises, configured or detected.
//! - `cache`: task inputs by hash, fetched from the head, capped, least recently used evicted.
//! - `session`: the head session, heartbeats, assignments, result delivery.
//! - `renewal`: the node's certificate, renewed over the session before it expires.
//! - `spool`: results on disk until the head acknowledges them.
//! - `health`: the engine and free disk, checked all along and told to the head.
//! - `metrics`: the node's Prometheus gauges (with `metrics_listen`).

mod cache;
mod capabilities;
pub mod config;
pub mod executor;
mod gpu;
mod health;
pub mod identity;
mod log_stream;
mod metrics;
mod renewal;
mod resources;
mod session;
mod spool;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use rgrid_core::protocol::NodeHello;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{ConfigError, ExecutorKind, NodeConfig, PullPolicy};

use crate::executor::docker::{DockerExecutor, DockerUnavailable};
use crate::executor::process::ProcessExecutor;
use crate::executor::Executor;

/// Why the node stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("head address {0:?} does not resolve; use HOST:PORT")]
    HeadAddress(String),
    #[error(transparent)]
    Join(#[from] identity::JoinError),
    #[error(transparent)]
    Docker(#[from] DockerUnavailable),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid resources: {0}")]
    Resources(String),
    #[error("the head refused this node: {0}")]
    Refused(String),
    #[error(transparent)]
    Metrics(#[from] rgrid_core::metrics::MetricsError),
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    #[error("object cache {path}: {source}")]
    Cache {
        path: String,
        source: std::io::Error,
    },
    #[error("output directory {path}: {source}; check that the state dir is writable")]
    Outputs {
        path: String,
        source: std::io::Error,
    },
}

/// Runs the node until it has left the cluster: cancelling `shutdown` drains it (no new work;
/// running attempts get `drain_deadline` to finish, the rest is handed back to the head), and
/// so does a drain request from the head. Returns an error when the head refuses the node.
pub async fn run(config: NodeConfig, shutdown: CancellationToken) -> Result<(), NodeError> {
    config.validate()?;
    // For joining; every session resolves the name again.
    let head = tokio::net::lookup_host(&config.head)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| NodeError::HeadAddress(config.head.clone()))?;
    let name = config.name.clone().unwrap_or_else(hostname);
    let tracker = TaskTracker::new();
    // Stops the metrics endpoint and sampler however this returns.
    let metrics_stop = CancellationToken::new();
    let stop_metrics = metrics_stop.clone().drop_guard();
    if let Some(addr) = config.metrics_listen {
        rgrid_core::metrics::serve(addr, metrics_stop.clone(), &tracker)?;
    }
    let creds =
        identity::load_or_join(&config.state_dir, head, config.token_file.as_deref(), &name)
            .await?;
    let (spool, spooled) = spool::Spool::open(&config.state_dir, config.spool_max_bytes)?;
    let detected_gpus = gpu::detect(&config.gpu_probe, &config.gpu_device_dir).await;
    let gpu_ids = gpu::offered(detected_gpus, config.gpus);
    let gpus = gpu::GpuPool::new(gpu_ids.clone());
    let outputs_dir = config.state_dir.join("outputs");
    let outputs =
        executor::outputs::OutputDir::open(outputs_dir.clone(), config.max_output_bytes as u64)
            .map_err(|source| NodeError::Outputs {
                path: outputs_dir.display().to_string(),
                source,
            })?;
    let executor = match config.executor {
        ExecutorKind::Docker => {
            let docker =
                DockerExecutor::connect(creds.node_id.to_string(), &config, outputs.clone())
                    .await?;
            Executor::docker(docker, gpus, outputs)
        }
        ExecutorKind::Process => Executor::process(
            ProcessExecutor {
                kill_grace: config.kill_grace,
            },
            gpus,
            outputs,
        ),
        ExecutorKind::Noop => Executor::noop(gpus, outputs),
    };
    let resources = resources::detect(&config, gpu_ids.len()).map_err(NodeError::Resources)?;
    let path = std::env::var_os("PATH");
    let advertised = capabilities::advertise(&config, gpu_ids.len(), path.as_deref());
    let hello = NodeHello {
        name: name.clone(),
        resources,
        labels: advertised.labels,
        capabilities: advertised.capabilities,
        running: Vec::new(),
        finished: Vec::new(),
        disconnect_grace_ms: config
            .disconnect_grace
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    };
    tracing::info!(
        node = %creds.node_id,
        %name,
        resources = %hello.resources,
        labels = ?hello.labels,
        capabilities = ?hello.capabilities,
        capabilities_from = advertised.capabilities_from,
        gpus = ?gpu_ids,
        "node starting"
    );
    let cache_dir = config.state_dir.join("objects");
    let cache = cache::ObjectCache::open(cache_dir.clone(), config.object_cache_bytes).map_err(
        |source| NodeError::Cache {
            path: cache_dir.display().to_string(),
            source,
        },
    )?;
    let (control, control_rx) = mpsc::channel(session::CONTROL_QUEUE);
    let node = Arc::new(session::Node {
        head: config.head.clone(),
        creds: Mutex::new(creds),
        state_dir: config.state_dir.clone(),
        executor,
        cache,
        hello,
        attempts: Mutex::new(HashMap::new()),
        spool,
        health: watch::channel(Default::default()).0,
        connection: watch::channel(None).0,
        control,
        tracker: tracker.clone(),
        drain: shutdown,
        drain_deadline: config.drain_deadline,
        drain_until: Mutex::new(None),
        leaving: AtomicBool::new(false),
        stopped: CancellationToken::new(),
    });
    session::replay(&node, spooled);
    if let Some(docker) = node.executor.as_docker() {
        let leftovers = docker.leftovers(|attempt| node.spool.holds(attempt)).await;
        session::adopt(&node, leftovers);
    }
    let cleanup = node.executor.as_docker().map(DockerExecutor::cleanup);
    pre_pull(&node, config.pre_pull);
    tracker.spawn(health::watch(
        node.clone(),
        config.state_dir.clone(),
        config.min_free_disk,
    ));
    if config.metrics_listen.is_some() {
        tracker.spawn(metrics::sample(node.clone(), metrics_stop.clone()));
    }
    let result = session::run(node, control_rx).await;
    drop(stop_metrics);
    tracker.close();
    tracker.wait().await;
    if let Some(cleanup) = cleanup {
        cleanup.close();
        cleanup.wait().await;
    }
    result.map_err(|e| NodeError::Refused(e.to_string()))
}

/// Once the node has joined (its first session is open), pulls `images` in parallel; a drain
/// stops them.
fn pre_pull(node: &Arc<session::Node>, images: Vec<String>) {
    if images.is_empty() || node.executor.as_docker().is_none() {
        return;
    }
    let node = node.clone();
    let tracker = node.tracker.clone();
    tracker.spawn(async move {
        let mut connection = node.connection.subscribe();
        tokio::select! {
            _ = node.drain.cancelled() => return,
            joined = connection.wait_for(Option::is_some) => if joined.is_err() { return },
        }
        let Some(docker) = node.executor.as_docker() else {
            return;
        };
        let pulls = images
            .iter()
            .map(|image| docker.pre_pull(image, &node.drain));
        tokio::select! {
            _ = futures::future::join_all(pulls) => {}
            _ = node.stopped.cancelled() => {}
        }
    });
}

/// Locks `mutex`, carrying on past a panic elsewhere (the data are plain values).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".to_owned())
}
