//! The node's configuration: a TOML file (`--config`), overridden key by key by `RGRID_NODE_*`
//! environment variables ([`NodeConfig::apply_env`]: every key has one), overridden by flags;
//! what is left unset is auto-detected (cpus, memory, GPUs, capabilities).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rgrid_core::config::{read_toml, ConfigFileError};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// How tasks are run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
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

/// When the Docker executor pulls a task's image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Pull only images the engine does not have (the default).
    #[default]
    IfNotPresent,
    /// Pull before every attempt (a moved tag such as `:latest` is picked up).
    Always,
    /// Never pull: an image the engine does not have fails the task.
    Never,
}

/// Everything the node can be configured with. Each key `k` can also be set with the
/// environment variable `RGRID_NODE_K` (upper case), which wins over the file.
/// `deploy/node.toml` shows every key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// Labels tasks can select on (`site = "eu-1"`), on top of the detected `arch`. Default none.
    pub labels: BTreeMap<String, String>,
    /// Capabilities tasks can require; replaces what the node detects (`docker`, `gpu`,
    /// `process`, `runtime:python`, …). Default: detected.
    pub capabilities: Option<Vec<String>>,
    /// Executor. Default `docker`.
    pub executor: ExecutorKind,
    /// Millicores offered to tasks. Default: every cpu of the host.
    pub cpu_millis: Option<u64>,
    /// Memory offered to tasks, like `8G`. Default: the host's total memory.
    pub memory: Option<String>,
    /// GPUs offered. Default: the GPUs detected (`gpu_probe`, else `gpu_device_dir`).
    pub gpus: Option<u32>,
    /// Custom resources offered (`licenses = 2`). Default none.
    pub custom: BTreeMap<String, u64>,
    /// Command listing the GPUs, one `GPU <index>: …` line each. Default `["nvidia-smi", "-L"]`.
    pub gpu_probe: Vec<String>,
    /// Where GPU device files (`nvidia0`, `nvidia1`, …) are looked for when the probe fails.
    /// Default `/dev`.
    pub gpu_device_dir: PathBuf,
    /// Most bytes of stdout (and of stderr) kept per attempt; the rest is cut. Also the largest
    /// declared output a task may produce (a larger one fails it). Default 16 MiB.
    pub max_output_bytes: usize,
    /// Images pulled in parallel once the node has joined, so the first task does not wait.
    /// Default none.
    pub pre_pull: Vec<String>,
    /// On SIGTERM, how long running attempts may go on before they are handed back. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub drain_deadline: Duration,
    /// The Docker engine: a socket path or `unix://` URL. Default: `DOCKER_HOST`, else
    /// `/var/run/docker.sock`.
    pub docker_host: Option<String>,
    /// Directory of the Docker client `config.json` holding registry credentials. Default:
    /// `DOCKER_CONFIG`, else `~/.docker`.
    pub docker_config: Option<PathBuf>,
    /// When images are pulled. Default `if-not-present`.
    pub pull_policy: PullPolicy,
    /// Longest an image pull may take before the attempt is handed back. Default `10m`.
    #[serde(with = "humantime_serde")]
    pub pull_timeout: Duration,
    /// Network modes tasks may ask for (`none`, `bridge`, `host`); others are refused.
    /// Default `["none"]`.
    pub allowed_networks: Vec<String>,
    /// User every container runs as (`"65534:65534"`, a name the image knows). Default: the
    /// image's user.
    pub run_as: Option<String>,
    /// Every container gets a read-only root file system with a writable tmpfs `/tmp` (a task
    /// can also ask for it on any node). Default `false`.
    pub read_only_rootfs: bool,
    /// On timeout or cancel, how long a task has between SIGTERM and SIGKILL. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub kill_grace: Duration,
    /// Address of the Prometheus endpoint (`GET /metrics`), like `127.0.0.1:9465`. Default: off.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Most bytes of results the offline spool (`STATE_DIR/spool`) holds until the head
    /// acknowledges them; past it (or past 10,000 results) a result is kept in memory only.
    /// Default 256 MiB.
    pub spool_max_bytes: u64,
    /// How long the head keeps this node's attempts while it is silent (cut off, restarting)
    /// before it requeues them elsewhere; the node tells the head when it registers. For sites
    /// with an unreliable link. Default: the head's `heartbeat_timeout`.
    #[serde(with = "humantime_serde")]
    pub disconnect_grace: Option<Duration>,
    /// Fewest free bytes in the Docker root dir and in the state dir for the node to take work;
    /// under it the node reports itself unhealthy. Default 1 GiB.
    pub min_free_disk: u64,
    /// Bytes the cache of task inputs (`STATE_DIR/objects`) keeps; the least recently used
    /// objects no running attempt needs are evicted beyond it. Default 10 GiB.
    pub object_cache_bytes: u64,
    /// What this node costs per hour (any currency, the same as the autoscaler's node types):
    /// the head charges its tasks from it (`rgrid cost`). The node advertises it as the label
    /// `rgrid-hourly-price`; provisioned nodes get their type's price. Default: none (its tasks
    /// have no cost).
    pub hourly_price: Option<f64>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            head: String::new(),
            token_file: None,
            state_dir: PathBuf::from("rgrid-node-state"),
            name: None,
            labels: BTreeMap::new(),
            capabilities: None,
            executor: ExecutorKind::Docker,
            cpu_millis: None,
            memory: None,
            gpus: None,
            custom: BTreeMap::new(),
            gpu_probe: vec!["nvidia-smi".to_owned(), "-L".to_owned()],
            gpu_device_dir: PathBuf::from("/dev"),
            max_output_bytes: 16 << 20,
            pre_pull: Vec::new(),
            drain_deadline: Duration::from_secs(60),
            docker_host: None,
            docker_config: None,
            pull_policy: PullPolicy::IfNotPresent,
            pull_timeout: Duration::from_secs(600),
            allowed_networks: vec!["none".to_owned()],
            run_as: None,
            read_only_rootfs: false,
            kill_grace: Duration::from_secs(10),
            metrics_listen: None,
            spool_max_bytes: 256 << 20,
            disconnect_grace: None,
            min_free_disk: 1 << 30,
            object_cache_bytes: 10 << 30,
            hourly_price: None,
        }
    }
}

/// Every key of [`NodeConfig`]; `RGRID_NODE_` + the key in upper case sets it.
const KEYS: &[&str] = &[
    "head",
    "token_file",
    "state_dir",
    "name",
    "labels",
    "capabilities",
    "executor",
    "cpu_millis",
    "memory",
    "gpus",
    "custom",
    "gpu_probe",
    "gpu_device_dir",
    "max_output_bytes",
    "pre_pull",
    "drain_deadline",
    "docker_host",
    "docker_config",
    "pull_policy",
    "pull_timeout",
    "allowed_networks",
    "run_as",
    "read_only_rootfs",
    "kill_grace",
    "metrics_listen",
    "spool_max_bytes",
    "disconnect_grace",
    "min_free_disk",
    "object_cache_bytes",
    "hourly_price",
];

/// Network modes a node can allow.
const NETWORK_MODES: [&str; 3] = ["none", "bridge", "host"];

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
    #[error("allowed_networks: {0:?} is not a network mode; use none, bridge or host")]
    Network(String),
    #[error("hourly_price: {0} is not a positive number")]
    HourlyPrice(f64),
}

impl NodeConfig {
    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let config: Self = read_toml(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Overrides keys from `RGRID_NODE_*` variables, looked up with `var` (the binary passes
    /// `std::env::var`). Lists are comma-separated (`docker,gpu`), maps `k=v` pairs
    /// (`site=eu-1,zone=b`); labels from the environment are added to the file's, the other keys
    /// replace them.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        for key in KEYS {
            let name = format!("RGRID_NODE_{}", key.to_uppercase());
            if let Some(value) = var(&name) {
                self.set(key, value.trim())
                    .map_err(|message| ConfigError::Env { name, message })?;
            }
        }
        self.validate()
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let duration = |v: &str| humantime::parse_duration(v).map_err(|e| e.to_string());
        let number = |v: &str| v.parse::<u64>().map_err(|e| format!("{v:?}: {e}"));
        match key {
            "head" => self.head = value.to_owned(),
            "token_file" => self.token_file = Some(value.into()),
            "state_dir" => self.state_dir = value.into(),
            "name" => self.name = Some(value.to_owned()),
            "labels" => self.labels.extend(parse_map(value)?),
            "capabilities" => self.capabilities = Some(parse_list(value)),
            "executor" => self.executor = parse_enum(value)?,
            "cpu_millis" => self.cpu_millis = Some(number(value)?),
            "memory" => self.memory = Some(value.to_owned()),
            "gpus" => self.gpus = Some(u32::try_from(number(value)?).map_err(|e| e.to_string())?),
            "custom" => {
                self.custom = parse_map(value)?
                    .into_iter()
                    .map(|(k, v)| number(&v).map(|n| (k, n)))
                    .collect::<Result<_, _>>()?
            }
            "gpu_probe" => self.gpu_probe = value.split_whitespace().map(str::to_owned).collect(),
            "gpu_device_dir" => self.gpu_device_dir = value.into(),
            "object_cache_bytes" => self.object_cache_bytes = number(value)?,
            "max_output_bytes" => {
                self.max_output_bytes =
                    usize::try_from(number(value)?).map_err(|e| e.to_string())?
            }
            "pre_pull" => self.pre_pull = parse_list(value),
            "drain_deadline" => self.drain_deadline = duration(value)?,
            "docker_host" => self.docker_host = Some(value.to_owned()),
            "docker_config" => self.docker_config = Some(value.into()),
            "pull_policy" => self.pull_policy = parse_enum(value)?,
            "pull_timeout" => self.pull_timeout = duration(value)?,
            "allowed_networks" => self.allowed_networks = parse_list(value),
            "run_as" => self.run_as = Some(value.to_owned()),
            "read_only_rootfs" => {
                self.read_only_rootfs = value
                    .parse()
                    .map_err(|_| format!("{value:?} is not true or false"))?
            }
            "kill_grace" => self.kill_grace = duration(value)?,
            "metrics_listen" => {
                self.metrics_listen = Some(
                    value
                        .parse()
                        .map_err(|_| format!("{value:?} is not an address HOST:PORT"))?,
                )
            }
            "spool_max_bytes" => self.spool_max_bytes = number(value)?,
            "disconnect_grace" => self.disconnect_grace = Some(duration(value)?),
            "min_free_disk" => self.min_free_disk = number(value)?,
            "hourly_price" => {
                self.hourly_price = Some(
                    value
                        .parse()
                        .map_err(|_| format!("{value:?} is not a number"))?,
                )
            }
            other => return Err(format!("{other} is not a node config key")),
        }
        Ok(())
    }

    /// Checks what serde cannot (the network modes, the price).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(price) = self.hourly_price.filter(|p| !(p.is_finite() && *p > 0.0)) {
            return Err(ConfigError::HourlyPrice(price));
        }
        match self
            .allowed_networks
            .iter()
            .find(|mode| !NETWORK_MODES.contains(&mode.as_str()))
        {
            Some(mode) => Err(ConfigError::Network(mode.clone())),
            None => Ok(()),
        }
    }
}

/// `a, b,c` → `["a", "b", "c"]`.
fn parse_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `k=v,k2=v2` → a map.
fn parse_map(value: &str) -> Result<BTreeMap<String, String>, String> {
    parse_list(value)
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| format!("{pair:?} is not K=V"))
        })
        .collect()
}

/// An enum by its config-file name (`if-not-present`, `process`).
fn parse_enum<T: DeserializeOwned>(value: &str) -> Result<T, String> {
    T::deserialize(toml::Value::String(value.to_owned())).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_an_environment_variable() {
        // serde lists the struct's fields when it meets an unknown one.
        let err = toml::from_str::<NodeConfig>("no_such_key = 1").expect_err("unknown key");
        let message = err.to_string();
        let fields: Vec<&str> = message
            .split("expected one of")
            .nth(1)
            .expect("serde names the fields")
            .split(',')
            .map(|f| f.trim().trim_matches('`'))
            .collect();
        let mut expected: Vec<&str> = KEYS.to_vec();
        expected.sort_unstable();
        let mut fields = fields;
        fields.sort_unstable();
        assert_eq!(fields, expected);
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let mut config: NodeConfig = toml::from_str(
            r#"
            head = "file:1"
            labels = { site = "file", rack = "r1" }
            capabilities = ["docker"]
            pull_policy = "never"
            pull_timeout = "1m"
            gpus = 1
            "#,
        )
        .expect("valid config");
        let env = BTreeMap::from([
            ("RGRID_NODE_HEAD", "env:2"),
            ("RGRID_NODE_LABELS", "site=env, zone=z"),
            ("RGRID_NODE_CAPABILITIES", "docker, gpu,runtime:python"),
            ("RGRID_NODE_PULL_POLICY", "always"),
            ("RGRID_NODE_KILL_GRACE", "3s"),
            ("RGRID_NODE_CUSTOM", "licenses=2"),
            ("RGRID_NODE_READ_ONLY_ROOTFS", "true"),
            ("RGRID_NODE_ALLOWED_NETWORKS", "none,bridge"),
            ("RGRID_NODE_DISCONNECT_GRACE", "10m"),
            ("RGRID_NODE_HOURLY_PRICE", "0.012"),
        ]);
        config
            .apply_env(|name| env.get(name).map(|v| (*v).to_owned()))
            .expect("valid variables");
        assert_eq!(config.head, "env:2");
        assert_eq!(
            config.labels,
            BTreeMap::from([
                ("site".into(), "env".into()),
                ("rack".into(), "r1".into()),
                ("zone".into(), "z".into())
            ])
        );
        assert_eq!(
            config.capabilities.as_deref(),
            Some(
                ["docker", "gpu", "runtime:python"]
                    .map(String::from)
                    .as_slice()
            )
        );
        assert_eq!(config.pull_policy, PullPolicy::Always);
        assert_eq!(
            config.pull_timeout,
            Duration::from_secs(60),
            "from the file"
        );
        assert_eq!(config.gpus, Some(1), "from the file");
        assert_eq!(config.kill_grace, Duration::from_secs(3));
        assert_eq!(config.custom, BTreeMap::from([("licenses".into(), 2)]));
        assert!(config.read_only_rootfs);
        assert_eq!(config.allowed_networks, ["none", "bridge"]);
        assert_eq!(config.disconnect_grace, Some(Duration::from_secs(600)));
        assert_eq!(config.hourly_price, Some(0.012));
    }

    #[test]
    fn a_price_must_be_positive() {
        for value in ["0", "-1", "NaN", "inf"] {
            let mut config = NodeConfig::default();
            let err = config
                .apply_env(|n| (n == "RGRID_NODE_HOURLY_PRICE").then(|| value.to_owned()))
                .expect_err("not a price");
            assert!(err.to_string().contains("hourly_price"), "{err}");
        }
        let err =
            toml::from_str::<NodeConfig>("hourly_price = \"cheap\"").expect_err("not a number");
        assert!(err.to_string().contains("hourly_price"), "{err}");
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (name, value) in [
            ("RGRID_NODE_PULL_POLICY", "sometimes"),
            ("RGRID_NODE_GPUS", "two"),
            ("RGRID_NODE_LABELS", "site"),
            ("RGRID_NODE_KILL_GRACE", "soon"),
            ("RGRID_NODE_ALLOWED_NETWORKS", "none,overlay"),
            ("RGRID_NODE_HOURLY_PRICE", "cheap"),
        ] {
            let mut config = NodeConfig::default();
            let err = config
                .apply_env(|n| (n == name).then(|| value.to_owned()))
                .expect_err("a bad value");
            let message = err.to_string();
            assert!(
                message.contains(name) || message.contains("overlay"),
                "{message}"
            );
        }
    }
}
