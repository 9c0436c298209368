//! The QUIC side of the head: accepts connections, runs the handshake, reads one request per
//! stream, checks who may ask what, and turns requests into [`Event`]s for the cluster loop.
//! Bad input closes that stream with an error; the connection and the daemon go on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use quinn::{Connection, Endpoint, RecvStream, SendStream};
use rgrid_core::frame::{FrameError, FrameReader, FrameWriter};
use rgrid_core::protocol::{
    AttemptReport, ErrorKind, ErrorReply, HeadMessage, JoinReply, JoinRequest, NodeHello,
    NodeMessage, Request, Response, TaskOutcome,
};
use rgrid_core::tls::{ClusterCa, JoinToken, PeerIdentity};
use rgrid_core::transport::accept_handshake;
use rgrid_core::{NodeId, TaskId, TaskSpec};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::cluster::{AttemptResult, Event, Outcome};
use crate::outputs::OutputStore;
use crate::store::{Store, StoredNode, Write};
use crate::unix_ms;

/// What connection handlers share.
pub(crate) struct Shared {
    pub store: Store,
    pub outputs: OutputStore,
    pub ca: Arc<ClusterCa>,
    pub events: mpsc::UnboundedSender<Event>,
    /// Distinguishes a node's sessions, so events from a replaced one are ignored.
    pub next_session: AtomicU64,
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
        let shared2 = shared.clone();
        shared.tracker.spawn(
            async move {
                match incoming.await {
                    Ok(connection) => handle_connection(connection, shared2).await,
                    Err(err) => {
                        tracing::info!(error = %err, "connection failed during the TLS handshake")
                    }
                }
            }
            .instrument(tracing::info_span!("conn", %remote)),
        );
    }
    endpoint.close(0u32.into(), b"head shutting down");
}

/// The peer's identity from its verified certificate, if it presented one.
fn identity(connection: &Connection) -> Option<PeerIdentity> {
    let certs = connection
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    PeerIdentity::from_cert(certs.first()?)
}

async fn handle_connection(connection: Connection, shared: Arc<Shared>) {
    let peer = identity(&connection);
    let agent = match accept_handshake(&connection).await {
        Ok(agent) => agent,
        Err(err) => {
            tracing::info!(error = %err, "handshake failed");
            // Give the peer time to read the refusal before the connection goes.
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(2), connection.closed()).await;
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
        shared
            .tracker
            .spawn(handle_stream(peer, send, recv, shared2).in_current_span());
    }
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error(ErrorReply {
        kind,
        message: message.into(),
    })
}

async fn handle_stream(
    peer: Option<PeerIdentity>,
    send: SendStream,
    recv: RecvStream,
    shared: Arc<Shared>,
) {
    let mut writer = FrameWriter::<_, Response>::new(send);
    let mut reader = FrameReader::<_, Request>::new(recv);
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
    let response = match (request, &peer) {
        (Request::Join(join), _) => join_node(join, &shared).await,
        (Request::NodeSession(hello), Some(PeerIdentity::Node(node))) => {
            return node_session(*node, hello, writer, reader, shared).await;
        }
        (Request::ReportResult(report), Some(PeerIdentity::Node(node))) => {
            report_result(*node, report, &shared).await
        }
        (Request::Submit(specs), Some(PeerIdentity::Client(_))) => submit(specs, &shared).await,
        (Request::Get { task }, Some(PeerIdentity::Client(_))) => get(task, &shared).await,
        (Request::Cancel { task }, Some(PeerIdentity::Client(_))) => {
            match ask(&shared, |reply| Event::Cancel { task, reply }).await {
                Ok(Some(state)) => Response::Cancelled { state },
                Ok(None) => error(ErrorKind::NotFound, format!("no task {task}")),
                Err(e) => e,
            }
        }
        (Request::ListNodes, Some(PeerIdentity::Client(_))) => {
            ask(&shared, |reply| Event::ListNodes { reply })
                .await
                .map_or_else(|e| e, Response::Nodes)
        }
        (Request::DrainNode { node, deadline_secs }, Some(PeerIdentity::Client(_))) => {
            let deadline = std::time::Duration::from_secs(deadline_secs);
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
        (Request::ListTasks, Some(PeerIdentity::Client(_))) => {
            ask(&shared, |reply| Event::ListTasks { reply })
                .await
                .map_or_else(|e| e, Response::Tasks)
        }
        (_, None) => error(
            ErrorKind::Unauthorized,
            "this connection has no client certificate: it may only join with a token; clients connect with the client.toml rgrid-head wrote to its state dir",
        ),
        (_, Some(identity)) => error(
            ErrorKind::Unauthorized,
            format!("{identity} may not make this request"),
        ),
    };
    if let Err(err) = writer.send(&response).await {
        tracing::debug!(error = %err, "could not send the response");
    }
    let _ = writer.get_mut().finish();
}

/// Sends an event carrying a reply channel and waits for the reply.
async fn ask<T>(
    shared: &Shared,
    make: impl FnOnce(oneshot::Sender<T>) -> Event,
) -> Result<T, Response> {
    let (reply, rx) = oneshot::channel();
    let gone = || error(ErrorKind::Internal, "the head is shutting down");
    shared.events.send(make(reply)).map_err(|_| gone())?;
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
    let token = JoinToken::parse(&join.token).map_err(|e| e.to_string())?;
    let stored = shared
        .store
        .token(&token.id)
        .await
        .map_err(|e| e.to_string())?;
    let refused = "join token refused: unknown or wrong secret; copy the current STATE_DIR/join-token from the head";
    let stored = stored.ok_or(refused)?;
    if stored.secret_hash != token.secret_hash() {
        return Err(refused.into());
    }
    if stored.revoked {
        return Err("join token refused: it was revoked; create a new one".into());
    }
    if let Some(expires) = stored.expires_at_ms.filter(|e| *e <= unix_ms()) {
        return Err(format!(
            "join token refused: it expired at {} (unix ms {expires}); restart the head or create a new token",
            humanize_ms(expires)
        ));
    }
    if stored.single_use && stored.used {
        return Err("join token refused: it was single-use and has been used".into());
    }
    let node = NodeId::new();
    let cert_pem = shared
        .ca
        .sign_node_csr(&join.csr_pem, node)
        .map_err(|e| format!("bad certificate signing request: {e}"))?;
    let name = if join.name.trim().is_empty() {
        format!("node-{}", &node.to_string()[..8])
    } else {
        join.name
    };
    let mut writes = vec![Write::UpsertNode(Box::new(StoredNode {
        id: node,
        name: name.clone(),
        hello: None,
        state: "joined",
        joined_at_ms: unix_ms(),
    }))];
    if stored.single_use {
        writes.push(Write::UseToken { id: stored.id });
    }
    shared
        .store
        .write(writes)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(node = %node, %name, "node joined");
    Ok(JoinReply {
        node_id: node,
        cert_pem,
        ca_pem: shared.ca.cert_pem().to_owned(),
    })
}

fn humanize_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

async fn node_session(
    node: NodeId,
    hello: NodeHello,
    writer: FrameWriter<SendStream, Response>,
    reader: FrameReader<RecvStream, Request>,
    shared: Arc<Shared>,
) {
    match shared.store.node_exists(node).await {
        Ok(true) => {}
        Ok(false) => {
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
    let session = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let (sender, mut outbox) = mpsc::unbounded_channel::<HeadMessage>();
    if shared
        .events
        .send(Event::NodeConnected {
            node,
            hello,
            session,
            sender,
        })
        .is_err()
    {
        return;
    }
    let mut writer = writer.retype::<HeadMessage>();
    let write_half = async move {
        while let Some(message) = outbox.recv().await {
            if writer.send(&message).await.is_err() {
                break;
            }
        }
    };
    let mut reader = reader.retype::<NodeMessage>();
    let events = shared.events.clone();
    let read_half = async move {
        loop {
            match reader.next().await {
                Ok(Some(message)) => {
                    if events
                        .send(Event::NodeMessage {
                            node,
                            session,
                            message,
                        })
                        .is_err()
                    {
                        break;
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    if !matches!(err, FrameError::Io(_)) {
                        tracing::warn!(node = %node, error = %err, "bad frame on the control stream");
                    }
                    break;
                }
            }
        }
    };
    tokio::select! {
        _ = write_half => {},
        _ = read_half => {},
        _ = shared.shutdown.cancelled() => {},
    }
    let _ = shared
        .events
        .send(Event::NodeDisconnected { node, session });
}

async fn report_result(node: NodeId, report: AttemptReport, shared: &Shared) -> Response {
    let stored = async {
        let stdout = shared.outputs.put(report.stdout).await?;
        let stderr = shared.outputs.put(report.stderr).await?;
        Ok::<_, std::io::Error>((stdout, stderr))
    };
    let (stdout_hash, stderr_hash) = match stored.await {
        Ok(hashes) => hashes,
        Err(err) => {
            tracing::error!(error = %err, "cannot store task outputs");
            return error(ErrorKind::Internal, format!("cannot store outputs: {err}"));
        }
    };
    let result = AttemptResult {
        attempt: report.attempt,
        exit: report.exit,
        stdout_hash,
        stderr_hash,
        finished_at_ms: report.finished_at_ms,
    };
    match ask(shared, |reply| Event::AttemptEnded {
        node,
        result,
        reply,
    })
    .await
    {
        Ok(()) => Response::ResultAccepted,
        Err(e) => e,
    }
}

async fn submit(specs: Vec<TaskSpec>, shared: &Shared) -> Response {
    let submitted_at_ms = unix_ms();
    let mut answers = Vec::with_capacity(specs.len());
    let mut accepted = Vec::new();
    for spec in specs {
        match spec.validate() {
            Ok(()) => {
                answers.push(Ok(spec.id));
                accepted.push(spec);
            }
            Err(message) => answers.push(Err(format!("task {}: {message}", spec.id))),
        }
    }
    if !accepted.is_empty() {
        let writes = accepted
            .iter()
            .map(|spec| Write::InsertTask {
                spec: Box::new(spec.clone()),
                submitted_at_ms,
            })
            .collect();
        // Acknowledged only once durable.
        if let Err(err) = shared.store.write(writes).await {
            return error(
                ErrorKind::Internal,
                format!("cannot store the tasks: {err}"),
            );
        }
        if let Err(e) = ask(shared, |reply| Event::Submitted {
            specs: accepted,
            submitted_at_ms,
            reply,
        })
        .await
        {
            return e;
        }
    }
    Response::Submitted(answers)
}

async fn get(task: TaskId, shared: &Shared) -> Response {
    let outcome = match ask(shared, |reply| Event::Get { task, reply }).await {
        Ok(Some(outcome)) => outcome,
        Ok(None) => match shared.store.task(task).await {
            Ok(Some(stored)) if stored.state.is_terminal() => Outcome::from_stored(stored),
            Ok(_) => return error(ErrorKind::NotFound, format!("no task {task}")),
            Err(err) => return error(ErrorKind::Internal, err.to_string()),
        },
        Err(e) => return e,
    };
    let outputs = async {
        let stdout = shared.outputs.get(outcome.stdout_hash.as_deref()).await?;
        let stderr = shared.outputs.get(outcome.stderr_hash.as_deref()).await?;
        Ok::<_, std::io::Error>((stdout, stderr))
    };
    match outputs.await {
        Ok((stdout, stderr)) => Response::Task(TaskOutcome {
            task,
            state: outcome.state,
            exit_code: outcome.exit_code,
            reason: outcome.reason,
            stdout,
            stderr,
            attempts: outcome.attempts,
        }),
        Err(err) => error(ErrorKind::Internal, format!("cannot read outputs: {err}")),
    }
}
