//! Which attempt is current. Every message about an execution names its attempt, and the head
//! acts on it only if that attempt is the task's current one and runs on the node that sent it
//! ([`Cluster::current`]); everything else is stale. A node that opens a session says what it
//! still runs and which results it still has to deliver ([`Cluster::reconcile`]): the head keeps
//! what is current, tells it to kill the rest, and requeues what it placed there that the node no
//! longer has.

use std::collections::HashSet;

use rgrid_core::protocol::NodeHello;
use rgrid_core::AttemptId;

use super::tasks::Task;
use super::{Cluster, Comm};

impl<C: Comm> Cluster<C> {
    /// The task of `attempt` if that attempt is current and placed on node `index`.
    pub(super) fn current(&self, attempt: AttemptId, index: u32) -> Option<&Task> {
        self.tasks.get(&attempt.task).filter(|task| {
            task.attempt == attempt.attempt && task.node == Some(index) && task.is_placed()
        })
    }

    /// Matches a (re)connecting node's account against what the head placed there. Returns the
    /// attempts it must kill.
    pub(super) fn reconcile(&mut self, index: u32, hello: &NodeHello) -> Vec<AttemptId> {
        let mut superseded = Vec::new();
        for &attempt in &hello.running {
            if self.current(attempt, index).is_some() {
                if let Some(task) = self.tasks.get_mut(&attempt.task) {
                    // It runs: re-adopted.
                    task.delivered = true;
                }
                continue;
            }
            // A number the head never stored cannot be reused later: stay above it.
            if let Some(task) = self.tasks.get_mut(&attempt.task) {
                if !task.is_placed() && attempt.attempt > task.attempt {
                    task.attempt = attempt.attempt;
                }
            }
            superseded.push(attempt);
        }
        let reported: HashSet<AttemptId> = hello
            .running
            .iter()
            .chain(&hello.finished)
            .copied()
            .collect();
        let forgotten: Vec<AttemptId> = self.nodes[index as usize]
            .running
            .keys()
            .filter(|a| !reported.contains(a))
            .copied()
            .collect();
        for attempt in forgotten {
            // Lost with the node's previous life if it had it; never sent if the head stopped
            // between storing the attempt and sending it.
            let had_it = self
                .current(attempt, index)
                .is_some_and(|task| task.delivered);
            self.release_attempt(index, attempt);
            let why = if had_it {
                "the node restarted without it"
            } else {
                "the node never received it"
            };
            self.requeue(attempt, why, had_it);
        }
        superseded
    }
}
