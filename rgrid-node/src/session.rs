//! The node's session with the head: connect (mutual TLS), open the control stream with a hello
//! that lists the attempts still running, heartbeat, take assignments and kills; reconnect with
//! exponential backoff and jitter when the connection drops, while attempts keep running.
//! Results go on their own streams and are retried until the head acknowledges them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::Connection;
use rgrid_core::protocol::{AttemptReport, HeadMessage, NodeHello, NodeMessage, Request, Response};
use rgrid_core::tls::client_config;
use rgrid_core::transport::{call, connect, open_request, TransportError};
use rgrid_core::{AttemptId, TaskSpec};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::executor::Executor;
use crate::identity::NodeCredentials;

/// What the session and the attempt tasks share.
pub(crate) struct Node {
    pub head: SocketAddr,
    pub creds: NodeCredentials,
    pub executor: Executor,
    /// Told to the head at every (re)connect.
    pub hello: NodeHello,
    /// Attempts running or holding an unacknowledged result, with the token that kills them.
    pub attempts: Mutex<HashMap<AttemptId, CancellationToken>>,
    /// The live connection, for result streams; `None` while disconnected.
    pub connection: watch::Sender<Option<Connection>>,
    /// Control messages (`Started`) for the session to forward.
    pub control: mpsc::UnboundedSender<NodeMessage>,
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Frame(#[from] rgrid_core::frame::FrameError),
    #[error("the head closed the control stream")]
    Closed,
    /// Not worth retrying as-is.
    #[error("the head refused this node: {0}")]
    Refused(String),
}

/// Longest wait between reconnect attempts: with the 3 s connect timeout, a node finds a head
/// that came back within 5 s, inside the head's recovery grace.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Keeps a session open until shutdown; returns an error only when the head refuses the node.
pub(crate) async fn run(
    node: Arc<Node>,
    mut control: mpsc::UnboundedReceiver<NodeMessage>,
) -> Result<(), SessionError> {
    let mut backoff = Duration::from_millis(100);
    while !node.shutdown.is_cancelled() {
        match session(&node, &mut control, &mut backoff).await {
            Ok(()) => break,
            Err(SessionError::Refused(message)) => return Err(SessionError::Refused(message)),
            Err(err) => {
                node.connection.send_replace(None);
                let wait = jitter(backoff);
                tracing::warn!(error = %err, retry_in = ?wait, "lost the head; reconnecting");
                tokio::select! {
                    _ = node.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    Ok(())
}

/// Half to full of `base`, so that nodes that lost the head together do not return together.
fn jitter(base: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    base / 2 + base.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

async fn session(
    node: &Arc<Node>,
    control: &mut mpsc::UnboundedReceiver<NodeMessage>,
    backoff: &mut Duration,
) -> Result<(), SessionError> {
    let tls = client_config(&node.creds.ca_pem, &node.creds.identity)
        .map_err(|e| SessionError::Refused(e.to_string()))?;
    let (_endpoint, connection) = connect(node.head, tls, "rgrid-node").await?;
    let mut hello = node.hello.clone();
    hello.running = lock(&node.attempts).keys().copied().collect();
    let stream = open_request(&connection, &Request::NodeSession(hello)).await?;
    let mut send = stream.send.retype::<NodeMessage>();
    let mut recv = stream.recv.retype::<HeadMessage>();
    let interval = match recv.expect().await? {
        HeadMessage::Welcome {
            heartbeat_interval_ms,
            superseded,
            ..
        } => {
            for attempt in superseded {
                tracing::info!(%attempt, "superseded by the head; killing it");
                kill(node, attempt);
            }
            Duration::from_millis(heartbeat_interval_ms.max(50))
        }
        HeadMessage::Refused { message } => return Err(SessionError::Refused(message)),
        other => {
            return Err(SessionError::Refused(format!(
                "unexpected first message {other:?}"
            )))
        }
    };
    tracing::info!(head = %node.head, node = %node.creds.node_id, "session open");
    *backoff = Duration::from_millis(100);
    node.connection.send_replace(Some(connection.clone()));
    let mut heartbeat = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => {
                connection.close(0u32.into(), b"node shutting down");
                return Ok(());
            }
            _ = heartbeat.tick() => send.send(&NodeMessage::Heartbeat).await?,
            Some(message) = control.recv() => send.send(&message).await?,
            message = recv.next() => match message? {
                Some(HeadMessage::Assign { attempt, spec }) => start_attempt(node, attempt, spec),
                Some(HeadMessage::Kill { attempt }) => kill(node, attempt),
                Some(HeadMessage::Refused { message }) => return Err(SessionError::Refused(message)),
                Some(HeadMessage::Welcome { .. }) => {}
                None => return Err(SessionError::Closed),
            },
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn kill(node: &Node, attempt: AttemptId) {
    if let Some(token) = lock(&node.attempts).get(&attempt) {
        token.cancel();
    }
}

fn start_attempt(node: &Arc<Node>, attempt: AttemptId, spec: TaskSpec) {
    let cancel = node.shutdown.child_token();
    {
        let mut attempts = lock(&node.attempts);
        if attempts.contains_key(&attempt) {
            return; // a repeated assignment
        }
        attempts.insert(attempt, cancel.clone());
    }
    let node2 = node.clone();
    node.tracker.spawn(
        async move {
            let node = node2;
            let started_at_ms = unix_ms();
            let control = node.control.clone();
            let started = move || {
                let _ = control.send(NodeMessage::Started { attempt });
            };
            let execution = node.executor.run(attempt, &spec, cancel, started).await;
            if node.shutdown.is_cancelled() {
                // Killed because the node stops: not the task's outcome; the head requeues it.
                return;
            }
            tracing::info!(exit = %execution.exit, "attempt ended");
            let report = AttemptReport {
                attempt,
                exit: execution.exit,
                stdout: execution.stdout,
                stderr: execution.stderr,
                started_at_ms,
                finished_at_ms: unix_ms(),
            };
            deliver(&node, report).await;
            lock(&node.attempts).remove(&attempt);
        }
        .instrument(tracing::info_span!("attempt", %attempt)),
    );
}

/// Sends a result until the head acknowledges it (it does once the result is durable).
async fn deliver(node: &Node, report: AttemptReport) {
    let mut connection = node.connection.subscribe();
    let request = Request::ReportResult(report);
    let mut backoff = Duration::from_millis(100);
    loop {
        let current = connection.borrow_and_update().clone();
        if let Some(conn) = current {
            match call(&conn, &request).await {
                Ok(Response::ResultAccepted) => return,
                Ok(other) => {
                    tracing::warn!(response = ?other, "head did not accept the result; retrying")
                }
                Err(err) => tracing::debug!(error = %err, "could not deliver the result; retrying"),
            }
        }
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = connection.changed() => {}
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
