//! The one owner of scheduling state: an event loop that owns the node table, the task table and
//! the scheduler. Connection handlers send it [`Event`]s (with a oneshot for the reply when they
//! need one); it never awaits I/O itself: writes go to the store's group-commit writer, and what
//! must wait for durability (results acknowledged to nodes, outcomes shown to clients) waits in a
//! small spawned task that reports back with [`Event::Committed`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rgrid_core::protocol::{
    AttemptInfo, ExitStatus, HeadMessage, NodeHello, NodeInfo, NodeMessage, TaskInfo,
};
use rgrid_core::scheduler::{Decision, NodeView, QueuedTask, Scheduler, SchedulerConfig};
use rgrid_core::task::Constraints;
use rgrid_core::{AttemptId, NodeId, Resources, TaskId, TaskSpec, TaskState};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoredNode, StoredTask, Write};
use crate::unix_ms;

mod demand;

pub(crate) use demand::{AutoscaleView, NodeSummary, Shape, WaitRuns};

/// A finished task's outcome as the loop knows it (outputs by hash; the handler loads them).
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    pub state: TaskState,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub stdout_hash: Option<String>,
    pub stderr_hash: Option<String>,
    pub attempts: Vec<AttemptInfo>,
}

impl Outcome {
    pub(crate) fn from_stored(task: StoredTask) -> Self {
        Self {
            state: task.state,
            exit_code: task.exit_code,
            reason: task.reason,
            stdout_hash: task.stdout_hash,
            stderr_hash: task.stderr_hash,
            attempts: task.attempts,
        }
    }
}

/// How an attempt ended, with its outputs already stored.
#[derive(Debug)]
pub(crate) struct AttemptResult {
    pub attempt: AttemptId,
    pub exit: ExitStatus,
    pub stdout_hash: Option<String>,
    pub stderr_hash: Option<String>,
    pub finished_at_ms: u64,
}

/// Where a node's control messages go.
pub(crate) type NodeSender = mpsc::UnboundedSender<HeadMessage>;

/// Everything that changes scheduling state.
pub(crate) enum Event {
    /// Tasks were durably stored; queue the new ones.
    Submitted {
        specs: Vec<TaskSpec>,
        submitted_at_ms: u64,
        reply: oneshot::Sender<()>,
    },
    /// Reply when the task is terminal (and durable); `None` when the loop does not know it.
    Get {
        task: TaskId,
        reply: oneshot::Sender<Option<Outcome>>,
    },
    Cancel {
        task: TaskId,
        reply: oneshot::Sender<Option<TaskState>>,
    },
    ListNodes {
        reply: oneshot::Sender<Vec<NodeInfo>>,
    },
    ListTasks {
        reply: oneshot::Sender<Vec<TaskInfo>>,
    },
    /// Drain a node by name or id; `None` when there is no such live node.
    Drain {
        node: String,
        deadline: Duration,
        reply: oneshot::Sender<Option<NodeId>>,
    },
    /// A node opened its control stream.
    NodeConnected {
        node: NodeId,
        hello: NodeHello,
        session: u64,
        sender: NodeSender,
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
    /// A node reported how an attempt ended. `reply` is answered once the outcome is durable (or
    /// at once when the result is stale and ignored).
    AttemptEnded {
        node: NodeId,
        result: AttemptResult,
        reply: oneshot::Sender<()>,
    },
    /// The writes for a finished task are durable: its waiters may see it.
    Committed {
        task: TaskId,
    },
    /// The autoscaler asks for the queued demand and the nodes.
    Autoscale {
        reply: oneshot::Sender<AutoscaleView>,
    },
    /// The autoscaler says why queued tasks of each shape wait (shown in listings).
    Waits {
        waits: Vec<(Shape, WaitRuns)>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NodeState {
    Ready,
    /// Disconnected or silent: no new work, not yet declared dead.
    Suspect,
    Draining,
    Dead,
    /// Drained and gone.
    Left,
}

impl NodeState {
    /// Serving work, or out of touch but expected back.
    pub(crate) fn is_alive(self) -> bool {
        matches!(self, Self::Ready | Self::Suspect | Self::Draining)
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Suspect => "suspect",
            Self::Draining => "draining",
            Self::Dead => "dead",
            Self::Left => "left",
        }
    }
}

struct Node {
    name: String,
    hello: Option<NodeHello>,
    state: NodeState,
    /// The live session: its id (to ignore events from replaced sessions) and sender.
    session: Option<(u64, NodeSender)>,
    last_seen: Instant,
    /// Attempts placed here that have not reported an end, with what they hold.
    running: HashMap<AttemptId, Resources>,
    /// Since when it has run nothing; `None` while busy.
    idle_since: Option<Instant>,
}

impl Node {
    /// Forgets an attempt; returns what it held.
    fn end(&mut self, attempt: &AttemptId) -> Option<Resources> {
        let held = self.running.remove(attempt)?;
        if self.running.is_empty() {
            self.idle_since = Some(Instant::now());
        }
        Some(held)
    }
}

struct Task {
    spec: TaskSpec,
    state: TaskState,
    /// Number of the latest attempt (0 before the first placement).
    attempt: u32,
    node: Option<NodeId>,
    node_losses: u32,
    /// Exit-code retries used.
    failures: u32,
    submitted_at_ms: u64,
    /// When it last entered the queue.
    queued_at: Instant,
    attempts: Vec<AttemptInfo>,
    outcome: Option<Outcome>,
    /// False between a terminal transition and its commit: waiters wait for durability.
    durable: bool,
    /// Why it waits or why it ended, for listings.
    detail: Option<String>,
    waiters: Vec<oneshot::Sender<Option<Outcome>>>,
}

/// Liveness settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Liveness {
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// Nodes recovered from the database have this long to reconnect.
    pub recovery_grace: Duration,
}

/// The loop's state.
pub(crate) struct Cluster {
    store: Store,
    liveness: Liveness,
    scheduler: Scheduler,
    nodes: HashMap<NodeId, Node>,
    tasks: HashMap<TaskId, Task>,
    events: mpsc::UnboundedSender<Event>,
    /// Tasks waiting out an exit-code retry backoff, with when they may run again.
    delayed: Vec<(Instant, TaskId)>,
    /// Something changed that may let queued tasks run.
    dirty: bool,
    /// Mean run time of successful attempts, per shape (for the autoscaler).
    runtimes: HashMap<Shape, Duration>,
    /// Submissions per shape over the last hour (for the autoscaler).
    arrivals: HashMap<Shape, demand::Arrivals>,
    /// When the loop started (arrival buckets count minutes from here).
    started: Instant,
    /// Why queued tasks wait, per shape, from the autoscaler.
    waits: Vec<(Shape, WaitRuns)>,
    /// Woken when demand or nodes change, if an autoscaler listens.
    autoscaler: Option<std::sync::Arc<tokio::sync::Notify>>,
}

impl Cluster {
    /// A loop over the state recovered from the store: nodes come back as suspect (they have one
    /// timeout to reconnect and re-adopt their attempts), open tasks are queued or wait for them.
    pub(crate) fn new(
        store: Store,
        liveness: Liveness,
        events: mpsc::UnboundedSender<Event>,
        nodes: Vec<StoredNode>,
        tasks: Vec<StoredTask>,
    ) -> Self {
        let mut cluster = Self {
            store,
            liveness,
            scheduler: Scheduler::new(SchedulerConfig::default()),
            nodes: HashMap::new(),
            tasks: HashMap::new(),
            events,
            delayed: Vec::new(),
            dirty: true,
            runtimes: HashMap::new(),
            arrivals: HashMap::new(),
            started: Instant::now(),
            waits: Vec::new(),
            autoscaler: None,
        };
        // Recovered nodes count as last seen so that they are declared dead only once the
        // recovery grace is over.
        let now = Instant::now()
            + liveness
                .recovery_grace
                .saturating_sub(liveness.heartbeat_timeout);
        for stored in nodes {
            if let Some(hello) = &stored.hello {
                cluster.scheduler.upsert_node(node_view(stored.id, hello));
                cluster.scheduler.set_schedulable(stored.id, false);
            }
            cluster.nodes.insert(
                stored.id,
                Node {
                    name: stored.name,
                    hello: stored.hello,
                    state: NodeState::Suspect,
                    session: None,
                    last_seen: now,
                    running: HashMap::new(),
                    idle_since: Some(Instant::now()),
                },
            );
        }
        for stored in tasks {
            cluster.recover_task(stored);
        }
        cluster
    }

    fn recover_task(&mut self, stored: StoredTask) {
        let id = stored.spec.id;
        let mut task = Task {
            spec: stored.spec,
            state: stored.state,
            attempt: stored.attempt,
            node: stored.node,
            node_losses: stored.node_losses,
            failures: stored.failures,
            submitted_at_ms: stored.submitted_at_ms,
            queued_at: Instant::now(),
            attempts: stored.attempts,
            outcome: None,
            durable: true,
            detail: None,
            waiters: Vec::new(),
        };
        let placed = matches!(task.state, TaskState::Assigned | TaskState::Running);
        let attempt = AttemptId {
            task: id,
            attempt: task.attempt,
        };
        match task
            .node
            .and_then(|n| self.nodes.get_mut(&n).map(|node| (n, node)))
        {
            Some((node_id, node)) if placed => {
                // Hold its resources until the node re-adopts it or is declared dead.
                let _ = self.scheduler.allocate(node_id, &task.spec.resources);
                node.running.insert(attempt, task.spec.resources.clone());
                node.idle_since = None;
            }
            _ => {
                task.state = TaskState::Queued;
                task.node = None;
                self.scheduler.enqueue(queued(&task.spec));
            }
        }
        self.tasks.insert(id, task);
    }

    /// Runs until `shutdown`.
    pub(crate) async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<Event>,
        shutdown: CancellationToken,
    ) {
        // Fine-grained enough that a dead node is noticed within 100 ms of its timeout.
        let mut tick = tokio::time::interval(
            (self.liveness.heartbeat_interval / 2).min(Duration::from_millis(100)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    let now = Instant::now();
                    self.check_liveness(now);
                    self.release_delayed(now);
                }
                n = events.recv_many(&mut batch, 256) => {
                    if n == 0 {
                        break;
                    }
                    for event in batch.drain(..) {
                        self.handle(event);
                    }
                }
            }
            if self.dirty {
                self.dirty = false;
                self.schedule();
                if let Some(autoscaler) = &self.autoscaler {
                    autoscaler.notify_one();
                }
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Submitted {
                specs,
                submitted_at_ms,
                reply,
            } => {
                for spec in specs {
                    self.submit(spec, submitted_at_ms);
                }
                let _ = reply.send(());
            }
            Event::Get { task, reply } => match self.tasks.get_mut(&task) {
                None => {
                    let _ = reply.send(None);
                }
                Some(t) => match &t.outcome {
                    Some(outcome) if t.durable => {
                        let _ = reply.send(Some(outcome.clone()));
                    }
                    _ => t.waiters.push(reply),
                },
            },
            Event::Cancel { task, reply } => {
                let state = self.cancel(task);
                let _ = reply.send(state);
            }
            Event::ListNodes { reply } => {
                let _ = reply.send(self.list_nodes());
            }
            Event::ListTasks { reply } => {
                let _ = reply.send(self.list_tasks());
            }
            Event::Drain {
                node,
                deadline,
                reply,
            } => {
                let _ = reply.send(self.drain(&node, deadline));
            }
            Event::NodeConnected {
                node,
                hello,
                session,
                sender,
            } => self.node_connected(node, hello, session, sender),
            Event::NodeMessage {
                node,
                session,
                message,
            } => self.node_message(node, session, message),
            Event::NodeDisconnected { node, session } => self.node_disconnected(node, session),
            Event::AttemptEnded {
                node,
                result,
                reply,
            } => self.attempt_ended(node, result, reply),
            Event::Autoscale { reply } => {
                let _ = reply.send(self.autoscale_view());
            }
            Event::Waits { waits } => self.waits = waits,
            Event::Committed { task } => {
                if let Some(t) = self.tasks.get_mut(&task) {
                    t.durable = true;
                    let outcome = t.outcome.clone();
                    for waiter in t.waiters.drain(..) {
                        let _ = waiter.send(outcome.clone());
                    }
                }
            }
        }
    }

    fn submit(&mut self, spec: TaskSpec, submitted_at_ms: u64) {
        if self.tasks.contains_key(&spec.id) {
            return; // a resubmission: idempotent
        }
        self.count_arrival(&spec);
        self.scheduler.enqueue(queued(&spec));
        self.tasks.insert(
            spec.id,
            Task {
                spec,
                state: TaskState::Queued,
                attempt: 0,
                node: None,
                node_losses: 0,
                failures: 0,
                submitted_at_ms,
                queued_at: Instant::now(),
                attempts: Vec::new(),
                outcome: None,
                durable: true,
                detail: Some("waiting for resources".into()),
                waiters: Vec::new(),
            },
        );
        self.dirty = true;
    }

    fn schedule(&mut self) {
        for decision in self.scheduler.schedule() {
            match decision {
                Decision::Place { task, node } => self.place(task, node),
                Decision::Unschedulable { task, reason } => {
                    tracing::info!(task = %task, %reason, "task is unschedulable");
                    self.finish(
                        task,
                        TaskState::Unschedulable,
                        None,
                        Some(reason),
                        (None, None),
                    );
                }
            }
        }
    }

    fn place(&mut self, task_id: TaskId, node_id: NodeId) {
        let (Some(task), Some(node)) = (self.tasks.get_mut(&task_id), self.nodes.get_mut(&node_id))
        else {
            return;
        };
        let Some((_, sender)) = &node.session else {
            // The scheduler only picks schedulable nodes, which have a session; put it back.
            self.scheduler.release(node_id, &task.spec.resources);
            self.scheduler.enqueue(queued(&task.spec));
            return;
        };
        node.idle_since = None;
        task.attempt += 1;
        task.state = TaskState::Assigned;
        task.node = Some(node_id);
        task.detail = None;
        let attempt = AttemptId {
            task: task_id,
            attempt: task.attempt,
        };
        let info = AttemptInfo {
            attempt: task.attempt,
            node: node_id,
            node_name: node.name.clone(),
            started_at_ms: unix_ms(),
            ended_at_ms: None,
            outcome: None,
        };
        task.attempts.push(info.clone());
        node.running.insert(attempt, task.spec.resources.clone());
        tracing::debug!(task = %task_id, attempt = attempt.attempt, node = %node_id, "assigned");
        self.store.push(vec![
            Write::StartAttempt {
                task: task_id,
                info,
            },
            update_write(task),
        ]);
        let _ = sender.send(HeadMessage::Assign {
            attempt,
            spec: Box::new(task.spec.clone()),
        });
    }

    /// Moves a task to a terminal state: persists it, and once durable lets waiters see it.
    fn finish(
        &mut self,
        task_id: TaskId,
        state: TaskState,
        exit_code: Option<i64>,
        reason: Option<String>,
        outputs: (Option<String>, Option<String>),
    ) -> Option<oneshot::Receiver<Result<(), String>>> {
        let task = self.tasks.get_mut(&task_id)?;
        if let Err(err) = task.state.transition(state) {
            tracing::warn!(task = %task_id, error = %err, "ignored an illegal transition");
            return None;
        }
        task.state = state;
        task.detail = reason.clone();
        task.durable = false;
        let (stdout_hash, stderr_hash) = outputs;
        task.outcome = Some(Outcome {
            state,
            exit_code,
            reason: reason.clone(),
            stdout_hash: stdout_hash.clone(),
            stderr_hash: stderr_hash.clone(),
            attempts: task.attempts.clone(),
        });
        let committed = self.store.submit(vec![Write::FinishTask {
            task: task_id,
            state,
            finished_at_ms: unix_ms(),
            exit_code,
            reason,
            stdout_hash,
            stderr_hash,
            node_losses: task.node_losses,
            failures: task.failures,
        }]);
        let (forward, rx) = oneshot::channel();
        let events = self.events.clone();
        tokio::spawn(async move {
            let result = committed
                .await
                .unwrap_or_else(|_| Err("database writer stopped".into()));
            if result.is_ok() {
                let _ = events.send(Event::Committed { task: task_id });
            }
            let _ = forward.send(result);
        });
        Some(rx)
    }

    fn attempt_ended(
        &mut self,
        node_id: NodeId,
        result: AttemptResult,
        reply: oneshot::Sender<()>,
    ) {
        let attempt = result.attempt;
        // Whatever the task's fate, the node no longer holds this attempt.
        if let Some(resources) = self.nodes.get_mut(&node_id).and_then(|n| n.end(&attempt)) {
            self.scheduler.release(node_id, &resources);
            self.dirty = true;
        }
        let current = self.tasks.get(&attempt.task).is_some_and(|t| {
            t.attempt == attempt.attempt
                && t.node == Some(node_id)
                && matches!(t.state, TaskState::Assigned | TaskState::Running)
        });
        if !current {
            tracing::info!(%attempt, node = %node_id, "ignored the result of a superseded or finished attempt");
            let _ = reply.send(());
            return;
        }
        if let Some(task) = self.tasks.get_mut(&attempt.task) {
            if let Some(info) = task
                .attempts
                .iter_mut()
                .find(|a| a.attempt == attempt.attempt)
            {
                info.ended_at_ms = Some(result.finished_at_ms);
                info.outcome = Some(result.exit.to_string());
            }
        }
        self.store.push(vec![Write::EndAttempt {
            task: attempt.task,
            attempt: attempt.attempt,
            ended_at_ms: result.finished_at_ms,
            outcome: result.exit.to_string(),
        }]);
        let committed = if self.retry_after_failure(&result) {
            self.tasks
                .get(&attempt.task)
                .map(|task| self.store.submit(vec![update_write(task)]))
        } else {
            if result.exit == ExitStatus::Exited(0) {
                self.learn_runtime(attempt, result.finished_at_ms);
            }
            let (state, exit_code, reason) = match &result.exit {
                ExitStatus::Exited(0) => (TaskState::Succeeded, Some(0), None),
                ExitStatus::Exited(code) => (
                    TaskState::Failed,
                    Some(*code),
                    Some(format!("exited with code {code}")),
                ),
                ExitStatus::Killed => (TaskState::Cancelled, None, Some(result.exit.to_string())),
                other => (TaskState::Failed, None, Some(other.to_string())),
            };
            tracing::info!(task = %attempt.task, attempt = attempt.attempt, node = %node_id, %state, "task ended");
            self.finish(
                attempt.task,
                state,
                exit_code,
                reason,
                (result.stdout_hash, result.stderr_hash),
            )
        };
        tokio::spawn(async move {
            if let Some(committed) = committed {
                // The node keeps the result until we acknowledge; only acknowledge durable ones.
                if !matches!(committed.await, Ok(Ok(()))) {
                    return;
                }
            }
            let _ = reply.send(());
        });
    }

    /// A failed attempt (non-zero exit, OOM, timeout) of a task with exit-code retries left is
    /// requeued after its backoff (doubling each time) instead of failing the task.
    fn retry_after_failure(&mut self, result: &AttemptResult) -> bool {
        let failed = match result.exit {
            ExitStatus::Exited(code) => code != 0,
            ExitStatus::OutOfMemory | ExitStatus::TimedOut => true,
            ExitStatus::StartFailed(_) | ExitStatus::Killed => false,
        };
        let attempt = result.attempt;
        let Some(task) = self.tasks.get_mut(&attempt.task) else {
            return false;
        };
        if !failed || task.failures >= task.spec.retry.on_failure {
            return false;
        }
        task.failures += 1;
        let backoff = Duration::from_millis(task.spec.retry.backoff_ms)
            .saturating_mul(1 << (task.failures - 1).min(16));
        task.state = TaskState::Queued;
        task.node = None;
        task.queued_at = Instant::now() + backoff;
        task.detail = Some(format!(
            "retrying after failure {}/{} ({}) in {:?}",
            task.failures, task.spec.retry.on_failure, result.exit, backoff
        ));
        tracing::info!(%attempt, exit = %result.exit, ?backoff, "retrying a failed attempt");
        self.delayed.push((Instant::now() + backoff, attempt.task));
        true
    }

    /// Queues the tasks whose retry backoff is over.
    fn release_delayed(&mut self, now: Instant) {
        let (due, waiting): (Vec<_>, Vec<_>) =
            self.delayed.drain(..).partition(|(at, _)| *at <= now);
        self.delayed = waiting;
        for (_, id) in due {
            if let Some(task) = self.tasks.get(&id).filter(|t| t.state == TaskState::Queued) {
                self.scheduler.enqueue(queued(&task.spec));
                self.dirty = true;
            }
        }
    }

    fn cancel(&mut self, task_id: TaskId) -> Option<TaskState> {
        let task = self.tasks.get(&task_id)?;
        let state = task.state;
        if state.is_terminal() {
            return Some(state);
        }
        if state == TaskState::Queued {
            self.scheduler.dequeue(task_id);
        }
        if let (Some(node_id), TaskState::Assigned | TaskState::Running) = (task.node, state) {
            let attempt = AttemptId {
                task: task_id,
                attempt: task.attempt,
            };
            if let Some((_, sender)) = self.nodes.get(&node_id).and_then(|n| n.session.as_ref()) {
                let _ = sender.send(HeadMessage::Kill { attempt });
            }
        }
        self.finish(
            task_id,
            TaskState::Cancelled,
            None,
            Some("cancelled by a client".into()),
            (None, None),
        );
        Some(TaskState::Cancelled)
    }

    fn node_connected(
        &mut self,
        node_id: NodeId,
        hello: NodeHello,
        session: u64,
        sender: NodeSender,
    ) {
        tracing::info!(node = %node_id, name = %hello.name, resources = %hello.resources, "node session opened");
        self.scheduler.upsert_node(node_view(node_id, &hello));
        let node = self.nodes.entry(node_id).or_insert_with(|| Node {
            name: hello.name.clone(),
            hello: None,
            state: NodeState::Ready,
            session: None,
            last_seen: Instant::now(),
            running: HashMap::new(),
            idle_since: Some(Instant::now()),
        });
        node.name = hello.name.clone();
        node.state = NodeState::Ready;
        node.last_seen = Instant::now();
        node.session = Some((session, sender.clone()));
        // Re-adopt what it still runs if that is the current attempt; the rest is superseded.
        let reported: Vec<AttemptId> = hello.running.clone();
        let mut superseded = Vec::new();
        for attempt in &reported {
            let current = self.tasks.get(&attempt.task).is_some_and(|t| {
                t.attempt == attempt.attempt
                    && t.node == Some(node_id)
                    && matches!(t.state, TaskState::Assigned | TaskState::Running)
            });
            if !current {
                superseded.push(*attempt);
            }
        }
        // Attempts we placed there that it no longer runs were lost with its previous life.
        let forgotten: Vec<AttemptId> = node
            .running
            .keys()
            .filter(|a| !reported.contains(a))
            .copied()
            .collect();
        node.hello = Some(hello);
        self.store.push(vec![Write::UpsertNode(Box::new(StoredNode {
            id: node_id,
            name: node.name.clone(),
            hello: node.hello.clone(),
            state: NodeState::Ready.as_str(),
            joined_at_ms: unix_ms(),
        }))]);
        let _ = sender.send(HeadMessage::Welcome {
            node_id,
            heartbeat_interval_ms: self.liveness.heartbeat_interval.as_millis() as u64,
            superseded,
        });
        for attempt in forgotten {
            self.orphan(node_id, attempt, "the node restarted without it");
        }
        self.scheduler.set_schedulable(node_id, true);
        self.dirty = true;
    }

    fn node_message(&mut self, node_id: NodeId, session: u64, message: NodeMessage) {
        let Some(node) = self.nodes.get_mut(&node_id) else {
            return;
        };
        if node.session.as_ref().map(|(s, _)| *s) != Some(session) {
            return; // from a replaced session
        }
        node.last_seen = Instant::now();
        match message {
            NodeMessage::Heartbeat => {}
            NodeMessage::Started { attempt } => {
                if let Some(task) = self.tasks.get_mut(&attempt.task) {
                    if task.attempt == attempt.attempt && task.state == TaskState::Assigned {
                        task.state = TaskState::Running;
                        self.store.push(vec![update_write(task)]);
                    }
                }
            }
            NodeMessage::Draining => self.set_draining(node_id),
            NodeMessage::Leaving { unfinished } => self.node_left(node_id, unfinished),
        }
    }

    fn node_disconnected(&mut self, node_id: NodeId, session: u64) {
        let Some(node) = self.nodes.get_mut(&node_id) else {
            return;
        };
        if node.session.as_ref().map(|(s, _)| *s) != Some(session) {
            return;
        }
        node.session = None;
        if node.state != NodeState::Dead {
            tracing::info!(node = %node_id, "node disconnected; suspect until it returns or times out");
            node.state = NodeState::Suspect;
        }
        self.scheduler.set_schedulable(node_id, false);
    }

    /// Tells a live node to drain. `node` is a name or an id.
    fn drain(&mut self, node: &str, deadline: Duration) -> Option<NodeId> {
        let (id, entry) = self
            .nodes
            .iter_mut()
            .find(|(id, n)| (n.name == node || id.to_string() == node) && n.session.is_some())?;
        let (_, sender) = entry.session.as_ref()?;
        let _ = sender.send(HeadMessage::Drain {
            deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
        });
        let id = *id;
        // No new work from now on; the node's `Draining` confirms it.
        self.set_draining(id);
        Some(id)
    }

    fn set_draining(&mut self, node_id: NodeId) {
        let Some(node) = self.nodes.get_mut(&node_id) else {
            return;
        };
        if node.state == NodeState::Draining {
            return;
        }
        tracing::info!(node = %node_id, name = %node.name, "node is draining");
        node.state = NodeState::Draining;
        self.scheduler.set_schedulable(node_id, false);
        self.store.push(vec![Write::NodeState {
            node: node_id,
            state: NodeState::Draining.as_str(),
        }]);
        if let Some(autoscaler) = &self.autoscaler {
            autoscaler.notify_one();
        }
    }

    /// A drained node leaves: what it could not finish is requeued without counting as a node
    /// loss; it gets no more work.
    fn node_left(&mut self, node_id: NodeId, unfinished: Vec<AttemptId>) {
        tracing::info!(node = %node_id, requeued = unfinished.len(), "node left the cluster");
        for attempt in unfinished {
            self.requeue(node_id, attempt, "node drained", false);
        }
        if let Some(node) = self.nodes.get_mut(&node_id) {
            node.state = NodeState::Left;
            node.session = None;
        }
        self.scheduler.remove_node(node_id);
        self.store.push(vec![Write::NodeState {
            node: node_id,
            state: NodeState::Left.as_str(),
        }]);
        self.dirty = true;
    }

    /// Suspects nodes that went quiet and declares dead the ones past the timeout.
    fn check_liveness(&mut self, now: Instant) {
        let suspect_after = self.liveness.heartbeat_interval * 3;
        let mut dead = Vec::new();
        for (id, node) in &mut self.nodes {
            let silent = now.saturating_duration_since(node.last_seen);
            match node.state {
                NodeState::Ready | NodeState::Draining if silent > suspect_after => {
                    tracing::info!(node = %id, ?silent, "node missed heartbeats; suspect");
                    node.state = NodeState::Suspect;
                    self.scheduler.set_schedulable(*id, false);
                }
                NodeState::Suspect if silent > self.liveness.heartbeat_timeout => dead.push(*id),
                _ => {}
            }
        }
        for id in dead {
            self.node_dead(id);
        }
    }

    fn node_dead(&mut self, node_id: NodeId) {
        let Some(node) = self.nodes.get_mut(&node_id) else {
            return;
        };
        tracing::warn!(node = %node_id, name = %node.name, attempts = node.running.len(), "node is dead; requeueing its tasks");
        node.state = NodeState::Dead;
        // Dropping the session's sender ends it: if the node is alive after all (a network cut),
        // it reconnects, re-registers and learns which of its attempts were superseded.
        node.session = None;
        let attempts: Vec<AttemptId> = node.running.keys().copied().collect();
        self.store.push(vec![Write::NodeState {
            node: node_id,
            state: NodeState::Dead.as_str(),
        }]);
        for attempt in attempts {
            self.orphan(node_id, attempt, "node lost");
        }
        self.scheduler.remove_node(node_id);
        self.dirty = true;
    }

    /// An attempt's node lost it: requeue the task as a new attempt while its node-loss budget
    /// lasts, else it is `Lost`.
    fn orphan(&mut self, node_id: NodeId, attempt: AttemptId, why: &str) {
        self.requeue(node_id, attempt, why, true);
    }

    /// Ends an attempt that did not finish on its node and queues the task again; a node loss
    /// counts against the task's node-loss retries.
    fn requeue(&mut self, node_id: NodeId, attempt: AttemptId, why: &str, node_lost: bool) {
        if let Some(resources) = self.nodes.get_mut(&node_id).and_then(|n| n.end(&attempt)) {
            self.scheduler.release(node_id, &resources);
        }
        let Some(task) = self.tasks.get_mut(&attempt.task) else {
            return;
        };
        if task.attempt != attempt.attempt || task.state.is_terminal() {
            return;
        }
        let now = unix_ms();
        if let Some(info) = task
            .attempts
            .iter_mut()
            .find(|a| a.attempt == attempt.attempt)
        {
            info.ended_at_ms = Some(now);
            info.outcome = Some(why.to_owned());
        }
        self.store.push(vec![Write::EndAttempt {
            task: attempt.task,
            attempt: attempt.attempt,
            ended_at_ms: now,
            outcome: why.to_owned(),
        }]);
        if node_lost {
            task.node_losses += 1;
        }
        if task.node_losses > task.spec.retry.node_loss {
            let reason = format!(
                "lost its node {} times (node-loss retries: {})",
                task.node_losses, task.spec.retry.node_loss
            );
            self.finish(
                attempt.task,
                TaskState::Lost,
                None,
                Some(reason),
                (None, None),
            );
            return;
        }
        tracing::info!(%attempt, node = %node_id, why, "requeueing orphaned attempt");
        task.state = TaskState::Queued;
        task.node = None;
        task.queued_at = Instant::now();
        task.detail = Some(format!("requeued: {why}"));
        self.store.push(vec![update_write(task)]);
        self.scheduler.enqueue(queued(&task.spec));
        self.dirty = true;
    }

    fn list_nodes(&self) -> Vec<NodeInfo> {
        let mut nodes: Vec<NodeInfo> = self
            .nodes
            .iter()
            .map(|(id, node)| {
                let hello = node.hello.as_ref();
                NodeInfo {
                    id: *id,
                    name: node.name.clone(),
                    state: node.state.as_str().to_owned(),
                    total: hello.map(|h| h.resources.clone()).unwrap_or_default(),
                    free: self.scheduler.free(*id).cloned().unwrap_or_default(),
                    labels: hello.map(|h| h.labels.clone()).unwrap_or_default(),
                    capabilities: hello.map(|h| h.capabilities.clone()).unwrap_or_default(),
                    running: node.running.len() as u32,
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        nodes
    }

    fn list_tasks(&self) -> Vec<TaskInfo> {
        // Why a queued task waits depends only on its shape: worked out once per shape, so a
        // listing stays linear however many tasks are queued.
        let mut reasons: HashMap<(&Resources, &Constraints), Option<String>> = HashMap::new();
        let mut tasks: Vec<TaskInfo> = self
            .tasks
            .iter()
            .map(|(id, task)| {
                let waiting = (task.state == TaskState::Queued).then(|| {
                    let shape = (&task.spec.resources, &task.spec.constraints);
                    reasons
                        .entry(shape)
                        .or_insert_with(|| self.scheduler.waiting_reason(*id))
                        .clone()
                });
                TaskInfo {
                    task: *id,
                    image: task.spec.image.clone(),
                    state: task.state,
                    attempt: task.attempt,
                    node: task.node,
                    submitted_at_ms: task.submitted_at_ms,
                    detail: waiting.flatten().or_else(|| task.detail.clone()),
                }
            })
            .collect();
        tasks.sort_by_key(|t| t.task);
        self.explain_waits(&mut tasks);
        tasks
    }
}

fn queued(spec: &TaskSpec) -> QueuedTask {
    QueuedTask {
        id: spec.id,
        resources: spec.resources.clone(),
        constraints: spec.constraints.clone(),
        strategy: spec.strategy,
        priority: spec.priority,
    }
}

fn node_view(id: NodeId, hello: &NodeHello) -> NodeView {
    NodeView {
        id,
        total: hello.resources.clone(),
        labels: hello.labels.clone(),
        capabilities: hello.capabilities.iter().cloned().collect(),
    }
}

fn update_write(task: &Task) -> Write {
    Write::UpdateTask {
        task: task.spec.id,
        state: task.state,
        attempt: task.attempt,
        node: task.node,
        node_losses: task.node_losses,
        failures: task.failures,
        reason: task.detail.clone(),
    }
}
