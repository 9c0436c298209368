//! The one owner of scheduling state: the node table, the task table and the scheduler, changed
//! only by the events the loop reads. The loop is synchronous; what it sends and writes goes
//! through [`Comm`] (the head's connections and database in the daemon, a recorder in unit
//! tests), so every crash window can be driven by hand.
//!
//! **Durability.** Every change to a task is a row in the loop's pending [`WriteBatch`]; the loop
//! hands the batch to the store when the previous commit is done (group commit), and whatever
//! must not happen before the rows are durable — acknowledging a submission or a result,
//! sending an assignment, answering a cancel, showing an outcome — is an [`Effect`] that runs
//! once the batch holding the task's latest row has committed. So an attempt number reaches a
//! node only after it is stored (and is never reused after a crash), and nothing is acknowledged
//! that a restart could lose.
//!
//! **Memory.** A task costs a compact record (its spec kept encoded, its shape interned) while it
//! is open, and leaves the loop once its end is durable; an old task is read from the store.
//!
//! Files by concept: [`events`] (inputs), `tasks` (the task table, submission, placement,
//! ends), `dependencies` (tasks that wait for other tasks' outputs), `holds` (the objects open
//! tasks keep from retention), `membership` (nodes, sessions, liveness, drains), `billing` (what each node's hours
//! cost), `fencing` (which attempt is
//! current, a node's hello), `effects` (what waits for a commit), `recovery` (the state a
//! restart reads back), `listings`, [`demand`] (what the autoscaler sees) and `run` (the async
//! loop around it all).

use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rgrid_core::protocol::HeadMessage;
use rgrid_core::scheduler::{Scheduler, SchedulerConfig};
use rgrid_core::{NodeId, TaskId};

use crate::metrics::LoopMetrics;
use crate::store::{Committed, StoreError, WriteBatch};

mod billing;
mod demand;
mod dependencies;
mod effects;
pub(crate) mod events;
mod fencing;
mod holds;
mod listings;
mod membership;
mod recovery;
mod run;
mod tasks;
#[cfg(test)]
mod tests;

pub(crate) use demand::{AutoscaleView, NodeSummary, Shape, WaitRuns};
pub(crate) use events::{
    Admitted, Event, FinishedDependency, NodeResults, Outcome, Overlay, Report, Session, Submission,
};
pub(crate) use membership::NodeState;
pub(crate) use recovery::recover;
pub(crate) use run::{Channels, Io};

pub(crate) use effects::crash_point;
use effects::Effect;
use membership::Node;
use tasks::{Shapes, Task};

/// Unwritten rows above which the loop stops reading submissions and results, so that those
/// wait in their (bounded) channels instead of in memory.
pub(crate) const MAX_PENDING_ROWS: usize = 20_000;

/// What the loop sends and writes.
pub(crate) trait Comm {
    /// Puts `message` on a node session's control stream; false when the session cannot take
    /// it (a full or closed outbox), and the loop closes that session.
    fn send(&mut self, session: &Session, message: HeadMessage) -> bool;
    /// Starts committing `batch`; [`Cluster::committed`] hears how it went. Called only when no
    /// other commit is in flight.
    fn commit(&mut self, batch: WriteBatch);
    /// Demand or supply changed.
    fn wake_autoscaler(&mut self);
    /// Store the stdout of `task` (durably succeeded) as an object for the tasks that take it as
    /// an input; the loop hears how it went as [`Event::StdoutStored`].
    fn store_stdout(&mut self, task: TaskId);
}

/// Liveness settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Liveness {
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// Nodes recovered from the database have this long to reconnect.
    pub recovery_grace: Duration,
}

impl Liveness {
    /// Silence after which a node gets no new work: three missed heartbeats.
    fn suspect_after_ms(&self) -> u64 {
        millis(self.heartbeat_interval * 3)
    }

    fn timeout_ms(&self) -> u64 {
        millis(self.heartbeat_timeout)
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Group-commit bookkeeping: batch `pending_seq` is filling, `pending_seq - 1` may be in
/// flight, everything up to `durable_seq` is stored.
struct Commits {
    pending: WriteBatch,
    pending_effects: Vec<Effect>,
    pending_seq: u64,
    /// Effects of the batch in flight, and the tasks it inserts.
    in_flight: Option<(Vec<Effect>, Vec<TaskId>)>,
    durable_seq: u64,
}

/// The loop's state.
pub(crate) struct Cluster<C> {
    comm: C,
    liveness: Liveness,
    scheduler: Scheduler,
    nodes: Vec<Node>,
    node_index: HashMap<NodeId, u32>,
    tasks: HashMap<TaskId, Task>,
    /// What open tasks wait for, and who waits for them.
    dependencies: dependencies::Dependencies,
    /// The objects open tasks keep from retention.
    holds: holds::Holds,
    shapes: Shapes,
    /// Open tasks by state, for status.
    counts: tasks::Counts,
    /// Why an open task waits, when it is not the scheduler's reason ("requeued: node lost").
    details: HashMap<TaskId, String>,
    /// Exit-code retries waiting out their backoff: `(due, task, attempt)` soonest first.
    delayed: BinaryHeap<std::cmp::Reverse<(u64, TaskId, u32)>>,
    commits: Commits,
    watches: effects::Watches,
    /// Nodes with assignments or acknowledgements to send at the end of this turn.
    outgoing: Vec<u32>,
    /// Something changed that may let queued tasks run.
    dirty: bool,
    /// Mean run time of successful attempts, per shape (for the autoscaler).
    runtimes: HashMap<Shape, Duration>,
    /// Submissions per shape over the last hour (for the autoscaler).
    arrivals: HashMap<Shape, demand::Arrivals>,
    /// When the loop started ([`rgrid_core::time::monotonic_ms`]; arrival buckets count minutes
    /// from here).
    started_ms: u64,
    /// Why queued tasks wait, per shape, from the autoscaler.
    waits: Vec<(Shape, WaitRuns)>,
    autoscaling: bool,
    metrics: LoopMetrics,
}

impl<C: Comm> Cluster<C> {
    /// An empty loop; [`recover`] fills it from the store.
    pub(crate) fn new(comm: C, liveness: Liveness, scheduler: SchedulerConfig) -> Self {
        Self {
            comm,
            liveness,
            scheduler: Scheduler::new(scheduler),
            nodes: Vec::new(),
            node_index: HashMap::new(),
            tasks: HashMap::new(),
            dependencies: dependencies::Dependencies::default(),
            holds: holds::Holds::default(),
            shapes: Shapes::default(),
            counts: tasks::Counts::default(),
            details: HashMap::new(),
            delayed: BinaryHeap::new(),
            commits: Commits {
                pending: WriteBatch::default(),
                pending_effects: Vec::new(),
                pending_seq: 1,
                in_flight: None,
                durable_seq: 0,
            },
            watches: effects::Watches::default(),
            outgoing: Vec::new(),
            dirty: true,
            runtimes: HashMap::new(),
            arrivals: HashMap::new(),
            started_ms: rgrid_core::time::monotonic_ms(),
            waits: Vec::new(),
            autoscaling: false,
            metrics: LoopMetrics::new(),
        }
    }

    /// Tasks that fit one of `node_types` wait for the autoscaler to provision one instead of
    /// being unschedulable.
    pub(crate) fn with_autoscaler(
        mut self,
        node_types: Vec<rgrid_core::scheduler::NodeView>,
    ) -> Self {
        self.scheduler.set_node_types(node_types);
        self.autoscaling = true;
        self
    }

    /// Open tasks keep the objects they need from retention through `counts`.
    pub(crate) fn with_object_holds(mut self, counts: Arc<crate::objects::TaskHolds>) -> Self {
        self.holds = holds::Holds::new(counts);
        self
    }

    /// May the loop read more submissions and results now?
    pub(crate) fn accepting(&self) -> bool {
        self.commits.pending.rows() < MAX_PENDING_ROWS
    }

    /// Handles one event.
    pub(crate) fn handle(&mut self, event: Event) {
        match event {
            Event::Wait { tasks, sink, reply } => {
                let missing = self.wait(tasks, sink);
                let _ = reply.send(missing);
            }
            Event::Cancel {
                task,
                recursive,
                reply,
            } => self.cancel(task, recursive, reply),
            Event::ListNodes { reply } => {
                let _ = reply.send(self.list_nodes());
            }
            Event::ListOpen {
                state,
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(self.list_open(state, after, limit));
            }
            Event::Overlay(overlay) => {
                let _ = overlay.reply.send(self.overlay(overlay.rows));
            }
            Event::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Event::Drain {
                node,
                deadline,
                reply,
            } => {
                let _ = reply.send(self.drain(&node, deadline));
            }
            Event::RemoveNodes { nodes, reply } => {
                self.remove_nodes(&nodes);
                let _ = reply.send(());
            }
            Event::Holds {
                node,
                attempt,
                reply,
            } => {
                let holds = self
                    .node_index
                    .get(&node)
                    .is_some_and(|&n| self.current(attempt, n).is_some());
                let _ = reply.send(holds);
            }
            Event::NodeConnected {
                node,
                hello,
                session,
            } => self.node_connected(node, hello, session),
            Event::NodeMessage {
                node,
                session,
                message,
            } => self.node_message(node, session, message),
            Event::NodeDisconnected { node, session } => self.node_disconnected(node, session),
            Event::Autoscale { reply } => {
                let _ = reply.send(self.autoscale_view());
            }
            Event::Waits { waits } => self.waits = waits,
            Event::StdoutStored { producer, result } => self.stdout_stored(producer, result),
        }
    }

    /// Time passed: liveness and retry backoffs.
    pub(crate) fn tick(&mut self, now_ms: u64) {
        self.check_liveness(now_ms);
        self.release_delayed(now_ms);
        if self.metrics.sample_due(now_ms) {
            self.sample_metrics(now_ms);
        }
        self.bill_hours();
    }

    /// Ends a turn (after a burst of events): places what can run, sends what the nodes should
    /// hear, and starts the next commit if none is in flight.
    pub(crate) fn end_turn(&mut self) {
        if self.dirty {
            self.dirty = false;
            let started = Instant::now();
            self.schedule();
            self.metrics.placement_round(started.elapsed());
            if self.autoscaling {
                self.comm.wake_autoscaler();
            }
        }
        self.flush_nodes();
        self.start_commit();
    }

    /// The batch in flight is durable (or the store gave up: the head must stop).
    pub(crate) fn committed(
        &mut self,
        result: Result<Committed, StoreError>,
    ) -> Result<(), StoreError> {
        let committed = result?;
        let Some((effects, inserted)) = self.commits.in_flight.take() else {
            return Ok(());
        };
        self.commits.durable_seq = self.commits.pending_seq - 1;
        for id in inserted {
            if committed.known.contains(&id) {
                self.discard_known(id);
            } else if let Some(task) = self.tasks.get_mut(&id) {
                task.confirmed = true;
            }
        }
        self.run_effects(effects, &committed.known);
        Ok(())
    }

    fn start_commit(&mut self) {
        let commits = &mut self.commits;
        if commits.in_flight.is_some() || commits.pending.is_empty() {
            // An empty batch still has to wait for the one in flight: its effects move along.
            if commits.in_flight.is_none() && !commits.pending_effects.is_empty() {
                let effects = std::mem::take(&mut commits.pending_effects);
                commits.durable_seq = commits.pending_seq;
                commits.pending_seq += 1;
                self.run_effects(effects, &Default::default());
            }
            return;
        }
        let batch = std::mem::take(&mut commits.pending);
        let inserted = batch.inserts.iter().map(|t| t.id).collect();
        let effects = std::mem::take(&mut commits.pending_effects);
        commits.in_flight = Some((effects, inserted));
        commits.pending_seq += 1;
        self.comm.commit(batch);
    }

    /// The node at `index`.
    fn node(&self, index: u32) -> &Node {
        &self.nodes[index as usize]
    }
}
