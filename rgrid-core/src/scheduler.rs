//! Placement of queued tasks on nodes, and the verdict on tasks that no node could ever run. Pure
//! and synchronous: the head's event loop owns one [`Scheduler`], tells it about nodes and tasks,
//! and asks it for [`Decision`]s after every event.
//!
//! How a decision stays cheap as the cluster grows:
//!
//! - **Classes.** Queued tasks of the same shape (resources, constraints, strategy) form a class
//!   that keeps their order: priority first, then submission. [`Scheduler::schedule`] serves the
//!   classes by the order of their first task; a class that fits nowhere is set aside and does
//!   not block the others.
//! - **Feasibility groups.** Classes with the same label selector, capabilities and custom
//!   resource names share a group: the nodes that satisfy them, worked out once when a node joins
//!   or the group is made, never per task.
//! - **Fit index.** Each group keeps its nodes in a segment tree of free-capacity maxima, so a
//!   placement visits about `log n` entries instead of every node. `Pack` takes the first node (in
//!   join order) that stays under the pack threshold, else the most idle node that fits — Ray's
//!   hybrid policy; `Spread` takes the most idle node that fits. Both find a node whenever one
//!   fits.
//! - **Wake-ups.** A class that fits nowhere waits in its group until capacity grows there (a
//!   release, a join, a node back in service) on a node that could take it. Until then
//!   `schedule()` does not look at it, so calling it after every event costs nothing when nothing
//!   changed.
//! - **Feasibility.** Whether any node or node type could ever run a class is checked when the
//!   class first fits nowhere, and again only after the cluster lost something (a node left or
//!   changed, the node types were replaced).

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use crate::id::{NodeId, TaskId};
use crate::resources::{ResourceError, Resources};
use crate::task::{Affinity, Constraints, LabelRequirement, Strategy};

mod index;
mod reasons;
mod slab;
#[cfg(test)]
mod tests;

use index::{Bound, FitIndex, Need, Slot};
use reasons::Verdict;
use slab::Slab;

/// What the scheduler knows of a node (or of a node type the autoscaler could provision).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// The node's id (any id for a node type: it is only used for hard affinity).
    pub id: NodeId,
    /// Everything the node offers; what is free is tracked by the scheduler.
    pub total: Resources,
    /// Labels that selectors match (`site=eu-1`).
    pub labels: BTreeMap<String, String>,
    /// Capabilities tasks may require (`docker`, `gpu`, …).
    pub capabilities: BTreeSet<String>,
}

/// A task waiting for a place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedTask {
    pub id: TaskId,
    /// What it needs on its node while it runs.
    pub resources: Resources,
    /// Where it may run.
    pub constraints: Constraints,
    /// How to choose among the nodes that fit.
    pub strategy: Strategy,
    /// Higher runs first among tasks of the same shape.
    pub priority: i32,
}

/// What [`Scheduler::schedule`] decided for one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run `task` on `node`; its resources are now allocated there.
    Place { task: TaskId, node: NodeId },
    /// No node that exists or could be provisioned can ever fit it; `reason` names the resource
    /// or constraint. The task has left the queue.
    Unschedulable { task: TaskId, reason: String },
}

/// Tunables.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// `Pack` fills a node until this fraction of its cpu or memory is used, then spreads
    /// (default 0.5, like Ray). 1.0 packs every node full before using the next.
    pub pack_threshold: f64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            pack_threshold: 0.5,
        }
    }
}

/// Queued tasks of one shape that fit no node now but could fit a node or a node type: the
/// demand the autoscaler can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting<'a> {
    /// What each of these tasks needs.
    pub resources: &'a Resources,
    /// Where they may run.
    pub constraints: &'a Constraints,
    /// How many tasks of this shape wait.
    pub tasks: usize,
    /// The first of them in queue order (ask [`Scheduler::waiting_reason`] why it waits).
    pub first: TaskId,
}

/// Unused feasibility groups are kept for the next class with the same constraints (building one
/// visits every node) until there are this many groups.
const GROUPS_KEPT: usize = 256;

/// Empty classes are kept for the next task of the same shape until there are this many classes.
const CLASSES_KEPT: usize = 1024;

type GroupId = usize;
type ClassId = usize;

struct Node {
    view: NodeView,
    free: Resources,
    /// False while the node is suspect, draining or dead: it gets no new work.
    schedulable: bool,
    /// The groups the node belongs to, with its position in each group's index.
    groups: Vec<(GroupId, usize)>,
}

impl Node {
    fn in_group(&self, group: GroupId) -> bool {
        self.groups.iter().any(|&(g, _)| g == group)
    }

    fn bound(&self, threshold: f64) -> Bound {
        if self.schedulable {
            Bound::of(&self.view.total, &self.free, threshold)
        } else {
            Bound::ABSENT
        }
    }
}

/// What makes tasks interchangeable for placement.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Shape {
    resources: Resources,
    constraints: Constraints,
    strategy: Strategy,
}

/// What decides, apart from size, whether a node could run a class. Node affinity is left out
/// (checked per class) so that pinned classes share their group.
#[derive(Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    selector: Vec<LabelRequirement>,
    capabilities: Vec<String>,
    /// Custom resources the class needs: nodes without them stay out of the index, so queries
    /// never walk through them.
    custom: Vec<String>,
}

impl GroupKey {
    fn of(shape: &Shape) -> Self {
        Self {
            selector: shape.constraints.selector.clone(),
            capabilities: shape.constraints.capabilities.clone(),
            custom: (shape.resources.custom.iter())
                .filter(|(_, &amount)| amount > 0)
                .map(|(name, _)| name.clone())
                .collect(),
        }
    }

    fn admits(&self, node: &NodeView) -> bool {
        has_labels_and_capabilities(node, &self.selector, &self.capabilities)
            && (self.custom.iter()).all(|name| node.total.custom.get(name).is_some_and(|&n| n > 0))
    }
}

struct Group {
    key: GroupKey,
    index: FitIndex,
    /// Classes of this group that fit nowhere now; woken when capacity grows on a member.
    waiting: BTreeSet<ClassId>,
    /// Classes using the group.
    users: usize,
}

/// A queued task's turn within its class: higher priority first, then submission order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct QueueKey {
    priority: Reverse<i32>,
    seq: u64,
}

struct Class {
    shape: Shape,
    need: Need,
    group: GroupId,
    tasks: BTreeMap<QueueKey, TaskId>,
    /// In [`Scheduler::ready`]: the next `schedule()` tries it.
    ready: bool,
    /// The feasibility epoch in which some node or node type was known to fit the class.
    feasible_in: Option<u64>,
}

/// A class's turn in `schedule()`, ordered by its first task.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Turn {
    key: Reverse<QueueKey>,
    class: ClassId,
    /// Whether a node may still have room under the pack threshold. Within one `schedule()`
    /// capacity only shrinks, so once no node has room for the class, none will.
    room: bool,
}

/// The scheduler: node capacities, the feasibility groups and their fit indexes, and the queue.
pub struct Scheduler {
    config: SchedulerConfig,
    nodes: Slab<Node>,
    node_slots: HashMap<NodeId, Slot>,
    node_types: Vec<NodeView>,
    groups: Slab<Group>,
    group_ids: HashMap<GroupKey, GroupId>,
    classes: Slab<Class>,
    class_ids: HashMap<Shape, ClassId>,
    tasks: HashMap<TaskId, (ClassId, QueueKey)>,
    /// Classes the next `schedule()` tries: new ones and woken ones (each once, see
    /// [`Class::ready`]).
    ready: Vec<ClassId>,
    /// The turns of one `schedule()`, kept to reuse the allocation.
    turns: BinaryHeap<Turn>,
    /// Bumped when the cluster loses something, which may make a feasible class infeasible.
    epoch: u64,
    next_seq: u64,
}

impl Scheduler {
    /// An empty scheduler: no nodes, no node types, no tasks.
    pub fn new(config: SchedulerConfig) -> Self {
        Self {
            config,
            nodes: Slab::new(),
            node_slots: HashMap::new(),
            node_types: Vec::new(),
            groups: Slab::new(),
            group_ids: HashMap::new(),
            classes: Slab::new(),
            class_ids: HashMap::new(),
            tasks: HashMap::new(),
            ready: Vec::new(),
            turns: BinaryHeap::new(),
            epoch: 0,
            next_seq: 0,
        }
    }

    /// Adds a node (all of its resources free) or replaces its description, keeping what is
    /// allocated on it. Replacing a node with an identical description costs nothing.
    pub fn upsert_node(&mut self, view: NodeView) {
        let Some(&slot) = self.node_slots.get(&view.id) else {
            return self.add_node(view);
        };
        let node = &mut self.nodes[slot];
        if node.view == view {
            return;
        }
        let mut used = node.view.total.clone();
        apply(&mut used, &node.free, u64::saturating_sub);
        node.free = view.total.clone();
        apply(&mut node.free, &used, u64::saturating_sub);
        node.view = view;
        // Classes of the groups it leaves may have become infeasible, those it joins may fit.
        self.wake(slot, false);
        self.leave_groups(slot);
        self.join_groups(slot);
        self.epoch += 1;
        self.wake(slot, false);
    }

    fn add_node(&mut self, view: NodeView) {
        let was_empty = self.nodes.len() == 0 && self.node_types.is_empty();
        let id = view.id;
        let free = view.total.clone();
        let slot = self.nodes.insert(Node {
            view,
            free,
            schedulable: true,
            groups: Vec::new(),
        });
        self.node_slots.insert(id, slot);
        self.join_groups(slot);
        if was_empty {
            // Tasks waited because nothing could be judged; now every class can be.
            self.wake_all();
        } else {
            self.wake(slot, false);
        }
    }

    /// Forgets a node and everything allocated on it.
    pub fn remove_node(&mut self, id: NodeId) {
        let Some(slot) = self.node_slots.remove(&id) else {
            return;
        };
        self.wake(slot, false);
        self.leave_groups(slot);
        self.nodes.remove(slot);
        self.epoch += 1;
    }

    /// Suspect, draining or dead nodes get no new work; they count for feasibility all the same.
    pub fn set_schedulable(&mut self, id: NodeId, schedulable: bool) {
        let Some(&slot) = self.node_slots.get(&id) else {
            return;
        };
        if std::mem::replace(&mut self.nodes[slot].schedulable, schedulable) == schedulable {
            return;
        }
        self.refresh(slot);
        self.wake(slot, true);
    }

    /// Node types the autoscaler could provision: a task that fits one of them is never
    /// unschedulable.
    pub fn set_node_types(&mut self, types: Vec<NodeView>) {
        self.node_types = types;
        self.epoch += 1;
        self.wake_all();
    }

    /// Reserves `resources` on `node` outside of [`Scheduler::schedule`] (re-adopting an attempt
    /// that was already running). Fails, changing nothing, when the node is unknown or short.
    pub fn allocate(&mut self, node: NodeId, resources: &Resources) -> Result<(), ResourceError> {
        let slot = *self
            .node_slots
            .get(&node)
            .ok_or(ResourceError::Insufficient {
                resource: format!("node {node}"),
                available: 0,
                requested: 1,
            })?;
        let entry = &mut self.nodes[slot];
        entry.free = entry.free.checked_sub(resources)?;
        self.refresh(slot);
        Ok(())
    }

    /// Returns what an attempt held on `node`. Free amounts never exceed the node's totals.
    pub fn release(&mut self, node: NodeId, resources: &Resources) {
        let Some(&slot) = self.node_slots.get(&node) else {
            return;
        };
        let entry = &mut self.nodes[slot];
        apply(&mut entry.free, resources, u64::saturating_add);
        apply(&mut entry.free, &entry.view.total, u64::min);
        self.refresh(slot);
        self.wake(slot, true);
    }

    /// The free resources of a node.
    pub fn free(&self, node: NodeId) -> Option<&Resources> {
        let slot = *self.node_slots.get(&node)?;
        Some(&self.nodes[slot].free)
    }

    /// Queues a ready task. A task already queued is left as it is.
    pub fn enqueue(&mut self, task: QueuedTask) {
        let shape = Shape {
            resources: task.resources,
            constraints: task.constraints,
            strategy: task.strategy,
        };
        let class = match self.class_ids.get(&shape) {
            Some(&class) => class,
            None => self.add_class(shape),
        };
        let key = QueueKey {
            priority: Reverse(task.priority),
            seq: self.next_seq,
        };
        match self.tasks.entry(task.id) {
            Entry::Occupied(_) => return,
            Entry::Vacant(entry) => entry.insert((class, key)),
        };
        self.next_seq += 1;
        let entry = &mut self.classes[class];
        entry.tasks.insert(key, task.id);
        if entry.tasks.len() == 1 {
            // A class that had no task waits nowhere: give it a turn.
            make_ready(&mut self.classes, &mut self.ready, class);
        }
    }

    /// Removes a queued task (cancelled). Returns whether it was queued.
    pub fn dequeue(&mut self, task: TaskId) -> bool {
        let Some((class, key)) = self.tasks.remove(&task) else {
            return false;
        };
        self.classes[class].tasks.remove(&key);
        self.stop_waiting_if_empty(class);
        true
    }

    /// Number of queued tasks.
    pub fn queued(&self) -> usize {
        self.tasks.len()
    }

    /// Places every queued task that fits somewhere now, highest priority first within a shape
    /// and first task first across shapes; reports the ones that can never fit. Only shapes that
    /// are new or may fit since the last call are looked at.
    pub fn schedule(&mut self) -> Vec<Decision> {
        let mut decisions = Vec::new();
        let mut ready = std::mem::take(&mut self.ready);
        let mut turns = std::mem::take(&mut self.turns);
        for class in ready.drain(..) {
            self.classes[class].ready = false;
            turns.extend(self.turn(class, true));
        }
        while let Some(turn) = turns.pop() {
            let (class, mut room) = (turn.class, turn.room);
            match self.place_first(class, &mut room) {
                Some(decision) => {
                    decisions.push(decision);
                    turns.extend(self.turn(class, room));
                }
                None => self.set_aside(class, &mut decisions),
            }
        }
        // Keep the allocations for the next call.
        (self.ready, self.turns) = (ready, turns);
        decisions
    }

    /// Queued shapes that fit no node now but could fit one, as of the last
    /// [`Scheduler::schedule`].
    pub fn waiting(&self) -> impl Iterator<Item = Waiting<'_>> {
        let classes = self.groups.iter().flat_map(|(_, group)| &group.waiting);
        classes.filter_map(|&class| {
            let class = &self.classes[class];
            let (_, &first) = class.tasks.first_key_value()?;
            Some(Waiting {
                resources: &class.shape.resources,
                constraints: &class.shape.constraints,
                tasks: class.tasks.len(),
                first,
            })
        })
    }

    /// The turn of the first task of `class`, if it has one.
    fn turn(&self, class: ClassId, room: bool) -> Option<Turn> {
        let (&key, _) = self.classes[class].tasks.first_key_value()?;
        let key = Reverse(key);
        Some(Turn { key, class, room })
    }

    /// Places the first task of `class` if a node fits it now.
    fn place_first(&mut self, class: ClassId, room: &mut bool) -> Option<Decision> {
        let slot = self.pick(&self.classes[class], room)?;
        let entry = &mut self.classes[class];
        let (_, task) = entry.tasks.pop_first()?;
        self.tasks.remove(&task);
        // `pick` chose a node that fits: nothing saturates.
        apply(
            &mut self.nodes[slot].free,
            &entry.shape.resources,
            u64::saturating_sub,
        );
        self.refresh(slot);
        Some(Decision::Place {
            task,
            node: self.nodes[slot].view.id,
        })
    }

    /// The node for the next task of `class`, if one fits now. `room` says whether a node may
    /// have room under the pack threshold; it is cleared when none has.
    fn pick(&self, class: &Class, room: &mut bool) -> Option<Slot> {
        let usable = |slot: Slot| {
            let node = &self.nodes[slot];
            node.schedulable && fits(&node.free, &class.shape.resources)
        };
        let pinned = |id: &NodeId| {
            let slot = *self.node_slots.get(id)?;
            (self.nodes[slot].in_group(class.group) && usable(slot)).then_some(slot)
        };
        match &class.shape.constraints.affinity {
            Some(Affinity::Hard(id)) => return pinned(id),
            Some(Affinity::Soft(id)) => {
                if let Some(slot) = pinned(id) {
                    return Some(slot);
                }
            }
            None => {}
        }
        let index = &self.groups[class.group].index;
        let need = class.need;
        if class.shape.strategy == Strategy::Pack && *room {
            let first = index.first(|b| b.has_room(&need), usable);
            if first.is_some() {
                return first;
            }
            *room = false;
        }
        index.most_idle(|b| b.covers(&need), usable)
    }

    /// `class` fits nowhere now: rejects its tasks if nothing could ever fit them, else parks it
    /// in its group until capacity grows there.
    fn set_aside(&mut self, class: ClassId, decisions: &mut Vec<Decision>) {
        let entry = &self.classes[class];
        if entry.feasible_in != Some(self.epoch) {
            match self.verdict(&entry.shape) {
                Verdict::Never(reason) => return self.reject(class, &reason, decisions),
                Verdict::Possible => self.classes[class].feasible_in = Some(self.epoch),
                Verdict::Unknown => {}
            }
        }
        let group = self.classes[class].group;
        self.groups[group].waiting.insert(class);
    }

    fn reject(&mut self, class: ClassId, reason: &str, decisions: &mut Vec<Decision>) {
        for task in std::mem::take(&mut self.classes[class].tasks).into_values() {
            self.tasks.remove(&task);
            decisions.push(Decision::Unschedulable {
                task,
                reason: reason.to_owned(),
            });
        }
    }

    /// A new, empty class (its first task makes it ready).
    fn add_class(&mut self, shape: Shape) -> ClassId {
        if self.classes.len() >= CLASSES_KEPT {
            self.drop_empty_classes();
        }
        let group = self.group_for(GroupKey::of(&shape));
        let class = self.classes.insert(Class {
            need: Need::of(&shape.resources),
            shape: shape.clone(),
            group,
            tasks: BTreeMap::new(),
            ready: false,
            feasible_in: None,
        });
        self.class_ids.insert(shape, class);
        class
    }

    /// A class without tasks waits for nothing (it stays, empty, for the next task of its shape).
    fn stop_waiting_if_empty(&mut self, class: ClassId) {
        let entry = &self.classes[class];
        if entry.tasks.is_empty() {
            self.groups[entry.group].waiting.remove(&class);
        }
    }

    fn drop_empty_classes(&mut self) {
        let empty: Vec<ClassId> = (self.classes.iter())
            .filter(|(_, class)| class.tasks.is_empty())
            .map(|(id, _)| id)
            .collect();
        for id in empty {
            let Some(class) = self.classes.remove(id) else {
                continue;
            };
            self.class_ids.remove(&class.shape);
            self.groups[class.group].users -= 1;
        }
        let classes = &self.classes;
        self.ready.retain(|&class| classes.get(class).is_some());
    }

    /// The group for `key`, made (visiting every node) if there is none yet.
    fn group_for(&mut self, key: GroupKey) -> GroupId {
        if let Some(&id) = self.group_ids.get(&key) {
            self.groups[id].users += 1;
            return id;
        }
        if self.groups.len() >= GROUPS_KEPT {
            self.drop_unused_groups();
        }
        let id = self.groups.insert(Group {
            key: key.clone(),
            index: FitIndex::new(),
            waiting: BTreeSet::new(),
            users: 1,
        });
        let group = &mut self.groups[id];
        for (slot, node) in self.nodes.iter_mut() {
            admit(id, group, slot, node, self.config.pack_threshold);
        }
        self.group_ids.insert(key, id);
        id
    }

    fn drop_unused_groups(&mut self) {
        let unused: Vec<GroupId> = (self.groups.iter())
            .filter(|(_, group)| group.users == 0)
            .map(|(id, _)| id)
            .collect();
        for id in unused {
            let Some(group) = self.groups.remove(id) else {
                continue;
            };
            self.group_ids.remove(&group.key);
            for &slot in group.index.members() {
                self.nodes[slot].groups.retain(|&(g, _)| g != id);
            }
        }
    }

    fn join_groups(&mut self, slot: Slot) {
        let node = &mut self.nodes[slot];
        for (id, group) in self.groups.iter_mut() {
            admit(id, group, slot, node, self.config.pack_threshold);
        }
    }

    fn leave_groups(&mut self, slot: Slot) {
        for (group, pos) in std::mem::take(&mut self.nodes[slot].groups) {
            let Some(moved) = self.groups[group].index.swap_remove(pos) else {
                continue;
            };
            if let Some(entry) = (self.nodes[moved].groups.iter_mut()).find(|(g, _)| *g == group) {
                entry.1 = pos;
            }
        }
    }

    /// Brings the node's entries in the fit indexes up to date.
    fn refresh(&mut self, slot: Slot) {
        let node = &self.nodes[slot];
        let bound = node.bound(self.config.pack_threshold);
        for &(group, pos) in &node.groups {
            self.groups[group].index.set(pos, bound);
        }
    }

    /// Capacity grew on `slot` (or the cluster changed around it): the waiting classes of its
    /// groups get another turn — with `only_fitting`, only those that fit its free resources.
    fn wake(&mut self, slot: Slot, only_fitting: bool) {
        let node = &self.nodes[slot];
        if only_fitting && !node.schedulable {
            return;
        }
        for &(group, _) in &node.groups {
            let (classes, ready) = (&mut self.classes, &mut self.ready);
            self.groups[group].waiting.retain(|&class| {
                let wake = !only_fitting || fits(&node.free, &classes[class].shape.resources);
                if wake {
                    make_ready(classes, ready, class);
                }
                !wake
            });
        }
    }

    fn wake_all(&mut self) {
        for (_, group) in self.groups.iter_mut() {
            for class in std::mem::take(&mut group.waiting) {
                make_ready(&mut self.classes, &mut self.ready, class);
            }
        }
    }
}

/// Gives `class` a turn in the next `schedule()`, once.
fn make_ready(classes: &mut Slab<Class>, ready: &mut Vec<ClassId>, class: ClassId) {
    let entry = &mut classes[class];
    if !entry.ready {
        entry.ready = true;
        ready.push(class);
    }
}

/// Makes `node` a member of `group` if the group admits it.
fn admit(id: GroupId, group: &mut Group, slot: Slot, node: &mut Node, threshold: f64) {
    if group.key.admits(&node.view) {
        let pos = group.index.push(slot, node.bound(threshold));
        node.groups.push((id, pos));
    }
}

fn has_labels_and_capabilities(
    node: &NodeView,
    selector: &[LabelRequirement],
    capabilities: &[String],
) -> bool {
    (selector.iter()).all(|req| req.matches(|k| node.labels.get(k).map(String::as_str)))
        && capabilities.iter().all(|c| node.capabilities.contains(c))
}

/// Hard constraints: label selector, capabilities, hard affinity.
fn satisfies(node: &NodeView, constraints: &Constraints) -> bool {
    has_labels_and_capabilities(node, &constraints.selector, &constraints.capabilities)
        && match &constraints.affinity {
            Some(Affinity::Hard(id)) => *id == node.id,
            _ => true,
        }
}

/// `request` fits in `free` ([`Resources::fits`] without building an error for the shortfall).
fn fits(free: &Resources, request: &Resources) -> bool {
    free.cpu_millis >= request.cpu_millis
        && free.memory_bytes >= request.memory_bytes
        && free.gpus >= request.gpus
        && (request.custom.iter())
            .all(|(name, &want)| want <= free.custom.get(name).copied().unwrap_or(0))
}

/// `target = op(target, other)` for each amount. The custom resources are those of `target`; a
/// name missing from `other` counts as 0.
fn apply(target: &mut Resources, other: &Resources, op: impl Fn(u64, u64) -> u64) {
    target.cpu_millis = op(target.cpu_millis, other.cpu_millis);
    target.memory_bytes = op(target.memory_bytes, other.memory_bytes);
    let gpus = op(target.gpus.into(), other.gpus.into());
    target.gpus = u32::try_from(gpus).unwrap_or(u32::MAX);
    for (name, amount) in &mut target.custom {
        *amount = op(*amount, other.custom.get(name).copied().unwrap_or(0));
    }
}
