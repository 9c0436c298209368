//! What each task cost in a simulated run, by the rule of [`crate::task_cost`] (the head's own):
//! each billed hour of a server split among the attempts that ran in it by share × time, idle
//! hours carried to the next hour with use (or, after the last use, back to it). A server that
//! never ran anything (it never joined, or its work went elsewhere) is split among the tasks
//! queued when it was created (if none, those running then, whose capacity it was to replace);
//! what is left (a server created while nothing ran) is unattributed. So the tasks' costs add
//! up to the bill, less the unattributed.

use std::time::Duration;

use super::engine::Cluster;
use super::model::HetznerModel;
use crate::task_cost::{apply_amends, attempt_cost, share, Ledger};

/// One run of a task on a node.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Attempt {
    pub(super) task: usize,
    pub(super) node: usize,
    pub(super) start: Duration,
    /// When it finished or was killed; `None` while it runs.
    pub(super) end: Option<Duration>,
}

/// The cost of every task, and what no task pays.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskCosts {
    /// Per task of the trace (same index).
    pub per_task: Vec<f64>,
    /// The price of servers that ran nothing, created while nothing was queued or running.
    pub unattributed: f64,
}

impl TaskCosts {
    /// The sum over tasks.
    pub fn total(&self) -> f64 {
        self.per_task.iter().sum()
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Splits the bill of every server of a finished run among its tasks.
pub(super) fn per_task(cluster: &Cluster<'_>, model: &HetznerModel) -> TaskCosts {
    let mut costs = TaskCosts {
        per_task: vec![0.0; cluster.tasks.len()],
        unattributed: 0.0,
    };
    let mut on_node: Vec<Vec<&Attempt>> = vec![Vec::new(); cluster.nodes.len()];
    for attempt in &cluster.attempts {
        on_node[attempt.node].push(attempt);
    }
    for (n, node) in cluster.nodes.iter().enumerate() {
        let ty = &cluster.types[node.ty];
        let capacity = ty.capacity();
        let end = ms(node.deleted.unwrap_or(cluster.now));
        // (task, share, start, end) of every attempt, and its start and end as ledger events.
        let runs: Vec<(usize, f64, u64, u64)> = on_node[n]
            .iter()
            .map(|a| {
                let weight = share(&cluster.tasks[a.task].resources, &capacity);
                (a.task, weight, ms(a.start), a.end.map_or(end, ms))
            })
            .collect();
        let mut events: Vec<(u64, f64)> = runs
            .iter()
            .flat_map(|&(_, s, from, to)| [(from, s), (to, -s)])
            .collect();
        events.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let mut ledger = Ledger::new(ms(node.created), ty.hourly_price, model.billing_period);
        let mut billed = Vec::new();
        for (t, delta) in events {
            ledger.add_busy(t, delta, &mut billed);
        }
        let unpaid = ledger.close(end, &mut billed);
        if unpaid > 0.0 {
            if node.created_for.is_empty() {
                costs.unattributed += unpaid;
            } else {
                let each = unpaid / node.created_for.len() as f64;
                for &t in &node.created_for {
                    costs.per_task[t] += each;
                }
            }
        }
        let hours = apply_amends(&billed);
        for &(task, weight, from, to) in &runs {
            costs.per_task[task] += attempt_cost(weight, from, to, &hours);
        }
    }
    costs
}
