//! The head's configuration: a TOML file (`--config`), overridden by `RGRID_*` environment
//! variables, overridden by flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::time::Duration;

use rgrid_core::config::{read_toml, ConfigFileError};
use rgrid_core::scheduler::SchedulerConfig;

use serde::{Deserialize, Serialize};

/// Everything the head can be configured with. Every field has a default (`deploy/head.toml`
/// shows them all).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadConfig {
    /// UDP address the QUIC endpoint listens on. Default `0.0.0.0:7070`.
    pub listen: SocketAddr,
    /// Where the CA, the join token, `client.toml`, the SQLite database and outputs live.
    /// Default `./rgrid-state`.
    pub state_dir: PathBuf,
    /// Database URL. Default `sqlite://STATE_DIR/rgrid.db`.
    pub database_url: Option<String>,
    /// Address written into `client.toml` for clients to reach the head. Default: the listen
    /// address (`127.0.0.1` when listening on all interfaces).
    pub advertise: Option<String>,
    /// How often nodes heartbeat. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A node silent (or disconnected) this long is dead and its tasks are requeued. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// After a restart, how long nodes have to reconnect and re-adopt the attempts they were
    /// running before those count as orphaned. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub recovery_grace: Duration,
    /// How long the join token written to `STATE_DIR/join-token` stays valid. Default `24h`.
    #[serde(with = "humantime_serde")]
    pub join_token_ttl: Duration,
    /// How long the head's server certificate is valid. The head issues a new one at start and
    /// again at two thirds of this, presenting it from the next handshake on (no restart; open
    /// connections go on). Default `30d`.
    #[serde(with = "humantime_serde")]
    pub server_cert_lifetime: Duration,
    /// How long a node certificate is valid. A node renews its certificate over its session at
    /// two thirds of this (without a restart); one that stayed away past it must join again.
    /// Default `30d`.
    #[serde(with = "humantime_serde")]
    pub node_cert_lifetime: Duration,
    /// How long a client certificate (`client.toml`) is valid. The client library renews it when
    /// it connects past two thirds of this, rewriting the file. Default `90d`.
    #[serde(with = "humantime_serde")]
    pub client_cert_lifetime: Duration,
    /// Connections the head holds at once from peers it has not authenticated yet (joining
    /// nodes, TLS handshakes in progress); more are refused. Default `256`.
    pub max_unauthenticated: usize,
    /// The same, per source address. Default `16`.
    pub max_unauthenticated_per_address: usize,
    /// Joins the head handles per second on average, and at most this many at once; more wait
    /// their turn (within the 5 s a joining peer has). Default `20`.
    pub joins_per_second: u32,
    /// How long a failing database commit is retried before the head stops (exit status 1) so
    /// that a restart recovers; nothing of the failed commit was acknowledged. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub commit_retry_for: Duration,
    /// The `pack` placement strategy fills a node until this fraction of its cpu or memory is
    /// used, then spreads over the others (Ray's hybrid policy). `1.0` packs every node full
    /// before using the next, which leaves room for large tasks. Between 0 and 1. Default `0.5`.
    pub pack_threshold: f64,
    /// Address of the Prometheus endpoint (`GET /metrics`), like `127.0.0.1:9464`. Default: off.
    pub metrics_listen: Option<SocketAddr>,
    /// Auto-scaling on Hetzner Cloud (`[autoscaler]`; see `rgrid_cloud::AutoscalerConfig` for
    /// every key). Default: disabled.
    pub autoscaler: rgrid_cloud::AutoscalerConfig,
    /// Where objects are kept, their quota and retention (`[objects]`).
    pub objects: ObjectsConfig,
    /// How much of an attempt's stdout, and of its stderr, the head keeps (in its result and
    /// its log); what a node sends past it is dropped, and a log says how much. A size like
    /// `16M`. Default `16M`.
    pub max_output_bytes: String,
    /// The most bytes large results (`STATE_DIR/outputs`) and attempt logs (`STATE_DIR/logs`)
    /// take together; past it, a result is kept without its stdout and stderr and a log is cut
    /// (saying how much it dropped). Default `10G`.
    pub max_total_output_bytes: String,
}

/// The object store (`[objects]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectsConfig {
    /// An S3-compatible bucket, `s3://BUCKET/PREFIX` (Hetzner Object Storage, MinIO, AWS).
    /// Credentials, region and endpoint come from the environment only: `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT` (and `AWS_ALLOW_HTTP=true` for a
    /// plain-http endpoint). Default: the directory `STATE_DIR/objects`.
    pub url: Option<String>,
    /// The quota: the most bytes all objects together may take; an upload beyond it is
    /// refused. A size like `100G`. Default `100G`.
    pub max_object_bytes: String,
    /// An object not used (uploaded, downloaded) for this long is deleted. Default `24h`.
    #[serde(with = "humantime_serde")]
    pub object_retention: Duration,
}

impl Default for ObjectsConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_object_bytes: "100G".into(),
            object_retention: Duration::from_secs(24 * 3600),
        }
    }
}

impl ObjectsConfig {
    /// The quota in bytes.
    pub fn max_object_bytes(&self) -> Result<u64, ConfigError> {
        rgrid_core::resources::parse_size(&self.max_object_bytes)
            .map_err(|e| ConfigError::Invalid(format!("[objects] max_object_bytes: {e}")))
    }

    /// `s3://BUCKET/PREFIX` split into the bucket and the prefix (possibly empty).
    pub fn parse_s3_url(url: &str) -> Result<(&str, &str), String> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            format!("[objects] url = {url:?} is not an S3 url: use s3://BUCKET/PREFIX (or leave it out for STATE_DIR/objects)")
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!(
                "[objects] url = {url:?} names no bucket: use s3://BUCKET/PREFIX"
            ));
        }
        Ok((bucket, prefix.trim_matches('/')))
    }
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 7070)),
            state_dir: PathBuf::from("rgrid-state"),
            database_url: None,
            advertise: None,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(5),
            recovery_grace: Duration::from_secs(10),
            join_token_ttl: Duration::from_secs(24 * 3600),
            server_cert_lifetime: Duration::from_secs(30 * 24 * 3600),
            node_cert_lifetime: Duration::from_secs(30 * 24 * 3600),
            client_cert_lifetime: Duration::from_secs(90 * 24 * 3600),
            max_unauthenticated: 256,
            max_unauthenticated_per_address: 16,
            joins_per_second: 20,
            commit_retry_for: Duration::from_secs(30),
            pack_threshold: SchedulerConfig::default().pack_threshold,
            metrics_listen: None,
            autoscaler: rgrid_cloud::AutoscalerConfig::default(),
            objects: ObjectsConfig::default(),
            max_output_bytes: "16M".into(),
            max_total_output_bytes: "10G".into(),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl HeadConfig {
    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Ok(read_toml(path)?)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "heartbeat_interval must be above 0".into(),
            ));
        }
        if self.heartbeat_timeout <= self.heartbeat_interval {
            return Err(ConfigError::Invalid(format!(
                "heartbeat_timeout ({:?}) must be longer than heartbeat_interval ({:?})",
                self.heartbeat_timeout, self.heartbeat_interval
            )));
        }
        if self.max_unauthenticated == 0
            || self.max_unauthenticated_per_address == 0
            || self.joins_per_second == 0
        {
            return Err(ConfigError::Invalid(
                "max_unauthenticated, max_unauthenticated_per_address and joins_per_second must be above 0 (or no node could join)".into(),
            ));
        }
        for (key, lifetime) in [
            ("server_cert_lifetime", self.server_cert_lifetime),
            ("node_cert_lifetime", self.node_cert_lifetime),
            ("client_cert_lifetime", self.client_cert_lifetime),
        ] {
            if lifetime < Duration::from_secs(3) || lifetime > rgrid_core::tls::CA_LIFETIME {
                return Err(ConfigError::Invalid(format!(
                    "{key} = {} is out of range: use from 3s to 3650d (certificates renew at two thirds of it)",
                    humantime::format_duration(lifetime)
                )));
            }
        }
        if !(0.0..=1.0).contains(&self.pack_threshold) {
            return Err(ConfigError::Invalid(format!(
                "pack_threshold = {} is not a fraction: use a number from 0 to 1 (0.5 packs nodes half full, then spreads; 1.0 packs them full)",
                self.pack_threshold
            )));
        }
        self.objects.max_object_bytes()?;
        self.max_output_bytes()?;
        self.max_total_output_bytes()?;
        if let Some(url) = &self.objects.url {
            ObjectsConfig::parse_s3_url(url).map_err(ConfigError::Invalid)?;
        }
        if self.objects.object_retention.is_zero() {
            return Err(ConfigError::Invalid(
                "[objects] object_retention must be above 0 (an object would be deleted as soon as it is stored)".into(),
            ));
        }
        Ok(())
    }

    /// `max_output_bytes` in bytes.
    pub fn max_output_bytes(&self) -> Result<u64, ConfigError> {
        rgrid_core::resources::parse_size(&self.max_output_bytes)
            .map_err(|e| ConfigError::Invalid(format!("max_output_bytes: {e}")))
    }

    /// `max_total_output_bytes` in bytes.
    pub fn max_total_output_bytes(&self) -> Result<u64, ConfigError> {
        rgrid_core::resources::parse_size(&self.max_total_output_bytes)
            .map_err(|e| ConfigError::Invalid(format!("max_total_output_bytes: {e}")))
    }

    /// The limits on peers without a certificate from this config.
    pub(crate) fn admission_limits(&self) -> crate::admission::Limits {
        crate::admission::Limits {
            total: self.max_unauthenticated,
            per_address: self.max_unauthenticated_per_address,
            joins_per_second: self.joins_per_second,
        }
    }

    /// The scheduler's tunables from this config.
    pub fn scheduler_config(&self) -> SchedulerConfig {
        SchedulerConfig {
            pack_threshold: self.pack_threshold,
        }
    }

    /// The address provisioned nodes reach the head at: `advertise`, else the address the
    /// endpoint is bound to (`bound`) when it is a specific one.
    pub fn node_facing_address(&self, bound: SocketAddr) -> Result<String, ConfigError> {
        match &self.advertise {
            Some(addr) => Ok(addr.clone()),
            None if !bound.ip().is_unspecified() => Ok(bound.to_string()),
            None => Err(ConfigError::Invalid(format!(
                "listen = {} says nothing about where nodes reach the head: set `advertise` to the head's public or private address",
                self.listen
            ))),
        }
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.state_dir.join("rgrid.db").display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_and_rejects_unknown_keys() {
        let config: HeadConfig =
            toml::from_str("heartbeat_timeout = \"10s\"").expect("the config parses");
        assert_eq!(config.heartbeat_timeout, Duration::from_secs(10));
        assert_eq!(config.heartbeat_interval, Duration::from_secs(1));
        assert!(toml::from_str::<HeadConfig>("heartbeat = 1").is_err());
        let bad = HeadConfig {
            heartbeat_timeout: Duration::from_millis(500),
            ..HeadConfig::default()
        };
        assert!(bad.validate().is_err());
        let closed = HeadConfig {
            max_unauthenticated_per_address: 0,
            ..HeadConfig::default()
        };
        let err = closed.validate().expect_err("no node could join");
        assert!(err.to_string().contains("max_unauthenticated"), "{err}");
    }

    #[test]
    fn objects_config_is_checked() {
        let config: HeadConfig = toml::from_str(
            "[objects]\nurl = \"s3://bucket/some/prefix/\"\nmax_object_bytes = \"2G\"\nobject_retention = \"1h\"",
        )
        .expect("the config parses");
        assert!(config.validate().is_ok());
        assert_eq!(config.objects.max_object_bytes().ok(), Some(2 << 30));
        assert_eq!(
            ObjectsConfig::parse_s3_url("s3://bucket/some/prefix/"),
            Ok(("bucket", "some/prefix"))
        );
        for (key, value) in [
            ("url", "\"http://bucket\""),
            ("url", "\"s3:///prefix\""),
            ("max_object_bytes", "\"lots\""),
            ("object_retention", "\"0s\""),
        ] {
            let config: HeadConfig =
                toml::from_str(&format!("[objects]\n{key} = {value}")).expect("the config parses");
            let err = config.validate().expect_err("refused").to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn pack_threshold_is_a_fraction() {
        let config: HeadConfig = toml::from_str("pack_threshold = 1.0").expect("the config parses");
        assert_eq!(config.scheduler_config().pack_threshold, 1.0);
        assert!(config.validate().is_ok());
        assert_eq!(HeadConfig::default().pack_threshold, 0.5);
        for bad in [-0.1, 1.5, f64::NAN] {
            let config = HeadConfig {
                pack_threshold: bad,
                ..HeadConfig::default()
            };
            let err = config.validate().expect_err("out of range").to_string();
            assert!(err.contains("pack_threshold"), "{err}");
        }
    }
}
