//! Executors run one attempt and say how it ended: [`docker`] (the default), [`process`]
//! (opt-in, for hosts without Docker) and `Noop` (runs nothing: a benchmarking aid).
//! [`Executor`] gives each attempt its GPUs (specific ids that no other attempt holds, back when
//! it ends); what the attempt printed is captured by [`Capture`], capped in size and bounded in
//! time.

pub mod docker;
pub mod outputs;
pub mod process;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use rgrid_core::log::Channel;
use rgrid_core::protocol::ExitStatus;
use rgrid_core::{AttemptId, TaskSpec};
use tokio_util::sync::CancellationToken;

use crate::gpu::GpuPool;
use crate::log_stream::LiveOutput;

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

/// What the rest of the node hears of a running attempt: each [`Milestone`] it reaches, and
/// what its workload writes, as it is written.
pub(crate) struct Observer<'a> {
    pub milestone: &'a (dyn Fn(Milestone) + Send + Sync),
    pub output: &'a Arc<LiveOutput>,
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

    /// Where an attempt's workload writes its stdout and stderr (kept up to `max_output_bytes`).
    pub(crate) fn live_output(&self) -> Arc<LiveOutput> {
        LiveOutput::new(usize::try_from(self.outputs.max_bytes()).unwrap_or(usize::MAX))
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
        output: &Arc<LiveOutput>,
    ) -> Execution {
        let _gpus = self.gpus.take_ids(&leftover.gpus);
        match &self.kind {
            Kind::Docker(docker) => docker.resume(leftover, cancel, output.clone()).await,
            Kind::Process(_) | Kind::Noop => NotRun::Node(
                "a container to re-adopt, but this node does not run the Docker executor".into(),
            )
            .into(),
        }
    }

    /// Runs `spec` as `attempt` with its `inputs` staged, to its end, its timeout, or `cancel`,
    /// telling `observer` how it goes.
    pub(crate) async fn run(
        &self,
        attempt: AttemptId,
        spec: &TaskSpec,
        inputs: &[StagedInput],
        cancel: CancellationToken,
        observer: Observer<'_>,
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
                    .run(attempt, spec, inputs, &gpus.ids, cancel, observer)
                    .await
            }
            Kind::Process(_) if !inputs.is_empty() => Execution::start_failed(
                "the task has inputs, which only the docker executor stages: run it on a Docker node".into(),
            ),
            Kind::Process(process) => {
                let mut execution = process
                    .run(attempt, spec, &gpus.ids, cancel, observer.output, || {
                        (observer.milestone)(Milestone::Started)
                    })
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

/// How long output may still arrive once a workload has ended (a process that left a
/// grandchild holding its pipes must not hold the result).
pub(crate) const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Reads a workload's output in the background into its [`LiveOutput`] (which keeps at most
/// `max_output_bytes` per channel and is streamed to the head as it grows).
pub(crate) struct Capture {
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
    output: Arc<LiveOutput>,
}

impl Capture {
    pub(crate) fn spawn(
        mut stream: impl Stream<Item = (Channel, Bytes)> + Send + Unpin + 'static,
        output: Arc<LiveOutput>,
    ) -> Self {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let into = output.clone();
        let task = tokio::spawn(async move {
            loop {
                let chunk = tokio::select! {
                    _ = stopped.cancelled() => break,
                    chunk = stream.next() => chunk,
                };
                match chunk {
                    Some((channel, bytes)) => into.append(channel, &bytes),
                    None => break,
                }
            }
        });
        Self { task, stop, output }
    }

    /// What was captured, once the output ends or at most `grace` from now.
    pub(crate) async fn finish(mut self, grace: Duration) -> (Vec<u8>, Vec<u8>) {
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            self.stop.cancel();
            let _ = (&mut self.task).await;
        }
        self.output.end()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Environment variables that tell a workload its GPUs (empty when it has none).
pub(crate) fn gpu_env(gpus: &[String], names: &[&'static str]) -> Vec<(&'static str, String)> {
    if gpus.is_empty() {
        return Vec::new();
    }
    let ids = gpus.join(",");
    names.iter().map(|name| (*name, ids.clone())).collect()
}
