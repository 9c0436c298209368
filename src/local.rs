//! [`LocalCluster`]: a head and nodes in this process, on loopback, with a temporary state dir and
//! SQLite: for examples and tests. The same `run` functions as the daemons.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use rgrid_head::HeadConfig;
pub use rgrid_node::ExecutorKind;
use rgrid_node::NodeConfig;
use tokio_util::sync::CancellationToken;

use crate::client::Client;

/// A local cluster. Dropping it stops everything.
pub struct LocalCluster {
    dir: tempfile::TempDir,
    head: Option<rgrid_head::RunningHead>,
    shutdown: CancellationToken,
    nodes: Vec<LocalNode>,
}

struct LocalNode {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), rgrid_node::NodeError>>,
}

/// How to start a [`LocalCluster`].
#[derive(Clone, Debug)]
pub struct LocalClusterOptions {
    /// Number of nodes. Default 1.
    pub nodes: usize,
    /// Executor of the nodes. Default Docker.
    pub executor: ExecutorKind,
    /// Millicores each node offers. Default: every cpu of the host.
    pub cpu_millis: Option<u64>,
    /// Memory each node offers (`2G`). Default: all memory.
    pub memory: Option<String>,
}

impl Default for LocalClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 1,
            executor: ExecutorKind::Docker,
            cpu_millis: None,
            memory: None,
        }
    }
}

impl LocalCluster {
    /// A head and one Docker node.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(LocalClusterOptions::default()).await
    }

    /// A head and `options.nodes` nodes; returns once every node is registered.
    pub async fn start_with(options: LocalClusterOptions) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("cannot create a temporary state dir")?;
        let shutdown = CancellationToken::new();
        let config = HeadConfig {
            listen: "127.0.0.1:0".parse()?,
            state_dir: dir.path().join("head"),
            ..HeadConfig::default()
        };
        let head = rgrid_head::start(config, shutdown.clone())
            .await
            .context("cannot start the head")?;
        let mut cluster = Self {
            dir,
            head: Some(head),
            shutdown,
            nodes: Vec::new(),
        };
        for i in 0..options.nodes {
            cluster.add_node(&options, &format!("local-{i}")).await?;
        }
        let client = cluster.client().await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while client
            .nodes()
            .await?
            .iter()
            .filter(|n| n.state == "ready")
            .count()
            < options.nodes
        {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "nodes did not register within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(cluster)
    }

    async fn add_node(&mut self, options: &LocalClusterOptions, name: &str) -> anyhow::Result<()> {
        let head = self.head.as_ref().context("the head is stopped")?;
        let config = NodeConfig {
            head: head.local_addr.to_string(),
            token_file: Some(head.join_token_file()),
            state_dir: self.dir.path().join(name),
            name: Some(name.to_owned()),
            executor: options.executor,
            cpu_millis: options.cpu_millis,
            memory: options.memory.clone(),
            ..NodeConfig::default()
        };
        // Not a child of the head's token: on stop the nodes drain while the head still runs.
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(rgrid_node::run(config, shutdown.clone()));
        self.nodes.push(LocalNode { shutdown, task });
        Ok(())
    }

    /// The admin credentials file.
    pub fn client_file(&self) -> PathBuf {
        self.dir.path().join("head").join("client.toml")
    }

    /// A client connected with the admin credentials.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Client::connect_file(self.client_file())
            .await
            .context("cannot connect to the local head")
    }

    /// Drains the nodes, then stops the head, and waits for all of them.
    pub async fn stop(mut self) {
        let nodes: Vec<LocalNode> = self.nodes.drain(..).collect();
        for node in &nodes {
            node.shutdown.cancel();
        }
        for node in nodes {
            let _ = node.task.await;
        }
        self.shutdown.cancel();
        if let Some(head) = self.head.take() {
            if let Err(err) = head.wait().await {
                tracing::error!(error = %err, "the local head stopped with an error");
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.shutdown.cancel();
        }
        self.shutdown.cancel();
    }
}
