//! Executors run one attempt and say how it ended: [`docker`] (the default), [`process`]
//! (opt-in, for hosts without Docker) and `Noop` (runs nothing: a benchmarking aid).
//! [`Executor`] gives each attempt its GPUs (specific ids that no other attempt holds, back when
//! it ends); what the attempt printed is captured by [`Capture`], capped in size and bounded in
//! time.

pub mod docker;
pub mod outputs;
pub mod process;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use rgrid_core::protocol::ExitStatus;
use rgrid_core::{AttemptId, TaskSpec};
use tokio_util::sync::CancellationToken;

use crate::gpu::GpuPool;

/// A task input staged into the container: the cached file, mounted read-only at `container`.
#[derive(Clone, Debug)]
pub struct StagedInput {
    pub host: std::path::PathBuf,
    pub container: String,
}

/// How far an attempt has got before its workload runs: what the head's listings show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Milestone {
    /// Its image is being pulled.
    Pulling,
    /// Its workload is running.
    Started,
}

/// How an attempt ended, with its captured output.
#[derive(Debug)]
pub struct Execution {
    pub exit: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The declared outputs, collected after an exit 0, to be uploaded.
    pub outputs: Vec<outputs::Collected>,
}

impl Execution {
    /// The workload never ran, for a reason of the task's own.
    pub(crate) fn start_failed(message: String) -> Self {
        NotRun::Task(message).into()
    }

    fn without_output(exit: ExitStatus) -> Self {
        Self {
            exit,
            stdout: Vec::new(),
            stderr: Vec::new(),
            outputs: Vec::new(),
        }
    }
}

/// Why an attempt did not get to run its workload.
#[derive(Debug)]
pub(crate) enum NotRun {
    /// The task's own doing (an image that does not exist, a refused network mode): it fails.
    Task(String),
    /// The node's (engine unreachable, registry 5xx or 429, a pull timeout): it is handed back
    /// and runs again, here or elsewhere.
    Node(String),
    /// Cancelled before it started.
    Cancelled,
}

impl From<NotRun> for Execution {
    fn from(not_run: NotRun) -> Self {
        Self::without_output(match not_run {
            NotRun::Task(message) => ExitStatus::StartFailed(message),
            NotRun::Node(message) => ExitStatus::HandedBack(message),
            NotRun::Cancelled => ExitStatus::Killed,
        })
    }
}

enum Kind {
    Docker(Box<docker::DockerExecutor>),
    Process(process::ProcessExecutor),
    /// Every attempt succeeds at once with empty output (each declared output an empty object).
    Noop,
}

/// One of the executors, with the node's GPUs and where declared outputs are collected.
pub struct Executor {
    kind: Kind,
    gpus: GpuPool,
    outputs: outputs::OutputDir,
}

impl Executor {
    pub(crate) fn docker(
        docker: docker::DockerExecutor,
        gpus: GpuPool,
        outputs: outputs::OutputDir,
    ) -> Self {
        Self {
            kind: Kind::Docker(Box::new(docker)),
            gpus,
            outputs,
        }
    }

    pub(crate) fn process(
        process: process::ProcessExecutor,
        gpus: GpuPool,
        outputs: outputs::OutputDir,
    ) -> Self {
        Self {
            kind: Kind::Process(process),
            gpus,
            outputs,
        }
    }

    pub(crate) fn noop(gpus: GpuPool, outputs: outputs::OutputDir) -> Self {
        Self {
            kind: Kind::Noop,
            gpus,
            outputs,
        }
    }

    /// Whether attempts run something (all but `Noop`, which reads no inputs either).
    pub(crate) fn runs_workloads(&self) -> bool {
        !matches!(self.kind, Kind::Noop)
    }

    /// The Docker executor, if that is the kind.
    pub(crate) fn as_docker(&self) -> Option<&docker::DockerExecutor> {
        match &self.kind {
            Kind::Docker(docker) => Some(docker),
            Kind::Process(_) | Kind::Noop => None,
        }
    }

    /// Waits for a container an earlier run of the node started, holding its GPUs meanwhile.
    pub(crate) async fn resume(
        &self,
        leftover: docker::Leftover,
        cancel: CancellationToken,
    ) -> Execution {
        let _gpus = self.gpus.take_ids(&leftover.gpus);
        match &self.kind {
            Kind::Docker(docker) => docker.resume(leftover, cancel).await,
            Kind::Process(_) | Kind::Noop => NotRun::Node(
                "a container to re-adopt, but this node does not run the Docker executor".into(),
            )
            .into(),
        }
    }

    /// Runs `spec` as `attempt` with its `inputs` staged, to its end, its timeout, or `cancel`.
    /// `progress` hears each [`Milestone`] the attempt reaches.
    pub async fn run(
        &self,
        attempt: AttemptId,
        spec: &TaskSpec,
        inputs: &[StagedInput],
        cancel: CancellationToken,
        progress: &(dyn Fn(Milestone) + Send + Sync),
    ) -> Execution {
        // The head places by GPU count, so a shortage means its view and ours differ for a
        // moment (an attempt it superseded is still being killed here): not the task's fault.
        let Some(gpus) = self.gpus.take(spec.resources.gpus) else {
            return NotRun::Node(format!(
                "{} GPUs asked, {} free on this node",
                spec.resources.gpus,
                self.gpus.free()
            ))
            .into();
        };
        match &self.kind {
            Kind::Docker(docker) => {
                docker
                    .run(attempt, spec, inputs, &gpus.ids, cancel, progress)
                    .await
            }
            Kind::Process(_) if !inputs.is_empty() => Execution::start_failed(
                "the task has inputs, which only the docker executor stages: run it on a Docker node".into(),
            ),
            Kind::Process(process) => {
                let mut execution = process
                    .run(attempt, spec, &gpus.ids, cancel, || progress(Milestone::Started))
                    .await;
                let root = match &spec.workdir {
                    Some(dir) => std::path::PathBuf::from(dir),
                    None => std::env::current_dir().unwrap_or_default(),
                };
                outputs::collect_all(&mut execution, &spec.outputs, |output| {
                    self.outputs.collect_host(output, &root)
                })
                .await;
                execution
            }
            Kind::Noop => {
                let mut execution = Execution::without_output(ExitStatus::Exited(0));
                outputs::collect_all(&mut execution, &spec.outputs, |output| {
                    self.outputs.collect_empty(output)
                })
                .await;
                execution
            }
        }
    }
}

/// How waiting for a workload ended.
pub(crate) enum Ended<T> {
    /// It ended by itself.
    Exited(T),
    /// Its timeout passed first.
    TimedOut,
    /// It was cancelled first.
    Killed,
}

/// Waits for `exit`, the timeout (none = forever) or `cancel`, whichever comes first.
pub(crate) async fn watch<T>(
    exit: impl Future<Output = T>,
    timeout: Option<Duration>,
    cancel: &CancellationToken,
) -> Ended<T> {
    let timeout = async {
        match timeout {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        value = exit => Ended::Exited(value),
        _ = timeout => Ended::TimedOut,
        _ = cancel.cancelled() => Ended::Killed,
    }
}

/// Which stream a chunk of output came from.
pub(crate) enum Channel {
    Stdout,
    Stderr,
}

/// How long output may still arrive once a workload has ended (a process that left a
/// grandchild holding its pipes must not hold the result).
pub(crate) const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Reads a workload's output in the background, keeping at most `max` bytes per channel.
pub(crate) struct Capture {
    task: tokio::task::JoinHandle<(Vec<u8>, Vec<u8>)>,
    stop: CancellationToken,
}

impl Capture {
    pub(crate) fn spawn(
        mut output: impl Stream<Item = (Channel, Bytes)> + Send + Unpin + 'static,
        max: usize,
    ) -> Self {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            loop {
                let chunk = tokio::select! {
                    _ = stopped.cancelled() => break,
                    chunk = output.next() => chunk,
                };
                match chunk {
                    Some((Channel::Stdout, bytes)) => append_capped(&mut stdout, &bytes, max),
                    Some((Channel::Stderr, bytes)) => append_capped(&mut stderr, &bytes, max),
                    None => break,
                }
            }
            (stdout, stderr)
        });
        Self { task, stop }
    }

    /// What was captured, once the output ends or at most `grace` from now.
    pub(crate) async fn finish(mut self, grace: Duration) -> (Vec<u8>, Vec<u8>) {
        if let Ok(done) = tokio::time::timeout(grace, &mut self.task).await {
            return done.unwrap_or_default();
        }
        self.stop.cancel();
        (&mut self.task).await.unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Appends `chunk` to `buf` without letting `buf` grow past `max`.
fn append_capped(buf: &mut Vec<u8>, chunk: &[u8], max: usize) {
    let room = max.saturating_sub(buf.len());
    buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
}

/// Environment variables that tell a workload its GPUs (empty when it has none).
pub(crate) fn gpu_env(gpus: &[String], names: &[&'static str]) -> Vec<(&'static str, String)> {
    if gpus.is_empty() {
        return Vec::new();
    }
    let ids = gpus.join(",");
    names.iter().map(|name| (*name, ids.clone())).collect()
}
