//! What listings show of the loop's state: nodes, open tasks by state, the live state of a page
//! of stored tasks, counts. Every answer is bounded by the page size the server allows.

use std::collections::{BinaryHeap, HashMap};

use rgrid_core::protocol::{ClusterStatus, NodeInfo, TaskInfo, WaitingShape};
use rgrid_core::task::Constraints;
use rgrid_core::{TaskId, TaskState};

use super::tasks::{ShapeId, Task};
use super::{Cluster, Comm, NodeState};
use crate::store::ListedTask;

impl<C: Comm> Cluster<C> {
    pub(super) fn list_nodes(&self) -> Vec<NodeInfo> {
        let mut nodes: Vec<NodeInfo> = self
            .nodes
            .iter()
            .filter(|node| node.state != NodeState::Removed)
            .map(|node| {
                let hello = node.hello.as_ref();
                NodeInfo {
                    id: node.id,
                    name: node.name.clone(),
                    state: node.listed_state().to_owned(),
                    total: hello.map(|h| h.resources.clone()).unwrap_or_default(),
                    free: self.scheduler.free(node.id).cloned().unwrap_or_default(),
                    labels: hello.map(|h| h.labels.clone()).unwrap_or_default(),
                    capabilities: hello.map(|h| h.capabilities.clone()).unwrap_or_default(),
                    running: u32::try_from(node.running.len()).unwrap_or(u32::MAX),
                    unhealthy: node.problem.clone(),
                    // Filled by the connection from the store (`server::list_nodes`).
                    declared_labels: Vec::new(),
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        nodes
    }

    /// The first `limit` tasks in `state` with an id after `after`, in id order.
    pub(super) fn list_open(
        &self,
        state: TaskState,
        after: Option<TaskId>,
        limit: u32,
    ) -> Vec<TaskInfo> {
        let limit = limit as usize;
        // The `limit` smallest ids: a max-heap that drops its largest.
        let mut page: BinaryHeap<TaskId> = BinaryHeap::with_capacity(limit + 1);
        if limit > 0 {
            for (&id, task) in &self.tasks {
                if task.state != state || after.is_some_and(|a| id <= a) {
                    continue;
                }
                if page.len() == limit {
                    if page.peek().is_some_and(|&largest| id > largest) {
                        continue;
                    }
                    page.pop();
                }
                page.push(id);
            }
        }
        let mut reasons = HashMap::new();
        let mut listing: Vec<TaskInfo> = page
            .into_sorted_vec()
            .into_iter()
            .filter_map(|id| Some(self.info(id, self.tasks.get(&id)?, &mut reasons)))
            .collect();
        self.explain_waits(&mut listing);
        listing
    }

    /// A page read from the store, with the live state of the tasks the loop holds.
    pub(super) fn overlay(&self, rows: Vec<ListedTask>) -> Vec<TaskInfo> {
        let mut reasons = HashMap::new();
        let mut listing: Vec<TaskInfo> = rows
            .into_iter()
            .map(|row| match self.tasks.get(&row.id) {
                Some(task) => self.info(row.id, task, &mut reasons),
                None => TaskInfo {
                    task: row.id,
                    image: image(&row.spec),
                    state: row.state,
                    attempt: row.attempt,
                    node: row.node,
                    submitted_at_ms: row.submitted_at_ms,
                    detail: row.reason,
                },
            })
            .collect();
        self.explain_waits(&mut listing);
        listing
    }

    /// A task the loop holds, as listings show it. Why a queued task waits depends only on its
    /// shape: worked out once per shape in `reasons`.
    fn info(
        &self,
        id: TaskId,
        task: &Task,
        reasons: &mut HashMap<ShapeId, Option<String>>,
    ) -> TaskInfo {
        let detail = match task.state {
            TaskState::Queued => self.details.get(&id).cloned().or_else(|| {
                reasons
                    .entry(task.shape)
                    .or_insert_with(|| self.scheduler.waiting_reason(id))
                    .clone()
            }),
            _ => task
                .outcome
                .as_ref()
                .and_then(|o| o.reason.clone())
                .or_else(|| self.details.get(&id).cloned()),
        };
        TaskInfo {
            task: id,
            image: image(&task.spec),
            state: task.state,
            attempt: task.attempt,
            node: task.node.map(|n| self.node(n).id),
            submitted_at_ms: task.submitted_at_ms,
            detail,
        }
    }

    /// Open tasks by state, nodes by state, and what queued shapes wait for.
    pub(super) fn status(&self) -> ClusterStatus {
        let mut nodes: Vec<(String, u64)> = Vec::new();
        for node in self.nodes.iter().filter(|n| n.state != NodeState::Removed) {
            let state = node.listed_state();
            match nodes.iter_mut().find(|(s, _)| s == state) {
                Some((_, n)) => *n += 1,
                None => nodes.push((state.to_owned(), 1)),
            }
        }
        let waiting = self
            .scheduler
            .waiting()
            .map(|w| WaitingShape {
                resources: w.resources.clone(),
                constraints: describe(w.constraints),
                tasks: w.tasks as u64,
                reason: self.scheduler.waiting_reason(w.first),
            })
            .collect();
        ClusterStatus {
            tasks: self.counts.iter().collect(),
            nodes,
            waiting,
            // The autoscaler's to say (the server adds them).
            servers: Vec::new(),
        }
    }
}

/// The image of an encoded spec, for listings.
fn image(spec: &[u8]) -> String {
    postcard::from_bytes::<rgrid_core::TaskSpec>(spec)
        .map(|s| s.image)
        .unwrap_or_default()
}

/// Constraints as the command line writes them: `site=a, capability docker`.
pub(super) fn describe(constraints: &Constraints) -> String {
    let labels = constraints.selector.iter().map(ToString::to_string);
    let capabilities = (constraints.capabilities.iter()).map(|c| format!("capability {c}"));
    labels.chain(capabilities).collect::<Vec<_>>().join(", ")
}
