//! What a restarted head reads back before it serves: every node that joined (suspect, with
//! the recovery grace to reconnect and re-adopt what it runs) and every open task, in pages in id
//! order. A task whose latest attempt has no end waits for that attempt's node; the others are
//! queued. Everything open is in the loop before the first submission is read, so a
//! resubmission of an open task is always recognised in memory, and one the store knows but the
//! loop does not is a finished task.

use rgrid_core::task::TaskSpec;
use rgrid_core::time::monotonic_ms;
use rgrid_core::{AttemptId, TaskState};

use super::membership::{node_view, Node, NodeState};
use super::tasks::Task;
use super::{millis, Cluster, Comm};
use crate::store::{RecoveredTask, Store, StoreError, StoredNode};

/// Open tasks read per query.
const PAGE: u32 = 10_000;

/// Fills `cluster` from the store. Returns the number of open tasks.
pub(crate) async fn recover<C: Comm>(
    cluster: &mut Cluster<C>,
    store: &Store,
) -> Result<usize, StoreError> {
    // Recovered nodes count as silent since a moment chosen so that they are declared dead
    // only once the recovery grace is over.
    let grace = cluster.liveness.recovery_grace;
    let silent_since = monotonic_ms()
        .saturating_add(millis(grace))
        .saturating_sub(cluster.liveness.timeout_ms());
    for stored in store.nodes().await? {
        cluster.recover_node(stored, silent_since);
    }
    let mut after = None;
    let mut open = 0;
    let mut with_dependencies = Vec::new();
    let mut reading = std::time::Duration::ZERO;
    loop {
        let started = std::time::Instant::now();
        let page = store.recover_page(after, PAGE).await?;
        reading += started.elapsed();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        open += page.len();
        for task in page {
            let id = task.id;
            if cluster.recover_task(task)? {
                with_dependencies.push(id);
            }
        }
    }
    cluster
        .recover_dependencies(store, &with_dependencies)
        .await?;
    tracing::debug!(open, ?reading, "read the open tasks back");
    Ok(open)
}

impl<C: Comm> Cluster<C> {
    /// A node from the store: suspect, silent since `silent_since` (monotonic ms).
    pub(super) fn recover_node(&mut self, stored: StoredNode, silent_since: u64) {
        if let Some(hello) = &stored.hello {
            self.scheduler.upsert_node(node_view(stored.id, hello));
            self.scheduler.set_schedulable(stored.id, false);
        }
        let index = self.node_slot(stored.id, &stored.name);
        let mut node = Node::new(stored.id, stored.name, stored.hello, NodeState::Suspect);
        node.silent_since_ms = silent_since;
        self.nodes[index as usize] = node;
    }

    /// An open task from the store: waiting for its node when its latest attempt has no end,
    /// pending when it has dependencies and never ran, queued otherwise. True when it has
    /// dependencies (to be read back after every open task is in the loop).
    pub(super) fn recover_task(&mut self, stored: RecoveredTask) -> Result<bool, StoreError> {
        let spec: TaskSpec = crate::store::decode_spec(&stored.spec)?;
        let has_dependencies = !spec.dependencies().is_empty();
        let objects = spec.input_objects();
        let shape = self
            .shapes
            .intern((spec.resources, spec.constraints), &mut self.metrics);
        let mut task = Task {
            spec: stored.spec.into_boxed_slice(),
            shape,
            priority: spec.priority,
            strategy: spec.strategy,
            state: TaskState::Queued,
            confirmed: true,
            delivered: false,
            attempt: 0,
            node: None,
            node_losses: stored.node_losses,
            failures: stored.failures,
            submitted_at_ms: stored.submitted_at_ms,
            queued_at_ms: stored.submitted_at_ms,
            started_at_ms: 0,
            write_seq: 0,
            outcome: None,
        };
        let placed = stored.latest.and_then(|latest| {
            task.attempt = latest.attempt;
            let index = *self.node_index.get(&latest.node)?;
            (!latest.ended).then_some((index, latest))
        });
        let id = stored.id;
        match placed {
            // Hold its resources until the node re-adopts it or is declared dead.
            Some((index, latest))
                if self
                    .scheduler
                    .allocate(latest.node, self.shapes.resources(shape))
                    .is_ok() =>
            {
                task.state = TaskState::Assigned;
                task.node = Some(index);
                task.started_at_ms = latest.started_at_ms;
                self.shapes.hold(shape);
                let node = &mut self.nodes[index as usize];
                node.running.insert(
                    AttemptId {
                        task: id,
                        attempt: latest.attempt,
                    },
                    shape,
                );
                node.idle_since_ms = None;
            }
            // Not placed: its dependencies are settled once every open task is back (again when
            // it ran before: a stdout it takes is stored again before it is queued).
            _ if has_dependencies => task.state = TaskState::Pending,
            _ => {
                let queued = self.queued(id, &task);
                self.scheduler.enqueue(queued);
            }
        }
        self.counts.moved(None, Some(task.state));
        self.tasks.insert(id, task);
        self.holds.take(id, objects);
        Ok(has_dependencies)
    }
}
