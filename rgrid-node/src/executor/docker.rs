//! The Docker executor (bollard): the image is used if present, else pulled (a pull error is the
//! task's error, with the registry's message); the container gets a cpu quota, a memory limit
//! without swap, a pids limit, no network unless asked, every capability dropped and
//! no-new-privileges. Timeout and cancel kill it; OOM is read from the container's state; the
//! container is removed afterwards.

use std::collections::HashMap;
use std::time::Duration;

use bollard::container::{
    Config, CreateContainerOptions, KillContainerOptions, ListContainersOptions, LogOutput,
    LogsOptions, RemoveContainerOptions, WaitContainerOptions,
};
use bollard::errors::Error as DockerError;
use bollard::image::CreateImageOptions;
use bollard::models::HostConfig;
use bollard::Docker;
use futures::StreamExt;
use rgrid_core::protocol::ExitStatus;
use rgrid_core::task::NetworkMode;
use rgrid_core::{AttemptId, TaskSpec};
use tokio_util::sync::CancellationToken;

use super::{append_capped, sleep_or_forever, Execution};

/// Label on every container rgrid starts, so leftovers can be found and removed.
pub const MANAGED_LABEL: &str = "rgrid.managed";

/// Label naming the node that started a container.
const NODE_LABEL: &str = "rgrid.node";

/// Runs attempts as Docker containers.
pub struct DockerExecutor {
    docker: Docker,
    max_output_bytes: usize,
    /// This node's id, put on its containers.
    node: String,
}

/// Why the Docker engine cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("the Docker engine does not answer ({0}); is dockerd running and is /var/run/docker.sock reachable?")]
pub struct DockerUnavailable(String);

impl DockerExecutor {
    /// Connects to the local engine and negotiates the API version (older engines refuse a newer
    /// client version).
    pub async fn connect(node: String, max_output_bytes: usize) -> Result<Self, DockerUnavailable> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| DockerUnavailable(e.to_string()))?
            .negotiate_version()
            .await
            .map_err(|e| DockerUnavailable(e.to_string()))?;
        docker
            .ping()
            .await
            .map_err(|e| DockerUnavailable(e.to_string()))?;
        Ok(Self {
            docker,
            max_output_bytes,
            node,
        })
    }

    /// Removes containers this node left behind (it was killed while they ran): a node that
    /// starts runs nothing yet, and the head has requeued or will requeue those attempts.
    pub async fn remove_leftovers(&self) {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{NODE_LABEL}={}", self.node)],
        )]);
        let options = ListContainersOptions {
            all: true,
            filters,
            ..Default::default()
        };
        let Ok(containers) = self.docker.list_containers(Some(options)).await else {
            return;
        };
        for id in containers.into_iter().filter_map(|c| c.id) {
            tracing::info!(container = %id, "removing a container left by an earlier run");
            let _ = self.remove(&id).await;
        }
    }

    /// Pulls `image` unless it is present.
    pub async fn ensure_image(&self, image: &str) -> Result<(), String> {
        if self.docker.inspect_image(image).await.is_ok() {
            return Ok(());
        }
        let options = CreateImageOptions {
            from_image: image,
            ..Default::default()
        };
        let mut pull = self.docker.create_image(Some(options), None, None);
        while let Some(progress) = pull.next().await {
            match progress {
                Ok(info) => {
                    if let Some(error) = info.error {
                        return Err(format!(
                            "image {image} is not present on the node and could not be pulled: {error}"
                        ));
                    }
                }
                Err(err) => {
                    return Err(format!(
                        "image {image} is not present on the node and could not be pulled: {}",
                        docker_message(&err)
                    ))
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn run(
        &self,
        attempt: AttemptId,
        spec: &TaskSpec,
        cancel: CancellationToken,
        started: impl FnOnce(),
    ) -> Execution {
        let start_failed = Execution::start_failed;
        if let Err(message) = self.ensure_image(&spec.image).await {
            return start_failed(message);
        }
        let name = format!("rgrid-{}-{}", attempt.task, attempt.attempt);
        // A leftover of the same attempt (a node restart) would make the create fail.
        let _ = self.remove(&name).await;
        let id = match self.create(&name, attempt, spec).await {
            Ok(id) => id,
            Err(err) => {
                return start_failed(format!(
                    "cannot create the container: {}",
                    docker_message(&err)
                ))
            }
        };
        if let Err(err) = self.docker.start_container::<String>(&id, None).await {
            let _ = self.remove(&id).await;
            return start_failed(format!(
                "cannot start the container: {}",
                docker_message(&err)
            ));
        }
        started();
        let timeout = spec.timeout_ms.map(Duration::from_millis);
        let ended = tokio::select! {
            code = self.wait(&id) => Ended::Exited(code),
            _ = sleep_or_forever(timeout) => Ended::TimedOut,
            _ = cancel.cancelled() => Ended::Killed,
        };
        if !matches!(ended, Ended::Exited(_)) {
            let _ = self
                .docker
                .kill_container(&id, Some(KillContainerOptions { signal: "SIGKILL" }))
                .await;
            let _ = self.wait(&id).await;
        }
        let oom = self
            .docker
            .inspect_container(&id, None)
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.oom_killed)
            .unwrap_or(false);
        let (stdout, stderr) = self.logs(&id).await;
        if let Err(err) = self.remove(&id).await {
            tracing::warn!(container = %id, error = %docker_message(&err), "could not remove the container");
        }
        let exit = match ended {
            Ended::TimedOut => ExitStatus::TimedOut,
            Ended::Killed => ExitStatus::Killed,
            Ended::Exited(_) if oom => ExitStatus::OutOfMemory,
            Ended::Exited(Ok(code)) => ExitStatus::Exited(code),
            Ended::Exited(Err(message)) => ExitStatus::StartFailed(message),
        };
        Execution {
            exit,
            stdout,
            stderr,
        }
    }

    async fn create(
        &self,
        name: &str,
        attempt: AttemptId,
        spec: &TaskSpec,
    ) -> Result<String, DockerError> {
        let memory = i64::try_from(spec.resources.memory_bytes).unwrap_or(i64::MAX);
        let nano_cpus =
            i64::try_from(spec.resources.cpu_millis.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
        let network = match spec.network {
            NetworkMode::None => "none",
            NetworkMode::Bridge => "bridge",
            NetworkMode::Host => "host",
        };
        let labels = HashMap::from([
            (MANAGED_LABEL.to_owned(), "true".to_owned()),
            (NODE_LABEL.to_owned(), self.node.clone()),
            ("rgrid.task".to_owned(), attempt.task.to_string()),
            ("rgrid.attempt".to_owned(), attempt.attempt.to_string()),
        ]);
        let config = Config {
            image: Some(spec.image.clone()),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: Some(
                spec.env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .chain([
                        format!("RGRID_TASK_ID={}", attempt.task),
                        format!("RGRID_ATTEMPT={}", attempt.attempt),
                    ])
                    .collect(),
            ),
            working_dir: spec.workdir.clone(),
            labels: Some(labels),
            host_config: Some(HostConfig {
                nano_cpus: Some(nano_cpus),
                memory: Some(memory),
                // Equal to memory: no swap, so exceeding the limit is an OOM kill.
                memory_swap: Some(memory),
                pids_limit: Some(4096),
                network_mode: Some(network.to_owned()),
                cap_drop: Some(vec!["ALL".to_owned()]),
                security_opt: Some(vec!["no-new-privileges".to_owned()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name,
            platform: None,
        };
        Ok(self
            .docker
            .create_container(Some(options), config)
            .await?
            .id)
    }

    /// The exit code. bollard reports a non-zero exit as an error carrying the code.
    async fn wait(&self, id: &str) -> Result<i64, String> {
        let mut wait = self
            .docker
            .wait_container(id, None::<WaitContainerOptions<String>>);
        match wait.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(err)) => Err(format!(
                "waiting for the container failed: {}",
                docker_message(&err)
            )),
            None => Err("the engine closed the wait stream".to_owned()),
        }
    }

    async fn logs(&self, id: &str) -> (Vec<u8>, Vec<u8>) {
        let options = LogsOptions::<String> {
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let mut logs = self.docker.logs(id, Some(options));
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let max = self.max_output_bytes;
        while let Some(Ok(chunk)) = logs.next().await {
            match chunk {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    append_capped(&mut stdout, &message, max)
                }
                LogOutput::StdErr { message } => append_capped(&mut stderr, &message, max),
                LogOutput::StdIn { .. } => {}
            }
        }
        (stdout, stderr)
    }

    async fn remove(&self, id: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        self.docker.remove_container(id, Some(options)).await
    }
}

enum Ended {
    Exited(Result<i64, String>),
    TimedOut,
    Killed,
}

/// The engine's own message when there is one.
fn docker_message(err: &DockerError) -> String {
    match err {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}
