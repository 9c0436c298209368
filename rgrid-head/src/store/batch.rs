//! What one group commit writes: rows by kind, so that each kind goes to the database as
//! multi-row statements (prepared once per row count) instead of a statement per row.
//!
//! A task's normal life costs three rows: a [`NewTask`] at submission, an [`AttemptRow`] at
//! each placement and a [`Finish`] at its end. Requeues and retries add an [`AttemptEnd`] and a
//! [`Counters`] row. Every statement is guarded so that it can only move a task forward: inserts
//! never overwrite, attempts are only added to open tasks, and nothing updates a finished task.

use rgrid_core::object::NamedObject;
use rgrid_core::{NodeId, TaskId, TaskState};

use super::{StoredNode, StoredToken};

/// A task to insert. Whether it was new is decided by the insert (see
/// [`super::Committed::known`]); the batch's other rows for a task that turned out to be known
/// are not applied.
#[derive(Clone, Debug)]
pub(crate) struct NewTask {
    pub id: TaskId,
    /// The postcard-encoded spec.
    pub spec: Vec<u8>,
    /// `Queued`, or `Pending` for a task that waits for dependencies (it stays so in the store
    /// until it is placed: a restart works out again whether they are met).
    pub state: TaskState,
    pub submitted_at_ms: u64,
    /// The client that submitted it (`None` in tests of the loop alone).
    pub submitted_by: Option<String>,
    /// What `rgrid cost --by` groups it by (with `submitted_by`): its resources and its label
    /// selector.
    pub cost_keys: CostKeys,
}

/// A task's keys for `rgrid cost --by shape|label|client`.
#[derive(Clone, Debug, Default)]
pub(crate) struct CostKeys {
    pub shape: String,
    pub selector: String,
}

/// An attempt placed on a node, committed before the node hears of it, so that an attempt
/// number is never handed out twice, across head restarts too.
#[derive(Clone, Debug)]
pub(crate) struct AttemptRow {
    pub task: TaskId,
    pub attempt: u32,
    pub node: NodeId,
    pub node_name: String,
    pub started_at_ms: u64,
    /// Its share of the node (see [`rgrid_cloud::task_cost::share`]).
    pub share: f64,
    /// The node's hourly price; `None` when the node has none (the attempt has no cost).
    pub hourly_price: Option<f64>,
}

/// An attempt that ended without ending its task (requeued after a node loss, retried after a
/// failure). The last attempt of a finished task is ended by its [`Finish`].
#[derive(Clone, Debug)]
pub(crate) struct AttemptEnd {
    pub task: TaskId,
    pub attempt: u32,
    pub ended_at_ms: u64,
    pub outcome: String,
}

/// A task takes an output of `dependency` as an input: written with the task's insert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Edge {
    pub task: TaskId,
    pub dependency: TaskId,
}

/// The retry budgets a task has used, written when they change.
#[derive(Clone, Debug)]
pub(crate) struct Counters {
    pub task: TaskId,
    pub node_losses: u32,
    pub failures: u32,
}

/// A task's outputs: small ones inline in its row, large ones as files named by their hash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Output {
    #[default]
    Empty,
    Inline(Vec<u8>),
    Stored(String),
}

impl Output {
    /// Inline bytes (empty for none), as stored in the row.
    pub(crate) fn inline(&self) -> Option<&[u8]> {
        match self {
            Self::Inline(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// The hash of a stored output.
    pub(crate) fn hash(&self) -> Option<&str> {
        match self {
            Self::Stored(hash) => Some(hash),
            _ => None,
        }
    }

    pub(crate) fn from_columns(inline: Option<Vec<u8>>, hash: Option<String>) -> Self {
        match (inline, hash) {
            (_, Some(hash)) => Self::Stored(hash),
            (Some(bytes), None) if !bytes.is_empty() => Self::Inline(bytes),
            _ => Self::Empty,
        }
    }
}

/// A task's end. Applied only while the task is open.
#[derive(Clone, Debug)]
pub(crate) struct Finish {
    pub task: TaskId,
    pub state: TaskState,
    pub finished_at_ms: u64,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub stdout: Output,
    pub stderr: Output,
    /// Its last attempt (0 when it never ran) and that attempt's node.
    pub attempt: u32,
    pub node: Option<NodeId>,
    pub node_losses: u32,
    pub failures: u32,
    /// Its declared outputs (once it succeeded).
    pub outputs: Vec<NamedObject>,
}

/// Writes outside the task path: nodes and join tokens.
#[derive(Debug)]
pub(crate) enum Write {
    UpsertNode(Box<StoredNode>),
    NodeState {
        node: NodeId,
        state: &'static str,
    },
    InsertToken(StoredToken),
    /// A billed hour of a node closed with use (see [`rgrid_cloud::task_cost`]).
    NodeHour {
        node: NodeId,
        hour: rgrid_cloud::task_cost::ClosedHour,
    },
    /// A node left with idle hours after its last hour with use: they go to that hour.
    AmendHour {
        node: NodeId,
        start_ms: u64,
        extra: f64,
    },
}

/// Everything one commit writes, applied in this order (inserts first, so that a task submitted
/// and placed before the commit lands whole).
#[derive(Debug, Default)]
pub(crate) struct WriteBatch {
    pub inserts: Vec<NewTask>,
    pub edges: Vec<Edge>,
    pub attempts: Vec<AttemptRow>,
    pub attempt_ends: Vec<AttemptEnd>,
    pub counters: Vec<Counters>,
    pub finishes: Vec<Finish>,
    pub other: Vec<Write>,
}

impl WriteBatch {
    pub(crate) fn is_empty(&self) -> bool {
        self.rows() == 0
    }

    /// Rows in the batch.
    pub(crate) fn rows(&self) -> usize {
        self.inserts.len()
            + self.edges.len()
            + self.attempts.len()
            + self.attempt_ends.len()
            + self.counters.len()
            + self.finishes.len()
            + self.other.len()
    }

    /// Leaves out the rows of tasks that turned out to be known already (their insert did
    /// nothing): a resubmission must not touch the stored task.
    pub(crate) fn drop_tasks(&mut self, known: &std::collections::HashSet<TaskId>) {
        if known.is_empty() {
            return;
        }
        self.edges.retain(|r| !known.contains(&r.task));
        self.attempts.retain(|r| !known.contains(&r.task));
        self.attempt_ends.retain(|r| !known.contains(&r.task));
        self.counters.retain(|r| !known.contains(&r.task));
        self.finishes.retain(|r| !known.contains(&r.task));
    }
}
