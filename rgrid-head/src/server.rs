//! The QUIC side of the head: accepts connections, runs the handshake, reads one request per
//! stream, checks who may ask what, and turns requests into messages for the cluster loop. Bad
//! input closes that stream with an error; the connection and the daemon go on. No answer is
//! larger than the frame limit: one that would be is refused with [`ErrorKind::TooLarge`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, Endpoint, RecvStream, SendStream};
use rgrid_core::frame::{FrameError, FrameReader, FrameWriter, MAX_FRAME_BYTES};
use rgrid_core::protocol::{
    AttemptReport, ClusterStatus, ErrorKind, ErrorReply, HeadMessage, JoinReply, JoinRequest,
    NodeHello, NodeMessage, Request, Response, SubmitAnswer, TaskOutcome, TaskPage, TaskQuery,
    INLINE_RESULT_BYTES, MAX_PAGE_TASKS, MAX_WAIT_TASKS,
};
use rgrid_core::time::{monotonic_ms, unix_ms};
use rgrid_core::tls::{CertInfo, ClientRole, ClusterCa, JoinToken, PeerIdentity};
use rgrid_core::transport::{
    accept_handshake, raise_limits, CLOSE_REFUSED, UNAUTHENTICATED_FRAME_BYTES,
};
use rgrid_core::{NodeId, TaskId, TaskSpec, TaskState};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::admission::{Admission, Slot, UNAUTHENTICATED_DEADLINE};
use crate::cluster::{
    Admitted, Channels, Event, NodeResults, Outcome, Overlay, Report, Session, Submission,
};
use crate::dependencies::FinishedLookup;
use crate::join::{check_join, check_node_name, CheckedJoin};
use crate::objects::Objects;
use crate::outputs::OutputStore;
use crate::renewal::Lifetimes;
use crate::revoked::Revoked;
use crate::roles;
use crate::store::{Output, Store, StoredNode, StoredTask};

/// Messages waiting to go out on a node's control stream, at most. Each carries a turn's
/// assignments or acknowledgements, so a node this far behind is not reading its stream.
const OUTBOX: usize = 1024;

/// Outcomes packed into one frame of a wait, about (a larger outcome gets a frame alone).
const OUTCOMES_FRAME_BYTES: usize = 1 << 20;

/// What connection handlers share.
pub(crate) struct Shared {
    pub store: Store,
    pub outputs: OutputStore,
    pub logs: crate::logs::Logs,
    /// How much of an attempt's stdout (and of its stderr) the head keeps.
    pub max_output_bytes: usize,
    pub objects: Arc<Objects>,
    pub ca: Arc<ClusterCa>,
    pub channels: Channels,
    /// Distinguishes a node's sessions, so events from a replaced one are ignored.
    pub next_session: AtomicU64,
    pub heartbeat_interval: Duration,
    /// How long the certificates the head signs are valid.
    pub lifetimes: Lifetimes,
    /// What peers without a certificate may hold.
    pub admission: Arc<Admission>,
    /// Nodes that may not connect any more.
    pub revoked: Arc<Revoked>,
    /// The autoscaler's servers by state (empty without one).
    pub servers: watch::Receiver<Vec<(String, u64)>>,
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
}

/// Accepts connections until shutdown.
pub(crate) async fn serve(endpoint: Endpoint, shared: Arc<Shared>) {
    loop {
        let incoming = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { break };
        let remote = incoming.remote_address();
        // Every connection counts as unauthenticated until its certificate says otherwise.
        let Some(slot) = shared.admission.admit(remote.ip()) else {
            tracing::debug!(%remote, "too many unauthenticated connections; refused");
            incoming.refuse();
            continue;
        };
        let shared2 = shared.clone();
        shared.tracker.spawn(
            async move {
                let deadline = tokio::time::Instant::now() + UNAUTHENTICATED_DEADLINE;
                match tokio::time::timeout_at(deadline, incoming).await {
                    Ok(Ok(connection)) => {
                        handle_connection(connection, slot, deadline, shared2).await
                    }
                    Ok(Err(err)) => {
                        tracing::info!(error = %err, "connection failed during the TLS handshake")
                    }
                    Err(_) => tracing::info!(
                        "TLS handshake not complete within {UNAUTHENTICATED_DEADLINE:?}; dropped"
                    ),
                }
            }
            .instrument(tracing::info_span!("conn", %remote)),
        );
    }
    endpoint.close(0u32.into(), b"head shutting down");
}

/// The peer's identity, role and certificate from its verified certificate, if it presented
/// one (a client certificate naming no role may only read).
fn identity(connection: &Connection) -> Option<(PeerIdentity, ClientRole, CertInfo)> {
    let certs = connection
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    let cert = certs.first()?;
    let role = ClientRole::from_cert(cert).unwrap_or(ClientRole::Read);
    Some((
        PeerIdentity::from_cert(cert)?,
        role,
        CertInfo::from_der(cert)?,
    ))
}

async fn handle_connection(
    connection: Connection,
    slot: Slot,
    deadline: tokio::time::Instant,
    shared: Arc<Shared>,
) {
    let Some((peer, role, cert)) = identity(&connection) else {
        // No certificate: one join within the deadline, then the connection goes.
        if tokio::time::timeout_at(deadline, join_connection(&connection, &shared))
            .await
            .is_err()
        {
            tracing::info!("no join within {UNAUTHENTICATED_DEADLINE:?}; closing");
        }
        connection.close(
            2u32.into(),
            b"a peer without a certificate may only join, once",
        );
        drop(slot);
        return;
    };
    drop(slot);
    if let PeerIdentity::Node(node) = peer {
        if shared.revoked.contains(node) {
            tracing::info!(node = %node, "refused a removed node");
            connection.close(CLOSE_REFUSED.into(), REMOVED.as_bytes());
            return;
        }
    }
    if shared.revoked.contains_serial(&cert.serial) {
        tracing::info!(%peer, serial = %cert.serial, "refused a revoked certificate");
        connection.close(CLOSE_REFUSED.into(), REVOKED.as_bytes());
        return;
    }
    raise_limits(&connection);
    let peer = Some(peer);
    let agent = match accept_handshake(&connection).await {
        Ok(agent) => agent,
        Err(err) => {
            tracing::info!(error = %err, "handshake failed");
            // Give the peer time to read the refusal before the connection goes.
            let _ = tokio::time::timeout(Duration::from_secs(2), connection.closed()).await;
            connection.close(1u32.into(), b"handshake failed");
            return;
        }
    };
    tracing::debug!(?peer, %agent, "peer connected");
    loop {
        let (send, recv) = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            stream = connection.accept_bi() => match stream {
                Ok(stream) => stream,
                Err(_) => return,
            },
        };
        let shared2 = shared.clone();
        let peer = peer.clone();
        let cert = Some(cert.clone());
        shared
            .tracker
            .spawn(handle_stream(peer, role, cert, send, recv, shared2).in_current_span());
    }
}

/// A connection without a certificate: its handshake, then one request (a join), answered
/// before the connection goes. The caller bounds it by the deadline.
async fn join_connection(connection: &Connection, shared: &Arc<Shared>) {
    if let Err(err) = accept_handshake(connection).await {
        tracing::info!(error = %err, "handshake failed");
        // Give the peer time to read the refusal.
        connection.closed().await;
        return;
    }
    let Ok((send, recv)) = connection.accept_bi().await else {
        return;
    };
    handle_stream(None, ClientRole::Read, None, send, recv, shared.clone()).await;
    // Let the peer read the answer; it closes the connection then (or the deadline does).
    connection.closed().await;
}

/// What a removed node hears.
const REMOVED: &str =
    "this node was removed from the cluster and its certificate revoked; join again with a new token";

/// What the holder of a revoked certificate hears.
const REVOKED: &str =
    "this certificate was revoked; a node joins again with a new token, a client asks an admin for new credentials (rgrid-head client create)";

pub(crate) fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error(ErrorReply {
        kind,
        message: message.into(),
    })
}

fn gone() -> Response {
    error(ErrorKind::Internal, "the head is shutting down")
}

/// Sends `response`; one too large for a frame is replaced by an error saying so.
pub(crate) async fn respond(
    writer: &mut FrameWriter<SendStream, Response>,
    response: &Response,
) -> bool {
    match writer.send(response).await {
        Ok(()) => true,
        Err(FrameError::TooLarge) => {
            let refusal = error(
                ErrorKind::TooLarge,
                format!("the answer exceeds the {MAX_FRAME_BYTES}-byte frame limit; ask for fewer tasks or a smaller page"),
            );
            writer.send(&refusal).await.is_ok()
        }
        Err(err) => {
            tracing::debug!(error = %err, "could not send the response");
            false
        }
    }
}

async fn handle_stream(
    peer: Option<PeerIdentity>,
    role: ClientRole,
    cert: Option<CertInfo>,
    send: SendStream,
    recv: RecvStream,
    shared: Arc<Shared>,
) {
    let mut writer = FrameWriter::<_, Response>::new(send);
    let mut reader = match peer {
        Some(_) => FrameReader::<_, Request>::new(recv),
        None => FrameReader::with_limit(recv, UNAUTHENTICATED_FRAME_BYTES),
    };
    let request = match reader.expect().await {
        Ok(request) => request,
        Err(err) => {
            tracing::info!(error = %err, "bad request frame; closing the stream");
            let _ = writer
                .send(&error(ErrorKind::BadRequest, err.to_string()))
                .await;
            let _ = writer.get_mut().finish();
            let mut recv = reader.into_inner();
            let _ = recv.stop(1u32.into());
            return;
        }
    };
    if let Some(PeerIdentity::Node(node)) = &peer {
        // Removed while this connection was open.
        if shared.revoked.contains(*node) {
            respond(&mut writer, &error(ErrorKind::Unauthorized, REMOVED)).await;
            let _ = writer.get_mut().finish();
            return;
        }
    }
    if cert
        .as_ref()
        .is_some_and(|c| shared.revoked.contains_serial(&c.serial))
    {
        respond(&mut writer, &error(ErrorKind::Unauthorized, REVOKED)).await;
        let _ = writer.get_mut().finish();
        return;
    }
    if let Some(PeerIdentity::Client(_)) = &peer {
        if let Some(message) = roles::refusal(role, &request) {
            respond(&mut writer, &error(ErrorKind::Forbidden, message)).await;
            let _ = writer.get_mut().finish();
            return;
        }
    }
    let response = match (request, &peer) {
        (Request::Join(join), None) => {
            shared.admission.join_turn().await;
            join_node(join, &shared).await
        }
        (Request::NodeSession(hello), Some(PeerIdentity::Node(node))) => {
            let Some(cert) = cert else { return };
            return node_session(*node, hello, cert, writer, reader, shared).await;
        }
        (Request::ReportResult(report), Some(PeerIdentity::Node(node))) => {
            report_result(*node, report, &shared).await
        }
        (Request::AttemptLog { attempt }, Some(PeerIdentity::Node(node))) => {
            return crate::logs::receive(*node, attempt, writer, reader, &shared).await;
        }
        (
            Request::Logs {
                task,
                attempt,
                follow,
            },
            Some(PeerIdentity::Client(_)),
        ) => {
            crate::logs::serve(task, attempt, follow, &mut writer, &shared).await;
            let _ = writer.get_mut().finish();
            return;
        }
        (Request::Submit(specs), Some(PeerIdentity::Client(client))) => {
            submit(specs, client, role, &shared).await
        }
        (Request::Get { task }, Some(PeerIdentity::Client(_))) => get(task, &shared).await,
        (Request::Wait { tasks, outputs }, Some(PeerIdentity::Client(_))) => {
            wait(tasks, outputs, &shared, &mut writer).await;
            let _ = writer.get_mut().finish();
            return;
        }
        (Request::Cancel { task, recursive }, Some(PeerIdentity::Client(client))) => {
            cancel(task, recursive, client, role, &shared).await
        }
        (Request::ListNodes, Some(PeerIdentity::Client(_))) => list_nodes(&shared).await,
        (Request::DrainNode { node, deadline_secs }, Some(PeerIdentity::Client(_))) => {
            let deadline = Duration::from_secs(deadline_secs);
            let name = node.clone();
            match ask(&shared, |reply| Event::Drain {
                node,
                deadline,
                reply,
            })
            .await
            {
                Ok(Some(node)) => Response::Draining { node },
                Ok(None) => error(ErrorKind::NotFound, format!("no connected node {name:?}")),
                Err(e) => e,
            }
        }
        (Request::ListTasks(query), Some(PeerIdentity::Client(_))) => {
            list_tasks(query, &shared).await
        }
        (Request::Status, Some(PeerIdentity::Client(_))) => status(&shared).await,
        // Clients upload inputs; nodes upload the outputs of their tasks.
        (Request::PutObject(object), Some(_)) => {
            return crate::transfers::put(object, writer, reader, &shared).await;
        }
        (Request::GetObject(object), Some(_)) => {
            return crate::transfers::get(object, writer, &shared).await;
        }
        (Request::ListObjects(query), Some(PeerIdentity::Client(_))) => {
            Response::Objects(shared.objects.page(&query))
        }
        (Request::PinObject { object, pinned }, Some(PeerIdentity::Client(name))) => {
            match shared.objects.pin(object, pinned, name, &shared.store).await {
                Ok(()) => Response::Pinned { object, pinned },
                Err(failed) => crate::transfers::refusal(&failed),
            }
        }
        (Request::RemoveNode { node }, Some(PeerIdentity::Client(_))) => {
            remove_node(&node, &shared).await
        }
        (Request::Cost(query), Some(PeerIdentity::Client(_))) => {
            match shared.store.cost(&query, rgrid_core::time::unix_ms()).await {
                Ok(report) => Response::Cost(report),
                Err(err) => error(ErrorKind::Internal, err.to_string()),
            }
        }
        (Request::Renew { csr_pem }, Some(PeerIdentity::Client(name))) => match &cert {
            Some(cert) => {
                match crate::renewal::renew_client(name, role, cert, &csr_pem, &shared).await {
                    Ok(cert_pem) => Response::Renewed { cert_pem },
                    Err(message) => error(ErrorKind::BadRequest, message),
                }
            }
            None => error(ErrorKind::Unauthorized, "no certificate to renew"),
        },
        (_, None) => error(
            ErrorKind::Unauthorized,
            "this connection has no client certificate: it may only join with a token; clients connect with the client.toml rgrid-head wrote to its state dir",
        ),
        (_, Some(identity)) => error(
            ErrorKind::Unauthorized,
            format!("{identity} may not make this request"),
        ),
    };
    respond(&mut writer, &response).await;
    let _ = writer.get_mut().finish();
}

/// Sends an event carrying a reply channel and waits for the reply.
pub(crate) async fn ask<T>(
    shared: &Shared,
    make: impl FnOnce(oneshot::Sender<T>) -> Event,
) -> Result<T, Response> {
    let (reply, rx) = oneshot::channel();
    shared
        .channels
        .events
        .send(make(reply))
        .await
        .map_err(|_| gone())?;
    rx.await.map_err(|_| gone())
}

async fn join_node(join: JoinRequest, shared: &Shared) -> Response {
    match try_join(join, shared).await {
        Ok(reply) => Response::Joined(reply),
        Err(message) => {
            tracing::info!(%message, "join refused");
            error(ErrorKind::Unauthorized, message)
        }
    }
}

async fn try_join(join: JoinRequest, shared: &Shared) -> Result<JoinReply, String> {
    let node = NodeId::new();
    let CheckedJoin { token, name } = check_join(&join, node)?;
    let stored = StoredNode {
        id: node,
        name: name.clone(),
        hello: None,
        state: "joined",
        joined_at_ms: unix_ms(),
    };
    // The token is consumed (and the node stored) before anything is signed.
    let secret_hash = token.secret_hash();
    let joined = shared
        .store
        .join(&token.id, &secret_hash, unix_ms(), &stored)
        .await
        .map_err(|e| e.to_string())?;
    let Some(name) = joined else {
        return Err(join_refusal(&token, &secret_hash, shared).await);
    };
    let cert_pem = shared
        .ca
        .sign_node_csr(&join.csr_pem, node, shared.lifetimes.node)
        .map_err(|e| format!("bad certificate signing request: {e}"))?;
    // Recorded so that a renewal can revoke it; without the record it only expires.
    let subject = PeerIdentity::Node(node);
    let recorded =
        crate::credentials::record_certificate(&shared.store, &cert_pem, &subject, None).await;
    if let Err(err) = recorded {
        tracing::warn!(node = %node, error = %err, "cannot record the node's certificate");
    }
    tracing::info!(node = %node, %name, "node joined");
    Ok(JoinReply {
        node_id: node,
        cert_pem,
        ca_pem: shared.ca.cert_pem().to_owned(),
    })
}

/// Why the store refused `token`, for the joining node.
async fn join_refusal(token: &JoinToken, secret_hash: &str, shared: &Shared) -> String {
    let refused = "join token refused: unknown or wrong secret; copy the current STATE_DIR/join-token from the head";
    let stored = match shared.store.token(&token.id).await {
        Ok(Some(stored)) if stored.secret_hash == secret_hash => stored,
        Ok(_) => return refused.into(),
        Err(err) => return err.to_string(),
    };
    if stored.revoked {
        "join token refused: it was revoked; create a new one".into()
    } else if let Some(expires) = stored.expires_at_ms.filter(|e| *e <= unix_ms()) {
        format!(
            "join token refused: it expired at {} (unix ms {expires}); restart the head or create a new token",
            humanize_ms(expires)
        )
    } else if stored.single_use && stored.used {
        "join token refused: it was single-use and has been used".into()
    } else {
        refused.into()
    }
}

fn humanize_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Sends `item` into the loop, telling liveness the node is alive while the loop is too busy
/// to take it (the node is not at fault for that).
async fn send_alive<T>(
    channel: &mpsc::Sender<T>,
    item: T,
    last_seen: &AtomicU64,
    interval: Duration,
) -> bool {
    let permit = loop {
        tokio::select! {
            permit = channel.reserve() => match permit {
                Ok(permit) => break permit,
                Err(_) => return false,
            },
            _ = tokio::time::sleep(interval) => last_seen.store(monotonic_ms(), Ordering::Relaxed),
        }
    };
    permit.send(item);
    true
}

async fn node_session(
    node: NodeId,
    hello: NodeHello,
    cert: CertInfo,
    writer: FrameWriter<SendStream, Response>,
    reader: FrameReader<RecvStream, Request>,
    shared: Arc<Shared>,
) {
    let known = match check_node_name(&hello.name) {
        Ok(()) => shared.store.node_identity(node).await,
        Err(message) => {
            let mut writer = writer.retype::<HeadMessage>();
            let _ = writer.send(&HeadMessage::Refused { message }).await;
            let _ = writer.get_mut().finish();
            return;
        }
    };
    let mut hello = hello;
    match known {
        Ok(Some((name, token_labels))) => {
            crate::identity::decide(node, &mut hello, name, token_labels)
        }
        Ok(None) => {
            let mut writer = writer.retype::<HeadMessage>();
            let _ = writer
                .send(&HeadMessage::Refused {
                    message: format!(
                        "node {node} is not known to this head; join again with a token"
                    ),
                })
                .await;
            let _ = writer.get_mut().finish();
            return;
        }
        Err(err) => {
            tracing::error!(error = %err, "cannot check the node");
            return;
        }
    }
    // A renewed certificate in use: its predecessors go.
    let superseding = shared.clone();
    let current = cert.clone();
    shared.tracker.spawn(async move {
        crate::renewal::supersede(node, &current, &superseding).await;
    });
    let session = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let (outbox, mut outbox_rx) = mpsc::channel::<HeadMessage>(OUTBOX);
    // Weak: the session's stream ends when the loop drops the session, as before.
    let renewals = outbox.downgrade();
    let last_seen = Arc::new(AtomicU64::new(monotonic_ms()));
    let opened = Event::NodeConnected {
        node,
        hello,
        session: Session {
            id: session,
            outbox,
            last_seen: last_seen.clone(),
        },
    };
    if shared.channels.events.send(opened).await.is_err() {
        return;
    }
    let mut writer = writer.retype::<HeadMessage>();
    let write_half = async move {
        while let Some(message) = outbox_rx.recv().await {
            if writer.send(&message).await.is_err() {
                break;
            }
        }
    };
    let mut reader = reader.retype::<NodeMessage>();
    let channels = shared.channels.clone();
    let interval = shared.heartbeat_interval;
    let max_output_bytes = shared.max_output_bytes;
    let renewing = shared.clone();
    let read_half = async move {
        // One certificate per session: the next session presents the renewed one.
        let mut renewed = false;
        loop {
            let message = match reader.next().await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(err) => {
                    if !matches!(err, FrameError::Io(_)) {
                        tracing::warn!(node = %node, error = %err, "bad frame on the control stream");
                    }
                    break;
                }
            };
            last_seen.store(monotonic_ms(), Ordering::Relaxed);
            let delivered = match message {
                NodeMessage::Heartbeat => true,
                NodeMessage::Renew { csr_pem } if !renewed => {
                    match crate::renewal::renew_node(node, &cert, &csr_pem, &renewing).await {
                        Ok(cert_pem) => {
                            renewed = true;
                            match renewals.upgrade() {
                                Some(outbox) => {
                                    outbox.send(HeadMessage::Renewed { cert_pem }).await.is_ok()
                                }
                                None => false,
                            }
                        }
                        Err(message) => {
                            tracing::warn!(node = %node, %message, "renewal refused");
                            true
                        }
                    }
                }
                NodeMessage::Renew { .. } => true,
                NodeMessage::Results(reports) => {
                    let Some(reports) = inline_reports(reports, max_output_bytes) else {
                        tracing::warn!(node = %node, "results with outputs over {INLINE_RESULT_BYTES} bytes on the control stream; closing it");
                        break;
                    };
                    let results = NodeResults {
                        node,
                        reports,
                        reply: None,
                    };
                    send_alive(&channels.results, results, &last_seen, interval).await
                }
                message => {
                    let event = Event::NodeMessage {
                        node,
                        session,
                        message,
                    };
                    send_alive(&channels.events, event, &last_seen, interval).await
                }
            };
            if !delivered {
                break;
            }
        }
    };
    tokio::select! {
        _ = write_half => {},
        _ = read_half => {},
        _ = shared.shutdown.cancelled() => {},
    }
    let _ = shared
        .channels
        .events
        .send(Event::NodeDisconnected { node, session })
        .await;
}

/// Results from the control stream, whose outputs must be small (and are cut at `max` bytes).
fn inline_reports(reports: Vec<AttemptReport>, max: usize) -> Option<Vec<Report>> {
    reports
        .into_iter()
        .map(|mut r| {
            r.stdout.truncate(max);
            r.stderr.truncate(max);
            (r.stdout.len() + r.stderr.len() <= INLINE_RESULT_BYTES).then(|| Report {
                attempt: r.attempt,
                exit: r.exit,
                stdout: inline(r.stdout),
                stderr: inline(r.stderr),
                finished_at_ms: r.finished_at_ms,
                outputs: r.outputs,
            })
        })
        .collect()
}

fn inline(bytes: Vec<u8>) -> Output {
    if bytes.is_empty() {
        Output::Empty
    } else {
        Output::Inline(bytes)
    }
}

/// A result with large outputs, on a stream of its own: its outputs are written only once the
/// head knows the attempt is this node's current one, at most `max_output_bytes` of each, and
/// only within the output quota (past it, the result is kept without them).
async fn report_result(node: NodeId, mut report: AttemptReport, shared: &Shared) -> Response {
    let attempt = report.attempt;
    match ask(shared, |reply| Event::Holds {
        node,
        attempt,
        reply,
    })
    .await
    {
        Ok(true) => {}
        // Superseded or finished: nothing to store; the node may forget it.
        Ok(false) => return Response::ResultAccepted,
        Err(e) => return e,
    }
    report.stdout.truncate(shared.max_output_bytes);
    report.stderr.truncate(shared.max_output_bytes);
    let stored = async {
        let mut hashes = [None, None];
        for (hash, bytes) in hashes.iter_mut().zip([report.stdout, report.stderr]) {
            *hash = match shared.outputs.put(bytes).await {
                Err(err) if err.kind() == std::io::ErrorKind::QuotaExceeded => {
                    tracing::warn!(%attempt, error = %err, "task output not kept");
                    None
                }
                stored => stored?,
            };
        }
        let [stdout, stderr] = hashes;
        Ok::<_, std::io::Error>((stdout, stderr))
    };
    let (stdout, stderr) = match stored.await {
        Ok(hashes) => hashes,
        Err(err) => {
            tracing::error!(error = %err, "cannot store task outputs");
            return error(ErrorKind::Internal, format!("cannot store outputs: {err}"));
        }
    };
    let (reply, done) = oneshot::channel();
    let results = NodeResults {
        node,
        reports: vec![Report {
            attempt,
            exit: report.exit,
            stdout: stdout.map_or(Output::Empty, Output::Stored),
            stderr: stderr.map_or(Output::Empty, Output::Stored),
            finished_at_ms: report.finished_at_ms,
            outputs: report.outputs,
        }],
        reply: Some(reply),
    };
    if shared.channels.results.send(results).await.is_err() {
        return gone();
    }
    match done.await {
        Ok(()) => Response::ResultAccepted,
        Err(_) => gone(),
    }
}

async fn submit(specs: Vec<TaskSpec>, client: &str, role: ClientRole, shared: &Shared) -> Response {
    let mut answers: Vec<Option<SubmitAnswer>> = Vec::with_capacity(specs.len());
    let mut tasks = Vec::with_capacity(specs.len());
    // The specs of tasks with dependencies, by position in `tasks`, for another look.
    let mut dependent: HashMap<usize, TaskSpec> = HashMap::new();
    for spec in specs {
        if let Some(message) = roles::spec_refusal(role, &spec) {
            answers.push(Some(SubmitAnswer::Rejected(message)));
            continue;
        }
        match spec
            .validate()
            .and_then(|()| shared.objects.check_inputs(&spec))
        {
            Ok(()) => {
                answers.push(None);
                if !spec.dependencies().is_empty() {
                    dependent.insert(tasks.len(), spec.clone());
                }
                tasks.push(Admitted::from(spec));
            }
            Err(message) => answers.push(Some(SubmitAnswer::Rejected(format!(
                "task {}: {message}",
                spec.id
            )))),
        }
    }
    if !tasks.is_empty() {
        let mut finished = FinishedLookup::default();
        let (mut loop_answers, mut unknown) =
            match admit(tasks, &mut finished, client, shared).await {
                Ok(answered) => answered,
                Err(response) => return response,
            };
        // A dependency the loop did not hold had either finished and left it after the store
        // was read (its end is durable, so the store has it now), or does not exist: another
        // look tells which. Another dependency may leave the loop meanwhile, so a task goes
        // round again while the dependency it is refused for changes; refused twice for the
        // same one, it does not exist. (At most as many rounds as the task has dependencies.)
        let mut refused_for: HashMap<usize, TaskId> = HashMap::new();
        loop {
            let (positions, again): (Vec<usize>, Vec<Admitted>) = unknown
                .into_iter()
                .filter(|&(position, dependency)| {
                    refused_for.insert(position, dependency) != Some(dependency)
                })
                .filter_map(|(position, _)| {
                    let spec = dependent.get(&position)?.clone();
                    Some((position, Admitted::from(spec)))
                })
                .unzip();
            if again.is_empty() {
                break;
            }
            tracing::debug!(
                tasks = again.len(),
                "dependencies left the loop while their dependants were admitted; looking again"
            );
            let (answers_again, unknown_again) =
                match admit(again, &mut finished, client, shared).await {
                    Ok(answered) => answered,
                    Err(response) => return response,
                };
            for (&position, answer) in positions.iter().zip(answers_again) {
                loop_answers[position] = answer;
            }
            unknown = unknown_again
                .into_iter()
                .map(|(i, dependency)| (positions[i], dependency))
                .collect();
        }
        let mut loop_answers = loop_answers.into_iter();
        for answer in answers.iter_mut().filter(|a| a.is_none()) {
            *answer = loop_answers.next();
        }
    }
    Response::Submitted(
        answers
            .into_iter()
            .map(|a| a.unwrap_or(SubmitAnswer::Rejected("internal: no answer".into())))
            .collect(),
    )
}

/// Hands `tasks` to the loop (their dependencies finished in the store looked up first) and
/// waits until they are durable: an answer for each, and the positions of those refused for a
/// dependency the loop did not hold, with that dependency.
async fn admit(
    mut tasks: Vec<Admitted>,
    finished: &mut FinishedLookup,
    client: &str,
    shared: &Shared,
) -> Result<(Vec<SubmitAnswer>, Vec<(usize, TaskId)>), Response> {
    if let Err(err) = finished
        .fill(&mut tasks, &shared.store, &shared.objects)
        .await
    {
        return Err(error(
            ErrorKind::Internal,
            format!("cannot read the store: {err}"),
        ));
    }
    let specs: Vec<Vec<u8>> = tasks.iter().map(|t| t.spec.clone()).collect();
    let (reply, rx) = oneshot::channel();
    let submission = Submission {
        tasks,
        client: Some(client.to_owned()),
        reply,
    };
    if shared.channels.submissions.send(submission).await.is_err() {
        return Err(gone());
    }
    // Answered once the tasks are durable.
    let Ok(mut reply) = rx.await else {
        return Err(gone());
    };
    for (position, id) in std::mem::take(&mut reply.stored) {
        reply.answers[position] = known_answer(id, &specs[position], shared).await;
    }
    Ok((reply.answers, reply.unknown))
}

/// The answer for a resubmitted task the store already had.
async fn known_answer(id: TaskId, spec: &[u8], shared: &Shared) -> SubmitAnswer {
    match shared.store.task(id).await {
        Ok(Some(stored)) if stored.spec == spec => SubmitAnswer::Known {
            state: stored.state,
        },
        Ok(Some(_)) => SubmitAnswer::Rejected(format!(
            "task {id} already exists with a different spec; submit it with a new id"
        )),
        Ok(None) => SubmitAnswer::Rejected(format!("task {id}: the store lost track of it")),
        Err(err) => SubmitAnswer::Rejected(format!("task {id}: cannot read the store: {err}")),
    }
}

async fn cancel(
    task: TaskId,
    recursive: bool,
    client: &str,
    role: ClientRole,
    shared: &Shared,
) -> Response {
    if role != ClientRole::Admin {
        match shared.store.task_submitter(task).await {
            Ok(Some(Some(submitter))) if submitter == client => {}
            Ok(Some(_)) => {
                return error(
                    ErrorKind::Forbidden,
                    format!("task {task} was not submitted by client {client:?}: only its submitter or an admin may cancel it"),
                )
            }
            Ok(None) => return error(ErrorKind::NotFound, format!("no task {task}")),
            Err(err) => return error(ErrorKind::Internal, err.to_string()),
        }
    }
    match ask(shared, |reply| Event::Cancel {
        task,
        recursive,
        reply,
    })
    .await
    {
        Ok(Some(state)) => Response::Cancelled { state },
        Ok(None) => match shared.store.task(task).await {
            Ok(Some(stored)) => Response::Cancelled {
                state: stored.state,
            },
            Ok(None) => error(ErrorKind::NotFound, format!("no task {task}")),
            Err(err) => error(ErrorKind::Internal, err.to_string()),
        },
        Err(e) => e,
    }
}

/// Registers a wait with the loop; outcomes of the tasks the loop does not hold come from the
/// store. Fails when a task is unknown.
pub(crate) async fn register_wait(
    tasks: Vec<TaskId>,
    shared: &Shared,
) -> Result<(mpsc::Receiver<Arc<Outcome>>, Vec<StoredTask>, Vec<TaskId>), Response> {
    let (sink, rx) = mpsc::channel(tasks.len().max(1));
    let mut missing = ask(shared, |reply| Event::Wait {
        tasks,
        sink: sink.clone(),
        reply,
    })
    .await?;
    let mut stored = Vec::new();
    let mut ids = Vec::new();
    // A task whose insert the loop had not confirmed may be open in the store by now: ask again.
    for _ in 0..3 {
        let found = match shared.store.tasks(&missing).await {
            Ok(found) => found,
            Err(err) => return Err(error(ErrorKind::Internal, err.to_string())),
        };
        if found.len() < missing.len() {
            let known: HashSet<TaskId> = found.iter().map(|(id, _)| *id).collect();
            let unknown = missing.iter().find(|id| !known.contains(id)).copied();
            return Err(error(
                ErrorKind::NotFound,
                format!(
                    "no task {}",
                    unknown.map(|id| id.to_string()).unwrap_or_default()
                ),
            ));
        }
        let mut open = Vec::new();
        for (id, task) in found {
            if task.state.is_terminal() {
                ids.push(id);
                stored.push(task);
            } else {
                open.push(id);
            }
        }
        if open.is_empty() {
            return Ok((rx, stored, ids));
        }
        missing = ask(shared, |reply| Event::Wait {
            tasks: open,
            sink: sink.clone(),
            reply,
        })
        .await?;
    }
    Err(error(
        ErrorKind::Internal,
        "the head could not settle the tasks' state; retry",
    ))
}

async fn get(task: TaskId, shared: &Shared) -> Response {
    let (mut rx, stored, ids) = match register_wait(vec![task], shared).await {
        Ok(wait) => wait,
        Err(e) => return e,
    };
    let outcome = match stored.into_iter().zip(ids).next() {
        Some((stored, id)) => task_outcome_from_store(id, stored, true, shared).await,
        None => match rx.recv().await {
            Some(outcome) => task_outcome(&outcome, true, shared).await,
            None => return gone(),
        },
    };
    outcome.map_or_else(|e| e, Response::Task)
}

/// Streams the outcomes of `tasks` as they end, packed into frames.
async fn wait(
    tasks: Vec<TaskId>,
    outputs: bool,
    shared: &Shared,
    writer: &mut FrameWriter<SendStream, Response>,
) {
    if tasks.len() > MAX_WAIT_TASKS {
        let refusal = error(
            ErrorKind::TooLarge,
            format!(
                "a wait names at most {MAX_WAIT_TASKS} tasks; this one named {}",
                tasks.len()
            ),
        );
        respond(writer, &refusal).await;
        return;
    }
    let mut seen = HashSet::with_capacity(tasks.len());
    let tasks: Vec<TaskId> = tasks.into_iter().filter(|t| seen.insert(*t)).collect();
    let mut left = tasks.len();
    let (mut rx, stored, ids) = match register_wait(tasks, shared).await {
        Ok(wait) => wait,
        Err(e) => {
            respond(writer, &e).await;
            return;
        }
    };
    // Outcomes go out packed into frames: those read from the store first, then each as it
    // ends, with whatever else has ended by then.
    let mut from_store = stored.into_iter().zip(ids);
    let mut frame = Vec::new();
    let mut size = 0;
    while left > 0 {
        let next = match from_store.next() {
            Some((stored, id)) => task_outcome_from_store(id, stored, outputs, shared).await,
            None => {
                let ended = if frame.is_empty() {
                    rx.recv().await
                } else {
                    rx.try_recv().ok()
                };
                match ended {
                    Some(outcome) => task_outcome(&outcome, outputs, shared).await,
                    // Nothing more has ended: send what there is.
                    None if !frame.is_empty() => {
                        if !respond(writer, &Response::Outcomes(std::mem::take(&mut frame))).await {
                            return;
                        }
                        size = 0;
                        continue;
                    }
                    None => Err(gone()),
                }
            }
        };
        match next {
            Ok(outcome) => {
                size += outcome.stdout.len() + outcome.stderr.len() + 64;
                frame.push(outcome);
                left -= 1;
            }
            Err(e) => {
                respond(writer, &e).await;
                return;
            }
        }
        if size >= OUTCOMES_FRAME_BYTES || left == 0 {
            if !respond(writer, &Response::Outcomes(std::mem::take(&mut frame))).await {
                return;
            }
            size = 0;
        }
    }
}

pub(crate) async fn load(output: &Output, shared: &Shared) -> Result<Vec<u8>, Response> {
    shared
        .outputs
        .load(output)
        .await
        .map_err(|err| error(ErrorKind::Internal, format!("cannot read outputs: {err}")))
}

/// What a client sees of an outcome from the loop.
async fn task_outcome(
    outcome: &Outcome,
    outputs: bool,
    shared: &Shared,
) -> Result<TaskOutcome, Response> {
    let mut attempts: Vec<_> = outcome.last_attempt.iter().cloned().collect();
    if outcome.attempts > 1 {
        // The earlier attempts are in the store (the outcome is durable).
        let mut stored = shared
            .store
            .attempts(outcome.task)
            .await
            .map_err(|err| error(ErrorKind::Internal, err.to_string()))?;
        stored.retain(|a| a.attempt < outcome.attempts);
        stored.append(&mut attempts);
        attempts = stored;
    }
    let (stdout, stderr) = if outputs {
        (
            load(&outcome.stdout, shared).await?,
            load(&outcome.stderr, shared).await?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(TaskOutcome {
        task: outcome.task,
        state: outcome.state,
        exit_code: outcome.exit_code,
        reason: outcome.reason.clone(),
        stdout,
        stderr,
        attempts,
        outputs: outcome.outputs.clone(),
    })
}

/// What a client sees of a finished task read from the store.
async fn task_outcome_from_store(
    id: TaskId,
    stored: StoredTask,
    outputs: bool,
    shared: &Shared,
) -> Result<TaskOutcome, Response> {
    let mut attempts = stored.attempts;
    // The last attempt's end is the task's.
    if let Some(last) = attempts.last_mut().filter(|a| a.ended_at_ms.is_none()) {
        last.ended_at_ms = stored.finished_at_ms;
        last.outcome = Some(
            stored
                .reason
                .clone()
                .unwrap_or_else(|| "exited with code 0".into()),
        );
    }
    let (stdout, stderr) = if outputs {
        (
            load(&stored.stdout, shared).await?,
            load(&stored.stderr, shared).await?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(TaskOutcome {
        task: id,
        state: stored.state,
        exit_code: stored.exit_code,
        reason: stored.reason,
        stdout,
        stderr,
        attempts,
        outputs: stored.outputs,
    })
}

/// One page of tasks: open states from the loop, the rest from the store with the live state
/// of open tasks laid over it.
async fn list_tasks(query: TaskQuery, shared: &Shared) -> Response {
    let limit = query.limit.min(MAX_PAGE_TASKS);
    let tasks = match query.state {
        Some(
            state @ (TaskState::Pending
            | TaskState::Queued
            | TaskState::Assigned
            | TaskState::Running),
        ) => {
            match ask(shared, |reply| Event::ListOpen {
                state,
                after: query.after,
                limit,
                reply,
            })
            .await
            {
                Ok(tasks) => tasks,
                Err(e) => return e,
            }
        }
        state => {
            let rows = match shared.store.tasks_page(state, query.after, limit).await {
                Ok(rows) => rows,
                Err(err) => return error(ErrorKind::Internal, err.to_string()),
            };
            match ask(shared, |reply| Event::Overlay(Overlay { rows, reply })).await {
                Ok(tasks) => tasks,
                Err(e) => return e,
            }
        }
    };
    let next = (tasks.len() == limit as usize && limit > 0)
        .then(|| tasks.last().map(|t| t.task))
        .flatten();
    Response::Tasks(TaskPage { tasks, next })
}

/// The cluster's nodes, each with the labels it declared itself told apart from its token's.
async fn list_nodes(shared: &Shared) -> Response {
    let mut nodes = match ask(shared, |reply| Event::ListNodes { reply }).await {
        Ok(nodes) => nodes,
        Err(e) => return e,
    };
    let given = match shared.store.token_labels().await {
        Ok(given) => given.into_iter().collect(),
        Err(err) => return error(ErrorKind::Internal, err.to_string()),
    };
    crate::identity::mark_declared(&mut nodes, &given);
    Response::Nodes(nodes)
}

async fn remove_node(node: &str, shared: &Shared) -> Response {
    let removed = shared
        .revoked
        .remove(
            node,
            "removed by an operator",
            &shared.store,
            &shared.channels.events,
        )
        .await;
    match removed {
        Ok(nodes) if nodes.is_empty() => error(ErrorKind::NotFound, format!("no node {node:?}")),
        Ok(nodes) => Response::Removed { nodes },
        Err(err) => error(
            ErrorKind::Internal,
            format!("cannot remove {node:?}: {err}"),
        ),
    }
}

/// Counts by state: open tasks from the loop, finished ones from the store.
async fn status(shared: &Shared) -> Response {
    let live: ClusterStatus = match ask(shared, |reply| Event::Status { reply }).await {
        Ok(status) => status,
        Err(e) => return e,
    };
    let stored = match shared.store.counts().await {
        Ok(counts) => counts,
        Err(err) => return error(ErrorKind::Internal, err.to_string()),
    };
    let mut tasks: Vec<(TaskState, u64)> = live.tasks;
    tasks.extend(stored.into_iter().filter(|(state, _)| state.is_terminal()));
    tasks.sort_by_key(|(state, _)| *state as u8);
    let servers = shared.servers.borrow().clone();
    Response::Status(ClusterStatus {
        tasks,
        servers,
        ..live
    })
}
