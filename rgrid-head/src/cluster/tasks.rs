//! The task table and a task's life in the loop: submission, placement, results, retries,
//! requeues, cancellation and the end.
//!
//! A task is a compact [`Task`] record while it is open: its spec stays the bytes the client
//! sent (decoded only on rare paths: a retry, a listing), its resources and constraints are an
//! interned [`ShapeId`], and its node is an index. Its end is written, and once that write is
//! durable the record is dropped.

use std::collections::HashMap;
use std::sync::Arc;

use rgrid_core::object::NamedObject;
use rgrid_core::protocol::{AttemptInfo, ExitStatus, SubmitAnswer};
use rgrid_core::scheduler::{Decision, QueuedTask};
use rgrid_core::task::{Constraints, Strategy};
use rgrid_core::time::{monotonic_ms, unix_ms};
use rgrid_core::{AttemptId, Resources, TaskId, TaskSpec, TaskState};
use tokio::sync::oneshot;

use super::dependencies::Refused;
use super::effects::Effect;
use super::events::{NodeResults, Outcome, Report, Submission};
use super::listings::describe;
use super::{Cluster, Comm, Shape};
use crate::metrics::{LoopMetrics, ShapeTimes};
use crate::store::{AttemptEnd, AttemptRow, Counters, Edge, Finish, NewTask, Output};

/// How long an attempt its node handed back waits before it is placed again.
const HAND_BACK_PAUSE_MS: u64 = 1000;

/// Index of an interned shape.
pub(super) type ShapeId = u32;

/// An open task. About 90 bytes, plus its encoded spec.
pub(super) struct Task {
    /// The postcard-encoded spec, as the client sent it.
    pub spec: Box<[u8]>,
    pub shape: ShapeId,
    pub priority: i32,
    pub strategy: Strategy,
    pub state: TaskState,
    /// Its insert is durable (a resubmission of a task the store already had is not).
    pub confirmed: bool,
    /// The current attempt's assignment went out on a session of this head's life (after a
    /// restart the head cannot know whether a node ever heard of it).
    pub delivered: bool,
    /// Number of the latest attempt (0 before the first placement).
    pub attempt: u32,
    /// The node of the current attempt.
    pub node: Option<u32>,
    pub node_losses: u32,
    /// Exit-code retries used.
    pub failures: u32,
    pub submitted_at_ms: u64,
    /// When it last entered the queue (wall clock).
    pub queued_at_ms: u64,
    /// When the current attempt was placed (wall clock).
    pub started_at_ms: u64,
    /// The batch holding its latest row: what depends on that row waits for this batch.
    pub write_seq: u64,
    /// Its outcome, between its end and the commit of that end.
    pub outcome: Option<Arc<Outcome>>,
}

impl Task {
    pub(super) fn attempt_id(&self, task: TaskId) -> AttemptId {
        AttemptId {
            task,
            attempt: self.attempt,
        }
    }

    pub(super) fn is_placed(&self) -> bool {
        matches!(self.state, TaskState::Assigned | TaskState::Running)
    }

    /// The whole spec (a rare path: retry budgets, listings).
    pub(super) fn decode_spec(&self) -> Option<TaskSpec> {
        postcard::from_bytes(&self.spec).ok()
    }
}

/// Interned task shapes: tasks of one shape share one entry (with its metrics), freed with its
/// last task.
#[derive(Default)]
pub(super) struct Shapes {
    entries: Vec<Option<Interned>>,
    ids: HashMap<Shape, ShapeId>,
    free: Vec<ShapeId>,
}

struct Interned {
    shape: Shape,
    refs: u32,
    times: ShapeTimes,
}

impl Shapes {
    /// The id of `shape`, taking a reference on it.
    pub(super) fn intern(&mut self, shape: Shape, metrics: &mut LoopMetrics) -> ShapeId {
        if let Some(&id) = self.ids.get(&shape) {
            self.hold(id);
            return id;
        }
        let times = metrics.shape(&shape, || match describe(&shape.1) {
            constraints if constraints.is_empty() => shape.0.to_string(),
            constraints => format!("{} {constraints}", shape.0),
        });
        let entry = Interned {
            shape: shape.clone(),
            refs: 1,
            times,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = Some(entry);
                id
            }
            None => {
                self.entries.push(Some(entry));
                ShapeId::try_from(self.entries.len() - 1).unwrap_or(ShapeId::MAX)
            }
        };
        self.ids.insert(shape, id);
        id
    }

    /// Takes another reference on `id`.
    pub(super) fn hold(&mut self, id: ShapeId) {
        if let Some(Some(entry)) = self.entries.get_mut(id as usize) {
            entry.refs += 1;
        }
    }

    /// Drops a reference; the last one frees the shape.
    pub(super) fn release(&mut self, id: ShapeId) {
        let Some(slot) = self.entries.get_mut(id as usize) else {
            return;
        };
        let Some(entry) = slot else { return };
        entry.refs -= 1;
        if entry.refs == 0 {
            if let Some(entry) = slot.take() {
                self.ids.remove(&entry.shape);
            }
            self.free.push(id);
        }
    }

    pub(super) fn get(&self, id: ShapeId) -> &Shape {
        match self.entries.get(id as usize) {
            Some(Some(entry)) => &entry.shape,
            // Ids come from `intern` and live while referenced.
            _ => &EMPTY_SHAPE,
        }
    }

    pub(super) fn resources(&self, id: ShapeId) -> &Resources {
        &self.get(id).0
    }

    /// The shape's histograms (none for an id that is not interned).
    pub(super) fn times(&self, id: ShapeId) -> Option<&ShapeTimes> {
        match self.entries.get(id as usize) {
            Some(Some(entry)) => Some(&entry.times),
            _ => None,
        }
    }
}

static EMPTY_SHAPE: Shape = (
    Resources {
        cpu_millis: 0,
        memory_bytes: 0,
        gpus: 0,
        custom: std::collections::BTreeMap::new(),
    },
    Constraints {
        selector: Vec::new(),
        capabilities: Vec::new(),
        affinity: None,
    },
);

/// Tasks the loop holds, by state.
#[derive(Default)]
pub(super) struct Counts([u64; TaskState::ALL.len()]);

impl Counts {
    pub(super) fn moved(&mut self, from: Option<TaskState>, to: Option<TaskState>) {
        if let Some(from) = from {
            self.0[from as usize] = self.0[from as usize].saturating_sub(1);
        }
        if let Some(to) = to {
            self.0[to as usize] += 1;
        }
    }

    pub(super) fn get(&self, state: TaskState) -> u64 {
        self.0[state as usize]
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (TaskState, u64)> + '_ {
        TaskState::ALL
            .into_iter()
            .zip(self.0)
            .filter(|(_, n)| *n > 0)
    }
}

/// How a task ends.
pub(super) struct Ending {
    pub state: TaskState,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub stdout: Output,
    pub stderr: Output,
    /// When its last attempt ended on its node; `None` when none ran to an end (the head's
    /// clock is used).
    pub ended_at_ms: Option<u64>,
    /// Its declared outputs (when it succeeded).
    pub outputs: Vec<NamedObject>,
}

impl Ending {
    /// An end without a run to its end (unschedulable, cancelled, lost).
    pub(super) fn without_run(state: TaskState, reason: String) -> Self {
        Self {
            state,
            exit_code: None,
            reason: Some(reason),
            stdout: Output::Empty,
            stderr: Output::Empty,
            ended_at_ms: None,
            outputs: Vec::new(),
        }
    }
}

/// How a result relates to the task it names.
enum Standing {
    /// It ends the current attempt.
    Current,
    /// A repeat of the result that ended the task, whose end is not durable yet.
    Repeat(u64),
    /// Superseded, finished long ago, or unknown: acknowledged and ignored.
    Stale,
}

impl<C: Comm> Cluster<C> {
    /// The queue entry of a task.
    pub(super) fn queued(&self, id: TaskId, task: &Task) -> QueuedTask {
        let (resources, constraints) = self.shapes.get(task.shape).clone();
        QueuedTask {
            id,
            resources,
            constraints,
            strategy: task.strategy,
            priority: task.priority,
        }
    }

    /// Moves a task to `state`, keeping the counts.
    pub(super) fn set_state(&mut self, id: TaskId, state: TaskState) {
        if let Some(task) = self.tasks.get_mut(&id) {
            self.counts.moved(Some(task.state), Some(state));
            task.state = state;
        }
    }

    /// Stores and queues new tasks; answers once their rows are durable. A task the loop holds
    /// already is a resubmission: known (same spec) or refused (another spec).
    pub(crate) fn submit(&mut self, submission: Submission) {
        let now = unix_ms();
        let seq = self.commits.pending_seq;
        let mut answers = Vec::with_capacity(submission.tasks.len());
        let mut inserted = Vec::new();
        let mut unknown = Vec::new();
        let mut wait_for = self.commits.durable_seq;
        for admitted in submission.tasks {
            if let Some(task) = self.tasks.get(&admitted.id) {
                answers.push(if *task.spec == *admitted.spec {
                    wait_for = wait_for.max(task.write_seq);
                    SubmitAnswer::Known { state: task.state }
                } else {
                    SubmitAnswer::Rejected(format!(
                        "task {} already exists with a different spec; submit it with a new id",
                        admitted.id
                    ))
                });
                continue;
            }
            let admission = match admitted_spec(&admitted)
                .map_err(Refused::Invalid)
                .and_then(|spec| self.admit_dependencies(&admitted, &spec))
            {
                Ok(admission) => admission,
                Err(Refused::Unknown(dependency)) => {
                    unknown.push((answers.len(), dependency));
                    answers.push(SubmitAnswer::Rejected(format!(
                        "task {}: it depends on task {dependency}, which the head does not know: submit that task first (or earlier in the same batch)",
                        admitted.id
                    )));
                    continue;
                }
                Err(Refused::Invalid(message)) => {
                    answers.push(SubmitAnswer::Rejected(format!(
                        "task {}: {message}",
                        admitted.id
                    )));
                    continue;
                }
            };
            let state = if admission.is_some() {
                TaskState::Pending
            } else {
                TaskState::Queued
            };
            let shape = (admitted.resources, admitted.constraints);
            if self.autoscaling {
                self.count_arrival(&shape);
            }
            let shape = self.shapes.intern(shape, &mut self.metrics);
            self.commits.pending.inserts.push(NewTask {
                id: admitted.id,
                spec: admitted.spec.clone(),
                state,
                submitted_at_ms: now,
                submitted_by: submission.client.clone(),
                cost_keys: admitted.cost_keys,
            });
            self.commits
                .pending
                .edges
                .extend(admitted.dependencies.iter().map(|&dependency| Edge {
                    task: admitted.id,
                    dependency,
                }));
            let task = Task {
                spec: admitted.spec.into_boxed_slice(),
                shape,
                priority: admitted.priority,
                strategy: admitted.strategy,
                state,
                confirmed: false,
                delivered: false,
                attempt: 0,
                node: None,
                node_losses: 0,
                failures: 0,
                submitted_at_ms: now,
                queued_at_ms: now,
                started_at_ms: 0,
                write_seq: seq,
                outcome: None,
            };
            if state == TaskState::Queued {
                let queued = self.queued(admitted.id, &task);
                self.scheduler.enqueue(queued);
            }
            self.tasks.insert(admitted.id, task);
            self.counts.moved(None, Some(state));
            self.holds.take(admitted.id, admitted.objects);
            if let Some(admission) = admission {
                self.wait_for_dependencies(admitted.id, admission);
            }
            inserted.push((answers.len(), admitted.id));
            answers.push(SubmitAnswer::Accepted);
            wait_for = seq;
            self.dirty = true;
        }
        self.metrics.submitted(inserted.len());
        self.after(
            wait_for,
            Effect::Submitted {
                reply: submission.reply,
                answers,
                inserted,
                unknown,
            },
        );
    }

    /// Runs the scheduler and carries out its decisions.
    pub(super) fn schedule(&mut self) {
        for decision in self.scheduler.schedule() {
            match decision {
                Decision::Place { task, node } => {
                    if let Some(&index) = self.node_index.get(&node) {
                        self.place(task, index);
                    }
                }
                Decision::Unschedulable { task, reason } => {
                    tracing::debug!(task = %task, %reason, "task is unschedulable");
                    self.finish(task, Ending::without_run(TaskState::Unschedulable, reason));
                }
            }
        }
    }

    /// A new attempt of `id` on node `index`: its row first, the assignment once it is durable.
    fn place(&mut self, id: TaskId, index: u32) {
        let now = unix_ms();
        let seq = self.commits.pending_seq;
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        task.attempt += 1;
        task.node = Some(index);
        task.started_at_ms = now;
        if let Some(times) = self.shapes.times(task.shape) {
            times
                .queue_wait
                .record(seconds(now.saturating_sub(task.queued_at_ms)));
        }
        task.delivered = false;
        task.write_seq = seq;
        let attempt = task.attempt_id(id);
        let shape = task.shape;
        self.shapes.hold(shape);
        self.details.remove(&id);
        self.set_state(id, TaskState::Assigned);
        let share = self.share_of(index, shape);
        self.bill_busy(index, share);
        let node = &mut self.nodes[index as usize];
        node.running.insert(attempt, shape);
        node.idle_since_ms = None;
        self.commits.pending.attempts.push(AttemptRow {
            task: id,
            attempt: attempt.attempt,
            node: node.id,
            node_name: node.name.clone(),
            started_at_ms: now,
            share,
            hourly_price: node.ledger.as_ref().map(|l| l.hourly_price()),
        });
        tracing::debug!(%attempt, node = %node.id, "assigned");
        self.after(seq, Effect::Assign(attempt));
    }

    /// Results from a node: each ends its attempt if it is current (the task finishes or is
    /// retried), is a repeat of a result being committed, or is stale. Each is acknowledged
    /// once what it changed is durable.
    pub(crate) fn results(&mut self, results: NodeResults) {
        let Some(&index) = self.node_index.get(&results.node) else {
            if let Some(reply) = results.reply {
                let _ = reply.send(());
            }
            return;
        };
        let mut wait_for = self.commits.durable_seq;
        let from_stream = results.reply.is_some();
        for report in results.reports {
            let attempt = report.attempt;
            // Whatever the task's fate, the node no longer holds this attempt.
            self.release_attempt(index, attempt);
            let seq = match self.standing(attempt, index) {
                Standing::Current => {
                    self.attempt_ended(index, report);
                    self.commits.pending_seq
                }
                Standing::Repeat(seq) => seq,
                Standing::Stale => {
                    tracing::debug!(%attempt, node = %results.node, "ignored the result of a superseded or finished attempt");
                    self.commits.durable_seq
                }
            };
            wait_for = wait_for.max(seq);
            if !from_stream {
                self.after(
                    seq,
                    Effect::Ack {
                        node: index,
                        attempt,
                    },
                );
            }
        }
        if let Some(reply) = results.reply {
            self.after(wait_for, Effect::Replied(reply));
        }
    }

    fn standing(&self, attempt: AttemptId, index: u32) -> Standing {
        let Some(task) = self.tasks.get(&attempt.task) else {
            return Standing::Stale;
        };
        if task.attempt != attempt.attempt || task.node != Some(index) {
            return Standing::Stale;
        }
        if task.is_placed() {
            Standing::Current
        } else if task.state.is_terminal() && task.write_seq > self.commits.durable_seq {
            Standing::Repeat(task.write_seq)
        } else {
            Standing::Stale
        }
    }

    /// The node at `index` no longer holds `attempt`: what it held is free again.
    pub(super) fn release_attempt(&mut self, index: u32, attempt: AttemptId) {
        let node = &mut self.nodes[index as usize];
        let Some(shape) = node.running.remove(&attempt) else {
            return;
        };
        if node.running.is_empty() {
            node.idle_since_ms = Some(unix_ms());
        }
        let id = node.id;
        self.bill_busy(index, -self.share_of(index, shape));
        self.scheduler.release(id, self.shapes.resources(shape));
        self.shapes.release(shape);
        self.dirty = true;
    }

    fn attempt_ended(&mut self, index: u32, report: Report) {
        let id = report.attempt.task;
        if report.exit == ExitStatus::Exited(0) {
            self.learn_runtime(id, report.finished_at_ms);
        }
        if self.hand_back(&report) || self.retry_after_failure(&report) {
            return;
        }
        let (state, exit_code, reason) = match &report.exit {
            ExitStatus::Exited(0) => (TaskState::Succeeded, Some(0), None),
            ExitStatus::Exited(code) => (
                TaskState::Failed,
                Some(*code),
                Some(format!("exited with code {code}")),
            ),
            ExitStatus::Killed => (TaskState::Cancelled, None, Some(report.exit.to_string())),
            other => (TaskState::Failed, other.code(), Some(other.to_string())),
        };
        tracing::debug!(attempt = %report.attempt, node = %self.node(index).id, %state, "task ended");
        let ending = Ending {
            state,
            exit_code,
            reason,
            stdout: report.stdout,
            stderr: report.stderr,
            ended_at_ms: Some(report.finished_at_ms),
            outputs: report.outputs,
        };
        self.finish(id, ending);
    }

    /// An attempt its node handed back (the node's engine or registry failed, not the task) runs
    /// again without counting a node loss, after a pause so that a node whose engine is gone
    /// does not take it straight back.
    fn hand_back(&mut self, report: &Report) -> bool {
        if !matches!(report.exit, ExitStatus::HandedBack(_)) {
            return false;
        }
        let id = report.attempt.task;
        tracing::info!(attempt = %report.attempt, exit = %report.exit, "requeueing an attempt its node handed back");
        self.end_attempt(report.attempt, report.exit.to_string());
        self.back_to_queue(id, format!("requeued: {}", report.exit), false);
        self.delayed.push(std::cmp::Reverse((
            monotonic_ms().saturating_add(HAND_BACK_PAUSE_MS),
            id,
            report.attempt.attempt,
        )));
        true
    }

    /// A failed attempt (non-zero exit, OOM, timeout) of a task with exit-code retries left is
    /// queued again after its backoff (doubling each time) instead of failing the task.
    fn retry_after_failure(&mut self, report: &Report) -> bool {
        let failed = match report.exit {
            ExitStatus::Exited(code) => code != 0,
            ExitStatus::OutOfMemory
            | ExitStatus::TimedOut
            | ExitStatus::Signalled { .. }
            | ExitStatus::OutputFailed(_) => true,
            ExitStatus::StartFailed(_) | ExitStatus::Killed | ExitStatus::HandedBack(_) => false,
        };
        let id = report.attempt.task;
        let Some(task) = self.tasks.get(&id) else {
            return false;
        };
        let Some(retry) = failed
            .then(|| task.decode_spec())
            .flatten()
            .map(|s| s.retry)
        else {
            return false;
        };
        if task.failures >= retry.on_failure {
            return false;
        }
        let failures = task.failures + 1;
        let backoff_ms = retry.backoff_ms.saturating_mul(1 << (failures - 1).min(16));
        let why = format!(
            "retrying after failure {failures}/{} ({}) in {:?}",
            retry.on_failure,
            report.exit,
            std::time::Duration::from_millis(backoff_ms)
        );
        tracing::info!(attempt = %report.attempt, exit = %report.exit, backoff_ms, "retrying a failed attempt");
        self.end_attempt(report.attempt, report.exit.to_string());
        if let Some(task) = self.tasks.get_mut(&id) {
            task.failures = failures;
        }
        self.back_to_queue(id, why, false);
        self.delayed.push(std::cmp::Reverse((
            monotonic_ms().saturating_add(backoff_ms),
            id,
            report.attempt.attempt,
        )));
        true
    }

    /// Writes the end of an attempt that does not end its task.
    fn end_attempt(&mut self, attempt: AttemptId, outcome: String) {
        self.commits.pending.attempt_ends.push(AttemptEnd {
            task: attempt.task,
            attempt: attempt.attempt,
            ended_at_ms: unix_ms(),
            outcome,
        });
    }

    /// Puts a placed task back in the queue (now, or after a backoff when `delayed`), writing
    /// its counters.
    fn back_to_queue(&mut self, id: TaskId, why: String, now: bool) {
        let seq = self.commits.pending_seq;
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        task.node = None;
        task.queued_at_ms = unix_ms();
        task.write_seq = seq;
        self.commits.pending.counters.push(Counters {
            task: id,
            node_losses: task.node_losses,
            failures: task.failures,
        });
        self.details.insert(id, why);
        if self.wait_for_stdouts_again(id) {
            return;
        }
        self.set_state(id, TaskState::Queued);
        if now {
            if let Some(task) = self.tasks.get(&id) {
                let queued = self.queued(id, task);
                self.scheduler.enqueue(queued);
            }
            self.dirty = true;
        }
    }

    /// Queues the tasks whose retry backoff is over.
    pub(super) fn release_delayed(&mut self, now_ms: u64) {
        while let Some(std::cmp::Reverse((due, id, attempt))) = self.delayed.peek().copied() {
            if due > now_ms {
                break;
            }
            self.delayed.pop();
            let Some(task) = self.tasks.get(&id) else {
                continue;
            };
            if task.state == TaskState::Queued && task.attempt == attempt {
                let queued = self.queued(id, task);
                self.scheduler.enqueue(queued);
                self.dirty = true;
            }
        }
    }

    /// An attempt did not finish on its node (the node died, left, or came back without it):
    /// the task is queued again, counting a node loss when `node_lost`, or is `Lost` once its
    /// node-loss retries are used up. The caller has released what the attempt held.
    pub(super) fn requeue(&mut self, attempt: AttemptId, why: &str, node_lost: bool) {
        let Some(task) = self.tasks.get_mut(&attempt.task) else {
            return;
        };
        if task.attempt != attempt.attempt || !task.is_placed() {
            return;
        }
        if node_lost {
            task.node_losses += 1;
        }
        let losses = task.node_losses;
        let budget = task.decode_spec().map_or(0, |s| s.retry.node_loss);
        self.end_attempt(attempt, why.to_owned());
        if losses > budget {
            let reason = format!("lost its node {losses} times (node-loss retries: {budget})");
            self.finish(attempt.task, Ending::without_run(TaskState::Lost, reason));
            return;
        }
        tracing::info!(%attempt, why, "requeueing an attempt that did not finish");
        self.back_to_queue(attempt.task, format!("requeued: {why}"), true);
    }

    /// Moves a task to a terminal state: writes its end, and once that is durable lets its
    /// waiters see it and drops it from the loop.
    pub(super) fn finish(&mut self, id: TaskId, ending: Ending) {
        let Ending {
            state,
            exit_code,
            reason,
            stdout,
            stderr,
            ended_at_ms,
            outputs,
        } = ending;
        let seq = self.commits.pending_seq;
        let now = ended_at_ms.unwrap_or_else(unix_ms);
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        if let Err(err) = task.state.transition(state) {
            tracing::warn!(task = %id, error = %err, "ignored an illegal transition");
            return;
        }
        if task.state == TaskState::Queued {
            self.scheduler.dequeue(id);
        }
        self.metrics.ended(state);
        if let Some(times) = self
            .shapes
            .times(task.shape)
            .filter(|_| task.node.is_some())
        {
            times
                .run
                .record(seconds(now.saturating_sub(task.started_at_ms)));
        }
        task.write_seq = seq;
        let node = task.node.map(|n| &self.nodes[n as usize]);
        let last_attempt = node.map(|node| AttemptInfo {
            attempt: task.attempt,
            node: node.id,
            node_name: node.name.clone(),
            started_at_ms: task.started_at_ms,
            ended_at_ms: Some(now),
            outcome: Some(
                reason
                    .clone()
                    .unwrap_or_else(|| "exited with code 0".into()),
            ),
        });
        self.commits.pending.finishes.push(Finish {
            task: id,
            state,
            finished_at_ms: now,
            exit_code,
            reason: reason.clone(),
            stdout: stdout.clone(),
            stderr: stderr.clone(),
            attempt: task.attempt,
            node: node.map(|n| n.id),
            node_losses: task.node_losses,
            failures: task.failures,
            outputs: outputs.clone(),
        });
        task.outcome = Some(Arc::new(Outcome {
            task: id,
            state,
            exit_code,
            reason: reason.clone(),
            stdout,
            stderr,
            last_attempt,
            attempts: task.attempt,
            outputs,
        }));
        self.details.remove(&id);
        self.holds.give_back(id);
        self.set_state(id, state);
        self.after(seq, Effect::Finished(id));
        self.dependency_ended(id);
    }

    /// Cancels a task (with `recursive`, also the open tasks that depend on it); answers once
    /// the cancellation is durable.
    pub(super) fn cancel(
        &mut self,
        id: TaskId,
        recursive: bool,
        reply: oneshot::Sender<Option<TaskState>>,
    ) {
        let Some(task) = self.tasks.get(&id) else {
            let _ = reply.send(None);
            return;
        };
        if task.state.is_terminal() {
            let (state, seq) = (task.state, task.write_seq);
            self.after(
                seq,
                Effect::Cancelled {
                    task: id,
                    state,
                    reply,
                },
            );
            return;
        }
        if let (Some(index), true) = (task.node, task.is_placed()) {
            let attempt = task.attempt_id(id);
            if let Some(session) = &self.nodes[index as usize].session {
                self.comm
                    .send(session, rgrid_core::protocol::HeadMessage::Kill { attempt });
            }
        }
        let ending = Ending::without_run(TaskState::Cancelled, "cancelled by a client".into());
        if recursive {
            self.cancel_with_dependants(id, ending);
        } else {
            self.finish(id, ending);
        }
        let seq = self.commits.pending_seq;
        self.after(
            seq,
            Effect::Cancelled {
                task: id,
                state: TaskState::Cancelled,
                reply,
            },
        );
    }

    /// A task inserted speculatively that the store already had (finished long ago): forget
    /// it; its rows were not applied.
    pub(super) fn discard_known(&mut self, id: TaskId) {
        let Some(task) = self.tasks.remove(&id) else {
            return;
        };
        self.counts.moved(Some(task.state), None);
        self.scheduler.dequeue(id);
        if let (Some(index), true) = (task.node, task.is_placed()) {
            self.release_attempt(index, task.attempt_id(id));
        }
        self.details.remove(&id);
        self.holds.give_back(id);
        self.shapes.release(task.shape);
        self.dependency_ended(id);
    }

    /// Drops a finished task whose end is durable.
    #[cfg_attr(feature = "bench-no-persist", allow(dead_code))]
    pub(super) fn evict(&mut self, id: TaskId) -> Option<Arc<Outcome>> {
        let task = self.tasks.remove(&id)?;
        self.counts.moved(Some(task.state), None);
        self.shapes.release(task.shape);
        task.outcome
    }
}

/// The spec of a task with dependencies, decoded to check them (tasks without any skip it).
fn admitted_spec(admitted: &super::events::Admitted) -> Result<TaskSpec, String> {
    if admitted.dependencies.is_empty() {
        return Ok(TaskSpec::new(""));
    }
    crate::store::decode_spec(&admitted.spec).map_err(|e| e.to_string())
}

/// A span of wall-clock milliseconds in seconds, for histograms.
fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}
