//! The messages on the wire.
//!
//! Every connection starts with a handshake on its first stream ([`Hello`] / [`HelloReply`]).
//! After that, every stream the connecting peer opens starts with one [`Request`]; the head
//! answers with [`Response`]s. A node's control stream (opened with [`Request::NodeSession`])
//! then carries [`NodeMessage`]s up and [`HeadMessage`]s down.
//!
//! postcard is not self-describing: enum variants and struct fields are only ever appended, and
//! the golden-bytes tests below freeze the encoding.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::id::{AttemptId, NodeId, TaskId};
use crate::resources::Resources;
use crate::task::{TaskSpec, TaskState};

/// The major version, in the ALPN: peers of another major version cannot even negotiate TLS.
pub const ALPN: &[u8] = b"rgrid/1";
/// The protocol version exchanged in the handshake. Both sides must speak the same one.
pub const PROTOCOL_VERSION: u32 = 1;
/// The fixed server name of the head in its certificate. Nodes and clients verify the head by the
/// cluster CA and this name, whatever address they reach it at.
pub const HEAD_SERVER_NAME: &str = "head.rgrid";

/// First frame of every connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    /// Free-form peer description for logs (`rgrid-node 0.1.0`).
    pub agent: String,
}

/// The head's answer to [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    Accepted { version: u32 },
    Refused { message: String },
}

/// First frame of every stream after the handshake.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// A node without a certificate asks to join with a token (the only request such a peer may make).
    Join(JoinRequest),
    /// A node opens its control stream.
    NodeSession(NodeHello),
    /// A node reports how an attempt ended; the head answers [`Response::ResultAccepted`] once the
    /// result is durable.
    ReportResult(AttemptReport),
    /// A client submits tasks (idempotent by task id).
    Submit(Vec<TaskSpec>),
    /// A client waits for a task's outcome.
    Get { task: TaskId },
    /// A client lists nodes.
    ListNodes,
    /// A client lists tasks.
    ListTasks,
    /// A client cancels a task.
    Cancel { task: TaskId },
    /// A client drains a node (by name or id): no new work; running attempts get until the
    /// deadline to finish, then are requeued; the node leaves.
    DrainNode { node: String, deadline_secs: u64 },
}

/// Answers to [`Request`]s.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// The request failed; nothing changed.
    Error(ErrorReply),
    Joined(JoinReply),
    ResultAccepted,
    /// Per submitted task, in order: accepted (or already known), or why not.
    Submitted(Vec<Result<TaskId, String>>),
    Task(TaskOutcome),
    Nodes(Vec<NodeInfo>),
    Tasks(Vec<TaskInfo>),
    Cancelled {
        state: TaskState,
    },
    /// The node was told to drain.
    Draining {
        node: NodeId,
    },
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
}

/// Machine-readable category of an [`ErrorReply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The peer has no (valid) credentials for this request.
    Unauthorized,
    /// The request was malformed.
    BadRequest,
    /// The task or node does not exist.
    NotFound,
    /// The head failed (storage, shutdown).
    Internal,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The full token, `ID.SECRET.CAHASH`.
    pub token: String,
    /// PEM certificate signing request for the node's key.
    pub csr_pem: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinReply {
    pub node_id: NodeId,
    /// The node's client certificate (PEM), signed by the cluster CA.
    pub cert_pem: String,
    /// The cluster CA (PEM): from now on the node verifies the head against it.
    pub ca_pem: String,
}

/// What a node says about itself when it opens its control stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHello {
    pub name: String,
    pub resources: Resources,
    pub labels: BTreeMap<String, String>,
    pub capabilities: Vec<String>,
    /// Attempts the node is still running (after a reconnect), so the head can re-adopt them.
    pub running: Vec<AttemptId>,
}

/// Head → node on the control stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum HeadMessage {
    /// The session is open.
    Welcome {
        node_id: NodeId,
        heartbeat_interval_ms: u64,
        /// Attempts the node reported running that were superseded: kill them.
        superseded: Vec<AttemptId>,
    },
    /// Run this attempt.
    Assign {
        attempt: AttemptId,
        spec: Box<TaskSpec>,
    },
    /// Stop this attempt (cancelled or superseded).
    Kill { attempt: AttemptId },
    /// The session is refused (e.g. an unknown node id); the node should not retry as-is.
    Refused { message: String },
    /// Drain: take no new work, let running attempts finish within the deadline, then leave.
    Drain { deadline_ms: u64 },
}

/// Node → head on the control stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeMessage {
    Heartbeat,
    /// The container of this attempt started.
    Started {
        attempt: AttemptId,
    },
    /// The node is draining: no new work.
    Draining,
    /// The node leaves the cluster now; these attempts did not finish and must be requeued.
    Leaving {
        unfinished: Vec<AttemptId>,
    },
}

/// How an attempt ended, sent on its own stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptReport {
    pub attempt: AttemptId,
    pub exit: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
}

/// How a container ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// The process exited with this code.
    Exited(i64),
    /// The kernel killed it for exceeding its memory limit.
    OutOfMemory,
    /// It ran past its timeout and was killed.
    TimedOut,
    /// It never ran: the image is missing and could not be pulled, the container could not be
    /// created, … (with the engine's message).
    StartFailed(String),
    /// It was killed on request.
    Killed,
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(code) => write!(f, "exited with code {code}"),
            Self::OutOfMemory => f.write_str("killed: out of memory (exceeded its memory limit)"),
            Self::TimedOut => f.write_str("killed: timed out"),
            Self::StartFailed(msg) => write!(f, "could not start: {msg}"),
            Self::Killed => f.write_str("killed on request"),
        }
    }
}

/// One execution of a task, as the head recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptInfo {
    pub attempt: u32,
    pub node: NodeId,
    pub node_name: String,
    pub started_at_ms: u64,
    pub ended_at_ms: Option<u64>,
    /// Why it ended: an exit status or "node lost".
    pub outcome: Option<String>,
}

/// The outcome of a terminal task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOutcome {
    pub task: TaskId,
    pub state: TaskState,
    /// The process's exit code, when it ran to an exit.
    pub exit_code: Option<i64>,
    /// Why it failed, when it did.
    pub reason: Option<String>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub attempts: Vec<AttemptInfo>,
}

/// A node as `rgrid nodes` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub name: String,
    /// `ready`, `suspect`, `draining` or `dead`.
    pub state: String,
    pub total: Resources,
    pub free: Resources,
    pub labels: BTreeMap<String, String>,
    pub capabilities: Vec<String>,
    pub running: u32,
}

/// A task as `rgrid tasks` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub task: TaskId,
    pub image: String,
    pub state: TaskState,
    pub attempt: u32,
    pub node: Option<NodeId>,
    pub submitted_at_ms: u64,
    /// Why it is waiting or why it ended.
    pub detail: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    /// Freezes the encoding: a change here breaks every deployed peer.
    #[test]
    fn golden_bytes() {
        let hello = Hello {
            version: 1,
            agent: "a".into(),
        };
        assert_eq!(
            postcard::to_allocvec(&hello).expect("encodes"),
            [1, 1, b'a']
        );
        let task = TaskId(Uuid::from_u128(1));
        let get = Request::Get { task };
        let mut expected = vec![4, 16];
        expected.extend_from_slice(&1u128.to_be_bytes());
        assert_eq!(postcard::to_allocvec(&get).expect("encodes"), expected);
        let msg = NodeMessage::Started {
            attempt: AttemptId { task, attempt: 2 },
        };
        let mut expected = vec![1, 16];
        expected.extend_from_slice(&1u128.to_be_bytes());
        expected.push(2);
        assert_eq!(postcard::to_allocvec(&msg).expect("encodes"), expected);
        assert_eq!(
            postcard::to_allocvec(&ExitStatus::Exited(-1)).expect("encodes"),
            [0, 1]
        );
    }

    #[test]
    fn task_spec_round_trips() {
        let spec = TaskSpec::new("img").command(["echo", "hi"]).env("A", "B");
        let bytes = postcard::to_allocvec(&Request::Submit(vec![spec.clone()])).expect("encodes");
        let back: Request = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(back, Request::Submit(vec![spec]));
    }
}
