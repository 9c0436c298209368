//! The node's session with the head: connect (mutual TLS), open the control stream with a hello
//! that lists the attempts still running and the results not yet acknowledged, heartbeat, take
//! batches of assignments and kills; reconnect with exponential backoff and jitter (resolving the
//! head's name again each time: its DNS may have moved) when the connection drops, while
//! attempts keep running.
//!
//! Results with small outputs go back on the control stream, batched; larger ones on a stream
//! of their own. Either way a result is first written to the offline [`Spool`], kept until the
//! head acknowledges it (which it does once the result is durable), and sent again on every new
//! session until then; a restarted node delivers what its spool holds ([`replay`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::Connection;
use rgrid_core::frame::FrameWriter;
use rgrid_core::protocol::{
    Assignment, AttemptReport, HeadMessage, NodeHealth, NodeHello, NodeMessage, Request, Response,
    INLINE_RESULT_BYTES,
};
use rgrid_core::task::InputSource;
use rgrid_core::time::unix_ms;
use rgrid_core::tls::{client_config, CertInfo};
use rgrid_core::transport::{call, connect, open_request, TransportError, CLOSE_REFUSED};
use rgrid_core::{AttemptId, TaskSpec};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::cache::{Held, ObjectCache};
use crate::executor::docker::Leftover;
use crate::executor::{Execution, Executor, Milestone, NotRun, Observer, StagedInput};
use crate::identity::NodeCredentials;
use crate::log_stream::LiveOutput;
use crate::renewal;
use crate::spool::Spool;

/// Control messages from attempts waiting for the session, at most.
pub(crate) const CONTROL_QUEUE: usize = 4096;

/// Where an attempt is in its life on this node.
pub(crate) enum Stage {
    Running,
    /// Ended; its result (small outputs) waits for the head's acknowledgement.
    Reported(AttemptReport),
    /// Ended; its result (large outputs) is being delivered on a stream of its own.
    Delivering,
}

/// An attempt the node holds: running, or holding a result the head has not acknowledged.
pub(crate) struct Attempt {
    pub cancel: CancellationToken,
    pub stage: Stage,
}

/// What the session and the attempt tasks share.
pub(crate) struct Node {
    /// The head's `HOST:PORT`, resolved again for every session (its DNS name may move).
    pub head: String,
    /// Replaced when the head renews the certificate; each connection presents the current one.
    pub creds: Mutex<NodeCredentials>,
    /// Where `node.pem` is rewritten on renewal.
    pub state_dir: std::path::PathBuf,
    pub executor: Executor,
    /// Task inputs by hash, fetched from the head.
    pub cache: Arc<ObjectCache>,
    /// Told to the head at every (re)connect.
    pub hello: NodeHello,
    pub attempts: Mutex<HashMap<AttemptId, Attempt>>,
    /// Results on disk until the head acknowledges them.
    pub spool: Spool,
    /// The node's last health check, sent to the head when it changes.
    pub health: watch::Sender<NodeHealth>,
    /// The live connection, for result streams; `None` while disconnected.
    pub connection: watch::Sender<Option<Connection>>,
    /// Control messages (`Started`, small results) for the session to forward.
    pub control: mpsc::Sender<NodeMessage>,
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

    /// `Some(unfinished attempts)` when the drain is over: nothing left to run or to report,
    /// or the deadline passed (what still runs is killed and handed back).
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
        let running: Vec<AttemptId> = attempts
            .iter()
            .filter(|(_, a)| matches!(a.stage, Stage::Running))
            .map(|(id, a)| {
                a.cancel.cancel();
                *id
            })
            .collect();
        Some(running)
    }

    /// The hello for a new session: what runs, and what waits for an acknowledgement.
    fn hello(&self) -> NodeHello {
        let mut hello = self.hello.clone();
        for (id, attempt) in lock(&self.attempts).iter() {
            match attempt.stage {
                Stage::Running => hello.running.push(*id),
                Stage::Reported(_) | Stage::Delivering => hello.finished.push(*id),
            }
        }
        hello
    }

    /// Results that wait for an acknowledgement on the control stream.
    fn reported(&self) -> Vec<AttemptReport> {
        lock(&self.attempts)
            .values()
            .filter_map(|a| match &a.stage {
                Stage::Reported(report) => Some(report.clone()),
                _ => None,
            })
            .collect()
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
    #[error("the head address {0:?} does not resolve now")]
    Resolve(String),
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
    mut control: mpsc::Receiver<NodeMessage>,
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

/// Sends the messages waiting in `buf`, all results of a burst in one message.
async fn send_batch(
    send: &mut FrameWriter<quinn::SendStream, NodeMessage>,
    buf: &mut Vec<NodeMessage>,
) -> Result<(), SessionError> {
    let mut results = Vec::new();
    for message in buf.drain(..) {
        match message {
            NodeMessage::Results(mut batch) => results.append(&mut batch),
            other => send.send(&other).await?,
        }
    }
    if !results.is_empty() {
        send.send(&NodeMessage::Results(results)).await?;
    }
    Ok(())
}

async fn session(
    node: &Arc<Node>,
    control: &mut mpsc::Receiver<NodeMessage>,
    backoff: &mut Duration,
) -> Result<(), SessionError> {
    let creds = lock(&node.creds).clone();
    if let Ok(info) = CertInfo::from_pem(&creds.identity.cert_pem, "node certificate") {
        if info.expired(unix_ms()) {
            return Err(SessionError::Refused(format!(
                "this node's certificate expired at {} before it could be renewed (the head was out of reach); join again: remove {} and start the node with a new token",
                info.expires(),
                node.state_dir.join("node-id").display()
            )));
        }
    }
    let tls = client_config(&creds.ca_pem, &creds.identity)
        .map_err(|e| SessionError::Refused(e.to_string()))?;
    let head = resolve(&node.head).await?;
    let (_endpoint, connection) = match connect(head, tls, "rgrid-node").await {
        Ok(connected) => connected,
        Err(err) => return Err(refusal(err)),
    };
    let stream = open_request(&connection, &Request::NodeSession(node.hello())).await?;
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
    tracing::info!(head = %node.head, address = %head, node = %creds.node_id, "session open");
    *backoff = Duration::from_millis(100);
    node.connection.send_replace(Some(connection.clone()));
    // Results the last session did not see acknowledged.
    let unacknowledged = node.reported();
    if !unacknowledged.is_empty() {
        send.send(&NodeMessage::Results(unacknowledged)).await?;
    }
    let mut health = node.health.subscribe();
    let current = health.borrow_and_update().clone();
    send.send(&NodeMessage::Health(current)).await?;
    let mut heartbeat = tokio::time::interval(interval);
    let mut drain_check = tokio::time::interval(Duration::from_millis(100));
    if lock(&node.drain_until).is_some() {
        send.send(&NodeMessage::Draining).await?;
    }
    let mut outgoing = Vec::new();
    // The certificate is renewed over this session once due; asked again if no answer comes.
    let renew = tokio::time::sleep_until(renewal::due(&creds));
    tokio::pin!(renew);
    loop {
        tokio::select! {
            () = &mut renew => {
                let current = lock(&node.creds).clone();
                match renewal::request(&current) {
                    Ok(request) => {
                        tracing::info!("renewing the node's certificate");
                        send.send(&request).await?;
                    }
                    Err(err) => tracing::warn!(error = %err, "cannot ask for a renewed certificate"),
                }
                renew.as_mut().reset(renewal::after(renewal::retry_after(&current)));
            }
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
            Ok(()) = health.changed() => {
                let current = health.borrow_and_update().clone();
                send.send(&NodeMessage::Health(current)).await?;
            }
            n = control.recv_many(&mut outgoing, 1024) => {
                if n == 0 {
                    return Err(SessionError::Closed);
                }
                send_batch(&mut send, &mut outgoing).await?;
            }
            message = recv.next() => match message? {
                Some(HeadMessage::Assign(assignments)) => {
                    // Sent before the head heard that this node drains: handed back at once.
                    let draining = lock(&node.drain_until).is_some();
                    for assignment in assignments {
                        if draining {
                            hand_back(node, assignment.attempt, "the node is draining");
                        } else {
                            start_attempt(node, assignment);
                        }
                    }
                }
                Some(HeadMessage::ResultsAccepted(attempts)) => {
                    let mut held = lock(&node.attempts);
                    for attempt in attempts {
                        if held.get(&attempt).is_some_and(|a| matches!(a.stage, Stage::Reported(_))) {
                            held.remove(&attempt);
                            node.spool.remove(attempt);
                        }
                    }
                }
                Some(HeadMessage::Kill { attempt }) => kill(node, attempt),
                Some(HeadMessage::Refused { message }) => return Err(SessionError::Refused(message)),
                Some(HeadMessage::Welcome { .. }) => {}
                Some(HeadMessage::Drain { deadline_ms }) => {
                    if node.start_drain(Duration::from_millis(deadline_ms)) {
                        send.send(&NodeMessage::Draining).await?;
                    }
                }
                Some(HeadMessage::Renewed { cert_pem }) => {
                    let current = lock(&node.creds).clone();
                    match renewal::accept(&node.state_dir, &current, cert_pem) {
                        Ok(renewed) => {
                            tracing::info!("renewed the node's certificate; the next connection presents it");
                            renew.as_mut().reset(renewal::due(&renewed));
                            *lock(&node.creds) = renewed;
                        }
                        Err(err) => tracing::warn!(error = %err, "refused the renewed certificate; keeping the current one"),
                    }
                }
                None => return Err(SessionError::Closed),
            },
        }
    }
}

/// The head closes a connection with [`CLOSE_REFUSED`] when it refuses the node's certificate
/// for good (the node was removed, or the certificate revoked): not worth retrying.
fn refusal(err: TransportError) -> SessionError {
    match err {
        TransportError::Connection(quinn::ConnectionError::ApplicationClosed(close))
            if close.error_code == quinn::VarInt::from_u32(CLOSE_REFUSED) =>
        {
            SessionError::Refused(String::from_utf8_lossy(&close.reason).into_owned())
        }
        other => SessionError::Transport(other),
    }
}

/// The first address `head` resolves to now.
async fn resolve(head: &str) -> Result<SocketAddr, SessionError> {
    tokio::net::lookup_host(head)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| SessionError::Resolve(head.to_owned()))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn kill(node: &Node, attempt: AttemptId) {
    if let Some(held) = lock(&node.attempts).get(&attempt) {
        held.cancel.cancel();
    }
}

fn start_attempt(node: &Arc<Node>, assignment: Assignment) {
    let attempt = assignment.attempt;
    let Some(cancel) = hold(node, attempt) else {
        return; // a repeated assignment
    };
    let runner = node.clone();
    spawn_attempt(node, attempt, move |output| async move {
        match assignment.spec() {
            Ok(spec) => run_spec(&runner, attempt, spec, cancel, &output).await,
            Err(err) => crate::executor::Execution::start_failed(format!(
                "the head sent a task spec this node cannot decode ({err}); upgrade the node"
            )),
        }
    });
}

/// Reports `attempt` handed back (`why`) without running it: the head runs it elsewhere.
fn hand_back(node: &Arc<Node>, attempt: AttemptId, why: &'static str) {
    if hold(node, attempt).is_some() {
        spawn_attempt(node, attempt, move |_| async move {
            NotRun::Node(why.to_owned()).into()
        });
    }
}

/// Containers an earlier run of the node started: held as running (the first hello names them,
/// so the head keeps them) and waited for like attempts that have just started.
pub(crate) fn adopt(node: &Arc<Node>, leftovers: Vec<Leftover>) {
    for leftover in leftovers {
        let attempt = leftover.attempt;
        let Some(cancel) = hold(node, attempt) else {
            continue;
        };
        let runner = node.clone();
        spawn_attempt(node, attempt, move |output| async move {
            runner.executor.resume(leftover, cancel, &output).await
        });
    }
}

/// Records `attempt` as running here; `None` when it already is.
fn hold(node: &Node, attempt: AttemptId) -> Option<CancellationToken> {
    let mut attempts = lock(&node.attempts);
    if attempts.contains_key(&attempt) {
        return None;
    }
    let cancel = CancellationToken::new();
    attempts.insert(
        attempt,
        Attempt {
            cancel: cancel.clone(),
            stage: Stage::Running,
        },
    );
    Some(cancel)
}

/// Runs an attempt's `execution` to its end, its output streamed to the head as it is written,
/// and reports how it went once the head has the output.
fn spawn_attempt<F>(
    node: &Arc<Node>,
    attempt: AttemptId,
    execution: impl FnOnce(Arc<LiveOutput>) -> F + Send + 'static,
) where
    F: Future<Output = Execution> + Send + 'static,
{
    let node2 = node.clone();
    node.tracker.spawn(
        async move {
            let node = node2;
            let started_at_ms = unix_ms();
            let output = node.executor.live_output();
            let forwarding = node.tracker.spawn(crate::log_stream::forward(
                node.connection.subscribe(),
                attempt,
                output.clone(),
                node.stopped.clone(),
            ));
            let mut execution = execution(output.clone()).await;
            output.end();
            // Bounded: a head that does not take the log does not hold the result.
            let _ = tokio::time::timeout(crate::log_stream::FLUSH_WAIT, forwarding).await;
            if node.leaving.load(Ordering::SeqCst) {
                // Killed because the node left: not the task's outcome; the head requeues it.
                lock(&node.attempts).remove(&attempt);
                return;
            }
            let finished_at_ms = unix_ms();
            // Stored on the head before the result says they exist.
            let outputs = match crate::executor::outputs::upload(
                &node.connection,
                &execution.outputs,
                &node.stopped,
            )
            .await
            {
                Ok(outputs) => outputs,
                Err(exit) => {
                    execution.exit = exit;
                    Vec::new()
                }
            };
            drop(std::mem::take(&mut execution.outputs));
            tracing::debug!(exit = %execution.exit, "attempt ended");
            let report = AttemptReport {
                attempt,
                exit: execution.exit,
                stdout: execution.stdout,
                stderr: execution.stderr,
                started_at_ms,
                finished_at_ms,
                outputs,
            };
            report_result(&node, report).await;
        }
        .instrument(tracing::debug_span!("attempt", %attempt)),
    );
}

async fn run_spec(
    node: &Arc<Node>,
    attempt: AttemptId,
    spec: TaskSpec,
    cancel: CancellationToken,
    output: &Arc<LiveOutput>,
) -> Execution {
    let control = node.control.clone();
    let progress = move |milestone| {
        // Only for listings: the head learns from the result that it started, if this does not
        // get through.
        let _ = control.try_send(match milestone {
            Milestone::Pulling => NodeMessage::Pulling { attempt },
            Milestone::Started => NodeMessage::Started { attempt },
        });
    };
    // Held in the cache until the attempt ends; an executor that runs nothing reads none.
    let held = if node.executor.runs_workloads() {
        match stage_inputs(node, &spec, &cancel).await {
            Ok(held) => held,
            Err(not_run) => return not_run.into(),
        }
    } else {
        Vec::new()
    };
    let inputs: Vec<StagedInput> = held
        .iter()
        .map(|(container, held)| StagedInput {
            host: held.path.clone(),
            container: container.clone(),
        })
        .collect();
    node.executor
        .run(
            attempt,
            &spec,
            &inputs,
            cancel,
            Observer {
                milestone: &progress,
                output,
            },
        )
        .await
}

/// How long an attempt with inputs waits for a connection to the head to fetch them.
const INPUT_CONNECTION_WAIT: Duration = Duration::from_secs(30);

/// The task's inputs in the node's cache (fetched from the head when missing), held for the
/// attempt: `(path in the container, held object)`.
async fn stage_inputs(
    node: &Node,
    spec: &TaskSpec,
    cancel: &CancellationToken,
) -> Result<Vec<(String, Held)>, NotRun> {
    if spec.inputs.is_empty() {
        return Ok(Vec::new());
    }
    let mut connection = node.connection.subscribe();
    let connection = tokio::select! {
        current = connection.wait_for(Option::is_some) => current.ok().and_then(|c| c.clone()),
        _ = tokio::time::sleep(INPUT_CONNECTION_WAIT) => None,
        _ = cancel.cancelled() => return Err(NotRun::Cancelled),
    };
    let connection = connection.ok_or_else(|| {
        NotRun::Node("no connection to the head to fetch the task's inputs".into())
    })?;
    let mut held = Vec::with_capacity(spec.inputs.len());
    for input in &spec.inputs {
        let InputSource::Object(object) = &input.source else {
            return Err(NotRun::Node(format!(
                "input {} names another task's output ({}) that the head did not resolve",
                input.path, input.source
            )));
        };
        let fetched = tokio::select! {
            fetched = node.cache.hold(*object, &connection) => fetched,
            _ = cancel.cancelled() => return Err(NotRun::Cancelled),
        };
        held.push((input.path.clone(), fetched?));
    }
    Ok(held)
}

/// Spools a result, then hands it to the head: small ones on the control stream (kept until
/// acknowledged), large ones on a stream of their own, retried until the head accepts them.
async fn report_result(node: &Arc<Node>, report: AttemptReport) {
    node.spool.write(&report).await;
    let attempt = report.attempt;
    if is_inline(&report) {
        if let Some(held) = lock(&node.attempts).get_mut(&attempt) {
            held.stage = Stage::Reported(report.clone());
        }
        // Sent on this session if there is one; a new session sends it again from `attempts`.
        let _ = node.control.send(NodeMessage::Results(vec![report])).await;
        return;
    }
    if let Some(held) = lock(&node.attempts).get_mut(&attempt) {
        held.stage = Stage::Delivering;
    }
    if deliver(node, report).await {
        node.spool.remove(attempt);
    }
    lock(&node.attempts).remove(&attempt);
}

fn is_inline(report: &AttemptReport) -> bool {
    report.stdout.len() + report.stderr.len() <= INLINE_RESULT_BYTES
}

/// Results spooled by an earlier run of the node, delivered as if they had just ended: small
/// ones go with the first session's hello, large ones on their own streams.
pub(crate) fn replay(node: &Arc<Node>, reports: Vec<AttemptReport>) {
    for report in reports {
        let attempt = report.attempt;
        let inline = is_inline(&report);
        let stage = if inline {
            Stage::Reported(report.clone())
        } else {
            Stage::Delivering
        };
        lock(&node.attempts).insert(
            attempt,
            Attempt {
                cancel: CancellationToken::new(),
                stage,
            },
        );
        if !inline {
            let delivering = node.clone();
            node.tracker.spawn(async move {
                let node = delivering;
                if deliver(&node, report).await {
                    node.spool.remove(attempt);
                }
                lock(&node.attempts).remove(&attempt);
            });
        }
    }
}

/// Sends a large result until the head acknowledges it (it does once the result is durable);
/// false when the node stopped first.
async fn deliver(node: &Node, report: AttemptReport) -> bool {
    let mut connection = node.connection.subscribe();
    let request = Request::ReportResult(report);
    let mut backoff = Duration::from_millis(100);
    loop {
        let current = connection.borrow_and_update().clone();
        if let Some(conn) = current {
            match call(&conn, &request).await {
                Ok(Response::ResultAccepted) => return true,
                Ok(other) => {
                    tracing::warn!(response = ?other, "head did not accept the result; retrying")
                }
                Err(err) => tracing::debug!(error = %err, "could not deliver the result; retrying"),
            }
        }
        tokio::select! {
            _ = node.stopped.cancelled() => return false,
            _ = connection.changed() => {}
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
