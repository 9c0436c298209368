//! Why a task cannot run: the verdict that a shape fits no node that exists or could be
//! provisioned (with the resource or constraint to blame), and the explanation of a task that
//! waits.

use super::{fits, satisfies, Class, NodeView, Scheduler, Shape};
use crate::id::TaskId;
use crate::resources::Resources;
use crate::task::{Affinity, Constraints};

/// Could any node or node type ever run a shape?
pub(super) enum Verdict {
    /// Some node or node type fits it.
    Possible,
    /// The cluster has no node and no node type yet: nothing to judge by, so the task waits.
    Unknown,
    /// Nothing ever could; the reason names the resource or constraint.
    Never(String),
}

impl Scheduler {
    /// Judges `shape` against every node (schedulable or not) and every node type.
    pub(super) fn verdict(&self, shape: &Shape) -> Verdict {
        if self.nodes.len() == 0 && self.node_types.is_empty() {
            return Verdict::Unknown;
        }
        let matches = |v: &&NodeView| satisfies(v, &shape.constraints);
        if (self.views().filter(matches)).any(|v| fits(&v.total, &shape.resources)) {
            return Verdict::Possible;
        }
        let matching: Vec<&NodeView> = self.views().filter(matches).collect();
        Verdict::Never(if matching.is_empty() {
            self.unmatched_constraint(&shape.constraints)
        } else {
            too_big(&matching, &shape.resources)
        })
    }

    /// Says why a queued task is not running yet; `None` when it is not queued.
    pub fn explain(&self, task: TaskId) -> Option<String> {
        let &(class_id, key) = self.tasks.get(&task)?;
        let why = self.waiting_reason(task)?;
        Some(match self.classes[class_id].tasks.range(..key).count() {
            0 => why,
            ahead => format!("{ahead} tasks of the same shape are ahead of it; {why}"),
        })
    }

    /// Why tasks of this queued task's shape wait (the same for all of them; [`Self::explain`]
    /// adds the task's place in its queue, which costs a walk of the queue).
    pub fn waiting_reason(&self, task: TaskId) -> Option<String> {
        let &(class_id, _) = self.tasks.get(&task)?;
        let class = &self.classes[class_id];
        Some(if class.ready {
            "not tried yet: the next schedule() will try it".to_owned()
        } else {
            self.why_waiting(class)
        })
    }

    fn views(&self) -> impl Iterator<Item = &NodeView> {
        (self.nodes.iter().map(|(_, node)| &node.view)).chain(&self.node_types)
    }

    /// The first constraint that no node or node type satisfies (or all of them together).
    fn unmatched_constraint(&self, constraints: &Constraints) -> String {
        for req in &constraints.selector {
            let labels = |v: &NodeView| req.matches(|k| v.labels.get(k).map(String::as_str));
            if !self.views().any(labels) {
                return format!("no node or node type has labels matching {req}");
            }
        }
        for cap in &constraints.capabilities {
            if !self.views().any(|v| v.capabilities.contains(cap)) {
                return format!("no node or node type has the capability {cap:?}");
            }
        }
        match &constraints.affinity {
            Some(Affinity::Hard(id)) if !self.node_slots.contains_key(id) => {
                format!("it is pinned (hard affinity) to node {id}, which is not in the cluster")
            }
            _ => format!(
                "no node or node type satisfies all of its constraints at once ({})",
                describe(constraints)
            ),
        }
    }

    fn why_waiting(&self, class: &Class) -> String {
        let (resources, constraints) = (&class.shape.resources, &class.shape.constraints);
        let members = self.groups[class.group].index.members();
        let schedulable = (members.iter())
            .filter(|&&slot| self.nodes[slot].schedulable)
            .count();
        let now = match &constraints.affinity {
            Some(Affinity::Hard(id)) => match self.node_slots.get(id).map(|&s| &self.nodes[s]) {
                None => format!("node {id}, to which it is pinned, is not in the cluster"),
                Some(node) if !node.schedulable => {
                    format!("node {id}, to which it is pinned, is suspect, draining or dead")
                }
                Some(node) => format!(
                    "node {id}, to which it is pinned, has {} free; it needs {resources}",
                    node.free
                ),
            },
            _ if members.is_empty() => format!(
                "no node in the cluster can take it (constraints: {}; needs {resources})",
                describe(constraints)
            ),
            _ if schedulable == 0 => format!(
                "all {} nodes that match its constraints are suspect, draining or dead",
                members.len()
            ),
            _ => format!(
                "none of the {schedulable} schedulable nodes that match its constraints has \
                 {resources} free"
            ),
        };
        let provisionable = (self.node_types.iter())
            .any(|t| satisfies(t, constraints) && fits(&t.total, resources));
        let later = if provisionable {
            "; a node type the autoscaler can provision would fit it"
        } else {
            ""
        };
        format!("waiting: {now}{later}")
    }
}

/// Names the resource that even the largest matching node or node type lacks.
fn too_big(matching: &[&NodeView], request: &Resources) -> String {
    let names = request.custom.keys().map(|name| (name.clone(), 0));
    let mut largest = Resources {
        custom: names.collect(),
        ..Resources::default()
    };
    for view in matching {
        super::apply(&mut largest, &view.total, u64::max);
    }
    match largest.first_shortfall(request) {
        Some(err) => {
            format!("no node or node type that matches its constraints is big enough: {err}")
        }
        None => format!(
            "no single node or node type that matches its constraints has all of {request} at once"
        ),
    }
}

/// `selector site=eu-1, capabilities docker, pinned to node …`, for messages.
fn describe(constraints: &Constraints) -> String {
    let mut parts = Vec::new();
    if !constraints.selector.is_empty() {
        let selector: Vec<String> = constraints.selector.iter().map(|r| r.to_string()).collect();
        parts.push(format!("selector {}", selector.join(", ")));
    }
    if !constraints.capabilities.is_empty() {
        parts.push(format!(
            "capabilities {}",
            constraints.capabilities.join(", ")
        ));
    }
    match &constraints.affinity {
        Some(Affinity::Hard(id)) => parts.push(format!("pinned to node {id}")),
        Some(Affinity::Soft(id)) => parts.push(format!("prefers node {id}")),
        None => {}
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join("; ")
    }
}
