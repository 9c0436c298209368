//! What waits for a commit: acknowledgements, assignments, answers and outcomes are
//! [`Effect`]s attached to the batch holding the row they depend on, and run once that batch is
//! durable. Also the waiters of outcomes ([`Watches`]) and the per-node batches of
//! assignments and acknowledgements sent at the end of a turn.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rgrid_core::protocol::{Assignment, HeadMessage, SubmitAnswer};
use rgrid_core::{AttemptId, TaskId, TaskState};
use tokio::sync::oneshot;

use super::events::{Outcome, OutcomeSink, SubmitReply};
use super::{Cluster, Comm};

/// Crash points of the head's crash-window tests (`FAILPOINTS=NAME=return` in a build with the
/// `failpoints` feature): the process aborts at once, as a `SIGKILL` would stop it.
#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
pub(crate) fn crash_point(name: &str) {
    fail::fail_point!(name, |_| {
        tracing::error!(point = name, "crash point reached; aborting");
        std::process::abort()
    });
}

/// Something to do once a batch is durable.
pub(super) enum Effect {
    /// Send the assignment of this attempt, if it is still current.
    Assign(AttemptId),
    /// Acknowledge a result on the node's control stream.
    Ack { node: u32, attempt: AttemptId },
    /// The task's end is durable: tell its waiters, drop it.
    Finished(TaskId),
    /// Answer a submission.
    Submitted {
        reply: oneshot::Sender<SubmitReply>,
        answers: Vec<SubmitAnswer>,
        /// `(position, id)` of the tasks this submission inserted.
        inserted: Vec<(usize, TaskId)>,
        /// Positions refused for a dependency the loop does not hold, with that dependency.
        unknown: Vec<(usize, TaskId)>,
    },
    /// Answer a cancel.
    Cancelled {
        task: TaskId,
        state: TaskState,
        reply: oneshot::Sender<Option<TaskState>>,
    },
    /// Answer a result delivered on a stream of its own.
    Replied(oneshot::Sender<()>),
    /// The task's success is durable: store its stdout as an object for its dependants.
    StoreStdout(TaskId),
}

/// Waiters of outcomes: each wait has a sink with room for every task it names.
#[derive(Default)]
pub(super) struct Watches {
    /// Each wait's sink, with how many of its tasks have not ended yet.
    sinks: HashMap<u64, (OutcomeSink, usize)>,
    /// The waits of each task the loop holds that someone waits for.
    by_task: HashMap<TaskId, Vec<u64>>,
    next: u64,
}

impl<C: Comm> Cluster<C> {
    /// Runs `effect` once batch `seq` is durable (now, if it is).
    pub(super) fn after(&mut self, seq: u64, effect: Effect) {
        if seq <= self.commits.durable_seq {
            return self.run_effects(vec![effect], &HashSet::new());
        }
        let commits = &mut self.commits;
        match &mut commits.in_flight {
            // The batch in flight is `pending_seq - 1`.
            Some((effects, _)) if seq < commits.pending_seq => effects.push(effect),
            _ => commits.pending_effects.push(effect),
        }
    }

    /// Runs the effects of a durable batch; `known` are tasks whose insert found them stored.
    pub(super) fn run_effects(&mut self, effects: Vec<Effect>, known: &HashSet<TaskId>) {
        if effects
            .iter()
            .any(|e| matches!(e, Effect::Submitted { .. }))
        {
            crash_point("before-submit-reply");
        }
        if effects.iter().any(|e| matches!(e, Effect::Assign(_))) {
            crash_point("before-assign");
        }
        if effects
            .iter()
            .any(|e| matches!(e, Effect::Ack { .. } | Effect::Replied(_)))
        {
            crash_point("before-result-ack");
        }
        if effects
            .iter()
            .any(|e| matches!(e, Effect::Cancelled { .. }))
        {
            crash_point("before-cancel-reply");
        }
        for effect in effects {
            match effect {
                Effect::Assign(attempt) => self.assign(attempt),
                Effect::Ack {
                    node: index,
                    attempt,
                } => {
                    let node = &mut self.nodes[index as usize];
                    if node.session.is_some() {
                        if node.acks.is_empty() && node.assignments.is_empty() {
                            self.outgoing.push(index);
                        }
                        node.acks.push(attempt);
                    }
                }
                Effect::Finished(task) if known.contains(&task) => {}
                // Benchmark-only build: nothing is stored to read a finished task back from, so
                // it stays (memory grows with every task: not for real use).
                #[cfg(feature = "bench-no-persist")]
                Effect::Finished(task) => {
                    if let Some(outcome) = self.tasks.get(&task).and_then(|t| t.outcome.clone()) {
                        self.notify(task, &outcome);
                    }
                }
                #[cfg(not(feature = "bench-no-persist"))]
                Effect::Finished(task) => {
                    if let Some(outcome) = self.evict(task) {
                        self.notify(task, &outcome);
                    }
                }
                Effect::Submitted {
                    reply,
                    mut answers,
                    inserted,
                    unknown,
                } => {
                    let stored = inserted
                        .into_iter()
                        .filter(|(_, id)| known.contains(id))
                        .collect::<Vec<_>>();
                    for (position, _) in &stored {
                        // Filled in by the server from the store.
                        answers[*position] = SubmitAnswer::Accepted;
                    }
                    let _ = reply.send(SubmitReply {
                        answers,
                        stored,
                        unknown,
                    });
                }
                Effect::Cancelled { task, state, reply } => {
                    let _ = reply.send((!known.contains(&task)).then_some(state));
                }
                Effect::Replied(reply) => {
                    let _ = reply.send(());
                }
                Effect::StoreStdout(task) => self.comm.store_stdout(task),
            }
        }
    }

    /// Queues an attempt's assignment for its node, if the attempt is still current.
    fn assign(&mut self, attempt: AttemptId) {
        let Some(task) = self.tasks.get(&attempt.task) else {
            return;
        };
        let (Some(index), TaskState::Assigned) = (task.node, task.state) else {
            return;
        };
        if task.attempt != attempt.attempt {
            return;
        }
        let spec = self
            .dependencies
            .resolved_spec(attempt.task)
            .unwrap_or(&task.spec)
            .to_vec();
        let node = &mut self.nodes[index as usize];
        if node.session.is_none() {
            // It reconnects and says what it runs; this attempt is not among it.
            return;
        }
        if node.acks.is_empty() && node.assignments.is_empty() {
            self.outgoing.push(index);
        }
        node.assignments.push(Assignment { attempt, spec });
    }

    /// Sends each node what this turn gave it, one message of each kind.
    pub(super) fn flush_nodes(&mut self) {
        for index in std::mem::take(&mut self.outgoing) {
            let node = &mut self.nodes[index as usize];
            let assignments = std::mem::take(&mut node.assignments);
            let acks = std::mem::take(&mut node.acks);
            let Some(session) = node.session.clone() else {
                continue;
            };
            let attempts: Vec<AttemptId> = assignments.iter().map(|a| a.attempt).collect();
            let mut sent = true;
            if !assignments.is_empty() {
                sent &= self.comm.send(&session, HeadMessage::Assign(assignments));
            }
            if !acks.is_empty() {
                sent &= self.comm.send(&session, HeadMessage::ResultsAccepted(acks));
            }
            if !sent {
                tracing::warn!(node = %self.nodes[index as usize].id, "the node's control stream is backed up; closing its session");
                self.close_session(index);
                continue;
            }
            for attempt in attempts {
                if let Some(task) = self.tasks.get_mut(&attempt.task) {
                    if task.attempt == attempt.attempt {
                        task.delivered = true;
                    }
                }
            }
        }
    }

    /// Registers `sink` for the outcomes of `tasks`; returns those the loop does not hold (or
    /// holds but whose insert is not durable yet: the store has the say on those).
    pub(super) fn wait(&mut self, tasks: Vec<TaskId>, sink: OutcomeSink) -> Vec<TaskId> {
        let id = self.watches.next;
        self.watches.next += 1;
        let mut missing = Vec::new();
        let mut waiting = 0;
        for task_id in tasks {
            let Some(task) = self.tasks.get(&task_id).filter(|t| t.confirmed) else {
                missing.push(task_id);
                continue;
            };
            match &task.outcome {
                Some(outcome) if task.write_seq <= self.commits.durable_seq => {
                    let _ = sink.try_send(outcome.clone());
                }
                _ => {
                    self.watches.by_task.entry(task_id).or_default().push(id);
                    waiting += 1;
                }
            }
        }
        if waiting > 0 {
            self.watches.sinks.insert(id, (sink, waiting));
        }
        missing
    }

    /// Tells the waiters of `task` its outcome.
    fn notify(&mut self, task: TaskId, outcome: &Arc<Outcome>) {
        let Some(waits) = self.watches.by_task.remove(&task) else {
            return;
        };
        for wait in waits {
            let Some((sink, left)) = self.watches.sinks.get_mut(&wait) else {
                continue;
            };
            *left -= 1;
            // The sink has room for every task of its wait; an error means the waiter left.
            if sink.try_send(outcome.clone()).is_err() || *left == 0 {
                self.watches.sinks.remove(&wait);
            }
        }
    }
}
