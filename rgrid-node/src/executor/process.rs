//! The process executor: runs the command as a local process (the image is ignored). Opt-in, for
//! hosts without Docker and for fast tests; no isolation and no resource limits.

use std::process::Stdio;
use std::time::Duration;

use rgrid_core::protocol::ExitStatus;
use rgrid_core::TaskSpec;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use super::{append_capped, sleep_or_forever, Execution};

/// Runs attempts as local processes.
pub struct ProcessExecutor {
    pub max_output_bytes: usize,
}

impl ProcessExecutor {
    pub(crate) async fn run(
        &self,
        spec: &TaskSpec,
        cancel: CancellationToken,
        started: impl FnOnce(),
    ) -> Execution {
        let Some((program, args)) = spec.command.split_first() else {
            return Execution::start_failed("the process executor needs a command".into());
        };
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = &spec.workdir {
            command.current_dir(dir);
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(err) => return Execution::start_failed(format!("cannot start {program:?}: {err}")),
        };
        started();
        let max = self.max_output_bytes;
        let stdout = read_capped(child.stdout.take(), max);
        let stderr = read_capped(child.stderr.take(), max);
        let outputs = tokio::spawn(async move { (stdout.await, stderr.await) });
        let timeout = spec.timeout_ms.map(Duration::from_millis);
        let exit = tokio::select! {
            status = child.wait() => match status {
                Ok(status) => ExitStatus::Exited(status.code().map_or(-1, i64::from)),
                Err(err) => ExitStatus::StartFailed(format!("waiting for the process failed: {err}")),
            },
            _ = sleep_or_forever(timeout) => ExitStatus::TimedOut,
            _ = cancel.cancelled() => ExitStatus::Killed,
        };
        if !matches!(exit, ExitStatus::Exited(_)) {
            let _ = child.kill().await;
        }
        let (stdout, stderr) = outputs.await.unwrap_or_default();
        Execution {
            exit,
            stdout,
            stderr,
        }
    }
}

async fn read_capped(pipe: Option<impl tokio::io::AsyncRead + Unpin>, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let Some(mut pipe) = pipe else { return out };
    let mut buf = [0u8; 8192];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        append_capped(&mut out, &buf[..n], max);
    }
    out
}
