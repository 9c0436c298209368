//! The process executor: runs the command as a local process (the image is ignored). Opt-in, for
//! hosts without Docker and for fast tests; no isolation and no resource limits.
//!
//! The process leads its own process group, and the group is what gets signalled: on timeout or
//! cancel SIGTERM, `kill_grace`, then SIGKILL; once the process has ended, whatever it left
//! running in its group is killed, as Docker does when a container's first process exits. It sees
//! only the task's environment plus `RGRID_TASK_ID`, `RGRID_ATTEMPT` and its GPUs (never the
//! node's own variables); the program is looked up on the node's `PATH`. A death by signal is
//! reported as exit code 128 + the signal, with its name.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use rgrid_core::protocol::ExitStatus;
use rgrid_core::{AttemptId, TaskSpec};
use tokio_util::io::ReaderStream;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use rgrid_core::log::Channel;

use super::{gpu_env, watch, Capture, Ended, Execution, NotRun, OUTPUT_GRACE};
use crate::log_stream::LiveOutput;

/// Runs attempts as local processes.
pub struct ProcessExecutor {
    /// Between SIGTERM and SIGKILL on timeout or cancel.
    pub kill_grace: Duration,
}

impl ProcessExecutor {
    pub(crate) async fn run(
        &self,
        attempt: AttemptId,
        spec: &TaskSpec,
        gpus: &[String],
        cancel: CancellationToken,
        live: &Arc<LiveOutput>,
        started: impl FnOnce(),
    ) -> Execution {
        let Some((program, args)) = spec.command.split_first() else {
            return NotRun::Task("the process executor needs a command".into()).into();
        };
        let resolved = crate::capabilities::find_program(program);
        let mut command = tokio::process::Command::new(&resolved);
        command
            .args(args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env("RGRID_TASK_ID", attempt.task.to_string())
            .env("RGRID_ATTEMPT", attempt.attempt.to_string())
            .envs(gpu_env(
                gpus,
                &["CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"],
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &spec.workdir {
            command.current_dir(dir);
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(err) => return NotRun::Task(format!("cannot start {program:?}: {err}")).into(),
        };
        // The child leads its group: the group's id is its pid.
        let group = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw);
        let stdout = child.stdout.take().map(|pipe| {
            ReaderStream::new(pipe).filter_map(|r| async { r.ok().map(|b| (Channel::Stdout, b)) })
        });
        let stderr = child.stderr.take().map(|pipe| {
            ReaderStream::new(pipe).filter_map(|r| async { r.ok().map(|b| (Channel::Stderr, b)) })
        });
        let output = futures::stream::select(
            futures::stream::iter(stdout).flatten(),
            futures::stream::iter(stderr).flatten(),
        );
        let capture = Capture::spawn(Box::pin(output), live.clone());
        started();
        let timeout = spec.timeout_ms.map(Duration::from_millis);
        let ended = watch(child.wait(), timeout, &cancel).await;
        if !matches!(ended, Ended::Exited(_)) {
            signal(group, Signal::SIGTERM);
            if tokio::time::timeout(self.kill_grace, child.wait())
                .await
                .is_err()
            {
                signal(group, Signal::SIGKILL);
                let _ = child.wait().await;
            }
        }
        // What the task left running in its group ends with it.
        signal(group, Signal::SIGKILL);
        let (stdout, stderr) = capture.finish(OUTPUT_GRACE).await;
        let exit = match ended {
            Ended::TimedOut => ExitStatus::TimedOut,
            Ended::Killed => ExitStatus::Killed,
            Ended::Exited(Ok(status)) => match (status.code(), status.signal()) {
                (Some(code), _) => ExitStatus::Exited(i64::from(code)),
                (None, Some(signal)) => ExitStatus::Signalled {
                    signal,
                    name: Signal::try_from(signal)
                        .map_or_else(|_| format!("signal {signal}"), |s| s.as_str().to_owned()),
                },
                (None, None) => {
                    ExitStatus::StartFailed("the process ended without a status".into())
                }
            },
            Ended::Exited(Err(err)) => {
                ExitStatus::StartFailed(format!("waiting for the process failed: {err}"))
            }
        };
        Execution {
            exit,
            stdout,
            stderr,
            outputs: Vec::new(),
        }
    }
}

/// Signals the whole group; a group already gone is fine.
fn signal(group: Option<Pid>, signal: Signal) {
    if let Some(group) = group {
        let _ = killpg(group, signal);
    }
}
