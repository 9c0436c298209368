//! The rgrid node daemon, as a library: [`run`] joins the cluster (first start), opens a session
//! with the head and runs assigned tasks until the shutdown token is cancelled. The `rgrid-node`
//! binary and the in-process `LocalCluster` both call it.
//!
//! - [`config`]: the configuration.
//! - [`identity`]: joining and the node's credentials.
//! - [`executor`]: Docker (bollard) and process executors.
//! - `session`: the head session, heartbeats, assignments, result delivery.

pub mod config;
pub mod executor;
pub mod identity;
mod resources;
mod session;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use rgrid_core::protocol::NodeHello;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{ExecutorKind, NodeConfig};

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
    #[error("invalid resources: {0}")]
    Resources(String),
    #[error("the head refused this node: {0}")]
    Refused(String),
}

/// Runs the node until it has left the cluster: cancelling `shutdown` drains it (no new work;
/// running attempts get `drain_deadline` to finish, the rest is handed back to the head), and
/// so does a drain request from the head. Returns an error when the head refuses the node.
pub async fn run(config: NodeConfig, shutdown: CancellationToken) -> Result<(), NodeError> {
    let head = tokio::net::lookup_host(&config.head)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| NodeError::HeadAddress(config.head.clone()))?;
    let name = config.name.clone().unwrap_or_else(hostname);
    let creds =
        identity::load_or_join(&config.state_dir, head, config.token_file.as_deref(), &name)
            .await?;
    let executor = match config.executor {
        ExecutorKind::Docker => {
            let docker =
                DockerExecutor::connect(creds.node_id.to_string(), config.max_output_bytes).await?;
            docker.remove_leftovers().await;
            for image in &config.pre_pull {
                if let Err(message) = docker.ensure_image(image).await {
                    tracing::warn!(%image, %message, "pre-pull failed");
                }
            }
            Executor::Docker(docker)
        }
        ExecutorKind::Process => Executor::Process(ProcessExecutor {
            max_output_bytes: config.max_output_bytes,
        }),
        ExecutorKind::Noop => Executor::Noop,
    };
    let resources = resources::detect(&config).map_err(NodeError::Resources)?;
    let hello = NodeHello {
        name: name.clone(),
        resources,
        labels: config.labels.clone(),
        capabilities: executor.capabilities(),
        running: Vec::new(),
        finished: Vec::new(),
    };
    tracing::info!(node = %creds.node_id, %name, resources = %hello.resources, labels = ?hello.labels, capabilities = ?hello.capabilities, "node starting");
    let (control, control_rx) = mpsc::channel(session::CONTROL_QUEUE);
    let tracker = TaskTracker::new();
    let node = Arc::new(session::Node {
        head,
        creds,
        executor,
        hello,
        attempts: Mutex::new(HashMap::new()),
        connection: watch::channel(None).0,
        control,
        tracker: tracker.clone(),
        drain: shutdown,
        drain_deadline: config.drain_deadline,
        drain_until: Mutex::new(None),
        leaving: AtomicBool::new(false),
        stopped: CancellationToken::new(),
    });
    let result = session::run(node, control_rx).await;
    tracker.close();
    tracker.wait().await;
    result.map_err(|e| NodeError::Refused(e.to_string()))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".to_owned())
}
