//! What each task cost. Every attempt holds a share of its node — the largest of its shares of
//! the node's cpu, memory and GPUs — for the seconds it runs; each billed hour of a server is
//! split among the attempts that ran in it in proportion to share × seconds, which charges
//! each attempt its node-seconds at the hourly price and apportions the hour's idle time to
//! the same tasks. A billed hour in which nothing ran (a server kept past its work, or booted
//! before it) goes to the nearest hour of the same server that ran something, earlier first;
//! a server that never ran anything (it never joined, or its work went elsewhere) is split
//! among the tasks queued when it was created (if none, those running then, whose capacity it
//! was to replace); what is left (a server created while nothing ran) is unattributed. So the tasks' costs add up to the bill, less the unattributed.

use std::time::Duration;

use rgrid_core::Resources;

use super::engine::Cluster;
use super::model::HetznerModel;

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

/// A task's share of a node of `capacity`.
fn share(need: &Resources, capacity: &Resources) -> f64 {
    let part = |n: u64, total: u64| {
        if total == 0 {
            0.0
        } else {
            n as f64 / total as f64
        }
    };
    part(need.cpu_millis, capacity.cpu_millis)
        .max(part(need.memory_bytes, capacity.memory_bytes))
        .max(part(u64::from(need.gpus), u64::from(capacity.gpus)))
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
    let period_s = model.billing_period.as_secs_f64().max(1.0);
    for (n, node) in cluster.nodes.iter().enumerate() {
        let ty = &cluster.types[node.ty];
        let capacity = ty.capacity();
        let end = node.deleted.unwrap_or(cluster.now);
        let hours = model.billed_periods(end - node.created) as usize;
        // Per billed hour: (task, share × seconds) of every attempt that ran in it.
        let mut used: Vec<Vec<(usize, f64)>> = vec![Vec::new(); hours];
        for attempt in &on_node[n] {
            let from = (attempt.start - node.created).as_secs_f64();
            let to = (attempt.end.unwrap_or(end) - node.created).as_secs_f64();
            let weight = share(&cluster.tasks[attempt.task].resources, &capacity);
            let first = (from / period_s) as usize;
            for (h, hour) in used.iter_mut().enumerate().skip(first) {
                let (lo, hi) = (h as f64 * period_s, (h + 1) as f64 * period_s);
                if lo >= to {
                    break;
                }
                let seconds = hi.min(to) - lo.max(from);
                if seconds > 0.0 {
                    hour.push((attempt.task, weight * seconds));
                }
            }
        }
        let with_use: Vec<usize> = (0..hours).filter(|&h| !used[h].is_empty()).collect();
        if with_use.is_empty() {
            let price = hours as f64 * ty.hourly_price;
            if node.created_for.is_empty() {
                costs.unattributed += price;
            } else {
                let each = price / node.created_for.len() as f64;
                for &t in &node.created_for {
                    costs.per_task[t] += each;
                }
            }
            continue;
        }
        // Each hour's price goes to its own use, or to the nearest hour with use.
        let mut price_of = vec![0.0; hours];
        for h in 0..hours {
            let to = match with_use.binary_search(&h) {
                Ok(i) => with_use[i],
                Err(0) => with_use[0],
                Err(i) => with_use[i - 1],
            };
            price_of[to] += ty.hourly_price;
        }
        for &h in &with_use {
            let total: f64 = used[h].iter().map(|(_, w)| w).sum();
            for &(t, w) in &used[h] {
                costs.per_task[t] += price_of[h] * w / total;
            }
        }
    }
    costs
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn a_share_is_the_largest_dimension() {
        let node = Resources::new(4000, 8 * GIB);
        assert_eq!(share(&Resources::new(1000, 4 * GIB), &node), 0.5);
        assert_eq!(share(&Resources::new(2000, GIB), &node), 0.5);
        let mut gpu_node = node.clone();
        gpu_node.gpus = 1;
        let mut gpu_task = Resources::new(1000, GIB);
        gpu_task.gpus = 1;
        assert_eq!(share(&gpu_task, &gpu_node), 1.0);
    }
}
