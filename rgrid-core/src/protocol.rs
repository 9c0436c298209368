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
use crate::log::LogEvent;
use crate::object::{NamedObject, ObjectPage, ObjectQuery, ObjectRef};
use crate::resources::Resources;
use crate::task::{TaskSpec, TaskState};

/// The major version, in the ALPN: peers of another major version cannot even negotiate TLS.
pub const ALPN: &[u8] = b"rgrid/1";
/// The protocol version exchanged in the handshake. Both sides must speak the same one.
/// Version 2: batched assignments and results on the control stream, waits on many tasks,
/// paged task listings, cluster status. Version 3: objects, and task specs with inputs (a node
/// of version 2 could not decode them). Version 4: task outputs and dependencies (specs with
/// outputs, results carrying output objects, recursive cancel). Version 5: logs streamed while
/// tasks run, and followed. Version 6: pinned objects, and object listings that say what keeps
/// each object.
pub const PROTOCOL_VERSION: u32 = 6;
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
    /// A client submits tasks (idempotent by task id): answered once they are durable.
    Submit(Vec<TaskSpec>),
    /// A client waits for a task's outcome.
    Get { task: TaskId },
    /// A client lists nodes.
    ListNodes,
    /// A client lists one page of tasks.
    ListTasks(TaskQuery),
    /// A client cancels a task; with `recursive`, also every open task that depends on it
    /// (transitively), which would otherwise end `DependencyFailed`.
    Cancel { task: TaskId, recursive: bool },
    /// A client drains a node (by name or id): no new work; running attempts get until the
    /// deadline to finish, then are requeued; the node leaves.
    DrainNode { node: String, deadline_secs: u64 },
    /// A client waits for many tasks at once: the head answers with [`Response::Outcomes`]
    /// frames as they end (in the order they end) and finishes the stream after the last one.
    /// At most [`MAX_WAIT_TASKS`] ids; `outputs: false` leaves stdout and stderr out.
    Wait { tasks: Vec<TaskId>, outputs: bool },
    /// A client asks for counts of tasks and nodes by state.
    Status,
    /// A client uploads an object. The head answers [`Response::ObjectWanted`] (then the client
    /// sends exactly `size` raw bytes and finishes the stream; the head answers
    /// [`Response::ObjectStored`] once they are verified and stored), or at once
    /// [`Response::ObjectStored`] (it has the object already) or an error (over the quota).
    PutObject(ObjectRef),
    /// A client or node downloads an object: the head answers [`Response::Object`], then sends
    /// its `size` raw bytes and finishes the stream; or an error (unknown object).
    GetObject(ObjectRef),
    /// A client lists one page of the head's objects.
    ListObjects(ObjectQuery),
    /// An admin removes a node (by name: every node of that name; or by id) from the cluster:
    /// its certificate is revoked, what it runs is requeued, it leaves the listings.
    RemoveNode { node: String },
    /// A client asks what tasks cost: answered with [`Response::Cost`].
    Cost(CostQuery),
    /// A client whose certificate is in its renewal window asks for a new one for the same
    /// key (a CSR): answered with [`Response::Renewed`]. The name and role stay those of the
    /// certificate it connected with.
    Renew { csr_pem: String },
    /// A node streams an attempt's output while it runs: the head answers
    /// [`Response::LogOffsets`] (how much of each channel it has: the node goes on from there),
    /// then the node sends [`crate::log::LogFrame`]s and finishes the stream once the output ended; the head
    /// answers [`Response::LogOffsets`] again once it has written them.
    AttemptLog { attempt: AttemptId },
    /// A client reads a task's output: attempt `attempt` (the latest when `None`), what exists so
    /// far, or with `follow` as it is produced (moving on to later attempts) until the task ends.
    /// Answered with [`Response::Log`] frames, the last one [`LogEvent::End`].
    Logs {
        task: TaskId,
        attempt: Option<u32>,
        follow: bool,
    },
    /// A client pins a stored object (retention keeps it, also across restarts, until it is
    /// unpinned) or unpins it (retention counts again from now). Answered with
    /// [`Response::Pinned`]; an object the head does not hold is `NotFound`.
    PinObject { object: ObjectRef, pinned: bool },
}

/// Which tasks' costs to sum, and how to group them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostQuery {
    /// Only attempts that ended in the last this many milliseconds; `None` = all.
    pub since_ms: Option<u64>,
    pub by: CostBy,
    /// Only this task (its cost, as `rgrid get` shows it).
    pub task: Option<TaskId>,
}

/// How [`CostQuery`] groups tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CostBy {
    /// One group: the total.
    Total,
    /// By the task's label selector (as the command line writes it; empty for none).
    Label,
    /// By the task's resources (`cpu=1000m mem=256M`).
    Shape,
    /// By the client (certificate name) that submitted it.
    Client,
}

/// Most groups one [`Response::Cost`] holds (the costliest first).
pub const MAX_COST_GROUPS: u32 = 1000;

/// What a group of tasks cost, in the currency of the nodes' hourly prices. Only attempts on
/// nodes with a price count.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CostGroup {
    /// The group's key (empty for the total, or for tasks without one).
    pub key: String,
    pub tasks: u64,
    /// Node-seconds held: share of the node × seconds, summed over attempts.
    pub node_seconds: f64,
    /// The cost, idle time apportioned, of the billed hours that have closed, plus
    /// `provisional`.
    pub cost: f64,
    /// The part of `cost` in hours not closed yet: node-seconds at the hourly price, without
    /// idle time (it can only grow when the hour closes).
    pub provisional: f64,
}

/// Costs grouped as asked, costliest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CostReport {
    pub groups: Vec<CostGroup>,
    /// Every task of the query (also those in groups left out).
    pub total: CostGroup,
    /// More than [`MAX_COST_GROUPS`] groups: the cheapest were left out.
    pub truncated: bool,
}

/// Most task ids one [`Request::Wait`] may name.
pub const MAX_WAIT_TASKS: usize = 100_000;

/// Most tasks one listing page may hold.
pub const MAX_PAGE_TASKS: u32 = 10_000;

/// Which tasks a listing shows: those in `state` (any state when `None`) with an id after
/// `after`, in id order (submission order, since ids are time-ordered), at most `limit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskQuery {
    pub state: Option<TaskState>,
    pub after: Option<TaskId>,
    /// At most [`MAX_PAGE_TASKS`].
    pub limit: u32,
}

impl Default for TaskQuery {
    fn default() -> Self {
        Self {
            state: None,
            after: None,
            limit: 100,
        }
    }
}

/// One page of a task listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskPage {
    pub tasks: Vec<TaskInfo>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next: Option<TaskId>,
}

/// What the head says of one submitted task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubmitAnswer {
    /// New, and stored durably.
    Accepted,
    /// Already known with the same spec (a resubmission): its current state.
    Known { state: TaskState },
    /// Refused (invalid, or the id is known with another spec); nothing was stored.
    Rejected(String),
}

/// Counts of tasks and nodes by state, and what queued tasks wait for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Every state with at least one task.
    pub tasks: Vec<(TaskState, u64)>,
    /// Node states (`ready`, `suspect`, …) with at least one node.
    pub nodes: Vec<(String, u64)>,
    /// Queued shapes that fit no node now, with why.
    pub waiting: Vec<WaitingShape>,
    /// The autoscaler's servers by state (`provisioning`, `ready`, …) with at least one server;
    /// empty without an autoscaler.
    pub servers: Vec<(String, u64)>,
}

/// Queued tasks of one shape that wait.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingShape {
    pub resources: Resources,
    /// The shape's label selector and required capabilities, as written on the command line.
    pub constraints: String,
    pub tasks: u64,
    pub reason: Option<String>,
}

/// Answers to [`Request`]s.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// The request failed; nothing changed.
    Error(ErrorReply),
    Joined(JoinReply),
    ResultAccepted,
    /// Per submitted task, in order.
    Submitted(Vec<SubmitAnswer>),
    Task(TaskOutcome),
    Nodes(Vec<NodeInfo>),
    Tasks(TaskPage),
    Cancelled {
        state: TaskState,
    },
    /// The node was told to drain.
    Draining {
        node: NodeId,
    },
    /// Outcomes of waited-for tasks, as they end (one [`Request::Wait`] gets many frames).
    Outcomes(Vec<TaskOutcome>),
    Status(ClusterStatus),
    /// Send the object's bytes (see [`Request::PutObject`]).
    ObjectWanted,
    /// The object is stored durably.
    ObjectStored(ObjectRef),
    /// The object's raw bytes follow on this stream (see [`Request::GetObject`]).
    Object(ObjectRef),
    Objects(ObjectPage),
    /// The nodes removed and revoked.
    Removed {
        nodes: Vec<NodeId>,
    },
    Cost(CostReport),
    /// The renewed client certificate (PEM), for the key of the CSR.
    Renewed {
        cert_pem: String,
    },
    /// How many bytes of an attempt's stdout and stderr the head has (see
    /// [`Request::AttemptLog`]).
    LogOffsets {
        stdout: u64,
        stderr: u64,
    },
    /// Part of a task's output (see [`Request::Logs`]).
    Log(LogEvent),
    /// The object is pinned, or not, durably (see [`Request::PinObject`]).
    Pinned {
        object: ObjectRef,
        pinned: bool,
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
    /// The answer would exceed the frame limit: ask for less (a smaller page or fewer tasks).
    TooLarge,
    /// Storing it would take the head past a quota (`max_object_bytes`).
    QuotaExceeded,
    /// The client's role does not allow this request (or not on this task).
    Forbidden,
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
    /// Attempts that ended whose results the head has not acknowledged yet: the node sends them
    /// again on the new session, so the head keeps them instead of requeueing them.
    pub finished: Vec<AttemptId>,
    /// How long the head keeps the node's attempts while it is silent (its `disconnect_grace`,
    /// in ms) before it requeues them; `None`: the head's `heartbeat_timeout`.
    pub disconnect_grace_ms: Option<u64>,
}

/// The node label that carries a node's hourly price (a decimal number, in the currency of the
/// autoscaler's node types): what its tasks' costs are computed from. Provisioned nodes get it
/// from their node type, nodes joined by hand from their `hourly_price` config key.
pub const HOURLY_PRICE_LABEL: &str = "rgrid-hourly-price";

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
    /// Run these attempts.
    Assign(Vec<Assignment>),
    /// Stop this attempt (cancelled or superseded).
    Kill { attempt: AttemptId },
    /// The session is refused (e.g. an unknown node id); the node should not retry as-is.
    Refused { message: String },
    /// Drain: take no new work, let running attempts finish within the deadline, then leave.
    Drain { deadline_ms: u64 },
    /// These results are durable: the node may forget them.
    ResultsAccepted(Vec<AttemptId>),
    /// The node's renewed certificate (PEM), for the key of its [`NodeMessage::Renew`]: the
    /// node uses it from its next connection on.
    Renewed { cert_pem: String },
}

/// One attempt to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub attempt: AttemptId,
    /// The postcard-encoded [`TaskSpec`], as the client sent it and the head stored it.
    pub spec: Vec<u8>,
}

impl Assignment {
    /// The task to run (the whole blob: bytes after the spec are an error).
    pub fn spec(&self) -> Result<TaskSpec, crate::frame::FrameError> {
        crate::frame::decode(&self.spec)
    }
}

/// Results whose outputs together stay under this size travel on the control stream in
/// batches; larger ones get a stream of their own ([`Request::ReportResult`]).
pub const INLINE_RESULT_BYTES: usize = 16 << 10;

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
    /// Attempts that ended, with small outputs (see [`INLINE_RESULT_BYTES`]); acknowledged with
    /// [`HeadMessage::ResultsAccepted`] once durable.
    Results(Vec<AttemptReport>),
    /// The node's health, sent with its heartbeats when it changes (and when a session opens).
    Health(NodeHealth),
    /// The attempt waits for its image to be pulled (listings say so until it starts).
    Pulling {
        attempt: AttemptId,
    },
    /// The node's certificate is in its renewal window: a CSR for the same key. Answered with
    /// [`HeadMessage::Renewed`]; the session and its attempts go on meanwhile.
    Renew {
        csr_pem: String,
    },
}

/// What a node finds when it checks itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHealth {
    /// Why the node cannot take work now; `None` when it is healthy.
    pub problem: Option<String>,
    /// Whether the Docker engine answered (`None`: not a Docker node).
    pub engine_reachable: Option<bool>,
    /// Free bytes in the Docker engine's root dir, when the node can see it.
    pub docker_root_free_bytes: Option<u64>,
    /// Free bytes in the node's state dir (its spool).
    pub state_dir_free_bytes: Option<u64>,
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
    /// The task's declared outputs, stored on the head as objects (only after an exit 0).
    pub outputs: Vec<NamedObject>,
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
    /// The node could not run it for a fault of its own, not the task's (the Docker engine does
    /// not answer, the registry answered 5xx or 429, a pull timed out): the head runs it again
    /// without counting a node loss.
    HandedBack(String),
    /// The process was killed by a signal it was not sent by rgrid (process executor); its exit
    /// code is 128 + the signal, as a shell reports it.
    Signalled { signal: i32, name: String },
    /// It exited 0, but a declared output could not be collected (missing, too large, or the
    /// upload to the head failed for good).
    OutputFailed(String),
}

impl ExitStatus {
    /// The exit code a shell would report: the process's own, or 128 + the signal that killed it.
    pub fn code(&self) -> Option<i64> {
        match self {
            Self::Exited(code) => Some(*code),
            Self::Signalled { signal, .. } => Some(128 + i64::from(*signal)),
            _ => None,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(code) => write!(f, "exited with code {code}"),
            Self::OutOfMemory => f.write_str("killed: out of memory (exceeded its memory limit)"),
            Self::TimedOut => f.write_str("killed: timed out"),
            Self::StartFailed(msg) => write!(f, "could not start: {msg}"),
            Self::Killed => f.write_str("killed on request"),
            Self::HandedBack(msg) => write!(f, "handed back by its node: {msg}"),
            Self::Signalled { signal, name } => {
                write!(
                    f,
                    "killed by signal {name} ({signal}), exit code {}",
                    128 + signal
                )
            }
            Self::OutputFailed(msg) => write!(f, "exited with code 0, but {msg}"),
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
    /// Its declared outputs, once it succeeded.
    pub outputs: Vec<NamedObject>,
}

impl TaskOutcome {
    /// The output called `name`, if the task produced it.
    pub fn output(&self, name: &str) -> Option<ObjectRef> {
        self.outputs
            .iter()
            .find(|o| o.name == name)
            .map(|o| o.object)
    }
}

/// A node as `rgrid nodes` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub name: String,
    /// `ready`, `unhealthy` (connected, but says it cannot take work), `suspect`, `draining`,
    /// `dead` or `left`.
    pub state: String,
    pub total: Resources,
    pub free: Resources,
    pub labels: BTreeMap<String, String>,
    pub capabilities: Vec<String>,
    pub running: u32,
    /// Why the node takes no work although it is connected (its engine does not answer, its
    /// disk is full); its state is then `unhealthy`.
    pub unhealthy: Option<String>,
    /// The keys of `labels` the node declared itself; the others were given by the join token
    /// it joined with (an operator's decision, which the node cannot override).
    pub declared_labels: Vec<String>,
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

    // Golden bytes of every message: tests/wire_golden.rs.

    #[test]
    fn task_spec_round_trips() {
        let spec = TaskSpec::new("img").command(["echo", "hi"]).env("A", "B");
        let bytes = postcard::to_allocvec(&Request::Submit(vec![spec.clone()])).expect("encodes");
        let back: Request = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(back, Request::Submit(vec![spec]));
    }
}
