//! The `[autoscaler]` section of the head's config file ([`AutoscalerConfig`]), the node types
//! it may create ([`NodeTypeConfig`]) and the Hetzner API token ([`HcloudToken`]), which comes
//! only from the `HCLOUD_TOKEN` environment variable and never appears in a log line.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rgrid_core::Resources;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where the Hetzner Cloud API token is read from.
pub const TOKEN_ENV: &str = "HCLOUD_TOKEN";

/// The public Hetzner Cloud API.
pub const DEFAULT_API_URL: &str = "https://api.hetzner.cloud/v1";

/// Label every server created by a cluster carries, with the cluster name as its value; listing
/// by it finds every machine the cluster pays for, including ones that never joined.
pub const CLUSTER_LABEL: &str = "rgrid-cluster";

/// Label carrying the node type a server was created as.
pub const NODE_TYPE_LABEL: &str = "rgrid-node-type";

/// Hetzner's limit on user data (cloud-init) size.
pub const USER_DATA_LIMIT: usize = 32 * 1024;

/// The `[autoscaler]` section: how rgrid turns queued demand into Hetzner servers and idle
/// servers back into nothing. Every field has a default, so an empty section is valid (and
/// disabled).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoscalerConfig {
    /// Whether the head creates and deletes servers at all. Default: `false`.
    pub enabled: bool,
    /// Name of this cluster, stored as the `rgrid-cluster` label on every server it creates and
    /// used as the server name prefix. Two clusters sharing one Hetzner project must use
    /// different names, or each would delete the other's servers. Lowercase letters, digits and
    /// `-`, at most 40 characters. Default: `"rgrid"`.
    pub cluster_name: String,
    /// Base URL of the Hetzner Cloud API (tests point it at a local fake). Default:
    /// `"https://api.hetzner.cloud/v1"`.
    pub api_url: String,
    /// Locations to place servers in, in order of preference; when a type is sold out in one
    /// (`resource_unavailable`), the next is tried. Default: `["fsn1", "nbg1", "hel1"]`.
    pub locations: Vec<String>,
    /// The server types the autoscaler may create, with their capacity and price. Default: the
    /// shared-vCPU x86 types `cx23`, `cx33`, `cx43`, `cx53` (see [`NodeTypeConfig::defaults`]).
    pub node_types: Vec<NodeTypeConfig>,
    /// Nodes kept running even when idle. Default: `0`.
    pub min_nodes: u32,
    /// Upper bound on servers of this cluster (provisioning, running and draining). Default: `10`.
    pub max_nodes: u32,
    /// Upper bound on servers being created at once (not yet joined); bounds the cost of a
    /// mistake and the API requests spent on one burst. Default: `5`.
    pub max_concurrent_provisioning: u32,
    /// How long demand must have been queued before servers are created for it, so that a
    /// short blip that running nodes absorb does not buy a billed hour; also how long a node
    /// out of touch (suspect) still counts as capacity, so that a node missing a few
    /// heartbeats does not buy one either. Default: `"20s"`.
    #[serde(with = "humantime_serde")]
    pub scale_up_delay: Duration,
    /// When the head knows how long queued tasks run, tasks that running nodes are expected to
    /// start within this time get no new node: a node bought for them would hardly arrive
    /// sooner. (When it also knows the arrival rate, `drain_target` decides instead.)
    /// Default: `"5m"`.
    #[serde(with = "humantime_serde")]
    pub max_queue_wait: Duration,
    /// When the head knows how long queued tasks run, it buys capacity to finish the queue
    /// within this time rather than to start every task at once; a node is paid for a whole
    /// hour, so work spread over it costs less than many nodes busy for minutes. `"0s"` starts
    /// every task at once. When the head also knows the arrival rate, capacity is added only
    /// where the busy nodes, minus what new arrivals keep busy, would not finish the queue
    /// within this time. Default: `"45m"`.
    #[serde(with = "humantime_serde")]
    pub drain_target: Duration,
    /// New nodes are at least this fraction of the cpu busy or queued in the cluster (bigger
    /// types are cheaper per core; a busy cluster fills them), unless no type is that large.
    /// `0` picks purely by the queued tasks. Default: `1.0` (double the cluster).
    pub growth: f64,
    /// An idle node is drained and deleted when its next billed hour starts within this window
    /// (Hetzner bills every started hour until deletion). It must cover a drain plus a delete
    /// request. Default: `"4m"`.
    #[serde(with = "humantime_serde")]
    pub scale_down_window: Duration,
    /// A busy node whose next billed hour starts within this window is drained when the rest
    /// of the cluster can carry the current load plus `headroom`, so it empties and is deleted
    /// instead of paying for another hour. `"0s"` disables. Default: `"15m"`.
    #[serde(with = "humantime_serde")]
    pub drain_ahead: Duration,
    /// Spare cpu, as a fraction of the current load, that must remain after a surplus drain.
    /// Default: `0.25`.
    pub headroom: f64,
    /// Spare capacity kept for arriving tasks, in standard deviations of the cpu they keep
    /// busy: when the head knows the shapes' arrival rates and runtimes, the cluster keeps at
    /// least their load (rate × runtime × cpu) plus this many times its spread (the square
    /// root of rate × runtime × cpu², summed over shapes), buying a node before a queue forms
    /// and draining none below it, so that most tasks start without waiting for a boot.
    /// `0` keeps no reserve. Default: `1.0`.
    pub reserve: f64,
    /// How long a node must have been idle before it may be drained. Default: `"1m"`.
    #[serde(with = "humantime_serde")]
    pub min_idle: Duration,
    /// Nodes older than this are drained and replaced (fresh image, no slow leaks). `"0s"`
    /// disables the cap. Default: `"24h"`.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// Servers carrying this cluster's label that have not joined within this time are deleted,
    /// so a broken boot never leaks a paid machine. Default: `"10m"`.
    #[serde(with = "humantime_serde")]
    pub join_timeout: Duration,
    /// Expected time from create request to a joined node; used for ETAs shown to waiting
    /// tasks. Default: `"90s"`.
    #[serde(with = "humantime_serde")]
    pub boot_estimate: Duration,
    /// After a type is reported sold out in a location, that pair is skipped for this long; after
    /// a quota error, all creation pauses for this long. Default: `"10m"`.
    #[serde(with = "humantime_serde")]
    pub unavailable_cooldown: Duration,
    /// Lifetime of the single-use join token put in a server's user data; must cover the boot.
    /// Default: `"30m"`.
    #[serde(with = "humantime_serde")]
    pub join_token_ttl: Duration,
    /// OS image servers boot from. Default: `"ubuntu-24.04"`.
    pub image: String,
    /// Names or ids of SSH keys (already in the Hetzner project) installed for root; with none,
    /// Hetzner emails a root password. Default: `[]`.
    pub ssh_keys: Vec<String>,
    /// Ids of private networks to attach servers to. Default: `[]`.
    pub networks: Vec<u64>,
    /// Ids of firewalls to apply to servers. Default: `[]`.
    pub firewalls: Vec<u64>,
    /// Give servers a public IPv4 address (billed separately by Hetzner). Default: `true`.
    pub enable_ipv4: bool,
    /// Give servers a public IPv6 address. Default: `true`.
    pub enable_ipv6: bool,
    /// The container image running `rgrid-node` on provisioned servers. Default:
    /// `"ghcr.io/rgrid/rgrid-node:VERSION"`, VERSION being the head's own, so a head never
    /// provisions nodes of another version (`scripts/build-images.sh` builds it).
    pub node_image: String,
    /// Runtime images pulled in parallel while a server boots, so the first tasks do not wait
    /// for them. Default: `[]`.
    pub prepull_images: Vec<String>,
    /// Extra labels every provisioned node advertises (`--label K=V`), on top of its type's
    /// labels. Default: `{}`.
    pub node_labels: BTreeMap<String, String>,
    /// Seconds-level settings of the Hetzner HTTP client. Default: see [`ApiConfig`].
    pub api: ApiConfig,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            cluster_name: "rgrid".into(),
            api_url: DEFAULT_API_URL.into(),
            locations: vec!["fsn1".into(), "nbg1".into(), "hel1".into()],
            node_types: NodeTypeConfig::defaults(),
            min_nodes: 0,
            max_nodes: 10,
            max_concurrent_provisioning: 5,
            scale_up_delay: Duration::from_secs(20),
            max_queue_wait: Duration::from_secs(300),
            drain_target: Duration::from_secs(45 * 60),
            growth: 1.0,
            scale_down_window: Duration::from_secs(4 * 60),
            drain_ahead: Duration::from_secs(15 * 60),
            headroom: 0.25,
            reserve: 1.0,
            min_idle: Duration::from_secs(60),
            max_lifetime: Duration::from_secs(24 * 3600),
            join_timeout: Duration::from_secs(10 * 60),
            boot_estimate: Duration::from_secs(90),
            unavailable_cooldown: Duration::from_secs(10 * 60),
            join_token_ttl: Duration::from_secs(30 * 60),
            image: "ubuntu-24.04".into(),
            ssh_keys: Vec::new(),
            networks: Vec::new(),
            firewalls: Vec::new(),
            enable_ipv4: true,
            enable_ipv6: true,
            node_image: format!("ghcr.io/rgrid/rgrid-node:{}", env!("CARGO_PKG_VERSION")),
            prepull_images: Vec::new(),
            node_labels: BTreeMap::new(),
            api: ApiConfig::default(),
        }
    }
}

/// HTTP client settings for the Hetzner API (`[autoscaler.api]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Timeout of one HTTP request. Default: `"30s"`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Retries of a transient failure (429, 5xx, connection refused) before giving up.
    /// Default: `5`.
    pub max_retries: u32,
    /// First backoff delay; doubles each retry, with full jitter. Default: `"1s"`.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// Longest single wait, whether from backoff or from the rate-limit headers. Default: `"60s"`.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// First interval between polls of a running action; grows by half each poll. Default: `"2s"`.
    #[serde(with = "humantime_serde")]
    pub action_poll: Duration,
    /// Longest interval between polls of a running action. Default: `"10s"`.
    #[serde(with = "humantime_serde")]
    pub action_poll_max: Duration,
    /// Give up waiting for an action after this long. Default: `"5m"`.
    #[serde(with = "humantime_serde")]
    pub action_timeout: Duration,
    /// Server listings are cached this long (creates and deletes invalidate the cache), which
    /// keeps the project inside its 3,600 requests an hour; the head's autoscaler also looks
    /// again at least this often, to notice servers changed from outside. Default: `"30s"`.
    #[serde(with = "humantime_serde")]
    pub list_cache_ttl: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            max_retries: 5,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            action_poll: Duration::from_secs(2),
            action_poll_max: Duration::from_secs(10),
            action_timeout: Duration::from_secs(5 * 60),
            list_cache_ttl: Duration::from_secs(30),
        }
    }
}

/// One server type the autoscaler may create (`[[autoscaler.node_types]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeTypeConfig {
    /// Hetzner server type, e.g. `"cx33"`. Required.
    pub name: String,
    /// vCPUs the node offers to tasks. Required.
    pub cpus: u32,
    /// Memory the node offers to tasks, like `"8G"` (powers of 1024) or a number of bytes.
    /// Required.
    #[serde(deserialize_with = "de_size", serialize_with = "ser_size")]
    pub memory: u64,
    /// GPUs the node offers. Default: `0`.
    #[serde(default)]
    pub gpus: u32,
    /// Custom resources the node offers. Default: `{}`.
    #[serde(default)]
    pub custom: BTreeMap<String, u64>,
    /// Labels nodes of this type advertise; tasks whose selector asks for them can only be
    /// served by this type. Default: `{}`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Price of one started hour, in any currency as long as all types use the same one
    /// (Hetzner's hourly price, VAT and IPv4 included if you want true totals). Required.
    pub hourly_price: f64,
    /// At most this many nodes of this type. Default: no limit beyond `max_nodes`.
    #[serde(default)]
    pub max_nodes: Option<u32>,
    /// Locations for this type, overriding the global list (some types exist only in some
    /// locations). Default: the global `locations`.
    #[serde(default)]
    pub locations: Vec<String>,
}

impl NodeTypeConfig {
    /// What a node of this type offers to tasks.
    pub fn capacity(&self) -> Resources {
        Resources {
            cpu_millis: u64::from(self.cpus) * 1000,
            memory_bytes: self.memory,
            gpus: self.gpus,
            custom: self.custom.clone(),
        }
    }

    /// The default type list: Hetzner's shared-vCPU x86 line with approximate hourly list
    /// prices in EUR (Germany, excluding VAT and IPv4). Adjust `hourly_price` to your bill.
    pub fn defaults() -> Vec<NodeTypeConfig> {
        const GIB: u64 = 1 << 30;
        [
            ("cx23", 2, 4, 0.0056),
            ("cx33", 4, 8, 0.0088),
            ("cx43", 8, 16, 0.0152),
            ("cx53", 16, 32, 0.0280),
        ]
        .into_iter()
        .map(|(name, cpus, mem_gib, price)| NodeTypeConfig {
            name: name.into(),
            cpus,
            memory: mem_gib * GIB,
            gpus: 0,
            custom: BTreeMap::new(),
            labels: BTreeMap::new(),
            hourly_price: price,
            max_nodes: None,
            locations: Vec::new(),
        })
        .collect()
    }
}

/// A config value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("autoscaler.{field}: {problem}")]
    Invalid { field: String, problem: String },
    #[error("{TOKEN_ENV} is not set: create an API token (Read & Write) in the Hetzner Cloud console under Security → API tokens and export it as {TOKEN_ENV}; it is never read from a file")]
    MissingToken,
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

impl AutoscalerConfig {
    /// The node type called `name`.
    pub fn node_type(&self, name: &str) -> Option<&NodeTypeConfig> {
        self.node_types.iter().find(|t| t.name == name)
    }

    /// The locations `node_type` may be placed in, in order of preference.
    pub fn locations_for<'a>(&'a self, node_type: &'a NodeTypeConfig) -> &'a [String] {
        if node_type.locations.is_empty() {
            &self.locations
        } else {
            &node_type.locations
        }
    }

    /// The label selector matching every server of this cluster.
    pub fn label_selector(&self) -> String {
        format!("{CLUSTER_LABEL}={}", self.cluster_name)
    }

    /// Checks the values that would make the autoscaler misbehave, with a message naming the
    /// field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name = &self.cluster_name;
        if name.is_empty()
            || name.len() > 40
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(invalid(
                "cluster_name",
                format!("{name:?} must be 1–40 lowercase letters, digits or '-'"),
            ));
        }
        if self.node_types.is_empty() {
            return Err(invalid("node_types", "at least one node type is needed"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in &self.node_types {
            if !seen.insert(t.name.as_str()) {
                return Err(invalid(
                    "node_types",
                    format!("{:?} is listed twice", t.name),
                ));
            }
            if t.cpus == 0 || t.memory == 0 {
                return Err(invalid(
                    format!("node_types.{}", t.name),
                    "cpus and memory must be positive",
                ));
            }
            if !(t.hourly_price.is_finite() && t.hourly_price > 0.0) {
                return Err(invalid(
                    format!("node_types.{}.hourly_price", t.name),
                    "must be a positive number",
                ));
            }
            if self.locations_for(t).is_empty() {
                return Err(invalid(
                    format!("node_types.{}.locations", t.name),
                    "no location to place it in",
                ));
            }
        }
        if self.min_nodes > self.max_nodes {
            return Err(invalid(
                "min_nodes",
                format!("{} is above max_nodes ({})", self.min_nodes, self.max_nodes),
            ));
        }
        if self.max_concurrent_provisioning == 0 && self.max_nodes > 0 {
            return Err(invalid(
                "max_concurrent_provisioning",
                "must be at least 1, or no node can ever be created",
            ));
        }
        if self.scale_down_window >= Duration::from_secs(3600) {
            return Err(invalid(
                "scale_down_window",
                "must be shorter than the one-hour billing period",
            ));
        }
        if self.join_token_ttl < self.boot_estimate {
            return Err(invalid(
                "join_token_ttl",
                "is shorter than boot_estimate: nodes would boot with an expired token",
            ));
        }
        check_api_url(&self.api_url)
    }
}

/// The API token travels in every request: only over TLS, unless to this machine (a test API).
fn check_api_url(api_url: &str) -> Result<(), ConfigError> {
    let url = reqwest::Url::parse(api_url)
        .map_err(|e| invalid("api_url", format!("{api_url:?} is not a URL: {e}")))?;
    let host = url.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        scheme => Err(invalid(
            "api_url",
            format!("{api_url:?} uses {scheme}: the API token must travel over https (plain http only to a loopback address)"),
        )),
    }
}

/// The Hetzner Cloud API token. Its `Debug` and `Display` print `<redacted>`, so it can sit in
/// structs that are logged without leaking.
#[derive(Clone)]
pub struct HcloudToken(String);

impl HcloudToken {
    /// Reads the token from `HCLOUD_TOKEN`.
    pub fn from_env() -> Result<Self, ConfigError> {
        match std::env::var(TOKEN_ENV) {
            Ok(v) if !v.trim().is_empty() => Ok(Self(v.trim().to_owned())),
            _ => Err(ConfigError::MissingToken),
        }
    }

    /// Wraps a token obtained some other way (tests).
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The secret itself, for the `Authorization` header only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for HcloudToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HcloudToken(<redacted>)")
    }
}

impl fmt::Display for HcloudToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(b) => Ok(b),
        Size::Text(s) => rgrid_core::resources::parse_size(&s).map_err(serde::de::Error::custom),
    }
}

fn ser_size<S: Serializer>(bytes: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rgrid_core::resources::format_size(*bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_section_gives_documented_defaults() {
        let cfg: AutoscalerConfig = toml::from_str("").expect("the config parses");
        assert_eq!(cfg, AutoscalerConfig::default());
        assert!(!cfg.enabled);
        assert_eq!(cfg.max_nodes, 10);
        assert_eq!(cfg.scale_down_window, Duration::from_secs(240));
        cfg.validate().expect("the config is valid");
    }

    #[test]
    fn api_url_must_be_https_unless_loopback() {
        for ok in [
            "https://api.hetzner.cloud/v1",
            "http://127.0.0.1:8080/v1",
            "http://[::1]:8080",
            "http://localhost:9000",
        ] {
            check_api_url(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "http://api.hetzner.cloud/v1",
            "http://10.0.0.1/v1",
            "ftp://x",
            "nonsense",
        ] {
            let err = check_api_url(bad).expect_err(bad).to_string();
            assert!(err.contains("api_url"), "{err}");
        }
        let cfg = AutoscalerConfig {
            api_url: "http://api.example.com".into(),
            ..AutoscalerConfig::default()
        };
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn parses_a_full_section_and_rejects_unknown_fields() {
        let text = r#"
            enabled = true
            cluster_name = "lab"
            locations = ["hel1"]
            max_nodes = 20
            scale_up_delay = "5s"
            [[node_types]]
            name = "ccx33"
            cpus = 8
            memory = "32G"
            hourly_price = 0.08
            labels = { dedicated = "true" }
            [api]
            max_retries = 2
        "#;
        let cfg: AutoscalerConfig = toml::from_str(text).expect("the config parses");
        assert_eq!(cfg.node_types[0].memory, 32 << 30);
        assert_eq!(cfg.scale_up_delay, Duration::from_secs(5));
        assert_eq!(cfg.api.max_retries, 2);
        cfg.validate().expect("the config is valid");

        let err = toml::from_str::<AutoscalerConfig>("token = \"abc\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn validation_names_the_field() {
        let cfg = AutoscalerConfig {
            cluster_name: "Bad Name".into(),
            ..Default::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("cluster_name"));
        let cfg = AutoscalerConfig {
            min_nodes: 3,
            max_nodes: 2,
            ..Default::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("min_nodes"));
    }

    #[test]
    fn token_never_prints() {
        let t = HcloudToken::new("s3cr3t-token");
        assert!(!format!("{t:?}").contains("s3cr3t"));
        assert!(!format!("{t}").contains("s3cr3t"));
        assert_eq!(t.expose(), "s3cr3t-token");
    }
}
