//! Placement of queued tasks on nodes. Pure and synchronous: the head's event loop owns one
//! [`Scheduler`], tells it about nodes and tasks, and asks it for [`Decision`]s.
//!
//! Ready tasks with the same shape (resources + constraints + strategy) form a class; each class
//! keeps its order (priority first, then submission order) and a class that fits nowhere right now
//! does not block the others.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::id::{NodeId, TaskId};
use crate::resources::{ResourceError, Resources};
use crate::task::{Affinity, Constraints, Strategy};

/// What the scheduler knows of a node (or of a node type the autoscaler could provision).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub id: NodeId,
    pub total: Resources,
    pub labels: BTreeMap<String, String>,
    pub capabilities: BTreeSet<String>,
}

/// A task waiting for a place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedTask {
    pub id: TaskId,
    pub resources: Resources,
    pub constraints: Constraints,
    pub strategy: Strategy,
    pub priority: i32,
}

/// What [`Scheduler::schedule`] decided for one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run `task` on `node`; its resources are now allocated there.
    Place { task: TaskId, node: NodeId },
    /// No node that exists or could be provisioned can ever fit it.
    Unschedulable { task: TaskId, reason: String },
}

/// Tunables.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// `pack` fills a node until this fraction of its cpu or memory is used, then spreads.
    pub pack_threshold: f64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            pack_threshold: 0.5,
        }
    }
}

struct NodeSlot {
    view: NodeView,
    free: Resources,
    /// False while the node is suspect, draining or dead: it gets no new work.
    schedulable: bool,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Shape {
    resources: Resources,
    constraints: Constraints,
    strategy: Strategy,
}

struct Class {
    shape: Shape,
    /// Ordered by (priority desc, submission order).
    tasks: VecDeque<(i32, u64, TaskId)>,
}

/// The scheduler: node capacities and the ready queue.
pub struct Scheduler {
    config: SchedulerConfig,
    nodes: HashMap<NodeId, NodeSlot>,
    node_types: Vec<NodeView>,
    classes: HashMap<Shape, Class>,
    task_shape: HashMap<TaskId, Shape>,
    next_seq: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        Self {
            config,
            nodes: HashMap::new(),
            node_types: Vec::new(),
            classes: HashMap::new(),
            task_shape: HashMap::new(),
            next_seq: 0,
        }
    }

    /// Adds a node (all of its resources free) or replaces its description, keeping what is
    /// allocated on it.
    pub fn upsert_node(&mut self, view: NodeView) {
        match self.nodes.get_mut(&view.id) {
            Some(slot) => {
                let used = slot.view.total.checked_sub(&slot.free).unwrap_or_default();
                slot.free = view.total.checked_sub(&used).unwrap_or_default();
                slot.view = view;
            }
            None => {
                let free = view.total.clone();
                self.nodes.insert(
                    view.id,
                    NodeSlot {
                        view,
                        free,
                        schedulable: true,
                    },
                );
            }
        }
    }

    /// Forgets a node and everything allocated on it.
    pub fn remove_node(&mut self, id: NodeId) {
        self.nodes.remove(&id);
    }

    /// Suspect, draining or dead nodes get no new work.
    pub fn set_schedulable(&mut self, id: NodeId, schedulable: bool) {
        if let Some(slot) = self.nodes.get_mut(&id) {
            slot.schedulable = schedulable;
        }
    }

    /// Node types the autoscaler could provision: a task that fits one of them is never
    /// unschedulable.
    pub fn set_node_types(&mut self, types: Vec<NodeView>) {
        self.node_types = types;
    }

    /// Reserves `resources` on `node` outside of [`Scheduler::schedule`] (re-adopting an attempt
    /// that was already running).
    pub fn allocate(&mut self, node: NodeId, resources: &Resources) -> Result<(), ResourceError> {
        let slot = self.nodes.get_mut(&node).ok_or(ResourceError::Insufficient {
            resource: format!("node {node}"),
            available: 0,
            requested: 1,
        })?;
        slot.free = slot.free.checked_sub(resources)?;
        Ok(())
    }

    /// Returns what an attempt held on `node`. Never exceeds the node's totals.
    pub fn release(&mut self, node: NodeId, resources: &Resources) {
        if let Some(slot) = self.nodes.get_mut(&node) {
            if let Ok(free) = slot.free.checked_add(resources) {
                if slot.view.total.fits(&free) {
                    slot.free = free;
                }
            }
        }
    }

    /// The free resources of a node.
    pub fn free(&self, node: NodeId) -> Option<&Resources> {
        self.nodes.get(&node).map(|slot| &slot.free)
    }

    /// Queues a ready task. A task already queued is left as it is.
    pub fn enqueue(&mut self, task: QueuedTask) {
        if self.task_shape.contains_key(&task.id) {
            return;
        }
        let shape = Shape {
            resources: task.resources,
            constraints: task.constraints,
            strategy: task.strategy,
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.task_shape.insert(task.id, shape.clone());
        let class = self.classes.entry(shape.clone()).or_insert_with(|| Class {
            shape,
            tasks: VecDeque::new(),
        });
        let key = (task.priority, seq);
        let at = class
            .tasks
            .partition_point(|(p, s, _)| (-p, *s) <= (-key.0, key.1));
        class.tasks.insert(at, (task.priority, seq, task.id));
    }

    /// Removes a queued task (cancelled). Returns whether it was queued.
    pub fn dequeue(&mut self, task: TaskId) -> bool {
        let Some(shape) = self.task_shape.remove(&task) else {
            return false;
        };
        if let Some(class) = self.classes.get_mut(&shape) {
            class.tasks.retain(|(_, _, id)| *id != task);
            if class.tasks.is_empty() {
                self.classes.remove(&shape);
            }
        }
        true
    }

    /// Number of queued tasks.
    pub fn queued(&self) -> usize {
        self.task_shape.len()
    }

    /// Places every queued task that fits somewhere now; reports the ones that can never fit.
    pub fn schedule(&mut self) -> Vec<Decision> {
        let mut decisions = Vec::new();
        let shapes: Vec<Shape> = self.classes.keys().cloned().collect();
        for shape in shapes {
            let Some(mut class) = self.classes.remove(&shape) else {
                continue;
            };
            if let Some(reason) = self.infeasible(&class.shape) {
                for (_, _, task) in class.tasks.drain(..) {
                    self.task_shape.remove(&task);
                    decisions.push(Decision::Unschedulable {
                        task,
                        reason: reason.clone(),
                    });
                }
                continue;
            }
            while let Some(&(_, _, task)) = class.tasks.front() {
                let Some(node) = self.pick(&class.shape) else {
                    break;
                };
                if self.allocate(node, &class.shape.resources).is_err() {
                    break;
                }
                class.tasks.pop_front();
                self.task_shape.remove(&task);
                decisions.push(Decision::Place { task, node });
            }
            if !class.tasks.is_empty() {
                self.classes.insert(shape, class);
            }
        }
        decisions
    }

    fn pick(&self, shape: &Shape) -> Option<NodeId> {
        let candidates = self.nodes.values().filter(|slot| {
            slot.schedulable
                && slot.free.fits(&shape.resources)
                && satisfies(&slot.view, &shape.constraints)
        });
        let threshold = self.config.pack_threshold;
        let soft = match &shape.constraints.affinity {
            Some(Affinity::Soft(node)) => Some(*node),
            _ => None,
        };
        let score = |slot: &NodeSlot| -> (bool, bool, f64, NodeId) {
            let after = utilisation(&slot.view.total, &slot.free, &shape.resources);
            let preferred = soft == Some(slot.view.id);
            match shape.strategy {
                // Pack: among nodes that stay under the threshold, the fullest; else the emptiest.
                Strategy::Pack => (preferred, after <= threshold, after, slot.view.id),
                Strategy::Spread => (preferred, true, -after, slot.view.id),
            }
        };
        candidates
            .map(|slot| {
                let s = score(slot);
                let key = if s.1 { s.2 } else { -s.2 };
                ((s.0, s.1, key), slot.view.id)
            })
            .max_by(|a, b| {
                a.0.partial_cmp(&b.0)
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then(b.1.cmp(&a.1))
            })
            .map(|(_, id)| id)
    }

    /// `Some(reason)` when no node and no node type could ever fit the shape. While the cluster
    /// has no node at all and no node types, tasks wait instead (a node may join).
    fn infeasible(&self, shape: &Shape) -> Option<String> {
        if self.nodes.is_empty() && self.node_types.is_empty() {
            return None;
        }
        let all = self
            .nodes
            .values()
            .map(|slot| &slot.view)
            .chain(self.node_types.iter());
        let mut reason = None;
        for view in all {
            if !satisfies(view, &shape.constraints) {
                reason.get_or_insert_with(|| constraint_mismatch(view, &shape.constraints));
                continue;
            }
            match view.total.first_shortfall(&shape.resources) {
                None => return None,
                Some(err) => reason = Some(format!("no node has enough resources: {err}")),
            }
        }
        Some(reason.unwrap_or_else(|| "no node matches".to_owned()))
    }
}

/// Fraction of the node's cpu or memory (whichever is higher) in use after placing `request`.
fn utilisation(total: &Resources, free: &Resources, request: &Resources) -> f64 {
    let frac = |total: u64, free: u64, want: u64| {
        if total == 0 {
            0.0
        } else {
            (total.saturating_sub(free) + want) as f64 / total as f64
        }
    };
    frac(total.cpu_millis, free.cpu_millis, request.cpu_millis).max(frac(
        total.memory_bytes,
        free.memory_bytes,
        request.memory_bytes,
    ))
}

/// Hard constraints: labels, capabilities, hard affinity.
fn satisfies(node: &NodeView, constraints: &Constraints) -> bool {
    constraints
        .selector
        .iter()
        .all(|req| req.matches(|k| node.labels.get(k).map(String::as_str)))
        && constraints
            .capabilities
            .iter()
            .all(|c| node.capabilities.contains(c))
        && match &constraints.affinity {
            Some(Affinity::Hard(id)) => *id == node.id,
            _ => true,
        }
}

fn constraint_mismatch(node: &NodeView, constraints: &Constraints) -> String {
    if let Some(req) = constraints
        .selector
        .iter()
        .find(|req| !req.matches(|k| node.labels.get(k).map(String::as_str)))
    {
        return format!("no node matches the label selector {req}");
    }
    if let Some(cap) = constraints
        .capabilities
        .iter()
        .find(|c| !node.capabilities.contains(*c))
    {
        return format!("no node has the capability {cap:?}");
    }
    "the node it is pinned to (hard affinity) is not in the cluster".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cpu: u64, mem: u64) -> NodeView {
        NodeView {
            id: NodeId::new(),
            total: Resources::new(cpu, mem),
            labels: BTreeMap::new(),
            capabilities: BTreeSet::from(["docker".to_owned()]),
        }
    }

    fn task(cpu: u64, mem: u64) -> QueuedTask {
        QueuedTask {
            id: TaskId::new(),
            resources: Resources::new(cpu, mem),
            constraints: Constraints::default(),
            strategy: Strategy::Pack,
            priority: 0,
        }
    }

    #[test]
    fn big_task_does_not_block_small_ones() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        let n = node(2000, 1 << 30);
        s.upsert_node(n.clone());
        s.allocate(n.id, &Resources::new(1000, 0)).unwrap();
        let big = task(2000, 1 << 20);
        let small = task(500, 1 << 20);
        s.enqueue(big.clone());
        s.enqueue(small.clone());
        let d = s.schedule();
        assert_eq!(d, vec![Decision::Place { task: small.id, node: n.id }]);
        assert_eq!(s.queued(), 1);
        s.release(n.id, &Resources::new(1000, 0));
        s.release(n.id, &small.resources);
        assert_eq!(s.schedule(), vec![Decision::Place { task: big.id, node: n.id }]);
    }

    #[test]
    fn impossible_task_is_unschedulable_with_reason() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        s.upsert_node(node(2000, 1 << 30));
        let t = task(1000, 1 << 40);
        s.enqueue(t.clone());
        match s.schedule().as_slice() {
            [Decision::Unschedulable { task, reason }] => {
                assert_eq!(*task, t.id);
                assert!(reason.contains("memory"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn no_nodes_means_wait_not_unschedulable() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        s.enqueue(task(1000, 1 << 40));
        assert!(s.schedule().is_empty());
        assert_eq!(s.queued(), 1);
    }

    #[test]
    fn priority_then_submission_order() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        let a = task(1000, 1 << 20);
        let mut b = a.clone();
        b.id = TaskId::new();
        b.priority = 5;
        let mut c = a.clone();
        c.id = TaskId::new();
        s.enqueue(a.clone());
        s.enqueue(b.clone());
        s.enqueue(c.clone());
        let n = node(1000, 1 << 30);
        s.upsert_node(n.clone());
        assert_eq!(s.schedule(), vec![Decision::Place { task: b.id, node: n.id }]);
        s.release(n.id, &a.resources);
        assert_eq!(s.schedule(), vec![Decision::Place { task: a.id, node: n.id }]);
        s.release(n.id, &a.resources);
        assert_eq!(s.schedule(), vec![Decision::Place { task: c.id, node: n.id }]);
    }
}
