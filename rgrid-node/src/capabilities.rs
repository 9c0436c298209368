//! What the node advertises besides resources: labels tasks select on and capabilities tasks
//! require. Configured values (`RGRID_NODE_LABELS` / `RGRID_NODE_CAPABILITIES`, else the config
//! file's `labels` / `capabilities`: see [`NodeConfig::apply_env`]) win over what the node detects:
//! `docker` when the engine answered, `gpu` when it has GPUs, `process` and the runtimes on
//! `PATH` (`runtime:python`, …) for the process executor, `noop` for the noop executor, and the
//! label `arch` (the cpu architecture).
//!
//! [`NodeConfig::apply_env`]: crate::NodeConfig::apply_env

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use crate::config::{ExecutorKind, NodeConfig};

/// Runtimes looked for on `PATH` by the process executor: the capability and the programs that
/// provide it.
const RUNTIMES: &[(&str, &[&str])] = &[
    ("python", &["python3", "python"]),
    ("node", &["node"]),
    ("ruby", &["ruby"]),
    ("perl", &["perl"]),
    ("java", &["java"]),
    ("go", &["go"]),
    ("deno", &["deno"]),
    ("bun", &["bun"]),
    ("bash", &["bash"]),
];

/// Labels and capabilities to advertise, and where the capabilities came from (for the log).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Advertised {
    pub labels: BTreeMap<String, String>,
    pub capabilities: Vec<String>,
    /// `"configured"` or `"detected"`.
    pub capabilities_from: &'static str,
}

/// Configured labels over the detected `arch`, and the `hourly_price` as its label;
/// configured capabilities instead of the detected ones. `gpus` is the number offered; `path`
/// is searched for runtimes.
pub(crate) fn advertise(config: &NodeConfig, gpus: usize, path: Option<&OsStr>) -> Advertised {
    let mut labels = config.labels.clone();
    labels
        .entry("arch".to_owned())
        .or_insert_with(|| std::env::consts::ARCH.to_owned());
    if let Some(price) = config.hourly_price {
        labels.insert(
            rgrid_core::protocol::HOURLY_PRICE_LABEL.to_owned(),
            price.to_string(),
        );
    }
    let (capabilities, capabilities_from) = match &config.capabilities {
        Some(configured) => (configured.clone(), "configured"),
        None => (detect(config.executor, gpus, path), "detected"),
    };
    Advertised {
        labels,
        capabilities,
        capabilities_from,
    }
}

fn detect(executor: ExecutorKind, gpus: usize, path: Option<&OsStr>) -> Vec<String> {
    let mut found = match executor {
        // The executor connected: the engine answered.
        ExecutorKind::Docker => vec!["docker".to_owned()],
        ExecutorKind::Noop => vec!["noop".to_owned()],
        ExecutorKind::Process => {
            let mut found = vec!["process".to_owned()];
            found.extend(
                RUNTIMES
                    .iter()
                    .filter(|(_, programs)| programs.iter().any(|p| on_path(path, p)))
                    .map(|(runtime, _)| format!("runtime:{runtime}")),
            );
            found
        }
    };
    if gpus > 0 {
        found.push("gpu".to_owned());
    }
    found
}

/// An executable file called `program` in one of `path`'s directories.
fn on_path(path: Option<&OsStr>, program: &str) -> bool {
    path.and_then(|path| find_in(path, program)).is_some()
}

fn find_in(path: &OsStr, program: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(program))
        .find(|file| {
            std::fs::metadata(file)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// `program` as found on the node's `PATH` (a task's environment does not carry the node's);
/// unchanged when it names a path or is not found (starting it then says so).
pub(crate) fn find_program(program: &str) -> PathBuf {
    if program.contains('/') {
        return PathBuf::from(program);
    }
    std::env::var_os("PATH")
        .and_then(|path| find_in(&path, program))
        .unwrap_or_else(|| PathBuf::from(program))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executable(dir: &std::path::Path, name: &str) {
        let file = dir.join(name);
        std::fs::write(&file, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    #[test]
    fn configuration_wins_over_detection() {
        let bin = tempfile::tempdir().expect("temp dir");
        executable(bin.path(), "python3");
        executable(bin.path(), "node");
        std::fs::write(bin.path().join("ruby"), "not executable").expect("write");
        let path = bin.path().as_os_str();

        // Nothing configured: detection.
        let config = NodeConfig {
            executor: ExecutorKind::Process,
            ..NodeConfig::default()
        };
        let found = advertise(&config, 2, Some(path));
        assert_eq!(
            found.capabilities,
            ["process", "runtime:python", "runtime:node", "gpu"]
        );
        assert_eq!(found.capabilities_from, "detected");
        assert_eq!(found.labels["arch"], std::env::consts::ARCH);
        assert_eq!(
            advertise(&NodeConfig::default(), 0, Some(path)).capabilities,
            ["docker"]
        );

        // The file's keys replace the capabilities and add to (or override) the labels.
        let mut config: NodeConfig = toml::from_str(
            "executor = \"process\"\ncapabilities = [\"special\"]\nlabels = { site = \"file\", arch = \"custom\" }",
        )
        .expect("valid config");
        let found = advertise(&config, 2, Some(path));
        assert_eq!(found.capabilities, ["special"]);
        assert_eq!(found.capabilities_from, "configured");
        assert_eq!(found.labels["site"], "file");
        assert_eq!(found.labels["arch"], "custom");

        // The environment over the file.
        config
            .apply_env(|name| match name {
                "RGRID_NODE_CAPABILITIES" => Some("from-env,gpu".into()),
                "RGRID_NODE_LABELS" => Some("site=env".into()),
                _ => None,
            })
            .expect("valid variables");
        let found = advertise(&config, 2, Some(path));
        assert_eq!(found.capabilities, ["from-env", "gpu"]);
        assert_eq!(found.labels["site"], "env");
        assert_eq!(found.labels["arch"], "custom", "kept from the file");
    }
}
