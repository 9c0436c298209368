//! The Docker executor (bollard). An attempt is: its image made present ([`image`]), a container
//! created from the node's policy ([`container`]; a leftover of the same name from an earlier
//! run of the node is replaced then, not looked for before), attached before it starts (so no
//! output is missed), started, waited for (`not-running`, which an exit before the wait cannot
//! slip past); on timeout or cancel SIGTERM, `kill_grace`, SIGKILL. OOM is read from the
//! container's state when it exited non-zero. The result goes back first; the container is
//! removed in the background afterwards.
//!
//! A node restarted on its state dir finds the containers it started ([`DockerExecutor::leftovers`],
//! by their labels) and waits on them again ([`DockerExecutor::resume`]) instead of removing
//! them: their output is read back from the engine's log, their timeout from the
//! `rgrid.deadline` label set when they were created.
//!
//! A Docker engine that does not answer is the node's fault, not the task's: the attempt is
//! handed back. Every engine call is a `docker` tracing span and a sample of the
//! `rgrid_node_docker_call_seconds` histogram, by call.

mod container;
mod image;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::container::{
    AttachContainerOptions, CreateContainerOptions, DownloadFromContainerOptions,
    KillContainerOptions, ListContainersOptions, LogOutput, LogsOptions, RemoveContainerOptions,
    WaitContainerOptions,
};
use bollard::errors::Error as DockerError;
use bollard::Docker;
use futures::StreamExt;
use rgrid_core::log::Channel;
use rgrid_core::protocol::ExitStatus;
use rgrid_core::task::OutputSpec;
use rgrid_core::time::unix_ms;
use rgrid_core::{AttemptId, TaskSpec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use container::MANAGED_LABEL;
use container::{
    create_options, mount_inputs, ContainerPolicy, ATTEMPT_LABEL, DEADLINE_LABEL, NODE_LABEL,
    OUTPUTS_LABEL, TASK_LABEL,
};
use image::Images;

use super::outputs::OutputDir;
use super::{
    watch, Capture, Ended, Execution, Milestone, NotRun, Observer, StagedInput, OUTPUT_GRACE,
};
use crate::config::NodeConfig;
use crate::log_stream::LiveOutput;

/// Seconds an engine call may take before it counts as the engine not answering.
const ENGINE_TIMEOUT_SECS: u64 = 120;

/// Runs attempts as Docker containers.
pub struct DockerExecutor {
    docker: Docker,
    images: Images,
    policy: ContainerPolicy,
    kill_grace: Duration,
    /// Where declared outputs are collected.
    outputs: OutputDir,
    /// Container removals after their results went back; waited for when the node stops.
    cleanup: TaskTracker,
}

/// Why the Docker engine cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("the Docker engine does not answer ({0}); is dockerd running and is its socket (docker_host, default /var/run/docker.sock) reachable?")]
pub struct DockerUnavailable(String);

impl DockerExecutor {
    /// Connects to the engine (`docker_host`, else `DOCKER_HOST` or the local socket) and
    /// negotiates the API version (older engines refuse a newer client version).
    pub(crate) async fn connect(
        node: String,
        config: &NodeConfig,
        outputs: OutputDir,
    ) -> Result<Self, DockerUnavailable> {
        let docker = match &config.docker_host {
            Some(host) => {
                Docker::connect_with_socket(host, ENGINE_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            }
            None => Docker::connect_with_local_defaults(),
        }
        .map_err(|e| DockerUnavailable(e.to_string()))?
        .negotiate_version()
        .await
        .map_err(|e| DockerUnavailable(e.to_string()))?;
        docker
            .ping()
            .await
            .map_err(|e| DockerUnavailable(e.to_string()))?;
        Ok(Self {
            images: Images::new(
                docker.clone(),
                config.pull_policy,
                config.pull_timeout,
                config.docker_config.clone(),
            ),
            docker,
            policy: ContainerPolicy {
                node,
                allowed_networks: config.allowed_networks.clone(),
                run_as: config.run_as.clone(),
                read_only_rootfs: config.read_only_rootfs,
                log_max_bytes: config.max_output_bytes,
            },
            kill_grace: config.kill_grace,
            outputs,
            cleanup: TaskTracker::new(),
        })
    }

    /// Removals still running in the background; the node waits for them before it exits.
    pub(crate) fn cleanup(&self) -> TaskTracker {
        self.cleanup.clone()
    }

    /// The containers an earlier run of this node left (it was killed while they ran or before
    /// it had removed them). Those whose result is already spooled (`spooled`), and those
    /// without a readable attempt label, are removed; the others are returned, to be re-adopted.
    pub(crate) async fn leftovers(&self, spooled: impl Fn(AttemptId) -> bool) -> Vec<Leftover> {
        let filters = std::collections::HashMap::from([(
            "label".to_owned(),
            vec![format!("{NODE_LABEL}={}", self.policy.node)],
        )]);
        let options = ListContainersOptions {
            all: true,
            filters,
            ..Default::default()
        };
        let containers = match step("list", self.docker.list_containers(Some(options))).await {
            Ok(containers) => containers,
            Err(err) => {
                tracing::warn!(error = %docker_message(&err), "cannot list the containers of an earlier run");
                return Vec::new();
            }
        };
        let mut leftovers = Vec::new();
        for container in containers {
            let Some(id) = container.id else { continue };
            let labels = container.labels.unwrap_or_default();
            let attempt = labels
                .get(TASK_LABEL)
                .and_then(|t| t.parse().ok())
                .zip(labels.get(ATTEMPT_LABEL).and_then(|a| a.parse().ok()))
                .map(|(task, attempt)| AttemptId { task, attempt });
            let Some(attempt) = attempt.filter(|a| !spooled(*a)) else {
                tracing::info!(container = %id, "removing a finished container left by an earlier run");
                self.remove_later(id);
                continue;
            };
            let deadline_ms = labels.get(DEADLINE_LABEL).and_then(|d| d.parse().ok());
            let outputs = labels
                .get(OUTPUTS_LABEL)
                .and_then(|o| hex::decode(o).ok())
                .and_then(|o| postcard::from_bytes(&o).ok())
                .unwrap_or_default();
            let gpus = step("inspect", self.docker.inspect_container(&id, None))
                .await
                .ok()
                .and_then(|c| c.host_config)
                .and_then(|h| h.device_requests)
                .into_iter()
                .flatten()
                .flat_map(|r| r.device_ids.unwrap_or_default())
                .collect();
            tracing::info!(container = %id, %attempt, "re-adopting a container left by an earlier run");
            leftovers.push(Leftover {
                attempt,
                id,
                deadline_ms,
                outputs,
                gpus,
            });
        }
        leftovers
    }

    /// Waits for a re-adopted container as for one it has just started: its output from the
    /// beginning (the engine's log of it), its timeout from its label.
    pub(crate) async fn resume(
        &self,
        leftover: Leftover,
        cancel: CancellationToken,
        live: Arc<LiveOutput>,
    ) -> Execution {
        let options = LogsOptions::<String> {
            follow: true,
            stdout: true,
            stderr: true,
            tail: "all".to_owned(),
            ..Default::default()
        };
        let output = self.docker.logs(&leftover.id, Some(options));
        let capture = Capture::spawn(Box::pin(channels(output)), live);
        let timeout = leftover
            .deadline_ms
            .map(|d| Duration::from_millis(d.saturating_sub(unix_ms())));
        let mut execution = self.finish(&leftover.id, capture, timeout, cancel).await;
        self.collect(&leftover.id, &leftover.outputs, &mut execution)
            .await;
        self.remove_later(leftover.id);
        execution
    }

    /// Removes container `id` in the background.
    fn remove_later(&self, id: String) {
        let docker = self.docker.clone();
        self.cleanup.spawn(async move {
            if let Err(err) = step("remove", remove(&docker, &id)).await {
                tracing::warn!(container = %id, error = %docker_message(&err), "could not remove the container");
            }
        });
    }

    /// The engine's root dir (`DockerRootDir`), if it answers within a few seconds; why not
    /// otherwise.
    pub(crate) async fn root_dir(&self) -> Result<Option<std::path::PathBuf>, String> {
        match tokio::time::timeout(Duration::from_secs(5), step("info", self.docker.info())).await {
            Ok(Ok(info)) => Ok(info.docker_root_dir.map(Into::into)),
            Ok(Err(err)) => Err(docker_message(&err)),
            Err(_) => Err("no answer within 5 s".to_owned()),
        }
    }

    /// Pulls `image` as the pull policy says (a pre-pull); `cancel` stops it.
    pub(crate) async fn pre_pull(&self, image: &str, cancel: &CancellationToken) {
        match self.images.ensure(image, cancel, || {}).await {
            Ok(reference) => tracing::info!(image = %reference, "pre-pulled"),
            Err(NotRun::Cancelled) => {}
            Err(NotRun::Task(message) | NotRun::Node(message)) => {
                tracing::warn!(%image, %message, "pre-pull failed")
            }
        }
    }

    pub(crate) async fn run(
        &self,
        attempt: AttemptId,
        spec: &TaskSpec,
        inputs: &[StagedInput],
        gpus: &[String],
        cancel: CancellationToken,
        observer: Observer<'_>,
    ) -> Execution {
        let id = match self
            .create(attempt, spec, inputs, gpus, &cancel, observer.milestone)
            .await
        {
            Ok(id) => id,
            Err(not_run) => return not_run.into(),
        };
        let mut execution = self
            .run_container(&id, spec, cancel, observer.output.clone(), || {
                (observer.milestone)(Milestone::Started)
            })
            .await;
        self.collect(&id, &spec.outputs, &mut execution).await;
        self.remove_later(id);
        execution
    }

    /// After an exit 0, reads the declared outputs out of the stopped container.
    async fn collect(&self, id: &str, declared: &[OutputSpec], execution: &mut Execution) {
        let outputs = &self.outputs;
        super::outputs::collect_all(execution, declared, |output| {
            let options = DownloadFromContainerOptions {
                path: output.path.clone(),
            };
            let archive = self.docker.download_from_container(id, Some(options));
            outputs.collect_archive(output, Box::pin(archive), |err| {
                matches!(
                    err,
                    DockerError::DockerResponseServerError {
                        status_code: 404,
                        ..
                    }
                )
            })
        })
        .await;
    }

    /// Creates the container (pulling its image as the policy says); returns its id.
    async fn create(
        &self,
        attempt: AttemptId,
        spec: &TaskSpec,
        inputs: &[StagedInput],
        gpus: &[String],
        cancel: &CancellationToken,
        progress: &(dyn Fn(Milestone) + Send + Sync),
    ) -> Result<String, NotRun> {
        // Refused before anything is pulled.
        create_options(&self.policy, attempt, spec, &spec.image, gpus).map_err(NotRun::Task)?;
        let name = &format!("rgrid-{}-{}", attempt.task, attempt.attempt);
        let mut replaced = false;
        let mut repulled = false;
        loop {
            let image = self
                .images
                .ensure(&spec.image, cancel, || progress(Milestone::Pulling))
                .await?;
            let mut config =
                create_options(&self.policy, attempt, spec, &image, gpus).map_err(NotRun::Task)?;
            if let (Some(timeout), Some(labels)) = (spec.timeout_ms, config.labels.as_mut()) {
                let deadline = unix_ms().saturating_add(timeout);
                labels.insert(DEADLINE_LABEL.to_owned(), deadline.to_string());
            }
            mount_inputs(&mut config, inputs);
            let options = CreateContainerOptions {
                name,
                platform: None,
            };
            match step(
                "create",
                self.docker.create_container(Some(options), config),
            )
            .await
            {
                Ok(created) => return Ok(created.id),
                // A container of this attempt left by an earlier run of the node.
                Err(DockerError::DockerResponseServerError {
                    status_code: 409, ..
                }) if !replaced => {
                    replaced = true;
                    let _ = step("remove", self.remove(name)).await;
                }
                // The image went away since it was checked.
                Err(DockerError::DockerResponseServerError {
                    status_code: 404, ..
                }) if !repulled => {
                    repulled = true;
                    self.images.forget(&image);
                }
                Err(err) if engine_fault(&err) => {
                    return Err(NotRun::Node(format!(
                        "the Docker engine does not answer: {err}"
                    )))
                }
                Err(err) => {
                    return Err(NotRun::Task(format!(
                        "cannot create the container: {}",
                        docker_message(&err)
                    )))
                }
            }
        }
    }

    async fn run_container(
        &self,
        id: &str,
        spec: &TaskSpec,
        cancel: CancellationToken,
        live: Arc<LiveOutput>,
        started: impl FnOnce(),
    ) -> Execution {
        let options = AttachContainerOptions::<String> {
            stdout: Some(true),
            stderr: Some(true),
            stream: Some(true),
            ..Default::default()
        };
        let output = match step("attach", self.docker.attach_container(id, Some(options))).await {
            Ok(attached) => attached.output,
            Err(err) => return fault(&err, "cannot attach to the container").into(),
        };
        let capture = Capture::spawn(Box::pin(channels(output)), live);
        if let Err(err) = step("start", self.docker.start_container::<String>(id, None)).await {
            return fault(&err, "cannot start the container").into();
        }
        started();
        let timeout = spec.timeout_ms.map(Duration::from_millis);
        self.finish(id, capture, timeout, cancel).await
    }

    /// Waits for a started container to end, its timeout or `cancel`; how it ended.
    async fn finish(
        &self,
        id: &str,
        capture: Capture,
        timeout: Option<Duration>,
        cancel: CancellationToken,
    ) -> Execution {
        let ended = watch(self.wait(id), timeout, &cancel).await;
        if !matches!(ended, Ended::Exited(_)) {
            self.stop(id).await;
        }
        let (stdout, stderr) = capture.finish(OUTPUT_GRACE).await;
        let exit = match ended {
            Ended::TimedOut => ExitStatus::TimedOut,
            Ended::Killed => ExitStatus::Killed,
            Ended::Exited(Ok(0)) => ExitStatus::Exited(0),
            Ended::Exited(Ok(code)) => {
                if self.oom_killed(id).await {
                    ExitStatus::OutOfMemory
                } else {
                    ExitStatus::Exited(code)
                }
            }
            Ended::Exited(Err(err)) if engine_fault(&err) => ExitStatus::HandedBack(format!(
                "the Docker engine stopped answering while the task ran: {err}"
            )),
            Ended::Exited(Err(err)) => ExitStatus::StartFailed(format!(
                "waiting for the container failed: {}",
                docker_message(&err)
            )),
        };
        Execution {
            exit,
            stdout,
            stderr,
            outputs: Vec::new(),
        }
    }

    /// SIGTERM, `kill_grace` to exit, then SIGKILL.
    async fn stop(&self, id: &str) {
        let kill = |signal| {
            step(
                "kill",
                self.docker
                    .kill_container(id, Some(KillContainerOptions { signal })),
            )
        };
        let _ = kill("SIGTERM").await;
        if tokio::time::timeout(self.kill_grace, self.wait(id))
            .await
            .is_err()
        {
            let _ = kill("SIGKILL").await;
            let _ = self.wait(id).await;
        }
    }

    /// The exit code once the container is not running. bollard reports a non-zero exit as an
    /// error carrying the code.
    async fn wait(&self, id: &str) -> Result<i64, DockerError> {
        let options = WaitContainerOptions {
            condition: "not-running",
        };
        let mut wait = self.docker.wait_container(id, Some(options));
        let first = step("wait", async { wait.next().await.transpose() }).await;
        match first {
            Ok(Some(response)) => Ok(response.status_code),
            Err(DockerError::DockerContainerWaitError { code, .. }) => Ok(code),
            Err(err) => Err(err),
            Ok(None) => Err(DockerError::DockerStreamError {
                error: "the engine closed the wait stream".to_owned(),
            }),
        }
    }

    async fn oom_killed(&self, id: &str) -> bool {
        step("inspect", self.docker.inspect_container(id, None))
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.oom_killed)
            .unwrap_or(false)
    }

    async fn remove(&self, id: &str) -> Result<(), DockerError> {
        remove(&self.docker, id).await
    }
}

/// A container an earlier run of this node started, found by its labels.
pub(crate) struct Leftover {
    pub attempt: AttemptId,
    id: String,
    /// When its timeout passes (Unix ms), if it has one.
    deadline_ms: Option<u64>,
    /// Its task's declared outputs (from its label).
    outputs: Vec<OutputSpec>,
    /// The GPU ids it was given.
    pub gpus: Vec<String>,
}

/// An attach or log stream as chunks of stdout and stderr.
fn channels(
    output: impl futures::Stream<Item = Result<LogOutput, DockerError>>,
) -> impl futures::Stream<Item = (Channel, bytes::Bytes)> {
    output.filter_map(|chunk| async {
        match chunk.ok()? {
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                Some((Channel::Stdout, message))
            }
            LogOutput::StdErr { message } => Some((Channel::Stderr, message)),
            LogOutput::StdIn { .. } => None,
        }
    })
}

async fn remove(docker: &Docker, id: &str) -> Result<(), DockerError> {
    let options = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    docker.remove_container(id, Some(options)).await
}

/// One engine call: a tracing span and a latency sample, by call.
pub(crate) async fn step<T>(
    call: &'static str,
    request: impl Future<Output = Result<T, DockerError>>,
) -> Result<T, DockerError> {
    let started = Instant::now();
    let result = request
        .instrument(tracing::debug_span!("docker", call))
        .await;
    metrics::histogram!("rgrid_node_docker_call_seconds", "call" => call)
        .record(started.elapsed().as_secs_f64());
    result
}

/// The engine did not answer (no socket, a dropped connection, a timeout), as opposed to
/// answering with an error.
pub(crate) fn engine_fault(err: &DockerError) -> bool {
    matches!(
        err,
        DockerError::IOError { .. }
            | DockerError::HyperResponseError { .. }
            | DockerError::HyperLegacyError { .. }
            | DockerError::HttpClientError { .. }
            | DockerError::RequestTimeoutError
            | DockerError::SocketNotFoundError(_)
    )
}

/// An engine error before the workload ran: handed back when the engine does not answer, else
/// the task's error.
fn fault(err: &DockerError, what: &str) -> NotRun {
    if engine_fault(err) {
        NotRun::Node(format!("the Docker engine does not answer: {err}"))
    } else {
        NotRun::Task(format!("{what}: {}", docker_message(err)))
    }
}

/// The engine's own message when there is one.
pub(crate) fn docker_message(err: &DockerError) -> String {
    match err {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}
