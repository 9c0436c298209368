//! What each open task keeps from object retention: the objects it takes as inputs, and the
//! outputs of the dependencies it has met (held from the moment that dependency succeeds, so
//! an output is not deleted while its dependant still waits for another dependency). The loop
//! owns the per-task lists; the counts per object it takes and gives back are shared with the
//! object store's retention ([`TaskHolds`]). A task gives its holds back when it ends.

use std::collections::HashMap;
use std::sync::Arc;

use rgrid_core::object::{NamedObject, ObjectRef};
use rgrid_core::TaskId;

use crate::objects::TaskHolds;

/// The objects open tasks hold.
#[derive(Default)]
pub(super) struct Holds {
    counts: Arc<TaskHolds>,
    /// Only tasks that hold something have an entry.
    by_task: HashMap<TaskId, Vec<ObjectRef>>,
}

impl Holds {
    pub(super) fn new(counts: Arc<TaskHolds>) -> Self {
        Self {
            counts,
            by_task: HashMap::new(),
        }
    }

    /// `task` holds `objects` too.
    pub(super) fn take(&mut self, task: TaskId, objects: Vec<ObjectRef>) {
        if objects.is_empty() {
            return;
        }
        self.counts.hold(&objects);
        self.by_task.entry(task).or_default().extend(objects);
    }

    /// `task` holds the outputs of a dependency it met.
    pub(super) fn take_outputs(&mut self, task: TaskId, outputs: &[NamedObject]) {
        self.take(task, outputs.iter().map(|output| output.object).collect());
    }

    /// `task` ended (or left the loop): what it held is released.
    pub(super) fn give_back(&mut self, task: TaskId) {
        if let Some(objects) = self.by_task.remove(&task) {
            self.counts.release(&objects);
        }
    }

    /// Holds nothing.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.by_task.is_empty()
    }
}
