//! The node's session with the head: connect (mutual TLS), open the control stream with a hello
//! that lists the attempts still running, heartbeat, take assignments and kills; reconnect with
//! exponential backoff and jitter when the connection drops, while attempts keep running.
//! Results go on their own streams and are retried until the head acknowledges them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Cancelled to drain (SIGTERM): no new work, then leave within `drain_deadline`.
    pub drain: CancellationToken,
    /// How long a drain started by `drain` lets attempts run.
    pub drain_deadline: Duration,
    /// When the drain in progress ends (set by `drain` or by the head).
    pub drain_until: Mutex<Option<Instant>>,
    /// Set when the node leaves with attempts unfinished: their kills are not their outcome.
    pub leaving: AtomicBool,
    /// Cancelled once the node has left: stops result deliveries.
    pub stopped: CancellationToken,
}

impl Node {
    /// Starts draining (once): the head hears it, and the drain ends at `now + deadline`.
    fn start_drain(&self, deadline: Duration) -> bool {
        let mut until = lock(&self.drain_until);
        if until.is_some() {
            return false;
        }
        tracing::info!(
            ?deadline,
            "draining: no new work; leaving once running attempts end"
        );
        *until = Some(Instant::now() + deadline);
        true
    }

    /// `Some(unfinished attempts)` when the drain is over: nothing left to run, or the deadline
    /// passed (the rest is killed and handed back).
    fn drain_over(&self) -> Option<Vec<AttemptId>> {
        let until = (*lock(&self.drain_until))?;
        let attempts = lock(&self.attempts);
        if attempts.is_empty() {
            return Some(Vec::new());
        }
        if Instant::now() < until {
            return None;
        }
        self.leaving.store(true, Ordering::SeqCst);
        for token in attempts.values() {
            token.cancel();
        }
        Some(attempts.keys().copied().collect())
    }
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

/// Keeps a session open until the node has drained and left; returns an error only when the
/// head refuses the node.
pub(crate) async fn run(
    node: Arc<Node>,
    mut control: mpsc::UnboundedReceiver<NodeMessage>,
) -> Result<(), SessionError> {
    let mut backoff = Duration::from_millis(100);
    let result = loop {
        match session(&node, &mut control, &mut backoff).await {
            Ok(()) => break Ok(()),
            Err(SessionError::Refused(message)) => break Err(SessionError::Refused(message)),
            Err(err) => {
                node.connection.send_replace(None);
                // Without the head, a drain still ends at its deadline.
                if node.drain.is_cancelled() {
                    node.start_drain(node.drain_deadline);
                }
                if node.drain_over().is_some() {
                    break Ok(());
                }
                let wait = jitter(backoff);
                tracing::warn!(error = %err, retry_in = ?wait, "lost the head; reconnecting");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    };
    node.stopped.cancel();
    result
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
    let mut drain_check = tokio::time::interval(Duration::from_millis(100));
    if lock(&node.drain_until).is_some() {
        send.send(&NodeMessage::Draining).await?;
    }
    loop {
        tokio::select! {
            _ = node.drain.cancelled(), if lock(&node.drain_until).is_none() => {
                if node.start_drain(node.drain_deadline) {
                    send.send(&NodeMessage::Draining).await?;
                }
            }
            _ = drain_check.tick(), if lock(&node.drain_until).is_some() => {
                if let Some(unfinished) = node.drain_over() {
                    tracing::info!(unfinished = unfinished.len(), "drained; leaving the cluster");
                    send.send(&NodeMessage::Leaving { unfinished }).await?;
                    let _ = send.get_mut().finish();
                    // Let the head read it before the connection goes.
                    let _ = tokio::time::timeout(Duration::from_secs(2), connection.closed()).await;
                    connection.close(0u32.into(), b"node left");
                    return Ok(());
                }
            }
            _ = heartbeat.tick() => send.send(&NodeMessage::Heartbeat).await?,
            Some(message) = control.recv() => send.send(&message).await?,
            message = recv.next() => match message? {
                Some(HeadMessage::Assign { attempt, spec }) => start_attempt(node, attempt, *spec),
                Some(HeadMessage::Kill { attempt }) => kill(node, attempt),
                Some(HeadMessage::Refused { message }) => return Err(SessionError::Refused(message)),
                Some(HeadMessage::Welcome { .. }) => {}
                Some(HeadMessage::Drain { deadline_ms }) => {
                    if node.start_drain(Duration::from_millis(deadline_ms)) {
                        send.send(&NodeMessage::Draining).await?;
                    }
                }
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
    let cancel = CancellationToken::new();
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
            if node.leaving.load(Ordering::SeqCst) {
                // Killed because the node left: not the task's outcome; the head requeues it.
                lock(&node.attempts).remove(&attempt);
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
            _ = node.stopped.cancelled() => return,
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
