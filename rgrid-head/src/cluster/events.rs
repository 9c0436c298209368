//! What reaches the loop, on three bounded channels: [`Event`]s (nodes, clients, the
//! autoscaler), [`Submission`]s and [`NodeResults`]. The last two are read only while the loop's
//! unwritten rows stay under a cap, so submitters and nodes wait when the database is behind.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use rgrid_core::object::{NamedObject, ObjectRef};
use rgrid_core::protocol::{
    AttemptInfo, ClusterStatus, ExitStatus, HeadMessage, NodeHello, NodeInfo, NodeMessage,
    SubmitAnswer, TaskInfo,
};
use rgrid_core::task::{Constraints, Strategy};
use rgrid_core::{AttemptId, NodeId, Resources, TaskId, TaskState};
use tokio::sync::{mpsc, oneshot};

use super::demand::{AutoscaleView, Shape, WaitRuns};
use crate::store::{CostKeys, ListedTask, Output};

/// A node's live control stream, as the loop holds it.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    /// Distinguishes a node's sessions, so that events from a replaced one are ignored.
    pub id: u64,
    /// The control stream's outgoing messages (bounded; a session that cannot keep up is closed).
    pub outbox: mpsc::Sender<HeadMessage>,
    /// When the node was last heard from ([`rgrid_core::time::monotonic_ms`]), written by the
    /// stream's reader on every frame: liveness never waits for the loop.
    pub last_seen: Arc<AtomicU64>,
}

/// A task the server has validated, for the loop to store and queue.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub id: TaskId,
    /// The postcard-encoded spec.
    pub spec: Vec<u8>,
    pub resources: Resources,
    pub constraints: Constraints,
    pub strategy: Strategy,
    pub priority: i32,
    /// What `rgrid cost --by` groups it by (the server fills in the client).
    pub cost_keys: CostKeys,
    /// The tasks whose outputs it takes as inputs.
    pub dependencies: Vec<TaskId>,
    /// Those of them the server found finished in the store (the loop no longer holds them).
    pub finished: Vec<FinishedDependency>,
    /// The objects it takes as inputs directly.
    pub objects: Vec<ObjectRef>,
}

/// A dependency that had finished (and left the loop) when its dependant was submitted.
#[derive(Clone, Debug)]
pub(crate) struct FinishedDependency {
    pub task: TaskId,
    pub state: TaskState,
    pub reason: Option<String>,
    /// Its outputs the head still stores.
    pub outputs: Vec<NamedObject>,
    /// The names of those retention has deleted since.
    pub deleted: Vec<String>,
}

impl From<rgrid_core::TaskSpec> for Admitted {
    fn from(spec: rgrid_core::TaskSpec) -> Self {
        let cost_keys = CostKeys {
            shape: spec.resources.to_string(),
            selector: super::listings::describe(&spec.constraints),
        };
        Self {
            cost_keys,
            dependencies: spec.dependencies(),
            finished: Vec::new(),
            objects: spec.input_objects(),
            id: spec.id,
            spec: crate::store::encode(&spec),
            resources: spec.resources,
            constraints: spec.constraints,
            strategy: spec.strategy,
            priority: spec.priority,
        }
    }
}

/// What the loop answers a submission, once its rows are durable. Tasks the store already knew
/// (resubmissions of tasks that have left the loop) are listed apart: the server reads their
/// stored spec and state.
#[derive(Debug, Default)]
pub(crate) struct SubmitReply {
    pub answers: Vec<SubmitAnswer>,
    /// `(position in answers, id)` of tasks the store knew.
    pub stored: Vec<(usize, TaskId)>,
    /// Positions of tasks refused for a dependency the loop does not hold, with that
    /// dependency (see `Refused::Unknown`).
    pub unknown: Vec<(usize, TaskId)>,
}

/// A batch of tasks from one client request.
#[derive(Debug)]
pub(crate) struct Submission {
    pub tasks: Vec<Admitted>,
    /// The client that submits them (recorded with each task).
    pub client: Option<String>,
    /// Answers in the order of `tasks`; positions of tasks the server refused are filled in by it.
    pub reply: oneshot::Sender<SubmitReply>,
}

/// How an attempt ended, with its outputs inline or already stored.
#[derive(Debug)]
pub(crate) struct Report {
    pub attempt: AttemptId,
    pub exit: ExitStatus,
    pub stdout: Output,
    pub stderr: Output,
    pub finished_at_ms: u64,
    /// Its declared outputs, stored as objects already.
    pub outputs: Vec<NamedObject>,
}

/// Results from one node.
#[derive(Debug)]
pub(crate) struct NodeResults {
    pub node: NodeId,
    pub reports: Vec<Report>,
    /// Answered once the results are durable (or at once for stale ones), for results that
    /// came on a stream of their own; results from the control stream are acknowledged there.
    pub reply: Option<oneshot::Sender<()>>,
}

/// A finished task as its waiters see it.
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    pub task: TaskId,
    pub state: TaskState,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub stdout: Output,
    pub stderr: Output,
    /// Its last attempt, if it ran.
    pub last_attempt: Option<AttemptInfo>,
    /// Number of attempts (the earlier ones are read from the store when asked for).
    pub attempts: u32,
    /// Its declared outputs, once it succeeded.
    pub outputs: Vec<NamedObject>,
}

/// Outcomes of waited-for tasks go here, one per task; the channel holds as many as the wait
/// names, so the loop never waits on it.
pub(crate) type OutcomeSink = mpsc::Sender<Arc<Outcome>>;

/// The loop's view of one listing page read from the store: the live state of its open tasks.
pub(crate) struct Overlay {
    pub rows: Vec<ListedTask>,
    pub reply: oneshot::Sender<Vec<TaskInfo>>,
}

/// Everything else that changes or reads the loop's state.
pub(crate) enum Event {
    /// Register `sink` for these tasks' outcomes; the reply lists the ones the loop does not
    /// hold (finished long ago or unknown: the server asks the store).
    Wait {
        tasks: Vec<TaskId>,
        sink: OutcomeSink,
        reply: oneshot::Sender<Vec<TaskId>>,
    },
    /// Answered once the cancellation is durable; `None` when the loop does not hold the task.
    /// `recursive`: the open tasks that depend on it are cancelled too.
    Cancel {
        task: TaskId,
        recursive: bool,
        reply: oneshot::Sender<Option<TaskState>>,
    },
    ListNodes {
        reply: oneshot::Sender<Vec<NodeInfo>>,
    },
    /// Tasks the loop holds in `state` (an open state), after `after`, at most `limit`.
    ListOpen {
        state: TaskState,
        after: Option<TaskId>,
        limit: u32,
        reply: oneshot::Sender<Vec<TaskInfo>>,
    },
    /// Live state for tasks of a page read from the store.
    Overlay(Overlay),
    /// Counts of the tasks the loop holds and of nodes; the server adds the stored ones.
    Status {
        reply: oneshot::Sender<ClusterStatus>,
    },
    /// Drain a node by name or id; `None` when there is no such live node.
    Drain {
        node: String,
        deadline: Duration,
        reply: oneshot::Sender<Option<NodeId>>,
    },
    /// Nodes removed from the cluster (revoked already): what they run is requeued, they leave
    /// the listings and never come back.
    RemoveNodes {
        nodes: Vec<NodeId>,
        reply: oneshot::Sender<()>,
    },
    /// May `node` report on `attempt` (before its large outputs are written)?
    Holds {
        node: NodeId,
        attempt: AttemptId,
        reply: oneshot::Sender<bool>,
    },
    /// A node opened its control stream.
    NodeConnected {
        node: NodeId,
        hello: NodeHello,
        session: Session,
    },
    NodeMessage {
        node: NodeId,
        session: u64,
        message: NodeMessage,
    },
    NodeDisconnected {
        node: NodeId,
        session: u64,
    },
    /// The autoscaler asks for the queued demand and the nodes.
    Autoscale {
        reply: oneshot::Sender<AutoscaleView>,
    },
    /// The autoscaler says why queued tasks of each shape wait (shown in listings).
    Waits {
        waits: Vec<(Shape, WaitRuns)>,
    },
    /// The stdout of `producer` is stored as this object (or why it is not), for the tasks that
    /// take it as an input ([`super::Comm::store_stdout`]).
    StdoutStored {
        producer: TaskId,
        result: Result<ObjectRef, String>,
    },
}
