//! Executors run one attempt and say how it ended: [`docker`] (the default), [`process`]
//! (opt-in, for hosts without Docker) and `Noop` (runs nothing: a benchmarking aid).

pub mod docker;
pub mod process;

use rgrid_core::protocol::ExitStatus;
use rgrid_core::{AttemptId, TaskSpec};
use tokio_util::sync::CancellationToken;

/// How an attempt ended, with its captured output.
#[derive(Debug)]
pub struct Execution {
    pub exit: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Execution {
    /// The workload never ran.
    pub(crate) fn start_failed(message: String) -> Self {
        Self {
            exit: ExitStatus::StartFailed(message),
            stdout: Vec::new(),
            stderr: Vec::new(),
        }
    }
}

/// One of the executors.
pub enum Executor {
    Docker(docker::DockerExecutor),
    Process(process::ProcessExecutor),
    /// Every attempt succeeds at once with empty output.
    Noop,
}

impl Executor {
    /// Runs `spec` as `attempt` to its end, its timeout, or `cancel`. `started` is called once
    /// the workload is running.
    pub async fn run(
        &self,
        attempt: AttemptId,
        spec: &TaskSpec,
        cancel: CancellationToken,
        started: impl FnOnce(),
    ) -> Execution {
        match self {
            Self::Docker(docker) => docker.run(attempt, spec, cancel, started).await,
            Self::Process(process) => process.run(spec, cancel, started).await,
            Self::Noop => Execution {
                exit: ExitStatus::Exited(0),
                stdout: Vec::new(),
                stderr: Vec::new(),
            },
        }
    }

    /// Capabilities this executor gives the node.
    pub fn capabilities(&self) -> Vec<String> {
        match self {
            Self::Docker(_) => vec!["docker".to_owned()],
            Self::Process(_) => vec!["process".to_owned()],
            Self::Noop => vec!["noop".to_owned()],
        }
    }
}

/// Appends `chunk` to `buf` without letting `buf` grow past `max`.
pub(crate) fn append_capped(buf: &mut Vec<u8>, chunk: &[u8], max: usize) {
    let room = max.saturating_sub(buf.len());
    buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
}

/// Sleeps for `duration`, or forever when there is none (no timeout).
pub(crate) async fn sleep_or_forever(duration: Option<std::time::Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
