//! An attempt's output while it runs: [`LiveOutput`] holds what the workload has written so far
//! (at most `max_output_bytes` per channel, counting what it wrote past that), and [`forward`]
//! streams it to the head as it grows, on a stream of its own ([`Request::AttemptLog`]). After
//! a reconnect the head says how much it has and the node goes on from there, so the head's copy
//! has no gaps and no repeats. The result is reported only once the head has the whole log (or
//! [`FLUSH_WAIT`] passed), so a client following the log sees all of it before the task ends.

use std::sync::Arc;
use std::time::Duration;

use quinn::Connection;
use rgrid_core::frame::FrameWriter;
use rgrid_core::log::{Channel, LogFrame, LOG_CHUNK_BYTES};
use rgrid_core::protocol::{Request, Response};
use rgrid_core::transport::{open_request, TransportError};
use rgrid_core::AttemptId;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long a finished attempt waits for its log to reach the head before it reports anyway
/// (the log is then cut where the head's copy ends; the result has the whole output).
pub(crate) const FLUSH_WAIT: Duration = Duration::from_secs(3);

/// What a workload has written so far.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// The first `max_output_bytes` of stdout and stderr.
    kept: [Vec<u8>; 2],
    /// How many bytes the workload wrote to each, kept or not.
    total: [u64; 2],
    /// The output ended (the workload exited, or the capture gave up on it).
    ended: bool,
}

/// The output of one attempt, shared by its capture (which appends) and [`forward`].
#[derive(Debug)]
pub(crate) struct LiveOutput {
    max: usize,
    written: watch::Sender<Written>,
}

impl LiveOutput {
    pub(crate) fn new(max_output_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max_output_bytes,
            written: watch::Sender::new(Written::default()),
        })
    }

    /// Appends `bytes` to `channel`, keeping at most `max_output_bytes` of it.
    pub(crate) fn append(&self, channel: Channel, bytes: &[u8]) {
        let i = channel.index();
        self.written.send_modify(|w| {
            let room = self.max.saturating_sub(w.kept[i].len());
            w.kept[i].extend_from_slice(&bytes[..bytes.len().min(room)]);
            w.total[i] += bytes.len() as u64;
        });
    }

    /// Marks the output ended and returns what was kept of stdout and stderr.
    pub(crate) fn end(&self) -> (Vec<u8>, Vec<u8>) {
        self.written.send_modify(|w| w.ended = true);
        let w = self.written.borrow();
        (w.kept[0].clone(), w.kept[1].clone())
    }
}

/// What the forwarder sends next, given what the head has (`sent`, per channel) and how much
/// the head was told was written (`told`).
fn next_frame(w: &Written, sent: &[u64; 2], told: &[u64; 2]) -> Option<LogFrame> {
    for channel in Channel::BOTH {
        let i = channel.index();
        let from = usize::try_from(sent[i]).unwrap_or(usize::MAX);
        if from < w.kept[i].len() {
            let to = w.kept[i].len().min(from + LOG_CHUNK_BYTES);
            return Some(LogFrame::Chunk {
                channel,
                offset: sent[i],
                bytes: w.kept[i][from..to].to_vec(),
            });
        }
    }
    // Everything kept is sent: say how much more was written, when the kept part is full.
    Channel::BOTH.into_iter().find_map(|channel| {
        let i = channel.index();
        (w.total[i] > w.kept[i].len() as u64 && w.total[i] != told[i]).then_some(
            LogFrame::Written {
                channel,
                total: w.total[i],
            },
        )
    })
}

/// Why a log stream ended before the whole log was sent.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The head does not take this attempt's log (it superseded the attempt): stop.
    #[error("the head refused the log: {0}")]
    Refused(String),
}

/// Streams `output` of `attempt` to the head over whichever connection is live, until all of it
/// is there (the output ended) or `stopped`. Nothing happens for an attempt that writes nothing.
pub(crate) async fn forward(
    mut connection: watch::Receiver<Option<Connection>>,
    attempt: AttemptId,
    output: Arc<LiveOutput>,
    stopped: CancellationToken,
) {
    let mut written = output.written.subscribe();
    let wrote = written.wait_for(|w| w.ended || w.total.iter().any(|t| *t > 0));
    let wrote_something = tokio::select! {
        w = wrote => w.is_ok_and(|w| w.total.iter().any(|t| *t > 0)),
        _ = stopped.cancelled() => return,
    };
    if !wrote_something {
        return;
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        let current = connection.borrow_and_update().clone();
        if let Some(conn) = current {
            match stream(&conn, attempt, &output).await {
                Ok(()) => return,
                Err(StreamError::Refused(message)) => {
                    tracing::debug!(%attempt, %message, "the head does not take this log");
                    return;
                }
                Err(err) => tracing::debug!(%attempt, error = %err, "log stream cut; resuming"),
            }
        }
        tokio::select! {
            _ = stopped.cancelled() => return,
            _ = connection.changed() => {}
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One log stream: from where the head's copy ends to the end of the output.
async fn stream(
    connection: &Connection,
    attempt: AttemptId,
    output: &LiveOutput,
) -> Result<(), StreamError> {
    let mut request = open_request(connection, &Request::AttemptLog { attempt }).await?;
    let mut sent = offsets(request.recv.expect().await)?;
    let mut told = [0u64; 2];
    let mut writer: FrameWriter<_, LogFrame> = request.send.retype();
    let mut written = output.written.subscribe();
    loop {
        // Copied out of the lock before the send awaits.
        let (frame, ended) = {
            let w = written.borrow_and_update();
            (next_frame(&w, &sent, &told), w.ended)
        };
        match frame {
            Some(frame) => {
                match &frame {
                    LogFrame::Chunk { channel, bytes, .. } => {
                        sent[channel.index()] += bytes.len() as u64;
                    }
                    LogFrame::Written { channel, total } => told[channel.index()] = *total,
                }
                writer.send(&frame).await.map_err(TransportError::from)?;
            }
            None if ended => break,
            None => {
                // The capture holds the sender as long as the attempt runs.
                if written.changed().await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = writer.get_mut().finish();
    // The head answers once it has written everything.
    offsets(request.recv.expect().await).map(|_| ())
}

fn offsets(
    answer: Result<Response, rgrid_core::frame::FrameError>,
) -> Result<[u64; 2], StreamError> {
    match answer.map_err(TransportError::from)? {
        Response::LogOffsets { stdout, stderr } => Ok([stdout, stderr]),
        Response::Error(e) => Err(StreamError::Refused(e.message)),
        other => Err(StreamError::Refused(format!("unexpected answer {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_go_on_from_what_the_head_has_and_say_what_was_dropped() {
        let output = LiveOutput::new(10);
        output.append(Channel::Stdout, b"hello ");
        output.append(Channel::Stderr, b"oops");
        output.append(Channel::Stdout, b"world, and more");
        let w = output.written.borrow();
        assert_eq!(
            next_frame(&w, &[3, 0], &[0, 0]),
            Some(LogFrame::Chunk {
                channel: Channel::Stdout,
                offset: 3,
                bytes: b"lo worl".to_vec(),
            })
        );
        assert_eq!(
            next_frame(&w, &[10, 0], &[0, 0]),
            Some(LogFrame::Chunk {
                channel: Channel::Stderr,
                offset: 0,
                bytes: b"oops".to_vec(),
            })
        );
        assert_eq!(
            next_frame(&w, &[10, 4], &[0, 0]),
            Some(LogFrame::Written {
                channel: Channel::Stdout,
                total: 21,
            })
        );
        assert_eq!(next_frame(&w, &[10, 4], &[21, 0]), None);
    }

    #[test]
    fn a_long_output_goes_in_chunks() {
        let output = LiveOutput::new(1 << 20);
        output.append(Channel::Stdout, &vec![b'x'; LOG_CHUNK_BYTES + 5]);
        let w = output.written.borrow();
        let Some(LogFrame::Chunk { bytes, .. }) = next_frame(&w, &[0, 0], &[0, 0]) else {
            panic!("a chunk");
        };
        assert_eq!(bytes.len(), LOG_CHUNK_BYTES);
    }
}
