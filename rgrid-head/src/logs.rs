//! Attempt logs: what each attempt wrote to stdout and stderr, as its node streamed it while it
//! ran ([`Request::AttemptLog`](rgrid_core::protocol::Request::AttemptLog)), kept under
//! `STATE_DIR/logs/TASK/ATTEMPT.{stdout,stderr}`, and served to clients
//! ([`Request::Logs`](rgrid_core::protocol::Request::Logs)), followed as they grow.
//!
//! - Only a node that holds the attempt may write its log, and one stream at a time; a node
//!   that reconnects hears how much the head has and goes on from there.
//! - Each channel keeps at most `max_output_bytes` (within the [`OutputQuota`] shared with large
//!   results); what was written past that is counted and told (`ATTEMPT.dropped`).
//! - The files are written as chunks arrive (not synced: a head crash may cut a log's tail; the
//!   result of an attempt that ended holds its whole output), so the log of an attempt whose
//!   node died is there up to its last chunk.
//! - A follower wakes when any log grows ([`Logs::written`]) and reads its files from where it
//!   got to; it ends when the task has ended, once it has sent what the logs hold then (a node
//!   reports an attempt only once its log is in).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use quinn::{RecvStream, SendStream};
use rgrid_core::frame::{FrameReader, FrameWriter};
use rgrid_core::log::{Channel, LogEvent, LogFrame, LOG_CHUNK_BYTES};
use rgrid_core::protocol::{ErrorKind, Request, Response};
use rgrid_core::{AttemptId, NodeId, TaskId, TaskState};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::cluster::Event;
use crate::outputs::OutputQuota;
use crate::server::{ask, error, load, register_wait, respond, Shared};
use crate::store::Output;

/// The attempts' log files.
pub(crate) struct Logs {
    dir: PathBuf,
    /// Per channel of an attempt.
    max_bytes: u64,
    quota: Arc<OutputQuota>,
    /// Attempts whose log a node is streaming now.
    receiving: Mutex<HashSet<AttemptId>>,
    /// Bumped at every write.
    written: watch::Sender<u64>,
}

/// An attempt's log being received: its files and what they hold.
struct Receiving<'a> {
    logs: &'a Logs,
    attempt: AttemptId,
    files: [tokio::fs::File; 2],
    /// Bytes in each file.
    kept: [u64; 2],
    /// Bytes the workload wrote to each, as far as the node said.
    written: [u64; 2],
    /// What `ATTEMPT.dropped` says.
    dropped: [u64; 2],
}

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        lock(&self.logs.receiving).remove(&self.attempt);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Logs {
    pub(crate) fn new(
        dir: PathBuf,
        max_bytes: u64,
        quota: Arc<OutputQuota>,
    ) -> std::io::Result<Self> {
        rgrid_core::tls::create_private_dir(&dir)?;
        Ok(Self {
            dir,
            max_bytes,
            quota,
            receiving: Mutex::new(HashSet::new()),
            written: watch::Sender::new(0),
        })
    }

    fn task_dir(&self, task: TaskId) -> PathBuf {
        self.dir.join(task.to_string())
    }

    fn path(&self, attempt: AttemptId, channel: Channel) -> PathBuf {
        self.task_dir(attempt.task)
            .join(format!("{}.{channel}", attempt.attempt))
    }

    fn dropped_path(&self, attempt: AttemptId) -> PathBuf {
        self.task_dir(attempt.task)
            .join(format!("{}.dropped", attempt.attempt))
    }

    /// The attempts of `task` that have a log, in order.
    async fn attempts(&self, task: TaskId) -> Vec<u32> {
        let mut attempts = Vec::new();
        if let Ok(mut entries) = tokio::fs::read_dir(self.task_dir(task)).await {
            while let Ok(Some(entry)) = entries.next_entry().await {
                let name = entry.file_name();
                let attempt: Option<u32> = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(".stdout"))
                    .and_then(|n| n.parse().ok());
                attempts.extend(attempt);
            }
        }
        attempts.sort_unstable();
        attempts
    }

    /// How many bytes of each channel attempt `attempt` dropped.
    async fn dropped(&self, attempt: AttemptId) -> [u64; 2] {
        let text = tokio::fs::read_to_string(self.dropped_path(attempt))
            .await
            .unwrap_or_default();
        let mut counts = text.split_whitespace().map(|n| n.parse().unwrap_or(0));
        [counts.next().unwrap_or(0), counts.next().unwrap_or(0)]
    }

    /// Opens `attempt`'s log for writing; `None` while another stream writes it.
    async fn receive(&self, attempt: AttemptId) -> std::io::Result<Option<Receiving<'_>>> {
        if !lock(&self.receiving).insert(attempt) {
            return Ok(None);
        }
        let mut receiving = Receiving {
            logs: self,
            attempt,
            files: [open_append(self.path(attempt, Channel::Stdout)).await?, {
                open_append(self.path(attempt, Channel::Stderr)).await?
            }],
            kept: [0; 2],
            written: [0; 2],
            dropped: self.dropped(attempt).await,
        };
        for (i, file) in receiving.files.iter().enumerate() {
            receiving.kept[i] = file.metadata().await?.len();
            receiving.written[i] = receiving.kept[i] + receiving.dropped[i];
        }
        Ok(Some(receiving))
    }
}

/// Opens (creating it and its directory, owner-only) a log file for appending.
async fn open_append(path: PathBuf) -> std::io::Result<tokio::fs::File> {
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent() {
            rgrid_core::tls::create_private_dir(dir)?;
        }
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
    })
    .await
    .map_err(std::io::Error::other)?
    .map(tokio::fs::File::from_std)
}

impl Receiving<'_> {
    /// Writes what `frame` adds to the log.
    async fn write(&mut self, frame: LogFrame) -> std::io::Result<()> {
        match frame {
            LogFrame::Chunk {
                channel,
                offset,
                bytes,
            } => {
                let i = channel.index();
                let end = offset.saturating_add(bytes.len() as u64);
                self.written[i] = self.written[i].max(end);
                // Bytes before what the file holds were written already; bytes after a gap (or
                // past the cap or the quota) are dropped.
                if offset <= self.kept[i] && end > self.kept[i] {
                    let skip = usize::try_from(self.kept[i] - offset).unwrap_or(usize::MAX);
                    let room = self.logs.max_bytes.saturating_sub(self.kept[i]);
                    let new = &bytes[skip.min(bytes.len())..];
                    let new = &new[..new.len().min(usize::try_from(room).unwrap_or(usize::MAX))];
                    if !new.is_empty() && self.logs.quota.take(new.len() as u64) {
                        if let Err(err) = self.files[i].write_all(new).await {
                            self.logs.quota.give_back(new.len() as u64);
                            return Err(err);
                        }
                        self.kept[i] += new.len() as u64;
                    }
                }
            }
            LogFrame::Written { channel, total } => {
                let i = channel.index();
                self.written[i] = self.written[i].max(total);
            }
        }
        let dropped = [0, 1].map(|i| self.written[i].saturating_sub(self.kept[i]));
        if dropped != self.dropped {
            self.dropped = dropped;
            let text = format!("{} {}\n", dropped[0], dropped[1]);
            tokio::fs::write(self.logs.dropped_path(self.attempt), text).await?;
        }
        self.logs.written.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }
}

/// [`Request::AttemptLog`](rgrid_core::protocol::Request::AttemptLog): `node` streams the log of
/// `attempt`, which must be its own.
pub(crate) async fn receive(
    node: NodeId,
    attempt: AttemptId,
    mut writer: FrameWriter<SendStream, Response>,
    reader: FrameReader<RecvStream, Request>,
    shared: &Shared,
) {
    let refusal = match ask(shared, |reply| Event::Holds {
        node,
        attempt,
        reply,
    })
    .await
    {
        Ok(true) => None,
        Ok(false) => Some(error(
            ErrorKind::Forbidden,
            format!("attempt {attempt} is not running on this node"),
        )),
        Err(e) => Some(e),
    };
    if let Some(refusal) = refusal {
        respond(&mut writer, &refusal).await;
        let _ = writer.get_mut().finish();
        return;
    }
    let mut log = match shared.logs.receive(attempt).await {
        Ok(Some(log)) => log,
        Ok(None) => {
            let busy = error(
                ErrorKind::Internal,
                format!("the log of attempt {attempt} is being received on another stream"),
            );
            respond(&mut writer, &busy).await;
            let _ = writer.get_mut().finish();
            return;
        }
        Err(err) => {
            tracing::error!(%attempt, error = %err, "cannot open the attempt's log");
            respond(&mut writer, &error(ErrorKind::Internal, err.to_string())).await;
            let _ = writer.get_mut().finish();
            return;
        }
    };
    let offsets = |log: &Receiving| Response::LogOffsets {
        stdout: log.kept[0],
        stderr: log.kept[1],
    };
    if !respond(&mut writer, &offsets(&log)).await {
        return;
    }
    // A chunk of output and its few bytes of framing.
    let mut frames: FrameReader<_, LogFrame> = reader.retype().limited(LOG_CHUNK_BYTES + 64);
    loop {
        match frames.next().await {
            Ok(Some(frame)) => {
                if let Err(err) = log.write(frame).await {
                    tracing::error!(%attempt, error = %err, "cannot write the attempt's log");
                    respond(&mut writer, &error(ErrorKind::Internal, err.to_string())).await;
                    let _ = writer.get_mut().finish();
                    return;
                }
            }
            Ok(None) => break,
            Err(err) => {
                tracing::debug!(%attempt, error = %err, "log stream cut");
                return;
            }
        }
    }
    respond(&mut writer, &offsets(&log)).await;
    let _ = writer.get_mut().finish();
}

/// Where a reader of one attempt's log has got to.
struct Cursor {
    attempt: AttemptId,
    sent: [u64; 2],
}

/// [`Request::Logs`](rgrid_core::protocol::Request::Logs): a task's log, attempt `attempt` or
/// the latest (and, when following, the later ones as they start) until the task ends.
pub(crate) async fn serve(
    task: TaskId,
    attempt: Option<u32>,
    follow: bool,
    writer: &mut FrameWriter<SendStream, Response>,
    shared: &Shared,
) {
    // Unknown tasks are refused; the others say when they end.
    let (mut ends, stored, _) = match register_wait(vec![task], shared).await {
        Ok(wait) => wait,
        Err(e) => {
            respond(writer, &e).await;
            return;
        }
    };
    let mut ended: Option<Ended> = stored.into_iter().next().map(|s| Ended {
        state: s.state,
        stdout: s.stdout,
        stderr: s.stderr,
        last_attempt: s.attempts.last().map_or(0, |a| a.attempt),
    });
    let logs = &shared.logs;
    let mut written = logs.written.subscribe();
    let mut cursor: Option<Cursor> = None;
    loop {
        written.borrow_and_update();
        // Decided before reading, so that nothing written before the end is missed.
        let last_pass = ended.is_some() || !follow;
        let pick = match attempt {
            Some(n) => vec![n],
            None => {
                let mut attempts = logs.attempts(task).await;
                // The latest when starting; then each later one in turn.
                match &cursor {
                    None => attempts.split_off(attempts.len().saturating_sub(1)),
                    Some(c) => attempts
                        .into_iter()
                        .filter(|n| *n >= c.attempt.attempt)
                        .collect(),
                }
            }
        };
        for n in pick {
            let next = AttemptId { task, attempt: n };
            if cursor.as_ref().is_some_and(|c| c.attempt != next) {
                if let Some(done) = cursor.take() {
                    if !send_dropped(&done, writer, shared).await {
                        return;
                    }
                }
            }
            let current = cursor.get_or_insert(Cursor {
                attempt: next,
                sent: [0; 2],
            });
            if !send_new(current, writer, shared).await {
                return;
            }
        }
        if last_pass {
            let sent = match (&cursor, &ended) {
                (Some(c), _) => send_dropped(c, writer, shared).await,
                // A task that ended with no log (it ran before logs were streamed, or on a node
                // that streams none): its result's output.
                (None, Some(ended)) => send_result(ended, writer, shared).await,
                (None, None) => true,
            };
            if sent {
                let end = LogEvent::End {
                    state: ended.map(|e| e.state),
                };
                respond(writer, &Response::Log(end)).await;
            }
            return;
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            changed = written.changed() => if changed.is_err() { return },
            outcome = ends.recv() => match outcome {
                Some(outcome) => ended = Some(Ended {
                    state: outcome.state,
                    stdout: outcome.stdout.clone(),
                    stderr: outcome.stderr.clone(),
                    last_attempt: outcome.last_attempt.as_ref().map_or(0, |a| a.attempt),
                }),
                None => return,
            },
        }
    }
}

/// A task that has ended, as a log reader needs it.
struct Ended {
    state: TaskState,
    stdout: Output,
    stderr: Output,
    last_attempt: u32,
}

/// Sends what the attempt's files hold past the cursor; false when the client went.
async fn send_new(
    cursor: &mut Cursor,
    writer: &mut FrameWriter<SendStream, Response>,
    shared: &Shared,
) -> bool {
    for channel in Channel::BOTH {
        let i = channel.index();
        loop {
            let chunk = match read_at(shared.logs.path(cursor.attempt, channel), cursor.sent[i])
                .await
            {
                Ok(chunk) => chunk,
                Err(err) => {
                    tracing::debug!(attempt = %cursor.attempt, error = %err, "cannot read a log");
                    Vec::new()
                }
            };
            if chunk.is_empty() {
                break;
            }
            let event = LogEvent::Chunk {
                attempt: cursor.attempt.attempt,
                channel,
                offset: cursor.sent[i],
                bytes: chunk,
            };
            if let LogEvent::Chunk { bytes, .. } = &event {
                cursor.sent[i] += bytes.len() as u64;
            }
            if !respond(writer, &Response::Log(event)).await {
                return false;
            }
        }
    }
    true
}

/// Up to [`LOG_CHUNK_BYTES`] of `path` from `offset` (nothing when it does not exist).
async fn read_at(path: PathBuf, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut chunk = Vec::with_capacity(LOG_CHUNK_BYTES);
    file.take(LOG_CHUNK_BYTES as u64)
        .read_to_end(&mut chunk)
        .await?;
    Ok(chunk)
}

/// Tells what the attempt dropped, if anything; false when the client went.
async fn send_dropped(
    cursor: &Cursor,
    writer: &mut FrameWriter<SendStream, Response>,
    shared: &Shared,
) -> bool {
    let dropped = shared.logs.dropped(cursor.attempt).await;
    for channel in Channel::BOTH {
        let bytes = dropped[channel.index()];
        if bytes > 0 {
            let event = LogEvent::Dropped {
                attempt: cursor.attempt.attempt,
                channel,
                bytes,
            };
            if !respond(writer, &Response::Log(event)).await {
                return false;
            }
        }
    }
    true
}

/// Sends an ended task's stdout and stderr from its result; false when the client went.
async fn send_result(
    ended: &Ended,
    writer: &mut FrameWriter<SendStream, Response>,
    shared: &Shared,
) -> bool {
    for (channel, output) in [
        (Channel::Stdout, &ended.stdout),
        (Channel::Stderr, &ended.stderr),
    ] {
        let bytes = match load(output, shared).await {
            Ok(bytes) => bytes,
            Err(refusal) => {
                respond(writer, &refusal).await;
                return false;
            }
        };
        for (n, chunk) in bytes.chunks(LOG_CHUNK_BYTES).enumerate() {
            let event = LogEvent::Chunk {
                attempt: ended.last_attempt,
                channel,
                offset: (n * LOG_CHUNK_BYTES) as u64,
                bytes: chunk.to_vec(),
            };
            if !respond(writer, &Response::Log(event)).await {
                return false;
            }
        }
    }
    true
}
