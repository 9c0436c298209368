//! The node's configuration: a TOML file (`--config`), overridden by `RGRID_NODE_*` environment
//! variables and flags; what is left unset is auto-detected (cpus, memory, Docker).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rgrid_core::config::{read_toml, ConfigFileError};

use serde::Deserialize;

/// How tasks are run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// In Docker containers through the engine's API (the default).
    #[default]
    Docker,
    /// As local processes, ignoring the image (hosts without Docker; fast tests). Opt-in.
    Process,
    /// Runs nothing: every assignment succeeds at once with empty output. A benchmarking aid
    /// (like HyperQueue's zero-worker mode): the head, the protocol and the store do all their
    /// work, so what is measured is the framework.
    Noop,
}

/// Everything the node can be configured with.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// The head's address, `HOST:PORT`. Required (flag `--head`).
    pub head: String,
    /// File holding the join token; read only when the node has no certificate yet.
    pub token_file: Option<PathBuf>,
    /// Where the node keeps its key, certificate and the cluster CA. Default `./rgrid-node-state`.
    pub state_dir: PathBuf,
    /// Node name shown in listings. Default: the host name.
    pub name: Option<String>,
    /// Labels tasks can select on (`site = "eu-1"`). Default none.
    pub labels: BTreeMap<String, String>,
    /// Executor. Default `docker`.
    pub executor: ExecutorKind,
    /// Millicores offered to tasks. Default: every cpu of the host.
    pub cpu_millis: Option<u64>,
    /// Memory offered to tasks, like `8G`. Default: the host's total memory.
    pub memory: Option<String>,
    /// GPUs offered. Default 0.
    pub gpus: u32,
    /// Most bytes of stdout (and of stderr) kept per attempt; the rest is cut. Default 16 MiB.
    pub max_output_bytes: usize,
    /// Images pulled at start so the first task does not wait. Default none.
    pub pre_pull: Vec<String>,
    /// On SIGTERM, how long running attempts may go on before they are handed back. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub drain_deadline: std::time::Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            head: String::new(),
            token_file: None,
            state_dir: PathBuf::from("rgrid-node-state"),
            name: None,
            labels: BTreeMap::new(),
            executor: ExecutorKind::Docker,
            cpu_millis: None,
            memory: None,
            gpus: 0,
            max_output_bytes: 16 << 20,
            pre_pull: Vec::new(),
            drain_deadline: std::time::Duration::from_secs(60),
        }
    }
}

impl NodeConfig {
    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigFileError> {
        read_toml(path)
    }
}
