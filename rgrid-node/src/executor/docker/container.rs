//! The container an attempt gets, as the engine's create options: what the task asks for (image,
//! command, env, cpu quota, memory limit without swap, GPUs by device id) within what the node
//! decides ([`ContainerPolicy`]: the network modes it allows, the user containers run as, a
//! read-only root file system) and what every container gets (no capabilities,
//! no-new-privileges, a pids limit, an init process that forwards signals, a capped log file).

use std::collections::HashMap;

use bollard::container::Config;
use bollard::models::{DeviceRequest, HostConfig, HostConfigLogConfig};
use rgrid_core::task::NetworkMode;
use rgrid_core::{AttemptId, TaskSpec};

use crate::executor::{gpu_env, StagedInput};

/// Label on every container rgrid starts, so leftovers can be found and removed.
pub const MANAGED_LABEL: &str = "rgrid.managed";

/// Label naming the node that started a container.
pub(crate) const NODE_LABEL: &str = "rgrid.node";

/// Labels naming a container's task and attempt (how a restarted node knows its containers).
pub(crate) const TASK_LABEL: &str = "rgrid.task";
pub(crate) const ATTEMPT_LABEL: &str = "rgrid.attempt";

/// Label holding when a container's timeout passes (Unix ms), so it survives a node restart.
pub(crate) const DEADLINE_LABEL: &str = "rgrid.deadline";

/// Label holding the task's declared outputs (hex of their postcard encoding), so that a
/// restarted node that re-adopts the container still collects them.
pub(crate) const OUTPUTS_LABEL: &str = "rgrid.outputs";

/// What the node decides for every container, whatever the task asks.
#[derive(Clone, Debug)]
pub(crate) struct ContainerPolicy {
    /// This node's id, put on its containers.
    pub node: String,
    /// Network modes tasks may use (`none`, `bridge`, `host`).
    pub allowed_networks: Vec<String>,
    /// `user[:group]` for every container; `None` = the image's user.
    pub run_as: Option<String>,
    /// Every container gets a read-only root file system (tasks may also ask for one).
    pub read_only_rootfs: bool,
    /// Size of the engine's log file per container: output is read from the attach stream, so
    /// the file only needs to hold what rgrid keeps.
    pub log_max_bytes: usize,
}

fn network_name(mode: &NetworkMode) -> &'static str {
    match mode {
        NetworkMode::None => "none",
        NetworkMode::Bridge => "bridge",
        NetworkMode::Host => "host",
    }
}

/// The create options for `attempt` of `spec` on `image` with GPUs `gpus`, or why the node
/// refuses to run it.
pub(crate) fn create_options(
    policy: &ContainerPolicy,
    attempt: AttemptId,
    spec: &TaskSpec,
    image: &str,
    gpus: &[String],
) -> Result<Config<String>, String> {
    let network = network_name(&spec.network);
    if !policy.allowed_networks.iter().any(|m| m == network) {
        return Err(format!(
            "the task asks for network mode {network:?}, which this node does not allow (allowed_networks = {:?}); run it with network none or on a node that allows {network:?}",
            policy.allowed_networks
        ));
    }
    let memory = i64::try_from(spec.resources.memory_bytes).unwrap_or(i64::MAX);
    let nano_cpus =
        i64::try_from(spec.resources.cpu_millis.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
    let mut labels = HashMap::from([
        (MANAGED_LABEL.to_owned(), "true".to_owned()),
        (NODE_LABEL.to_owned(), policy.node.clone()),
        (TASK_LABEL.to_owned(), attempt.task.to_string()),
        (ATTEMPT_LABEL.to_owned(), attempt.attempt.to_string()),
    ]);
    if !spec.outputs.is_empty() {
        let encoded = postcard::to_allocvec(&spec.outputs).map_err(|e| e.to_string())?;
        labels.insert(OUTPUTS_LABEL.to_owned(), hex::encode(encoded));
    }
    let env = spec
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .chain([
            format!("RGRID_TASK_ID={}", attempt.task),
            format!("RGRID_ATTEMPT={}", attempt.attempt),
        ])
        .chain(
            gpu_env(gpus, &["NVIDIA_VISIBLE_DEVICES"])
                .into_iter()
                .map(|(k, v)| format!("{k}={v}")),
        )
        .collect();
    let read_only = policy.read_only_rootfs || spec.read_only_rootfs;
    let device_requests = (!gpus.is_empty()).then(|| {
        vec![DeviceRequest {
            driver: Some("nvidia".to_owned()),
            device_ids: Some(gpus.to_vec()),
            capabilities: Some(vec![vec!["gpu".to_owned()]]),
            ..Default::default()
        }]
    });
    Ok(Config {
        image: Some(image.to_owned()),
        cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
        env: Some(env),
        working_dir: spec.workdir.clone(),
        user: policy.run_as.clone(),
        labels: Some(labels),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        host_config: Some(HostConfig {
            nano_cpus: Some(nano_cpus),
            memory: Some(memory),
            // Equal to memory: no swap, so exceeding the limit is an OOM kill.
            memory_swap: Some(memory),
            pids_limit: Some(4096),
            network_mode: Some(network.to_owned()),
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            // A first process that forwards SIGTERM: a shell as PID 1 would ignore it.
            init: Some(true),
            readonly_rootfs: Some(read_only),
            // A tmpfs counts against the memory limit, which bounds it.
            tmpfs: read_only
                .then(|| HashMap::from([("/tmp".to_owned(), "rw,nosuid,nodev".to_owned())])),
            device_requests,
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".to_owned()),
                config: Some(HashMap::from([
                    ("max-size".to_owned(), policy.log_max_bytes.to_string()),
                    ("max-file".to_owned(), "1".to_owned()),
                ])),
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Mounts each staged input read-only at its path in the container.
pub(crate) fn mount_inputs(config: &mut Config<String>, inputs: &[StagedInput]) {
    if inputs.is_empty() {
        return;
    }
    let binds = inputs
        .iter()
        .map(|input| format!("{}:{}:ro", input.host.display(), input.container))
        .collect();
    if let Some(host) = config.host_config.as_mut() {
        host.binds = Some(binds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rgrid_core::TaskId;

    fn policy() -> ContainerPolicy {
        ContainerPolicy {
            node: "n1".into(),
            allowed_networks: vec!["none".into()],
            run_as: None,
            read_only_rootfs: false,
            log_max_bytes: 1 << 20,
        }
    }

    fn attempt() -> AttemptId {
        AttemptId {
            task: TaskId::new(),
            attempt: 1,
        }
    }

    #[test]
    fn gpus_are_requested_by_device_id_from_the_nvidia_driver() {
        let spec = TaskSpec::new("img").gpus(2);
        let gpus = ["1".to_owned(), "3".to_owned()];
        let config =
            create_options(&policy(), attempt(), &spec, "img:latest", &gpus).expect("allowed");
        let host = config.host_config.expect("host config");
        assert_eq!(
            host.device_requests,
            Some(vec![DeviceRequest {
                driver: Some("nvidia".into()),
                count: None,
                device_ids: Some(vec!["1".into(), "3".into()]),
                capabilities: Some(vec![vec!["gpu".into()]]),
                options: None,
            }])
        );
        // As the engine receives it.
        let json = serde_json::to_value(&host).expect("serializes");
        assert_eq!(
            json["DeviceRequests"],
            serde_json::json!([{"Driver": "nvidia", "DeviceIDs": ["1", "3"], "Capabilities": [["gpu"]]}])
        );
        let env = config.env.expect("env");
        assert!(
            env.contains(&"NVIDIA_VISIBLE_DEVICES=1,3".to_owned()),
            "{env:?}"
        );

        let none = create_options(&policy(), attempt(), &TaskSpec::new("img"), "img", &[])
            .expect("allowed");
        assert_eq!(none.host_config.expect("host config").device_requests, None);
        assert!(!none
            .env
            .expect("env")
            .iter()
            .any(|e| e.starts_with("NVIDIA")));
    }

    #[test]
    fn the_node_decides_network_user_and_root_file_system() {
        let host = TaskSpec::new("img").network(NetworkMode::Host);
        let err = create_options(&policy(), attempt(), &host, "img", &[]).expect_err("refused");
        assert!(
            err.contains("\"host\"") && err.contains("allowed_networks"),
            "{err}"
        );

        let strict = ContainerPolicy {
            allowed_networks: vec!["none".into(), "bridge".into()],
            run_as: Some("65534:65534".into()),
            read_only_rootfs: true,
            ..policy()
        };
        let bridge = TaskSpec::new("img").network(NetworkMode::Bridge);
        let config = create_options(&strict, attempt(), &bridge, "img", &[]).expect("allowed");
        assert_eq!(config.user.as_deref(), Some("65534:65534"));
        let host = config.host_config.expect("host config");
        assert_eq!(host.network_mode.as_deref(), Some("bridge"));
        assert_eq!(host.readonly_rootfs, Some(true));
        assert!(host.tmpfs.expect("a tmpfs").contains_key("/tmp"));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
        let log = host.log_config.expect("a log config");
        assert_eq!(
            log.config.expect("log options")["max-size"],
            (1 << 20).to_string()
        );

        // A task opts in on a node whose default is writable.
        let config = create_options(
            &policy(),
            attempt(),
            &TaskSpec::new("img").read_only_rootfs(),
            "img",
            &[],
        )
        .expect("allowed");
        assert_eq!(config.user, None);
        let host = config.host_config.expect("host config");
        assert_eq!(host.readonly_rootfs, Some(true));
        let config =
            create_options(&policy(), attempt(), &TaskSpec::new("img"), "img", &[]).expect("ok");
        let host = config.host_config.expect("host config");
        assert_eq!(host.readonly_rootfs, Some(false));
        assert_eq!(host.tmpfs, None);
    }
}
